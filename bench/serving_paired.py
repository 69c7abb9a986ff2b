"""Predict latency of two versions of the code side by side: one server each, blocks taken in turn.

    git worktree add /tmp/base <commit>
    python -m bench.serving_paired /tmp/base [--label "the previous commit"]

bench.serving's overhead row is one p50 at one moment; on this shared machine it moved between
2.4 and 4.6 ms for the same code within an hour. Here both servers (this checkout and the one at
the given path, each with its own embedded registry holding the same two compositions) are up at
once, and blocks of sequential one-input .npy predicts alternate between them, so both see the
same machine; the result is the median over blocks of the paired difference.
Writes bench/results/serving-paired.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.serving import RESULTS, Server, adapter, nets, npy, p50_ms, predict, register
from transplant.artifacts import save_module

HERE = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("base", type=Path, help="a checkout of the code to compare with (e.g. a git worktree)")
    p.add_argument("--label", default="the other checkout")
    p.add_argument("--blocks", type=int, default=12)
    p.add_argument("--per-block", type=int, default=100)
    args = p.parse_args()
    f, g = nets()
    f_bytes = save_module(f, torch.zeros(2, 3, 32, 32), "torch_export")
    g_bytes = save_module(g, torch.zeros(2, 32, 16, 16), "torch_export")
    x = npy(np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32))
    sides, servers = {}, []
    with tempfile.TemporaryDirectory(prefix="graft-paired-") as tmp:
        try:
            for name, root in (("this checkout", HERE), (args.label, args.base.resolve())):
                server = Server(Path(tmp) / name.replace(" ", "-"), cwd=root)
                servers.append(server)
                client = server.client()
                ids = register(client, f_bytes, g_bytes, [adapter(0), adapter(1)])
                predict(client, ids[1], x)  # two compositions loaded, as in bench.serving
                for _ in range(100):
                    predict(client, ids[0], x)
                sides[name] = (client, ids[0])
            blocks: dict[str, list[float]] = {name: [] for name in sides}
            for _ in range(args.blocks):
                for name, (client, cid) in sides.items():
                    blocks[name].append(p50_ms(lambda c=client, i=cid: predict(c, i, x), args.per_block))
        finally:
            for server in servers:
                server.stop()
    ours, theirs = blocks["this checkout"], blocks[args.label]
    diffs = [a - b for a, b in zip(ours, theirs, strict=True)]
    lines = [
        "# Predict latency, two versions of the code side by side (`python -m bench.serving_paired`)", "",
        f"Machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end. One uvicorn "
        "server per version, both up at once, each with its own embedded registry holding the same "
        f"two compositions; {args.blocks} blocks of {args.per_block} sequential one-input .npy "
        "predicts, alternating between the servers.", "",
        "| | median of block p50s | block p50s (ms) |", "|---|---|---|",
        f"| this checkout | {statistics.median(ours):.2f} ms | {', '.join(f'{v:.2f}' for v in ours)} |",
        f"| {args.label} | {statistics.median(theirs):.2f} ms | {', '.join(f'{v:.2f}' for v in theirs)} |",
        "",
        f"Paired difference (this checkout − {args.label}), median over blocks: "
        f"**{statistics.median(diffs):+.2f} ms**; faster in {sum(d < 0 for d in diffs)} of {len(diffs)} "
        "blocks.",
    ]
    (RESULTS / "serving-paired.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
