"""Predict without FastAPI's per-request machinery, for compositions this process already serves.

Under load the event loop, not the forward, limited predict throughput: per request it matched the
path against every route, solved four dependencies and passed three more middleware layers before
the route ran (bench/results/serving.md). This pure ASGI middleware answers a POST to
`/v1/compositions/{id}/predict` whose composition this process has served before (no database
needed) with the route's own steps in the route's order: read the body (`read_body`),
authorise (`require_write`), `serve_predict`. Errors go to the app's own exception handlers, so a
client gets the same status and detail either way. Everything else, including the first call of a
composition, goes on to FastAPI untouched.

Installed inside RequestIdMiddleware and MetricsMiddleware: request ids, access logs and metrics
(under the predict route's template) are the same for both paths.
"""

from __future__ import annotations

import inspect
import re

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from app.deps import require_write
from app.serving.inputs import read_body
from app.serving.predict import serve_predict
from app.serving.runtime import serving_of

PREDICT_TEMPLATE = "/v1/compositions/{composition_id}/predict"
_PREDICT = re.compile(r"/v1/compositions/([^/]+)/predict")


class PredictFastPath:
    """Pure ASGI middleware; `graft` is the FastAPI app it is installed in (its state and handlers),
    `route` the predict route it answers for."""

    def __init__(self, app: ASGIApp, graft: FastAPI, route: BaseRoute) -> None:
        self.app, self.graft = app, graft
        self.route = route  # the predict route, under whose template requests are counted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _PREDICT.fullmatch(_route_path(scope)) if scope["type"] == "http" else None
        spec = serving_of(self.graft).known_spec(match[1]) if match and scope["method"] == "POST" else None
        if spec is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route  # MetricsMiddleware labels by the matched route
        request = Request(scope, receive)
        try:
            body = await read_body(request)
            await require_write(request)
            response = await serve_predict(request, spec, body)
        except Exception as exc:  # noqa: BLE001 - rendered as the route's error would be, or re-raised
            response = await self._render(request, exc)
        await response(scope, receive, send)

    async def _render(self, request: Request, exc: Exception) -> Response:
        """The response the app's exception handler for `exc` gives (as FastAPI would call it)."""
        for cls in type(exc).__mro__:
            handler = self.graft.exception_handlers.get(cls)
            if handler is not None and cls is not Exception:  # Exception's is the 500 page, outside
                break
        else:
            raise exc
        if inspect.iscoroutinefunction(handler):
            return await handler(request, exc)
        return await run_in_threadpool(handler, request, exc)


def _route_path(scope: Scope) -> str:
    """The path without the app's root_path (what the router matches)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path
