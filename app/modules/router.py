"""HTTP routes of modules, versions, artifacts and aliases (thin: parse, call the service, commit)."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session

from app.auth.service import Principal
from app.config import Settings
from app.deps import ReadAuth, SessionDep, SettingsDep, StoreDep, WriteAuth
from app.errors import BackendUnavailable, Unprocessable
from app.models import Module, ModuleVersion
from app.modules import repository, service
from app.modules.cursor import MAX_LIMIT, decode_cursor, encode_cursor
from app.modules.schemas import (
    AliasRead,
    AliasSet,
    ModuleCreate,
    ModuleDetail,
    ModulePage,
    ModuleRead,
    VersionPage,
    VersionRead,
    VersionSummary,
)
from app.ops.metrics import MetricsRoute
from app.storage import ArtifactStore
from app.storage.upload import multipart_openapi, receive_multipart

router = APIRouter(prefix="/v1/modules", tags=["modules"], route_class=MetricsRoute)
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]


def _json(model: BaseModel) -> Response:
    """The model as a JSON response, serialised once.

    A Response passes through FastAPI untouched; a returned model would be validated again against
    `response_model` (for a `def` route, in one more thread-pool hop). `response_model` stays on the
    routes for the OpenAPI document.
    """
    return Response(model.model_dump_json(), media_type="application/json")


def _module_read(module: Module, latest: int | None) -> ModuleRead:
    return ModuleRead.model_validate(
        {**{c: getattr(module, c) for c in ModuleRead.model_fields if c != "latest_version"},
         "latest_version": latest}
    )


_FROM_ELSEWHERE = ("name", "kind", "aliases")  # VersionRead fields that are not ModuleVersion columns


def _version_read(session: Session, version: ModuleVersion, aliases: list[str] | None = None) -> VersionRead:
    fields = {c: getattr(version, c) for c in VersionRead.model_fields if c not in _FROM_ELSEWHERE}
    if aliases is None:
        aliases = repository.aliases_of_version(session, version.id)
    return VersionRead(name=version.module.name, kind=version.module.kind, aliases=aliases, **fields)


@router.post("", status_code=201, response_model=ModuleRead)
def create_module(body: ModuleCreate, session: SessionDep, principal: WriteAuth) -> ModuleRead:
    """Create a module (409 if the name is taken)."""
    module = service.create_module(session, **body.model_dump(), owner_token_id=principal.token_id)
    session.commit()
    return _module_read(module, None)


@router.get("", response_model=ModulePage)
def list_modules(
    session: SessionDep, _: ReadAuth, kind: str | None = None, category: str | None = None,
    task: str | None = None, limit: Limit = 50, cursor: str | None = None,
) -> Response:
    """Modules filtered by kind/category/task, in creation order, one page at a time."""
    after = decode_cursor(cursor)
    if after is not None and not isinstance(after, int):
        raise Unprocessable("The cursor is not valid; pass the `next_cursor` of a previous page.")
    rows = repository.module_page(
        session, kind=kind, category=category, task=task, after=after, limit=limit + 1
    )
    # Plain columns of the right types straight from the database: nothing to validate.
    items = [ModuleRead.model_construct(**row) for row in rows[:limit]]
    next_cursor = encode_cursor(rows[limit - 1]["id"]) if len(rows) > limit else None
    return _json(ModulePage.model_construct(items=items, next_cursor=next_cursor))


@router.get("/{name}", response_model=ModuleDetail)
def get_module(name: str, session: SessionDep, _: ReadAuth) -> Response:
    """The module with a summary of its versions and its aliases."""
    module = service.get_module(session, name)
    versions = repository.version_summaries(session, module.id)
    base = _module_read(module, versions[-1].version if versions else None)
    return _json(ModuleDetail(
        **base.model_dump(),
        versions=[VersionSummary(version=v.version, sha256=v.sha256, format=v.format, created_at=v.created_at)
                  for v in versions],
        aliases=repository.aliases_of_module(session, module.id),
    ))


def _register_upload(
    session: Session, store: ArtifactStore, settings: Settings, principal: Principal, name: str,
    fields: dict, path, sha256: str,
) -> tuple[VersionRead, bool]:
    module = service.get_module(session, name)
    service.check_can_write(module, principal)
    raw_meta = fields.get("meta")
    if raw_meta is None:
        raise Unprocessable(
            'The upload has no `meta` part; send meta as a JSON string, e.g. {"format": ...}.'
        )
    try:
        meta = json.loads(raw_meta)
    except ValueError:
        raise Unprocessable("The `meta` part is not valid JSON; send a JSON object as a string.") from None
    if not isinstance(meta, dict):
        raise Unprocessable("The `meta` part must be a JSON object.")
    version, created = service.add_version(
        session, store, settings, module=module, file_path=path, meta=meta, sha256=sha256
    )
    if created:
        try:
            session.commit()
        except Exception:
            session.rollback()
            service.discard_orphan(session, store, sha256)
            raise
    return _version_read(session, version), created


@router.post(
    "/{name}/versions",
    status_code=201,
    response_model=VersionRead,
    openapi_extra=multipart_openapi('JSON: {"format", "input_shape", "trained_on"?, "metrics"?, '
                                    '"description"?, "arch"?}'),
    responses={200: {"description": "Identical bytes were already uploaded: the existing version."}},
)
async def upload_version(
    name: str, request: Request, session: SessionDep, store: StoreDep, settings: SettingsDep,
    principal: WriteAuth,
) -> Response:
    """Upload a new immutable version: the body streams to disk, then loads and probes off the event loop."""
    # async only to read the body as a stream; every blocking step runs in the thread pool.
    upload = await receive_multipart(
        request, tmp_dir=settings.data_dir / "incoming", max_bytes=settings.max_upload_bytes
    )
    try:
        read, created = await run_in_threadpool(
            _register_upload, session, store, settings, principal, name, upload.fields, upload.path,
            upload.sha256,
        )
    finally:
        upload.discard()
    return JSONResponse(read.model_dump(mode="json"), status_code=201 if created else 200)


@router.get("/{name}/versions", response_model=VersionPage)
def list_versions(
    name: str, session: SessionDep, _: ReadAuth, limit: Limit = 50, cursor: str | None = None
) -> Response:
    """The module's versions, oldest first."""
    module = service.get_module(session, name)
    after = decode_cursor(cursor)
    if after is not None and not isinstance(after, int):
        raise Unprocessable("The cursor is not valid; pass the `next_cursor` of a previous page.")
    rows = repository.list_versions(session, module.id, after=after, limit=limit + 1)
    aliases = repository.aliases_by_version(session, module.id)  # one query, not one per version
    items = [_version_read(session, v, aliases.get(v.id, [])) for v in rows[:limit]]
    next_cursor = encode_cursor(rows[limit - 1].version) if len(rows) > limit else None
    return _json(VersionPage(items=items, next_cursor=next_cursor))


