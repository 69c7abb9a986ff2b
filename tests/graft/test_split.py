"""Splitting one whole network into f and g_T (no server needed)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from graft.split import SplitError, split_network
from tests.graft.nets import ResBlock, ResNetish, trained_like


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
    with pytest.raises(SplitError, match="skip connection across the cut") as err:
        split_network(model, "block1.conv1", torch.randn(2, 3, 8, 8))
    # The error names where a cut works: the residual blocks themselves, nearest level first.
    assert "cuts that work: `stem`, `block1`, `block2`" in str(err.value)


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


class _ShapeReads(nn.Module):
    """The everyday patterns of pretrained code: shapes read at the top and used in the head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4))
        self.seg = nn.Conv2d(4, 2, 1)
        self.scale = nn.Parameter(torch.tensor([0.5, 2.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bs = x.size(0)  # EfficientNet's head: x.view(bs, -1)
        n = x.shape[0]
        h, w = x.shape[-2:]  # a segmentation head resizes back to the input's size
        gain = self.scale.exp() * 2  # computed from parameters alone, before the cut
        y = F.relu(self.body(self.stem(x)))
        y = F.interpolate(self.seg(y), size=(h, w), mode="bilinear", align_corners=False)
        y = y * gain.view(1, 2, 1, 1)
        flat = y.view(bs, -1)
        return flat.reshape(n * 2, -1)  # a value that is a multiple of the batch size


def test_shape_reads_before_the_cut_are_recomputed_in_g() -> None:
    model = _ShapeReads().eval()
    f, g = split_network(model, "body", torch.randn(2, 3, 8, 8))
    for batch in (1, 3, 7):  # g follows the features' batch size, not the example's
        x = torch.randn(batch, 3, 8, 8)
        torch.testing.assert_close(g(f(x)), model(x))
    # f stops at the cut: the segmentation head and the parameter-only gain live in g alone.
    assert not any(n.startswith(("seg", "scale")) for n, _ in f.named_parameters())
    # and g exports with a dynamic batch, as push_teacher uploads it.
    feats = f(torch.randn(3, 3, 8, 8))
    program = torch.export.export(g, (feats,), dynamic_shapes=({0: torch.export.Dim("b", min=1)},))
    x = torch.randn(5, 3, 8, 8)
    torch.testing.assert_close(program.module()(f(x)), model(x))


class _Stages(nn.Module):
    """torchvision's ResNet layout: stages as nn.Sequential of residual blocks, a flatten head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = nn.Sequential(ResBlock(8), ResBlock(8))
        self.layer2 = nn.Sequential(ResBlock(8), ResBlock(8))
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@pytest.mark.parametrize("cut", ["layer1", "layer1.0", "layer2.0"])
def test_cuts_between_residual_blocks_of_a_stage(cut: str) -> None:
    model = trained_like(_Stages())
    f, g = split_network(model, cut, torch.randn(2, 3, 8, 8))
    x = torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(g(f(x)), model(x))


def test_pretrained_efficientnet_splits_as_its_package_builds_it() -> None:
    from transplant.realworld import load_lite

    model = load_lite("lite0")  # its head flattens with x.view(bs, -1), bs read before the blocks
    f, g = split_network(model, "_blocks.10", torch.randn(2, 3, 64, 64))
    x = torch.randn(3, 3, 64, 64)
    torch.testing.assert_close(g(f(x)), model(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(SplitError, match="cuts that work: `_blocks.0`, `_blocks.1`"):
        split_network(model, "_blocks.2._depthwise_conv", torch.randn(2, 3, 64, 64))
