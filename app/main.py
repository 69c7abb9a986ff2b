"""The HTTP service: `create_app(settings)` wires backends, migrations, routers and error handlers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import runtime
from app.auth.router import router as auth_router
from app.compositions.router import router as compositions_router
from app.config import Settings, get_settings
from app.datasets.router import router as datasets_router
from app.db import migrate
from app.db.session import make_engine, make_read_sessionmaker, make_sessionmaker
from app.errors import install_error_handlers
from app.jobs.router import router as jobs_router
from app.logging import RequestIdMiddleware, configure_logging
from app.modules.router import router as modules_router
from app.ops.metrics import MetricsMiddleware, job_registry
from app.ops.router import router as ops_router
from app.request_guard import RequestGuard
from app.serving.fastpath import PREDICT_TEMPLATE, PredictFastPath
from app.storage import open_store
from app.web.router import router as web_router

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, migrate_db: bool = True) -> FastAPI:
    """Build the API for `settings` (default: from the environment); migrates the database first."""
    settings = settings or get_settings()
    configure_logging(json=settings.log_json)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    if migrate_db:
        migrate.upgrade(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime.start(app)
        try:
            yield
        finally:
            runtime.stop(app)
            engine.dispose()

    app = FastAPI(
        title="Graft",
        version="1.0.0",
        description="A registry of transplantable neural-network modules: category modules, task "
        "modules and adapters learned by back-distillation, composed on request.",
        lifespan=lifespan,
        docs_url=None,  # /docs is app/web's: Swagger UI from local files, not a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(engine)
    app.state.read_sessionmaker = make_read_sessionmaker(engine)  # GET requests (app/deps.py)
    app.state.store = open_store(settings)
    app.state.job_metrics = job_registry(engine)
    install_error_handlers(app)
    predict = next(r for r in compositions_router.routes if getattr(r, "path", None) == PREDICT_TEMPLATE)
    app.add_middleware(PredictFastPath, graft=app, route=predict)  # innermost: ids, logs, metrics apply
    app.add_middleware(RequestGuard)  # NUL characters and out-of-range integers: 422 at the edge
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(MetricsMiddleware)  # every route, whatever its router's route class
    for router in (
        ops_router, auth_router, modules_router, datasets_router, jobs_router, compositions_router,
        web_router,
    ):
        app.include_router(router)
    return app


def create_worker_app() -> FastAPI:
    """One worker process of `graft serve --workers N`: the parent migrated the database already."""
    return create_app(migrate_db=False)
