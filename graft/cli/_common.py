"""What every user command shares: the global options, output (tables or --json) and exit codes.

Exit codes scripts can trust: 0 done, 1 the server said no (its detail is printed on stderr) or could
not be reached, 2 the command line itself is wrong (click's usage errors use 2 as well).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import typer
from rich.console import Console

from graft._http import DEFAULT_URL, GraftError
from graft.client import Client, JobFailed

EXIT_OK, EXIT_SERVER, EXIT_USAGE = 0, 1, 2
F = TypeVar("F", bound=Callable[..., Any])

out = Console(soft_wrap=True)
err = Console(stderr=True)


@dataclass
class Options:
    """The global options, kept on the click context for every subcommand."""

    url: str = DEFAULT_URL
    token: str | None = None
    json: bool = False

    def client(self) -> Client:
        return Client(self.url, self.token or "")


def global_options(
    ctx: typer.Context,
    url: str = typer.Option(DEFAULT_URL, "--url", envvar="GRAFT_URL", help="Base URL of the Graft server."),
    token: str = typer.Option(None, "--token", envvar="GRAFT_TOKEN", help="API token (Bearer).",
                              show_default=False),
    json_out: bool = typer.Option(False, "--json", help="Print JSON (for scripts) instead of tables."),
) -> None:
    """Graft: a registry of transplantable neural-network modules."""
    ctx.obj = Options(url=url, token=token, json=json_out)


def opts(ctx: typer.Context) -> Options:
    obj = ctx.find_object(Options)
    return obj if obj is not None else Options()


def usage(message: str) -> typer.BadParameter:
    """A usage error (exit code 2) with one sentence saying how to fix it."""
    return typer.BadParameter(message)


def handles_errors(fn: F) -> F:
    """Turn the client's exceptions into a printed sentence and a trustworthy exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GraftError as exc:
            hint = ""
            if exc.status == 401 and not _token_given(args, kwargs):
                hint = (" (this command sent no token: set GRAFT_TOKEN, or pass --token; a fresh "
                        "server's first token comes from "
                        "`GRAFT_TOKEN=<its GRAFT_BOOTSTRAP_TOKEN> graft token create`)")
            err.print(f"[red]error[/red] ({exc.status or 'no answer'}): {exc.detail}{hint}", highlight=False)
            raise typer.Exit(EXIT_SERVER) from None
        except JobFailed as exc:
            job = exc.job
            err.print(f"[red]job {job.get('status')}[/red]: {job.get('error') or ''}", highlight=False)
            if _json_wanted(args, kwargs):
                emit_json(exc.job)
            raise typer.Exit(EXIT_SERVER) from None

    return wrapper  # type: ignore[return-value]


def _token_given(args: tuple, kwargs: dict) -> bool:
    ctx = kwargs.get("ctx") or next((a for a in args if isinstance(a, typer.Context)), None)
    return bool(ctx and opts(ctx).token)


def _json_wanted(args: tuple, kwargs: dict) -> bool:
    ctx = kwargs.get("ctx") or next((a for a in args if isinstance(a, typer.Context)), None)
    return bool(ctx and opts(ctx).json)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def show(ctx: typer.Context, data: Any, render: Callable[[Any], Any]) -> None:
    """JSON when --json, else the rich renderable that `render(data)` builds."""
    if opts(ctx).json:
        emit_json(data)
    else:
        out.print(render(data))


def parse_json_option(value: str | None, what: str) -> Any:
    """A JSON option value, or a usage error naming the option."""
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        raise usage(f"{what} must be JSON, e.g. '{{\"arch\": \"conv\", \"layers\": 2}}'") from None
