"""The rule base class and what every rule uses: argument access, channel-count labels."""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch import fx

from fxprune.errors import FxPruneError

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
    #: the module tensors this row's surgery slices, when a module is called as one op under it
    #: (None: the row does not say). A row that says is checked against the module's tensors:
    #: one it would leave whole that has a dim of the channel count keeps the module's channels
    #: whole, with the reason; ``row.slices = None`` on an instance skips the check (a tensor
    #: of that size every channel shares)
    #: (names as ``named_parameters``/``named_buffers`` give them)
    slices: tuple[str, ...] | None = None

    def propagate(self, ctx) -> Labels | tuple | None:
        """The channel labels of ``ctx.node``'s output: ``{dim: ids}``, one integer id per
        position of each dim that carries channels (the ids of the input positions it passes
        on), a tuple of such dicts for an op returning several tensors, or None (no channels
        come out).

        ``ctx`` is :class:`fxprune.passes.group_analysis.ChannelAnalysis`: ``ctx.node``,
        ``ctx.labels(n)`` and ``ctx.shape(n)`` of an input node, ``ctx.out_shape()``,
        ``ctx.module()`` / ``ctx.module_name()`` for a module call, ``ctx.unify(a, b, what)``
        to tie positions that must hold the same channels (an add's inputs),
        ``ctx.untracked(ids, reason)`` and ``ctx.untracked_inputs(reason)`` to keep channels
        whole with the reason ``fxprune.summary`` shows, ``ctx.space(tensor, dim)`` and
        ``ctx.layer(...)`` for a weight's channel dims; a weight row also ties its input dim
        to the activation's channels (``ctx.connect(space_ids, act_ids, what)``) and says
        where the mask goes (``ctx.mask_site(tensor, dim, row)``): see
        :class:`fxprune.rules.Conv` and :class:`fxprune.rules.Linear`, and
        :class:`fxprune.passes.group_analysis.ChannelAnalysis` for each method.
        """
        raise NotImplementedError

    def gathers_as_is(self, module) -> bool:
        """Whether ``module`` (an instance of this row's class, called as one op) computes, on a
        subset of its input's channels, that subset of its output, with nothing sized by the
        channel count: no per-channel tensor, no channel count among its settings. CUCB's
        gathered execution (:mod:`fxprune.passes.gathered`) then runs it as it is on the active
        channels; otherwise it trains the model masked, at full width. Default: False."""
        return False

    def rewrite(self, node: fx.Node, ctx) -> None:
        """Fix literal channel counts in ``node``'s arguments after pruning (default: none)."""

    def resize(self, module, node: fx.Node, ctx) -> None:
        """Set a module's size attributes (``in_channels``...) after its tensors were sliced."""

    def mask_statistics(self, node: fx.Node, gm: fx.GraphModule, masks: tuple, mask_dims: tuple) -> None:
        """The masked form of a norm: make ``node`` (whose ``propagate`` called ``ctx.stat_site``)
        compute its statistics over kept channels only. ``masks[i]`` is the node giving the
        per-position mask of the input dim that ``mask_dims[i]`` indexes within the normalized
        shape. Default: the op has no masked form, an error (its statistics over masked channels
        would differ from the pruned model's)."""
        raise FxPruneError(
            f"the rule for `{node.name}` ({type(self).__name__}) normalizes over pruned channels "
            "but has no masked form: give the row mask_statistics and unmask_statistics (see "
            "fxprune.rules.ChannelRule), call a norm fxprune masks (nn.LayerNorm, nn.GroupNorm, "
            "F.layer_norm), or keep its channels whole (fxprune.rules.Barrier(\"why\"))")

    def unmask_statistics(self, node: fx.Node, gm: fx.GraphModule) -> None:
        """Undo :meth:`mask_statistics` at finalize, before the mask nodes are erased: ``node``
        must no longer read them. Default: nothing (fxprune's masked norm modules go back to
        their classes, called with ``x`` alone, with the other wrapped modules)."""

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


def shape_labels(labels: Labels, ndim: int) -> tuple:
    """The labels of a tensor's whole shape (``x.shape``): each dim's :class:`SizeOf`, None
    where the dim holds no channels."""
    return tuple(SizeOf(labels[d]) if d in labels else None for d in range(ndim))


