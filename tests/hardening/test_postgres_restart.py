"""PostgreSQL restarted under a running API: requests answer 503 while it is down, the pool recovers after.

The team's PostgreSQL is a system service shared by every test, so this test runs a private cluster of
its own (initdb into a temporary folder, its own port) and stops and starts that one.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from support.services import _free_ports
from tests.conftest import ADMIN_TOKEN


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        pytest.fail("PostgreSQL server binaries are missing (apt-get install postgresql)")
    return Path(found[-1]).parent


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on a free loopback port (run as `postgres` when we are root)."""

    def __init__(self, root: Path) -> None:
        self.bin = _pg_bin()
        self.data = root / "pgdata"
        self.port = _free_ports(1)[0]
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.root = root

    def _run(self, *args: str) -> None:
        cmd = [str(a) for a in args]
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(self.bin / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(self.bin / "pg_ctl", "-D", self.data, "-o", opts, "-l", self.root / "log", "-w", "start")

    def stop(self) -> None:
        self._run(self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")


@pytest.fixture
def private_pg(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("private-pg")
    if os.geteuid() == 0:  # postgres must be able to reach its folder
        for parent in [root, *root.parents]:
            if parent == Path("/"):
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o011)
    pg = PrivatePostgres(root)
    pg.init()
    pg.start()
    try:
        yield pg
    finally:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(pg.bin / "pg_ctl"), "-D", str(pg.data), "-m",
             "immediate", "stop"] if os.geteuid() == 0 else
            [str(pg.bin / "pg_ctl"), "-D", str(pg.data), "-m", "immediate", "stop"],
            capture_output=True, timeout=60,
        )


def test_api_answers_503_while_postgres_is_down_and_recovers(private_pg: PrivatePostgres, tmp_path) -> None:
    settings = Settings(data_dir=tmp_path / "graft", database_url=private_pg.url, bootstrap_token=ADMIN_TOKEN)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as api:
        created = api.post("/v1/modules", json={"name": "pg-f", "kind": "category", "category": "bird"})
        assert created.status_code == 201, created.text

        private_pg.stop()
        down = api.get("/v1/modules")
        assert down.status_code == 503, down.text
        assert "database" in down.json()["detail"].lower()
        refused = api.post("/v1/modules", json={"name": "pg-g", "kind": "task", "task": "cls"})
        assert refused.status_code == 503, refused.text
        ready = api.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] == "unreachable"

        private_pg.start()
        # The pool notices the dead connections (pre-ping) and reconnects: no restart of the API.
        listed = api.get("/v1/modules")
        assert listed.status_code == 200, listed.text
        assert [m["name"] for m in listed.json()["items"]] == ["pg-f"]  # nothing half-written while down
        again = api.post("/v1/modules", json={"name": "pg-g", "kind": "task", "task": "cls"})
        assert again.status_code == 201, again.text
        assert api.get("/readyz").status_code == 200
