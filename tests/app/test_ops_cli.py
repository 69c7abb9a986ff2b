"""The operator CLI: `graft db upgrade` and `graft token create` on an embedded data folder."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.config import Settings, get_settings
from app.main import create_app
from graft.cli import app as cli


def test_token_create_prints_a_working_token(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GRAFT_DATA_DIR", str(tmp_path / "graft"))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
        result = runner.invoke(cli, ["token", "create", "--scope", "write", "--name", "ci"])
        assert result.exit_code == 0, result.output
        token = result.output.strip().splitlines()[-1]
        assert token.startswith("graft_")
        bad = runner.invoke(cli, ["token", "create", "--scope", "root"])
        assert bad.exit_code == 2
    finally:
        get_settings.cache_clear()
    with TestClient(create_app(Settings(data_dir=tmp_path / "graft"))) as api:
        headers = {"Authorization": f"Bearer {token}"}
        module = {"name": "t", "kind": "task", "task": "seg"}
        assert api.post("/v1/modules", json=module, headers=headers).status_code == 201
        assert api.get("/v1/tokens", headers=headers).status_code == 403
