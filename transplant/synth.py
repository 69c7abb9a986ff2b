"""Data-free transplant: synthesise the inputs a transplant trains on from the networks themselves.

Methods (`SYNTH_METHODS`), all seeded and reproducible on CPU:

- "deepinversion" (Yin et al., CVPR 2020): optimise inputs I so that, batch by batch, the mean and
  variance entering every BatchNorm layer of the teacher g_T∘f match the running statistics the layer
  stored while it was trained, plus a small total-variation / L2 prior on I and an information-
  maximisation term on the teacher's outputs (confident per sample, balanced over the batch).
- "features": the same in f's feature space: optimise features x directly against g_T's own BatchNorm
  layers (f is never run; the adapter is learned on these features).
- "noise": the baseline: Gaussian noise of the category module's input signature, its per-channel mean
  and scale fitted so f's first BatchNorm layer sees the statistics it stored (plain N(0, 1) when f
  keeps none).
- "auto": deepinversion when the teacher keeps BatchNorm statistics, else noise (the fallback is
  recorded in the report).

BatchNorm layers are found as modules (`nn.BatchNorm*`, read with forward pre-hooks) and as
`aten.batch_norm` calls in a torch.export graph (read by running the graph node by node). A network
that keeps none (TorchScript, or no BatchNorm at all) gets `NeedsBatchNorm` from the methods that need
the statistics. `mix_real` adds real inputs when a handful exist.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from transplant.blackbox import batched_apply, frozen
from transplant.errors import TransplantError, UnknownMethod

SYNTH_METHODS = ("auto", "deepinversion", "features", "noise")
_BN_OPS = {"batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm",
           "_native_batch_norm_legit", "cudnn_batch_norm"}
Module = Callable[[torch.Tensor], torch.Tensor]


class NeedsBatchNorm(TransplantError, ValueError):
    """The synthesis method needs BatchNorm running statistics that the networks do not keep."""


@dataclass
class SynthesisConfig:
    """How the training inputs of a data-free transplant are synthesised."""

    method: str = "auto"
    """One of SYNTH_METHODS."""
    n: int = 128
    """Synthetic samples to make (128 × 100 steps: bench/results/datafree.md's "di-cheap", 1.9× the wall
    of a transplant from real inputs, against 5.05× for 256 × 200 at nearly the same scores)."""
    steps: int = 100
    """Optimiser steps per batch of synthetic samples (noise: steps of its per-channel calibration)."""
    batch_size: int = 64
    """Samples optimised together: their batch statistics are matched to the stored ones."""
    lr: float = 0.1
    """Adam learning rate on the inputs."""
    tv: float = 0.05
    """Weight of the total-variation prior (spatial inputs only)."""
    l2: float = 1e-3
    """Weight of the L2 prior on the inputs."""
    diversity: float = 0.5
    """Weight of the information-maximisation term on the teacher's outputs (0 = off)."""
    seed: int = 0
    """Seeds the initial noise: same seed and config, same inputs on CPU."""

    def __post_init__(self) -> None:
        if self.method not in SYNTH_METHODS:
            raise UnknownMethod(f"unknown synthesis method {self.method!r}; use one of {SYNTH_METHODS}")
        if self.n < 1 or self.steps < 0 or self.batch_size < 1:
            raise ValueError("synthesis needs n ≥ 1, steps ≥ 0 and batch_size ≥ 1")


@dataclass
class Synthesis:
    """Synthetic training inputs and what they cost."""

    x: torch.Tensor
    """(N, *input shape) for f when `space` is "input"; (N, *feature shape) when it is "feature"."""
    space: str
    """"input" (train through f) or "feature" (f's outputs, made directly)."""
    report: dict
    """method, n, steps, wall_s, bn_layers, bn_distance (0 = stored statistics met), bn_distance_init,
    class_balance, fallback, …: for the job's events and metrics and the adapter's lineage."""


# -- BatchNorm taps ------------------------------------------------------------------------------------
@dataclass
class _Stat:
    mean: torch.Tensor  # (C,)
    var: torch.Tensor  # (C,)


