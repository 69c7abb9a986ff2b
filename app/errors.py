"""Errors a client can cause, each with its HTTP status, and the handlers that render them.

Every error body is `{"detail": "<one clear sentence saying what is wrong and how to fix it>"}`.
Nothing a client sends may produce a 500: services raise these, backends' outages become 503.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class GraftError(Exception):
    """Base of the errors that map to an HTTP status."""

    status_code = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(GraftError):
    status_code = 400


class Unauthorized(GraftError):
    status_code = 401


class Forbidden(GraftError):
    status_code = 403


class NotFound(GraftError):
    status_code = 404


class Conflict(GraftError):
    status_code = 409


class TooLarge(GraftError):
    status_code = 413


class UnsupportedFormat(GraftError):
    status_code = 415


class Unprocessable(GraftError):
    status_code = 422


class BackendUnavailable(GraftError):
    status_code = 503


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "Invalid request: " + "; ".join(parts) + "."


_ERROR_TEXT = {
    400: "Bad request: a cursor, form or parameter the server cannot read; `detail` says which.",
    404: "Not found: a module, version, alias, dataset, job or composition the request names.",
    409: "Conflict: the name is taken, the job already ended, or a concurrent write won; see `detail`.",
    413: "Too large: the upload or the inputs are over the server's limit.",
    415: "Unsupported media type: the body's content type or the file's format is refused.",
    422: "Unprocessable: a well-formed request that is not valid (NUL characters and out-of-range "
         "numbers included); `detail` says what to fix.",
}
# (method, path) of operations that name other resources in their body, write with unique names, or
# take uploads; the rest follows from the operation itself (path parameters, a cursor, a body).
_NAMES_IN_BODY = {("post", "/v1/transplants"), ("post", "/v1/amalgamations"), ("post", "/v1/compositions")}
_CONFLICTS = {("post", "/v1/modules"), ("post", "/v1/modules/{name}/versions"), ("post", "/v1/datasets"),
              ("post", "/v1/transplants"), ("post", "/v1/amalgamations"),
              ("post", "/v1/jobs/{job_id}/cancel")}
_UPLOADS = {("post", "/v1/modules/{name}/versions"), ("post", "/v1/datasets"),
            ("post", "/v1/compositions/{composition_id}/predict")}


def _error_statuses(method: str, path: str, operation: dict) -> set[int]:
    """The client-error statuses an API operation can answer (app/errors.py raises them)."""
    statuses = {422}  # validation, and app/request_guard.py for any route
    if "{" in path or (method, path) in _NAMES_IN_BODY:
        statuses.add(404)
    params = {p.get("name") for p in operation.get("parameters", [])}
    if "cursor" in params or "requestBody" in operation or path.endswith("/export"):
        statuses.add(400)
    if (method, path) in _CONFLICTS:
        statuses.add(409)
    if (method, path) in _UPLOADS:
        statuses |= {413, 415}
    return statuses


def _document_errors(schema: dict) -> None:
    """List each operation's error statuses, with the `{"detail": "<sentence>"}` body they carry."""
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}
    schema.setdefault("components", {}).setdefault("schemas", {})
    for path, operations in schema.get("paths", {}).items():
        if not (path.startswith("/v1/") or path.startswith("/ui/static/")):
            continue
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for status in sorted(_error_statuses(method, path, operation)):
                responses.setdefault(str(status), {"description": _ERROR_TEXT[status], "content": body})


def _flat_routes(routes: list) -> list:
    """Routes with included routers unwrapped (FastAPI keeps an included router as one entry)."""
    flat = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        flat += _flat_routes(inner.routes) if inner is not None else [route]
    return flat


def _allowed_methods(app: FastAPI, path: str) -> set[str]:
    """Every method some route serves at `path` (Starlette's own 405 names only the first route's)."""
    allowed: set[str] = set()
    for route in _flat_routes(app.routes):
        regex, methods = getattr(route, "path_regex", None), getattr(route, "methods", None)
        if regex is not None and methods and regex.match(path):
            allowed |= set(methods)
    return allowed


def _document_string_detail(app: FastAPI) -> None:
    """Make /openapi.json say what errors really carry, `{"detail": "<sentence>"}`, and when."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["HTTPValidationError"] = {
            "title": "HTTPValidationError", "type": "object", "required": ["detail"],
            "properties": {"detail": {"title": "Detail", "type": "string"}},
        }
        _document_errors(schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    """Render GraftErrors, validation errors and backend outages as `{"detail": ...}` bodies."""
    _document_string_detail(app)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):  # noqa: ANN202
        if exc.status_code == 405:  # Allow: every method of every route at this path
            allowed = _allowed_methods(request.app, request.url.path)
            if allowed:
                headers = {"Allow": ", ".join(sorted(allowed))}
                exc = StarletteHTTPException(405, detail=exc.detail, headers=headers)
        return await http_exception_handler(request, exc)

    @app.exception_handler(GraftError)
    async def _graft_error(_request: Request, exc: GraftError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        return JSONResponse({"detail": _validation_detail(exc), "errors": errors}, status_code=422)

    @app.exception_handler(OperationalError)
    async def _db_down(_request: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database unreachable: %s", exc)
        return JSONResponse(
            {"detail": "The database is unreachable right now; retry in a moment."}, status_code=503
        )

    @app.exception_handler(DataError)
    async def _bad_value(_request: Request, exc: DataError) -> JSONResponse:
        # The database refused a value the request carried (a NUL in text, a number beyond a column):
        # the client's to fix. app/request_guard.py refuses most of these before they get here.
        log.info("database refused a request value: %s", exc.orig)
        return JSONResponse(
            {"detail": "A value in the request cannot be stored: it holds a NUL character or a number "
                       "out of range for its field; fix it and retry."}, status_code=422,
        )

    @app.exception_handler(DBAPIError)
    async def _db_error(_request: Request, exc: DBAPIError) -> JSONResponse:
        if exc.connection_invalidated:
            return JSONResponse(
                {"detail": "The database connection was lost; retry in a moment."}, status_code=503
            )
        log.exception("database error", exc_info=exc)
        return JSONResponse({"detail": "Internal database error."}, status_code=500)
