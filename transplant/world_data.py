"""Images and labels for the benchmark world: synthetic shapes, and scikit-learn's digits.

Each *category* is a rendering style (shapes) or an image transform (digits); every sample carries
a class label (classification task) and a per-pixel label map (dense task: 0 = background, k+1 = the
pixels of an object of class k).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

N_SHAPES = 4  # square, disk, triangle, cross
SHAPES_HW = 16


@dataclass
class Samples:
    """A set of images with both tasks' labels."""

    x: torch.Tensor
    """Images (N, C, H, W) float32."""
    y_cls: torch.Tensor
    """Class labels (N,) int64."""
    y_seg: torch.Tensor
    """Per-pixel labels (N, H, W) int64, 0 = background."""

    def __len__(self) -> int:
        return self.x.shape[0]

    def take(self, idx: torch.Tensor | slice) -> Samples:
        """A subset of the samples."""
        return Samples(self.x[idx], self.y_cls[idx], self.y_seg[idx])

    def labels(self, task: str) -> torch.Tensor:
        """The labels of `task` ("cls" or "seg")."""
        return {"cls": self.y_cls, "seg": self.y_seg}[task]


def _shape_masks(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n random shapes on a 16×16 grid: masks (n, H, W) bool and classes (n,)."""
    hw = SHAPES_HW
    k = rng.integers(0, N_SHAPES, n)
    cy, cx = rng.uniform(5, hw - 5, n), rng.uniform(5, hw - 5, n)
    r = rng.uniform(3.0, 5.0, n)
    yy, xx = np.mgrid[0:hw, 0:hw].astype(np.float32)
    dy = yy[None] - cy[:, None, None]  # (n, H, W)
    dx = xx[None] - cx[:, None, None]
    rr = r[:, None, None]
    square = (np.abs(dx) < 0.8 * rr) & (np.abs(dy) < 0.8 * rr)
    disk = dx**2 + dy**2 < rr**2
    tri = (dy > -rr) & (dy < 0.8 * rr) & (np.abs(dx) < (dy + rr) * 0.55)
    cross = ((np.abs(dx) < 0.3 * rr) & (np.abs(dy) < rr)) | ((np.abs(dy) < 0.3 * rr) & (np.abs(dx) < rr))
    masks = np.stack([square, disk, tri, cross], 1)[np.arange(n), k]  # (n, H, W)
    return masks, k


def shapes_category(style_seed: int, n: int, sample_seed: int) -> Samples:
    """n images of one shapes category: its own colours, background grating and noise."""
    style = np.random.default_rng(style_seed)
    fg, bg = style.uniform(-1, 1, 3), style.uniform(-1, 1, 3)
    freq, theta = style.uniform(0.3, 1.2), style.uniform(0, np.pi)
    tex_colour, noise = style.uniform(-0.8, 0.8, 3), style.uniform(0.1, 0.3)
    rng = np.random.default_rng(sample_seed)
    masks, k = _shape_masks(rng, n)
    yy, xx = np.mgrid[0:SHAPES_HW, 0:SHAPES_HW].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    grating = np.sin(freq * (np.cos(theta) * xx + np.sin(theta) * yy)[None] + phase)  # (n, H, W)
    m = masks[:, None].astype(np.float32)  # (n, 1, H, W)
    img = m * fg[None, :, None, None] + (1 - m) * (
        bg[None, :, None, None] + grating[:, None] * tex_colour[None, :, None, None]
    )
    img = img + rng.normal(0, noise, img.shape)
    seg = np.where(masks, k[:, None, None] + 1, 0)
    return Samples(
        torch.tensor(img, dtype=torch.float32),
        torch.tensor(k, dtype=torch.int64),
        torch.tensor(seg, dtype=torch.int64),
    )


DIGIT_TRANSFORMS = ("identity", "invert", "transpose", "rot180", "flip_invert")


def load_digits_split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn digits (1797, 8×8, scaled to [0, 1]) split once into a train pool and a test set."""
    from sklearn.datasets import load_digits  # only the world needs scikit-learn

    d = load_digits()
    img = (d.images / 16.0).astype(np.float32)  # (1797, 8, 8)
    perm = np.random.default_rng(seed).permutation(len(img))
    n_test = 397
    te, tr = perm[:n_test], perm[n_test:]
    return img[tr], d.target[tr], img[te], d.target[te]


def digits_category(transform: str, images: np.ndarray, targets: np.ndarray) -> Samples:
    """Digits seen through one category's transform; the dense labels mark the ink pixels."""
    ink = images > 0.3  # (N, 8, 8), before the transform so labels follow the pixels
    if transform == "identity":
        img = images
    elif transform == "invert":
        img = 1.0 - images
    elif transform == "transpose":
        img, ink = images.transpose(0, 2, 1), ink.transpose(0, 2, 1)
    elif transform == "rot180":
        img, ink = images[:, ::-1, ::-1], ink[:, ::-1, ::-1]
    elif transform == "flip_invert":
        img, ink = 1.0 - images[:, :, ::-1], ink[:, :, ::-1]
    else:
        raise ValueError(f"unknown digits transform {transform!r}")
    seg = np.where(ink, targets[:, None, None] + 1, 0)
    x = torch.tensor(np.ascontiguousarray(img), dtype=torch.float32).unsqueeze(1) * 2 - 1  # (N, 1, 8, 8)
    return Samples(
        x,
        torch.tensor(targets, dtype=torch.int64),
        torch.tensor(np.ascontiguousarray(seg), dtype=torch.int64),
    )
