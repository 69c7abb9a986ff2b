"""HTTP routes of modules, versions, artifacts and aliases (thin: parse, call the service, commit)."""

from __future__ import annotations

import json
import re
from pathlib import Path
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
    SHA256_PATTERN,
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
from app.storage import ArtifactStore, key_for
from app.storage.base import PendingPut
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
        versions=[VersionSummary(version=v.version, sha256=v.sha256, format=v.format,
                                 input_shape=v.input_shape, output_shape=v.output_shape,
                                 metrics=v.metrics or {}, created_at=v.created_at)
                  for v in versions],
        aliases=repository.aliases_of_module(session, module.id),
    ))


def _register_upload(
    session: Session, store: ArtifactStore, settings: Settings, principal: Principal, name: str,
    fields: dict, path, sha256: str, pending: PendingPut | None,
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
        session, store, settings, module=module, file_path=path, meta=meta, sha256=sha256, pending=pending,
    )
    if created:
        try:
            session.commit()
        except Exception:
            session.rollback()  # the stored object stays for the sweeper: it may be shared
            raise
    return _version_read(session, version), created


@router.post(
    "/{name}/versions",
    status_code=201,
    response_model=VersionRead,
    openapi_extra=multipart_openapi('JSON: {"format", "input_shape", "trained_on"?, "metrics"?, '
                                    '"description"?, "arch"?, "sha256"?}; send it before `file`.'),
    responses={200: {"description": "Identical bytes were already uploaded: the existing version."}},
)
async def upload_version(
    name: str, request: Request, session: SessionDep, store: StoreDep, settings: SettingsDep,
    principal: WriteAuth,
) -> Response:
    """Upload a new immutable version: the body streams to disk, then loads and probes off the event loop.

    With `meta.sha256` declared (in a part before `file`) and an S3 store, the file also goes on to S3
    while it arrives, under its final key, and becomes visible only once digest and probe have passed.
    """
    # async only to read the body as a stream; every blocking step runs in the thread pool.
    # The module and the token's right to it are checked before a byte is received (or sent on).
    await run_in_threadpool(_check_target, request.app.state.sessionmaker, name, principal)
    length = request.headers.get("content-length", "")
    expected = int(length) if length.isdigit() else None

    def start_put(fields: dict[str, str], path: Path) -> PendingPut | None:
        declared = _declared_sha256(fields.get("meta"))
        if declared is None:
            return None
        return store.begin_put(key_for(declared), path, expected_size=expected)

    upload = await receive_multipart(
        request, tmp_dir=settings.data_dir / "incoming", max_bytes=settings.max_upload_bytes,
        start_put=start_put,
    )
    try:
        read, created = await run_in_threadpool(
            _register_upload, session, store, settings, principal, name, upload.fields, upload.path,
            upload.sha256, upload.pending,
        )
    finally:
        if upload.pending is not None:  # a no-op once completed; otherwise nothing may stay behind
            await run_in_threadpool(upload.pending.abort)
        upload.discard()
    return JSONResponse(read.model_dump(mode="json"), status_code=201 if created else 200)


def _check_target(sessionmaker, name: str, principal: Principal) -> None:  # noqa: ANN001
    with sessionmaker() as session:
        service.check_can_write(service.get_module(session, name), principal)


def _declared_sha256(raw_meta: str | None) -> str | None:
    """The sha256 a `meta` part declares, if it is well formed (any other problem is reported later)."""
    try:
        meta = json.loads(raw_meta) if raw_meta else None
    except ValueError:
        return None
    declared = meta.get("sha256") if isinstance(meta, dict) else None
    return declared if isinstance(declared, str) and re.fullmatch(SHA256_PATTERN, declared) else None


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
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The artifact bytes."},
        304: {"description": "`If-None-Match` holds the artifact's ETag (its sha256): unchanged."},
        307: {"description": "With GRAFT_S3_PRESIGN_DOWNLOADS: a short-lived presigned S3 URL of the bytes "
                             "(`Location`); fetch it without this server's Authorization header."},
    },
)
def download_artifact(
    name: str, ref: str, request: Request, session: SessionDep, store: StoreDep, _: ReadAuth
) -> Response:
    """The artifact's bytes, streamed, or a 307 to a presigned URL of them; `ETag` is the sha256."""
    version, _aliases = service.find_version_by_name(session, name, ref)
    etag = f'"{version.sha256}"'
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag})
    filename = f"{version.module.name}-{version.version}.{_EXT[version.format]}"
    try:
        url = store.download_url(version.storage_key, filename=filename)
    except Exception:
        raise BackendUnavailable("The artifact store cannot sign a download URL right now; retry.") from None
    if url is not None:
        # The bytes go from S3 to the client; the URL expires, so neither the answer nor it is cached.
        return Response(status_code=307, headers={"Location": url, "ETag": etag, "Cache-Control": "no-store"})
    headers = {
        "ETag": etag,
        "Content-Length": str(version.size),
        "Content-Disposition": f'attachment; filename="{filename}"',
    }
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
