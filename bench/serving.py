"""Serving benchmarks, measured side by side in one run; results go to bench/results/serving.{md,json}.

A small composed network (f: conv (3, 32, 32) → (32, 16, 16), torch_export; h: a safetensors conv
adapter; g: conv + linear → 10 logits, torch_export) served by a real uvicorn process on loopback
(embedded backends: SQLite + a local folder), against the same modules loaded in this process:

1. Serving overhead: p50 latency of `predict` with one input (.npy and JSON), minus the p50 of the raw
   in-process forward of the same composed modules at batch 1 (goal < 3 ms); measured in blocks taken
   in turn (HTTP .npy, HTTP JSON, raw), the median of the per-block differences; with wrk installed
   also from a C client on one connection (wrk -c1), which leaves the Python client's own cost out.
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

from bench.serving_load import concurrent_load, generator, run_wrk
from transplant.adapters import build_adapter, fit_adapter_config, save_adapter
from transplant.artifacts import load_module, save_module
from transplant.compose import compose, parameter_bytes

RESULTS = Path(__file__).parent / "results"
TOKEN = "bench-admin-token-0123456789"
X_SHAPE = [None, 3, 32, 32]
FEAT_SHAPE = [None, 32, 16, 16]
CLIENTS = 32
ROUNDS = 3
BENCH_BROKER = os.environ.get("GRAFT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
"""The broker `graft serve --workers N` requires (no job is ever submitted by these benchmarks)."""
OVERHEAD_BLOCKS = 8
"""The overhead is the median over this many (HTTP p50, raw p50) pairs of blocks measured in turn."""
WRK_BLOCK_S = 1
"""Length of a block of one-connection wrk predicts (the overhead as a client in C sees it)."""


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
    """`graft serve` on `data_dir` with extra GRAFT_* settings, as deployed (its defaults included).

    cwd: the source tree to run (another checkout, for side-by-side runs; default this one);
    workers: API processes (more than 1: `graft serve --workers N`, with a Redis broker URL from
    GRAFT_BENCH_REDIS_URL, as that mode requires; no job is submitted); env: more environment variables;
    bare: plain `uvicorn app.main:create_app` instead, without `graft serve`'s defaults (one process).
    """

    def __init__(self, data_dir: Path, *, cwd: Path | None = None, workers: int = 1,
                 env: dict[str, str] | None = None, bare: bool = False, **settings: object) -> None:
        self.port = free_port()
        env = {**os.environ, "GRAFT_DATA_DIR": str(data_dir), "GRAFT_BOOTSTRAP_TOKEN": TOKEN, **(env or {}),
               **{f"GRAFT_{k.upper()}": str(v) for k, v in settings.items()}}
        if bare:
            cmd = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--host", "127.0.0.1",
                   "--port", str(self.port), "--log-level", "warning", "--no-access-log"]
        else:
            cmd = [sys.executable, "-m", "graft.cli", "serve", "--host", "127.0.0.1",
                   "--port", str(self.port)]
        if workers > 1:
            env.setdefault("GRAFT_BROKER_URL", BENCH_BROKER)
            cmd += ["--workers", str(workers)]
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
    n_lat, seconds, n_comp, rounds = (60, 2.0, 20, 2) if args.quick else (400, 6.0, 100, ROUNDS)
    cache_of = 10

    f, g = nets()
    f_bytes = save_module(f, torch.zeros(2, 3, 32, 32), "torch_export")
    g_bytes = save_module(g, torch.zeros(2, 32, 16, 16), "torch_export")
    adapters = [adapter(i) for i in range(n_comp)]
    results: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                     "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                     "quick": args.quick, "load_avg_before": os.getloadavg()[0], "generator": generator()}

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
                if generator() == "wrk":  # the same request from a C client on one connection
                    blocks["npy_wrk"] = []
                per_block = n_lat // OVERHEAD_BLOCKS
                url = f"{server.url}/v1/compositions/{ids[0]}/predict"
                for _ in range(OVERHEAD_BLOCKS):
                    blocks["npy"].append(p50_ms(lambda: predict(c, ids[0], body_npy), per_block))
                    if "npy_wrk" in blocks:
                        one = run_wrk(url, TOKEN, body_npy, 1, WRK_BLOCK_S)
                        blocks["npy_wrk"].append(one["p50_us"] / 1000)
                    blocks["json"].append(p50_ms(lambda: predict(c, ids[0], body_json, True), per_block))
                    with torch.inference_mode():
                        blocks["raw"].append(p50_ms(lambda: raw(xt), per_block))
            results["overhead_blocks"] = blocks
            for key in [k for k in blocks if k != "raw"]:
                results[f"http_p50_{key}_ms"] = statistics.median(blocks[key])
                results[f"overhead_{key}_ms"] = statistics.median(
                    h - r for h, r in zip(blocks[key], blocks["raw"], strict=True))
            results["raw_p50_ms"] = statistics.median(blocks["raw"])

            # 4. memory: every composition called once, cache bounded to `cache_of` of them
            with server.client() as c:
                for cid in ids:
                    predict(c, cid, npy(x1))
                stats = c.get("/v1/serving").json()
            results["bounded"] = {"rss_mb": server.rss_mb(), "cache": stats["cache"]}
        finally:
            server.stop()

        # 4b. unbounded cache (same data folder: the same registry)
        server = Server(data_dir, model_cache_bytes=1 << 40)
        try:
            with server.client() as c:
                for cid in ids:
                    predict(c, cid, npy(x1))
                stats = c.get("/v1/serving").json()
            results["unbounded"] = {"rss_mb": server.rss_mb(), "cache": stats["cache"]}
        finally:
            server.stop()

        # 2. throughput: one process, then `graft serve --workers N`
        files = {k: str(tmp_path / name) for k, name in (("f", "f.pt2"), ("g", "g.pt2"), ("h", "h.st"))}
        for n in sorted({1, args.workers}):
            results[f"throughput_{n}"] = throughput(data_dir, n, ids[0], npy(x1), seconds, rounds, files,
                                                    adapters[0][1])

    report(results, n_comp, cache_of)


def throughput(data_dir: Path, workers: int, cid: str, body: bytes, seconds: float, rounds: int,
               files: dict, spec: dict) -> dict:
    """2. `CLIENTS` clients against `workers` API processes, batching on and off, and the bare forward.

    Both servers are up at once (the idle one takes no CPU) and the three measures are taken in
    turn, `rounds` times: this machine's speed drifts within a run, so each ratio pairs measures taken
    side by side and the median over rounds is reported. The reference is the bare forward at the
    batch the server formed: in one process with torch's threads and, for several API processes, also
    in that many processes at once with the cores split between them; the larger counts.
    """
    servers = {"batched": Server(data_dir, workers=workers)}
    try:
        servers["unbatched"] = Server(data_dir, workers=workers, predict_max_batch=1)
        for server in servers.values():
            prime(server, cid, body)
        out: dict = {"n": workers, "rounds": []}
        for _ in range(rounds):
            one = {key: concurrent_load(server, cid, body, CLIENTS, seconds, TOKEN)
                   for key, server in servers.items()}
            one.update(_bare_forward(files, spec, max(1, round(one["batched"]["mean_batch"])), workers))
            one["vs_raw"] = one["batched"]["rps"] / max(one["raw_1p"], one["raw_np"])
            one["vs_unbatched"] = one["batched"]["rps"] / one["unbatched"]["rps"]
            out["rounds"].append(one)
    finally:
        for server in servers.values():
            server.stop()
    # the forward's own gain from batching, once: inputs/s at the last round's batch vs at batch 1
    out["b1"] = _bare_forward(files, spec, 1, workers)
    for key in ("vs_raw", "vs_unbatched"):
        out[key] = statistics.median(r[key] for r in out["rounds"])
    return out


def _bare_forward(files: dict, spec: dict, batch: int, workers: int) -> dict:
    """The bare forward's inputs/s at `batch`: in one process (raw_1p) and in `workers` at once (raw_np)."""
    return {"raw_1p": raw_machine_rows_per_s(files, spec, batch, 1),
            "raw_np": raw_machine_rows_per_s(files, spec, batch, workers) if workers > 1 else 0.0}


