"""The `graft` command line. Each command group lives in its own module and registers itself here."""

from __future__ import annotations

import typer

from graft.cli import server, user, worker

app = typer.Typer(
    name="graft",
    help="Graft: a registry of transplantable neural-network modules.",
    no_args_is_help=True,
    add_completion=False,
)

server.register(app)  # serve, db upgrade, token create
worker.register(app)  # worker
user.register(app)  # modules, datasets, transplant, jobs, grid, compose, predict, demo

if __name__ == "__main__":  # pragma: no cover
    app()
