"""The benchmark world: categories, two tasks, teachers per category and a generic network.

Teachers (f_c, g_T[c][task]) are trained on their own category. The generic task modules g_S[task]
are trained over the *old* categories only, each through its own adapter h_{c,task} on top of the
fixed f_c; the *new* categories are what the transplant methods must teach g_S without changing it.
Teachers use BatchNorm, GELU and a residual block; g_S is a plain ReLU net (as in the paper).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from transplant.adapters import build_adapter, fit_adapter_config
from transplant.world_data import (
    DIGIT_TRANSFORMS,
    N_SHAPES,
    Samples,
    digits_category,
    load_digits_split,
    shapes_category,
)

TASKS = ("cls", "seg")
# The old categories' adapters the generic network is trained through: part of the world's definition,
# so they stay 1×1 stacks with an identity skip whatever fit_adapter_config's defaults become.
OLD_ADAPTER = {"kernel_size": 1, "shortcut": "identity", "normalise": False}
FEAT_C = 16
# Per size: categories, samples per category, teacher / generic training steps.
SIZES = {
    "small": {
        "n_old": 2,
        "n_new": 1,
        "n_train": 256,
        "n_unlab": 128,
        "n_test": 128,
        "steps": 120,
        "gen_steps": 150,
    },
    "full": {
        "n_old": 4,
        "n_new": 2,
        "n_train": 1024,
        "n_unlab": 512,
        "n_test": 512,
        "steps": 300,
        "gen_steps": 450,
    },
}


class ResBlock(nn.Module):
    """x + conv-BN-GELU-conv-BN(x)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1),
            nn.BatchNorm2d(c),
            nn.GELU(),
            nn.Conv2d(c, c, 3, padding=1),
            nn.BatchNorm2d(c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x + self.body(x))


def category_module(in_c: int, stride: int) -> nn.Module:
    """f_c: image (in_c, H, W) → features (16, H/stride, W/stride)."""
    return nn.Sequential(
        nn.Conv2d(in_c, FEAT_C, 3, stride=stride, padding=1),
        nn.BatchNorm2d(FEAT_C),
        nn.GELU(),
        ResBlock(FEAT_C),
    )


def task_module(task: str, n_classes: int, upsample: int, teacher: bool) -> nn.Module:
    """g: features (16, h, w) → logits (K,) for "cls" or (K+1, h·up, w·up) for "seg"."""
    norm = (lambda c: nn.BatchNorm2d(c)) if teacher else (lambda c: nn.Identity())
    act = nn.GELU if teacher else nn.ReLU
    if task == "cls":
        return nn.Sequential(
            nn.Conv2d(FEAT_C, 32, 3, padding=1),
            norm(32),
            act(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1),
            act(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, n_classes),
        )
    layers: list[nn.Module] = [
        nn.Conv2d(FEAT_C, 32, 3, padding=1),
        norm(32),
        act(),
        nn.Conv2d(32, n_classes + 1, 1),
    ]
    if upsample > 1:
        layers.append(nn.Upsample(scale_factor=upsample, mode="bilinear", align_corners=False))
    return nn.Sequential(*layers)


@dataclass
class CategoryData:
    """One category's data: labelled training pool, unlabelled inputs, test split."""

    train: Samples
    unlabelled: Samples
    """Inputs whose labels are never used by the label-free methods (kept for diagnostics)."""
    test: Samples


@dataclass
class World:
    """Everything the benchmark, the demo and the tests need."""

    name: str
    """"shapes" or "digits"."""
    seed: int
    categories: list[str]
    old_categories: list[str]
    """Categories the generic task modules were trained on (through their own adapters)."""
    new_categories: list[str]
    """Categories the generic network has never seen: transplant targets."""
    tasks: tuple[str, ...]
    n_classes: int
    teachers: dict[str, dict[str, tuple[nn.Module, nn.Module]]]
    """teachers[cat][task] = (f_cat, g_T): f_cat is shared by the category's tasks."""
    generic: dict[str, nn.Module]
    """generic[task] = g_S, fixed after training over the old categories."""
    old_adapters: dict[str, dict[str, nn.Module]]
    data: dict[str, CategoryData]
    feature_shape: tuple[int, ...]
    info: dict = field(default_factory=dict)


def _loss(task: str, logits: torch.Tensor, s: Samples) -> torch.Tensor:
    return F.cross_entropy(logits, s.labels(task))


def _batches(n: int, bs: int, steps: int, gen: torch.Generator):
    for _ in range(steps):
        yield torch.randint(0, n, (bs,), generator=gen)


