"""What the operator allow-list costs: loading a module with the check and without it, side by side.

    python -m bench.allowlist   # writes bench/results/allowlist.md

The check runs when an artifact is loaded (upload probe, the first predict of a composition, a job), never
per request: a loaded composition is cached and its forward is the same graph either way. So the cost is
measured on `load_module` for EfficientNet-Lite0 split at a stage (f and g, random weights) and a small
transformer, median of repeated loads, check on vs. check off (its two functions replaced by no-ops),
plus one predict-sized forward of the loaded f to show the per-request path is unchanged.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from transplant import artifacts

REPEATS = 7


def _median_ms(fn) -> float:  # noqa: ANN001
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _pieces() -> list[tuple[str, nn.Module, torch.Tensor]]:
    from efficientnet_lite_pytorch import EfficientNet

    from transplant.realworld import CUTS, split_lite

    torch.manual_seed(0)
    f, g = split_lite(EfficientNet.from_name("efficientnet-lite0").eval(), CUTS[112][0])
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        feats = f(x)
    text = nn.Sequential(nn.TransformerEncoderLayer(64, 4, 128, batch_first=True), nn.Linear(64, 8))
    return [("lite0 f (to block 10)", f, x), ("lite0 g (rest)", g, feats),
            ("transformer layer", text.eval(), torch.randn(2, 16, 64))]


def main() -> None:
    torch.set_num_threads(1)
    rows, forward = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for label, module, x in _pieces():
            path = Path(tmp) / "m.pt2"
            path.write_bytes(artifacts.save_module(module, x, "torch_export"))
            artifacts.load_module(path, "torch_export")  # warm torch.export's imports
            on = _median_ms(lambda p=path: artifacts.load_module(p, "torch_export"))
            saved = artifacts.check_graph_json, artifacts.check_program
            artifacts.check_graph_json = artifacts.check_program = lambda *_a, **_k: None
            try:
                off = _median_ms(lambda p=path: artifacts.load_module(p, "torch_export"))
            finally:
                artifacts.check_graph_json, artifacts.check_program = saved
            rows.append((label, path.stat().st_size / 2**20, on, off))
            if forward is None:
                loaded = artifacts.load_module(path, "torch_export")
                with torch.inference_mode():
                    forward = _median_ms(lambda m=loaded, x=x: m(x))
    lines = [
        "# The operator allow-list's cost",
        "",
        f"`python -m bench.allowlist`: median of {REPEATS} `load_module` calls, one CPU thread, "
        f"torch {torch.__version__}. The check runs once per load (then the module is cached); the "
        "predict forward is the same graph with or without it.",
        "",
        "| artifact | size MiB | load, check on (ms) | load, check off (ms) | check's share |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {label} | {size:.1f} | {on:.1f} | {off:.1f} | {(on - off) / on:+.1%} |"
              for label, size, on, off in rows]
    lines += ["", f"One forward of the loaded lite0 f on a batch of 2 at 224×224: {forward:.1f} ms "
                  "(per request, unchanged by the check)."]
    out = Path("bench/results/allowlist.md")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
