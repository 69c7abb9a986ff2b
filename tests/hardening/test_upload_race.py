"""Two uploads of the same bytes at the same moment, one refused by the probe: the refused one's clean-up
must not delete the content-addressed object the other has just committed (it deleted it before: the
committed version then answered 503 for good). In a loop, both orders, on both backends (fixture `api`:
SQLite + folder, PostgreSQL + SeaweedFS S3); afterwards every committed version downloads intact."""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from tests.app.test_modules import IN_SHAPE, make_module, upload
from transplant.artifacts import save_module

ROUNDS = 4
BAD_SHAPE = [None, 5, 8, 8]  # the probe fails on it: 422


def _artifact(seed: int) -> bytes:
    torch.manual_seed(seed)
    return save_module(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval(),
                       torch.zeros(2, 3, 8, 8), "torch_export")


def test_refused_twin_upload_never_deletes_a_committed_object(api) -> None:
    make_module(api, "race-ok")
    make_module(api, "race-bad")
    committed: list[tuple[int, str]] = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for i in range(ROUNDS):
            for first in ("bad", "ok"):
                data = _artifact(seed=2 * i + (first == "ok"))
                barrier = threading.Barrier(2)

                def send(name: str, shape: list, delay: float, data: bytes = data,
                         barrier: threading.Barrier = barrier):  # noqa: ANN202
                    barrier.wait()
                    time.sleep(delay)
                    return upload(api, name, data, input_shape=shape)

                lag = {"bad": (0.0, 0.01), "ok": (0.01, 0.0)}[first]
                bad = pool.submit(send, "race-bad", BAD_SHAPE, lag[0])
                ok = pool.submit(send, "race-ok", IN_SHAPE, lag[1])
                assert bad.result().status_code == 422, bad.result().text
                resp = ok.result()
                assert resp.status_code == 201, resp.text
                committed.append((resp.json()["version"], resp.json()["sha256"]))
    assert len(committed) == 2 * ROUNDS
    for version, sha in committed:
        got = api.get(f"/v1/modules/race-ok/versions/{version}/artifact", follow_redirects=True)
        assert got.status_code == 200, (version, got.text)
        assert hashlib.sha256(got.content).hexdigest() == sha
    assert api.get("/v1/modules/race-bad").json()["versions"] == []


def test_upload_finding_an_old_orphan_makes_it_young_again(embedded_client, embedded_settings) -> None:
    """An old orphan of the same bytes is refreshed by the upload that reuses it, so a sweep running
    before that upload's row commits keeps it (the grace period covers uploads in flight)."""
    import os
    from datetime import UTC, datetime, timedelta

    from app.storage import key_for
    from app.storage.sweeper import sweep_orphans

    api, data = embedded_client, _artifact(seed=99)
    make_module(api, "race-ok")
    assert upload(api, "race-ok", data, input_shape=BAD_SHAPE).status_code == 422  # leaves an orphan
    key = key_for(hashlib.sha256(data).hexdigest())
    path = next(p for p in embedded_settings.data_dir.rglob(key.rsplit("/", 1)[-1]) if p.is_file())
    old = time.time() - 3 * 3600
    os.utime(path, (old, old))
    store = api.app.state.store
    store.put_file(path, key)  # what the next upload of these bytes does before its probe
    with api.app.state.sessionmaker() as session:
        report = sweep_orphans(session, store, now=datetime.now(UTC) + timedelta(minutes=5))
    assert report.deleted == [] and report.too_young == 1
