"""The operators an uploaded graph may call: pure tensor maths, nothing that reaches files, processes,
the network, other machines, the profiler or unbounded control flow.

Built from what real networks trace to (`torch.export.export`, and again after `run_decompositions()`):
Graft's own world modules and adapters, EfficientNet-Lite0/1 (whole and split at a stage), a text
transformer (embedding, `nn.TransformerEncoderLayer`, `nn.MultiheadAttention`, scaled-dot-product
attention) and a vision grab-bag (transposed convolutions, instance/group norm, pooling, interpolation).
Siblings of those operators (other ranks, other pooling kinds) are listed too. Anything not listed is
refused, including operators that do not exist yet: this is an allow-list, never a deny-list.

Names are `namespace.operator` without the overload (`aten.conv2d`, not `aten.conv2d.default`): the
overloads of one operator compute the same thing on other argument types. The in-place form of a
listed operator (`aten.relu_`) is allowed too; it writes only into tensors the graph already holds.

Deliberately absent: `aten.from_file` (maps a file as a tensor), `aten._print` and other effectful ops,
`aten.as_strided` (views addressed by raw strides), random factories other than dropout, and the
control-flow higher-order operators `while_loop`, `cond`, `map`, `scan`, `invoke_subgraph`: with them a
graph's trip count could come from its input (an endless loop in a predict thread, which no
in-process time limit can stop); without them a graph is a straight line whose cost its shapes bound.
"""

from __future__ import annotations

import torch

_CONVOLUTION = """
    convolution _convolution conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d
"""
_MATMUL = """
    linear addmm mm bmm matmul baddbmm addmv mv dot einsum outer t
"""
_NORMALISATION = """
    batch_norm native_batch_norm _native_batch_norm_legit _native_batch_norm_legit_no_training
    _native_batch_norm_legit_functional layer_norm native_layer_norm group_norm native_group_norm
    instance_norm rms_norm _fused_rms_norm linalg_vector_norm norm
"""
_ACTIVATION = """
    relu relu6 gelu silu sigmoid tanh hardtanh hardswish hardsigmoid leaky_relu elu selu celu
    softplus mish prelu _prelu_kernel glu log_sigmoid_forward threshold hardshrink softshrink
    softmax _softmax log_softmax _log_softmax _safe_softmax
"""
_ATTENTION = """
    scaled_dot_product_attention _scaled_dot_product_flash_attention_for_cpu
    _scaled_dot_product_flash_attention _scaled_dot_product_efficient_attention
    _scaled_dot_product_attention_math
"""
_POOLING = """
    max_pool1d max_pool2d max_pool3d max_pool1d_with_indices max_pool2d_with_indices
    max_pool3d_with_indices avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d
    adaptive_avg_pool3d _adaptive_avg_pool2d _adaptive_avg_pool3d adaptive_max_pool1d
    adaptive_max_pool2d adaptive_max_pool3d
"""
_DROPOUT = """
    dropout native_dropout feature_dropout alpha_dropout feature_alpha_dropout
"""
_ELEMENTWISE = """
    add sub rsub mul div true_divide floor_divide remainder fmod pow neg abs exp exp2 expm1 log log2
    log10 log1p sqrt rsqrt reciprocal square sin cos tan asin acos atan atan2 sinh cosh asinh acosh atanh
    erf erfc erfinv sign sgn floor ceil round trunc frac clamp clamp_min clamp_max clip minimum maximum
    fmin fmax lerp addcmul addcdiv logaddexp hypot nan_to_num xlogy copysign where masked_fill
    eq ne lt le gt ge logical_and logical_or logical_not logical_xor bitwise_and bitwise_or
    bitwise_not bitwise_xor isnan isinf isfinite
"""
_REDUCTION = """
    sum mean amax amin max min argmax argmin prod std var std_mean var_mean any all logsumexp cumsum
    cumprod topk sort argsort
"""
_SHAPE = """
    view _unsafe_view reshape view_as permute transpose movedim contiguous clone alias detach
    cat concat stack split split_with_sizes chunk unbind slice select narrow index index_select
    _unsafe_index gather expand expand_as flatten unflatten squeeze unsqueeze repeat tile roll flip
    pad constant_pad_nd reflection_pad1d reflection_pad2d reflection_pad3d replication_pad1d
    replication_pad2d replication_pad3d pixel_shuffle pixel_unshuffle im2col col2im unfold tril triu
    diagonal
"""
_INTERPOLATION = """
    upsample_nearest1d upsample_nearest2d upsample_nearest3d _upsample_nearest_exact1d
    _upsample_nearest_exact2d _upsample_nearest_exact3d upsample_linear1d upsample_bilinear2d
    _upsample_bilinear2d_aa upsample_bicubic2d upsample_trilinear3d grid_sampler_2d affine_grid_generator
"""
_TENSOR_MAKING = """
    zeros ones full empty empty_strided zeros_like ones_like full_like empty_like new_zeros new_ones
    new_full new_empty arange linspace eye scalar_tensor lift_fresh lift_fresh_copy _to_copy to type_as
    copy fill zero one_hot embedding item _local_scalar_dense
"""
_SHAPE_ARITHMETIC = """
    sym_size sym_stride sym_numel sym_storage_offset sym_constrain_range sym_constrain_range_for_size
    _assert_tensor_metadata _assert_scalar _assert_async
"""