def _fx_bn_nodes(gm: fx.GraphModule) -> list[tuple[fx.Node, _Stat]]:
    """batch_norm calls of an fx graph whose running statistics are attributes of the module."""
    found = []
    for node in gm.graph.nodes:
        name = getattr(getattr(node.target, "_overloadpacket", node.target), "__name__", "")
        if node.op != "call_function" or name not in _BN_OPS or len(node.args) < 5:
            continue
        mean, var = node.args[3], node.args[4]
        if not (isinstance(mean, fx.Node) and isinstance(var, fx.Node)
                and mean.op == var.op == "get_attr"):
            continue
        found.append((node, _Stat(_attr(gm, mean.target).detach(), _attr(gm, var.target).detach())))
    return found


def _attr(module: nn.Module, path: str) -> torch.Tensor:
    obj = module
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


class _Recorder(fx.Interpreter):
    """Runs an fx graph node by node, keeping the input of each batch_norm call (autograd intact)."""

    def __init__(self, gm: fx.GraphModule, nodes: list[fx.Node]) -> None:
        super().__init__(gm)
        self.watch = set(nodes)
        self.seen: list[torch.Tensor] = []

    def run_node(self, n: fx.Node):  # noqa: ANN201
        if n in self.watch:
            self.seen.append(self.env[n.args[0]])
        return super().run_node(n)


def _modules_bn(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.running_mean is not None and m.running_var is not None]


def batchnorm_layers(module: Module) -> int:
    """How many BatchNorm layers with running statistics `module` shows (0 for TorchScript)."""
    if not isinstance(module, nn.Module) or isinstance(module, torch.jit.ScriptModule):
        return 0
    n = len(_modules_bn(module))
    if n == 0 and isinstance(module, fx.GraphModule):
        n = len(_fx_bn_nodes(module))
    return n


