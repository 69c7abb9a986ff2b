"""Why compositions are not served as TorchScript traces: process RSS over repeated loads, side by side.

    python -m bench.trace_leak      # ≈ 1 min; writes bench/results/trace_leak.md

The serving cache loads and evicts compositions for as long as the server runs, so whatever a load
leaves behind after its module is dropped grows without bound. Each row builds the same small conv
network N times in a fresh child process and drops it, either used as it is (eager) or traced with
`torch.jit.trace` first (the rejected serving fast path), and reports RSS growth per load.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
LOADS = 300


def _rss_mb() -> float:
    for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(mode: str) -> dict:
    import torch
    from torch import nn

    from transplant.compose import parameter_bytes, trace

    torch.set_num_threads(1)
    torch.manual_seed(0)
    start = None
    for i in range(LOADS + 1):
        m = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
                          nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 32, 3, padding=1), nn.Flatten(),
                          nn.Linear(32 * 16 * 16, 10)).eval()
        size = parameter_bytes(m)
        with torch.no_grad():
            served = trace(m, torch.randn(2, 3, 32, 32)) if mode == "traced" else m
            served(torch.randn(4, 3, 32, 32))
        del served, m
        gc.collect()
        if i == 0:
            start = _rss_mb()  # after one load: imports and allocator pools are in place
    end = _rss_mb()
    return {"mode": mode, "loads": LOADS, "param_mb": size / 1e6, "rss_start_mb": start, "rss_end_mb": end,
            "mb_per_load": (end - start) / LOADS}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2])))
        return
    rows = []
    for mode in ("eager", "traced"):
        out = subprocess.run([sys.executable, "-m", "bench.trace_leak", "--child", mode], check=True,
                             capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    lines = ["# TorchScript traces leak (`python -m bench.trace_leak`)", "",
             f"Each row: a fresh process builds a small conv network ({rows[0]['param_mb']:.2f} MB of "
             f"parameters) {LOADS} times, runs it once and drops it; RSS after the first and after the last.",
             "", "| module served as | RSS after 1 load MB | after the last MB | growth per load MB |",
             "|---|---|---|---|"]
    lines += [f"| {r['mode']} | {r['rss_start_mb']:.0f} | {r['rss_end_mb']:.0f} | {r['mb_per_load']:.3f} |"
              for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "trace_leak.md").write_text(text)


if __name__ == "__main__":
    main()
