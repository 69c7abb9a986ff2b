"""Cost of one back-distillation step vs. one distillation step on the same batch, as run_transplant trains.

Both steps start from the same fixed features (f is never run while training). The distillation step is
g_S(h(x)) against stored teacher outputs; the back-distillation step is the one run_transplant takes:
stored teacher outputs, probes and teacher VJPs, g_S's VJP at the detached adapter output and a double
backward through h alone. A third row times the estimator it replaced, which differentiates through g_S
as well (`student_curvature=True`: what a smooth task module still needs).
"""

from __future__ import annotations

import time

import torch

from transplant.adapters import build_adapter, fit_adapter_config, init_adapter
from transplant.blackbox import frozen
from transplant.distill.losses import back_distillation_loss, distillation_loss, teacher_probes


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


def _peak_cuda_bytes(fn, device: torch.device) -> int:
    """Peak CUDA memory allocated during fn(), above what was allocated before it."""
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def step_cost(f, g_t, g_s, x: torch.Tensor, *, reps: int = 20, device: str = "cpu", cell: str = "",
              output_loss: str = "auto", probe_pool: int = 4) -> dict:
    """Median wall time and memory of the steps on batch x (N, ...), interleaved to share noise."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    with frozen(f, g_t, g_s, device=dev), torch.no_grad():
        feats = f(x.to(dev))  # (B, ...): every step starts from the same fixed features
    shape = tuple(feats.shape[1:])
    cfg = fit_adapter_config(shape, shape)  # both worlds cut where f's output is g_S's input
    h = build_adapter(cfg).to(dev)
    init_adapter(h, cfg, feats)
    opt = torch.optim.Adam(h.parameters(), lr=1e-3)
    with frozen(g_t, g_s, device=dev):
        teacher = teacher_probes(g_t, feats, probe_pool)

        def dist_step() -> None:
            loss = distillation_loss(g_s(h(feats)), teacher.y, output_loss, 2.0)
            opt.zero_grad()
            loss.backward()
            opt.step()

        def bd_step(curvature: bool = False) -> None:
            t = back_distillation_loss(feats, h, g_s, g_t, output_loss=output_loss, temperature=2.0,
                                       teacher=teacher, student_curvature=curvature)
            opt.zero_grad()
            t.loss.backward()
            opt.step()

        steps = {"dist": dist_step, "bd": bd_step, "bd_through_g_s": lambda: bd_step(True)}
        times: dict[str, list[float]] = {k: [] for k in steps}
        for fn in steps.values():  # warm-up
            fn()
        for _ in range(reps):
            for name, fn in steps.items():
                if cuda:
                    torch.cuda.synchronize(dev)
                t0 = time.perf_counter()
                fn()
                if cuda:
                    torch.cuda.synchronize(dev)
                times[name].append(time.perf_counter() - t0)
        if cuda:
            mem = {k: _peak_cuda_bytes(fn, dev) for k, fn in steps.items()}
            measure = "peak CUDA memory allocated during the step, above the step's inputs"
        else:
            mem = {k: _saved_bytes(fn) for k, fn in steps.items()}
            measure = "bytes of tensors saved for backward (autograd saved_tensors_hooks), CPU"
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    batch = x.shape[0]
    return {
        "cell": cell,
        "device": str(dev),
        "batch_size": batch,
        "dist_step_ms": round(med["dist"] * 1e3, 2),
        "bd_step_ms": round(med["bd"] * 1e3, 2),
        "bd_through_g_s_step_ms": round(med["bd_through_g_s"] * 1e3, 2),
        "dist_steps_per_s": 1 / med["dist"],
        "bd_steps_per_s": 1 / med["bd"],
        "time_ratio": med["bd"] / med["dist"],
        "time_ratio_through_g_s": med["bd_through_g_s"] / med["dist"],
        "dist_memory_bytes": mem["dist"],
        "bd_memory_bytes": mem["bd"],
        "memory_ratio": mem["bd"] / max(mem["dist"], 1),
        "memory_measure": measure,
    }


def world_step_cost(world, reps: int = 20, batch_size: int = 64, device: str = "cpu") -> dict:
    """step_cost on the benchmark world's first new category, segmentation task."""
    cat, task = world.new_categories[0], "seg"
    f, g_t = world.teachers[cat][task]
    x = world.data[cat].unlabelled.x[:batch_size]
    return step_cost(f, g_t, world.generic[task], x, reps=reps, device=device,
                     cell=f"{world.name}/{cat}/{task}")
