"""Structured logs: one JSON object a line, carrying the request id and the job id of the context.

`configure_logging(json=settings.log_json, level=...)` once per process (API or worker).
`RequestIdMiddleware` gives every HTTP request an id (the client's `X-Request-ID` when it is sane,
else a fresh one), echoes it in the response and puts it in `request_id_var`, so every log line
written while serving the request carries it. Workers set `job_id_var` with `job_context(job_id)`
around a job. Plain-text logs show the same two ids.
"""

from __future__ import annotations

import itertools
import json as _json
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id_var: ContextVar[str | None] = ContextVar("graft_request_id", default=None)
job_id_var: ContextVar[str | None] = ContextVar("graft_job_id", default=None)

REQUEST_ID_HEADER = "X-Request-ID"
# A client-sent id is kept only if it cannot forge log lines or blow up their size.
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged too.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "request_id", "job_id",
}
# Fresh request ids: this process's random 64-bit prefix and a counter (32 hex digits, as a uuid4's
# hex). uuid4 reads the OS's random source on every call, a syscall per request on the predict path.
_ID_PREFIX = uuid.uuid4().hex[:16]
_ID_COUNTER = itertools.count()
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [req=%(request_id)s job=%(job_id)s] %(message)s"
_HANDLER_NAME = "graft"


def new_request_id() -> str:
    """A request id unique to this process's lifetime, and across processes with high probability."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFFFFFF:016x}"


class ContextFilter(logging.Filter):
    """Copies the context's request and job ids onto each record (`record.request_id`, `.job_id`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.job_id = job_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, message, request_id, job_id, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", request_id_var.get()),
            "job_id": getattr(record, "job_id", job_id_var.get()),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack_info"] = self.formatStack(record.stack_info)
        return _json.dumps(payload, default=str, ensure_ascii=False)


def configure_logging(json: bool, level: int | str = logging.INFO, *, stream: IO[str] | None = None) -> None:
    """Send all logs (uvicorn's and Celery's included) to one handler on the root logger.

    Idempotent: calling it again replaces Graft's handler rather than adding a second one.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if json else logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    # uvicorn installs its own plain-text handlers; route its records through ours instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


@contextmanager
def job_context(job_id: str | int | uuid.UUID) -> Iterator[None]:
    """Within the block, log lines carry `job_id` (a worker wraps each job in it)."""
    token = job_id_var.set(str(job_id))
    try:
        yield
    finally:
        job_id_var.reset(token)


class RequestIdMiddleware:
    """Pure ASGI middleware: request id in, `X-Request-ID` out, `request_id_var` set in between.

    Also writes one `app.access` log line per HTTP request (method, path, status, duration_ms).
    The id is at `request.state.request_id` too.
    """

    def __init__(
        self, app: ASGIApp, *, header_name: str = REQUEST_ID_HEADER, access_log: bool = True
    ) -> None:
        self.app = app
        self.header_name = header_name
        self.access_log = access_log
        self._log = logging.getLogger("app.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get(self.header_name)
        request_id = incoming if incoming and _SANE_REQUEST_ID.match(incoming) else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        status: int | None = None
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[self.header_name] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            status = status or 500  # the error handler outside us turns it into a 500
            raise
        finally:
            if self.access_log and scope["type"] == "http":
                self._log.info(
                    "%s %s %s", scope["method"], scope["path"], status if status is not None else "-",
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                    },
                )
            request_id_var.reset(token)
