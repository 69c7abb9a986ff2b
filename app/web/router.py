"""The dashboard at /ui: a static HTML shell (no auth) whose JS calls the JSON API with the user's token."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from swagger_ui_bundle import swagger_ui_path

from app.errors import NotFound

STATIC = Path(__file__).parent / "static"
# Only these files are served: a name from the URL never becomes a path by itself.
ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}

# Swagger UI's own files, from the swagger-ui-bundle package: /docs works on a machine with no network.
SWAGGER = Path(swagger_ui_path)
SWAGGER_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
                  "favicon-32x32.png": "image/png"}

router = APIRouter(tags=["dashboard"])


@router.get("/ui", include_in_schema=True, summary="The dashboard page (HTML)", response_class=HTMLResponse)
def dashboard() -> FileResponse:
    """The dashboard's HTML shell; its data calls carry the token pasted into the page."""
    return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


@router.get("/ui/", include_in_schema=False)
def dashboard_slash() -> RedirectResponse:
    return RedirectResponse("/ui")


_ASSET_RESPONSE = {200: {"content": {media: {} for media in ASSETS.values()}, "description": "The asset."}}


@router.get("/ui/static/{name}", summary="A dashboard asset (JS / CSS)", response_class=FileResponse,
            responses=_ASSET_RESPONSE)
def dashboard_asset(name: str) -> FileResponse:
    """One of the dashboard's static files."""
    if name not in ASSETS:
        raise NotFound(f"the dashboard has no asset {name!r}; open /ui")
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers={"Cache-Control": "no-cache"})


@router.get("/docs", include_in_schema=False)
def swagger_ui() -> HTMLResponse:
    """The interactive API reference, its script and style served by this server (not a CDN)."""
    return get_swagger_ui_html(
        openapi_url="/openapi.json", title="Graft API",
        swagger_js_url="/docs/static/swagger-ui-bundle.js", swagger_css_url="/docs/static/swagger-ui.css",
        swagger_favicon_url="/docs/static/favicon-32x32.png",
    )


@router.get("/docs/static/{name}", include_in_schema=False)
def swagger_asset(name: str) -> FileResponse:
    if name not in SWAGGER_ASSETS:
        raise NotFound(f"the API reference has no asset {name!r}; open /docs")
    return FileResponse(SWAGGER / name, media_type=SWAGGER_ASSETS[name],
                        headers={"Cache-Control": "public, max-age=86400"})
