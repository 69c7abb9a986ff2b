"""Every route in /openapi.json, hit as an anonymous caller, a read token and a write token.

The scope each operation needs is read from its dependencies (require_read/write/admin), so a new route
without one fails here instead of shipping open. Only the documented public routes answer without a token.
"""

from __future__ import annotations

import re

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from app.deps import require_admin, require_read, require_write

PUBLIC = {"/healthz", "/readyz", "/metrics", "/ui", "/ui/", "/ui/static/{name}", "/docs",
          "/docs/static/{name}", "/openapi.json"}
SCOPE_OF = {require_read: "read", require_write: "write", require_admin: "admin"}
RANK = {"read": 0, "write": 1, "admin": 2}
# Operations that mutate nothing although they are POSTs (calling a model).
READ_POSTS = {("POST", "/v1/compositions/{composition_id}/predict")}


def _needed_scope(route: APIRoute) -> str | None:
    found, stack = [], [route.dependant]
    while stack:
        dep = stack.pop()
        if dep.call in SCOPE_OF:
            found.append(SCOPE_OF[dep.call])
        stack.extend(dep.dependencies)
    return max(found, key=RANK.__getitem__) if found else None


def _api_routes(routes) -> dict[str, APIRoute]:
    """Every APIRoute by its operation id, including those of routers included lazily."""
    found: dict[str, APIRoute] = {}
    for route in routes:
        if isinstance(route, APIRoute):
            found[route.unique_id] = route
        inner = getattr(route, "original_router", None)
        if inner is not None:
            found.update(_api_routes(inner.routes))
    return found


def _operations(app) -> list[tuple[str, str, str | None]]:
    routes = _api_routes(app.routes)
    ops = []
    for path, methods in app.openapi()["paths"].items():
        for method, op in methods.items():
            route = routes[op["operationId"]]
            assert method.upper() in route.methods
            ops.append((method.upper(), path, _needed_scope(route)))
    return ops


@pytest.fixture
def tokens(embedded_client: TestClient) -> dict[str, str]:
    made = {}
    for scope in ("read", "write"):
        resp = embedded_client.post("/v1/tokens", json={"name": f"{scope}-bot", "scope": scope})
        assert resp.status_code == 201, resp.text
        made[scope] = resp.json()["token"]
    return made


def _url(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: "1" if m.group(1) == "token_id" else "x", path)


def test_every_route_is_guarded(embedded_client: TestClient, tokens: dict[str, str]) -> None:
    ops = _operations(embedded_client.app)
    assert len(ops) >= 25, ops
    for method, path, scope in ops:
        where = f"{method} {path}"
        if path in PUBLIC:
            assert scope is None, f"{where} is documented public but asks for {scope}"
            resp = embedded_client.request(method, _url(path), headers={"Authorization": ""})
            assert resp.status_code not in (401, 403) and resp.status_code < 500, where
            continue
        assert scope is not None, f"{where} has no auth dependency: it is open to anyone"
        if method != "GET" and (method, path) not in READ_POSTS:
            assert RANK[scope] >= RANK["write"], f"{where} changes state with only the {scope} scope"
        anonymous = embedded_client.request(method, _url(path), headers={"Authorization": ""})
        assert anonymous.status_code == 401, f"{where} anonymous -> {anonymous.status_code}"
        assert anonymous.json()["detail"]
        garbage = embedded_client.request(method, _url(path), headers={"Authorization": "Bearer graft_nope"})
        assert garbage.status_code == 401, f"{where} bad token -> {garbage.status_code}"
        for held in ("read", "write"):
            bearer = {"Authorization": f"Bearer {tokens[held]}"}
            resp = embedded_client.request(method, _url(path), headers=bearer)
            if RANK[held] < RANK[scope]:
                assert resp.status_code == 403, f"{where} with {held} -> {resp.status_code}"
                assert scope in resp.json()["detail"]
            else:
                assert resp.status_code not in (401, 403), f"{where} with {held} -> {resp.status_code}"


def test_routes_hidden_from_the_schema_are_guarded_too(embedded_client: TestClient) -> None:
    paths = embedded_client.app.openapi()["paths"].values()
    listed = {op["operationId"] for ops in paths for op in ops.values()}
    hidden = [r for uid, r in _api_routes(embedded_client.app.routes).items() if uid not in listed]
    open_hidden = [r.path for r in hidden if _needed_scope(r) is None and r.path not in PUBLIC]
    assert open_hidden == []


def test_docs_and_schema_are_public(embedded_client: TestClient) -> None:
    for path in ("/docs", "/openapi.json"):
        assert embedded_client.get(path, headers={"Authorization": ""}).status_code == 200


def test_expired_and_revoked_tokens_are_refused(embedded_client: TestClient) -> None:
    from datetime import UTC, datetime, timedelta

    from app.models import ApiToken

    made = embedded_client.post("/v1/tokens", json={"name": "short", "scope": "read", "ttl_days": 1}).json()
    bearer = {"Authorization": f"Bearer {made['token']}"}
    assert made["expires_at"] is not None
    assert embedded_client.get("/v1/modules", headers=bearer).status_code == 200
    with embedded_client.app.state.sessionmaker() as session:
        session.get(ApiToken, made["id"]).expires_at = datetime.now(UTC) - timedelta(seconds=1)
        session.commit()
    expired = embedded_client.get("/v1/modules", headers=bearer)
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]

    other = embedded_client.post("/v1/tokens", json={"name": "gone", "scope": "write"}).json()
    assert embedded_client.delete(f"/v1/tokens/{other['id']}").status_code == 200
    revoked = embedded_client.get("/v1/modules", headers={"Authorization": f"Bearer {other['token']}"})
    assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"]
    with embedded_client.app.state.sessionmaker() as session:
        stored = session.get(ApiToken, other["id"]).token_hash
    assert other["token"] not in stored and len(stored) == 64
