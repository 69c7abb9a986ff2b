"""Fuzz the running API with schemathesis against its own /openapi.json: count 5xx and schema violations.

    python -m bench.fuzz [--max-examples 40]   # writes bench/results/fuzz.md

A uvicorn server on the embedded defaults (SQLite + a local folder in a tmp data dir) with an admin
bootstrap token; schemathesis runs every phase (examples, coverage, fuzzing, stateful) with the checks
`not_a_server_error` and `response_schema_conformance`, and its NDJSON event stream is tallied.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from support.fuzz import CHECKS, run_fuzz


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("bench/results/fuzz.md"))
    args = parser.parse_args()
    import schemathesis

    result = run_fuzz(args.max_examples)
    statuses = ", ".join(f"{code}: {n}" for code, n in sorted(result.status.items()))
    failures = Counter(result.failures)
    lines = [
        "# Fuzzing the API with schemathesis",
        "",
        f"`python -m bench.fuzz --max-examples {args.max_examples}`; "
        f"schemathesis {schemathesis.__version__}, "
        f"checks `{CHECKS}`, all phases, one worker, seed 1, server on the embedded defaults.",
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
