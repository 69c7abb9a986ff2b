"""The jobs half of `python -m bench.scale`: N transplants through 1, then 2, real `graft worker` processes.

Two job mixes, each through the whole production path (API → PostgreSQL row → Redis → Celery worker
process → fetch from SeaweedFS S3 → train → register one adapter version → final status):
- `cpu_bound`: 1 epoch over 16 samples in one step; all of a job is host CPU (this machine has no
  GPU), on 2 cores that also run the API, PostgreSQL and SeaweedFS.
- `cpu_light`: the same job in 4 steps of 4 samples, each step followed by a simulated device wait
  (`bench.device_wait`: the worker sleeps, as a GPU host blocks while its device computes). The
  training itself still runs for real on the CPU.
Throughput = jobs / (last finished_at − first started_at) from the jobs table. Checked for every job:
succeeded, attempts == 1, received by exactly one worker (their logs), exactly one adapter version.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import redis
from sqlalchemy import create_engine, func, select

from bench.registry import TOKEN, _create_db, _drop_db

CPU_BOUND = {"epochs": 1, "train": {"batch_size": 16, "val_fraction": 0.0, "lr": 0.01}}
CPU_LIGHT = {"epochs": 1, "train": {"batch_size": 4, "val_fraction": 0.0, "lr": 0.01}}
DEVICE_WAIT_S = 0.1
"""Simulated device time per training step of the CPU-light mix (4 steps: 0.4 s a job)."""
MIXES = {
    "cpu_bound": {"job": CPU_BOUND, "device_wait_s": None},
    "cpu_light": {"job": CPU_LIGHT, "device_wait_s": DEVICE_WAIT_S},
}
TICKS = os.sysconf("SC_CLK_TCK")
REDIS = os.environ.get("GRAFT_TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _machine() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def _run_phase(api, engine, pool, world, mix: str, n_jobs: int, n_workers: int, folder: Path) -> dict:  # noqa: ANN001
    from app.models.job import Job
    from app.models.module_version import ModuleVersion
    from bench.device_wait import WAIT_ENV
    from tests.jobs.world import transplant

    spec = MIXES[mix]
    pool.stop_all()
    pool.running.clear()
    folder.mkdir()
    pool.folder = folder
    pool.module = "graft.cli" if spec["device_wait_s"] is None else "bench.device_wait"
    env = {} if spec["device_wait_s"] is None else {WAIT_ENV: str(spec["device_wait_s"])}
    # The whole batch is queued first and the workers start together: the run measures how fast
    # 1 or 2 workers drain a queue, not how fast this process submits (the API shares the cores).
    ids = [
        transplant(api, world, result_module=f"{mix}-w{n_workers}-{i}", seed=i, **spec["job"])
        for i in range(n_jobs)
    ]
    workers = [pool.launch(**env) for _ in range(n_workers)]
    cpu0 = []
    for w in workers:  # CPU from "ready" on: the start-up (imports, warm-up) is not a job's cost
        pool.ready(w)
        cpu0.append(_cpu_s(w.proc.pid))
    busy0, total0 = _machine()
    deadline = time.monotonic() + 60 * 20
    with engine.connect() as conn:
        while True:
            done = conn.scalar(
                select(func.count()).select_from(Job).where(Job.id.in_(ids), Job.finished_at.is_not(None))
            )
            conn.rollback()
            if done == n_jobs or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        busy1, total1 = _machine()
        cpu = sum(_cpu_s(w.proc.pid) - c for w, c in zip(workers, cpu0, strict=True))
        rows = conn.execute(
            select(Job.id, Job.status, Job.attempts, Job.worker, Job.started_at, Job.finished_at)
            .where(Job.id.in_(ids))
        ).all()
        versions = dict(conn.execute(
            select(ModuleVersion.job_id, func.count())
            .where(ModuleVersion.job_id.in_(ids))
            .group_by(ModuleVersion.job_id)
        ).all())
    time.sleep(1)  # let the last "succeeded" lines reach the logs
    logs = [w.log() for w in workers]
    received = {i: sum(log.count(f"graft.transplant[{i}] received") for log in logs) for i in ids}
    finished = [r for r in rows if r.finished_at is not None]
    span = (max(r.finished_at for r in finished) - min(r.started_at for r in finished)).total_seconds()
    by_worker: dict[str, int] = {}
    for r in rows:
        key = (r.worker or "none").split("-", 1)[0]
        by_worker[key] = by_worker.get(key, 0) + 1
    return {
        "workers": n_workers,
        "span_s": span,
        "jobs_per_s": len(finished) / span,
        "succeeded": sum(r.status == "succeeded" for r in rows),
        "lost": n_jobs - len(finished),
        "run_more_than_once": sum(r.attempts != 1 for r in rows),
        "not_received_once": sum(n != 1 for n in received.values()),
        "jobs_without_one_version": sum(versions.get(r.id, 0) != 1 for r in rows),
        "by_worker": by_worker,
        "mean_run_s": sum((r.finished_at - r.started_at).total_seconds() for r in finished)
        / max(1, len(finished)),
        "worker_cpu_s_per_job": cpu / n_jobs,
        "machine_busy": (busy1 - busy0) / max(1, total1 - total0),
    }


def _free_redis_db() -> tuple[str, redis.Redis]:
    owner = uuid.uuid4().hex
    for db in range(15, 0, -1):
        client = redis.Redis.from_url(f"{REDIS}/{db}")
        if client.dbsize() == 0 and client.set("graft-tests:owner", owner, nx=True, ex=3600):
            return f"{REDIS}/{db}", client
    raise SystemExit("No free Redis database (1-15) for the job benchmark.")


def bench_jobs(n_jobs: int, workdir: Path) -> dict:
    """Both mixes, 1 then 2 workers each; results by mix with the 2-worker / 1-worker ratio."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.jobs.conftest import Workers
    from tests.jobs.world import make_world
    from tests.services import s3_settings, start_seaweedfs, stop_seaweedfs

    proc_s3, s3 = start_seaweedfs(workdir / "s3")
    db_name, db_url = _create_db()
    broker, rclient = _free_redis_db()
    settings = s3_settings(s3, db_url, workdir / "api", broker_url=broker, bootstrap_token=TOKEN)
    pool = Workers(settings, workdir)
    out: dict = {"jobs": n_jobs, "mixes": MIXES, "load_average": os.getloadavg()[0]}
    try:
        app = create_app(settings)
        engine = create_engine(db_url)
        with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as api:
            world = make_world(api, "scale", n=16)
            for mix in MIXES:
                res: dict = {}
                for n_workers in (1, 2):
                    folder = workdir / f"{mix}-{n_workers}"
                    res[f"{n_workers}_workers"] = _run_phase(
                        api, engine, pool, world, mix, n_jobs, n_workers, folder
                    )
                    print(mix, res[f"{n_workers}_workers"], flush=True)
                res["ratio"] = res["2_workers"]["jobs_per_s"] / res["1_workers"]["jobs_per_s"]
                out[mix] = res
        out["load_average_after"] = os.getloadavg()[0]
        engine.dispose()
        app.state.engine.dispose()
    finally:
        pool.stop_all()
        rclient.flushdb()
        _drop_db(db_name)
        stop_seaweedfs(proc_s3)
    return out