@router.get("/{name}/versions/{ref}", response_model=VersionRead)
def get_version(name: str, ref: str, session: SessionDep, _: ReadAuth) -> Response:
    """One version by number, alias or `latest`, with lineage and metrics."""
    version, aliases = service.find_version_by_name(session, name, ref)
    return _json(_version_read(session, version, aliases))


@router.get(
    "/{name}/versions/{ref}/artifact",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The artifact bytes."}},
)
def download_artifact(
    name: str, ref: str, request: Request, session: SessionDep, store: StoreDep, _: ReadAuth
) -> Response:
    """The artifact's bytes, streamed; `ETag` is the sha256."""
    version = service.find_version(session, service.get_module(session, name), ref)
    etag = f'"{version.sha256}"'
    headers = {
        "ETag": etag,
        "Content-Length": str(version.size),
        "Content-Disposition": f'attachment; filename="{version.module.name}-{version.version}.'
        f'{_EXT[version.format]}"',
    }
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag})
    try:
        chunks = store.iter_bytes(version.storage_key, chunk_size=DOWNLOAD_CHUNK)
        first = next(chunks, b"")
    except Exception:
        raise BackendUnavailable("The artifact store is unreachable right now; retry the download.") from None

    def body():
        yield first
        yield from chunks

    return StreamingResponse(body(), media_type="application/octet-stream", headers=headers)


# Big chunks: each one is a thread-pool hop and a socket write; 1 MiB chunks made the proxy CPU-bound.
DOWNLOAD_CHUNK = 8 * 1024 * 1024
_EXT = {"torch_export": "pt2", "torchscript": "pt", "safetensors": "safetensors"}


@router.put("/{name}/aliases/{alias}", response_model=AliasRead)
def set_alias(name: str, alias: str, body: AliasSet, session: SessionDep, principal: WriteAuth) -> AliasRead:
    """Move (or create) an alias to point at a version."""
    module = service.get_module(session, name)
    service.check_can_write(module, principal)
    version = service.set_alias(session, module=module, alias=alias, number=body.version)
    session.commit()
    return AliasRead(name=module.name, alias=alias, version=version.version)
