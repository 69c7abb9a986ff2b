"""Prometheus metrics on a registry of Graft's own: requests, jobs, predictions and the model cache.

Requests are measured app-wide by `MetricsMiddleware` (installed by `create_app`), labelled by the
matched route template (`/v1/modules/{name}`, never the raw path: bounded label values); a request
that matched no route is labelled `<unmatched>`. Latency is the time to the response's first byte,
so a long server-sent-event stream counts as the time it took to start, not its whole life.

Jobs are read from the database at scrape time (`JobCollector`), not counted in the process: the
jobs table is the one truth shared by every API process and worker, so any API replica reports the
same figures and nothing is lost when a process restarts. Durations come from finished jobs'
`started_at`/`finished_at`, bucketed by SQL, so a scrape costs one aggregate query whatever the
number of jobs.

Predictions (batcher) and the model cache count in the process that serves them. Separate API
replicas are scraped one by one and summed by Prometheus. The worker processes of one
`graft serve --workers N` share one port, so a scrape reaches any one of them: there the parent sets
`PROMETHEUS_MULTIPROC_DIR`, every process writes its figures to files in that folder, and
`/metrics` sums all of them (`process_registry`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select
from sqlalchemy.engine import Engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.models.job import JOB_STATUSES, Job

REGISTRY = CollectorRegistry(auto_describe=True)
REQUESTS = Counter(
    "graft_http_requests_total", "HTTP requests handled, by route template, method and status.",
    ["route", "method", "status"], registry=REGISTRY,
)
LATENCY = Histogram(
    "graft_http_request_duration_seconds", "Time to the response's first byte, by route template and method.",
    ["route", "method"], registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
UPLOADED_BYTES = Counter(
    "graft_uploaded_bytes_total", "Artifact and dataset bytes received whole by uploads (the file part).",
    registry=REGISTRY,
)
UPLOAD_PHASE = Histogram(
    "graft_upload_phase_seconds",
    "Where an upload's time goes: `receive` (reading the body, to its last byte), `probe` (loading and "
    "running an artifact in the probe child), `store` (waiting for the artifact store after the probe; "
    "with a declared sha256 the store upload ran while the body arrived).",
    ["phase"], registry=REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)

PREDICT_LATENCY = Histogram(
    "graft_predict_duration_seconds",
    "Time from a predict call entering the batcher to its rows being ready (queueing + forward).",
    registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
FORWARD_LATENCY = Histogram(
    "graft_predict_forward_seconds", "Time of one (batched) forward pass of a composition.",
    registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_REQUESTS = Histogram(
    "graft_predict_batch_requests", "Predict requests served by one forward pass.",
    registry=REGISTRY, buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
BATCH_INPUTS = Histogram(
    "graft_predict_batch_inputs", "Input rows stacked into one forward pass.",
    registry=REGISTRY, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)

PREDICT_DROPPED = Counter(
    "graft_predict_dropped_total",
    "Predict requests dropped before their forward ran: `disconnected` (the client left) or `deadline`.",
    ["reason"], registry=REGISTRY,
)
BATCH_CAP = Gauge(
    "graft_batch_cap", "Learned batch cap of a batch group (rows), beyond which inputs/s stop rising.",
    ["group"], registry=REGISTRY, multiprocess_mode="all",
)
BATCH_RATE = Gauge(
    "graft_batch_inputs_per_second", "Measured inputs/s of a batch group per batch size (power of two).",
    ["group", "size"], registry=REGISTRY, multiprocess_mode="all",
)
MODULES_LOADED = Gauge(
    "graft_modules_loaded", "Module versions (f, h, g) loaded in the model cache.",
    registry=REGISTRY, multiprocess_mode="livesum",
)

CACHE_HITS = Counter("graft_model_cache_hits_total", "Module versions found loaded in the cache.",
                     registry=REGISTRY)
CACHE_MISSES = Counter("graft_model_cache_misses_total", "Module versions loaded from the store.",
                       registry=REGISTRY)
CACHE_EVICTIONS = Counter("graft_model_cache_evictions_total", "Module versions dropped to stay in bounds.",
                          registry=REGISTRY)
CACHE_BYTES = Gauge("graft_model_cache_bytes", "Parameter and buffer bytes held by the model cache.",
                    registry=REGISTRY, multiprocess_mode="livesum")

UNMATCHED = "<unmatched>"
JOB_DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 4 * 3600.0)


class MetricsRoute(APIRoute):
    """Kept so routers that name it keep working: every route is now measured by the middleware."""


class MetricsMiddleware:
    """Pure ASGI middleware: request count and time-to-first-byte under the matched route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        observed = False

        def observe() -> None:
            nonlocal observed
            if observed:
                return
            observed = True
            route = scope.get("route")  # set by the router on the same scope dict once matched
            template = getattr(route, "path_format", None) or getattr(route, "path", None) or UNMATCHED
            method = scope.get("method", "")
            LATENCY.labels(template, method).observe(time.perf_counter() - start)
            REQUESTS.labels(template, method, str(status)).inc()

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                observe()
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            observe()  # no response started (an exception escaped): counted as a 500


