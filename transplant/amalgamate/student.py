"""The student network: conv blocks with a foldable 1×1 feature-adaptation conv (FAM), and a head."""

from __future__ import annotations

import torch
from torch import nn

from transplant.amalgamate.config import StudentConfig


class StudentBlock(nn.Module):
    """conv(k×k) → FAM(1×1) → max-pool → ReLU; `pre_activation` is what the layer-wise loss sees.

    Nothing nonlinear sits between the conv and the FAM, so the FAM folds into the conv exactly. Max-pool
    commutes with ReLU (both monotone), so pooling before the ReLU gives the same output as after it while
    letting the regression target (a linear code of teacher features, with negative values) be compared to
    the pooled pre-activation.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, pool: int, fam_init: str = "identity") -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)
        self.fam: nn.Conv2d | None = nn.Conv2d(c_out, c_out, 1)
        if fam_init == "identity":
            with torch.no_grad():
                self.fam.weight.copy_(torch.eye(c_out).view(c_out, c_out, 1, 1))
                self.fam.bias.zero_()
        elif fam_init != "default":
            raise ValueError(f"fam_init must be 'identity' or 'default', not {fam_init!r}")
        self.pool = nn.MaxPool2d(pool) if pool > 1 else nn.Identity()
        self.act = nn.ReLU()

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) → (B, C_out, H/p, W/p) before the ReLU."""
        z = self.conv(x)
        if self.fam is not None:
            z = self.fam(z)
        return self.pool(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.pre_activation(x))

    @torch.no_grad()
    def fold(self) -> None:
        """Merge the FAM into the conv (W' = A·W, b' = A·b + c) and drop it; outputs are unchanged."""
        if self.fam is None:
            return
        a = self.fam.weight[:, :, 0, 0]  # (C_out, C_out)
        w = self.conv.weight  # (C_out, C_in, k, k)
        self.conv.weight.copy_(torch.einsum("oc,cikl->oikl", a, w))
        self.conv.bias.copy_(a @ self.conv.bias + self.fam.bias)
        self.fam = None


class StudentFeatures(nn.Module):
    """The category module: blocks → global average pool → (B, widths[-1])."""

    def __init__(self, cfg: StudentConfig, fam_init: str = "identity") -> None:
        super().__init__()
        chans = (cfg.input_shape[0], *cfg.widths)
        self.blocks = nn.ModuleList(
            StudentBlock(chans[i], chans[i + 1], k, p, fam_init)
            for i, (k, p) in enumerate(zip(cfg.kernel_sizes, cfg.pools, strict=True))
        )
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.pool(x).flatten(1)  # (B, C_L)

    def fold(self) -> None:
        """Fold every block's FAM into its conv."""
        for block in self.blocks:
            block.fold()


def build_head(cfg: StudentConfig, n_classes: int) -> nn.Sequential:
    """The task module: an MLP (or a single linear layer) from the student features to the logits."""
    dims = (cfg.widths[-1], *cfg.head_hidden, n_classes)
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def block_shapes(cfg: StudentConfig) -> list[tuple[int, int, int]]:
    """(C, h, w) of each block's output for one input of cfg.input_shape."""
    _, h, w = cfg.input_shape
    shapes = []
    for c, p in zip(cfg.widths, cfg.pools, strict=True):
        h, w = h // p, w // p
        if h < 1 or w < 1:
            raise ValueError(f"input {cfg.input_shape} is too small for pools {cfg.pools}")
        shapes.append((c, h, w))
    return shapes


def count_params(*modules: object) -> int | None:
    """Total parameters of the nn.Modules given; None if any is an opaque callable."""
    total = 0
    for m in modules:
        if not isinstance(m, nn.Module):
            return None
        total += sum(p.numel() for p in m.parameters())
    return total
