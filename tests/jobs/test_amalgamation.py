"""POST /v1/amalgamations: two teachers trained here on halves of sklearn's digits → one student."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from support.world import _ok, exported, final, upload_dataset, upload_module, wait_for

LOW, HIGH = [str(c) for c in range(5)], [str(c) for c in range(5, 10)]
FAST = {"epochs": 15, "train": {"batch_size": 64}}


@functools.cache
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    return (data.images[:, None] / 16.0).astype(np.float32), data.target  # (N, 1, 8, 8), (N,)


@functools.cache
def teacher(classes: tuple[int, ...], width: int, seed: int) -> tuple[nn.Module, nn.Module]:
    """f: (1, 8, 8) → (width, 4, 4); head: → logits over `classes`; trained on those classes only."""
    x, y = digits()
    keep = np.isin(y, classes)
    xs, ys = torch.from_numpy(x[keep]), torch.from_numpy(np.searchsorted(classes, y[keep]))
    torch.manual_seed(seed)
    f = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    head = nn.Sequential(nn.Flatten(), nn.Linear(width * 16, len(classes)))
    opt = torch.optim.Adam([*f.parameters(), *head.parameters()], lr=0.02)
    for _ in range(80):
        loss = nn.functional.cross_entropy(head(f(xs)), ys)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return f.eval(), head.eval()


def upload_head(api, name: str, head: nn.Module, width: int, metrics: dict) -> None:
    _ok(api.post("/v1/modules", json={"name": name, "kind": "task", "task": "digits"}))
    meta = {"format": "torch_export", "input_shape": [None, width, 4, 4], "metrics": metrics}
    _ok(api.post(
        f"/v1/modules/{name}/versions",
        files={"file": ("head.pt2", exported(head, (width, 4, 4)), "application/octet-stream")},
        data={"meta": json.dumps(meta)},
    ))


@pytest.fixture(scope="module")
def api(embedded_api):
    """Two digit teachers (widths 16 and 24) and the unlabelled digits, uploaded once."""
    for prefix, classes, width, seed, metrics in (
        ("dlow", tuple(range(5)), 16, 0, {}),  # classes given in the request
        ("dhigh", tuple(range(5, 10)), 24, 1, {"classes": HIGH}),  # classes recorded with the head
    ):
        f, head = teacher(classes, width, seed)
        upload_module(embedded_api, f"{prefix}-f", "category", f, (1, 8, 8), category=prefix)
        upload_head(embedded_api, f"{prefix}-head", head, width, metrics)
    x, _ = digits()
    embedded_api.dataset_id = upload_dataset(embedded_api, "digits-x", x)["id"]
    upload_module(embedded_api, "dother-head", "task", nn.Sequential(nn.Flatten(), nn.Linear(256, 5)).eval(),
                  (16, 4, 4), task="other")
    return embedded_api


def body(api, **over) -> dict:
    return {
        "teachers": [
            {"category_module": "dlow-f@1", "task_module": "dlow-head@1", "classes": LOW},
            {"category_module": "dhigh-f", "task_module": "dhigh-head"},
        ],
        "dataset": api.dataset_id,
        "student": {"widths": [12, 24]},
        **FAST,
        **over,
    }


def test_amalgamation_end_to_end(api) -> None:
    resp = api.post("/v1/amalgamations", json=body(api, result_module="digits-amalgam", seed=3))
    assert resp.status_code == 202, resp.text
    assert resp.json()["status"] == "queued"
    job = wait_for(api, resp.json()["job_id"], final, timeout=120)
    assert job["status"] == "succeeded", job["error"]
    assert job["kind"] == "amalgamation"
    assert job["progress"]["epoch"] == job["progress"]["epochs"] == 45
    assert {r["phase"] for r in job["history"]} == {"layer", "head", "finetune"}
    result = job["result"]
    assert result["category_module"] == {"name": "digits-amalgam", "version": 1}
    assert result["task_module"] == {"name": "digits-amalgam-digits", "version": 1}
    assert result["metrics"]["classes"] == LOW + HIGH
    assert result["metrics"]["student_params"] < result["metrics"]["teachers_params"]

    teachers = {("dlow-f", 1), ("dlow-head", 1), ("dhigh-f", 1), ("dhigh-head", 1)}
    for ref, kind in ((result["category_module"], "category"), (result["task_module"], "task")):
        version = _ok(api.get(f"/v1/modules/{ref['name']}/versions/{ref['version']}"), 200)
        assert {(p["name"], p["version"]) for p in version["parents"]} == teachers
        assert {p["role"] for p in version["parents"]} == {"teacher"}
        assert version["job_id"] == job["id"] and version["trained_on"] == ["digits-amalgam"]
        assert version["metrics"]["classes"] == LOW + HIGH and version["format"] == "torch_export"
        assert _ok(api.get(f"/v1/modules/{ref['name']}"), 200)["kind"] == kind
    assert _ok(api.get("/v1/modules/digits-amalgam"), 200)["category"] == "digits-amalgam"
    assert _ok(api.get("/v1/modules/digits-amalgam-digits"), 200)["task"] == "digits"

    # The student composes on its own (no adapter) and classifies all ten digits; no labels were used.
    comp = _ok(api.post("/v1/compositions", json={
        "category_module": "digits-amalgam@1", "adapter": None, "task_module": "digits-amalgam-digits@1",
    }))
    assert comp["output_shape"] == [None, 10]
    x, y = digits()
    idx = np.random.default_rng(0).choice(len(x), 300, replace=False)
    predict = f"/v1/compositions/{comp['id']}/predict"
    logits = np.concatenate([
        _ok(api.post(predict, json={"inputs": x[part].tolist()}), 200)["outputs"]
        for part in np.array_split(idx, 5)  # the server takes at most 64 inputs a request
    ])
    truth = y[idx]
    union = float((logits.argmax(1) == truth).mean())  # class i is logit i (classes "0".."9")
    with torch.no_grad():  # the target the student learned: the teachers' centred logits, side by side
        merged = torch.cat([
            z - z.mean(1, keepdim=True)
            for z in (h(f(torch.from_numpy(x[idx]))) for f, h in (teacher(tuple(range(5)), 16, 0),
                                                                   teacher(tuple(range(5, 10)), 24, 1)))
        ], 1).argmax(1).numpy()
    target = float((merged == truth).mean())
    low = truth < 5  # each teacher's own task: argmax among its classes
    own = [float((logits[low, :5].argmax(1) == truth[low]).mean()),
           float((logits[~low, 5:].argmax(1) + 5 == truth[~low]).mean())]
    print(f"student on 300 digits: union {union:.3f} (teachers' merged logits {target:.3f}), own {own}")
    assert union > 0.4 and union > 0.75 * target, (union, target)  # chance is 0.1
    assert min(own) > 0.8, own  # chance is 0.2


def _jobs(api) -> set[str]:
    return {j["id"] for j in api.get("/v1/jobs", params={"limit": 200}).json()["items"]}


def _teacher(i: int, **over) -> dict:
    return [{"category_module": "dlow-f@1", "task_module": "dlow-head@1", "classes": LOW},
            {"category_module": "dhigh-f", "task_module": "dhigh-head"}][i] | over


CASES = [
    ({"teachers": [_teacher(0)]}, 422, "teachers"),
    ({"teachers": [_teacher(0, category_module="dlow-head"), _teacher(1)]}, 422,
     "teachers[0].category_module 'dlow-head' is a task module"),
    ({"teachers": [_teacher(0, task_module="nope@1"), _teacher(1)]}, 404, "No module is called 'nope'"),
    ({"teachers": [_teacher(0, classes=None), _teacher(1)]}, 422, "records no class names"),
    ({"teachers": [_teacher(0), _teacher(1, classes=["a", "b"])]}, 422, "names 2 classes, but the head"),
    ({"teachers": [_teacher(0, classes=["0", "0", "1", "2", "3"]), _teacher(1)]}, 422, "repeats a class"),
    ({"teachers": [_teacher(0, task_module="dhigh-head"), _teacher(1)]}, 422,
     "takes inputs of shape [24, 4, 4]"),
    ({"teachers": [_teacher(0, task_module="dother-head"), _teacher(1)]}, 422, "solve different tasks"),
    ({"dataset": "0000"}, 404, "No dataset has id '0000'"),
    ({"student": {"widths": [8, 8, 8, 8]}}, 422, "too small for pools"),
    ({"student": {"widths": [8], "kernel_sizes": [2]}}, 422, "kernel sizes must be odd"),
    ({"student": {"depth": 3}}, 422, "student.depth"),
    ({"result_module": "dlow-f"}, 409, "must be a category module of category 'dlow-f'"),
    ({"result_module": "Bad Name"}, 422, "not a valid module name"),
    ({"train": {"lr": 0}}, 422, "train.lr"),
]


@pytest.mark.parametrize(("override", "status", "detail"), CASES, ids=[str(c[0])[:60] for c in CASES])
def test_bad_amalgamations_are_refused_before_queueing(api, override, status, detail) -> None:
    before = _jobs(api)
    resp = api.post("/v1/amalgamations", json=body(api, **override))
    assert resp.status_code == status, resp.text
    assert detail in resp.json()["detail"]
    assert _jobs(api) == before


def test_dataset_must_fit_every_teacher(api) -> None:
    small = upload_dataset(api, "digits-small", np.zeros((8, 1, 6, 6), np.float32))
    resp = api.post("/v1/amalgamations", json=body(api, dataset=small["id"]))
    assert resp.status_code == 422
    assert "samples of shape [1, 6, 6]" in resp.json()["detail"] and "[1, 8, 8]" in resp.json()["detail"]


def test_student_modules_of_another_token_are_403(api) -> None:
    """The student's category and task modules are written by the job: the owner rule applies to both."""
    tokens = []
    for name in ("alice-amalg", "bob-amalg"):
        resp = api.post("/v1/tokens", json={"name": name, "scope": "write"})
        assert resp.status_code == 201, resp.text
        tokens.append({"Authorization": f"Bearer {resp.json()['token']}"})
    alice, bob = tokens
    made = api.post("/v1/modules", json={"name": "alice-student", "kind": "category",
                                         "category": "alice-student"}, headers=alice)
    assert made.status_code == 201, made.text
    made = api.post("/v1/modules", json={"name": "alice-s2-digits", "kind": "task", "task": "digits"},
                    headers=alice)
    assert made.status_code == 201, made.text
    before = _jobs(api)
    for result_module in ("alice-student", "alice-s2"):  # the category module; the task module
        resp = api.post("/v1/amalgamations", json=body(api, result_module=result_module), headers=bob)
        assert resp.status_code == 403, resp.text
        assert "belongs to another token" in resp.json()["detail"]
    assert _jobs(api) == before
