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


def _stack(
    make_layer: Callable[[int, int], nn.Module], c_in: int, c_out: int, cfg: AdapterConfig
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
    if cfg.layers == 1:
        # A single map starts as the (partial) identity: dirac for convs, eye for linears, plus a
        # little noise so that symmetric units do not stay tied.
        with torch.no_grad():
            w = last.weight  # (C_out, C_in, k, k) or (C_out, C_in)
            noise = torch.randn_like(w) * (0.01 / math.sqrt(max(1, w.shape[1])))
            nn.init.dirac_(w) if w.dim() == 4 else nn.init.eye_(w)
            w.add_(noise)
            last.bias.zero_()
        return body
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
    pad = cfg.kernel_size // 2

    def conv(a: int, b: int) -> nn.Module:
        return nn.Conv2d(a, b, cfg.kernel_size, padding=pad)

    body = _stack(conv, c_in, c_out, cfg)
    if cfg.resize == "pool":
        return nn.Sequential(body, nn.AdaptiveAvgPool2d(cfg.out_shape[1:]))
    if cfg.resize == "upsample":
        return nn.Sequential(body, nn.Upsample(size=cfg.out_shape[1:], mode="nearest"))
    return body


def build_mlp(cfg: AdapterConfig) -> nn.Module:
    """MLP over flattened features, reshaped to out_shape."""
    n_in, n_out = math.prod(cfg.in_shape), math.prod(cfg.out_shape)
    body = _stack(nn.Linear, n_in, n_out, cfg)
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
        defaults = {"resize": resize, "hidden": max(in_shape[0], out_shape[0]), "kernel_size": 1}
    elif arch == "mlp":
        if len(in_shape) != len(out_shape) and (len(in_shape) > 1 and len(out_shape) > 1):
            raise ShapeMismatch(in_shape, out_shape, "ranks differ and neither side is a vector")
        n_in, n_out = math.prod(in_shape), math.prod(out_shape)
        hidden = overrides.get("hidden", min(256, max(n_in, n_out)))
        layers = overrides.get("layers", 2)
        weights = n_in * n_out if layers == 1 else n_in * hidden + n_out * hidden
        if weights > MAX_MLP_WEIGHTS:
            raise ShapeMismatch(in_shape, out_shape, f"an MLP adapter would need {weights} weights")
        defaults = {"hidden": hidden}
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
