"""Real `graft worker` processes (Celery) on given settings, for the tests and the benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from app.config import Settings
from support.services import ServiceUnavailable

ROOT = Path(__file__).resolve().parents[1]


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a worker process reads its settings from."""
    env = {
        **os.environ,
        "GRAFT_DATABASE_URL": settings.resolved_database_url,
        "GRAFT_ARTIFACTS_URL": settings.resolved_artifacts_url,
        "GRAFT_BROKER_URL": settings.broker_url or "",
        "GRAFT_DATA_DIR": str(settings.data_dir),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }
    if settings.s3_endpoint_url:
        env["GRAFT_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    return env


@dataclass
class Worker:
    proc: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: the job in hand is lost with the process, as when a machine dies."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Workers:
    """Starts `graft worker` processes on the test backends; stops them all at the end."""

    settings: Settings
    folder: Path
    running: list[Worker] = field(default_factory=list)
    module: str = "graft.cli"
    """What `python -m` runs: the `graft` command line (bench.jobs runs itself, with a device wait)."""

    def start(self, **env: str) -> Worker:
        """A worker that has connected to the broker and is ready to take jobs."""
        return self.ready(self.launch(**env))

    def launch(self, **env: str) -> Worker:
        """A worker process started, not yet waited for (start several at once, then `ready` each)."""
        log_path = self.folder / f"worker-{len(self.running)}.log"
        name = f"w{len(self.running)}-{uuid.uuid4().hex[:6]}@%h"
        cmd = [sys.executable, "-m", self.module, "worker", "--hostname", name, "--loglevel", "info"]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=worker_env(self.settings, **env), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(proc, log_path)
        self.running.append(worker)
        return worker

    def ready(self, worker: Worker) -> Worker:
        """`worker` once it has connected to the broker; fails the test if it never does."""
        deadline = time.monotonic() + 90
        while " ready." not in worker.log():
            if worker.proc.poll() is not None or time.monotonic() > deadline:
                worker.stop()
                raise ServiceUnavailable(f"the Celery worker did not start; its log:\n{worker.log()[-4000:]}")
            time.sleep(0.2)
        return worker

    def warm(self) -> Worker:
        """The running worker, or a new one."""
        alive = [w for w in self.running if w.proc.poll() is None]
        return alive[0] if alive else self.start()

    def stop_all(self) -> None:
        for worker in self.running:
            worker.stop()
