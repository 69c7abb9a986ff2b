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
        result = runner.invoke(cli, ["token", "create", "--local", "--scope", "write", "--name", "ci"])
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


def test_token_create_local_refuses_a_database_that_is_not_there(tmp_path: Path, monkeypatch) -> None:
    """Run without the server's GRAFT_DATA_DIR, it must not make a new database and a useless token."""
    monkeypatch.setenv("GRAFT_DATA_DIR", str(tmp_path / "not-the-server"))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["token", "create", "--local", "--scope", "write"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    assert "no Graft database" in result.output and "GRAFT_DATA_DIR" in result.output
    assert "GRAFT_BOOTSTRAP_TOKEN" in result.output
    assert not (tmp_path / "not-the-server" / "graft.db").exists()
