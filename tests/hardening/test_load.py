"""A short load run (bench/load.py, ~20 s, fewer clients): no errors, nothing lost.

The same code as `python -m bench.load`: one uvicorn process on PostgreSQL + SeaweedFS S3 + Redis, two
real `graft worker` processes, clients uploading, reading, predicting, submitting jobs and sending
deliberately bad requests at once; then every accepted upload is downloaded and its sha256 compared,
every accepted job must be final, run once, with one adapter version.
"""

from __future__ import annotations

from support.load import DEFAULT_THINK, TOKEN, run_load
from support.services import s3_settings
from tests.jobs.conftest import redis_broker  # noqa: F401 (a fixture)

COUNTS = {"uploader": 1, "reader": 2, "predictor": 1, "submitter": 1, "bad": 1}


def test_short_load_run_has_no_errors_and_loses_nothing(
    seaweedfs, pg_database: str, redis_broker: str, tmp_path  # noqa: F811
) -> None:

    settings = s3_settings(seaweedfs, pg_database, tmp_path / "data", broker_url=redis_broker,
                           bootstrap_token=TOKEN)
    result = run_load(settings, tmp_path, duration=20, counts=COUNTS, think=DEFAULT_THINK, workers=2,
                      drain_s=120)
    checks = result["checks"]
    assert result["errors"] == 0, result["error_samples"]
    assert result["lost"] == 0, checks
    # The run did exercise every kind of client, and the loss checks had something to check.
    routes = result["routes"]
    for route in ("POST /v1/modules/{name}/versions", "POST /v1/transplants", "GET /v1/modules",
                  "POST /v1/compositions/{id}/predict (npy)"):
        assert routes[route]["requests"] > 0, route
    assert checks["uploads_accepted"] > 0 and checks["jobs_accepted"] > 0
    assert checks["jobs_by_status"] == {"succeeded": checks["jobs_accepted"]}
    assert sum(result["expected_4xx"].values()) > 0
    assert result["tracebacks_in_logs"] == 0, result["traceback_samples"]
