"""Split one whole network into its category module f and task module g_T at a named submodule.

The forward graph is traced with torch.fx, treating the `split_at` submodule as one opaque call, and
cut right after that call: f is everything up to and including it, g_T the rest, fed by f's output.
A network fx cannot trace (data-dependent control flow) falls back to its top-level children in order.
Either way the split is checked, g_T(f(x)) == model(x) on the example, before anything is returned.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import fx, nn


class SplitError(ValueError):
    """The network cannot be cut at `split_at` into two pieces that chain through one tensor."""


class _CutTracer(fx.Tracer):
    """Keeps the submodule to cut after as one call_module node, whatever it contains."""

    def __init__(self, split_at: str) -> None:
        super().__init__()
        self.split_at = split_at

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname == self.split_at:
            return True
        if self.split_at.startswith(qualname + "."):  # trace into the parents of the cut point
            return False
        return super().is_leaf_module(m, qualname)


def _fx_split(model: nn.Module, split_at: str) -> tuple[nn.Module, nn.Module]:
    graph = _CutTracer(split_at).trace(model)
    nodes = list(graph.nodes)
    cuts = [n for n in nodes if n.op == "call_module" and n.target == split_at]
    if not cuts:
        raise SplitError(f"`{split_at}` is never called in the network's forward; pick a submodule it uses")
    if len(cuts) > 1:
        raise SplitError(f"`{split_at}` is called {len(cuts)} times in forward; pick a submodule called once")
    cut = cuts[0]
    i = nodes.index(cut)
    before, after = nodes[: i + 1], nodes[i + 1:]

    f_graph, f_env = fx.Graph(), {}
    for node in before:
        f_env[node] = f_graph.node_copy(node, lambda n: f_env[n])
    f_graph.output(f_env[cut])

    g_graph, g_env = fx.Graph(), {}
    g_env[cut] = g_graph.placeholder("features")
    early = set(before)

    def arg(n: fx.Node) -> fx.Node:
        if n in g_env:
            return g_env[n]
        if n in early and n.op == "get_attr":  # a parameter read: fine to read again in g
            g_env[n] = g_graph.node_copy(n, arg)
            return g_env[n]
        raise SplitError(
            f"the network's forward uses `{n.name}` (computed before `{split_at}`) after it, e.g. a skip "
            f"connection across the cut; split between blocks so only `{split_at}`'s output flows on"
        )

    for node in after:
        if node.op == "output":
            g_graph.output(arg(node.args[0]) if isinstance(node.args[0], fx.Node) else
                           fx.node.map_arg(node.args[0], arg))
        else:
            g_env[node] = g_graph.node_copy(node, arg)
    return fx.GraphModule(model, f_graph), fx.GraphModule(model, g_graph)


def _children_split(model: nn.Module, split_at: str) -> tuple[nn.Module, nn.Module]:
    names = [name for name, _ in model.named_children()]
    if split_at not in names:
        raise SplitError(
            f"`{split_at}` is not a top-level child of the network (children: {', '.join(names) or 'none'})"
        )
    children = list(model.named_children())
    i = names.index(split_at)
    f = nn.Sequential(OrderedDict(children[: i + 1]))
    g = nn.Sequential(OrderedDict(children[i + 1:]))
    return f, g


def split_network(
    model: nn.Module, split_at: str, example_input: torch.Tensor
) -> tuple[nn.Module, nn.Module]:
    """(f, g_T), eval-mode copies of `model` cut after submodule `split_at`, checked on `example_input`."""
    model = copy.deepcopy(model).eval()
    if not split_at or split_at not in dict(model.named_modules()):
        names = [n for n, _ in model.named_children()]
        raise SplitError(f"the network has no submodule `{split_at}`; top-level children: {', '.join(names)}")
    if isinstance(model, nn.Sequential):
        f, g = _children_split(model, split_at) if "." not in split_at else _fx_split(model, split_at)
    else:
        try:
            f, g = _fx_split(model, split_at)
        except SplitError:
            raise
        except Exception:  # noqa: BLE001 - fx cannot trace it; a chain of children may still work
            f, g = _children_split(model, split_at)
    f.eval()
    g.eval()
    with torch.no_grad():
        want = model(example_input)
        try:
            got = g(f(example_input))
        except Exception as exc:  # noqa: BLE001 - reported as a split that does not chain
            raise SplitError(f"g_T(f(x)) fails after splitting at `{split_at}`: {exc}") from None
    if not isinstance(got, torch.Tensor) or got.shape != want.shape or not torch.allclose(
        got, want, rtol=1e-4, atol=1e-5
    ):
        raise SplitError(
            f"splitting at `{split_at}` changes the network's output (its forward is not a chain of "
            "children there); pick another split point or upload f and g_T with push_module"
        )
    return f, g
