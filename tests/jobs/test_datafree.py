"""Data-free transplants through the API: the embedded runner synthesises the inputs it trains on."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from support.world import (
    FEAT_SHAPE,
    X_SHAPE,
    World,
    final,
    sse_events,
    upload_module,
    wait_for,
)

FAST = {"epochs": 3, "train": {"batch_size": 16, "val_fraction": 0.0, "lr": 0.01}}
SMALL = {"n": 32, "steps": 15, "batch_size": 16}


def _refs(world: World, **body) -> dict:
    refs = {k: v for k, v in world.refs().items() if k != "dataset"}
    return {**refs, **FAST, **body}


def _queue(api, body: dict) -> str:
    resp = api.post("/v1/transplants", json=body)
    assert resp.status_code == 202, resp.text
    return resp.json()["job_id"]


def _version(api, job: dict) -> dict:
    ref = job["result"]["adapter"]
    return api.get(f"/v1/modules/{ref['name']}/versions/{ref['version']}").json()


def test_data_free_transplant_reports_cost_quality_and_lineage(embedded_api, embedded_world: World) -> None:
    api, world = embedded_api, embedded_world
    job_id = _queue(api, _refs(world, seed=2, result_module="df-adapter",
                               synthesis={"method": "deepinversion", **SMALL}))
    events = sse_events(api, job_id)
    assert events[-1][1]["status"] == "succeeded", events[-1]
    # The synthesis's cost and quality travel with the job's progress events, then its metrics.
    reported = [d["progress"]["synthesis"] for _, d in events
                if "bn_distance" in d["progress"].get("synthesis", {})]
    assert reported and reported[-1]["wall_s"] > 0 and reported[-1]["bn_distance"] >= 0
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["request"]["dataset"] is None
    assert job["request"]["synthesis"] == {"method": "deepinversion", **SMALL, "seed": 2}
    metrics = job["result"]["metrics"]
    syn = metrics["synthesis"]
    assert metrics["data"] == "synthetic" and metrics["dataset"] is None and metrics["n_train"] == SMALL["n"]
    assert metrics["metrics_on"] == "synthetic train"  # agreement measured on the synthetic inputs
    assert syn["method"] == "deepinversion" and syn["seed"] == 2 and syn["n_real"] == 0
    assert syn["bn_distance"] < syn["bn_distance_init"]
    # BatchNorm read from the uploaded torch.export graphs.
    assert syn["bn_layers"] == {"category_module": 1, "teacher_task_module": 1}
    # The lineage says the adapter was learned without data, and how.
    version = _version(api, job)
    assert "without data" in version["description"] and "deepinversion" in version["description"]
    assert version["metrics"]["synthesis"] == syn
    assert {p["role"] for p in version["parents"]} == {"category", "teacher", "student"}
    # The adapter is a working one: g_S(h(f(x))) runs on real inputs of the category.
    from transplant.adapters import load_adapter

    blob = api.get(f"/v1/modules/df-adapter/versions/{version['version']}/artifact", follow_redirects=True)
    h = load_adapter(blob.content, version["arch"])
    with torch.no_grad():
        out = world.g_s(h(world.f(torch.from_numpy(world.x))))
    assert out.shape == (len(world.x), 3) and torch.isfinite(out).all()


def test_same_seed_same_adapter(embedded_api, embedded_world: World) -> None:
    api, world = embedded_api, embedded_world
    body = _refs(world, dataset=None, seed=5, synthesis={"method": "auto", **SMALL})
    jobs = [wait_for(api, _queue(api, {**body, "result_module": f"df-repro-{i}"}), final) for i in range(2)]
    assert [j["status"] for j in jobs] == ["succeeded", "succeeded"]
    a, b = (_version(api, j) for j in jobs)
    assert a["sha256"] == b["sha256"]
    assert jobs[0]["result"]["metrics"]["synthesis"]["bn_distance"] == \
        jobs[1]["result"]["metrics"]["synthesis"]["bn_distance"]
    other = wait_for(api, _queue(api, {**body, "seed": 6, "result_module": "df-repro-2"}), final)
    assert _version(api, other)["sha256"] != a["sha256"]


def test_dataset_plus_synthesis_mixes_real_inputs(embedded_api, embedded_world: World) -> None:
    api, world = embedded_api, embedded_world
    job_id = _queue(api, _refs(world, dataset=world.dataset, result_module="df-mix",
                               synthesis={"method": "features", **SMALL}))
    job = wait_for(api, job_id, final)
    assert job["status"] == "succeeded", job["error"]
    m = job["result"]["metrics"]
    assert m["data"] == "synthetic+dataset" and m["dataset"] == world.dataset
    assert m["synthesis"]["n_real"] == len(world.x) and m["n_train"] == len(world.x) + SMALL["n"]
    assert "plus 32 inputs synthesised by features" in _version(api, job)["description"]


@pytest.fixture(scope="module")
def plain_world(embedded_api) -> dict:
    """f and g_T without any BatchNorm layer, uploaded as torch.export."""
    torch.manual_seed(1)
    f = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GELU()).eval()
    g_t = nn.Sequential(nn.Conv2d(4, 5, 3, padding=1), nn.GELU(), nn.Flatten(), nn.Linear(5 * 36, 3)).eval()
    upload_module(embedded_api, "plain-f", "category", f, X_SHAPE, category="plaincat")
    upload_module(embedded_api, "plain-gt", "task", g_t, FEAT_SHAPE, task="cls")
    return {"category_module": "plain-f@1", "teacher_task_module": "plain-gt@1",
            "student_task_module": "emb-gs"}


def test_without_batchnorm_auto_falls_back_and_deepinversion_says_what_it_needs(
        embedded_api, embedded_world: World, plain_world: dict) -> None:
    api = embedded_api
    job = wait_for(api, _queue(api, {**plain_world, **FAST, "result_module": "plain-auto",
                                     "synthesis": SMALL}), final)
    assert job["status"] == "succeeded", job["error"]
    syn = job["result"]["metrics"]["synthesis"]
    assert syn["method"] == "noise" and syn["requested_method"] == "auto"
    assert "no BatchNorm" in syn["fallback"]
    job = wait_for(api, _queue(api, {**plain_world, **FAST, "result_module": "plain-di",
                                     "synthesis": {"method": "deepinversion", **SMALL}}), final)
    assert job["status"] == "failed"
    assert job["error"].startswith("Synthesis failed: synthesis 'deepinversion' matches the running")
    assert "use synthesis 'noise' or 'auto'" in job["error"]
    assert api.get("/v1/modules/plain-di").status_code == 404


CASES = [
    ({"method": "supervised"}, "Method 'supervised' trains on labels, and synthetic inputs have none"),
    ({"synthesis": {"method": "magic"}}, "synthesis.method"),
    ({"synthesis": {"n": 0}}, "synthesis.n"),
    ({"synthesis": {"steps": -1}}, "synthesis.steps"),
    ({"synthesis": {"colour": "red"}}, "synthesis.colour"),
    ({"synthesis": {"method": "features"}, "reference_category_module": "emb-f@1"},
     "synthesis 'features' makes f's features directly"),
]


@pytest.mark.parametrize(("override", "detail"), CASES)
def test_bad_data_free_requests_are_refused(embedded_api, embedded_world: World, override, detail) -> None:
    api = embedded_api
    before = len(api.get("/v1/jobs", params={"limit": 200}).json()["items"])
    resp = api.post("/v1/transplants", json=_refs(embedded_world, **override))
    assert resp.status_code == 422, resp.text
    assert detail in str(resp.json()["detail"]), resp.json()
    assert len(api.get("/v1/jobs", params={"limit": 200}).json()["items"]) == before

