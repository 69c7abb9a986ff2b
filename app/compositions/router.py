"""HTTP routes of compositions, inference, export and the category × task grid."""

from __future__ import annotations

import os
import re
from datetime import datetime
from typing import Annotated

import torch
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.compositions import repository, service
from app.compositions.schemas import (
    CompositionCreate,
    CompositionPage,
    CompositionRead,
    Grid,
    PredictRequest,
    PredictResponse,
)
from app.deps import ReadAuth, SessionDep, WriteAuth
from app.errors import BadRequest, Unprocessable
from app.modules.cursor import MAX_LIMIT, decode_cursor, encode_cursor
from app.ops.metrics import MetricsRoute
from app.serving import inputs
from app.serving.predict import serve_predict
from app.serving.runtime import ServingSpec, serving_of
from transplant.compose import EXPORT_FORMATS, EXPORT_SUFFIXES, ExportError, export_composed

router = APIRouter(tags=["compositions"], route_class=MetricsRoute)
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
RawBody = Annotated[bytes, Depends(inputs.read_body)]

_PREDICT_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": PredictRequest.model_json_schema()},
            "application/x-npy": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_PREDICT_RESPONSES = {
    200: {
        "description": "Outputs, in the encoding of the request (JSON or .npy).",
        "content": {
            "application/json": {"schema": PredictResponse.model_json_schema()},
            "application/x-npy": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    413: {"description": "The body is larger than the server's predict body limit "
                         "(`GRAFT_PREDICT_MAX_BODY_BYTES`, 256 MiB by default); "
                         "send fewer inputs per request."},
}


@router.post("/v1/compositions", status_code=201, response_model=CompositionRead,
             responses={200: {"model": CompositionRead, "description": "Composed before."}})
def create_composition(body: CompositionCreate, session: SessionDep, _: WriteAuth, response: Response):
    """Compose a cell (the service picks the pieces) or explicit pieces; pinned to exact versions.

    201 for a new composition; 200 with the existing one when exactly these versions were composed before.
    """
    composition, created, selection = service.create_composition(session, body)
    session.commit()
    if not created:
        response.status_code = 200
    return service.read_many(session, [composition])[0].model_copy(update={"selection": selection})


def _decode_after(cursor: str | None) -> tuple[datetime, str] | None:
    after = decode_cursor(cursor)
    if after is None:
        return None
    try:
        stamp, _, cid = str(after).partition("|")
        return datetime.fromisoformat(stamp), cid
    except ValueError:
        raise BadRequest("The cursor is not valid; pass the `next_cursor` of a previous page.") from None


@router.get("/v1/compositions", response_model=CompositionPage)
def list_compositions(
    session: SessionDep, _: ReadAuth, category: str | None = None, task: str | None = None,
    limit: Limit = 50, cursor: str | None = None,
) -> CompositionPage:
    """Compositions, oldest first, optionally of one category and/or task, one page at a time."""
    rows = repository.list_page(
        session, after=_decode_after(cursor), limit=limit + 1, category=category, task=task
    )
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        last = page[-1]
        next_cursor = encode_cursor(f"{last.created_at.isoformat()}|{last.id}")
    return CompositionPage(items=service.read_many(session, page), next_cursor=next_cursor)


@router.get("/v1/compositions/{composition_id}", response_model=CompositionRead)
def get_composition(composition_id: str, session: SessionDep, _: ReadAuth) -> CompositionRead:
    """One composition with its pinned pieces and shapes."""
    return service.read_many(session, [service.get_composition(session, composition_id)])[0]


@router.post("/v1/compositions/{composition_id}/predict", openapi_extra=_PREDICT_OPENAPI,
             responses=_PREDICT_RESPONSES, response_class=Response)
async def predict(
    composition_id: str, request: Request, body: RawBody, _: WriteAuth,
) -> Response:
    """Run the composition on a batch (JSON `{"inputs": [...]}` or an .npy array); same encoding back.

    Any number of inputs up to the body limit (`GRAFT_PREDICT_MAX_BODY_BYTES`, 256 MiB by default;
    413 beyond it); they run in forward passes of at most `GRAFT_PREDICT_MAX_BATCH` rows. Concurrent
    requests, of this and of other compositions that share its task module, are batched together.
    """
    # A composition this process has served before is answered by PredictFastPath
    # (app/serving/fastpath.py) with the same serve_predict, without FastAPI's routing and
    # dependencies; this route serves the first call (it reads the database) and documents the contract.
    spec = serving_of(request.app).known_spec(composition_id)
    if spec is None:
        spec = await run_in_threadpool(_spec_from_db, request, composition_id)
    return await serve_predict(request, spec, body)


def _spec_from_db(request: Request, composition_id: str) -> ServingSpec:
    serving = serving_of(request.app)
    with request.app.state.sessionmaker() as session:
        return serving.spec(composition_id, lambda: service.serving_spec(session, composition_id))


def _filename(composition: CompositionRead, fmt: str) -> str:
    stem = "-".join(p for p in (composition.category, composition.task) if p) or "composition"
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem)
    return f"{stem}-{composition.id[:8]}{EXPORT_SUFFIXES[fmt]}"


@router.get("/v1/compositions/{composition_id}/export", response_class=Response,
            responses={200: {"description": "One file holding f → h → g.",
                             "content": {"application/octet-stream": {}}}})
def export(
    composition_id: str, request: Request, session: SessionDep, _: ReadAuth,
    format: str = Query("torch_export", description="torch_export | torchscript | onnx"),
) -> Response:
    """The whole chain f → h → g as one file that reloads outside Graft (dynamic batch dimension)."""
    if format not in EXPORT_FORMATS:
        raise BadRequest(f"Unknown export format {format!r}; use one of {', '.join(EXPORT_FORMATS)}.")
    read = service.read_many(session, [service.get_composition(session, composition_id)])[0]
    spec = service.serving_spec(session, composition_id)
    session.close()
    if any(d is None for d in spec.input_shape[1:]):
        raise Unprocessable("The input shape has free dimensions besides the batch; it cannot be exported.")
    # A fresh copy, not the cached one: exporters trace the module and must not race the batcher.
    module = serving_of(request.app).load(spec)
    example = torch.randn((2, *spec.input_shape[1:]), generator=torch.Generator().manual_seed(0))
    try:
        data = export_composed(module, example, format)
    except ExportError as exc:
        raise Unprocessable(f"{exc}.") from None
    except Exception as exc:  # noqa: BLE001 - exporters raise many types for graphs they cannot write
        others = ", ".join(f for f in EXPORT_FORMATS if f != format)
        raise Unprocessable(
            f"This composition cannot be exported as {format} ({' '.join(str(exc).split())[:200]}); "
            f"try {others}."
        ) from None
    headers = {"Content-Disposition": f'attachment; filename="{_filename(read, format)}"'}
    return Response(data, media_type="application/octet-stream", headers=headers)


@router.get("/v1/grid", response_model=Grid)
def grid(session: SessionDep, _: ReadAuth) -> Grid:
    """Every category × task cell: native, transplanted, running or missing, with its composition."""
    return service.grid(session)


@router.get("/v1/serving", tags=["ops"])
def serving_stats(request: Request, _: ReadAuth) -> JSONResponse:
    """This process's module cache, inference executor, batch groups and what it served.

    `cache`: module versions loaded (f, h, g each once), bytes, hits, misses, evictions. `executor`:
    inference threads (one) and torch threads, requests queued. `groups`: per task module (batch
    group), the learned batch cap and the curve it was chosen from (inputs/s per batch size).
    `served`: batches, requests, inputs, and requests dropped before their forward (client gone,
    deadline passed). Each API process has its own; `pid` says which process answered.
    """
    serving = serving_of(request.app)
    ex = serving.executor
    return JSONResponse({
        "pid": os.getpid(), "cache": serving.cache.stats(),
        "executor": {"threads": 1, "torch_threads": torch.get_num_threads(), "device": serving.device,
                     "max_batch": ex.max_batch, "queued": ex.queued()},
        "groups": ex.groups(), "served": dict(ex.totals),
    })
