"""/docs works offline: the Swagger UI page loads its script, style and icon from this server only."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient


def test_docs_page_fetches_only_local_urls(embedded_client: TestClient) -> None:
    page = embedded_client.get("/docs", headers={"Authorization": ""})
    assert page.status_code == 200 and "swagger" in page.text.lower()
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", page.text)
    assert urls, page.text
    remote = [u for u in urls if re.match(r"(https?:)?//", u)]
    assert remote == [], f"/docs loads assets from another host: {remote}"
    assets = [u for u in urls if u.startswith("/docs/static/")]
    assert {u.rsplit("/", 1)[1] for u in assets} >= {"swagger-ui-bundle.js", "swagger-ui.css"}
    for url in assets:
        asset = embedded_client.get(url, headers={"Authorization": ""})
        assert asset.status_code == 200 and len(asset.content) > 100, url
    assert "/openapi.json" in urls and embedded_client.get("/openapi.json").status_code == 200
    assert embedded_client.get("/docs/static/..%2Fapp.js").status_code == 404
