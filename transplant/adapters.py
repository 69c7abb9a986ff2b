"""Adapters h: small nets mapping a category module's features to a task module's input.

Architectures are registered by name in `ADAPTER_ARCHS` (peft-style); an adapter is fully described
by its `AdapterConfig`, serialised as a JSON spec next to safetensors weights.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from transplant.errors import ShapeMismatch, UnknownMethod

SPEC_VERSION = 1
# An MLP adapter over flattened tensors is refused above this many weights (it would dwarf f and g).
MAX_MLP_WEIGHTS = 1 << 22


@dataclass
class AdapterConfig:
    """Architecture of one adapter; everything needed to rebuild it empty."""

    arch: str = "conv"
    """Registered architecture name: "conv" (feature maps) or "mlp" (vectors / flattened)."""
    in_shape: tuple = ()
    """Shape of the category module's output, without the batch dim, e.g. (16, 8, 8)."""
    out_shape: tuple = ()
    """Shape of the task module's input, without the batch dim."""
    layers: int = 2
    """Number of conv / linear layers (1 = a single linear map)."""
    hidden: int = 64
    """Width (channels or units) of the hidden layers; unused when layers == 1."""
    kernel_size: int = 1
    """Conv kernel size (odd; 1 = per-pixel 1×1 adapter, 3 = 3×3 with same padding)."""
    skip: bool = True
    """Add an identity shortcut when in_shape == out_shape (last layer zero-initialised)."""
    activation: str = "relu"
    """Hidden activation: "relu" or "gelu"."""
    resize: str = "none"
    """Spatial resize after the convs for conv adapters: "none", "pool" (downsample) or "upsample"."""
    shortcut: str = "identity"
    """"identity": with `skip`, an identity shortcut when in_shape == out_shape; "linear": a learned 1×1
    (or, for MLPs, a linear) shortcut around the stack whatever the shapes, started at the (partial)
    identity or at a least-squares fit (`init_adapter`), with the stack's last layer zero-initialised."""
    normalise: bool = False
    """Standardise the features per channel on the way in and give the output the target's per-channel
    mean and scale on the way out (buffers set from data by `init_adapter`; identity until then)."""
    extra: dict = field(default_factory=dict)
    """Free-form options of custom architectures (must stay JSON-serialisable)."""

    def __post_init__(self) -> None:
        self.in_shape = tuple(int(s) for s in self.in_shape)
        self.out_shape = tuple(int(s) for s in self.out_shape)


