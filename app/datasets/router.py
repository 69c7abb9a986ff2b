"""HTTP routes of datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from app.datasets import repository, service
from app.datasets.schemas import DatasetPage, DatasetRead
from app.deps import ReadAuth, SessionDep, SettingsDep, StoreDep, WriteAuth
from app.errors import Unprocessable
from app.models import Dataset
from app.modules.cursor import MAX_LIMIT, decode_cursor, encode_cursor
from app.ops.metrics import MetricsRoute
from app.storage import ArtifactStore
from app.storage.upload import multipart_openapi, receive_multipart

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], route_class=MetricsRoute)


def _read(dataset: Dataset) -> DatasetRead:
    return DatasetRead.model_validate(dataset, from_attributes=True)


def _register(
    session: Session, store: ArtifactStore, fields: dict, path: Path, sha256: str, size: int
) -> DatasetRead:
    try:
        meta = json.loads(fields.get("meta") or "null")
    except ValueError:
        raise Unprocessable("The `meta` part is not valid JSON; send a JSON object as a string.") from None
    if not isinstance(meta, dict):
        raise Unprocessable('Send a `meta` part holding a JSON object, e.g. {"name": "birds"}.')
    dataset = service.create_dataset(session, store, file_path=path, sha256=sha256, size=size, meta=meta)
    try:
        session.commit()
    except Exception:
        session.rollback()  # the stored object stays for the sweeper: it may be shared
        raise
    return _read(dataset)


@router.post(
    "", status_code=201, response_model=DatasetRead,
    openapi_extra=multipart_openapi(
        'JSON: {"name", "category"?}; `file` is an .npz with `x` and optional `y`.'
    ),
)
async def upload_dataset(
    request: Request, session: SessionDep, store: StoreDep, settings: SettingsDep, _: WriteAuth
) -> DatasetRead:
    """Upload an .npz dataset (x float32 N×…, optional y with N rows)."""
    upload = await receive_multipart(
        request, tmp_dir=settings.data_dir / "incoming", max_bytes=settings.max_upload_bytes
    )
    try:
        return await run_in_threadpool(
            _register, session, store, upload.fields, upload.path, upload.sha256, upload.size
        )
    finally:
        upload.discard()


@router.get("", response_model=DatasetPage)
def list_datasets(
    session: SessionDep, _: ReadAuth, category: str | None = None, name: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50, cursor: str | None = None,
) -> DatasetPage:
    """Datasets, filtered by category or name, one page at a time."""
    after = decode_cursor(cursor)
    rows = repository.list_datasets(
        session, category=category, name=name, after=None if after is None else str(after), limit=limit + 1
    )
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return DatasetPage(items=[_read(d) for d in rows[:limit]], next_cursor=next_cursor)


@router.get("/{dataset_id}", response_model=DatasetRead)
def get_dataset(dataset_id: str, session: SessionDep, _: ReadAuth) -> DatasetRead:
    """One dataset's description."""
    return _read(service.get_dataset(session, dataset_id))