def _duration_seconds(engine: Engine):
    """SQL for a job's run time in seconds, in the engine's dialect."""
    if engine.dialect.name == "sqlite":
        return (func.julianday(Job.finished_at) - func.julianday(Job.started_at)) * 86400.0
    return func.extract("epoch", Job.finished_at - Job.started_at)


class JobCollector(Collector):
    """Jobs by kind and status, finished-job counts and run-time histograms, read from the database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def describe(self) -> Iterable:
        return []  # computed at scrape time; nothing to check at registration

    def collect(self) -> Iterable:
        duration = _duration_seconds(self.engine)
        finished = Job.finished_at.is_not(None) & Job.started_at.is_not(None)
        buckets = [
            func.sum(case((finished & (duration <= b), 1), else_=0)) for b in JOB_DURATION_BUCKETS
        ]
        query = (
            select(
                Job.kind, Job.status, func.count(),
                func.sum(case((finished, 1), else_=0)),
                func.coalesce(func.sum(case((finished, duration), else_=0.0)), 0.0),
                *buckets,
            )
            .group_by(Job.kind, Job.status)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()

        by_status = GaugeMetricFamily("graft_jobs", "Jobs by kind and current status.",
                                      labels=["kind", "status"])
        ended = CounterMetricFamily(
            "graft_jobs_finished", "Jobs that reached a final status (failed = job failures).",
            labels=["kind", "status"],
        )
        runtime = HistogramMetricFamily(
            "graft_job_duration_seconds", "Run time of finished jobs (started_at to finished_at).",
            labels=["kind", "status"],
        )
        kinds = {row[0] for row in rows} or {"transplant"}
        counts = {(row[0], row[1]): row for row in rows}
        for kind in sorted(kinds):
            for status in JOB_STATUSES:
                row = counts.get((kind, status))
                by_status.add_metric([kind, status], row[2] if row else 0)
                if status in ("queued", "running"):
                    continue
                ended.add_metric([kind, status], row[2] if row else 0)
                if row is None or not row[3]:
                    continue
                counts_le = zip(JOB_DURATION_BUCKETS, row[5:], strict=True)
                cumulative = [(_le(b), float(n or 0)) for b, n in counts_le]
                cumulative.append(("+Inf", float(row[3])))
                runtime.add_metric([kind, status], cumulative, sum_value=float(row[4] or 0.0))
        return [by_status, ended, runtime]


def _le(bound: float) -> str:
    return str(float(bound))


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The folder the API processes of one `graft serve --workers N` share their figures in, if any."""
    return os.environ.get(MULTIPROC_ENV) or None


def process_registry() -> CollectorRegistry:
    """What `/metrics` reports of the processes: this one's, or the sum over every worker process."""
    if multiprocess_dir() is None:
        return REGISTRY
    registry = CollectorRegistry(auto_describe=False)
    multiprocess.MultiProcessCollector(registry)
    return registry


def process_stopped() -> None:
    """Drop this process's live gauges from the shared figures (multi-process mode; else nothing)."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(os.getpid())


def job_registry(engine: Engine) -> CollectorRegistry:
    """A registry holding the job collector of one app's database (one per app, not process-global)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobCollector(engine))
    return registry
