"""POST/GET /v1/compositions: cells, explicit pieces, shape chaining, pinning, pagination."""

from __future__ import annotations

import torch
from torch import nn

from tests.compositions.conftest import NATIVE_BIRD, X_SHAPE, make_module, register_adapter, upload
from transplant.artifacts import save_module


def test_cell_prefers_the_transplanted_adapter_over_the_native_teacher_pair(served) -> None:
    resp = served.post("/v1/compositions", json={"category": "bird", "task": "classify"})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["category_module"] == {"name": "bird-f", "version": 1}
    assert body["adapter"] == {"name": "bird-classify-h", "version": 1}
    assert body["task_module"] == {"name": "classify-generic", "version": 1}
    assert body["input_shape"] == [None, 3, 6, 6] and body["output_shape"] == [None, 3]
    assert body["category"] == "bird" and body["task"] == "classify"
    assert body["selection"]["rule"] == "newest"  # the only adapter, without a held-out metric
    assert served.get(f"/v1/compositions/{body['id']}").json() == {**body, "selection": None}


def test_native_teacher_pair_composes_explicitly(served) -> None:
    resp = served.post("/v1/compositions", json=NATIVE_BIRD)
    assert resp.status_code in (200, 201), resp.text
    body = resp.json()
    assert body["adapter"] is None
    assert body["task_module"] == {"name": "bird-classify-teacher", "version": 1}


def test_cell_without_teacher_uses_the_adapter_and_the_aliased_task_module(served) -> None:
    # Without lineage on the adapter, the task module is the preferred one whose input fits:
    # aliased before newer (the teacher's head was uploaded after the generic module).
    assert served.put("/v1/modules/classify-generic/aliases/prod", json={"version": 1}).status_code == 200
    resp = served.post("/v1/compositions", json={"category": "owl", "task": "classify"})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["category_module"] == {"name": "owl-f", "version": 1}
    assert body["adapter"] == {"name": "owl-classify-h", "version": 1}
    assert body["task_module"] == {"name": "classify-generic", "version": 1}


def test_same_pieces_give_the_same_pinned_composition(served) -> None:
    body = {"category_module": "bird-f", "adapter": "bird-classify-h@1",
            "task_module": {"name": "classify-generic", "version": "latest"}}
    first = served.post("/v1/compositions", json=body)
    assert first.status_code in (200, 201), first.text
    again = served.post("/v1/compositions", json=body)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["adapter"] == {"name": "bird-classify-h", "version": 1}


def test_aliases_win_over_newer_versions(served, artifacts) -> None:
    # A second (newer) version of owl-f; an alias on version 1 makes the cell keep version 1.
    torch.manual_seed(3)
    f2 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh()).eval()
    upload(served, "owl-f", save_module(f2, torch.zeros(2, 3, 6, 6), "torch_export"), "torch_export",
           [None, 3, 6, 6])
    newest = served.post("/v1/compositions", json={"category": "owl", "task": "classify"}).json()
    assert newest["category_module"] == {"name": "owl-f", "version": 2}
    assert served.put("/v1/modules/owl-f/aliases/prod", json={"version": 1}).status_code == 200
    aliased = served.post("/v1/compositions", json={"category": "owl", "task": "classify"}).json()
    assert aliased["category_module"] == {"name": "owl-f", "version": 1}
    assert aliased["id"] != newest["id"]


def test_pieces_that_do_not_chain_get_a_422_naming_them(served) -> None:
    resp = served.post("/v1/compositions", json={
        "category_module": "bird-f@1", "adapter": None, "task_module": "bird-f@1"})
    assert resp.status_code == 422
    assert "is a category module, not a task module" in resp.json()["detail"]

    make_module(served, "wide-head", "task", task="classify")
    head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 6 * 6, 2)).eval()
    upload(served, "wide-head", save_module(head, torch.zeros(2, 8, 6, 6), "torch_export"), "torch_export",
           [None, 8, 6, 6])
    resp = served.post("/v1/compositions", json={
        "category_module": "bird-f@1", "adapter": "bird-classify-h@1", "task_module": "wide-head@1"})
    assert resp.status_code == 422
    assert resp.json()["detail"] == (
        "The pieces do not chain: adapter bird-classify-h@1 outputs [null, 4, 6, 6] but task module "
        "wide-head@1 expects [null, 8, 6, 6]; pick pieces whose shapes fit."
    )
    resp = served.post("/v1/compositions", json={"category_module": "bird-f@1", "task_module": "wide-head@1"})
    assert resp.status_code == 422
    assert "category module bird-f@1 outputs [null, 4, 6, 6] but task module wide-head@1" in resp.text


