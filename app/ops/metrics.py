"""Prometheus metrics: request count and latency by route template, on a registry of Graft's own.

Routers opt in with `route_class=MetricsRoute` (a route class, not a middleware, so the label is the
matched template `/v1/modules/{name}` rather than the raw path, and no app-level wiring is needed).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi import Request, Response
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)
REQUESTS = Counter(
    "graft_http_requests_total", "HTTP requests handled, by route template, method and status.",
    ["route", "method", "status"], registry=REGISTRY,
)
LATENCY = Histogram(
    "graft_http_request_duration_seconds", "Time to produce a response, by route template and method.",
    ["route", "method"], registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
UPLOADED_BYTES = Counter(
    "graft_uploaded_bytes_total", "Artifact and dataset bytes accepted by uploads.", registry=REGISTRY
)


class MetricsRoute(APIRoute):
    """An APIRoute that records request count and latency under its path template."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()
        template = self.path_format

        async def timed(request: Request) -> Response:
            start = time.perf_counter()
            status = 500
            try:
                response = await handler(request)
                status = response.status_code
                return response
            except Exception as exc:
                status = getattr(exc, "status_code", 500)
                raise
            finally:
                LATENCY.labels(template, request.method).observe(time.perf_counter() - start)
                REQUESTS.labels(template, request.method, str(status)).inc()

        return timed
