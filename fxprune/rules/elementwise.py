"""Ops that keep channels where they are: elementwise, spatial, reductions over other dims."""
from __future__ import annotations

import operator

import numpy as np
import torch
from torch import fx

from .base import ChannelRule, Labels, node_arg, norm_dim, set_node_arg, varargs

class Elementwise(ChannelRule):
    """Output position i depends on input position i, with broadcasting (add, mul, relu, ...).

    Inputs that meet at a channel dim must hold the same channels there, so their labels are
    unified: this is what ties a residual branch's channels to its shortcut's, and a
    squeeze-excite scale to the features it multiplies.
    """

    kind = "passes through"
    slices = ()

    def gathers_as_is(self, module) -> bool:
        return True  # each element alone: an activation, a dropout (a per-channel tensor the
        # row's empty ``slices`` would have kept whole)

    def __init__(self, tensor_args: tuple[int, ...] | None = None):
        self.tensor_args = tensor_args  # positions that are tensors; None: every arg and kwarg

    def inputs(self, node: fx.Node) -> list:
        if self.tensor_args is None:
            flat = []
            for a in list(node.args) + list(node.kwargs.values()):
                flat.extend(a if isinstance(a, (list, tuple)) else [a])
            return flat
        return [node.args[i] for i in self.tensor_args if i < len(node.args)]

    def propagate(self, ctx):
        out_shape = ctx.out_shape()
        if out_shape is None:
            if isinstance(ctx.out_meta(), (tuple, list)):
                return _tuple_arithmetic(ctx)
            return None
        inputs = [a for a in self.inputs(ctx.node) if ctx.shape(a) is not None]
        # an argument that does not broadcast and has a dim of the channels' size: a per-channel
        # tensor the op lines up itself (break176 F4: a fused bias+activation Function given
        # this row took a bias[C]; x's channels passed, the bias was not sliced, finalize
        # failed). One without (a blur's kernel) stays as before (review178 F3).
        channels = out_shape[1] if len(out_shape) >= 2 else None
        odd = next((a for a in inputs if not _broadcasts(ctx.shape(a), out_shape)
                    and channels in tuple(ctx.shape(a))), None)
        if odd is not None:
            ctx.untracked_inputs(
                f"an Elementwise row on an op whose argument of shape {tuple(ctx.shape(odd))} "
                f"does not broadcast to its output {tuple(out_shape)}: the op is not "
                "elementwise, and the row does not describe it (give it a rule of its own kind, "
                "e.g. a ChannelAffine naming that tensor)")
            return {}
        return broadcast_unify(ctx, inputs, out_shape, "elementwise")


