"""Layers with weights: convs and linears read and write channels; norms follow them."""
from __future__ import annotations

import torch
from torch import fx

from .base import ChannelRule, check_size_args, node_arg, pruned_size, set_node_arg

class Conv(ChannelRule):
    """Conv1d/2d/3d: reads dim 1 through ``weight[:, i]``, writes new channels ``weight[o]``.

    groups == 1: input channels are the weight's dim 1 (masked: SMCP prunes inputs).
    depthwise (groups == in_channels): output channel ``o`` is input ``o // mult``, so the
    group passes through (its mask goes on the next layer that mixes channels).
    other groups: every group must keep the same count, so position ``j`` of each group is tied
    to position ``j`` of every other group, on both sides.
    """

    kind = "conv (reads and writes channels)"

    def propagate(self, ctx):
        m, name = ctx.module(), ctx.module_name()
        x = ctx.node.args[0]
        labels, shape = ctx.labels(x), ctx.shape(x)
        cdim = len(shape) - len(m.kernel_size) - 1  # unbatched inputs have no batch dim
        for d, ids in labels.items():
            if d != cdim:
                ctx.untracked(ids, "spatial dim of a conv")
        x_in = labels.get(cdim)
        g, c_in = m.groups, m.in_channels
        w_out = ctx.space(f"{name}.weight", 0, source=True)
        if g > 1 and c_in == g:  # depthwise (with channel multiplier c_out // c_in)
            ctx.connect(w_out.reshape(g, -1), None if x_in is None else x_in[:, None], "depthwise conv")
        else:
            w_in = ctx.space(f"{name}.weight", 1)
            per_group = x_in.reshape(g, -1) if x_in is not None else None
            for b in range(g):
                ctx.connect(w_in, None if per_group is None else per_group[b], "conv input")
            blocks = w_out.reshape(g, -1)
            for b in range(1, g):
                ctx.unify(blocks[0], blocks[b], "grouped conv keeps groups equal")
            ctx.mask_site(f"{name}.weight", 1)
        if m.bias is not None:
            ctx.unify(ctx.space(f"{name}.bias", 0), w_out, "conv bias")
        ctx.layer("conv")
        return {cdim: w_out}

    def resize(self, m, node, ctx):
        out = m.weight.shape[0]
        if m.groups > 1 and m.in_channels == m.groups:
            mult = m.out_channels // m.in_channels
            m.in_channels = m.groups = out // mult
        else:
            m.in_channels = m.weight.shape[1] * m.groups
        m.out_channels = out


class Linear(ChannelRule):
    """nn.Linear: reads the last dim through ``weight[:, i]``, writes ``weight[o]``."""

    kind = "linear (reads and writes channels)"

    def propagate(self, ctx):
        name = ctx.module_name()
        x = ctx.node.args[0]
        labels, last = ctx.labels(x), len(ctx.shape(x)) - 1
        w_out, w_in = ctx.space(f"{name}.weight", 0, source=True), ctx.space(f"{name}.weight", 1)
        ctx.connect(w_in, labels.get(last), "linear input")
        ctx.mask_site(f"{name}.weight", 1)
        if ctx.module().bias is not None:
            ctx.unify(ctx.space(f"{name}.bias", 0), w_out, "linear bias")
        ctx.layer("linear")
        out = {d: v for d, v in labels.items() if d != last}
        out[last] = w_out
        return out

    def resize(self, m, node, ctx):
        m.out_features, m.in_features = m.weight.shape


class ChannelAffine(ChannelRule):
    """Per-channel statistics or affine along dim 1 (BatchNorm, InstanceNorm, PReLU)."""

    kind = "per-channel"

    def __init__(self, tensors: tuple[str, ...]):
        self.tensors = tensors

    def propagate(self, ctx):
        m, name = ctx.module(), ctx.module_name()
        x = ctx.node.args[0]
        labels, shape = ctx.labels(x), ctx.shape(x)
        cdim = 1 if len(shape) > 1 else 0
        for t in self.tensors:
            value = getattr(m, t, None)
            if isinstance(value, torch.Tensor) and value.ndim == 1 and value.numel() == shape[cdim] > 1:
                ctx.connect(ctx.space(f"{name}.{t}", 0), labels.get(cdim), f"{type(m).__name__}.{t}")
        return dict(labels)

    def resize(self, m, node, ctx):
        x = node.args[0]
        n = ctx.pruned_size(x, 1 if len(ctx.shape(x)) > 1 else 0)
        for attr in ("num_features", "num_parameters"):
            if hasattr(m, attr) and getattr(m, attr) > 1:
                setattr(m, attr, n)


