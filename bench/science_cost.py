"""Cost of one back-distillation step vs. one distillation step on the same batch."""

from __future__ import annotations

import time

import torch

from transplant.adapters import build_adapter, fit_adapter_config
from transplant.blackbox import frozen
from transplant.distill.losses import back_distillation_loss, distillation_loss


def _saved_bytes(fn) -> int:
    """Bytes of tensors autograd saves for backward during fn() (a CPU proxy of activation memory)."""
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def step_cost(world, reps: int = 20, batch_size: int = 64, probes: int = 1) -> dict:
    """Median wall time and saved-activation bytes of the two steps, interleaved to share noise."""
    cat, task = world.new_categories[0], "seg"
    f, g_t = world.teachers[cat][task]
    g_s = world.generic[task]
    x = world.data[cat].unlabelled.x[:batch_size]
    h = build_adapter(fit_adapter_config(world.feature_shape, world.feature_shape))
    opt = torch.optim.Adam(h.parameters(), lr=1e-3)

    def dist_step() -> None:
        with torch.no_grad():
            y_t = g_t(feats)
        loss = distillation_loss(g_s(h(feats)), y_t)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def bd_step() -> None:
        t = back_distillation_loss(feats, h, g_s, g_t, probes=probes)
        opt.zero_grad()
        t.loss.backward()
        opt.step()

    times: dict[str, list[float]] = {"dist": [], "bd": []}
    with frozen(f, g_t, g_s):
        with torch.no_grad():
            feats = f(x)  # (B, 16, h, w): both methods start from the same fixed features
        for _ in range(2):  # warm-up
            dist_step()
            bd_step()
        for _ in range(reps):
            for name, fn in (("dist", dist_step), ("bd", bd_step)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        mem = {"dist": _saved_bytes(dist_step), "bd": _saved_bytes(bd_step)}
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {
        "cell": f"{world.name}/{cat}/{task}",
        "batch_size": batch_size,
        "probes": probes,
        "dist_step_ms": round(med["dist"] * 1e3, 2),
        "bd_step_ms": round(med["bd"] * 1e3, 2),
        "time_ratio": med["bd"] / med["dist"],
        "dist_saved_bytes": mem["dist"],
        "bd_saved_bytes": mem["bd"],
        "memory_ratio": mem["bd"] / mem["dist"],
        "memory_measure": "bytes of tensors saved for backward (autograd saved_tensors_hooks), CPU",
    }