def test_bad_requests_are_4xx_with_a_detail(served) -> None:
    cases = [
        ({"category": "bird"}, 422, "both category and task"),
        ({"category": "bird", "task": "classify", "task_module": "x"}, 422, "not both"),
        ({"adapter": "bird-classify-h"}, 422, "category_module and task_module"),
        ({"category": "fish", "task": "classify"}, 404, "POST /v1/transplants"),
        ({"category_module": "nope@1", "task_module": "classify-generic"}, 404, "nope"),
        ({"category_module": "bird-f@9", "task_module": "classify-generic"}, 404, "'9'"),
    ]
    for body, status, words in cases:
        resp = served.post("/v1/compositions", json=body)
        assert resp.status_code == status, (body, resp.text)
        assert words in resp.json()["detail"], (body, resp.text)
    assert served.get("/v1/compositions/not-an-id").status_code == 404


def test_list_is_paginated(served) -> None:
    served.post("/v1/compositions", json={"category": "bird", "task": "classify"})
    served.post("/v1/compositions", json={"category": "owl", "task": "classify"})
    seen, cursor = [], None
    while True:
        params = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        page = served.get("/v1/compositions", params=params).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    everything = served.get("/v1/compositions", params={"limit": 500}).json()["items"]
    assert seen == [item["id"] for item in everything] and len(seen) >= 2
    owls = served.get("/v1/compositions", params={"category": "owl"}).json()["items"]
    assert owls and all(item["category"] == "owl" for item in owls)
    assert served.get("/v1/compositions", params={"cursor": "garbage"}).status_code == 400


def test_cell_picks_the_best_held_out_adapter_not_the_newest_and_says_why(served, artifacts) -> None:
    """A newer 2-epoch trial (agreement 0) or a train-set score never displaces the better adapter."""
    make_module(served, "egret-f", "category", category="egret")
    upload(served, "egret-f", artifacts.f, "torch_export", X_SHAPE)
    register_adapter(served, artifacts, category="egret", name="egret-good",
                     metrics={"teacher_agreement": 0.769, "metrics_on": "val", "n_val": 26})
    register_adapter(served, artifacts, category="egret", name="egret-trial",
                     metrics={"teacher_agreement": 0.0, "metrics_on": "val", "n_val": 26})
    register_adapter(served, artifacts, category="egret", name="egret-ten-labels",  # 1.0 on 2 inputs: luck
                     metrics={"teacher_agreement": 1.0, "metrics_on": "val", "n_val": 2})
    register_adapter(served, artifacts, category="egret", name="egret-no-split",
                     metrics={"teacher_agreement": 1.0, "metrics_on": "train"})

    resp = served.post("/v1/compositions", json={"category": "egret", "task": "classify"})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["adapter"] == {"name": "egret-good", "version": 1}
    assert body["selection"]["rule"] == "best held-out metric"
    assert "0.769 on 26 held-out inputs" in body["selection"]["reason"]
    assert "4 adapter" in body["selection"]["reason"]
    cell = next(c for c in served.get("/v1/grid").json()["cells"]
                if (c["category"], c["task"]) == ("egret", "classify"))
    assert cell["adapter"] == body["adapter"] and cell["metrics"]["teacher_agreement"] == 0.769
    assert cell["selection"]["rule"] == "best held-out metric"

    # An alias is the operator's word: it wins over the metric.
    assert served.put("/v1/modules/egret-trial/aliases/production", json={"version": 1}).status_code == 200
    aliased = served.post("/v1/compositions", json={"category": "egret", "task": "classify"}).json()
    assert aliased["adapter"] == {"name": "egret-trial", "version": 1}
    assert aliased["selection"]["rule"] == "alias"


def test_cell_with_no_held_out_metric_takes_the_newest_adapter(served, artifacts) -> None:
    make_module(served, "stork-f", "category", category="stork")
    upload(served, "stork-f", artifacts.f, "torch_export", X_SHAPE)
    register_adapter(served, artifacts, category="stork", name="stork-old", metrics={"agreement": 0.9})
    register_adapter(served, artifacts, category="stork", name="stork-new")
    body = served.post("/v1/compositions", json={"category": "stork", "task": "classify"}).json()
    assert body["adapter"] == {"name": "stork-new", "version": 1}
    assert body["selection"]["rule"] == "newest"
