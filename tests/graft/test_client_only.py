"""The `graft` user commands with only the client's dependencies: no torch, no server packages.

Each command runs in a subprocess whose imports of the server side (torch, app, workers, transplant,
FastAPI, SQLAlchemy, Celery, boto3, uvicorn) fail as they would where only the client is installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import torch
from torch import nn

import tests.graft.test_cli as cli
from graft.local_server import LocalServer

SERVER_SIDE = ("torch", "app", "workers", "transplant", "fastapi", "sqlalchemy", "celery", "boto3", "uvicorn",
               "onnx", "onnxruntime", "safetensors", "alembic", "psycopg", "redis")
CLIENT_ONLY = [sys.executable, "-c", f"""
import sys
class _ServerSide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {SERVER_SIDE!r}:
            raise ImportError(f"{{name}} is not installed (client only)")
sys.meta_path.insert(0, _ServerSide())
from graft.cli import app
sys.argv[0] = "graft"
app()
"""]


def test_the_blocker_blocks() -> None:
    script = CLIENT_ONLY[2].replace("from graft.cli import app", "import torch")
    proc = subprocess.run([*CLIENT_ONLY[:2], script], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "not installed (client only)" in proc.stderr


def test_list_push_transplant_compose_predict_without_torch(graft_server: LocalServer, tmp_path: Path,
                                                             monkeypatch) -> None:
    monkeypatch.setattr(cli, "GRAFT", CLIENT_ONLY)
    assert cli.graft(graft_server, "--help").returncode == 0

    name = f"client-only-{uuid.uuid4().hex[:8]}"
    artifact = tmp_path / "m.pt2"  # an exported file, made where torch is
    torch.export.save(torch.export.export(nn.Linear(4, 2), (torch.randn(2, 4),)), str(artifact))
    pushed = cli.graft(graft_server, "--json", "modules", "push", str(artifact), "--name", name, "--kind",
                       "task", "--task", "cls", "--format", "torch_export", "--input-shape", "[null, 4]")
    assert pushed.returncode == 0, pushed.stderr
    listed = cli.graft(graft_server, "--json", "modules", "ls", "--task", "cls")
    assert listed.returncode == 0, listed.stderr
    assert name in [m["name"] for m in json.loads(listed.stdout)]

    # datasets push, transplant --wait, jobs, grid, compose and predict: the same script as with torch.
    cli.test_dataset_transplant_jobs_grid_compose_predict(graft_server, tmp_path)
