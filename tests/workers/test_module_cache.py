"""The worker's cache of loaded modules: reuse, one job per instance, nothing changed by a job survives."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from support.world import FEAT_SHAPE, X_SHAPE, tiny_nets
from transplant import TrainConfig, run_transplant
from transplant.artifacts import load_module, save_module
from transplant.compose import parameter_bytes
from workers.module_cache import ModuleCache, cache_key


class Loader:
    """Counts loads; each load is a new instance of the same small net."""

    def __init__(self, make=lambda: nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))) -> None:
        self.make, self.calls = make, 0

    def __call__(self) -> nn.Module:
        self.calls += 1
        torch.manual_seed(0)
        return self.make().eval()


def test_a_module_is_loaded_once_and_reused() -> None:
    cache, load = ModuleCache(1 << 20), Loader()
    with cache.borrow("k", load) as first:
        pass
    with cache.borrow("k", load) as second:
        assert second is first
    assert load.calls == 1
    assert cache.stats() | {"bytes": 0} == {
        "entries": 1, "bytes": 0, "max_bytes": 1 << 20, "hits": 1, "misses": 1, "dropped": 0
    }


def test_two_jobs_at_once_never_share_an_instance() -> None:
    cache, load = ModuleCache(1 << 20), Loader()
    with cache.borrow("k", load) as a, cache.borrow("k", load) as b:
        assert a is not b
    assert load.calls == 2 and cache.stats()["entries"] == 2  # both kept for the next two jobs


def test_a_failed_job_leaves_its_module_out() -> None:
    cache, load = ModuleCache(1 << 20), Loader()
    with pytest.raises(RuntimeError), cache.borrow("k", load):
        raise RuntimeError("the engine failed")
    assert cache.stats()["entries"] == 0
    with cache.borrow("k", load):
        pass
    assert load.calls == 2


def test_buffers_written_by_a_forward_are_put_back() -> None:
    cache, load = ModuleCache(1 << 20), Loader()
    with cache.borrow("k", load) as module:
        before = {k: v.clone() for k, v in module.state_dict().items()}
        module.train()  # like a program exported in train mode: BatchNorm updates its statistics
        module(torch.randn(8, 4))
        module.eval()
        assert not torch.equal(module[1].running_mean, before["1.running_mean"])
    with cache.borrow("k", load) as again:
        assert again is module
        for key, value in again.state_dict().items():
            assert torch.equal(value, before[key]), key


def test_a_written_parameter_drops_the_instance() -> None:
    cache, load = ModuleCache(1 << 20), Loader()
    with cache.borrow("k", load) as module, torch.no_grad():
        module[0].weight.add_(1.0)
    assert cache.stats()["entries"] == 0 and cache.stats()["dropped"] == 1
    with cache.borrow("k", load) as fresh:
        assert fresh is not module


def test_least_recently_used_modules_go_beyond_the_bound() -> None:
    one = Loader()()
    size = parameter_bytes(one) + sum(b.numel() * b.element_size() for b in one.buffers())
    cache = ModuleCache(2 * size)
    for key in ("a", "b", "c"):
        with cache.borrow(key, Loader()):
            pass
    assert cache.stats()["entries"] == 2 and cache.stats()["bytes"] == 2 * size
    load = Loader()
    with cache.borrow("a", load):  # the oldest was dropped
        pass
    assert load.calls == 1
    with cache.borrow("c", load):  # the newest was kept
        pass
    assert load.calls == 1


def test_key_names_bytes_format_and_spec() -> None:
    assert cache_key("sha/ab", "torch_export", None) != cache_key("sha/ab", "torchscript", None)
    spec, same_spec = {"a": 1, "b": 2}, {"b": 2, "a": 1}
    assert cache_key("sha/ab", "safetensors", spec) == cache_key("sha/ab", "safetensors", same_spec)


def test_a_reused_export_gives_the_same_adapter_as_a_fresh_load(tmp_path) -> None:
    """Two transplants with one seed: the second on cached f, g_T, g_S learns the identical adapter."""
    f, g_t, g_s = tiny_nets()
    paths = []
    for name, net, shape in (("f", f, X_SHAPE), ("gt", g_t, FEAT_SHAPE), ("gs", g_s, FEAT_SHAPE)):
        path = tmp_path / f"{name}.pt2"
        path.write_bytes(save_module(net, torch.zeros(2, *shape), "torch_export"))
        paths.append(path)
    cache = ModuleCache(1 << 24)
    x = torch.randn(16, *X_SHAPE)
    train = TrainConfig(epochs=2, seed=3, batch_size=8, val_fraction=0.0, device="cpu")
    adapters, loads = [], []

    def loader(path):
        def load():
            loads.append(path.name)
            return load_module(path, "torch_export")
        return load

    for _ in range(2):
        with cache.borrow("f", loader(paths[0])) as fm, cache.borrow("gt", loader(paths[1])) as gtm, \
                cache.borrow("gs", loader(paths[2])) as gsm:
            result = run_transplant(fm, gtm, gsm, x, method="back_distillation", train=train)
        adapters.append(result.adapter.state_dict())
    assert loads == ["f.pt2", "gt.pt2", "gs.pt2"]  # the second run loaded nothing
    assert adapters[0].keys() == adapters[1].keys()
    for key in adapters[0]:
        assert torch.equal(adapters[0][key], adapters[1][key]), key
