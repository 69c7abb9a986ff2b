"""A real uvicorn server on loopback: requests whose clients hang up are dropped before their forward."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import uvicorn

from app.main import create_app
from graft.local_server import free_port
from tests.compositions.conftest import npy
from tests.compositions.test_predict import EXPLICIT
from tests.conftest import ADMIN_TOKEN
from tests.ops.test_metrics import growth

HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _wait_until(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


@pytest.fixture
def live(served) -> Iterator[tuple[str, object]]:
    """(url, app): the session's registry served by uvicorn in a thread of this process."""
    app = create_app(served.app.state.settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _wait_until(lambda: server.started)
    try:
        yield f"http://127.0.0.1:{server.config.port}", app
    finally:
        server.should_exit = True
        thread.join(30)


def _raw_predict(url: str, cid: str, body: bytes) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = (f"POST /v1/compositions/{cid}/predict HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/x-npy\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    sock.sendall(head + body)
    return sock


def test_requests_of_gone_clients_are_dropped_before_their_forward(live) -> None:
    url, app = live
    x = npy(np.random.default_rng(0).standard_normal((1, 3, 6, 6)).astype(np.float32))
    with httpx.Client(base_url=url, headers=HEADERS, timeout=30) as c:
        cid = c.post("/v1/compositions", json=EXPLICIT).json()["id"]
        assert c.post(f"/v1/compositions/{cid}/predict", content=x,
                      headers={"Content-Type": "application/x-npy"}).status_code == 200
        ex = app.state.serving.executor
        _wait_until(lambda: ex._probing() is None)  # the load probe has finished
        served0, metrics0 = c.get("/v1/serving").json()["served"], c.get("/metrics").text

        with ex.run_lock:  # the executor is busy: requests queue
            staying = _raw_predict(url, cid, x)
            _wait_until(lambda: ex.totals["requests"] > served0["requests"])  # taken, waits for the lock
            gone = [_raw_predict(url, cid, x) for _ in range(8)]
            _wait_until(lambda: ex.queued() == 8)
            for sock in gone:
                sock.close()
            group = ex._groups[next(iter(ex.groups()))]
            _wait_until(lambda: all(r.future.cancelled() for r in group.queue))
        _wait_until(lambda: ex.queued() == 0)
        answer = staying.recv(65536)
        staying.close()
        assert answer.startswith(b"HTTP/1.1 200")

        served1 = c.get("/v1/serving").json()["served"]
        assert served1["dropped_disconnected"] - served0["dropped_disconnected"] == 8
        assert served1["batches"] - served0["batches"] == 1  # the staying client's forward only
        metrics1 = c.get("/metrics").text
        assert growth(metrics0, metrics1, "graft_predict_dropped_total", reason="disconnected") == 8
