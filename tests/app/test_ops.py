"""Health, readiness and metrics."""

from __future__ import annotations

from fastapi.testclient import TestClient


class DownStore:
    def ping(self) -> None:
        raise OSError("connection refused")


def test_health_ready_metrics(embedded_client: TestClient) -> None:
    api = embedded_client
    assert api.get("/healthz", headers={"Authorization": ""}).json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "object_store": "ok"}
    api.get("/v1/modules")
    text = api.get("/metrics").text
    assert 'graft_http_requests_total{method="GET",route="/v1/modules",status="200"}' in text
    assert "graft_http_request_duration_seconds_bucket" in text

    api.app.state.store = DownStore()
    down = api.get("/readyz")
    assert down.status_code == 503 and down.json()["checks"]["object_store"] == "unreachable"
    assert "object_store" in down.json()["detail"]
