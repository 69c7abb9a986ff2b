"""A crash between storing an object and committing its row leaves no visible version; the sweeper
removes the orphan object (and nothing referenced or younger than its grace period)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import torch
from fastapi.testclient import TestClient

from app.main import create_app
from app.modules import repository, service
from app.storage import key_for
from app.storage.sweeper import sweep_orphans
from tests.app.test_modules import IN_SHAPE, conv_net, make_module, upload
from tests.conftest import ADMIN_TOKEN
from transplant.artifacts import save_module


def test_crash_before_commit_leaves_an_orphan_the_sweeper_removes(backend_settings, tmp_path) -> None:
    kept = save_module(conv_net(), torch.zeros(2, 3, 8, 8), "torch_export")
    crashed = save_module(torch.nn.Sequential(conv_net(), torch.nn.ReLU()).eval(), torch.zeros(2, 3, 8, 8),
                          "torch_export")
    with TestClient(create_app(backend_settings), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as api:
        make_module(api)
        assert upload(api, "bird-f", kept).status_code == 201
        meta = {"meta": json.dumps({"name": "d"})}
        ds = api.post("/v1/datasets", files={"file": ("d.npz", _npz())}, data=meta)
        assert ds.status_code == 201, ds.text
        state = api.app.state
        path = tmp_path / "crashed.pt2"
        path.write_bytes(crashed)
        # The upload's work up to the commit, then the process "dies": the session closes uncommitted.
        with state.sessionmaker() as session:
            module = repository.get_by_name(session, "bird-f")
            version, created = service.add_version(
                session, state.store, backend_settings, module=module, file_path=path,
                meta={"format": "torch_export", "input_shape": IN_SHAPE},
            )
            orphan = version.storage_key
            assert created and state.store.exists(orphan)
        assert [v["version"] for v in api.get("/v1/modules/bird-f").json()["versions"]] == [1]
        assert api.get("/v1/modules/bird-f/versions/2").status_code == 404

        with state.sessionmaker() as session:
            young = sweep_orphans(session, state.store, grace=timedelta(hours=1))
            assert young.deleted == [] and young.too_young == 1 and young.referenced == 2
            dry = sweep_orphans(session, state.store, grace=timedelta(0), dry_run=True)
            assert dry.deleted == [orphan] and state.store.exists(orphan)
            swept = sweep_orphans(session, state.store, grace=timedelta(0))
        assert swept.deleted == [orphan] and swept.scanned == 3
        assert not state.store.exists(orphan)
        assert api.get("/v1/modules/bird-f/versions/1/artifact").content == kept
        assert state.store.exists(key_for(ds.json()["sha256"]))


def _npz() -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((4, 3), np.float32))
    return buf.getvalue()


def test_graft_gc_command(embedded_settings, tmp_path) -> None:
    store_root = embedded_settings.data_dir / "artifacts"
    with TestClient(create_app(embedded_settings)):
        pass
    key = key_for("ab" * 32)
    (store_root / key).parent.mkdir(parents=True, exist_ok=True)
    (store_root / key).write_bytes(b"orphan")
    env = {"GRAFT_DATA_DIR": str(embedded_settings.data_dir), "PATH": "/usr/bin:/bin"}
    cmd = [str(Path(sys.executable).parent / "graft"), "gc", "--grace-hours", "0"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"deleted {key}" in out.stdout and "1 orphans deleted" in out.stdout
    assert not (store_root / key).exists()
