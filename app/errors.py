"""Errors a client can cause, each with its HTTP status, and the handlers that render them.

Every error body is `{"detail": "<one clear sentence saying what is wrong and how to fix it>"}`.
Nothing a client sends may produce a 500: services raise these, backends' outages become 503.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, OperationalError

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


def _document_string_detail(app: FastAPI) -> None:
    """Make /openapi.json say what 422s really carry: `{"detail": "<sentence>"}`, not FastAPI's list."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        components = schema.get("components", {}).get("schemas", {})
        if "HTTPValidationError" in components:
            components["HTTPValidationError"] = {
                "title": "HTTPValidationError", "type": "object", "required": ["detail"],
                "properties": {"detail": {"title": "Detail", "type": "string"}},
            }
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    """Render GraftErrors, validation errors and backend outages as `{"detail": ...}` bodies."""
    _document_string_detail(app)

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
