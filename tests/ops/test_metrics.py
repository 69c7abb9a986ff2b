"""/metrics app-wide: requests on every router, jobs from the database, predictions and the cache."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import migrate
from app.db.base import utcnow
from app.main import create_app
from app.models.job import Job
from app.ops.metrics import job_registry
from support.world import final, make_world, transplant, wait_for
from tests.conftest import ADMIN_TOKEN

FAST = {"epochs": 2, "train": {"batch_size": 32, "val_fraction": 0.0, "lr": 0.01}}


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (labels matched in any order); fails if absent."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.match(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    raise AssertionError(f"no sample {name} {labels} in /metrics")


def growth(before: str, after: str, name: str, **labels: str) -> float:
    """How much a sample grew between two scrapes (a series first seen in `after` started at 0).

    The registry is process-wide: other tests in this process add to it too, hence differences.
    """
    try:
        start = sample(before, name, **labels)
    except AssertionError:
        start = 0.0
    return sample(after, name, **labels) - start


@pytest.fixture
def api(tmp_path) -> TestClient:
    settings = Settings(data_dir=tmp_path / "graft", bootstrap_token=ADMIN_TOKEN)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        yield client


def test_metrics_after_a_job_and_a_predict(api: TestClient) -> None:
    before = api.get("/metrics").text
    hits0 = sample(before, "graft_model_cache_hits_total")
    misses0 = sample(before, "graft_model_cache_misses_total")
    world = make_world(api, "met", n=32)
    job_id = transplant(api, world, **FAST)
    job = wait_for(api, job_id, final)
    assert job["status"] == "succeeded", job

    comp = api.post("/v1/compositions", json={"category": world.category, "task": "cls"})
    assert comp.status_code == 201, comp.text
    x = world.x[:5].tolist()
    for _ in range(2):  # the first loads the composition (a miss), the second finds it (a hit)
        resp = api.post(f"/v1/compositions/{comp.json()['id']}/predict", json={"inputs": x})
        assert resp.status_code == 200, resp.text
    assert api.get("/v1/jobs/not-a-job").status_code == 404
    assert api.get("/nowhere").status_code == 404

    text = api.get("/metrics").text

    def grew(name: str, **labels: str) -> float:
        return growth(before, text, name, **labels)

    # Requests on routers that never opted in (jobs, web) are measured too, by template.
    assert grew("graft_http_requests_total", route="/v1/jobs/{job_id}", method="GET", status="200") >= 1
    assert grew("graft_http_requests_total", route="/v1/jobs/{job_id}", method="GET", status="404") == 1
    assert grew("graft_http_requests_total", route="/v1/transplants", method="POST", status="202") == 1
    assert grew("graft_http_requests_total", route="<unmatched>", method="GET", status="404") == 1
    assert grew("graft_http_request_duration_seconds_count",
                route="/v1/compositions/{composition_id}/predict", method="POST") == 2

    assert sample(text, "graft_jobs", kind="transplant", status="succeeded") == 1
    assert sample(text, "graft_jobs", kind="transplant", status="queued") == 0
    assert sample(text, "graft_jobs_finished_total", kind="transplant", status="failed") == 0
    assert sample(text, "graft_job_duration_seconds_count", kind="transplant", status="succeeded") == 1
    assert sample(text, "graft_job_duration_seconds_sum", kind="transplant", status="succeeded") > 0

    assert sample(text, "graft_predict_duration_seconds_count") >= 2
    assert sample(text, "graft_predict_forward_seconds_count") >= 2
    assert sample(text, "graft_predict_batch_inputs_sum") >= 10
    assert sample(text, "graft_predict_batch_requests_count") >= 2
    assert sample(text, "graft_model_cache_misses_total") == misses0 + 3  # f, h and g, loaded once each
    assert sample(text, "graft_modules_loaded") >= 3
    assert sample(text, "graft_model_cache_hits_total") >= hits0 + 1
    assert sample(text, "graft_model_cache_bytes") > 0
    assert "graft_model_cache_evictions_total" in text
    # The learned batch cap and the curve it comes from, per batch group (the task module).
    groups = api.get("/v1/serving").json()["groups"]
    key, shown = next(iter(groups.items()))
    assert shown["cap"] >= 1 and shown["inputs_per_s"] and sum(shown["batches"].values()) >= 2
    assert sample(text, "graft_batch_cap", group=key[:16]) >= 1
    assert "graft_batch_inputs_per_second{" in text and "graft_predict_dropped_total" in text


def test_job_collector_on_postgres(pg_database: str) -> None:
    """Statuses, failures and run-time buckets computed by SQL at scrape time (PostgreSQL dialect)."""
    engine = create_engine(pg_database)
    migrate.upgrade(engine)
    now = utcnow()
    rows = [("queued", None, None), ("running", 5, None), ("failed", 40, 10), ("succeeded", 20, 3),
            ("succeeded", 100, 70)]
    with Session(engine) as session:
        for status, started_ago, finished_ago in rows:
            session.add(Job(
                id=str(uuid.uuid4()), kind="transplant", status=status, request={},
                started_at=None if started_ago is None else now - timedelta(seconds=started_ago),
                finished_at=None if finished_ago is None else now - timedelta(seconds=finished_ago),
            ))
        session.commit()
    text = generate_latest(job_registry(engine)).decode()
    engine.dispose()
    assert sample(text, "graft_jobs", kind="transplant", status="succeeded") == 2
    assert sample(text, "graft_jobs", kind="transplant", status="running") == 1
    assert sample(text, "graft_jobs", kind="transplant", status="queued") == 1
    assert sample(text, "graft_jobs_finished_total", kind="transplant", status="failed") == 1
    # Succeeded run times: 17 s and 30 s.
    count = sample(text, "graft_job_duration_seconds_count", kind="transplant", status="succeeded")
    total = sample(text, "graft_job_duration_seconds_sum", kind="transplant", status="succeeded")
    assert count == 2 and total == pytest.approx(47.0, abs=0.01)
    assert sample(text, "graft_job_duration_seconds_bucket", kind="transplant", status="succeeded",
                  le="15.0") == 0
    assert sample(text, "graft_job_duration_seconds_bucket", kind="transplant", status="succeeded",
                  le="30.0") == 2
    assert sample(text, "graft_job_duration_seconds_bucket", kind="transplant", status="failed",
                  le="30.0") == 1
