"""An amalgamation job through real Redis and a real `graft worker` process, on PostgreSQL and S3."""

from __future__ import annotations

import numpy as np
import pytest

from support.world import _ok, sse_events, upload_dataset, upload_module
from tests.jobs.test_amalgamation import HIGH, LOW, digits, teacher, upload_head


@pytest.fixture(scope="module")
def dataset(queue_client) -> str:
    for prefix, classes, width, seed in (
        ("clow", tuple(range(5)), 16, 0), ("chigh", tuple(range(5, 10)), 24, 1)
    ):
        f, head = teacher(classes, width, seed)
        upload_module(queue_client, f"{prefix}-f", "category", f, (1, 8, 8), category=prefix)
        upload_head(queue_client, f"{prefix}-head", head, width, {})
    x, _ = digits()
    return upload_dataset(queue_client, "digits-few", x[np.arange(0, len(x), 4)])["id"]


def test_amalgamation_on_a_celery_worker(queue_client, workers, dataset: str) -> None:
    api = queue_client
    worker = workers.warm()
    resp = api.post("/v1/amalgamations", json={
        "teachers": [
            {"category_module": "clow-f", "task_module": "clow-head", "classes": LOW},
            {"category_module": "chigh-f", "task_module": "chigh-head", "classes": HIGH},
        ],
        "dataset": dataset, "student": {"widths": [8]}, "epochs": 2,
    })
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    events = sse_events(api, job_id)
    assert [d["status"] for name, d in events if name == "status"][-1] == "succeeded"
    job = _ok(api.get(f"/v1/jobs/{job_id}"), 200)
    assert job["worker"].startswith("w0-") and job["attempts"] == 1
    category = f"amalgam-{job_id[:8]}"  # the default result module
    assert job["result"]["category_module"] == {"name": category, "version": 1}
    assert job["result"]["task_module"] == {"name": f"{category}-digits", "version": 1}
    version = _ok(api.get(f"/v1/modules/{category}-digits/versions/1"), 200)
    assert len(version["parents"]) == 4 and version["metrics"]["classes"] == LOW + HIGH
    assert version["output_shape"] == [None, 10]
    assert f"graft.amalgamate[{job_id}]" in worker.log()
