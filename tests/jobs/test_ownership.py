"""Jobs honour module ownership like version uploads: a job writes only into modules of the token that
asked for it (or any, for an admin), the modules it creates belong to that token, and only that token
or an admin may cancel it. Two write tokens, alice and bob, on the embedded runner."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from support.world import World, final, wait_for

FAST = {"epochs": 3, "train": {"batch_size": 16, "val_fraction": 0.0, "lr": 0.01}}
LONG = {"epochs": 5000, "train": {"batch_size": 8, "val_fraction": 0.0, "patience": 5000}}


def _token(api: TestClient, name: str) -> dict[str, str]:
    resp = api.post("/v1/tokens", json={"name": name, "scope": "write"})
    assert resp.status_code == 201, resp.text
    return {"Authorization": f"Bearer {resp.json()['token']}"}


@pytest.fixture(scope="module")
def tokens(embedded_api: TestClient) -> tuple[dict, dict]:
    return _token(embedded_api, "alice-jobs"), _token(embedded_api, "bob-jobs")


def _adapter_module(api: TestClient, world: World, name: str, headers: dict) -> None:
    body = {"name": name, "kind": "adapter", "category": world.category, "task": "cls"}
    created = api.post("/v1/modules", json=body, headers=headers)
    assert created.status_code == 201, created.text


def _transplant(api: TestClient, world: World, headers: dict, **body):  # noqa: ANN202
    return api.post("/v1/transplants", json={**world.refs(), **body}, headers=headers)


def test_transplant_into_another_tokens_module_is_403(embedded_api, embedded_world, tokens) -> None:
    api, (alice, bob) = embedded_api, tokens
    _adapter_module(api, embedded_world, "alice-own-h", alice)
    refused = _transplant(api, embedded_world, bob, result_module="alice-own-h", **FAST)
    assert refused.status_code == 403, refused.text
    detail = refused.json()["detail"]
    assert "belongs to another token" in detail and "a job writes only into modules of the token" in detail

    # The owner may; and only the owner (or an admin) may cancel that job.
    accepted = _transplant(api, embedded_world, alice, result_module="alice-own-h", **LONG)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    denied = api.post(f"/v1/jobs/{job_id}/cancel", headers=bob)
    assert denied.status_code == 403, denied.text
    assert "only the token that queued a job, or an admin, may cancel it" in denied.json()["detail"]
    assert api.get(f"/v1/jobs/{job_id}").json()["cancel_requested"] is False
    assert api.post(f"/v1/jobs/{job_id}/cancel", headers=alice).status_code == 200
    assert wait_for(api, job_id, final, timeout=60)["status"] == "cancelled"


def test_admin_may_cancel_any_job(embedded_api, embedded_world, tokens) -> None:
    api, (alice, _bob) = embedded_api, tokens
    job_id = _transplant(api, embedded_world, alice, result_module="alice-cancel-h", **LONG).json()["job_id"]
    assert api.post(f"/v1/jobs/{job_id}/cancel").status_code == 200  # the fixture's admin token
    assert wait_for(api, job_id, final, timeout=60)["status"] == "cancelled"


def test_module_a_job_creates_belongs_to_the_jobs_token(embedded_api, embedded_world, tokens) -> None:
    api, (alice, bob) = embedded_api, tokens
    resp = _transplant(api, embedded_world, bob, result_module="bob-made-h", seed=2, **FAST)
    assert resp.status_code == 202, resp.text
    job = wait_for(api, resp.json()["job_id"], final, timeout=120)
    assert job["status"] == "succeeded", job["error"]
    moved = api.put("/v1/modules/bob-made-h/aliases/prod", json={"version": 1}, headers=alice)
    assert moved.status_code == 403 and "belongs to another token" in moved.json()["detail"], moved.text
    assert api.put("/v1/modules/bob-made-h/aliases/prod", json={"version": 1}, headers=bob).status_code == 200
    # alice cannot have a job add versions to it either.
    again = _transplant(api, embedded_world, alice, result_module="bob-made-h", **FAST)
    assert again.status_code == 403, again.text


def test_module_taken_while_queued_fails_the_job(embedded_api, embedded_world, tokens) -> None:
    """The worker checks again when it registers: the module may have been created since the request."""
    api, (alice, bob) = embedded_api, tokens
    blocker = _transplant(api, embedded_world, alice, result_module="alice-block-h", **LONG).json()["job_id"]
    wait_for(api, blocker, lambda j: j["status"] == "running")
    queued = _transplant(api, embedded_world, bob, result_module="race-h", **FAST)
    assert queued.status_code == 202, queued.text  # race-h does not exist yet
    _adapter_module(api, embedded_world, "race-h", alice)
    assert api.post(f"/v1/jobs/{blocker}/cancel", headers=alice).status_code == 200
    job = wait_for(api, queued.json()["job_id"], final, timeout=120)
    assert job["status"] == "failed" and "belongs to another token" in job["error"], job
    assert api.get("/v1/modules/race-h").json()["versions"] == []