def jobs_markdown(j: dict) -> list[str]:
    """The jobs section of scale.md."""
    cb1, cb2 = j["cpu_bound"]["1_workers"], j["cpu_bound"]["2_workers"]
    cl1, cl2 = j["cpu_light"]["1_workers"], j["cpu_light"]["2_workers"]
    lines = [
        "",
        f"## Jobs: {j['jobs']} small transplants per run through real `graft worker` processes "
        "(Redis, PostgreSQL, SeaweedFS S3)",
        f"(load average {j['load_average']:.1f} before, {j['load_average_after']:.1f} after, on 2 shared "
        "cores; the in-process API, PostgreSQL and SeaweedFS share them with the workers)",
        "",
        "Two job mixes, each through the full lifecycle (job row, Redis message, claim, progress writes, "
        "f/g_T/g_S from S3, real training on the CPU, one adapter version registered, late ack):",
        "- **cpu_bound**: 1 epoch, 16 samples in 1 step of 16. Every second of it is host CPU.",
        f"- **cpu_light**: 1 epoch, 16 samples in 4 steps of 4, each step followed by a **simulated** "
        f"device wait of {DEVICE_WAIT_S * 1000:.0f} ms (`bench/device_wait.py`: the benchmark's workers "
        "sleep after each step, as a GPU host blocks while its device computes; the production code has "
        "no such wait). This is the goal's \"CPU-light job\": mostly waiting, little host CPU.",
        "",
        "| mix | workers | span s | jobs/s | mean run s | worker CPU s/job | machine busy | succeeded | lost "
        "| attempts ≠ 1 | received ≠ 1 | ≠ 1 version | by worker |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mix in MIXES:
        for n in (1, 2):
            r = j[mix][f"{n}_workers"]
            lines.append(
                f"| {mix} | {n} | {r['span_s']:.1f} | {r['jobs_per_s']:.2f} | {r['mean_run_s']:.3f} "
                f"| {r['worker_cpu_s_per_job']:.3f} | {100 * r['machine_busy']:.0f} % | {r['succeeded']} "
                f"| {r['lost']} | {r['run_more_than_once']} | {r['not_received_once']} "
                f"| {r['jobs_without_one_version']} | {r['by_worker']} |"
            )
    lines += [
        "",
        f"Throughput 2 workers / 1 worker (goal ≥ 1.7× for CPU-light jobs): "
        f"**cpu_light {j['cpu_light']['ratio']:.2f}×**; cpu_bound {j['cpu_bound']['ratio']:.2f}×.",
        "",
        "Reading it:",
        f"- cpu_bound, 2 workers: the machine was {100 * cb2['machine_busy']:.0f} % busy (1 worker: "
        f"{100 * cb1['machine_busy']:.0f} %): the 2 cores, shared by the workers, PostgreSQL and "
        "SeaweedFS, are the limit, not the queue; a job's run time grew from "
        f"{cb1['mean_run_s'] * 1000:.0f} to {cb2['mean_run_s'] * 1000:.0f} ms.",
        f"- cpu_light: {cl1['worker_cpu_s_per_job'] * 1000:.0f} ms of worker CPU per job against "
        f"{4 * DEVICE_WAIT_S * 1000:.0f} ms of (simulated) device time; with 2 workers the machine was "
        f"{100 * cl2['machine_busy']:.0f} % busy and a job's run time grew from "
        f"{cl1['mean_run_s'] * 1000:.0f} to {cl2['mean_run_s'] * 1000:.0f} ms (the shared backends and "
        "cores).",
        "- The queue is filled before the workers start, and both workers start together: the runs "
        "measure how fast 1 or 2 workers drain a queue, not how fast this process submits.",
    ]
    return lines
