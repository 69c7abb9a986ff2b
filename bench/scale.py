"""Scale benchmarks, measured in one run; results go to bench/results/scale.{md,json}.

1. Registry at scale: 100,000 module versions in PostgreSQL (25,000 modules × 4 versions, bulk
   COPY), in-process TestClient: list (first page, a page from the middle), search (filter by
   kind + category, by kind + task) and resolve (`latest`, a number) — p50 / p99.
2. Jobs (`bench/scale_jobs.py`): N small transplants through real `graft worker` processes on
   Redis + PostgreSQL + SeaweedFS S3, first with 1 worker, then with 2 on the same queue, for two
   job mixes: CPU-bound (all host CPU) and CPU-light (a simulated device wait per training step).
   Throughput = jobs / (last finished_at − first started_at) from the jobs table; each job checked:
   succeeded, attempts == 1, received by one worker, exactly one adapter version.

Run: `python -m bench.scale [--jobs 200] [--skip-jobs]` (PostgreSQL, Redis and `weed` needed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
from pathlib import Path

from bench.registry import PG_ADMIN, RESULTS, TOKEN, _create_db, _drop_db, measure, populate
from bench.scale_jobs import bench_jobs, jobs_markdown

N_MODULES, N_VERSIONS = 25_000, 4


def bench_registry(n_requests: int = 500) -> dict:
    from fastapi.testclient import TestClient

    from app.config import Settings
    from app.main import create_app
    from app.modules.cursor import encode_cursor

    db_name, db_url = _create_db()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            app = create_app(Settings(data_dir=Path(tmp), database_url=db_url, bootstrap_token=TOKEN))
            setup_s = populate(db_name, N_MODULES, N_VERSIONS)
            n = N_MODULES
            cases = {
                "list: GET /v1/modules?limit=50": lambda i: "/v1/modules?limit=50",
                "list: page from the middle (cursor)": lambda i: (
                    f"/v1/modules?limit=50&cursor={encode_cursor(n // 2 + 37 * i)}"
                ),
                "search: ?kind=category&category=cX": lambda i: (
                    f"/v1/modules?kind=category&category=c{(2 * i) % 100}"
                ),
                "search: ?kind=task&task=tX": lambda i: f"/v1/modules?kind=task&task=t{(2 * i + 1) % 50}",
                "resolve: /versions/latest": lambda i: (
                    f"/v1/modules/m-{(i * 7919) % n + 1:06d}/versions/latest"
                ),
                "resolve: /versions/2": lambda i: f"/v1/modules/m-{(i * 104729) % n + 1:06d}/versions/2",
            }
            out = {
                "modules": N_MODULES,
                "versions": N_MODULES * N_VERSIONS,
                "setup_s": setup_s,
                "load_average": os.getloadavg()[0],
            }
            with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
                out.update(measure(client, cases, n_requests))
            out["load_average_after"] = os.getloadavg()[0]
            app.state.engine.dispose()
    finally:
        _drop_db(db_name)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--skip-jobs", action="store_true")
    parser.add_argument("--render", action="store_true", help="only rewrite scale.md from scale.json")
    args = parser.parse_args()
    if args.render:
        lines = render(json.loads((RESULTS / "scale.json").read_text()))
        (RESULTS / "scale.md").write_text("\n".join(lines) + "\n")
        return
    logging.disable(logging.INFO)  # the per-request access log is not what is measured
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), {platform.python_version()}",
        "pg": PG_ADMIN.split()[0],
        "registry": bench_registry(),
    }
    if not args.skip_jobs:
        with tempfile.TemporaryDirectory(prefix="graft-scale-") as tmp:
            result["jobs"] = bench_jobs(args.jobs, Path(tmp))
    (RESULTS / "scale.json").write_text(json.dumps(result, indent=2, default=str))
    lines = render(result)
    (RESULTS / "scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def render(result: dict) -> list[str]:
    """scale.md's lines from the results."""
    reg = result["registry"]
    lines = [
        "# Scale benchmarks",
        "",
        f"Machine: {result['machine']}. Produced by `python -m bench.scale`.",
        "",
        f"## Registry: {reg['versions']:,} module versions ({reg['modules']:,} modules × {N_VERSIONS}) in "
        "PostgreSQL, in-process TestClient, requests one after another",
        f"(load average {reg['load_average']:.1f} before, {reg['load_average_after']:.1f} after, on 2 shared "
        "cores)",
        "",
        "| request | p50 ms | p99 ms (goal < 20) |",
        "|---|---|---|",
    ]
    lines += [
        f"| {k} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} |" for k, v in reg.items() if isinstance(v, dict)
    ]
    if "jobs" in result:
        lines += jobs_markdown(result["jobs"])
    return lines


if __name__ == "__main__":
    main()
