"""Fuzz the running API with schemathesis against its own /openapi.json: count 5xx and schema violations.

    python -m bench.fuzz [--max-examples 40] [--checks all] [--postgres]   # writes bench/results/fuzz.md

A uvicorn server with an admin bootstrap token, on the embedded defaults (SQLite + a local folder in a
tmp data dir) or, with `--postgres`, on a fresh PostgreSQL database (GRAFT_FUZZ_PG_ADMIN, default the
local server); schemathesis runs every phase (examples, coverage, fuzzing, stateful) with the given
checks (default `not_a_server_error` and `response_schema_conformance`; `all` adds status-code,
content-type, header and negative-data conformance), and its NDJSON event stream is tallied.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from support.fuzz import CHECKS, run_fuzz


@contextlib.contextmanager
def _database(postgres: bool) -> Iterator[str | None]:
    """A fresh PostgreSQL database URL (dropped afterwards) when asked for, else None (SQLite)."""
    if not postgres:
        yield None
        return
    import uuid

    import psycopg

    admin = os.environ.get("GRAFT_FUZZ_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
    name = f"graft_fuzz_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=40)
    parser.add_argument("--checks", default=CHECKS, help="schemathesis checks, e.g. all")
    parser.add_argument("--postgres", action="store_true", help="serve from a fresh PostgreSQL database")
    parser.add_argument("--out", type=Path, default=Path("bench/results/fuzz.md"))
    args = parser.parse_args()
    import schemathesis

    with _database(args.postgres) as database_url:
        result = run_fuzz(args.max_examples, checks=args.checks, database_url=database_url)
    backend = "PostgreSQL + a local folder" if args.postgres else "the embedded defaults"
    statuses = ", ".join(f"{code}: {n}" for code, n in sorted(result.status.items()))
    failures = Counter(result.failures)
    lines = [
        "# Fuzzing the API with schemathesis",
        "",
        f"`python -m bench.fuzz --max-examples {args.max_examples} --checks {args.checks}"
        f"{' --postgres' if args.postgres else ''}`; schemathesis {schemathesis.__version__}, "
        f"checks `{args.checks}`, all phases, one worker, seed 1, server on {backend}.",
        "",
        f"- requests sent: **{result.requests}** in {result.seconds:.0f} s",
        f"- 5xx responses: **{result.server_errors}**",
        f"- failed checks: **{len(result.failures)}**",
        f"- statuses: {statuses}",
        "",
    ]
    if failures:
        lines += ["Failed checks (name: title × count):", ""]
        lines += [f"- {name} × {n}" for name, n in failures.most_common()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
