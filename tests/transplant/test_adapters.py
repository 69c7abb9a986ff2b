import json

import pytest
import torch

from transplant.adapters import (
    ADAPTER_ARCHS,
    AdapterConfig,
    adapter_spec,
    build_adapter,
    build_from_spec,
    fit_adapter_config,
    load_adapter,
    save_adapter,
)
from transplant.errors import ShapeMismatch


@pytest.mark.parametrize(
    "in_shape,out_shape,arch",
    [
        ((8, 6, 6), (8, 6, 6), "conv"),
        ((8, 6, 6), (4, 3, 3), "conv"),
        ((4, 3, 3), (6, 6, 6), "conv"),
        ((10,), (7,), "mlp"),
        ((4, 3, 3), (5,), "mlp"),
    ],
)
def test_fit_build_shapes(in_shape, out_shape, arch):
    cfg = fit_adapter_config(in_shape, out_shape)
    assert cfg.arch == arch
    h = build_adapter(cfg)
    assert h(torch.randn(2, *in_shape)).shape == (2, *out_shape)


@pytest.mark.parametrize("arch,shape", [("conv", (8, 5, 5)), ("mlp", (12,))])
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_near_identity_init(arch, shape, layers):
    h = build_adapter(fit_adapter_config(shape, shape, arch=arch, layers=layers))
    x = torch.randn(4, *shape)
    assert torch.allclose(h(x), x, atol=0.1)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ShapeMismatch) as e:
        fit_adapter_config((8, 6, 6), (8, 5, 5))
    assert "(8, 6, 6)" in str(e.value) and "(8, 5, 5)" in str(e.value)
    assert isinstance(e.value, ValueError)
    with pytest.raises(ShapeMismatch):
        fit_adapter_config((8, 6, 6), (8, 6), arch="conv")


@pytest.mark.parametrize("arch,in_shape,out_shape", [("conv", (8, 6, 6), (4, 3, 3)), ("mlp", (10,), (7,))])
def test_save_load_exact(arch, in_shape, out_shape):
    cfg = fit_adapter_config(in_shape, out_shape, arch=arch, layers=2, hidden=9)
    h = build_adapter(cfg)
    data, spec = save_adapter(h, cfg)
    spec = json.loads(json.dumps(spec))  # must survive JSON
    assert spec["arch"] == spec["name"] == arch
    h2 = load_adapter(data, spec)
    for (k, a), (k2, b) in zip(h.state_dict().items(), h2.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    x = torch.randn(3, *in_shape)
    assert torch.equal(h.eval()(x), h2(x))
    assert isinstance(build_from_spec(spec), torch.nn.Module)


def test_registry_is_extensible():
    ADAPTER_ARCHS["linear_test"] = lambda cfg: torch.nn.Identity()
    try:
        cfg = AdapterConfig(arch="linear_test", in_shape=(3,), out_shape=(3,))
        assert isinstance(build_from_spec(adapter_spec(cfg)), torch.nn.Identity)
    finally:
        del ADAPTER_ARCHS["linear_test"]
