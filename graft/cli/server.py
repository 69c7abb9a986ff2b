"""Operator commands: `graft serve`, `graft db upgrade`, `graft token create`, `graft gc`."""

from __future__ import annotations

from pathlib import Path

import typer

db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)


def serve(
    host: str = typer.Option("127.0.0.1", envvar="GRAFT_HOST", help="Interface to listen on, e.g. 0.0.0.0."),
    port: int = typer.Option(8000, envvar="GRAFT_PORT", help="Port to listen on, e.g. 8080."),
    workers: int = typer.Option(
        1, min=1, help="API processes sharing the port (needs GRAFT_BROKER_URL when more than 1)."
    ),
) -> None:
    """Start the API (uvicorn) on the configured backends (embedded defaults when none are set).

    Graft writes one access line per request itself (`app.access`, with the request id), so
    uvicorn's own access log is off.
    """
    import uvicorn

    if workers == 1:
        from app.main import create_app

        uvicorn.run(create_app(), host=host, port=port, proxy_headers=True, access_log=False)
        return
    _serve_workers(host, port, workers)


def _serve_workers(host: str, port: int, workers: int) -> None:
    """Several API processes on one port, each with its own socket (`app/supervisor.py`).

    The parent migrates the database once; each worker builds its app without migrating. Torch's
    threads are split between the workers (OMP_NUM_THREADS, unless set). Prometheus figures of all
    workers are kept in one folder and summed by `/metrics` whichever worker answers the scrape.
    """
    import os
    import shutil
    import tempfile

    from app.config import get_settings
    from app.ops.metrics import MULTIPROC_ENV
    from app.supervisor import Supervisor

    settings = get_settings()
    if settings.embedded_jobs:
        raise typer.BadParameter(
            "several API processes need a job queue: set GRAFT_BROKER_URL (Redis) and run `graft worker`. "
            "With the in-process job runner each process would run jobs in its own memory and, on start, "
            "take back the jobs another process is running.",
            param_hint="--workers",
        )
    _upgrade_database(settings)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    metrics_dir = tempfile.mkdtemp(prefix="graft-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir
    try:
        status = Supervisor(host, port, workers).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    if status:
        typer.echo(f"an API process could not start (is port {port} free?); see the log above", err=True)
        raise typer.Exit(status)


def _upgrade_database(settings) -> None:  # noqa: ANN001 (app.config is imported lazily)
    """Migrate the configured database to the newest revision (making the data folder first)."""
    from app.db import migrate
    from app.db.session import make_engine

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    migrate.upgrade(engine)
    engine.dispose()


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Run the database migrations up to the newest revision."""
    from app.config import get_settings

    _upgrade_database(get_settings())
    typer.echo("database is at the newest revision")


@token_app.command("create")
def token_create(
    ctx: typer.Context,
    scope: str = typer.Option("read", help="read, write or admin (admin ⊇ write ⊇ read), "
                              "e.g. --scope write."),
    name: str = typer.Option("cli", help="A label to recognise the token by, e.g. --name alice-laptop."),
    ttl_days: float | None = typer.Option(None, help="Expire after this many days (default: never), "
                                          "e.g. --ttl-days 30."),
    server: str = typer.Option(None, "--server", help="The server to ask, e.g. --server http://gpu1:8000 "
                               "(default: --url / GRAFT_URL)."),
    local: bool = typer.Option(False, "--local", help="Write into the server's database directly instead "
                               "(on the server's machine, with its GRAFT_DATA_DIR or GRAFT_DATABASE_URL)."),
) -> None:
    """Create a token and print it once (only its hash is stored).

    It asks the server (POST /v1/tokens) with an admin token: on a fresh install, the server's
    GRAFT_BOOTSTRAP_TOKEN. Example: GRAFT_TOKEN=$BOOTSTRAP graft token create --scope write
    """
    if scope not in ("read", "write", "admin"):
        raise typer.BadParameter(f"{scope!r} is not a scope: use read, write or admin", param_hint="--scope")
    if local:
        raw = _create_token_locally(scope, name, ttl_days)
    else:
        raw = _create_token_through_api(ctx, server, scope, name, ttl_days)
    typer.echo(raw)


def _create_token_through_api(ctx: typer.Context, server: str | None, scope: str, name: str,
                              ttl_days: float | None) -> str:
    from graft._http import GraftError
    from graft.cli._common import opts
    from graft.client import Client

    options = opts(ctx)
    url = server or options.url
    if not options.token:
        raise typer.BadParameter(
            f"creating a token asks the server ({url}) with an admin token: set GRAFT_TOKEN to the value "
            "of the server's GRAFT_BOOTSTRAP_TOKEN (or an admin token), or run `graft token create --local` "
            "on the server's machine with its GRAFT_DATA_DIR", param_hint="GRAFT_TOKEN")
    body = {"name": name, "scope": scope, **({"ttl_days": ttl_days} if ttl_days is not None else {})}
    try:
        with Client(url, options.token) as c:
            return c._http.json("POST", "/v1/tokens", json=body)["token"]
    except GraftError as exc:
        hint = ""
        if exc.status in (401, 403):
            hint = (" (GRAFT_TOKEN must be the server's GRAFT_BOOTSTRAP_TOKEN or a token created with "
                    "--scope admin)")
        typer.echo(f"error ({exc.status or 'no answer'}): {exc.detail}{hint}", err=True)
        raise typer.Exit(2 if exc.status == 422 else 1) from None


def _create_token_locally(scope: str, name: str, ttl_days: float | None) -> str:
    """Insert a token into the configured database; refuses one that is missing or was never migrated.

    A missing database here means this shell is not configured like the server: creating one would
    print a token the server never sees.
    """
    from sqlalchemy import inspect
    from sqlalchemy.engine import make_url

    from app.auth.service import create_token
    from app.config import get_settings
    from app.db.session import make_engine, make_sessionmaker
    from app.errors import GraftError

    settings = get_settings()
    url = settings.resolved_database_url
    setting = "GRAFT_DATABASE_URL" if settings.database_url else "GRAFT_DATA_DIR"
    where = setting if settings.database_url else f"GRAFT_DATA_DIR ({settings.data_dir.resolve()})"
    advice = (f"set {setting} as the server has it, or create the token through the server: "
              "GRAFT_TOKEN=<its GRAFT_BOOTSTRAP_TOKEN> graft token create")
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not (parsed.database and Path(parsed.database).exists()):
        raise typer.BadParameter(f"there is no Graft database at {parsed.database}: {advice}",
                                 param_hint="--local")
    engine = make_engine(url)
    try:
        if "api_tokens" not in inspect(engine).get_table_names():
            raise typer.BadParameter(f"the database of {where} has no Graft tables (never served?): {advice}",
                                     param_hint="--local")
        with make_sessionmaker(engine)() as session:
            _, raw = create_token(session, name=name, scopes=[scope], ttl_days=ttl_days)
            session.commit()
    except GraftError as exc:
        typer.echo(exc.detail, err=True)
        raise typer.Exit(2) from None
    finally:
        engine.dispose()
    return raw


def gc(
    grace_hours: float = typer.Option(1.0, help="Keep unreferenced objects younger than this (in flight)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the orphans without deleting them."),
) -> None:
    """Delete stored objects that no module version or dataset references (crashed uploads)."""
    from datetime import timedelta

    from app.config import get_settings
    from app.db import migrate
    from app.db.session import make_engine, make_sessionmaker
    from app.storage import open_store
    from app.storage.sweeper import sweep_orphans

    settings = get_settings()
    engine = make_engine(settings.resolved_database_url)
    migrate.upgrade(engine)
    try:
        with make_sessionmaker(engine)() as session:
            report = sweep_orphans(
                session, open_store(settings), grace=timedelta(hours=grace_hours), dry_run=dry_run
            )
    finally:
        engine.dispose()
    verb = "would delete" if dry_run else "deleted"
    for key in report.deleted:
        typer.echo(f"{verb} {key}")
    for key in report.aborted_uploads:
        typer.echo(f"{'would abort' if dry_run else 'aborted'} the incomplete upload of {key}")
    typer.echo(
        f"scanned {report.scanned} objects: {report.referenced} referenced, {report.too_young} younger "
        f"than the grace period, {len(report.deleted)} orphans {verb}"
    )


def register(app: typer.Typer) -> None:
    """Add this group's commands to `app`."""
    app.command("serve")(serve)
    app.add_typer(db_app, name="db")
    app.add_typer(token_app, name="token")
    app.command("gc")(gc)
