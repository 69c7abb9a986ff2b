"""The dashboard at /ui: a static HTML shell (no auth) whose JS calls the JSON API with the user's token."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from app.errors import NotFound

STATIC = Path(__file__).parent / "static"
# Only these files are served: a name from the URL never becomes a path by itself.
ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}

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
