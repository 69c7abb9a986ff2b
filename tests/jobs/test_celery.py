"""Transplant jobs through real Redis and real `graft worker` processes, on PostgreSQL and S3."""

from __future__ import annotations

import pytest

from support.world import (
    World,
    check_adapter_reproduces_teacher,
    final,
    make_world,
    sse_events,
    transplant,
    wait_for,
)

FAST = {"epochs": 3, "train": {"batch_size": 16, "val_fraction": 0.0, "lr": 0.01}}
LONG = {"epochs": 5000, "train": {"batch_size": 8, "val_fraction": 0.0, "patience": 5000}}


@pytest.fixture(scope="module")
def world(queue_client) -> World:
    return make_world(queue_client, "cel")


def test_transplant_end_to_end(queue_client, workers, world: World) -> None:
    api = queue_client
    worker = workers.warm()
    job_id = transplant(api, world, method="back_distillation", seed=2, **FAST)
    events = sse_events(api, job_id)
    assert [d["status"] for name, d in events if name == "status"][-1] == "succeeded"
    assert any(name == "progress" for name, _ in events) or len(events) >= 2

    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["attempts"] == 1
    assert job["worker"].startswith("w0-")  # run by the Celery worker process, not in the API
    assert job["progress"]["epoch"] == 3 and len(job["history"]) == 3
    assert job["result"]["adapter"] == {"name": "celcat-to-cls-adapter", "version": 1}
    version = check_adapter_reproduces_teacher(api, world, job)
    assert [p["role"] for p in version["parents"]] == ["category", "teacher", "student"]
    assert version["job_id"] == job_id and version["format"] == "safetensors"
    assert f"graft.transplant[{job_id}]" in worker.log()


def test_cancel_queued_and_running(queue_client, workers, world: World) -> None:
    api = queue_client
    workers.warm()
    running = transplant(api, world, result_module="cel-long", **LONG)
    wait_for(api, running, lambda j: j["status"] == "running" and j["progress"].get("epoch", 0) >= 1)
    # The only worker is busy (prefetch 1, late acks): the next job waits in Redis, and never starts.
    queued = transplant(api, world, result_module="cel-queued", **FAST)
    resp = api.post(f"/v1/jobs/{queued}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    resp = api.post(f"/v1/jobs/{running}/cancel")
    assert resp.status_code == 200 and resp.json()["cancel_requested"] is True
    job = wait_for(api, running, final, timeout=30)
    assert job["status"] == "cancelled" and job["result"] is None
    # The worker then takes the cancelled job's message and drops it without running it.
    follow_up = transplant(api, world, result_module="cel-after", **FAST)
    assert wait_for(api, follow_up, final)["status"] == "succeeded"
    assert api.get(f"/v1/jobs/{queued}").json()["attempts"] == 0
    for name in ("cel-long", "cel-queued"):
        assert api.get(f"/v1/modules/{name}").status_code == 404  # nothing registered
    assert api.post(f"/v1/jobs/{running}/cancel").status_code == 409


def test_killed_worker_job_completes_once(queue_client, workers, world: World) -> None:
    """SIGKILL mid-job: Redis redelivers the unacknowledged job to a new worker; one adapter version."""
    api = queue_client
    workers.stop_all()
    short = {"GRAFT_JOB_VISIBILITY_TIMEOUT_S": "2"}
    first = workers.start(**short)
    job_id = transplant(
        api, world, result_module="cel-killed",
        epochs=15, train={"batch_size": 8, "val_fraction": 0.0, "patience": 1000},
    )
    wait_for(api, job_id, lambda j: j["status"] == "running" and j["progress"].get("epoch", 0) >= 2)
    first.kill()
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "running"  # nobody else knows yet
    workers.start(**short)
    job = wait_for(api, job_id, final, timeout=120)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 2
    versions = api.get("/v1/modules/cel-killed/versions").json()["items"]
    assert [v["version"] for v in versions] == [1] and versions[0]["job_id"] == job_id
    workers.stop_all()
