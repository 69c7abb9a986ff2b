"""Tiny fixed networks shared by the transplant tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn


def tiny_nets(seed: int = 0, act: type[nn.Module] = nn.GELU):
    """f: (3, 6, 6) → (4, 6, 6); g_T, g_S: (4, 6, 6) → 3 logits (BatchNorm + act in g_T)."""
    torch.manual_seed(seed)
    f = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), act())
    g_t = nn.Sequential(
        nn.Conv2d(4, 5, 3, padding=1), nn.BatchNorm2d(5), act(), nn.Flatten(), nn.Linear(5 * 36, 3)
    )
    g_s = nn.Sequential(nn.Conv2d(4, 5, 1), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 36, 3))
    for m in (f, g_t, g_s):
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):  # non-trivial running stats so eval mode matters
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
        m.eval()
    return f, g_t, g_s


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture
def nets():
    return tiny_nets()