def _ok(good: bool) -> str:
    return "met" if good else "NOT met"


def _per_round(rounds: list[dict], fmt: str, *paths: str) -> str:
    """`fmt` filled, round by round, with the values at `paths` ("batched.rps", "vs_raw", ...)."""
    def value(r: dict, path: str) -> float:
        for part in path.split("."):
            r = r[part]
        return r or 0.0
    return ", ".join(fmt.format(*(value(r, p) for p in paths)) for r in rounds)


def _throughput_lines(t: dict) -> list[str]:
    n, rounds, b1 = t["n"], t["rounds"], t["b1"]
    title = ("one process (`graft serve`), torch's threads" if n == 1 else
             f"{n} API processes (`graft serve --workers {n}`, torch threads split: {n} × "
             f"{max(1, (os.cpu_count() or 1) // n)})")
    if n == 1:
        raw, raw_what, b1_text = _per_round(rounds, "{:.0f}", "raw_1p"), "inputs/s", f"{b1['raw_1p']:.0f}"
    else:
        raw = _per_round(rounds, "{:.0f} / {:.0f}", "raw_1p", "raw_np")
        raw_what = f"inputs/s, 1 process / {n} processes at once (the larger counts)"
        b1_text = f"{b1['raw_1p']:.0f} / {b1['raw_np']:.0f}"
    last = rounds[-1]
    gain = max(last["raw_1p"], last["raw_np"]) / max(b1["raw_1p"], b1["raw_np"])
    return [
        "",
        f"## Throughput, {CLIENTS} clients: {title}",
        "",
        f"{len(rounds)} rounds, each a batched load, an unbatched load (max batch 1) and the bare forward "
        "at the batch formed, taken in turn; the values per round, in order:",
        "",
        "| measure | per round | goal |",
        "|---|---|---|",
        "| batching on: requests/s (mean batch formed) | "
        + _per_round(rounds, "{:.0f} ({:.1f})", "batched.rps", "batched.mean_batch") + " | |",
        "| batching on: p50 / p99 ms | "
        + _per_round(rounds, "{:.0f} / {:.0f}", "batched.p50_ms", "batched.p99_ms") + " | |",
        "| batching on: server CPU ms per request (cores used) | "
        + _per_round(rounds, "{:.2f} ({:.2f})", "batched.server_cpu_ms_per_request",
                     "batched.server_cores_used") + " | |",
        f"| bare forward at that batch: {raw_what} | {raw} | |",
        "| batching off: requests/s (server CPU ms per request) | "
        + _per_round(rounds, "{:.0f} ({:.2f})", "unbatched.rps", "unbatched.server_cpu_ms_per_request")
        + " | |",
        "| throughput vs bare forward | " + _per_round(rounds, "{:.2f}×", "vs_raw") + " | |",
        "| throughput vs batching off | " + _per_round(rounds, "{:.2f}×", "vs_unbatched") + " | |",
        f"| **throughput vs bare forward, median** | **{t['vs_raw']:.2f}×** | ≥ 0.7×: "
        f"{_ok(t['vs_raw'] >= 0.7)} |",
        f"| **throughput vs batching off, median** | **{t['vs_unbatched']:.2f}×** | ≥ 5×: "
        f"{_ok(t['vs_unbatched'] >= 5)} |",
        f"| bare forward at batch 1, {raw_what.split(' (')[0]} | {b1_text} | |",
        f"| the bare forward's own gain from batching (last round's batch vs batch 1) | {gain:.2f}× | "
        "caps what batching can give when the forward is all the work |",
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


def report(r: dict, n_comp: int, cache_of: int) -> None:
    lines = [
        "# Serving benchmark (`python -m bench.serving`)",
        "",
        f"Machine: {r['machine']} (load average {r['load_avg_before']:.1f} when it started); torch "
        f"{r['torch']} ({r['torch_threads']} threads); the load generator and the uvicorn server share "
        "these cores. Load: " + _generator_text(r["generator"]) + " Composed network: f (2 "
        "convs, torch_export) → h (safetensors conv adapter) → g (conv + linear, torch_export), "
        f"{r['composition_param_bytes'] / 1e6:.2f} MB of parameters; input (3, 32, 32), output 10 "
        "logits." + (" **Quick run.**" if r["quick"] else ""),
        "",
        "| measure | value | goal |",
        "|---|---|---|",
        f"| raw in-process forward, batch 1, p50 (median of {OVERHEAD_BLOCKS} blocks) | "
        f"{r['raw_p50_ms']:.2f} ms | |",
        f"| predict over HTTP, one input (.npy), p50, Python client (httpx) | "
        f"{r['http_p50_npy_ms']:.2f} ms | |",
        *([f"| predict over HTTP, one input (.npy), p50, C client (wrk, one connection) | "
           f"{r['http_p50_npy_wrk_ms']:.2f} ms | |"] if "http_p50_npy_wrk_ms" in r else []),
        f"| predict over HTTP, one input (JSON), p50 | {r['http_p50_json_ms']:.2f} ms | |",
        f"| **serving overhead (.npy), Python client** | **{r['overhead_npy_ms']:.2f} ms** | < 3 ms: "
        f"{_ok(r['overhead_npy_ms'] < 3)} |",
        *([f"| **serving overhead (.npy), C client** (the client's own cost left out) | "
           f"**{r['overhead_npy_wrk_ms']:.2f} ms** | < 3 ms: {_ok(r['overhead_npy_wrk_ms'] < 3)} |"]
          if "overhead_npy_wrk_ms" in r else []),
        f"| serving overhead (JSON) | {r['overhead_json_ms']:.2f} ms | |",
        f"| cold start, first composition in a fresh server | {r['cold_first_ms']:.0f} ms | |",
        f"| cold start, another composition not loaded | {r['cold_next_ms']:.0f} ms | |",
        f"| same composition once warm, p50 | {r['warm_ms']:.2f} ms | |",
        _memory_row(r["bounded"], f"{n_comp} compositions called, cache of {cache_of}"),
        _memory_row(r["unbounded"], f"{n_comp} compositions called, unbounded cache"),
    ]
    for key in sorted(k for k in r if k.startswith("throughput_")):
        lines += _throughput_lines(r[key])
    lines.append("")
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    suffix = "-quick" if r["quick"] else ""
    (RESULTS / f"serving{suffix}.md").write_text(text)
    (RESULTS / f"serving{suffix}.json").write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
