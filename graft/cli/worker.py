"""`graft worker`: a Celery worker that runs transplant and amalgamation jobs (on a GPU when present)."""

from __future__ import annotations

import typer

POOLS = ("threads", "solo")


def register(app: typer.Typer) -> None:
    """Add `graft worker` to `app`."""

    @app.command("worker")
    def worker(
        queues: str = typer.Option("transplant", "--queues", "-Q", help="Comma-separated queues to consume."),
        concurrency: int = typer.Option(
            1, "--concurrency", "-c", min=1, help="Jobs run at once (one per GPU is the sane default)."
        ),
        pool: str = typer.Option(
            "threads", "--pool", help="threads or solo: neither forks after CUDA is initialised."
        ),
        loglevel: str = typer.Option("info", "--loglevel", "-l"),
        hostname: str | None = typer.Option(None, "--hostname", "-n", help="Node name, e.g. gpu1@%h."),
    ) -> None:
        """Consume jobs from the Redis broker at GRAFT_BROKER_URL (database and store from GRAFT_*)."""
        from app.config import Settings

        settings = Settings()
        if not settings.broker_url:
            typer.echo(
                "GRAFT_BROKER_URL is not set: without a broker, jobs run inside `graft serve` "
                "(embedded mode). Set it, e.g. GRAFT_BROKER_URL=redis://localhost:6379/0.",
                err=True,
            )
            raise typer.Exit(2)
        if pool not in POOLS:
            choices = ", ".join(POOLS)
            typer.echo(f"--pool must be one of {choices} (prefork would fork after CUDA init).", err=True)
            raise typer.Exit(2)
        from workers.celery_app import app as celery_app

        argv = [
            "worker", f"--queues={queues}", f"--concurrency={concurrency}", f"--pool={pool}",
            f"--loglevel={loglevel}", "--without-gossip", "--without-mingle",
        ]
        if hostname:
            argv.append(f"--hostname={hostname}")
        celery_app.worker_main(argv)
