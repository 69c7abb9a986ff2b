"""Split one whole network into its category module f and task module g_T at a named submodule.

The forward graph is traced with torch.fx, treating the `split_at` submodule as one opaque call, and
cut right after that call: f is everything up to and including it, g_T the rest, fed by f's output.

Real networks read values before the cut that they use after it: `bs = x.size(0)` at the top and
`x.view(bs, -1)` in the head, `h, w = x.shape[-2:]` for a final resize, a position table built from
parameters. Those are not data flowing past the cut, so g_T recomputes them: values that depend on the
input only through its batch size become `features.size(0) * k`, other shape values become constants
(the category module's input shape is fixed), and tensors computed from parameters alone are copied into
g_T. Which case applies is found by running the traced graph at two batch sizes. A tensor computed from
the input before the cut and used after it (a skip connection across the cut) cannot be split; the error
names the submodules where a cut would work.

A network fx cannot trace (data-dependent control flow) falls back to its top-level children in order.
Either way the split is checked, g_T(f(x)) == model(x) at two batch sizes, before anything is returned.
"""

from __future__ import annotations

import copy
import operator
from collections import OrderedDict
from typing import Any

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


class _Recorder(fx.Interpreter):
    """Runs a traced graph and keeps every node's value."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        self.values[n] = out = super().run_node(n)
        return out


def _batch_pair(example: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs of batch sizes 1 and 2 built from the example (the second row repeats the first if needed)."""
    one = example[:1]
    two = example[:2] if example.shape[0] >= 2 else torch.cat([one, one])
    return one, two


def _depends_on_input(node: fx.Node, memo: dict[fx.Node, bool]) -> bool:
    if node not in memo:
        memo[node] = node.op == "placeholder" or any(
            _depends_on_input(a, memo) for a in node.all_input_nodes
        )
    return memo[node]


def _shape_value(v1: Any, v2: Any, batch: fx.Node, where: str) -> Any:
    """What g_T uses for a shape value seen as v1 at batch 1 and v2 at batch 2."""
    if isinstance(v1, (tuple, list)) and isinstance(v2, (tuple, list)) and len(v1) == len(v2):
        return tuple(_shape_value(a, b, batch, where) for a, b in zip(v1, v2, strict=True))
    if isinstance(v1, (bool, float, str, type(None))) or isinstance(v1, torch.dtype | torch.device):
        if v1 == v2:
            return v1
    elif isinstance(v1, int) and isinstance(v2, int):
        if v1 == v2:
            return v1  # a size that does not follow the batch: fixed by the input signature
        if v2 == 2 * v1:  # k per sample: recomputed from the features' batch size
            return batch if v1 == 1 else (operator.mul, batch, v1)
    raise SplitError(
        f"the network's forward uses `{where}` (computed before the cut from the input) after it, and "
        "its value is neither a fixed size nor a multiple of the batch size"
    )


