"""Serving benchmarks, measured side by side in one run; results go to bench/results/serving.{md,json}.

A small composed network (f: conv (3, 32, 32) → (32, 16, 16), torch_export; h: a safetensors conv
adapter; g: conv + linear → 10 logits, torch_export) served by a real uvicorn process on loopback
(embedded backends: SQLite + a local folder), against the same modules loaded in this process:

1. Serving overhead: p50 latency of `predict` with one input (.npy and JSON), minus the p50 of the raw
   in-process forward of the same composed modules at batch 1 (goal < 3 ms); measured in blocks taken
   in turn (HTTP .npy, HTTP JSON, raw), the median of the per-block differences.
2. Throughput with 32 concurrent clients sending one input each: vs the raw forward at the mean batch
   size the server formed (goal ≥ 0.7×), and vs the same server with batching disabled
   (`GRAFT_PREDICT_MAX_BATCH=1`, goal ≥ 5×).
3. Cold start: time to the first answer of a composition that is not loaded (the first one in a fresh
   process, which also pays torch.export's lazy imports, and a later one).
4. Memory: server RSS after calling each of 100 registered compositions (100 adapters) with a cache
   bound of 10 compositions' bytes, vs an unbounded cache.

Run: `python -m bench.serving` (`--quick` for a short smoke run). Clients and server share the machine.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from torch import nn

from bench.serving_load import concurrent_load
from transplant.adapters import build_adapter, fit_adapter_config, save_adapter
from transplant.artifacts import load_module, save_module
from transplant.compose import compose, parameter_bytes

RESULTS = Path(__file__).parent / "results"
TOKEN = "bench-admin-token-0123456789"
X_SHAPE = [None, 3, 32, 32]
FEAT_SHAPE = [None, 32, 16, 16]
CLIENTS = 32
OVERHEAD_BLOCKS = 8
"""The overhead is the median over this many (HTTP p50, raw p50) pairs of blocks measured in turn."""


def nets() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    f = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                      nn.MaxPool2d(2)).eval()
    g = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                      nn.Linear(32 * 8 * 8, 10)).eval()
    return f, g


def adapter(seed: int) -> tuple[bytes, dict]:
    torch.manual_seed(seed)
    cfg = fit_adapter_config((32, 16, 16), (32, 16, 16), layers=2, hidden=32)
    h = build_adapter(cfg)
    with torch.no_grad():
        for p in h.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return save_adapter(h, cfg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A uvicorn process running Graft on `data_dir` with extra GRAFT_* settings.

    cwd: the source tree to run (another checkout, for side-by-side runs; default this one);
    workers: API processes (more than 1: `graft serve --workers N`, with a Redis broker URL from
    GRAFT_BENCH_REDIS_URL, as that mode requires; no job is submitted); env: more environment variables.
    """

    def __init__(self, data_dir: Path, *, cwd: Path | None = None, workers: int = 1,
                 env: dict[str, str] | None = None, **settings: object) -> None:
        self.port = free_port()
        env = {**os.environ, "GRAFT_DATA_DIR": str(data_dir), "GRAFT_BOOTSTRAP_TOKEN": TOKEN, **(env or {}),
               **{f"GRAFT_{k.upper()}": str(v) for k, v in settings.items()}}
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--host", "127.0.0.1",
               "--port", str(self.port), "--log-level", "warning", "--no-access-log"]
        if workers > 1:
            env.setdefault("GRAFT_BROKER_URL",
                           os.environ.get("GRAFT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
            cmd = [sys.executable, "-m", "graft.cli", "serve", "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", str(workers)]
        self.workers = workers
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the server did not start")
            time.sleep(0.2)
        while len(self.pids()) < workers + (workers > 1):  # the parent and every worker are up
            if time.monotonic() > deadline:
                raise RuntimeError("the worker processes did not start")
            time.sleep(0.2)

    def pids(self) -> list[int]:
        """The server's processes: the one started, and its children (uvicorn's workers)."""
        return process_tree(self.proc.pid)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=300)

    def rss_mb(self) -> float:
        """Resident memory of the process started (one serving process; not its probe children)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def process_tree(root: int) -> list[int]:
    """`root` and its live descendants."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += children.get(pid, [])
    return pids


def upload(c: httpx.Client, name: str, data: bytes, fmt: str, shape: list, **meta: object) -> None:
    body = {"format": fmt, "input_shape": shape, **meta}
    files = {"file": ("a.bin", data)}
    r = c.post(f"/v1/modules/{name}/versions", files=files, data={"meta": json.dumps(body)})
    r.raise_for_status()


def register(c: httpx.Client, f_bytes: bytes, g_bytes: bytes, adapters: list[tuple[bytes, dict]]) -> list:
    """Upload f, g and the adapters; one explicit composition per adapter; their ids."""
    c.post("/v1/modules", json={"name": "bench-f", "kind": "category", "category": "bench"}
           ).raise_for_status()
    upload(c, "bench-f", f_bytes, "torch_export", X_SHAPE)
    c.post("/v1/modules", json={"name": "bench-g", "kind": "task", "task": "classify"}).raise_for_status()
    upload(c, "bench-g", g_bytes, "torch_export", FEAT_SHAPE)
    c.post("/v1/modules", json={"name": "bench-h", "kind": "adapter", "category": "bench",
                                "task": "classify"}).raise_for_status()
    ids = []
    for i, (data, spec) in enumerate(adapters, start=1):
        upload(c, "bench-h", data, "safetensors", FEAT_SHAPE, arch=spec)
        r = c.post("/v1/compositions", json={"category_module": "bench-f@1", "adapter": f"bench-h@{i}",
                                             "task_module": "bench-g@1"})
        r.raise_for_status()
        ids.append(r.json()["id"])
    return ids


def npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


def predict(c: httpx.Client, cid: str, body: bytes, json_body: bool = False) -> None:
    media = "application/json" if json_body else "application/x-npy"
    r = c.post(f"/v1/compositions/{cid}/predict", content=body, headers={"Content-Type": media})
    r.raise_for_status()


def p50_ms(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def raw_rows_per_s(module: nn.Module, batch: int, n: int) -> float:
    x = torch.randn(batch, 3, 32, 32)
    with torch.inference_mode():
        for _ in range(5):
            module(x)
        t = p50_ms(lambda: module(x), n) / 1000
    return batch / t


def _raw_loop(files: dict, spec: dict, batch: int, threads: int, seconds: float, go, out) -> None:  # noqa: ANN001
    """One process of `raw_machine_rows_per_s`: load the chain, wait for the others, run for `seconds`."""
    torch.set_num_threads(threads)
    module = compose(load_module(files["f"], "torch_export"), load_module(files["h"], "safetensors", spec),
                     load_module(files["g"], "torch_export"))
    x = torch.randn(batch, 3, 32, 32)
    with torch.inference_mode():
        for _ in range(10):
            module(x)
        go.wait()
        rows, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            module(x)
            rows += batch
    out.put(rows / (time.perf_counter() - t0))


def raw_machine_rows_per_s(files: dict, spec: dict, batch: int, procs: int, seconds: float = 4.0) -> float:
    """Inputs/s of the bare forward at `batch` in `procs` processes at once, the cores split between them."""
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Barrier(procs), ctx.Queue()
    threads = max(1, (os.cpu_count() or 1) // procs) if procs > 1 else torch.get_num_threads()
    workers = [ctx.Process(target=_raw_loop, args=(files, spec, batch, threads, seconds, go, out))
               for _ in range(procs)]
    for w in workers:
        w.start()
    total = sum(out.get(timeout=300) for _ in workers)
    for w in workers:
        w.join()
    return total


def prime(server: Server, cid: str, body: bytes) -> None:
    """A predict in every API process (each loads the composition once) before a timed load."""
    seen: set[int] = set()
    for _ in range(400):
        with server.client() as c:  # a new connection: the kernel hands it to one of the processes
            predict(c, cid, body)
            seen.add(c.get("/v1/serving").json()["pid"])
        if len(seen) >= server.workers:
            return
    raise RuntimeError(f"only {len(seen)} of {server.workers} API processes served a predict")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="short run (smoke test of the benchmark)")
    parser.add_argument("--workers", type=int, default=2,
                        help="API processes of the `graft serve --workers N` section (1: skip it)")
    args = parser.parse_args()
    n_lat, seconds, n_comp = (60, 2.0, 20) if args.quick else (400, 8.0, 100)
    cache_of = 10

    f, g = nets()
    f_bytes = save_module(f, torch.zeros(2, 3, 32, 32), "torch_export")
    g_bytes = save_module(g, torch.zeros(2, 32, 16, 16), "torch_export")
    adapters = [adapter(i) for i in range(n_comp)]
    results: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                     "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                     "quick": args.quick, "load_avg_before": os.getloadavg()[0]}

    with tempfile.TemporaryDirectory(prefix="graft-bench-") as tmp:
        tmp_path = Path(tmp)
        # The raw reference: the same artifacts loaded the way the server loads them.
        (tmp_path / "f.pt2").write_bytes(f_bytes)
        (tmp_path / "g.pt2").write_bytes(g_bytes)
        (tmp_path / "h.st").write_bytes(adapters[0][0])
        raw = compose(load_module(tmp_path / "f.pt2", "torch_export"),
                      load_module(tmp_path / "h.st", "safetensors", adapters[0][1]),
                      load_module(tmp_path / "g.pt2", "torch_export"))
        per_comp = parameter_bytes(raw)
        results["composition_param_bytes"] = per_comp

        data_dir = tmp_path / "graft"
        server = Server(data_dir, model_cache_bytes=cache_of * per_comp + 1024)
        try:
            with server.client() as c:
                ids = register(c, f_bytes, g_bytes, adapters)
                x1 = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
                # 3. cold start: the first composition in this process, then another not loaded yet
                t = time.perf_counter()
                predict(c, ids[0], npy(x1))
                results["cold_first_ms"] = (time.perf_counter() - t) * 1000
                t = time.perf_counter()
                predict(c, ids[1], npy(x1))
                results["cold_next_ms"] = (time.perf_counter() - t) * 1000
                results["warm_ms"] = p50_ms(lambda: predict(c, ids[1], npy(x1)), 20)

                # 1. overhead at batch 1: HTTP and raw blocks interleaved (this machine's speed
                # drifts within a run; each block's HTTP p50 is paired with the raw p50 beside it)
                body_npy, body_json = npy(x1), json.dumps({"inputs": x1.tolist()}).encode()
                for _ in range(20):
                    predict(c, ids[0], body_npy)
                xt = torch.from_numpy(x1)
                blocks: dict[str, list[float]] = {"npy": [], "json": [], "raw": []}
                per_block = n_lat // OVERHEAD_BLOCKS
                for _ in range(OVERHEAD_BLOCKS):
                    blocks["npy"].append(p50_ms(lambda: predict(c, ids[0], body_npy), per_block))
                    blocks["json"].append(p50_ms(lambda: predict(c, ids[0], body_json, True), per_block))
                    with torch.inference_mode():
                        blocks["raw"].append(p50_ms(lambda: raw(xt), per_block))
            results["overhead_blocks"] = blocks
            for key in ("npy", "json"):
                results[f"http_p50_{key}_ms"] = statistics.median(blocks[key])
                results[f"overhead_{key}_ms"] = statistics.median(
                    h - r for h, r in zip(blocks[key], blocks["raw"], strict=True))
            results["raw_p50_ms"] = statistics.median(blocks["raw"])

            # 2. throughput with 32 clients, batching on
            batched = concurrent_load(server, ids[0], npy(x1), CLIENTS, seconds, TOKEN)
            results["batched"] = batched

            # 4. memory: every composition called once, cache bounded to `cache_of` of them
            with server.client() as c:
                for cid in ids:
                    predict(c, cid, npy(x1))
                stats = c.get("/v1/serving").json()
            results["bounded"] = {"rss_mb": server.rss_mb(), "cache": stats["cache"]}
        finally:
            server.stop()

        mean_b = max(1, round(batched["mean_batch"]))
        results["raw_rows_per_s_at_mean_batch"] = raw_rows_per_s(raw, mean_b, 200)
        results["raw_rows_per_s_b1"] = raw_rows_per_s(raw, 1, 400)

        # 2b. batching disabled; 4b. unbounded cache (same data folder: the same registry)
        server = Server(data_dir, predict_max_batch=1, model_cache_bytes=1 << 40)
        try:
            with server.client() as c:
                predict(c, ids[0], npy(x1))
            results["unbatched"] = concurrent_load(server, ids[0], npy(x1), CLIENTS, seconds, TOKEN)
            with server.client() as c:
                for cid in ids:
                    predict(c, cid, npy(x1))
                stats = c.get("/v1/serving").json()
            results["unbounded"] = {"rss_mb": server.rss_mb(), "cache": stats["cache"]}
        finally:
            server.stop()

        if args.workers > 1:
            files = {k: str(tmp_path / name) for k, name in (("f", "f.pt2"), ("g", "g.pt2"), ("h", "h.st"))}
            results["workers"] = several_processes(data_dir, args.workers, ids[0], npy(x1), seconds, files,
                                                   adapters[0][1])

    results["throughput_vs_raw"] = batched["rps"] / results["raw_rows_per_s_at_mean_batch"]
    results["throughput_vs_unbatched"] = batched["rps"] / results["unbatched"]["rps"]
    report(results, n_comp, cache_of)


def several_processes(data_dir: Path, workers: int, cid: str, body: bytes, seconds: float, files: dict,
                      spec: dict) -> dict:
    """5. `graft serve --workers N` under the same load, batching on and off, and the machine's raw
    forward at the batch formed: one process with torch's threads, and N processes at once with the
    cores split between them; the larger is the reference (what the bare forward can do here)."""
    out: dict = {"n": workers}
    for label, extra in (("batched", {}), ("unbatched", {"predict_max_batch": 1})):
        server = Server(data_dir, workers=workers, **extra)
        try:
            prime(server, cid, body)
            out[label] = concurrent_load(server, cid, body, CLIENTS, seconds, TOKEN)
        finally:
            server.stop()
    batch = max(1, round(out["batched"]["mean_batch"]))
    for procs in (1, workers):
        out[f"raw_{procs}p_at_mean_batch"] = raw_machine_rows_per_s(files, spec, batch, procs)
        out[f"raw_{procs}p_b1"] = raw_machine_rows_per_s(files, spec, 1, procs)
    out["raw_reference"] = max(out["raw_1p_at_mean_batch"], out[f"raw_{workers}p_at_mean_batch"])
    out["raw_reference_b1"] = max(out["raw_1p_b1"], out[f"raw_{workers}p_b1"])
    out["throughput_vs_raw"] = out["batched"]["rps"] / out["raw_reference"]
    out["throughput_vs_unbatched"] = out["batched"]["rps"] / out["unbatched"]["rps"]
    return out


def _workers_lines(w: dict) -> list[str]:
    ok = lambda good: "met" if good else "NOT met"  # noqa: E731
    n = w["n"]
    return [
        "",
        f"## {n} API processes (`graft serve --workers {n}`, torch threads split: {n} × "
        f"{max(1, (os.cpu_count() or 1) // n)}), same load",
        "",
        "| measure | value | goal |",
        "|---|---|---|",
        f"| {CLIENTS} clients, batching on: requests/s (mean batch formed) | {w['batched']['rps']:.0f} "
        f"({w['batched']['mean_batch']:.1f}) | |",
        _load_row(w["batched"], "batching on"),
        f"| raw forward at that batch: inputs/s, 1 process / {n} processes at once | "
        f"{w['raw_1p_at_mean_batch']:.0f} / {w[f'raw_{n}p_at_mean_batch']:.0f} | "
        "the larger is the reference |",
        f"| **throughput vs raw forward** | **{w['throughput_vs_raw']:.2f}×** | ≥ 0.7×: "
        f"{ok(w['throughput_vs_raw'] >= 0.7)} |",
        f"| {CLIENTS} clients, batching off (max batch 1): requests/s | {w['unbatched']['rps']:.0f} | |",
        _load_row(w["unbatched"], "batching off"),
        f"| raw forward at batch 1: inputs/s, 1 process / {n} processes at once | {w['raw_1p_b1']:.0f} / "
        f"{w[f'raw_{n}p_b1']:.0f} | |",
        f"| **throughput vs batching off** | **{w['throughput_vs_unbatched']:.2f}×** | ≥ 5×: "
        f"{ok(w['throughput_vs_unbatched'] >= 5)} |",
        f"| the raw forward's own gain from batching (references at the mean batch vs at batch 1) | "
        f"{w['raw_reference'] / w['raw_reference_b1']:.2f}× | |",
    ]


def _memory_row(m: dict, what: str) -> str:
    cache = m["cache"]
    return f"| server RSS, {what} | {m['rss_mb']:.0f} MB (cache {cache['entries']} entries, " \
        f"{cache['bytes'] / 1e6:.1f} MB) | |"


def _generator_text(name: str) -> str:
    if name == "wrk":
        return (f"`wrk -t1 -c{CLIENTS}` (Debian's wrk, one C thread; each connection is a client with one "
                "request in flight, posting one (1, 3, 32, 32) float32 .npy input, `bench/serving_load.py`).")
    return f"{CLIENTS} Python threads with httpx (wrk is not installed), `bench/serving_load.py`."


def _load_row(m: dict, what: str) -> str:
    lat = f"p50 {m['p50_ms']:.1f} / p99 {m['p99_ms']:.1f} ms, " if m["p50_ms"] is not None else ""
    used = m["client_cores_used"]
    client = f", load generator {used:.2f} cores" if used is not None else ""
    return (f"| {what}: {lat}server CPU per request | {m['server_cpu_ms_per_request']:.2f} ms "
            f"(server {m['server_cores_used']:.2f} cores{client}) | |")


def report(r: dict, n_comp: int, cache_of: int) -> None:
    ok = lambda good: "met" if good else "NOT met"  # noqa: E731
    lines = [
        "# Serving benchmark (`python -m bench.serving`)",
        "",
        f"Machine: {r['machine']} (load average {r['load_avg_before']:.1f} when it started); torch "
        f"{r['torch']} ({r['torch_threads']} threads); the load generator and the uvicorn server share "
        "these cores. Load: " + _generator_text(r["batched"]["generator"]) + " Composed network: f (2 "
        "convs, torch_export) → h (safetensors conv adapter) → g (conv + linear, torch_export), "
        f"{r['composition_param_bytes'] / 1e6:.2f} MB of parameters; input (3, 32, 32), output 10 "
        "logits." + (" **Quick run.**" if r["quick"] else ""),
        "",
        "| measure | value | goal |",
        "|---|---|---|",
        f"| raw in-process forward, batch 1, p50 (median of {OVERHEAD_BLOCKS} blocks) | "
        f"{r['raw_p50_ms']:.2f} ms | |",
        f"| predict over HTTP, one input (.npy), p50 | {r['http_p50_npy_ms']:.2f} ms | |",
        f"| predict over HTTP, one input (JSON), p50 | {r['http_p50_json_ms']:.2f} ms | |",
        f"| **serving overhead (.npy)** | **{r['overhead_npy_ms']:.2f} ms** | < 3 ms: "
        f"{ok(r['overhead_npy_ms'] < 3)} |",
        f"| serving overhead (JSON) | {r['overhead_json_ms']:.2f} ms | |",
        f"| {CLIENTS} clients, batching on: requests/s (mean batch formed) | {r['batched']['rps']:.0f} "
        f"({r['batched']['mean_batch']:.1f}) | |",
        _load_row(r["batched"], "batching on"),
        f"| raw forward at that batch size: inputs/s | {r['raw_rows_per_s_at_mean_batch']:.0f} | |",
        f"| **throughput vs raw forward** | **{r['throughput_vs_raw']:.2f}×** | ≥ 0.7×: "
        f"{ok(r['throughput_vs_raw'] >= 0.7)} |",
        f"| {CLIENTS} clients, batching off (max batch 1): requests/s | {r['unbatched']['rps']:.0f} | |",
        _load_row(r["unbatched"], "batching off"),
        f"| raw forward at batch 1: inputs/s | {r['raw_rows_per_s_b1']:.0f} | |",
        f"| **throughput vs batching off** | **{r['throughput_vs_unbatched']:.2f}×** | ≥ 5×: "
        f"{ok(r['throughput_vs_unbatched'] >= 5)} |",
        f"| the raw forward's own gain from batching (inputs/s at the mean batch vs at batch 1) | "
        f"{r['raw_rows_per_s_at_mean_batch'] / r['raw_rows_per_s_b1']:.2f}× | what batching can give "
        "at most when the forward is all the work |",
        f"| cold start, first composition in a fresh server | {r['cold_first_ms']:.0f} ms | |",
        f"| cold start, another composition not loaded | {r['cold_next_ms']:.0f} ms | |",
        f"| same composition once warm, p50 | {r['warm_ms']:.2f} ms | |",
        _memory_row(r["bounded"], f"{n_comp} compositions called, cache of {cache_of}"),
        _memory_row(r["unbounded"], f"{n_comp} compositions called, unbounded cache"),
    ]
    if "workers" in r:
        lines += _workers_lines(r["workers"])
    lines.append("")
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    suffix = "-quick" if r["quick"] else ""
    (RESULTS / f"serving{suffix}.md").write_text(text)
    (RESULTS / f"serving{suffix}.json").write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
