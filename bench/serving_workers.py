"""Exploratory: predict throughput of one API process vs two uvicorn worker processes, side by side.

    python -m bench.serving_workers          # writes bench/results/serving-workers.md

One Graft process serves predicts on about one core: HTTP on the event loop and the forward in the
batcher thread take turns at the GIL (bench/results/serving.md). This runs the same load (wrk, 32
connections, one-input .npy predicts) against `uvicorn --workers 1` with torch's default threads and
`uvicorn --workers 2` with one torch thread each, in turn, on the same embedded registry.
Not a supported deployment yet: `graft serve` has no --workers (two embedded processes would each
take back the other's jobs at start, and both would migrate the database at once); here no job is
ever submitted and the registry is migrated before the servers start.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from app.config import Settings
from app.main import create_app
from bench.serving import RESULTS, TOKEN, Server, adapter, nets, npy, predict, register
from bench.serving_load import generator, run_wrk
from transplant.artifacts import save_module

CONFIGS = (("1 process, torch default threads", 1, None), ("2 worker processes, 1 torch thread each", 2, "1"))
ROUNDS = 3
SECONDS = 10.0


def main() -> None:
    if generator() != "wrk":
        raise SystemExit("needs wrk (apt-get install wrk)")
    f, g = nets()
    f_bytes = save_module(f, torch.zeros(2, 3, 32, 32), "torch_export")
    g_bytes = save_module(g, torch.zeros(2, 32, 16, 16), "torch_export")
    x = npy(np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32))
    rps: dict[str, list[float]] = {name: [] for name, _, _ in CONFIGS}
    p99: dict[str, list[float]] = {name: [] for name, _, _ in CONFIGS}
    with tempfile.TemporaryDirectory(prefix="graft-workers-") as tmp:
        data_dir = Path(tmp) / "graft"
        create_app(Settings(data_dir=data_dir, bootstrap_token=TOKEN))  # migrate once, before any server
        cid = None
        for _ in range(ROUNDS):
            for name, workers, threads in CONFIGS:
                env = {"OMP_NUM_THREADS": threads} if threads else None
                server = Server(data_dir, workers=workers, env=env)
                time.sleep(2.0 * workers)  # /healthz answered: the first worker is up, maybe not all
                try:
                    if cid is None:
                        with server.client() as c:
                            cid = register(c, f_bytes, g_bytes, [adapter(0)])[0]
                    for _ in range(20):  # new connections: each worker loads the composition
                        with server.client() as c:
                            predict(c, cid, x)
                    target = f"{server.url}/v1/compositions/{cid}/predict"
                    run_wrk(target, TOKEN, x, 32, 1.0)
                    stats = run_wrk(target, TOKEN, x, 32, SECONDS)
                    if stats["bad_status"] or stats["socket_errors"]:
                        raise RuntimeError(f"failed requests: {stats}")
                    rps[name].append(stats["requests"] / (stats["duration_us"] / 1e6))
                    p99[name].append(stats["p99_us"] / 1000)
                finally:
                    server.stop()
    lines = ["# Predict throughput: one process vs two worker processes (`python -m bench.serving_workers`)",
             "",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, load average "
             f"{os.getloadavg()[0]:.2f} at the end; wrk -t1 -c32, {SECONDS:g} s per run, {ROUNDS} rounds "
             "taking the two in turn. "
             "Exploratory (see the module docstring): not a supported deployment of `graft serve` yet.", "",
             "| server | requests/s per round | median | p99 ms per round |", "|---|---|---|---|"]
    for name, _, _ in CONFIGS:
        per_round = ", ".join(f"{v:.0f}" for v in rps[name])
        lines.append(f"| {name} | {per_round} | {statistics.median(rps[name]):.0f} | "
                     f"{', '.join(f'{v:.0f}' for v in p99[name])} |")
    one, two = (statistics.median(rps[name]) for name, _, _ in CONFIGS)
    lines += ["", f"Two workers ÷ one process: **{two / one:.2f}×** (medians)."]
    (RESULTS / "serving-workers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
