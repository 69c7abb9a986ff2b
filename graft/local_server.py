"""Start a Graft server as a subprocess on a free loopback port (the demo and the tests use it)."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """`uvicorn app.main:create_app` on the embedded defaults in `data_dir`, with a bootstrap token.

    workers > 1 runs `graft serve --workers N` instead (it needs GRAFT_BROKER_URL in `env`).
    """

    def __init__(self, data_dir: Path, *, port: int = 0, token: str | None = None,
                 env: dict[str, str] | None = None, log_path: Path | None = None, workers: int = 1) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.token = token or secrets.token_urlsafe(24)
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = env or {}
        self.log_path = log_path or self.data_dir / "server.log"
        self.workers = workers
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> LocalServer:
        """Launch the process and wait until /healthz answers; RuntimeError with the log tail if not."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GRAFT_DATA_DIR": str(self.data_dir), "GRAFT_BOOTSTRAP_TOKEN": self.token,
               **self.extra_env}
        # Embedded defaults: a database or broker URL from the caller's shell must not leak in.
        for key in ("GRAFT_DATABASE_URL", "GRAFT_ARTIFACTS_URL", "GRAFT_BROKER_URL"):
            if key not in self.extra_env:
                env.pop(key, None)
        if self.workers > 1:
            cmd = [sys.executable, "-m", "graft.cli", "serve", "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", str(self.workers)]
        else:
            cmd = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app",
                   "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the Graft server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"the Graft server did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the process we started: SIGTERM, then SIGKILL after a grace period."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
