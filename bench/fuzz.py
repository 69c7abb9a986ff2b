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
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from graft.local_server import LocalServer

CHECKS = "not_a_server_error,response_schema_conformance"


@dataclass
class FuzzResult:
    """Tally of one schemathesis run."""

    requests: int = 0
    status: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    returncode: int = 0
    tail: str = ""

    @property
    def server_errors(self) -> int:
        return sum(n for code, n in self.status.items() if code >= 500)


def _tally(ndjson: Path, result: FuzzResult) -> None:
    for line in ndjson.read_text().splitlines():
        event = json.loads(line)
        for kind, body in event.items():
            if kind == "ScenarioFinished":
                recorder = body.get("recorder", {})
                for interactions in recorder.get("interactions", {}).values():
                    response = interactions.get("response")
                    if response:
                        result.requests += 1
                        result.status[int(response["status_code"])] += 1
                for checks in recorder.get("checks", {}).values():
                    for check in checks:
                        if str(check.get("status")).lower() == "failure":
                            failure = (check.get("failure_info") or {}).get("failure", {})
                            first = (failure.get("message") or "").splitlines()[:1]
                            result.failures.append(
                                f"{failure.get('operation', '?')} {failure.get('code', '')} "
                                f"{failure.get('title', check.get('name'))}: {''.join(first)[:120]}"
                            )


def run_fuzz(max_examples: int, *, seed: int = 1, workdir: Path | None = None, checks: str = CHECKS,
             database_url: str | None = None) -> FuzzResult:
    """Start a server, run schemathesis against it, and tally requests, statuses and failed checks."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="graft-fuzz-"))
    env = {"GRAFT_DATABASE_URL": database_url} if database_url else None
    server = LocalServer(workdir / "data", env=env).start()
    result = FuzzResult()
    try:
        exe = Path(sys.executable).parent / "schemathesis"
        cmd = [
            str(exe), "run", server.url + "/openapi.json", "-H", f"Authorization: Bearer {server.token}",
            "--checks", checks, "--max-examples", str(max_examples), "--seed", str(seed), "--workers", "1",
            "--report", "ndjson", "--report-dir", str(workdir / "report"), "--no-color",
        ]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3000)
        result.seconds = time.perf_counter() - start
        result.returncode, result.tail = proc.returncode, (proc.stdout + proc.stderr)[-4000:]
    finally:
        server.stop()
    for ndjson in (workdir / "report").glob("*.ndjson"):
        _tally(ndjson, result)
    return result


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
