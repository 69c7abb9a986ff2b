"""Client input that PostgreSQL cannot store is a 422 at the edge, never a 500: NUL characters in any
string (names, categories, filters, path parameters, dataset ids, token names) and integers beyond the
column range (alias versions, token ids, cursors). On PostgreSQL, where these used to be 500s."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.conftest import ADMIN_TOKEN


@pytest.fixture(scope="module")
def pg_api(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    import uuid

    import psycopg

    from tests.conftest import _pg_user

    name = f"graft_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    settings = Settings(data_dir=tmp_path_factory.mktemp("edges") / "graft", bootstrap_token=ADMIN_TOKEN,
                        database_url=f"postgresql+psycopg://{_pg_user()}@127.0.0.1:5432/{name}")
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        resp = client.post("/v1/modules", json={"name": "edge-f", "kind": "category", "category": "edge"})
        assert resp.status_code == 201, resp.text
        yield client
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _cursor(after: object) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": after}).encode()).decode().rstrip("=")


NUL = "a\x00b"
CASES = [
    ("POST", "/v1/modules", {"json": {"name": "x", "kind": "category", "category": NUL}}),
    ("POST", "/v1/modules", {"json": {"name": "ok-name", "kind": "category", "category": "c",
                                      "description": NUL}}),
    ("POST", "/v1/tokens", {"json": {"name": NUL, "scope": "read"}}),
    ("GET", "/v1/modules", {"params": {"category": NUL}}),
    ("GET", "/v1/modules", {"params": {"task": NUL, "kind": "task"}}),
    ("GET", "/v1/jobs", {"params": {"kind": NUL}}),
    ("GET", "/v1/modules/a%00b", {}),
    ("GET", "/v1/modules/edge-f/versions/a%00b", {}),
    ("GET", "/v1/datasets/a%00b", {}),
    ("GET", "/v1/jobs/a%00b", {}),
    ("GET", "/v1/compositions/a%00b", {}),
    ("POST", "/v1/compositions", {"json": {"category": NUL, "task": "t"}}),
    ("POST", "/v1/compositions", {"json": {"category_module": "edge-f@" + NUL, "adapter": None,
                                           "task_module": "x"}}),
    ("PUT", "/v1/modules/edge-f/aliases/prod", {"json": {"version": 274877906945}}),
    ("PUT", "/v1/modules/edge-f/aliases/prod", {"json": {"version": 2**70}}),
    ("DELETE", "/v1/tokens/274877906945", {}),
    ("GET", "/v1/modules", {"params": {"cursor": _cursor(2**40)}}),
    ("GET", "/v1/datasets", {"params": {"cursor": _cursor(2**40)}}),
    ("GET", "/v1/compositions", {"params": {"cursor": _cursor(NUL)}}),
    ("GET", "/v1/jobs", {"params": {"cursor": _cursor(["2026-01-01T00:00:00", NUL])}}),
    ("POST", "/v1/transplants", {"json": {"category_module": "edge-f@1", "teacher_task_module": NUL,
                                          "student_task_module": "x", "dataset": "d"}}),
]


IDS = [f"{c[0]} {c[1]} {c[2]}"[:70] for c in CASES]


@pytest.mark.parametrize(("method", "url", "kwargs"), CASES, ids=IDS)
def test_unstorable_input_is_a_clear_4xx(pg_api: TestClient, method: str, url: str, kwargs: dict) -> None:
    resp = pg_api.request(method, url, **kwargs)
    assert resp.status_code in (400, 404, 422), (resp.status_code, resp.text)
    detail = resp.json()["detail"]
    assert isinstance(detail, str) and detail and "Internal" not in detail


def test_nul_and_huge_ints_name_the_problem(pg_api: TestClient) -> None:
    resp = pg_api.post("/v1/modules", json={"name": "x", "kind": "category", "category": NUL})
    assert resp.status_code == 422 and "body.category contains a NUL character" in resp.json()["detail"]
    resp = pg_api.put("/v1/modules/edge-f/aliases/prod", json={"version": 2**70})
    assert resp.status_code == 422 and "outside the signed 64-bit range" in resp.json()["detail"]
    resp = pg_api.get("/v1/modules/a%00b")
    assert resp.status_code == 422 and "NUL" in resp.json()["detail"]
    assert pg_api.get("/v1/modules/edge-f").status_code == 200  # the guard lets ordinary requests through


def test_openapi_documents_what_routes_answer(embedded_client: TestClient) -> None:
    """Error statuses per route, the dashboard's HTML, and a 405's Allow naming every method at a path."""
    paths = embedded_client.get("/openapi.json").json()["paths"]
    assert {"404", "422"} <= set(paths["/v1/modules/{name}"]["get"]["responses"])
    assert {"400", "409", "422"} <= set(paths["/v1/modules"]["post"]["responses"])
    upload = paths["/v1/modules/{name}/versions"]["post"]["responses"]
    assert {"400", "404", "409", "413", "415"} <= set(upload)
    assert "400" in paths["/v1/jobs"]["get"]["responses"]  # a cursor the server did not make
    assert "text/html" in paths["/ui"]["get"]["responses"]["200"]["content"]
    assert embedded_client.get("/ui").headers["content-type"].startswith("text/html")
    for url, allow in (("/v1/modules", "GET, POST"), ("/v1/tokens/1", "DELETE"),
                       ("/v1/compositions", "GET, POST")):
        resp = embedded_client.patch(url)
        assert resp.status_code == 405 and resp.headers["allow"] == allow, (url, resp.headers)