class LayerNorm(ChannelRule):
    """LayerNorm over the last dims: its statistics mix those dims' channels, so when they carry
    channels the norm is masked (statistics over kept channels only), and weight/bias follow."""

    kind = "normalizes over channels"

    def normalized(self, ctx):
        m = ctx.module()
        return tuple(m.normalized_shape), {"weight": m.weight, "bias": m.bias}

    def propagate(self, ctx):
        x = ctx.node.args[0]
        labels, ndim = ctx.labels(x), len(ctx.shape(x))
        shape, params = self.normalized(ctx)
        first = ndim - len(shape)
        for key, p in params.items():
            if p is None:
                continue
            for j in range(len(shape)):
                if shape[j] > 1:
                    ctx.connect(self.param_space(ctx, key, j), labels.get(first + j), "layer norm affine")
        masked = tuple(j for j in range(len(shape)) if first + j in labels)
        if masked:
            ctx.stat_site(tuple(first + j for j in masked), masked)
        return dict(labels)

    def param_space(self, ctx, key, j):
        return ctx.space(f"{ctx.module_name()}.{key}", j)

    def resize(self, m, node, ctx):
        x = node.args[0]
        ndim, k = len(ctx.shape(x)), len(m.normalized_shape)
        m.normalized_shape = tuple(ctx.pruned_size(x, d) for d in range(ndim - k, ndim))


class FunctionalLayerNorm(LayerNorm):
    """``F.layer_norm(x, shape, weight, bias, eps)`` with weight/bias read from the graph."""

    checks_sizes = True

    def propagate(self, ctx):
        out = super().propagate(ctx)
        shape = node_arg(ctx.node, 1, "normalized_shape")
        sizes = [shape] if isinstance(shape, fx.Node) else list(shape)
        check_size_args(ctx, sizes, out, len(ctx.shape(ctx.node.args[0])) - len(sizes))
        return out

    def normalized(self, ctx):
        node = ctx.node
        shape = ctx.value(node_arg(node, 1, "normalized_shape"))
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        return shape, {"weight": node_arg(node, 2, "weight", None), "bias": node_arg(node, 3, "bias", None)}

    def param_space(self, ctx, key, j):
        return ctx.labels(self.normalized(ctx)[1][key]).get(j)

    def rewrite(self, node, ctx):
        x = node.args[0]
        labels, ndim = ctx.labels(x), len(ctx.shape(x))
        shape = ctx.value(node_arg(node, 1, "normalized_shape"))
        shape = [shape] if isinstance(shape, int) else list(shape)
        first = ndim - len(shape)
        new = [pruned_size(ctx, labels, first + j, s) for j, s in enumerate(shape)]
        if new != shape:
            set_node_arg(node, 1, "normalized_shape", tuple(new))


class GroupNorm(ChannelRule):
    """GroupNorm: statistics per group of channels, so every group keeps the same count (position
    ``j`` of each group is tied across groups) and the norm is masked."""

    kind = "normalizes over channel groups"

    def propagate(self, ctx):
        m, name = ctx.module(), ctx.module_name()
        x = ctx.node.args[0]
        labels = ctx.labels(x)
        if 1 in labels:
            blocks = labels[1].reshape(m.num_groups, -1)
            for b in range(1, m.num_groups):
                ctx.unify(blocks[0], blocks[b], "group norm keeps groups equal")
            ctx.stat_site((1,), (0,))
        for t in ("weight", "bias"):
            if getattr(m, t, None) is not None:
                ctx.connect(ctx.space(f"{name}.{t}", 0), labels.get(1), "group norm affine")
        return dict(labels)

    def resize(self, m, node, ctx):
        m.num_channels = ctx.pruned_size(node.args[0], 1)
