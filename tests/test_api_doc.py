"""docs/api.md against the OpenAPI document: the same routes, and the scopes the server enforces."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
ROW = re.compile(r"^\| (GET|POST|PUT|DELETE|PATCH) \| `([^`]+)` \| (\w+) \|", re.M)


def test_api_page_lists_exactly_the_openapi_routes_with_their_scopes(embedded_client: TestClient) -> None:
    documented = {(m, p): scope for m, p, scope in ROW.findall(DOC.read_text())}
    schema = embedded_client.get("/openapi.json").json()
    served = {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}
    assert sorted(served - documented.keys()) == [], "routes missing from docs/api.md"
    assert sorted(documented.keys() - served) == [], "docs/api.md lists routes the server does not have"

    # The scope column is what the server enforces: a token-less call to a scoped route is a 401,
    # and a read token is refused (403) wherever the page says write or admin.
    for (method, path), scope in documented.items():
        url = re.sub(r"\{[^}]+\}", "x", path)
        answer = embedded_client.request(method, url, headers={"Authorization": ""})
        if scope == "none":
            assert answer.status_code != 401, (method, path)
        else:
            assert answer.status_code == 401, (method, path, answer.status_code)
    admin = embedded_client.post("/v1/tokens", json={"name": "reader", "scope": "read"})
    read_token = admin.json()["token"]
    for (method, path), scope in documented.items():
        if scope in ("write", "admin"):
            url = re.sub(r"\{[^}]+\}", "x", path)
            answer = embedded_client.request(method, url, headers={"Authorization": f"Bearer {read_token}"})
            assert answer.status_code == 403, (method, path, answer.status_code)
