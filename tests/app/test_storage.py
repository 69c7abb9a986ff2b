"""Nothing half-written: a failed store put leaves no row; a failed commit leaves no row, and its object
(content-addressed, maybe shared with a concurrent upload) to the sweeper."""

from __future__ import annotations

import pytest
import torch
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.storage import key_for
from tests.app.test_modules import conv_net, make_module, upload
from transplant.artifacts import save_module


@pytest.fixture(scope="module")
def artifact() -> bytes:
    return save_module(conv_net(), torch.zeros(2, 3, 8, 8), "torch_export")


def test_failed_put_leaves_no_row(api, artifact, monkeypatch) -> None:
    make_module(api)
    store = api.app.state.store

    def broken_put(path, key):  # noqa: ANN001
        raise ConnectionError("store went away")

    monkeypatch.setattr(store, "put_file", broken_put)
    resp = upload(api, "bird-f", artifact, "torch_export")
    assert resp.status_code == 503 and "store" in resp.json()["detail"]
    assert api.get("/v1/modules/bird-f").json()["versions"] == []


def test_failed_commit_leaves_no_row_and_the_object_to_the_sweeper(api, artifact, monkeypatch) -> None:
    import hashlib

    make_module(api)
    real_commit = Session.commit

    failed = []

    def commit_once_failing(self):  # noqa: ANN001
        # Only the upload's session holds a ModuleVersion (background runners commit too).
        if not failed and any(type(o).__name__ == "ModuleVersion" for o in self.identity_map.values()):
            failed.append(True)
            raise OperationalError("COMMIT", {}, ConnectionError("database went away"))
        return real_commit(self)

    monkeypatch.setattr(Session, "commit", commit_once_failing)
    resp = upload(api, "bird-f", artifact, "torch_export")
    assert resp.status_code == 503
    monkeypatch.setattr(Session, "commit", real_commit)
    key = key_for(hashlib.sha256(artifact).hexdigest())
    assert api.get("/v1/modules/bird-f").json()["versions"] == []
    assert api.app.state.store.exists(key)  # an orphan, left to the sweeper's grace period

    from datetime import UTC, datetime, timedelta

    from app.storage.sweeper import sweep_orphans

    with api.app.state.sessionmaker() as session:
        later = datetime.now(UTC) + timedelta(hours=2)
        assert sweep_orphans(session, api.app.state.store, now=later).deleted == [key]
    assert upload(api, "bird-f", artifact, "torch_export").status_code == 201