class ShapeRead(ChannelRule):
    """``x.size()``, ``x.size(d)``, ``x.shape``, ``x.numel()``: sizes of channel dims carry
    :class:`SizeOf` labels. Using such a number to shape a tensor holding the same channels is
    fine (``x.view(b, c // g, g, h, w)``); any other use keeps those channels whole."""

    kind = "reads the shape"

    def propagate(self, ctx):
        node, x = ctx.node, ctx.node.args[0]
        labels, shape = ctx.labels(x), ctx.shape(x)
        name = node.target if isinstance(node.target, str) else node.target.__name__
        fields = getattr(type(ctx.value(x)), "__match_args__", ())
        if name == "getattr" and isinstance(labels, tuple) and node.args[1] in fields:
            # an output of an op returning a named tuple: y.max(dim=2).values
            return labels[fields.index(node.args[1])] or {}
        if shape is None:
            return None
        if name == "getattr" and node.args[1] != "shape":
            return self.tensor_attribute(ctx, node.args[1], labels, len(shape))
        if name == "numel":
            return SizeOf(np.concatenate(list(labels.values()))) if labels else None
        d = node_arg(node, 1, "dim", None) if name == "size" else None
        if d is not None:
            d = norm_dim(int(d), len(shape))
            return SizeOf(labels[d]) if d in labels else None
        return shape_labels(labels, len(shape))

    # tensor attributes that are the tensor itself, or it with dims swapped (read through
    # getattr, the op this row owns): ``y.data`` holds y's channels, ``y.mT`` moves them
    _SAME = ("data", "real")
    _REVERSED = ("T", "H")
    _LAST_TWO_SWAPPED = ("mT", "mH")

    def tensor_attribute(self, ctx, attr: str, labels, ndim: int):
        """The labels of ``x.<attr>`` when it is a tensor (``data``, ``real``, ``T``, ``mT``);
        another tensor attribute (``grad``, ``imag``) keeps its input's channels whole, naming
        itself (break63 #3: the reason blamed an unrelated layer); a non-tensor (``dtype``,
        ``device``) has none."""
        perm = list(range(ndim))
        if attr in self._REVERSED:
            perm = perm[::-1]
        elif attr in self._LAST_TWO_SWAPPED and ndim >= 2:
            perm[-2:] = perm[-1], perm[-2]
        elif attr not in self._SAME:
            if labels and hasattr(ctx.out_meta(), "shape"):
                ctx.untracked_inputs(f"no channel rule for Tensor.{attr} at `{ctx.node.name}`")
            return None
        return {out_d: labels[in_d] for out_d, in_d in enumerate(perm) if in_d in labels}


def is_shape_label(ctx, size) -> bool:
    """Whether ``size`` is a node holding a whole shape (``y.shape``: a tuple of entries), not
    one count: a :class:`SizeOf` is a tuple too (break136 F2: ``torch.ones(y.shape[1])`` was
    read as a shape, its one count as no size, and the vector got no channels)."""
    if not isinstance(size, fx.Node):
        return False
    labels = ctx.labels(size)
    return isinstance(labels, (tuple, list)) and not isinstance(labels, SizeOf)


def check_size_args(ctx, sizes: list, out_labels: dict, first_dim: int = 0) -> None:
    """Sizes computed from channel counts must shape a dim that holds those same channels, and
    a dim that holds channels must be sized by their count (or a literal, which ``rewrite``
    sets to the kept count, or -1). ``sizes``: nodes, constants, or the :class:`SizeOf`
    labels of a shape's entries (None: a dim without channels); one node that is a whole
    shape (``z.reshape(y.shape)``) stands for its entries."""
    if len(sizes) == 1 and is_shape_label(ctx, sizes[0]):
        sizes = list(ctx.labels(sizes[0]))
    for k, s in enumerate(sizes):
        d = first_dim + k
        prov = s if isinstance(s, SizeOf) else ctx.labels(s) if isinstance(s, fx.Node) else None
        if isinstance(prov, SizeOf):
            # judged once the whole graph is seen: the dim may be tied to those channels later
            ctx.check_later(prov.ids, out_labels.get(d),
                            "channel count used as a size of a dim without those channels")
        elif (s is None or isinstance(s, fx.Node)) and d in out_labels:
            # a number computed from anything but these channels' count (a literal count times
            # the batch, another tensor's size) stays what it is once they are pruned (break63)
            ctx.untracked(out_labels[d], "a dim holding channels is sized by a number computed "
                                         "without their count")


def pruned_size(ctx, labels, d, size):
    return int(ctx.kept(labels[d]).sum()) if d in labels else size
