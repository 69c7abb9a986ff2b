"""Embedded mode (no broker): the in-process runner runs the same transplant task behind the API."""

from __future__ import annotations

import numpy as np
import pytest

from support.world import (
    FEAT_SHAPE,
    World,
    check_adapter_reproduces_teacher,
    final,
    nan_head,
    sse_events,
    transplant,
    upload_dataset,
    upload_module,
    wait_for,
)

FAST = {"epochs": 3, "train": {"batch_size": 16, "val_fraction": 0.0, "lr": 0.01}}
LONG = {"epochs": 5000, "train": {"batch_size": 8, "val_fraction": 0.0, "patience": 5000}}


@pytest.fixture
def world(embedded_world: World) -> World:
    return embedded_world


def test_transplant_end_to_end(embedded_api, world: World) -> None:
    api = embedded_api
    job_id = transplant(api, world, method="back_distillation", seed=1, **FAST)
    events = sse_events(api, job_id)
    assert events[-1][0] == "status" and events[-1][1]["status"] == "succeeded"
    statuses = [d["status"] for name, d in events if name == "status"]
    assert statuses[0] in ("queued", "running") and statuses[-1] == "succeeded"

    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["attempts"] == 1 and job["error"] is None
    assert job["progress"]["epoch"] == 3 and job["progress"]["epochs"] == 3
    assert {"loss", "loss_out", "loss_jac", "samples_per_s"} <= set(job["progress"])
    assert [r["epoch"] for r in job["history"]] == [1, 2, 3]
    assert job["result"]["adapter"] == {"name": "embcat-to-cls-adapter", "version": 1}

    version = check_adapter_reproduces_teacher(api, world, job)
    assert {(p["name"], p["version"], p["role"]) for p in version["parents"]} == {
        ("emb-f", 1, "category"), ("emb-gt", 1, "teacher"), ("emb-gs", 1, "student"),
    }
    assert version["job_id"] == job_id
    assert version["metrics"]["dataset"] == world.dataset
    module = api.get("/v1/modules/embcat-to-cls-adapter").json()
    assert module["kind"] == "adapter" and module["category"] == "embcat" and module["task"] == "cls"


def test_cancel_running_and_queued(embedded_api, world: World) -> None:
    api = embedded_api
    running = transplant(api, world, result_module="emc-long", **LONG)
    queued = transplant(api, world, result_module="emc-queued", **FAST)
    wait_for(api, running, lambda j: j["status"] == "running" and j["progress"].get("epoch", 0) >= 1)
    # One job at a time in the embedded runner: the second is still queued, and never starts.
    resp = api.post(f"/v1/jobs/{queued}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    resp = api.post(f"/v1/jobs/{running}/cancel")
    assert resp.status_code == 200 and resp.json()["cancel_requested"] is True
    job = wait_for(api, running, final, timeout=30)
    assert job["status"] == "cancelled" and job["result"] is None
    assert api.get(f"/v1/jobs/{queued}").json()["attempts"] == 0
    for name in ("emc-long", "emc-queued"):
        assert api.get(f"/v1/modules/{name}").status_code == 404  # nothing registered
    again = api.post(f"/v1/jobs/{running}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]


def test_nan_loss_fails_with_a_readable_error(embedded_api, world: World) -> None:
    api = embedded_api
    upload_module(api, "nan-gs", "task", nan_head(), FEAT_SHAPE, task="cls")
    job_id = transplant(api, world, student_task_module="nan-gs", result_module="nan-adapter", **FAST)
    job = wait_for(api, job_id, final)
    assert job["status"] == "failed"
    assert job["error"].startswith("Training diverged: loss became nan")
    assert job["progress"]["stage"] == "failed"
    assert api.get("/v1/modules/nan-adapter").status_code == 404


def test_missing_dataset_object_fails_the_job(embedded_api, world: World) -> None:
    api = embedded_api
    x = np.random.default_rng(5).standard_normal((16, 3, 6, 6)).astype(np.float32)
    ds = upload_dataset(api, "gone", x)
    embedded_api.app.state.store.delete(f"sha256/{ds['sha256'][:2]}/{ds['sha256']}")
    job_id = transplant(api, world, dataset=ds["id"], result_module="gone-adapter", **FAST)
    job = wait_for(api, job_id, final)
    assert job["status"] == "failed"
    assert job["error"].startswith(f"Dataset {ds['id']} could not be read from the artifact store")
    assert api.get("/v1/modules/gone-adapter").status_code == 404


def test_job_past_its_time_limit_is_stopped_and_failed(tmp_path) -> None:
    """GRAFT_JOB_TIME_LIMIT_S stops a job at its next step (steps are bounded: graphs cannot loop)."""
    from fastapi.testclient import TestClient

    from app.config import Settings
    from app.main import create_app
    from support.world import make_world
    from tests.conftest import ADMIN_TOKEN

    settings = Settings(data_dir=tmp_path / "graft", bootstrap_token=ADMIN_TOKEN, job_time_limit_s=1.0)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as api:
        world = make_world(api, "lim")
        job_id = transplant(api, world, result_module="lim-h", **LONG)
        job = wait_for(api, job_id, final, timeout=60)
        assert job["status"] == "failed" and "time limit of 1 s" in job["error"], job
        assert api.get("/v1/modules/lim-h").status_code == 404  # nothing registered
