"""The kinds of channel behaviour an op can have, each a small class the group analysis calls.

Every tensor in the graph carries *labels*: for each dim that holds channels, an integer array
naming, position by position, the channel element found there (-1: a position no prunable
channel owns, e.g. the model's input). Elements are born as the dims of the model's weights and
buffers ("spaces"); a rule says how an op maps its inputs' labels to its output's and which
elements must be equal (``unify``) or may never be removed (``untracked``).

Which op has which behaviour is data: see :mod:`fxprune.op_table`. A rule is used in two places:

* ``propagate(ctx)`` during analysis returns the output labels (a dict ``dim -> ids``, or a
  tuple of them for ops returning tuples);
* ``rewrite(node, ctx)`` during ``finalize`` fixes literal arguments that spell out channel
  counts (``view(n, 256, 7, 7)``, ``split([32, 32])``, ``x[:, :64]``) for the pruned sizes.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import fx

Labels = dict  # dim -> np.ndarray of element ids

_MISSING = object()


def node_arg(node: fx.Node, pos: int, name: str | None = None, default: Any = _MISSING) -> Any:
    if len(node.args) > pos:
        return node.args[pos]
    if name is not None and name in node.kwargs:
        return node.kwargs[name]
    if default is _MISSING:
        raise KeyError(f"{node.name}: argument {name or pos} missing")
    return default


def set_node_arg(node: fx.Node, pos: int, name: str | None, value: Any) -> None:
    if len(node.args) > pos:
        args = list(node.args)
        args[pos] = value
        node.args = tuple(args)
    else:
        kwargs = dict(node.kwargs)
        kwargs[name] = value
        node.kwargs = kwargs


def norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def varargs(node: fx.Node, start: int, name: str) -> list:
    """``x.view(2, 3)`` and ``x.view((2, 3))`` / ``torch.reshape(x, shape=(2, 3))`` alike."""
    rest = list(node.args[start:])
    if not rest and name in node.kwargs:
        rest = [node.kwargs[name]]
    if len(rest) == 1 and isinstance(rest[0], (tuple, list, torch.Size)):
        return list(rest[0])
    return rest


class ChannelRule:
    """Base: how one op maps channel labels. Subclasses override ``propagate``."""

    kind = "rule"
    #: True when propagate itself checks arguments that are channel counts (SizeOf labels);
    #: otherwise the analysis keeps channels whose count reaches this op whole.
    checks_sizes = False

    def propagate(self, ctx) -> Labels | tuple | None:
        raise NotImplementedError

    def rewrite(self, node: fx.Node, ctx) -> None:
        """Fix literal channel counts in ``node``'s arguments after pruning (default: none)."""

    def resize(self, module, node: fx.Node, ctx) -> None:
        """Set a module's size attributes (``in_channels``...) after its tensors were sliced."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class Barrier(ChannelRule):
    """The op mixes or hides channels in a way fxprune does not model: its inputs are kept whole."""

    kind = "barrier"

    def __init__(self, reason: str):
        self.reason = reason

    def propagate(self, ctx):
        ctx.untracked_inputs(self.reason)
        return None


class Metadata(ChannelRule):
    """Reads nothing that depends on channels (``x.dim()``, ``x.dtype``)."""

    kind = "metadata"

    def propagate(self, ctx):
        return None


class SizeOf(NamedTuple):
    """The label of an int that counts channels (``x.size(1)``): pruning changes its value, so
    the analysis follows it through arithmetic to where it is used."""

    ids: np.ndarray


class ShapeRead(ChannelRule):
    """``x.size()``, ``x.size(d)``, ``x.shape``, ``x.numel()``: sizes of channel dims carry
    :class:`SizeOf` labels. Using such a number to shape a tensor holding the same channels is
    fine (``x.view(b, c // g, g, h, w)``); any other use keeps those channels whole."""

    kind = "reads the shape"

    def propagate(self, ctx):
        node, x = ctx.node, ctx.node.args[0]
        labels, shape = ctx.labels(x), ctx.shape(x)
        if shape is None:
            return None
        name = node.target if isinstance(node.target, str) else node.target.__name__
        if name == "getattr" and node.args[1] != "shape":
            return None
        if name == "numel":
            return SizeOf(np.concatenate(list(labels.values()))) if labels else None
        d = node_arg(node, 1, "dim", None) if name == "size" else None
        if d is not None:
            d = norm_dim(int(d), len(shape))
            return SizeOf(labels[d]) if d in labels else None
        return tuple(SizeOf(labels[d]) if d in labels else None for d in range(len(shape)))


def check_size_args(ctx, sizes: list, out_labels: dict, first_dim: int = 0) -> None:
    """Sizes computed from channel counts must shape a dim that holds those same channels."""
    for k, s in enumerate(sizes):
        prov = ctx.labels(s) if isinstance(s, fx.Node) else None
        if isinstance(prov, SizeOf):
            d = first_dim + k
            if d not in out_labels or not ctx.same_channels(prov.ids, out_labels[d]):
                ctx.untracked(prov.ids, "channel count used as a size of a dim without those channels")


class Elementwise(ChannelRule):
    """Output position i depends on input position i, with broadcasting (add, mul, relu, ...).

    Inputs that meet at a channel dim must hold the same channels there, so their labels are
    unified: this is what ties a residual branch's channels to its shortcut's, and a
    squeeze-excite scale to the features it multiplies.
    """

    kind = "passes through"

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
            return None
        inputs = [a for a in self.inputs(ctx.node) if ctx.shape(a) is not None]
        return broadcast_unify(ctx, inputs, out_shape, "elementwise")


def broadcast_unify(ctx, inputs: list, out_shape: tuple, what: str) -> Labels:
    nd = len(out_shape)
    result: Labels = {}
    for d in range(nd):
        present = []  # labels (or None) of inputs that are not broadcast along d
        for a in inputs:
            shape = ctx.shape(a)
            ad = d - (nd - len(shape))
            if ad < 0 or (shape[ad] == 1 and out_shape[d] != 1):
                continue
            present.append(ctx.labels(a).get(ad))
        labelled = [p for p in present if p is not None]
        if not labelled:
            continue
        if len(labelled) < len(present):
            for p in labelled:
                ctx.untracked(p, f"{what} with a tensor whose channels fxprune does not track")
        for other in labelled[1:]:
            ctx.unify(labelled[0], other, what)
        result[d] = labelled[0]
    return result


class Spatial(ChannelRule):
    """Transforms the last ``n`` (spatial) dims, keeps the others (pooling, interpolate, pad)."""

    kind = "passes through (spatial op)"

    def __init__(self, n: int | None = None):
        self.n = n  # None: every dim after (batch, channel)

    def spatial_dims(self, ctx, ndim: int) -> int:
        return ndim - 2 if self.n is None else self.n

    def propagate(self, ctx):
        x = ctx.node.args[0]
        labels, shape = ctx.labels(x), ctx.shape(x)
        out_shape = ctx.out_shape()
        if out_shape is None or len(out_shape) != len(shape):
            ctx.untracked_inputs("changes the number of dims")
            return None
        first_spatial = len(shape) - self.spatial_dims(ctx, len(shape))
        out = {}
        for d, ids in labels.items():
            if d >= first_spatial:
                ctx.untracked(ids, "a spatial op over a channel dim")
            else:
                out[d] = ids
        return out


class Pad(Spatial):
    """``F.pad``: pads as many trailing dims as the pad tuple covers."""

    def spatial_dims(self, ctx, ndim):
        return len(ctx.value(node_arg(ctx.node, 1, "pad"))) // 2


class Reduce(ChannelRule):
    """Reduces some dims (``x.mean((2, 3))``): reducing a channel dim would mix channels."""

    kind = "reduces"

    def __init__(self, dim_pos: int = 1, keepdim_pos: int = 2):
        self.dim_pos, self.keepdim_pos = dim_pos, keepdim_pos

    def propagate(self, ctx):
        node, x = ctx.node, ctx.node.args[0]
        labels, ndim = ctx.labels(x), len(ctx.shape(x))
        dims = ctx.value(node_arg(node, self.dim_pos, "dim", None))
        keepdim = bool(ctx.value(node_arg(node, self.keepdim_pos, "keepdim", False)))
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


class MixesDim(ChannelRule):
    """Elementwise except along one dim, whose positions it mixes (softmax, cumsum)."""

    kind = "mixes one dim"

    def __init__(self, dim_pos: int = 1):
        self.dim_pos = dim_pos

    def propagate(self, ctx):
        x = ctx.node.args[0]
        labels, ndim = ctx.labels(x), len(ctx.shape(x))
        d = ctx.module().dim if ctx.node.op == "call_module" else ctx.value(
            node_arg(ctx.node, self.dim_pos, "dim"))
        d = norm_dim(int(d), ndim)
        if d in labels:
            ctx.untracked(labels[d], "mixed along the channel dim")
        return {k: v for k, v in labels.items() if k != d}


class Concat(ChannelRule):
    """``torch.cat``: labels along ``dim`` are concatenated (each input keeps its offset)."""

    kind = "concatenates"

    def propagate(self, ctx):
        node = ctx.node
        tensors = [t for t in node_arg(node, 0, "tensors")]
        out_shape = ctx.out_shape()
        d = norm_dim(int(ctx.value(node_arg(node, 1, "dim", 0))), len(out_shape))
        out: Labels = {}
        pieces = [ctx.labels(t).get(d) for t in tensors]
        if any(p is not None for p in pieces):
            out[d] = np.concatenate([p if p is not None else np.full(ctx.shape(t)[d], -1)
                                     for p, t in zip(pieces, tensors)])
        for od in range(len(out_shape)):
            if od == d:
                continue
            present = [ctx.labels(t).get(od) for t in tensors]
            labelled = [p for p in present if p is not None]
            if not labelled:
                continue
            if len(labelled) < len(present):
                for p in labelled:
                    ctx.untracked(p, "concatenated with a tensor whose channels are not tracked")
            for other in labelled[1:]:
                ctx.unify(labelled[0], other, "concatenated along another dim")
            out[od] = labelled[0]
        return out


class Stack(ChannelRule):
    """``torch.stack``: a new dim in front of ``dim``; the inputs' dims must agree."""

    kind = "stacks"

    def propagate(self, ctx):
        node = ctx.node
        tensors = list(node_arg(node, 0, "tensors"))
        out_shape = ctx.out_shape()
        d = norm_dim(int(ctx.value(node_arg(node, 1, "dim", 0))), len(out_shape))
        inner = broadcast_unify(ctx, tensors, ctx.shape(tensors[0]), "stacked")
        return {(k if k < d else k + 1): v for k, v in inner.items()}


class Split(ChannelRule):
    """split / chunk / tensor_split / unbind: each output takes a slice of the labels along ``dim``.

    After pruning, the slices keep different numbers of channels, so ``rewrite`` turns the call
    into ``split`` with the new sizes.
    """

    kind = "splits"

    def __init__(self, dim_pos: int = 2, removes_dim: bool = False):
        self.dim_pos, self.removes_dim = dim_pos, removes_dim

    def _dim(self, node, ndim, ctx):
        return norm_dim(int(ctx.value(node_arg(node, self.dim_pos, "dim", 0))), ndim)

    def propagate(self, ctx):
        node, x = ctx.node, ctx.node.args[0]
        labels, shape = ctx.labels(x), ctx.shape(x)
        d = self._dim(node, len(shape), ctx)
        outs = ctx.out_meta()
        if self.removes_dim:
            if d in labels:
                ctx.untracked(labels[d], "unbound into single channels")
            rest = {(k if k < d else k - 1): v for k, v in labels.items() if k != d}
            return tuple(dict(rest) for _ in outs)
        result, start = [], 0
        for piece in outs:
            size = piece.shape[d]
            result.append({k: (v[start:start + size] if k == d else v) for k, v in labels.items()})
            if d in labels:
                ctx.keep_one_of(labels[d][start:start + size], "a split piece")
            start += size
        return tuple(result)

    def rewrite(self, node, ctx):
        x = node.args[0]
        labels = ctx.labels(x)
        if self.removes_dim:
            return
        d = self._dim(node, len(ctx.shape(x)), ctx)
        if d not in labels:
            return
        kept = ctx.kept(labels[d])
        sizes, start = [], 0
        for piece in ctx.out_meta(node):
            size = piece.shape[d]
            sizes.append(int(kept[start:start + size].sum()))
            start += size
        if node.op == "call_method":
            node.target = "split"
            node.args, node.kwargs = (x, sizes, d), {}
        else:
            node.target = torch.split
            node.args, node.kwargs = (x, sizes, d), {}


class Reshape(ChannelRule):
    """view / reshape / flatten / unflatten / squeeze / unsqueeze, worked out from the shapes.

    Dims are matched in blocks of equal size. Merging a channel dim with others repeats its
    labels (flatten -> linear: every H*W feature of a channel carries that channel's label).
    Splitting a channel dim into several (``view(n, groups, c // groups, h, w)``) keeps the
    labels on the innermost varying dim and ties together the elements that land on the same
    index there, so a pruned tensor still reshapes to the same arrangement.
    """

    kind = "reshapes"
    checks_sizes = True

    def __init__(self, sizes_from: int | None = None, unflatten: bool = False):
        self.sizes_from = sizes_from  # first positional arg that spells out sizes (view/reshape)
        self.unflatten = unflatten

    def propagate(self, ctx):
        x = ctx.node.args[0]
        in_shape, labels = tuple(ctx.shape(x)), ctx.labels(x)
        out_shape = tuple(ctx.out_shape())
        if not labels:
            self.check_sizes(ctx, {})
            return {}
        if math.prod(in_shape) != math.prod(out_shape) or 0 in in_shape:
            ctx.untracked_inputs("reshape between shapes of different sizes")
            return None
        out: Labels = {}
        for ins, outs in reshape_blocks(in_shape, out_shape):
            lab_dims = [d for d in ins if d in labels and in_shape[d] > 1]
            if not lab_dims:
                continue
            if len(lab_dims) > 1:
                for d in lab_dims:
                    ctx.untracked(labels[d], "reshape merges two channel dims")
                continue
            if not outs:
                continue
            block = [in_shape[d] for d in ins]
            axis = ins.index(lab_dims[0])
            full = np.broadcast_to(np.expand_dims(labels[lab_dims[0]],
                                                  [k for k in range(len(ins)) if k != axis]), block)
            full = full.reshape([out_shape[d] for d in outs])
            varying = [k for k in range(len(outs)) if not _constant_along(full, k)]
            if not varying:  # one channel spread over the block: keep it on its largest dim
                varying = [int(np.argmax(full.shape))]
            keep = varying[-1]
            rep = np.moveaxis(full, keep, 0).reshape(full.shape[keep], -1)
            for col in range(1, rep.shape[1]):
                ctx.unify(rep[:, 0], rep[:, col], "reshape splits a channel dim")
            out[outs[keep]] = rep[:, 0].copy()
        self.check_sizes(ctx, out)
        return out

    def check_sizes(self, ctx, out):
        node = ctx.node
        if self.unflatten:
            start = norm_dim(int(ctx.value(node_arg(node, 1, "dim"))), len(ctx.shape(node.args[0])))
            check_size_args(ctx, list(node_arg(node, 2, "sizes")), out, start)
        elif self.sizes_from is not None:
            check_size_args(ctx, varargs(node, self.sizes_from, "shape"), out)

    def rewrite(self, node, ctx):
        if self.sizes_from is None and not self.unflatten:
            return
        labels = ctx.labels(node)
        if not labels:
            return
        out_shape = ctx.shape(node)
        if self.unflatten:
            start = norm_dim(int(ctx.value(node_arg(node, 1, "dim"))), len(ctx.shape(node.args[0])))
            sizes = list(ctx.value(node_arg(node, 2, "sizes")))
            new = [_pruned_size(ctx, labels, start + i, s) for i, s in enumerate(sizes)]
            set_node_arg(node, 2, "sizes", tuple(new))
            return
        sizes = varargs(node, self.sizes_from, "shape")
        if len(sizes) != len(out_shape):
            return
        new = [s if not isinstance(s, int) or s == -1 else _pruned_size(ctx, labels, d, s)
               for d, s in enumerate(sizes)]
        if new != sizes:
            node.args = (node.args[0], *new) if node.op == "call_method" else (node.args[0], tuple(new))
            node.kwargs = {k: v for k, v in node.kwargs.items() if k != "shape"}


def _pruned_size(ctx, labels, d, size):
    return int(ctx.kept(labels[d]).sum()) if d in labels else size


def _constant_along(a: np.ndarray, axis: int) -> bool:
    first = np.take(a, [0], axis=axis)
    return bool(np.all(a == first))


def reshape_blocks(in_shape, out_shape):
    """Pair up contiguous runs of dims with equal products: ``(2, 3, 4) -> (6, 4)`` gives
    ``[([0, 1], [0]), ([2], [1])]``."""
    blocks, i, j = [], 0, 0
    while i < len(in_shape) or j < len(out_shape):
        ins, outs, pi, pj = [], [], 1, 1
        if i < len(in_shape):
            ins.append(i); pi *= in_shape[i]; i += 1
        if j < len(out_shape):
            outs.append(j); pj *= out_shape[j]; j += 1
        while pi != pj:
            if pi < pj and i < len(in_shape):
                ins.append(i); pi *= in_shape[i]; i += 1
            elif j < len(out_shape):
                outs.append(j); pj *= out_shape[j]; j += 1
            else:
                break
        blocks.append((ins, outs))
    return blocks


class Expand(ChannelRule):
    """``expand``: size-1 dims are repeated (no channels there); other dims pass through."""

    kind = "broadcasts"
    checks_sizes = True

    def propagate(self, ctx):
        x = ctx.node.args[0]
        labels, in_shape, out_shape = ctx.labels(x), ctx.shape(x), ctx.out_shape()
        lead = len(out_shape) - len(in_shape)
        out = {d + lead: v for d, v in labels.items() if in_shape[d] == out_shape[d + lead]}
        if ctx.node.target == "expand":
            check_size_args(ctx, varargs(ctx.node, 1, "size"), out)
        return out

    def rewrite(self, node, ctx):
        labels = ctx.labels(node)
        if not labels or node.target not in ("expand",):
            return
        sizes = varargs(node, 1, "size")
        new = [s if not isinstance(s, int) or s == -1 else _pruned_size(ctx, labels, d, s)
               for d, s in enumerate(sizes)]
        if new != sizes:
            node.args = (node.args[0], *new)


class Permute(ChannelRule):
    """permute / transpose / swapaxes / movedim / t: labels move with their dims."""

    kind = "permutes"

    def propagate(self, ctx):
        node, x = ctx.node, ctx.node.args[0]
        labels, ndim = ctx.labels(x), len(ctx.shape(x))
        perm = self.permutation(ctx, node, ndim)
        return {out_d: labels[in_d] for out_d, in_d in enumerate(perm) if in_d in labels}

    @staticmethod
    def permutation(ctx, node, ndim) -> list[int]:
        name = node.target if isinstance(node.target, str) else node.target.__name__
        if name == "permute":
            return [norm_dim(int(d), ndim) for d in ctx.value(varargs(node, 1, "dims"))]
        perm = list(range(ndim))
        if name in ("transpose", "swapaxes", "swapdims"):
            a = norm_dim(int(ctx.value(node_arg(node, 1, "dim0"))), ndim)
            b = norm_dim(int(ctx.value(node_arg(node, 2, "dim1"))), ndim)
            perm[a], perm[b] = perm[b], perm[a]
        elif name == "t":
            perm = perm[::-1]
        elif name in ("movedim", "moveaxis"):
            src = ctx.value(node_arg(node, 1, "source"))
            dst = ctx.value(node_arg(node, 2, "destination"))
            src = [src] if isinstance(src, int) else list(src)
            dst = [dst] if isinstance(dst, int) else list(dst)
            src = [norm_dim(s, ndim) for s in src]
            dst = [norm_dim(s, ndim) for s in dst]
            rest = [d for d in range(ndim) if d not in src]
            perm = [None] * ndim
            for s, t in zip(src, dst):
                perm[t] = s
            it = iter(rest)
            perm = [p if p is not None else next(it) for p in perm]
        return perm


class TupleItem(ChannelRule):
    """``out[i]`` on a tuple an op returned (split, max with dim, attention)."""

    kind = "selects an output"
    checks_sizes = True

    def propagate(self, ctx):
        container, idx = ctx.node.args
        labels = ctx.labels(container)
        if isinstance(labels, (tuple, list)) and isinstance(idx, int) and -len(labels) <= idx < len(labels):
            return labels[idx] if labels[idx] is not None else {}
        return {}


class Index(ChannelRule):
    """``x[...]`` with ints, slices, None and Ellipsis; tensors or lists as indices are barriers.

    A slice of a channel dim keeps the labels it covers; ``rewrite`` moves its bounds to the
    pruned positions. An integer index on a channel dim reads one channel outside any layer, so
    that channel is kept.
    """

    kind = "indexes"

    @staticmethod
    def _items(ctx, node):
        """The written index items, each with the input dims it covers."""
        x, idx = node.args
        ndim = len(ctx.shape(x))
        items = list(idx) if isinstance(idx, tuple) else [idx]
        n_real = sum(1 for i in items if i is not None and i is not Ellipsis)
        out, d = [], 0
        for item in items:
            if item is Ellipsis:
                out.append((item, list(range(d, d + ndim - n_real)))); d += ndim - n_real
            elif item is None:
                out.append((item, []))
            else:
                out.append((item, [d])); d += 1
        out.extend((slice(None), [k]) for k in range(d, ndim))
        return out

    def propagate(self, ctx):
        node, x = ctx.node, ctx.node.args[0]
        labels = ctx.labels(x)
        out, od = {}, 0
        for item, dims in self._items(ctx, node):
            if item is None:
                od += 1
            elif item is Ellipsis:
                for d in dims:
                    if d in labels:
                        out[od] = labels[d]
                    od += 1
            elif isinstance(item, int):
                if dims[0] in labels:
                    ctx.untracked(labels[dims[0]][[item]], "one channel read by index")
            elif isinstance(item, slice):
                ids = labels.get(dims[0])
                if ids is not None:
                    plain = item.step in (None, 1) and all(
                        isinstance(v, (int, type(None))) for v in (item.start, item.stop))
                    if plain:
                        out[od] = ids[item]
                        ctx.keep_one_of(ids[item], "a slice")
                    else:
                        ctx.untracked(ids, "strided or computed slice of a channel dim")
                od += 1
            else:
                for k, ids in labels.items():
                    ctx.untracked(ids, "advanced indexing (tensor or list index)")
                return {}
        return out

    def rewrite(self, node, ctx):
        x, idx = node.args
        labels = ctx.labels(x)
        if not labels:
            return
        new_items, changed = [], False
        for item, dims in self._items(ctx, node)[:len(idx) if isinstance(idx, tuple) else 1]:
            ids = labels.get(dims[0]) if len(dims) == 1 and item is not Ellipsis else None
            if ids is not None and isinstance(item, (int, slice)):
                kept = ctx.kept(ids)
                before = np.concatenate([[0], np.cumsum(kept)])
                if isinstance(item, int):
                    new = int(before[item]) if item >= 0 else -int(kept[item:].sum())
                else:
                    start, stop, _ = item.indices(len(ids))
                    new = slice(None if item.start is None else int(before[start]),
                                None if item.stop is None else int(before[stop]), item.step)
                changed |= new != item
                item = new
            new_items.append(item)
        if changed:
            node.args = (x, tuple(new_items) if isinstance(idx, tuple) else new_items[0])


class ChannelShuffle(ChannelRule):
    """``nn.ChannelShuffle(g)``: position ``j*g + r`` of the output is input ``r*(C/g) + j``."""

    kind = "shuffles"

    def propagate(self, ctx):
        x = ctx.node.args[0]
        labels = ctx.labels(x)
        if 1 not in labels:
            return dict(labels)
        g = ctx.module().groups
        blocks = labels[1].reshape(g, -1)
        for r in range(1, g):
            ctx.unify(blocks[0], blocks[r], "channel shuffle keeps groups equal")
        out = dict(labels)
        out[1] = np.repeat(blocks[0], g)
        return out


# -- layers with weights ---------------------------------------------------------------------------

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
        g, c_in, c_out = m.groups, m.in_channels, m.out_channels
        w_out = ctx.space(f"{name}.weight", 0, source=True)
        if g > 1 and c_in == g:  # depthwise (with channel multiplier c_out // c_in)
            ctx.connect(w_out.reshape(g, -1), None if x_in is None else x_in[:, None],
                        "depthwise conv", broadcast=True)
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
        new = [_pruned_size(ctx, labels, first + j, s) for j, s in enumerate(shape)]
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
