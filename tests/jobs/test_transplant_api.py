"""POST /v1/transplants checks everything before queueing; the job routes list, read and refuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from support.world import (
    FEAT_SHAPE,
    World,
    final,
    nan_head,
    transplant,
    upload_dataset,
    upload_module,
    wait_for,
)


@pytest.fixture(scope="module")
def api(embedded_api, embedded_world: World):
    """The embedded app with, besides the world, a segmentation task module and a small-input student."""
    torch.manual_seed(3)
    seg = nn.Sequential(nn.Conv2d(4, 2, 1)).eval()
    small = nn.Sequential(nn.Flatten(), nn.Linear(4 * 5 * 5, 3)).eval()
    upload_module(embedded_api, "val-seg", "task", seg, FEAT_SHAPE, task="seg")
    upload_module(embedded_api, "val-small", "task", small, (4, 5, 5), task="cls")
    return embedded_api


def _post(api, world: World, **body):
    return api.post("/v1/transplants", json={**world.refs(), **body})


def _jobs(api) -> set[str]:
    return {j["id"] for j in api.get("/v1/jobs", params={"limit": 200}).json()["items"]}


CASES = [
    ({"category_module": "nope-f@1"}, 404, "No module is called 'nope-f'"),
    ({"category_module": "emb-gt@1"}, 422, "is a task module, but a category module is needed"),
    ({"student_task_module": "emb-f"}, 422, "is a category module, but a task module is needed"),
    ({"student_task_module": "val-seg"}, 422, "solves task 'cls' but the student task module solves 'seg'"),
    ({"teacher_task_module": "emb-gt@7"}, 404, "has no version or alias '7'"),
    ({"dataset": "0000"}, 404, "No dataset has id '0000'"),
    ({"method": "supervised"}, 422, "Method 'supervised' needs labels"),
    ({"method": "magic"}, 422, "method"),
    ({"epochs": 0}, 422, "epochs"),
    ({"adapter": {"arch": "conv", "depth": 3}}, 422, "Unknown adapter option(s) ['depth']"),
    ({"adapter": {"layers": "two"}}, 422, "adapter.layers must be an integer"),
    ({"adapter": {"arch": "transformer"}}, 422, "unknown adapter arch 'transformer'"),
    ({"adapter": "big"}, 422, "adapter"),
    ({"train": {"lr": -1}}, 422, "train.lr"),
    ({"train": {"optimizer": "sgd"}}, 422, "train.optimizer"),
    ({"result_module": "emb-f"}, 409, "exists and is a category module"),
    ({"result_module": "Bad Name"}, 422, "is not a valid module name"),
    ({"surprise": 1}, 422, "surprise"),
]


@pytest.mark.parametrize(("override", "status", "detail"), CASES, ids=[str(c[0]) for c in CASES])
def test_bad_requests_are_refused_before_queueing(api, embedded_world, override, status, detail) -> None:
    before = _jobs(api)
    resp = _post(api, embedded_world, **override)
    assert resp.status_code == status, resp.text
    assert detail in resp.json()["detail"]
    assert _jobs(api) == before  # nothing written, nothing queued


def test_shape_mismatch_names_both_shapes(api, embedded_world) -> None:
    resp = _post(api, embedded_world, student_task_module="val-small")
    assert resp.status_code == 422
    detail = resp.json()["detail"]
    assert "output shape [4, 6, 6]" in detail and "input shape [4, 5, 5]" in detail
    bad = upload_dataset(api, "val-bad-shape", np.zeros((4, 3, 5, 5), np.float32))
    resp = _post(api, embedded_world, dataset=bad["id"])
    assert resp.status_code == 422
    assert "samples of shape [3, 5, 5]" in resp.json()["detail"] and "[3, 6, 6]" in resp.json()["detail"]


def test_supervised_with_labels_records_the_resolved_request(api, embedded_world) -> None:
    x = np.random.default_rng(1).standard_normal((24, 3, 6, 6)).astype(np.float32)
    labelled = upload_dataset(api, "val-labelled", x, np.arange(24) % 3)
    job_id = transplant(
        api, embedded_world, method="supervised", dataset=labelled["id"], student_task_module="emb-gs@latest",
        result_module="val-supervised", epochs=2, train={"batch_size": 8},
    )
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["kind"] == "transplant"
    assert job["request"]["student_task_module"] == {"name": "emb-gs", "version": 1}  # ref resolved
    assert job["request"]["category"] == "embcat" and job["request"]["task"] == "cls"
    assert job["request"]["train"] == {"batch_size": 8}
    done = wait_for(api, job_id, final)
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["metrics"]["metric_name"] == "accuracy"


def test_list_filter_and_paginate(api, embedded_world) -> None:
    # Jobs into a task module whose output is NaN fail reliably ("training diverged").
    upload_module(api, "val-page-nan", "task", nan_head(), FEAT_SHAPE, task="cls")
    ids = [
        transplant(api, embedded_world, student_task_module="val-page-nan", result_module=f"val-page-{i}",
                   epochs=1)
        for i in range(3)
    ]
    for job_id in ids:
        wait_for(api, job_id, final)
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, "status": "failed", "kind": "transplant"}
        page = api.get("/v1/jobs", params={**params, **({"cursor": cursor} if cursor else {})}).json()
        assert len(page["items"]) <= 2 and all(j["status"] == "failed" for j in page["items"])
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen[:3] == ids[::-1]  # newest first, no duplicates across pages
    assert len(seen) == len(set(seen))
    assert api.get("/v1/jobs", params={"status": "lost"}).status_code == 422
    bad = api.get("/v1/jobs", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 400 and "cursor" in bad.json()["detail"]


def test_unknown_job_and_auth(api) -> None:
    for method, path in (("GET", "/v1/jobs/nope"), ("GET", "/v1/jobs/nope/events"),
                         ("POST", "/v1/jobs/nope/cancel")):
        resp = api.request(method, path)
        assert resp.status_code == 404 and "No job with id 'nope'" in resp.json()["detail"]
    resp = api.post("/v1/transplants", json={}, headers={"Authorization": ""})
    assert resp.status_code == 401