@contextlib.contextmanager
def bn_tap(module: Module) -> Iterator[tuple[Callable, list[_Stat]]]:
    """(run, stats): run(x) → (output, [input of each BatchNorm layer]); hooks removed on exit."""
    layers = _modules_bn(module) if isinstance(module, nn.Module) else []
    if layers:
        seen: list[torch.Tensor] = []
        handles = [m.register_forward_pre_hook(lambda _m, args: seen.append(args[0])) for m in layers]

        def run(x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
            seen.clear()
            out = module(x)
            return out, list(seen)

        try:
            yield run, [_Stat(m.running_mean.detach(), m.running_var.detach()) for m in layers]
        finally:
            for h in handles:
                h.remove()
        return
    nodes = _fx_bn_nodes(module) if isinstance(module, fx.GraphModule) else []
    if nodes:

        def run_fx(x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
            rec = _Recorder(module, [n for n, _ in nodes])
            out = rec.run(x)
            while isinstance(out, tuple | list) and len(out) == 1:
                out = out[0]
            return out, rec.seen

        yield run_fx, [s for _, s in nodes]
        return
    yield (lambda x: (module(x), [])), []


# -- losses and quality --------------------------------------------------------------------------------
def _moments(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (biased) variance of a BatchNorm input (B, C, *)."""
    dims = [d for d in range(a.dim()) if d != 1]
    return a.mean(dims), a.var(dims, unbiased=False)


def _bn_loss(inputs: list[torch.Tensor], stats: list[_Stat]) -> torch.Tensor:
    """Σ_layers ‖μ_batch − μ_stored‖₂ + ‖σ²_batch − σ²_stored‖₂ (the DeepInversion feature prior)."""
    total = inputs[0].new_zeros(())
    for a, s in zip(inputs, stats, strict=True):
        mu, var = _moments(a)
        total = total + torch.linalg.vector_norm(mu - s.mean) + torch.linalg.vector_norm(var - s.var)
    return total


class _Moments:
    """Running per-channel sums, to compare a whole synthetic set's statistics with the stored ones."""

    def __init__(self) -> None:
        self.n: list[int] = []
        self.s: list[torch.Tensor] = []
        self.ss: list[torch.Tensor] = []

    def add(self, inputs: list[torch.Tensor]) -> None:
        for i, a in enumerate(inputs):
            a = a.detach().double().transpose(0, 1).flatten(1)  # (C, B·…)
            if i == len(self.n):
                self.n.append(0)
                self.s.append(torch.zeros(a.shape[0], dtype=torch.float64, device=a.device))
                self.ss.append(torch.zeros_like(self.s[-1]))
            self.n[i] += a.shape[1]
            self.s[i] += a.sum(1)
            self.ss[i] += a.pow(2).sum(1)

    def distance(self, stats: list[_Stat]) -> float | None:
        """Mean over layers of (‖μ − μ_stored‖ + ‖σ − σ_stored‖) / ‖σ_stored‖: 0 when the statistics meet."""
        if not stats or not self.n:
            return None
        out = []
        for n, s, ss, st in zip(self.n, self.s, self.ss, stats, strict=True):
            mu = s / n
            sd = (ss / n - mu.pow(2)).clamp_min(0).sqrt()
            sd_ref = st.var.double().to(sd.device).clamp_min(0).sqrt()
            err = torch.linalg.vector_norm(mu - st.mean.double().to(mu.device)) + torch.linalg.vector_norm(
                sd - sd_ref)
            out.append(float(err / (torch.linalg.vector_norm(sd_ref) + 1e-12)))
        return sum(out) / len(out)


def bn_distance(f: Module, g_teacher: Module, x: torch.Tensor) -> float | None:
    """The BatchNorm distance (as in a synthesis report) of given inputs `x` through f and g_T: for real
    inputs, the floor a synthetic set is compared with. None when neither network has BatchNorm."""
    m = _Moments()
    with bn_tap(f) as (run_f, st_f), bn_tap(g_teacher) as (run_g, st_g), torch.no_grad():
        feats, a_f = run_f(x)
        _, a_g = run_g(feats)
        m.add(a_f + a_g)
    return m.distance(st_f + st_g)


def _tv(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels over the trailing two dims (0 below 3 dims)."""
    if x.dim() < 4:
        return x.new_zeros(())
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def _probs(y: torch.Tensor) -> torch.Tensor | None:
    """Class probabilities (M, K) of class logits (B, K) or dense logits (B, K, …); None otherwise."""
    if y.dim() < 2 or y.shape[1] < 2:
        return None
    return F.softmax(y.movedim(1, -1).reshape(-1, y.shape[1]), dim=1)


def _information(y: torch.Tensor) -> torch.Tensor:
    """Mean per-sample entropy − entropy of the mean: low when confident and balanced over classes."""
    p = _probs(y)
    if p is None:
        return y.new_zeros(())
    ent = -(p * p.clamp_min(1e-12).log()).sum(1).mean()
    pm = p.mean(0)
    return ent + (pm * pm.clamp_min(1e-12).log()).sum()


def _balance(ys: list[torch.Tensor]) -> float | None:
    """Entropy of the teacher's mean prediction over the set ÷ log K (1 = every class equally often)."""
    ps = [p for p in (_probs(y) for y in ys) if p is not None]
    if not ps:
        return None
    pm = torch.cat(ps).mean(0)
    return float(-(pm * pm.clamp_min(1e-12).log()).sum() / math.log(pm.shape[0]))


# -- synthesis -----------------------------------------------------------------------------------------
def synthesise(f: Module, g_teacher: Module, input_shape: tuple, cfg: SynthesisConfig | None = None, *,
               feature_shape: tuple | None = None, device: str | torch.device = "cpu") -> Synthesis:
    """Synthetic training inputs for a transplant of (f, g_T) by `cfg.method`; see the module doc."""
    cfg = cfg or SynthesisConfig()
    t0 = time.perf_counter()
    device = torch.device(device)
    n_f, n_g = batchnorm_layers(f), batchnorm_layers(g_teacher)
    method, fallback = cfg.method, None
    if method == "auto":
        method = "deepinversion" if n_f + n_g else "noise"
        if method == "noise":
            fallback = "no BatchNorm statistics in f or g_T: Gaussian noise of f's input signature"
    if method == "deepinversion" and n_f + n_g == 0:
        raise NeedsBatchNorm(
            "synthesis 'deepinversion' matches the running statistics of the teacher's BatchNorm layers, "
            "but neither the category module nor the teacher task module keeps any (TorchScript modules "
            "hide them); use synthesis 'noise' or 'auto', or upload the modules as torch_export or "
            "safetensors with BatchNorm")
    if method == "features":
        if n_g == 0:
            raise NeedsBatchNorm(
                "synthesis 'features' matches the running statistics of the teacher task module's "
                "BatchNorm layers, but it keeps none; use synthesis 'deepinversion', 'noise' or 'auto'")
        if feature_shape is None:
            raise ValueError("synthesis 'features' needs the category module's output shape")
    gen = torch.Generator().manual_seed(cfg.seed)
    space_shape = tuple(feature_shape) if method == "features" else tuple(input_shape)
    x0 = torch.randn((cfg.n, *space_shape), generator=gen)  # (N, *space) the seeded start
    moments, ys = _Moments(), []
    with contextlib.ExitStack() as stack:
        stack.enter_context(frozen(f, g_teacher, device=device))  # eval mode, no grads into f or g_T
        run_f, stats_f = stack.enter_context(bn_tap(f))
        run_g, stats_g = stack.enter_context(bn_tap(g_teacher))
        if method == "features":

            def chain(x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
                return run_g(x)

            stats = stats_g
        else:

            def chain(x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
                feats, a_f = run_f(x)
                y, a_g = run_g(feats)
                return y, a_f + a_g

            stats = stats_f + stats_g
        init = _Moments()
        if method == "noise":
            x, calibrated = _calibrated_noise(x0, run_f, stats_f, cfg, device)
        else:
            x = torch.cat([_invert(chain, stats, x0[i: i + cfg.batch_size].to(device), cfg)
                           for i in range(0, cfg.n, cfg.batch_size)])
        with torch.no_grad():
            for i in range(0, cfg.n, cfg.batch_size):
                y, acts = chain(x[i: i + cfg.batch_size])
                moments.add(acts)
                ys.append(y)
                init.add(chain(x0[i: i + cfg.batch_size].to(device))[1])
    report = {
        "method": method,
        "requested_method": cfg.method,
        "space": "feature" if method == "features" else "input",
        "bn_layers": {"category_module": n_f, "teacher_task_module": n_g},
        "bn_distance": moments.distance(stats),
        "bn_distance_init": init.distance(stats),
        "class_balance": _balance(ys),
        "fallback": fallback,
        **{k: v for k, v in asdict(cfg).items() if k != "method"},
    }
    if method == "noise":
        report["calibrated"] = calibrated
    report["wall_s"] = time.perf_counter() - t0
    return Synthesis(x=x.detach().cpu(), space=report["space"], report=report)


def _invert(chain: Callable, stats: list[_Stat], x0: torch.Tensor, cfg: SynthesisConfig) -> torch.Tensor:
    """One batch optimised so its BatchNorm statistics meet the stored ones (+ priors, + diversity)."""
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=cfg.lr)
    for _ in range(cfg.steps):
        y, acts = chain(x)
        loss = _bn_loss(acts, stats) + cfg.tv * _tv(x) + cfg.l2 * x.pow(2).mean()
        if cfg.diversity:
            loss = loss + cfg.diversity * _information(y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return x.detach()


def _calibrated_noise(x0: torch.Tensor, run_f: Callable, stats_f: list[_Stat], cfg: SynthesisConfig,
                      device: torch.device) -> tuple[torch.Tensor, bool]:
    """x0 with a per-channel mean and scale fitted to f's first BatchNorm layer (as is when f has none)."""
    x0 = x0.to(device)
    if not stats_f or x0.dim() < 2 or cfg.steps == 0:
        return x0, False
    c = x0.shape[1]
    shape = (1, c) + (1,) * (x0.dim() - 2)
    shift = torch.zeros(shape, device=device, requires_grad=True)
    log_scale = torch.zeros(shape, device=device, requires_grad=True)
    opt = torch.optim.Adam([shift, log_scale], lr=cfg.lr)
    sample = x0[: cfg.batch_size]
    for _ in range(cfg.steps):
        _, acts = run_f(shift + log_scale.exp() * sample)
        loss = _bn_loss(acts[:1], stats_f[:1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return shift + log_scale.exp() * x0, True


def mix_real(f: Module, synthesis: Synthesis, real: torch.Tensor | None) -> tuple[Module, torch.Tensor]:
    """(category module, inputs) the engine trains on: the synthetic set plus any real inputs.

    In the feature space the real inputs are run through f (where f lives) and the engine gets an
    identity for f.
    """
    if synthesis.space == "feature":
        parts = [synthesis.x]
        if real is not None and len(real):
            params = list(f.parameters()) if isinstance(f, nn.Module) else []
            device = params[0].device if params else torch.device("cpu")
            with frozen(f):
                parts.insert(0, batched_apply(f, real.float().to(device)).cpu())
        return nn.Identity(), torch.cat(parts)
    if real is None or not len(real):
        return f, synthesis.x
    return f, torch.cat([real.float(), synthesis.x])