def _act(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown activation {name!r} (use 'relu' or 'gelu')")


class Residual(nn.Module):
    """x + body(x): the shortcut keeps a freshly built adapter at the identity."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Shortcut(nn.Module):
    """shortcut(x) + body(x), the shortcut a learned linear map (1×1 conv or linear)."""

    def __init__(self, shortcut: nn.Module, body: nn.Module) -> None:
        super().__init__()
        self.shortcut = shortcut
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.body(x)


class Normalised(nn.Module):
    """out_std · inner((x − in_mean) / in_std) + out_mean, per channel; buffers saved with the weights."""

    def __init__(self, inner: nn.Module, c_in: int, c_out: int, spatial: bool) -> None:
        super().__init__()
        self.inner = inner
        view = (1, -1, 1, 1) if spatial else (1, -1)
        for name, c, value in (("in_mean", c_in, 0.0), ("in_std", c_in, 1.0), ("out_mean", c_out, 0.0),
                               ("out_std", c_out, 1.0)):
            self.register_buffer(name, torch.full((c,), value).view(view).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner((x - self.in_mean) / self.in_std) * self.out_std + self.out_mean


def _stack(
    make_layer: Callable[..., nn.Module], c_in: int, c_out: int, cfg: AdapterConfig
) -> nn.Sequential:
    """layers × make_layer with activations between; near-identity init where channels allow."""
    widths = [c_in] + [cfg.hidden] * (cfg.layers - 1) + [c_out]
    mods: list[nn.Module] = []
    for i in range(cfg.layers):
        mods.append(make_layer(widths[i], widths[i + 1]))
        if i < cfg.layers - 1:
            mods.append(_act(cfg.activation))
    body = nn.Sequential(*mods)
    last = mods[-1]
    if cfg.layers == 1 and cfg.shortcut != "linear":
        # A single map starts as the (partial) identity: dirac for convs, eye for linears, plus a
        # little noise so that symmetric units do not stay tied.
        with torch.no_grad():
            w = last.weight  # (C_out, C_in, k, k) or (C_out, C_in)
            noise = torch.randn_like(w) * (0.01 / math.sqrt(max(1, w.shape[1])))
            nn.init.dirac_(w) if w.dim() == 4 else nn.init.eye_(w)
            w.add_(noise)
            last.bias.zero_()
        return body
    if cfg.shortcut == "linear":
        # h(x) = L x + body(x), body zero at the start: h starts as its (partial-identity) shortcut.
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        linear = make_layer(c_in, c_out, 1)
        with torch.no_grad():
            w = linear.weight  # (C_out, C_in, 1, 1) or (C_out, C_in)
            nn.init.dirac_(w) if w.dim() == 4 else nn.init.eye_(w)
            linear.bias.zero_()
        return nn.Sequential(Shortcut(linear, body))
    if cfg.shortcut != "identity":
        raise ValueError(f"unknown shortcut {cfg.shortcut!r} (use 'identity' or 'linear')")
    if cfg.skip and c_in == c_out:
        # Zero-initialised last layer: h(x) = x exactly at the start, hidden layers still random.
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        return nn.Sequential(Residual(body))
    return body


def build_conv(cfg: AdapterConfig) -> nn.Module:
    """Conv stack for (C, H, W) → (C', H', W'); resize by pooling / upsampling when sizes differ."""
    if cfg.kernel_size % 2 != 1:
        raise ValueError("kernel_size must be odd so that spatial sizes are preserved")
    c_in, c_out = cfg.in_shape[0], cfg.out_shape[0]

    def conv(a: int, b: int, k: int = cfg.kernel_size) -> nn.Module:
        return nn.Conv2d(a, b, k, padding=k // 2)

    body: nn.Module = _stack(conv, c_in, c_out, cfg)
    if cfg.resize == "pool":
        body = nn.Sequential(body, nn.AdaptiveAvgPool2d(cfg.out_shape[1:]))
    elif cfg.resize == "upsample":
        body = nn.Sequential(body, nn.Upsample(size=cfg.out_shape[1:], mode="nearest"))
    return Normalised(body, c_in, c_out, spatial=True) if cfg.normalise else body


def build_mlp(cfg: AdapterConfig) -> nn.Module:
    """MLP over flattened features, reshaped to out_shape."""
    n_in, n_out = math.prod(cfg.in_shape), math.prod(cfg.out_shape)

    def linear(a: int, b: int, _k: int = 1) -> nn.Module:
        return nn.Linear(a, b)

    body: nn.Module = _stack(linear, n_in, n_out, cfg)
    if cfg.normalise:
        body = Normalised(body, n_in, n_out, spatial=False)
    if len(cfg.in_shape) == 1 and len(cfg.out_shape) == 1:
        return body
    return nn.Sequential(nn.Flatten(1), body, nn.Unflatten(1, cfg.out_shape))


ADAPTER_ARCHS: dict[str, Callable[[AdapterConfig], nn.Module]] = {"conv": build_conv, "mlp": build_mlp}


def register_adapter_arch(name: str, builder: Callable[[AdapterConfig], nn.Module]) -> None:
    """Register a new adapter architecture under `name`."""
    ADAPTER_ARCHS[name] = builder


def _spatial_resize(in_hw: tuple, out_hw: tuple) -> str | None:
    """How to go from in_hw to out_hw with one integer factor, or None when impossible."""
    if in_hw == out_hw:
        return "none"
    pairs = list(zip(in_hw, out_hw, strict=True))
    if all(a % b == 0 for a, b in pairs) and len({a // b for a, b in pairs}) == 1:
        return "pool"
    if all(b % a == 0 for a, b in pairs) and len({b // a for a, b in pairs}) == 1:
        return "upsample"
    return None


def fit_adapter_config(in_shape: tuple, out_shape: tuple, **overrides) -> AdapterConfig:
    """A sensible adapter for these shapes: conv stack for maps, MLP for vectors; ShapeMismatch if none."""
    in_shape, out_shape = tuple(int(s) for s in in_shape), tuple(int(s) for s in out_shape)
    if not in_shape or not out_shape or min(in_shape + out_shape) <= 0:
        raise ShapeMismatch(in_shape, out_shape, "shapes must be non-empty and positive")
    arch = overrides.pop("arch", None)
    if arch is None:
        arch = "conv" if len(in_shape) == 3 and len(out_shape) == 3 else "mlp"
    if arch not in ADAPTER_ARCHS:
        raise UnknownMethod(f"unknown adapter arch {arch!r}; registered: {sorted(ADAPTER_ARCHS)}")
    defaults: dict = {}
    if arch == "conv":
        if len(in_shape) != 3 or len(out_shape) != 3:
            raise ShapeMismatch(in_shape, out_shape, "a conv adapter needs (C, H, W) on both sides")
        resize = _spatial_resize(in_shape[1:], out_shape[1:])
        if resize is None:
            raise ShapeMismatch(in_shape, out_shape, "spatial sizes differ by no integer factor")
        defaults = {"resize": resize, "hidden": max(in_shape[0], out_shape[0]), "kernel_size": 3,
                    "shortcut": "linear", "normalise": True}
    elif arch == "mlp":
        if len(in_shape) != len(out_shape) and (len(in_shape) > 1 and len(out_shape) > 1):
            raise ShapeMismatch(in_shape, out_shape, "ranks differ and neither side is a vector")
        n_in, n_out = math.prod(in_shape), math.prod(out_shape)
        hidden = overrides.get("hidden", min(256, max(n_in, n_out)))
        layers = overrides.get("layers", 2)
        weights = n_in * n_out if layers == 1 else n_in * hidden + n_out * hidden
        if weights > MAX_MLP_WEIGHTS:
            raise ShapeMismatch(in_shape, out_shape, f"an MLP adapter would need {weights} weights")
        # A linear shortcut when it stays within the same bound.
        shortcut = "linear" if weights + n_in * n_out <= MAX_MLP_WEIGHTS else "identity"
        defaults = {"hidden": hidden, "shortcut": shortcut, "normalise": True}
    defaults.update(overrides)
    return AdapterConfig(arch=arch, in_shape=in_shape, out_shape=out_shape, **defaults)


def build_adapter(config: AdapterConfig) -> nn.Module:
    """Build a freshly initialised adapter from its config."""
    try:
        builder = ADAPTER_ARCHS[config.arch]
    except KeyError:
        raise UnknownMethod(
            f"unknown adapter arch {config.arch!r}; registered: {sorted(ADAPTER_ARCHS)}"
        ) from None
    return builder(config)


def adapter_spec(config: AdapterConfig) -> dict:
    """JSON-serialisable description of the adapter's architecture."""
    cfg = dataclasses.asdict(config)
    cfg["in_shape"], cfg["out_shape"] = list(config.in_shape), list(config.out_shape)
    return {"name": config.arch, "arch": config.arch, "spec_version": SPEC_VERSION, "config": cfg}


def config_from_spec(spec: dict) -> AdapterConfig:
    """The AdapterConfig a spec describes (unknown keys are refused, not ignored)."""
    if spec.get("spec_version", SPEC_VERSION) != SPEC_VERSION:
        raise ValueError(f"unsupported adapter spec_version {spec.get('spec_version')!r}")
    cfg = dict(spec.get("config", {}))
    cfg.setdefault("arch", spec.get("arch") or spec.get("name"))
    names = {f.name for f in dataclasses.fields(AdapterConfig)}
    unknown = set(cfg) - names
    if unknown:
        raise ValueError(f"unknown adapter config keys: {sorted(unknown)}")
    return AdapterConfig(**cfg)


def build_from_spec(spec: dict) -> nn.Module:
    """Rebuild an (untrained) adapter module from its spec."""
    return build_adapter(config_from_spec(spec))


def save_adapter(module: nn.Module, config: AdapterConfig) -> tuple[bytes, dict]:
    """Serialise an adapter as (safetensors bytes, JSON spec)."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    return st_save(state), adapter_spec(config)


def load_adapter(data: bytes, spec: dict) -> nn.Module:
    """Load an adapter saved by `save_adapter`, with exactly the saved weights (strict)."""
    module = build_from_spec(spec)
    module.load_state_dict(st_load(data), strict=True)
    return module.eval()


def _parts(module: nn.Module) -> tuple[Normalised | None, nn.Module | None]:
    """The adapter's Normalised wrapper and its linear shortcut layer (None when it has none)."""
    norm = next((m for m in module.modules() if isinstance(m, Normalised)), None)
    short = next((m for m in module.modules() if isinstance(m, Shortcut)), None)
    return norm, (short.shortcut if short is not None else None)


def _channels_last(t: torch.Tensor, spatial: bool) -> torch.Tensor:
    """(N, C, H, W) → (N·H·W, C) for feature maps; (N, ...) → (N, D) flattened otherwise."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]) if spatial else t.flatten(1)


@torch.no_grad()
def init_adapter(module: nn.Module, config: AdapterConfig, feats: torch.Tensor,
                 target: torch.Tensor | None = None, ridge: float = 1e-3) -> dict:
    """Start a freshly built adapter from data; returns what was done (for the job's metrics).

    feats: the category module's features of the training inputs (N, *in_shape). target: optional
    features of the same inputs in the task module's input space (N, *out_shape), e.g. from the generic
    network's own category module. With `normalise`, the input is standardised with feats' per-channel
    statistics and the output given target's (or, without a target, feats' overall) mean and scale. With a
    linear shortcut and a target, the shortcut is the ridge least-squares map from the standardised
    features to the standardised target, so h starts as the best linear stitch between the two networks.
    """
    norm, linear = _parts(module)
    spatial = config.arch == "conv"
    done: dict = {"normalise": False, "least_squares": None}
    x = feats.float() if spatial else feats.float().flatten(1)
    y = target.float() if target is not None else None
    if y is not None and not spatial:
        y = y.flatten(1)
    if config.arch == "conv" and config.resize != "none":
        size = tuple(config.out_shape[1:])
        x_at_out = (torch.nn.functional.adaptive_avg_pool2d(x, size) if config.resize == "pool"
                    else torch.nn.functional.interpolate(x, size=size, mode="nearest"))
    else:
        x_at_out = x
    if norm is not None:
        xs = _channels_last(x, spatial)
        norm.in_mean.copy_(xs.mean(0).view_as(norm.in_mean))
        norm.in_std.copy_(xs.std(0).clamp_min(1e-6).view_as(norm.in_std))
        if y is not None:
            ys = _channels_last(y, spatial)
            norm.out_mean.copy_(ys.mean(0).view_as(norm.out_mean))
            norm.out_std.copy_(ys.std(0).clamp_min(1e-6).view_as(norm.out_std))
        else:
            norm.out_mean.fill_(float(xs.mean()))
            norm.out_std.fill_(float(xs.std().clamp_min(1e-6)))
        done["normalise"] = True
    if linear is not None and y is not None:
        xn, yn = x_at_out, y
        if norm is not None:
            xn = (x_at_out - norm.in_mean) / norm.in_std
            yn = (y - norm.out_mean) / norm.out_std
        a, b = _channels_last(xn, spatial), _channels_last(yn, spatial)  # (M, C_in), (M, C_out)
        a1 = torch.cat([a, torch.ones(a.shape[0], 1)], 1)  # a bias column
        gram = a1.T @ a1 + ridge * a.shape[0] * torch.eye(a1.shape[1])
        w = torch.linalg.solve(gram, a1.T @ b)  # (C_in + 1, C_out)
        linear.weight.copy_(w[:-1].T.reshape(linear.weight.shape))
        linear.bias.copy_(w[-1])
        fit = a1 @ w
        done["least_squares"] = {"r2": float(1 - (fit - b).pow(2).sum() / (b - b.mean(0)).pow(2).sum()),
                                 "samples": int(a.shape[0])}
    return done
