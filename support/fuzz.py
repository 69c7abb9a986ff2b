"""Schemathesis against a running server's /openapi.json, tallied: bench/fuzz.py writes the full run,
tests/hardening/test_fuzz.py runs a short one."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
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
