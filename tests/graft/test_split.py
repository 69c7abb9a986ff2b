"""Splitting one whole network into f and g_T (no server needed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from graft.split import SplitError, split_network
from tests.graft.nets import ResNetish, trained_like


def test_split_residual_network_with_batchnorm_chains_exactly() -> None:
    model = trained_like(ResNetish())
    x = torch.randn(4, 3, 8, 8)
    f, g = split_network(model, "block1", x)
    feats = f(x)
    assert feats.shape == (4, 8, 8, 8)
    torch.testing.assert_close(g(feats), model(x))
    # f holds only the layers up to block1: block2 and the head live in g alone.
    assert not any("block2" in n or "head" in n for n, _ in f.named_parameters())
    assert any("head" in n for n, _ in g.named_parameters())


def test_split_sequential_at_a_child() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)).eval()
    x = torch.randn(5, 4)
    f, g = split_network(model, "1", x)
    assert [type(m) for m in f] == [nn.Linear, nn.BatchNorm1d]
    torch.testing.assert_close(g(f(x)), model(x))


def test_split_inside_a_residual_block_is_refused_with_a_reason() -> None:
    model = trained_like(ResNetish())
    with pytest.raises(SplitError, match="skip connection across the cut"):
        split_network(model, "block1.conv1", torch.randn(2, 3, 8, 8))


def test_unknown_split_point_names_the_children() -> None:
    with pytest.raises(SplitError, match="stem, block1, block2, head"):
        split_network(ResNetish(), "nope", torch.randn(2, 3, 8, 8))


class _Untraceable(nn.Module):
    """Data-dependent control flow: fx cannot trace it, but its forward is a chain of children."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 1e9:  # never true; only there to defeat symbolic tracing
            x = x * 0
        return self.b(self.a(x))


def test_untraceable_chain_falls_back_to_children_and_is_verified() -> None:
    model = _Untraceable().eval()
    x = torch.randn(3, 4)
    f, g = split_network(model, "a", x)
    torch.testing.assert_close(g(f(x)), model(x))
