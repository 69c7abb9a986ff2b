"""Job benchmarks, measured side by side in one run; results go to bench/results/jobs.{md,json}.

1. Queue latency, submit → running, with a warm Celery worker (a real `graft worker` process on Redis
   and PostgreSQL, artifacts in a shared local folder): the time from just before `POST
   /v1/transplants` to the `started_at` the worker wrote when it claimed the job; the worker is idle
   at each submission. The embedded in-process runner is measured beside it.
2. Worker overhead: a ~30-second back-distillation job's wall time (submit → succeeded, read by
   polling) vs `transplant.run_transplant` alone in this process on the same inputs (modules loaded
   from the same artifacts, same TrainConfig, same seed, one torch thread on both sides), alternated.

Run: `python -m bench.jobs [--latency-jobs 20] [--target-s 30] [--pairs 2]`
(needs PostgreSQL at 127.0.0.1:5432 and Redis at 127.0.0.1:6379).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import numpy as np
import psycopg
import redis
import torch
from fastapi.testclient import TestClient
from torch import nn

from app.config import Settings
from app.main import create_app
from transplant import TrainConfig, run_transplant
from transplant.adapters import fit_adapter_config
from transplant.artifacts import load_module, save_module

PG_ADMIN = os.environ.get("GRAFT_TEST_PG_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres")
REDIS = os.environ.get("GRAFT_TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-admin-token-0123456789"
X_SHAPE, FEAT_SHAPE = (3, 16, 16), (16, 16, 16)
N = 512
TRAIN = {"batch_size": 64, "val_fraction": 0.0, "patience": 100_000, "lr": 3e-3}


def nets() -> tuple[nn.Module, nn.Module, nn.Module]:
    """f: (3, 16, 16) → (16, 16, 16); g_T (BatchNorm, GELU) and g_S (ReLU): → 10 logits."""
    torch.manual_seed(0)
    f = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.GELU())
    g_t = nn.Sequential(
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.GELU(), nn.Conv2d(16, 16, 3, padding=1),
        nn.GELU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(256, 10),
    )
    g_s = nn.Sequential(
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(256, 10)
    )
    return f.eval(), g_t.eval(), g_s.eval()


def _ok(resp, status: int = 201) -> dict:
    if resp.status_code != status:
        raise RuntimeError(f"{resp.request.method} {resp.request.url}: {resp.status_code} {resp.text}")
    return resp.json()


def upload_world(api: TestClient, folder: Path) -> tuple[dict, np.ndarray, dict[str, Path]]:
    """Upload f, g_T, g_S and the dataset; the transplant refs, x and the artifact files."""
    f, g_t, g_s = nets()
    files = {}
    for name, kind, net, shape, extra in (
        ("bench-f", "category", f, X_SHAPE, {"category": "bench"}),
        ("bench-gt", "task", g_t, FEAT_SHAPE, {"task": "cls"}),
        ("bench-gs", "task", g_s, FEAT_SHAPE, {"task": "cls"}),
    ):
        data = save_module(net, torch.zeros(2, *shape), "torch_export")
        files[name] = folder / f"{name}.pt2"
        files[name].write_bytes(data)
        _ok(api.post("/v1/modules", json={"name": name, "kind": kind, **extra}))
        meta = {"format": "torch_export", "input_shape": [None, *shape]}
        _ok(api.post(f"/v1/modules/{name}/versions", files={"file": ("m.pt2", data)},
                     data={"meta": json.dumps(meta)}))
    x = np.random.default_rng(0).standard_normal((N, *X_SHAPE)).astype(np.float32)
    buf = io.BytesIO()
    np.savez(buf, x=x)
    ds = _ok(api.post("/v1/datasets", files={"file": ("d.npz", buf.getvalue())},
                      data={"meta": json.dumps({"name": "bench"})}))
    refs = {"category_module": "bench-f@1", "teacher_task_module": "bench-gt@1",
            "student_task_module": "bench-gs@1", "dataset": ds["id"], "method": "back_distillation"}
    return refs, x, files


def engine_alone(files: dict[str, Path], x: np.ndarray, epochs: int) -> float:
    """Wall seconds of run_transplant on the same artifacts and inputs as the job."""
    t0 = time.perf_counter()
    f, g_t, g_s = (load_module(files[n], "torch_export") for n in ("bench-f", "bench-gt", "bench-gs"))
    config = fit_adapter_config(FEAT_SHAPE, FEAT_SHAPE)
    train = TrainConfig(epochs=epochs, seed=0, device="auto", **TRAIN)
    run_transplant(f, g_t, g_s, torch.from_numpy(x), method="back_distillation", adapter=config, train=train)
    return time.perf_counter() - t0


def run_job(api: TestClient, refs: dict, poll_s: float = 0.05, **body) -> tuple[float, dict]:
    """Submit a job and poll until it ends: (seconds from just before the POST, the final job)."""
    t0 = time.time()
    job_id = _ok(api.post("/v1/transplants", json={**refs, **body}), 202)["job_id"]
    while True:
        job = _ok(api.get(f"/v1/jobs/{job_id}"), 200)
        if job["status"] in ("succeeded", "failed", "cancelled"):
            if job["status"] != "succeeded":
                raise RuntimeError(f"benchmark job {job_id} {job['status']}: {job['error']}")
            return time.time() - t0, {**job, "submitted_at": t0}
        time.sleep(poll_s)


def latency_ms(job: dict) -> float:
    return (datetime.fromisoformat(job["started_at"]).timestamp() - job["submitted_at"]) * 1000


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def claim_redis_db() -> tuple[str, redis.Redis]:
    for db in range(15, 0, -1):
        client = redis.Redis.from_url(f"{REDIS}/{db}")
        if client.dbsize() == 0 and client.set("graft-bench:owner", "1", nx=True, ex=3600):
            return f"{REDIS}/{db}", client
    raise RuntimeError("no free Redis database (1-15)")


def start_worker(settings: Settings, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "GRAFT_DATABASE_URL": settings.resolved_database_url,
           "GRAFT_ARTIFACTS_URL": settings.resolved_artifacts_url, "GRAFT_BROKER_URL": settings.broker_url,
           "GRAFT_DATA_DIR": str(settings.data_dir), "OMP_NUM_THREADS": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "graft.cli", "worker", "--loglevel", "warning"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc


def measure_queue(settings: Settings, folder: Path, args: argparse.Namespace) -> dict:
    """Celery: warm-up job, latency jobs, then the overhead pairs."""
    out: dict = {}
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as api:
        refs, x, files = upload_world(api, folder)
        worker = start_worker(settings, folder / "worker.log")
        try:
            tiny = {"epochs": 1, "train": {**TRAIN, "max_steps": 1}}
            run_job(api, refs, result_module="bench-warmup", **tiny)  # first job: lazy torch imports
            jobs = [run_job(api, refs, result_module=f"bench-lat-{i}", **tiny)[1]
                    for i in range(args.latency_jobs)]
            out["celery_latency_ms"] = [latency_ms(j) for j in jobs]
            # Calibrate epochs so the engine alone takes about target-s (fixed cost + per-epoch cost).
            t2, t6 = engine_alone(files, x, 2), engine_alone(files, x, 6)
            per_epoch = max((t6 - t2) / 4, 1e-3)
            epochs = max(2, round((args.target_s - (t2 - 2 * per_epoch)) / per_epoch))
            out["epochs"], pairs = epochs, []
            for i in range(args.pairs):
                # Alternate which side runs first, so a drift in the machine's load hits both.
                if i % 2:
                    wall, job = run_job(api, refs, 0.25, result_module=f"bench-over-{i}", epochs=epochs,
                                        train=TRAIN)
                    alone = engine_alone(files, x, epochs)
                else:
                    alone = engine_alone(files, x, epochs)
                    wall, job = run_job(api, refs, 0.25, result_module=f"bench-over-{i}", epochs=epochs,
                                        train=TRAIN)
                in_worker = (datetime.fromisoformat(job["finished_at"]) -
                             datetime.fromisoformat(job["started_at"])).total_seconds()
                pairs.append({"engine_s": alone, "job_wall_s": wall, "job_running_s": in_worker,
                              "engine_in_job_s": job["result"]["metrics"]["wall_s"]})
                print(f"pair {i}: engine {alone:.1f} s, job {wall:.1f} s ({wall / alone:.3f}×)", flush=True)
            out["pairs"] = pairs
        finally:
            worker.terminate()
            worker.wait(60)
    return out


def measure_embedded(folder: Path, n: int) -> list[float]:
    settings = Settings(data_dir=folder / "embedded", bootstrap_token=TOKEN)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as api:
        refs, _, _ = upload_world(api, folder)
        tiny = {"epochs": 1, "train": {**TRAIN, "max_steps": 1}}
        run_job(api, refs, result_module="bench-warmup", **tiny)
        return [latency_ms(run_job(api, refs, result_module=f"bench-lat-{i}", **tiny)[1]) for i in range(n)]


def _row(name: str, ms: list[float]) -> str:
    return f"| {name} | {pct(ms, .5):.1f} | {pct(ms, .9):.1f} | {max(ms):.1f} |"


def write(results: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "jobs.json").write_text(json.dumps(results, indent=2))
    cel, emb, pairs = results["celery_latency_ms"], results["embedded_latency_ms"], results["pairs"]
    ratios = [p["job_wall_s"] / p["engine_s"] for p in pairs]
    lines = [
        "# Job benchmarks", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared), Python {platform.python_version()}, "
        f"torch {torch.__version__}, device {'cuda' if torch.cuda.is_available() else 'cpu'}. "
        "Produced by `python -m bench.jobs`.", "",
        "## Queue latency: submit → running, warm worker idle at each submission", "",
        f"{len(cel)} jobs each. From just before `POST /v1/transplants` (in-process TestClient) to the "
        "`started_at` the worker wrote when it claimed the job.", "",
        "| runner | p50 ms (goal < 100) | p90 ms | max ms |", "|---|---|---|---|",
        _row("Celery worker process (Redis, PostgreSQL)", cel),
        _row("embedded in-process runner (SQLite)", emb),
        "", f"## Worker overhead: a job of ~{results['target_s']:.0f} s or more vs the engine alone", "",
        f"back_distillation, {N} samples of {list(X_SHAPE)}, features {list(FEAT_SHAPE)}, "
        f"{results['epochs']} epochs, batch 64, one torch thread in both. Engine alone: load the same "
        "three artifacts + `run_transplant` in this process. Job: submit → `succeeded` seen by polling "
        "(every 250 ms), including fetching artifacts and data, loading, progress writes, registering "
        "the adapter.",
        "",
        "| pair | engine alone s | job wall s | job running (claim → end) s | engine inside job s | "
        "job outside the engine s | ratio job / engine |",
        "|---|---|---|---|---|---|---|",
    ]
    outside = [p["job_wall_s"] - p["engine_in_job_s"] for p in pairs]
    for i, (p, r) in enumerate(zip(pairs, ratios, strict=True)):
        lines.append(f"| {i} | {p['engine_s']:.2f} | {p['job_wall_s']:.2f} | {p['job_running_s']:.2f} | "
                     f"{p['engine_in_job_s']:.2f} | {outside[i]:.2f} | {r:.3f}× |")
    alone = statistics.median(p["engine_s"] for p in pairs)
    lines += [
        "", f"Median ratio job wall / engine alone: **{statistics.median(ratios):.3f}×** (goal ≤ 1.2×).",
        f"Time the job spends outside the engine (queue, fetch, load, register, polling resolution): median "
        f"{statistics.median(outside):.2f} s, i.e. engine alone + that = "
        f"{(alone + statistics.median(outside)) / alone:.3f}× the median engine-alone time.", "",
    ]
    load = results.get("load_average")
    if load:
        lines += [f"Load average at the end of the run: {load[0]:.1f} (2 cores shared with other work), so "
                  "absolute times are noisy; each pair ran back to back.", ""]
    (RESULTS / "jobs.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-jobs", type=int, default=20)
    parser.add_argument("--target-s", type=float, default=30.0)
    parser.add_argument("--pairs", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    name = f"graft_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    user = dict(p.split("=", 1) for p in PG_ADMIN.split())["user"]
    broker, rclient = claim_redis_db()
    try:
        with tempfile.TemporaryDirectory(prefix="graft-bench-") as tmp:
            folder = Path(tmp)
            settings = Settings(
                data_dir=folder / "api", database_url=f"postgresql+psycopg://{user}@127.0.0.1:5432/{name}",
                artifacts_url=(folder / "artifacts").as_uri(), broker_url=broker, bootstrap_token=TOKEN,
            )
            results = measure_queue(settings, folder, args)
            results["embedded_latency_ms"] = measure_embedded(folder, args.latency_jobs)
    finally:
        rclient.flushdb()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    results["target_s"] = args.target_s
    results["load_average"] = os.getloadavg()
    write(results)
    print((RESULTS / "jobs.md").read_text())


if __name__ == "__main__":
    main()