def _broadcasts(shape, out_shape) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``out_shape`` (torch's rules)."""
    try:
        return torch.broadcast_shapes(tuple(shape), tuple(out_shape)) == tuple(out_shape)
    except RuntimeError:
        return False


def _item_labels(ctx, a) -> list | None:
    """Labels of each item of a tuple operand: a node holding a tuple, or a literal tuple."""
    if isinstance(a, fx.Node):
        labels = ctx.labels(a)
        return list(labels) if isinstance(labels, (tuple, list)) else None
    if isinstance(a, (tuple, list)):
        return [ctx.labels(v) if isinstance(v, fx.Node) else {} for v in a]
    return None


def _tuple_arithmetic(ctx):
    """``y.split(6, 1) + (z,)`` and ``pieces * 2``: the items' labels, joined or repeated;
    any other op on tuples keeps the channels it touches whole."""
    node = ctx.node
    a, b = (list(node.args) + [None, None])[:2]
    items = None
    if node.target in (operator.add, operator.iadd):
        left, right = _item_labels(ctx, a), _item_labels(ctx, b)
        items = left + right if left is not None and right is not None else None
    elif node.target in (operator.mul, operator.imul):
        labels, n = _item_labels(ctx, a), ctx.value(b)
        if labels is None:  # 2 * pieces
            labels, n = _item_labels(ctx, b), ctx.value(a)
        items = labels * n if labels is not None and isinstance(n, int) else None
    if items is None or len(items) != len(ctx.out_meta()):
        ctx.untracked_inputs("an op on tuples fxprune does not follow")
        return None
    return tuple(items)


def broadcast_unify(ctx, inputs: list, out_shape: tuple, what: str) -> Labels:
    nd = len(out_shape)
    result: Labels = {}
    for d in range(nd):
        present = []  # labels (or None) of inputs that are not broadcast along d
        unknown = None  # an input without labels there
        for a in inputs:
            shape = ctx.shape(a)
            ad = d - (nd - len(shape))
            if ad < 0 or (shape[ad] == 1 and out_shape[d] != 1):
                continue
            if shape[ad] != out_shape[d]:  # a row that misdescribes its op (a GLU given
                # Elementwise(): 16 channels in, 8 out) broke the next layer, unnamed (break47 #4)
                ids = ctx.labels(a).get(ad)
                if ids is not None:
                    ctx.untracked(ids, f"{what} op whose dim {d} has {out_shape[d]} positions "
                                       f"where its input has {shape[ad]}: not elementwise there")
                continue
            present.append(ctx.labels(a).get(ad))
            if present[-1] is None:
                unknown, unknown_dim = a, ad
        labelled = [p for p in present if p is not None]
        if not labelled:
            continue
        if len(labelled) < len(present):
            expanded = (isinstance(unknown, fx.Node) and unknown.op == "call_method"
                        and unknown.target in ("expand", "repeat"))
            # channels meeting a dim of a tensor whose channels are elsewhere (a (C, 1, 1)
            # column against the batch dim: review142 F6)
            elsewhere = isinstance(unknown, fx.Node) and not expanded and ctx.carries_channels(unknown)
            lost = None if expanded or elsewhere else ctx.where_lost(unknown)
            for p in labelled:  # (an expand to a literal count: break59 #1 named only the op here)
                ctx.untracked(p, f"{what} with a tensor whose channels fxprune does not track"
                              + (f" (`{unknown.name}`: {unknown.target} of a size-1 dim to a fixed "
                                 "count; broadcasting, or expand_as(y), follows the pruning)"
                                 if expanded else
                                 f" (channels meet dim {unknown_dim} of `{unknown.name}`, which holds "
                                 "none: a channel-sized dim broadcast against another dim)"
                                 if elsewhere else f" (they were dropped: {lost})" if lost else ""))
        for other in labelled[1:]:
            ctx.unify(labelled[0], other, what)
        result[d] = labelled[0]
    return result


class Spatial(ChannelRule):
    """Transforms the last ``n`` (spatial) dims, keeps the others (pooling, interpolate, pad)."""

    kind = "passes through (spatial op)"
    slices = ()

    def gathers_as_is(self, module) -> bool:
        return True  # pools, upsampling, spatial pads: each channel alone

    def __init__(self, n: int | None = None):
        self.n = n  # None: every dim after (batch, channel)

    def spatial_dims(self, ctx, ndim: int) -> int:
        return ndim - 2 if self.n is None else self.n

    def propagate(self, ctx):
        x = ctx.node.args[0]
        labels, shape = ctx.labels(x), ctx.shape(x)
        out_shape, meta = ctx.out_shape(), ctx.out_meta()
        pair = (isinstance(meta, tuple) and len(meta) == 2 and shape is not None
                and all(getattr(m, "shape", None) is not None and len(m.shape) == len(shape)
                        for m in meta))
        if pair:  # a max pool's values and indices (return_indices=True), per channel both
            return (self._kept(ctx, labels, shape),) * 2
        if out_shape is None or len(out_shape) != len(shape):
            # (break163 F4: a pool's (values, indices) pair was said to change the dims)
            ctx.untracked_inputs("changes the number of dims" if out_shape is not None
                                 else "returns what fxprune does not follow")
            return None
        return self._kept(ctx, labels, shape)

    def _kept(self, ctx, labels, shape) -> dict:
        first_spatial = len(shape) - self.spatial_dims(ctx, len(shape))
        out = {}
        for d, ids in labels.items():
            if d >= first_spatial:
                ctx.untracked(ids, "a spatial op over a channel dim")
            else:
                out[d] = ids
        return out


class Unpool(Spatial):
    """``max_unpool``: each channel's values go to the positions its indices name. The values and
    the indices (a max pool's pair) hold the same channels, so their labels are unified, as an
    add's inputs are (SegNet's decoder ties each unpooled feature map to its encoder's)."""

    kind = "passes through (unpooling)"

    def propagate(self, ctx):
        x, indices = ctx.node.args[0], node_arg(ctx.node, 1, "indices", None)
        shape, out_shape = ctx.shape(x), ctx.out_shape()
        if (shape is None or out_shape is None or len(out_shape) != len(shape)
                or not isinstance(indices, fx.Node) or ctx.shape(indices) != shape):
            ctx.untracked_inputs("unpools what fxprune does not follow (values and indices "
                                 "of different shapes)")
            return None
        return self._kept(ctx, broadcast_unify(ctx, [x, indices], shape, "unpooling"), shape)


class Pad(ChannelRule):
    """``F.pad``: spatial padding keeps channels; constant padding of a channel dim is a concat
    with constant channels (CIFAR ResNet's "option A" shortcut ``F.pad(x, (0, 0, 0, 0, p, p))``).

    The padded positions get channels of their own (no weight holds them): an add ties them to the
    other branch's channels, and pruning those prunes the padded positions too, so ``rewrite``
    sets the pad amounts to the kept counts. Other modes (reflect, replicate) and negative pads
    (crops) on a channel dim copy or drop channels: kept whole.
    """

    kind = "pads"
    slices = ()

    @staticmethod
    def _args(ctx, node):
        pad = list(ctx.value(node_arg(node, 1, "pad")))
        mode = ctx.value(node_arg(node, 2, "mode", "constant"))
        return pad, mode

    def propagate(self, ctx):
        node, x = ctx.node, ctx.node.args[0]
        labels, ndim = ctx.labels(x), len(ctx.shape(x))
        pad, mode = self._args(ctx, node)
        out = {}
        for d, ids in labels.items():
            k = ndim - 1 - d  # F.pad lists the last dim first
            before, after = (pad[2 * k], pad[2 * k + 1]) if 2 * k + 1 < len(pad) else (0, 0)
            if before == after == 0:
                out[d] = ids
            elif mode != "constant" or before < 0 or after < 0:
                ctx.untracked(ids, f"{mode} padding or cropping of a channel dim")
            else:
                parts = [ctx.virtual_space(f"{node.name}.before", d, before) if before else ids[:0], ids,
                         ctx.virtual_space(f"{node.name}.after", d, after) if after else ids[:0]]
                out[d] = np.concatenate(parts)
        return out

    def rewrite(self, node, ctx):
        pad, mode = self._args(ctx, node)
        ndim, new = len(ctx.shape(node.args[0])), list(pad)
        for j in range(len(pad)):
            d = ndim - 1 - j // 2
            ids = ctx.ch.space_ids(f"{node.name}.{'before' if j % 2 == 0 else 'after'}", d)
            if ids is not None:
                new[j] = int(ctx.kept(ids).sum())
        if new != pad:
            set_node_arg(node, 1, "pad", tuple(new))


class Reduce(ChannelRule):
    """Reduces some dims (``x.mean((2, 3))``): reducing a channel dim would mix channels."""

    kind = "reduces"
    slices = ()

    def __init__(self, dim_pos: int = 1, keepdim_pos: int = 2):
        self.dim_pos, self.keepdim_pos = dim_pos, keepdim_pos

    def propagate(self, ctx):
        return self._reduced(ctx, ctx.out_shape())

    def _reduced(self, ctx, out_shape):
        """The output's labels, ``out_shape`` its shape (None: not known)."""
        node, x = ctx.node, ctx.node.args[0]
        labels, ndim = ctx.labels(x), len(ctx.shape(x))
        dims = ctx.value(node_arg(node, self.dim_pos, "dim", None))
        if isinstance(dims, bool):  # torch.std(x, True): that is ``unbiased``, every dim reduced
            dims = None
        # the output's rank says it, whatever the overload's positions (std(x, 1, True): unbiased)
        keepdim = (len(out_shape) == ndim if out_shape is not None
                   else bool(ctx.value(node_arg(node, self.keepdim_pos, "keepdim", False))))
        if isinstance(dims, (list, tuple)) and not dims:
            # sum/mean(dim=()) reduce every dim (an empty list is torch's old "all"); the shapes
            # say which an op did
            dims = None if out_shape is None or tuple(out_shape) != tuple(ctx.shape(x)) else []
        if dims is None:
            reduced = set(range(ndim))
        else:
            reduced = {norm_dim(d, ndim) for d in (dims if isinstance(dims, (list, tuple)) else [dims])}
        out, shift = {}, 0
        for d in range(ndim):
            if d in reduced:
                if d in labels:
                    ctx.untracked(labels[d], "reduced over (would mix channels)")
                shift += 0 if keepdim else 1
            elif d in labels:
                out[d - shift] = labels[d]
        return out


class ReducePair(Reduce):
    """A reduction returning two tensors of one shape: ``torch.max/min/median(x, dim)`` (values
    and indices), ``var_mean``, ``std_mean``, ``aminmax``; each holds the channels a
    :class:`Reduce` of those dims keeps (PointNet's ``torch.max(y, 2)[0]`` kept
    its conv whole). Without a dim, max/min/median return one tensor, reduced over all; given
    a second tensor, ``torch.max(a, b)`` is elementwise."""

    def propagate(self, ctx):
        meta = ctx.out_meta()
        # (a single tensor's TensorMeta is a tuple too: its items have no shape)
        if isinstance(meta, tuple) and meta and all(hasattr(m, "shape") for m in meta):
            labels = self._reduced(ctx, meta[0].shape)
            return tuple(dict(labels) for _ in meta)
        if len(ctx.node.args) > 1 and isinstance(ctx.node.args[1], fx.Node):  # max(a, b)
            return Elementwise().propagate(ctx)
        return super().propagate(ctx)


class MixesDim(ChannelRule):
    """Elementwise except along one dim, whose positions it mixes (softmax, cumsum)."""

    kind = "mixes one dim"
    slices = ()

    def __init__(self, dim_pos: int = 1, default_dim: int | None = None,
                 reason: str = "mixed along the channel dim"):
        self.dim_pos, self.default_dim, self.reason = dim_pos, default_dim, reason

    def propagate(self, ctx):
        x = ctx.node.args[0]
        labels, ndim = ctx.labels(x), len(ctx.shape(x))
        if ctx.node.op == "call_module":
            d = ctx.module().dim
        elif self.default_dim is None:
            d = ctx.value(node_arg(ctx.node, self.dim_pos, "dim"))
        else:
            d = ctx.value(node_arg(ctx.node, self.dim_pos, "dim", self.default_dim))
        if d is None:  # softmax & co. without a dim: torch's implicit choice (F._get_softmax_dim)
            d = 0 if ndim in (0, 1, 3) else 1
        d = norm_dim(int(d), ndim)
        if d in labels:
            ctx.untracked(labels[d], self.reason)
        return {k: v for k, v in labels.items() if k != d}


def _dim_set(dims, ndim: int) -> set[int]:
    """One dim or a list of them (as torch.roll / torch.flip take them), made non-negative."""
    return {norm_dim(int(d), ndim) for d in (dims if isinstance(dims, (list, tuple)) else [dims])}


class Flip(ChannelRule):
    """``torch.flip(x, dims)`` / ``x.flip(*dims)`` / ``fliplr`` / ``flipud``: the flipped dims'
    positions come in reverse order. Along a channel dim that is a fixed reordering of the
    channels (the reverse of the kept ones, once pruned), so their labels are reversed and
    nothing is kept whole."""

    kind = "flips dims"
    slices = ()

    def __init__(self, dims: tuple[int, ...] | None = None):
        self.dims = dims  # fliplr / flipud: fixed dims

    def propagate(self, ctx):
        x = ctx.node.args[0]
        labels, ndim = ctx.labels(x), len(ctx.shape(x))
        dims = _dim_set(self.dims if self.dims is not None else ctx.value(varargs(ctx.node, 1, "dims")), ndim)
        return {d: ids[::-1].copy() if d in dims else ids for d, ids in labels.items()}


class Roll(ChannelRule):
    """``torch.roll(x, shifts, dims)``: each rolled dim's positions move cyclically (Swin's
    shifted windows roll H and W); the others keep their channels. Rolled along a channel dim,
    or flattened (``dims=None``), the positions a channel lands at depend on the count kept:
    those channels are kept whole."""

    kind = "rolls dims"
    slices = ()

    def propagate(self, ctx):
        x = ctx.node.args[0]
        labels, ndim = ctx.labels(x), len(ctx.shape(x))
        dims = ctx.value(node_arg(ctx.node, 2, "dims", None))
        if dims is None or dims == ():
            for ids in labels.values():
                ctx.untracked(ids, "rolled flat (torch.roll without dims)")
            return {}
        dims = _dim_set(dims, ndim)
        for d in dims & set(labels):
            ctx.untracked(labels[d], "rolled along a channel dim")
        return {k: v for k, v in labels.items() if k not in dims}
