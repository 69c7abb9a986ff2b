"""Structured logs: JSON lines carry request_id / job_id; the middleware sets and echoes X-Request-ID."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from app.logging import (
    RequestIdMiddleware,
    configure_logging,
    job_context,
    job_id_var,
    request_id_var,
)

log = logging.getLogger("tests.deploy.logging")


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """JSON logging into a buffer; the root logger's handlers and level restored afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    configure_logging(json=True, level="INFO", stream=stream)
    yield stream
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def _app() -> Starlette:
    def sync_route(request: Request) -> JSONResponse:  # runs in the threadpool, like Graft's routes
        log.info("in sync route")
        return JSONResponse({"request_id": request_id_var.get(), "state": request.state.request_id})

    async def async_route(request: Request) -> JSONResponse:
        log.info("in async route")
        return JSONResponse({"request_id": request_id_var.get()})

    async def boom(request: Request) -> PlainTextResponse:
        raise RuntimeError("boom")

    app = Starlette(
        routes=[Route("/sync", sync_route), Route("/async", async_route), Route("/boom", boom)]
    )
    app.add_middleware(RequestIdMiddleware)
    return app


def test_json_lines_carry_job_id_and_extras(log_stream: io.StringIO) -> None:
    log.info("outside")
    with job_context("job-42"):
        log.warning("inside %s", "job", extra={"epoch": 3})
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("failed")
    outside, inside, failed = _lines(log_stream)
    assert outside["job_id"] is None and outside["request_id"] is None
    assert inside["job_id"] == "job-42"
    assert inside["message"] == "inside job" and inside["level"] == "WARNING" and inside["epoch"] == 3
    assert inside["logger"] == "tests.deploy.logging" and inside["ts"].endswith("+00:00")
    assert "ValueError: bad" in failed["exc_info"]
    assert job_id_var.get() is None


def test_configure_logging_is_idempotent_and_has_text_mode() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging(json=True)
        configure_logging(json=False, level=logging.DEBUG, stream=(stream := io.StringIO()))
        assert sum(h.get_name() == "graft" for h in root.handlers) == 1
        with job_context(7):
            log.debug("plain")
        assert "job=7" in stream.getvalue() and "plain" in stream.getvalue()
        assert root.level == logging.DEBUG
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


@pytest.mark.parametrize("path", ["/sync", "/async"])
def test_middleware_generates_and_echoes_request_id(log_stream: io.StringIO, path: str) -> None:
    with TestClient(_app()) as client:
        resp = client.get(path)
    rid = resp.headers["X-Request-ID"]
    assert len(rid) == 32
    assert resp.json()["request_id"] == rid
    if path == "/sync":
        assert resp.json()["state"] == rid
    lines = _lines(log_stream)
    route_line = next(line for line in lines if line["message"].startswith("in "))
    assert route_line["request_id"] == rid
    access = next(line for line in lines if line["logger"] == "app.access")
    assert access["request_id"] == rid and access["status"] == 200 and access["path"] == path
    assert access["duration_ms"] >= 0


def test_middleware_keeps_a_sane_client_id_and_replaces_a_bad_one(log_stream: io.StringIO) -> None:
    with TestClient(_app()) as client:
        kept = client.get("/async", headers={"X-Request-ID": "abc-123.def:9"})
        replaced = client.get("/async", headers={"X-Request-ID": 'x" injected\\n{"level":"ERROR"}'})
        too_long = client.get("/async", headers={"X-Request-ID": "a" * 200})
    assert kept.headers["X-Request-ID"] == "abc-123.def:9"
    assert kept.json()["request_id"] == "abc-123.def:9"
    for resp in (replaced, too_long):
        assert len(resp.headers["X-Request-ID"]) == 32
        assert resp.json()["request_id"] == resp.headers["X-Request-ID"]


def test_middleware_logs_failures_and_resets_the_context(log_stream: io.StringIO) -> None:
    with TestClient(_app(), raise_server_exceptions=False) as client:
        resp = client.get("/boom", headers={"X-Request-ID": "req-boom"})
    assert resp.status_code == 500
    access = next(line for line in _lines(log_stream) if line["logger"] == "app.access")
    assert access["request_id"] == "req-boom" and access["status"] == 500
    assert request_id_var.get() is None


def test_middleware_passes_lifespan_through() -> None:
    seen: list[str] = []

    async def inner(scope, receive, send) -> None:
        seen.append(scope["type"])

    asyncio.run(RequestIdMiddleware(inner)({"type": "lifespan"}, None, None))  # type: ignore[arg-type]
    assert seen == ["lifespan"]


def test_fresh_request_ids_are_unique_hex() -> None:
    from app.logging import new_request_id

    ids = [new_request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
