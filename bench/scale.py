"""Scale benchmarks, measured in one run; results go to bench/results/scale.{md,json}.

1. Registry at scale: 100,000 module versions in PostgreSQL (25,000 modules × 4 versions, bulk
   COPY), in-process TestClient: list (first page, a page from the middle), search (filter by
   kind + category, by kind + task) and resolve (`latest`, a number) — p50 / p99.
2. Jobs: N small CPU-light transplants (1 epoch, 16 samples, tiny nets) through real `graft worker`
   processes on Redis + PostgreSQL + SeaweedFS S3, first with 1 worker, then with 2 on the same
   queue. Throughput = jobs / (last finished_at − first started_at) from the jobs table; each job
   checked: succeeded, attempts == 1, exactly one adapter version.

Run: `python -m bench.scale [--jobs 200] [--skip-jobs]` (PostgreSQL, Redis and `weed` needed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path

import redis
from sqlalchemy import create_engine, func, select

from bench.registry import PG_ADMIN, RESULTS, TOKEN, _create_db, _drop_db, measure, populate

N_MODULES, N_VERSIONS = 25_000, 4
REDIS = os.environ.get("GRAFT_TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
JOB = {"epochs": 1, "train": {"batch_size": 16, "val_fraction": 0.0, "lr": 0.01}}


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


def _free_redis_db() -> tuple[str, redis.Redis]:
    owner = uuid.uuid4().hex
    for db in range(15, 0, -1):
        client = redis.Redis.from_url(f"{REDIS}/{db}")
        if client.dbsize() == 0 and client.set("graft-tests:owner", owner, nx=True, ex=3600):
            return f"{REDIS}/{db}", client
    raise SystemExit("No free Redis database (1-15) for the job benchmark.")


def bench_jobs(n_jobs: int, workdir: Path) -> dict:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.models.job import Job
    from app.models.module_version import ModuleVersion
    from tests.jobs.conftest import Workers
    from tests.jobs.world import make_world, transplant
    from tests.services import s3_settings, start_seaweedfs, stop_seaweedfs

    proc_s3, s3 = start_seaweedfs(workdir / "s3")
    db_name, db_url = _create_db()
    broker, rclient = _free_redis_db()
    settings = s3_settings(s3, db_url, workdir / "api", broker_url=broker, bootstrap_token=TOKEN)
    pool = Workers(settings, workdir)
    out: dict = {"jobs": n_jobs, "job": JOB, "load_average": os.getloadavg()[0]}
    try:
        app = create_app(settings)
        engine = create_engine(db_url)
        with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as api:
            world = make_world(api, "scale", n=16)
            for n_workers in (1, 2):
                pool.stop_all()
                pool.running.clear()
                for _ in range(n_workers):
                    pool.start()
                prefix = f"w{n_workers}-adapter"
                ids = [
                    transplant(api, world, result_module=f"{prefix}-{i}", seed=i, **JOB)
                    for i in range(n_jobs)
                ]
                deadline = time.monotonic() + 60 * 20
                with engine.connect() as conn:
                    while True:
                        done = conn.scalar(
                            select(func.count())
                            .select_from(Job)
                            .where(Job.id.in_(ids), Job.finished_at.is_not(None))
                        )
                        conn.rollback()
                        if done == n_jobs or time.monotonic() > deadline:
                            break
                        time.sleep(0.5)
                    rows = conn.execute(
                        select(
                            Job.id, Job.status, Job.attempts, Job.worker, Job.started_at, Job.finished_at
                        ).where(Job.id.in_(ids))
                    ).all()
                    versions = conn.execute(
                        select(ModuleVersion.job_id, func.count())
                        .where(ModuleVersion.job_id.in_(ids))
                        .group_by(ModuleVersion.job_id)
                    ).all()
                per_job = dict(versions)
                finished = [r for r in rows if r.finished_at is not None]
                span = (
                    max(r.finished_at for r in finished) - min(r.started_at for r in finished)
                ).total_seconds()
                by_worker: dict[str, int] = {}
                for r in rows:
                    key = (r.worker or "none").split("-", 1)[0]
                    by_worker[key] = by_worker.get(key, 0) + 1
                result = {
                    "workers": n_workers,
                    "span_s": span,
                    "jobs_per_s": len(finished) / span,
                    "succeeded": sum(r.status == "succeeded" for r in rows),
                    "lost": n_jobs - len(finished),
                    "run_more_than_once": sum(r.attempts != 1 for r in rows),
                    "jobs_without_one_version": sum(per_job.get(r.id, 0) != 1 for r in rows),
                    "by_worker": by_worker,
                    "mean_run_s": sum((r.finished_at - r.started_at).total_seconds() for r in finished)
                    / max(1, len(finished)),
                }
                out[f"{n_workers}_workers"] = result
                print(result, flush=True)
        out["ratio"] = out["2_workers"]["jobs_per_s"] / out["1_workers"]["jobs_per_s"]
        out["load_average_after"] = os.getloadavg()[0]
        engine.dispose()
        app.state.engine.dispose()
    finally:
        pool.stop_all()
        rclient.flushdb()
        _drop_db(db_name)
        stop_seaweedfs(proc_s3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--skip-jobs", action="store_true")
    args = parser.parse_args()
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
        j = result["jobs"]
        lines += [
            "",
            f"## Jobs: {j['jobs']} small transplants (1 epoch, 16 samples, tiny nets) through real "
            "`graft worker` processes (Redis, PostgreSQL, SeaweedFS S3)",
            f"(load average {j['load_average']:.1f} before, {j['load_average_after']:.1f} after)",
            "",
            "| workers | span s | jobs/s | mean run s | succeeded | lost | run twice | ≠ 1 version "
            "| by worker |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for n in (1, 2):
            r = j[f"{n}_workers"]
            lines.append(
                f"| {n} | {r['span_s']:.1f} | {r['jobs_per_s']:.2f} | {r['mean_run_s']:.2f} "
                f"| {r['succeeded']} | {r['lost']} | {r['run_more_than_once']} "
                f"| {r['jobs_without_one_version']} | {r['by_worker']} |"
            )
        lines += ["", f"Throughput 2 workers / 1 worker: **{j['ratio']:.2f}×** (goal ≥ 1.7×)."]
    (RESULTS / "scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