def _fx_split(
    model: nn.Module, split_at: str, example: torch.Tensor, suggest: bool = True
) -> tuple[nn.Module, nn.Module]:
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
    early = set(before)
    crossing = [n for n in before if n is not cut and any(u not in early for u in n.users)]
    memo: dict[fx.Node, bool] = {}
    from_input = [n for n in crossing if _depends_on_input(n, memo)]

    values: tuple[dict, dict] = ({}, {})
    if from_input:  # run at two batch sizes to see what each crossing value is
        traced = fx.GraphModule(model, graph)
        for x, store in zip(_batch_pair(example), values, strict=True):
            rec = _Recorder(traced)
            with torch.no_grad():
                rec.run(x)
            store.update(rec.values)
        for n in from_input:
            if isinstance(values[0][n], torch.Tensor):
                raise SplitError(
                    f"the network's forward uses the tensor `{n.name}` (computed before `{split_at}`) after "
                    f"it, e.g. a skip connection across the cut; "
                    + (_suggest(model, split_at, example) if suggest else "")
                )

    f_graph, f_env = fx.Graph(), {}
    for node in before:
        f_env[node] = f_graph.node_copy(node, lambda n: f_env[n])
    f_graph.output(f_env[cut])
    f_graph.eliminate_dead_code(_kept)  # what only g_T uses (e.g. shape reads) stays out of f

    g_graph, g_env = fx.Graph(), {}
    g_env[cut] = g_graph.placeholder("features")
    batch = None

    def materialise(v: Any) -> Any:
        nonlocal batch
        if isinstance(v, tuple) and v and v[0] is operator.mul:
            return g_graph.call_function(operator.mul, (materialise(v[1]), v[2]))
        if isinstance(v, tuple):
            return tuple(materialise(a) for a in v)
        if v is _BATCH:
            if batch is None:
                batch = g_graph.call_method("size", (g_env[cut], 0))
            return batch
        return v

    def arg(n: fx.Node) -> Any:
        if n not in g_env:
            if n in from_input:
                g_env[n] = materialise(_shape_value(values[0][n], values[1][n], _BATCH, n.name))
            else:  # parameters, buffers and what is computed from them alone: recompute in g_T
                g_env[n] = g_graph.node_copy(n, arg)
        return g_env[n]

    for node in after:
        if node.op == "output":
            g_graph.output(fx.node.map_arg(node.args[0], arg))
        else:
            g_env[node] = g_graph.node_copy(node, arg)
    g_graph.eliminate_dead_code(_kept)
    return fx.GraphModule(model, f_graph), fx.GraphModule(model, g_graph)


def _kept(node: fx.Node) -> bool:
    """Dead-code elimination keeps only inputs and outputs: a traced eval forward has no side effects."""
    return node.op in ("placeholder", "output")


_BATCH = object()  # placeholder for "the features' batch size" while mapping values


def _suggest(model: nn.Module, split_at: str, example: torch.Tensor) -> str:
    """A sentence naming the submodules near `split_at` where a cut works."""
    modules = dict(model.named_modules())
    candidates, name = [], split_at
    while name:  # the siblings of the cut point, then of each of its parents, nearest first
        parent = name.rpartition(".")[0]
        candidates += [f"{parent}.{n}" if parent else n for n, _ in modules[parent].named_children()]
        name = parent
    candidates = list(dict.fromkeys(candidates))
    working = []
    for name in candidates:
        if name == split_at:
            continue
        try:
            _fx_split(model, name, example, suggest=False)
        except Exception:  # noqa: BLE001 - any failure means this name is not a working cut
            continue
        working.append(name)
    if not working:
        return "no submodule at this level splits the network into a chain; upload f and g_T with push_module"
    shown = ", ".join(f"`{n}`" for n in working[:12]) + (" …" if len(working) > 12 else "")
    return f"cuts that work: {shown}"


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
    if isinstance(model, nn.Sequential) and "." not in split_at:
        f, g = _children_split(model, split_at)
    else:
        try:
            f, g = _fx_split(model, split_at, example_input)
        except SplitError:
            raise
        except Exception:  # noqa: BLE001 - fx cannot trace it; a chain of children may still work
            f, g = _children_split(model, split_at)
    f.eval()
    g.eval()
    for x in (example_input, *_batch_pair(example_input)):
        _check_chain(model, f, g, x, split_at)
    return f, g


def _check_chain(model: nn.Module, f: nn.Module, g: nn.Module, x: torch.Tensor, split_at: str) -> None:
    with torch.no_grad():
        want = model(x)
        try:
            got = g(f(x))
        except Exception as exc:  # noqa: BLE001 - reported as a split that does not chain
            raise SplitError(f"g_T(f(x)) fails after splitting at `{split_at}`: {exc}") from None
    if not isinstance(got, torch.Tensor) or got.shape != want.shape or not torch.allclose(
        got, want, rtol=1e-4, atol=1e-5
    ):
        raise SplitError(
            f"splitting at `{split_at}` changes the network's output (its forward is not a chain of "
            "children there); pick another split point or upload f and g_T with push_module"
        )
