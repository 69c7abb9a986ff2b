"""Bearer tokens and scopes: 401 without a valid token, 403 without the scope, revocation at once."""

from __future__ import annotations

from fastapi.testclient import TestClient


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_tokens_and_scopes(embedded_client: TestClient) -> None:
    api = embedded_client
    assert api.get("/v1/modules", headers={"Authorization": ""}).status_code == 401
    assert api.get("/v1/modules", headers=bearer("graft_wrong")).status_code == 401

    made = {}
    for scope in ("read", "write"):
        resp = api.post("/v1/tokens", json={"name": f"{scope}-bot", "scope": scope})
        assert resp.status_code == 201, resp.text
        made[scope] = resp.json()
    assert made["write"]["scopes"] == ["read", "write"]
    read, write = made["read"]["token"], made["write"]["token"]

    module = {"name": "f", "kind": "category", "category": "bird"}
    assert api.get("/v1/modules", headers=bearer(read)).status_code == 200
    denied = api.post("/v1/modules", json=module, headers=bearer(read))
    assert denied.status_code == 403 and "write" in denied.json()["detail"]
    assert api.post("/v1/modules", json=module, headers=bearer(write)).status_code == 201
    assert api.post("/v1/tokens", json={"name": "x"}, headers=bearer(write)).status_code == 403

    listed = api.get("/v1/tokens").json()
    assert {t["name"] for t in listed} == {"read-bot", "write-bot"}
    assert all("token" not in t for t in listed)
    assert api.delete(f"/v1/tokens/{made['write']['id']}").status_code == 200
    assert api.get("/v1/modules", headers=bearer(write)).status_code == 401
    assert api.delete("/v1/tokens/999").status_code == 404
    assert api.post("/v1/tokens", json={"name": "x", "scope": "root"}).status_code == 422
