"""`graft serve --workers N`: several API processes on one port, one migration, metrics summed over all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import torch

from bench.serving_load import connection_pids
from graft import Client
from graft.local_server import LocalServer, free_port
from tests.graft.nets import ResNetish, trained_like
from tests.jobs.conftest import redis_broker  # noqa: F401 (a fixture)
from tests.ops.test_metrics import sample

PREDICTS = 40


def _no_graft_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GRAFT_")}


def test_several_workers_without_a_queue_are_refused(tmp_path: Path) -> None:
    env = {**_no_graft_env(), "GRAFT_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run(
        [sys.executable, "-m", "graft.cli", "serve", "--port", str(free_port()), "--workers", "2"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "GRAFT_BROKER_URL" in done.stderr and "--workers" in done.stderr


def test_two_processes_serve_one_registry(tmp_path: Path, redis_broker: str) -> None:  # noqa: F811
    server = LocalServer(tmp_path / "data", workers=2,
                         env={**_no_graft_env(), "GRAFT_BROKER_URL": redis_broker})
    with server:
        # Each process has its own socket on the port: connections opened at once spread over both.
        spread = Counter(connection_pids(server.port, server.token, 32))
        assert len(spread) == 2 and min(spread.values()) >= 6, spread
        threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // 2))
        for pid in spread:  # torch's threads split between the processes
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
            assert f"OMP_NUM_THREADS={threads}" in environ

        model = trained_like(ResNetish(classes=3))
        x = torch.randn(4, 3, 8, 8)
        with Client(server.url, server.token) as c:
            c.push_teacher(model, "block1", x[:1], category="wk", task="cls")
            comp = c.compose(category_module="wk-f@1", task_module="wk-cls@1")
        before = httpx.get(f"{server.url}/metrics", timeout=30).text  # any one process answers
        want = model(x).detach().numpy()
        for _ in range(PREDICTS):  # a new client each time: the calls spread over both processes
            with Client(server.url, server.token) as c:
                np.testing.assert_allclose(c.predict(comp["id"], x.numpy()), want, rtol=1e-4, atol=1e-4)

        served: dict[int, int] = {}
        headers = {"Authorization": f"Bearer {server.token}"}
        for _ in range(200):  # each process's own batcher totals, until both have answered
            stats = httpx.get(f"{server.url}/v1/serving", headers=headers, timeout=30).json()
            served[stats["pid"]] = stats["served"]["requests"]
            if len(served) == 2:
                break
        assert len(served) == 2 and sum(served.values()) == PREDICTS, served

        # Whichever process answers the scrape, it reports the requests of both.
        route = "/v1/compositions/{composition_id}/predict"
        for _ in range(4):
            after = httpx.get(f"{server.url}/metrics", timeout=30).text
            grew = sample(after, "graft_http_requests_total", route=route, method="POST", status="200") - \
                _or_zero(before, route)
            assert grew == PREDICTS
    assert server.proc.returncode is not None


def _or_zero(text: str, route: str) -> float:
    try:
        return sample(text, "graft_http_requests_total", route=route, method="POST", status="200")
    except AssertionError:
        return 0.0


def test_a_dead_process_is_replaced_and_a_taken_port_is_an_error(tmp_path: Path,
                                                                  redis_broker: str) -> None:  # noqa: F811
    env = {**_no_graft_env(), "GRAFT_BROKER_URL": redis_broker}
    server = LocalServer(tmp_path / "data", workers=2, env=env)
    with server:
        started = time.monotonic()
        first = set(connection_pids(server.port, server.token, 16))
        assert len(first) == 2, first
        time.sleep(max(0.0, 11.0 - (time.monotonic() - started)))  # past the quick-death window
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # the parent starts another process on the same port
            try:
                now = set(connection_pids(server.port, server.token, 16))
            except (OSError, ValueError):
                now = set()
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"no replacement for the killed process: {now}\n{server.log_tail()}")

    with socket.socket() as taken:  # a plain socket (no SO_REUSEPORT) holds the port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "graft.cli", "serve", "--port", str(port), "--workers", "2"],
            env={**env, "GRAFT_DATA_DIR": str(tmp_path / "other")}, capture_output=True, text=True,
            timeout=120,
        )
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"is port {port} free?" in done.stderr