def train_teacher(data: Samples, in_c: int, stride: int, n_classes: int, steps: int, seed: int):
    """f and both task heads trained jointly on one category's labelled data."""
    torch.manual_seed(seed)
    f = category_module(in_c, stride)
    heads = {t: task_module(t, n_classes, stride, teacher=True) for t in TASKS}
    params = list(f.parameters()) + [p for h in heads.values() for p in h.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for idx in _batches(len(data), 64, steps, gen):
        b = data.take(idx)
        z = f(b.x)  # (B, 16, h, w)
        loss = sum(_loss(t, heads[t](z), b) for t in TASKS)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m in (f, *heads.values()):
        m.eval()
    return f, heads


def train_generic(
    feats: dict[str, torch.Tensor], data: dict[str, Samples], n_classes: int, up: int, steps: int, seed: int
):
    """g_S[task] trained jointly with one adapter per old category on fixed features f_c(x)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cats = list(feats)
    fs = tuple(feats[cats[0]].shape[1:])
    generic = {t: task_module(t, n_classes, up, teacher=False) for t in TASKS}
    adapters = {c: {t: build_adapter(fit_adapter_config(fs, fs, **OLD_ADAPTER)) for t in TASKS} for c in cats}
    params = [p for g in generic.values() for p in g.parameters()]
    params += [p for per in adapters.values() for h in per.values() for p in h.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    for step, idx in enumerate(_batches(len(data[cats[0]]), 64, steps, gen)):
        c = cats[step % len(cats)]  # round-robin over the old categories
        b = data[c].take(idx)
        z = feats[c][idx]
        loss = sum(_loss(t, generic[t](adapters[c][t](z)), b) for t in TASKS)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m in [*generic.values(), *(h for per in adapters.values() for h in per.values())]:
        m.eval()
    return generic, adapters


def _category_samples(
    name: str, size: dict, seed: int
) -> tuple[list[str], dict[str, CategoryData], int, int, int]:
    n_cats = size["n_old"] + size["n_new"]
    if name == "shapes":
        cats, data = [f"style{i}" for i in range(n_cats)], {}
        for i, c in enumerate(cats):
            n = size["n_train"] + size["n_unlab"] + size["n_test"]
            s = shapes_category(style_seed=seed * 1000 + i, n=n, sample_seed=seed * 1000 + 500 + i)
            a, b = size["n_train"], size["n_train"] + size["n_unlab"]
            data[c] = CategoryData(s.take(slice(0, a)), s.take(slice(a, b)), s.take(slice(b, n)))
        return cats, data, 3, 2, N_SHAPES
    if name == "digits":
        tr_img, tr_y, te_img, te_y = load_digits_split(seed)
        cats, data = list(DIGIT_TRANSFORMS[:n_cats]), {}
        # New categories come last; each category sees its own shuffle of the shared train pool.
        for i, c in enumerate(cats):
            tr = digits_category(c, tr_img, tr_y)
            perm = torch.randperm(len(tr), generator=torch.Generator().manual_seed(seed + i))
            n_lab = min(size["n_train"], len(tr) - size["n_unlab"])
            data[c] = CategoryData(
                tr.take(perm[:n_lab]),
                tr.take(perm[n_lab : n_lab + size["n_unlab"]]),
                digits_category(c, te_img, te_y).take(slice(0, size["n_test"])),
            )
        return cats, data, 1, 1, 10
    raise ValueError(f"unknown world {name!r} (use 'shapes' or 'digits')")


def build_world(seed: int = 0, size: str = "small", name: str = "shapes") -> World:
    """Generate data, train the teachers and the generic task modules; deterministic for a seed."""
    cfg = SIZES[size]
    cats, data, in_c, stride, n_classes = _category_samples(name, cfg, seed)
    teachers: dict[str, dict[str, tuple[nn.Module, nn.Module]]] = {}
    for i, c in enumerate(cats):
        f, heads = train_teacher(data[c].train, in_c, stride, n_classes, cfg["steps"], seed * 100 + i)
        teachers[c] = {t: (f, heads[t]) for t in TASKS}
    old, new = cats[: cfg["n_old"]], cats[cfg["n_old"] :]
    with torch.no_grad():
        feats = {c: teachers[c]["cls"][0](data[c].train.x) for c in old}  # (N, 16, h, w) each
    generic, adapters = train_generic(
        feats, {c: data[c].train for c in old}, n_classes, stride, cfg["gen_steps"], seed
    )
    for m in generic.values():
        for p in m.parameters():
            p.requires_grad_(False)
    return World(
        name=name,
        seed=seed,
        categories=cats,
        old_categories=old,
        new_categories=new,
        tasks=TASKS,
        n_classes=n_classes,
        teachers=teachers,
        generic=generic,
        old_adapters=adapters,
        data=data,
        feature_shape=tuple(feats[old[0]].shape[1:]),
        info={"size": size, **cfg},
    )
