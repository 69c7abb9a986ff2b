"""One API process under load: OpenMP as it comes, told not to spin, spinning briefly, or one thread.

    python -m bench.serving_threads       # writes bench/results/serving-threads.md

A lead from bench/results/serving.md: the one-process server's CPU per request moved between runs of
the same code. Idle OpenMP threads spin (busy-wait) between forwards unless OMP_WAIT_POLICY=PASSIVE
(or a small GOMP_SPINCOUNT). This serves the same composition under the same load (wrk, 32
connections, one-input .npy predicts) with four settings of the server's environment (plain uvicorn,
nothing else added), taken in turn for `ROUNDS` rounds, and reports requests/s, the batch formed and
the server's CPU, then the latency of one client alone (wrk on one connection, a forward at batch 1
per request). Each round also loads a server beside a second, idle one, as bench.serving does, to
show whether an idle server costs anything.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.serving import RESULTS, TOKEN, Server, adapter, nets, npy, prime, register
from bench.serving_load import concurrent_load, generator, run_wrk, tree_cpu_s
from transplant.artifacts import save_module

SETTINGS = (("torch's threads (2), OpenMP default", None),
            ("torch's threads (2), OMP_WAIT_POLICY=PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"}),
            ("torch's threads (2), GOMP_SPINCOUNT=10000", {"GOMP_SPINCOUNT": "10000"}),
            ("one torch thread (OMP_NUM_THREADS=1)", {"OMP_NUM_THREADS": "1"}))
ROUNDS = 3
SECONDS = 5.0


def main() -> None:
    if generator() != "wrk":
        raise SystemExit("needs wrk (apt-get install wrk)")
    f, g = nets()
    f_bytes = save_module(f, torch.zeros(2, 3, 32, 32), "torch_export")
    g_bytes = save_module(g, torch.zeros(2, 32, 16, 16), "torch_export")
    body = npy(np.zeros((1, 3, 32, 32), np.float32))
    runs: dict[str, list[dict]] = {name: [] for name, _ in SETTINGS}
    lone: dict[str, list[float]] = {name: [] for name, _ in SETTINGS}
    idle_cpu: list[float] = []
    with tempfile.TemporaryDirectory(prefix="graft-threads-") as tmp:
        data_dir = Path(tmp) / "graft"
        first = Server(data_dir)
        try:
            with first.client() as c:
                cid = register(c, f_bytes, g_bytes, [adapter(0)])[0]
        finally:
            first.stop()
        for _ in range(ROUNDS):
            for name, env in SETTINGS:
                server = Server(data_dir, env=env, bare=True)  # the environment as given, nothing added
                idle = Server(data_dir, predict_max_batch=1)
                try:
                    prime(server, cid, body)
                    prime(idle, cid, body)
                    before = tree_cpu_s(idle.pids())
                    runs[name].append(concurrent_load(server, cid, body, 32, SECONDS, TOKEN))
                    idle_cpu.append(tree_cpu_s(idle.pids()) - before)
                    url = f"{server.url}/v1/compositions/{cid}/predict"  # one client, one request at a time
                    lone[name].append(run_wrk(url, TOKEN, body, 1, 2)["p50_us"] / 1000)
                finally:
                    idle.stop()
                    server.stop()
    lines = ["# One API process, four thread settings (`python -m bench.serving_threads`)", "",
             f"Machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end; "
             "wrk -t1 -c32, "
             f"{SECONDS:g} s per load, {ROUNDS} rounds taking the settings in turn; a second, idle server "
             "up beside each (as in bench.serving).", "",
             "| server environment | requests/s per round | mean batch | server CPU ms / request | "
             "server cores used | one client alone: p50 ms per round |", "|---|---|---|---|---|---|"]
    for name, _ in SETTINGS:
        rs = runs[name]
        per_round = ", ".join(format(r["rps"], ".0f") for r in rs)
        lines.append(
            f"| {name} | {per_round} (median "
            f"{statistics.median(r['rps'] for r in rs):.0f}) | "
            f"{statistics.median(r['mean_batch'] for r in rs):.1f} | "
            f"{statistics.median(r['server_cpu_ms_per_request'] for r in rs):.2f} | "
            f"{statistics.median(r['server_cores_used'] for r in rs):.2f} | "
            f"{', '.join(format(v, '.2f') for v in lone[name])} |")
    lines += ["", f"CPU taken by the idle server during a load: at most {max(idle_cpu):.2f} s."]
    text = "\n".join(lines) + "\n"
    (RESULTS / "serving-threads.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