ATEN: frozenset[str] = frozenset(
    f"aten.{name}"
    for group in (_CONVOLUTION, _MATMUL, _NORMALISATION, _ACTIVATION, _ATTENTION, _POOLING, _DROPOUT,
                  _ELEMENTWISE, _REDUCTION, _SHAPE, _INTERPOLATION, _TENSOR_MAKING, _SHAPE_ARITHMETIC)
    for name in group.split()
)
# Higher-order operators whose subgraph runs exactly once (the subgraph is checked like the graph).
HIGHER_ORDER: frozenset[str] = frozenset({"higher_order.wrap_with_set_grad_enabled",
                                          "higher_order.wrap_with_autocast"})
# Python callables torch.export records for tuple outputs and symbolic-shape arithmetic.
PYTHON: frozenset[str] = frozenset(
    [f"_operator.{n}" for n in "getitem add sub mul floordiv truediv mod pow neg pos abs eq ne lt le gt "
                               "ge and_ or_ not_".split()]
    + [f"torch.{n}" for n in "sym_max sym_min sym_not sym_float sym_int sym_sqrt sym_ite".split()]
    + [f"math.{n}" for n in "ceil floor trunc sqrt".split()]
)
ALLOWED: frozenset[str] = ATEN | HIGHER_ORDER | PYTHON


def is_allowed(name: str) -> bool:
    """Whether the operator `namespace.name` (no overload) may appear in an uploaded graph."""
    if name in ALLOWED:
        return True
    # In-place forms of listed aten operators (`aten.relu_`), but not dunder names.
    return name.startswith("aten.") and name.endswith("_") and not name.endswith("__") \
        and name[:-1] in ATEN


def serialized_name(target: str) -> str:
    """`aten.conv2d` from a torch.export archive's node target `torch.ops.aten.conv2d.default`."""
    if target.startswith("torch.ops."):
        parts = target[len("torch.ops."):].split(".")
        if parts[0] == "higher_order" and len(parts) == 2:
            return ".".join(parts)
        if len(parts) == 3:
            return f"{parts[0]}.{parts[1]}"
    return target


def target_name(target: object) -> str:
    """`aten.conv2d` for a graph node's target (an operator overload, a higher-order op, a function)."""
    if isinstance(target, torch._ops.OpOverload):
        return target._schema.name.replace("::", ".")
    if isinstance(target, torch._ops.HigherOrderOperator):
        return f"higher_order.{target.name()}"
    if callable(target):
        module = getattr(target, "__module__", None) or "?"
        return f"{module}.{getattr(target, '__name__', repr(target))}"
    return repr(target)
