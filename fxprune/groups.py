"""Channel groups: sets of channels that must be pruned together, and where they live.

A *space* is one dim of one weight or buffer of the model (``layer1.0.conv1.weight`` dim 0 is
the conv's output channels). Its positions are *elements*. The group analysis ties elements
that must be removed together into *units* (a unit is one prunable channel, e.g. output
channel 5 of a conv, the BN entry that normalizes it, and the input column of every layer that
reads it), and units into *groups*: the units that share a source space (a layer's output
dim) go together, so a consumer's input dim can span several groups (a concat's) without
merging them; a group is therefore not a connected component of the networkx graph of spaces,
where the concat's consumer joins its producers. A group's mask has one entry per
unit.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import torch
from torch import fx, nn

from .cost import LayerSpec
from .errors import ArgumentError, NotPreparedError


__all__ = ["ChannelGroup", "channel_groups", "state_of", "is_prepared", "is_finalized",
           "latest_pruner", "register_pruner", "PreparedState", "ChannelGraph"]


@dataclass
class Space:
    key: str  # "layer1.0.conv1.weight:0"
    tensor: str  # qualified name of the weight or buffer
    dim: int
    size: int
    start: int  # first element id; the space owns [start, start + size)
    virtual: bool = False  # a dim of a tensor the graph creates (new_zeros), not of a weight

    @property
    def ids(self) -> np.ndarray:
        return np.arange(self.start, self.start + self.size)


@dataclass
class MaskSite:
    """A layer whose weight reads a group's channels along ``dim``: SMCP masks it there."""

    module: str
    tensor: str
    dim: int
    nodes: list[str] = field(default_factory=list)
    out_dim: int = 0  # the weight dim holding the layer's output channels
    #: nodes calling a functional layer (``F.conv2d(x, self.weight)``): their weight argument
    #: is masked in the graph instead of the module's class being swapped
    functional_nodes: list[str] = field(default_factory=list)
    #: its op-table row, which names the module's masked form (``masked_class``); the row, not
    #: the class, is kept: a class made at run time for a subclass cannot be pickled by name
    rule: Any = None


@dataclass
class StatSite:
    """A norm whose statistics span channel dims: it computes them over kept channels only."""

    node: str
    act_dims: tuple[int, ...]  # dims of its input that carry channels
    mask_dims: tuple[int, ...]  # the same dims, counted within the normalized shape
    labels: list[np.ndarray]  # the input's labels on those dims
    rule: Any = None  # its op-table row, which owns its masked form (mask_statistics)


@dataclass
class LayerInfo:
    """One call of a conv or linear layer: what a cost model prices."""

    node: str
    module: str
    spec: LayerSpec
    weight: str = ""  # qualified name of its weight
    in_dim: int = 1  # weight dim of its input channels
    out_dim: int = 0  # weight dim of its output channels
    depthwise: bool = False


@dataclass
class GroupInfo:
    key: str
    name: str
    size: int
    prunable: bool
    reason: str
    sources: list[str]  # spaces that create the group's channels (layer outputs)
    spaces: list[str]
    members: list[str]  # modules (or graph tensors) that own a space of the group
    producers: list[str]  # layers whose output channels are the group's
    consumers: list[str]  # layers that read the group through masked weights
    listed: bool  # has a conv/linear in it (groups of stray graph tensors are kept internal)
    #: (positions, why): at least one of these channels must be kept (a split piece or slice)
    keep_one_of: list = field(default_factory=list)

    @property
    def kept_on_request(self) -> bool:
        """Kept whole because ``prepare(keep=...)`` names a layer of it, and for nothing else
        (the structure's own reasons are named first)."""
        return self.reason.startswith(KEPT_ON_REQUEST)


#: how a group kept by ``prepare(keep=...)`` gives its reason (followed by how the user named it)
KEPT_ON_REQUEST = "prepare(keep=...) names "


class ChannelGraph:
    """The result of the group analysis, stored in ``prepared.meta["fxprune"]``."""

    def __init__(self, spaces, graph, element_unit, unit_group, unit_pos, groups, mask_sites,
                 stat_sites, layers, unit_barrier):
        self.spaces: list[Space] = spaces
        self.space_by_key = {s.key: s for s in spaces}
        self.graph: nx.Graph = graph
        self.element_unit: np.ndarray = element_unit
        self.unit_group: np.ndarray = unit_group
        self.unit_pos: np.ndarray = unit_pos
        self.groups: list[GroupInfo] = groups
        self.group_by_key = {g.key: g for g in groups}
        self.mask_sites: list[MaskSite] = mask_sites
        self.stat_sites: list[StatSite] = stat_sites
        self.layers: list[LayerInfo] = layers
        self.unit_barrier: np.ndarray = unit_barrier

    def space_ids(self, tensor: str, dim: int) -> np.ndarray | None:
        s = self.space_by_key.get(f"{tensor}:{dim}")
        return None if s is None else s.ids

    def units(self, ids: np.ndarray) -> np.ndarray:
        """Unit of each element id (-1 stays -1)."""
        ids = np.asarray(ids)
        return np.where(ids >= 0, self.element_unit[np.maximum(ids, 0)], -1)

    def unit_kept(self, masks: dict[str, np.ndarray]) -> np.ndarray:
        """Per unit: kept (mask != 0) or not; units of groups without a mask are always kept."""
        kept = np.ones(len(self.unit_group), dtype=bool)
        group_of_key, order, starts = self._units_by_group()
        for key, m in masks.items():
            g = group_of_key[key]
            sel = order[starts[g]:starts[g + 1]]
            kept[sel] = np.asarray(m)[self.unit_pos[sel]] != 0
        return kept

    def _units_by_group(self) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
        """(group index by key, units ordered by group, each group's start in that order),
        built once: a CUCB step calls :meth:`unit_kept`, which looked each group up in the
        list and scanned every unit per group (break145 F5: 103 ms a step at 451 groups)."""
        cached = self.__dict__.get("_units_by_group_cache")
        if cached is None:  # (not in __init__: graphs pickled before have no such attribute)
            order = np.argsort(self.unit_group, kind="stable")
            starts = np.searchsorted(self.unit_group[order], np.arange(len(self.groups) + 1))
            cached = ({g.key: i for i, g in enumerate(self.groups)}, order, starts)
            self._units_by_group_cache = cached
        return cached

    def kept(self, ids: np.ndarray, unit_kept: np.ndarray) -> np.ndarray:
        u = self.units(ids)
        return np.where(u >= 0, unit_kept[np.maximum(u, 0)], True)

    def touches_prunable(self, ids: np.ndarray) -> bool:
        u = self.units(ids)
        u = u[u >= 0]
        return bool(u.size) and any(self.groups[g].prunable for g in np.unique(self.unit_group[u]))


@dataclass
class ChannelGroup:
    """A set of channels pruned together, as seen by users.

    ``mask`` is the group's mask buffer inside the prepared model (length ``size``; write into
    it in place: a 0 prunes that channel from every layer of the group). It is looked up in the
    model at each access, so a group listed before ``model.to(device)``, ``.double()`` or
    ``.half()`` (which replace buffers) still writes into the model. Groups that cannot be
    pruned have ``prunable=False``, a ``reason``, and ``mask=None``.

    ``key``: the group's id (``masks.<key>`` is its buffer); ``name``: a readable label (its
    first producer's); ``size``: its channel count; ``producers``/``consumers``: the layers
    writing and reading its channels, ``members``: every layer it touches (module paths or node
    names); ``keep_one_of`` and ``bank``: below.
    """

    key: str
    name: str
    size: int
    prunable: bool
    reason: str
    producers: list[str]
    consumers: list[str]
    members: list[str]
    #: index tensors: at least one channel of each must be kept (each is a piece of a split or
    #: a slice further down the graph; an empty piece would leave a layer with no input)
    keep_one_of: list[torch.Tensor] = field(default_factory=list)
    #: the prepared model's mask bank (None for a group that is not prunable)
    bank: torch.nn.Module | None = field(default=None, repr=False, compare=False)
    #: the analysis it came from (for :meth:`positions`)
    graph: "ChannelGraph | None" = field(default=None, repr=False, compare=False)

    def positions(self) -> dict[str, np.ndarray]:
        """Which weight rows or columns each mask entry stands for: ``{"<tensor>:<dim>":
        (n,) int64}`` for every tensor dim the group touches (a conv's ``weight:0``, the next
        conv's ``weight:1``, a BatchNorm's ``weight:0``...), each position's mask entry, or -1
        for a position of another group (a concat's consumer reads several: select
        ``pos >= 0`` before indexing the mask, where numpy would read -1 as its last entry).
        Entry j of a grouped conv's group is channel j of every conv group (``[0, 16, 32,
        48]``), a channel read through flatten -> linear its H*W columns (break205 F9: a
        criterion of one's own had to work this out)."""
        if self.graph is None:
            return {}
        gi = next(i for i, g in enumerate(self.graph.groups) if g.key == self.key)
        out = {}
        for key in self.graph.group_by_key[self.key].spaces:
            units = self.graph.units(self.graph.space_by_key[key].ids)
            inside = units >= 0
            inside[inside] = self.graph.unit_group[units[inside]] == gi
            out[key] = np.where(inside, self.graph.unit_pos[np.maximum(units, 0)], -1)
        return out

    @property
    def mask(self) -> torch.Tensor | None:
        if not self.prunable or self.bank is None:
            return None
        return mask_buffer(self.bank, self.key, self.name, self.size)

    @mask.setter
    def mask(self, value):
        if not self.prunable or self.bank is None:  # (break198 F9: g.mask[:] then failed on None)
            raise AttributeError(f"group {self.key} ({self.name}) is not prunable ({self.reason}): "
                                 "it has no mask to set; fxprune.summary(prepared) lists why "
                                 "each group is kept")
        raise AttributeError(
            f"group {self.key} ({self.name}): `g.mask = ...` would rebind this view, not the "
            "model's mask buffer; write into it instead: g.mask[:] = values (or "
            "g.mask.copy_(values))")

    @property
    def kept(self) -> int:
        """Channels the mask keeps now (nonzero entries); ``size`` for a group kept whole."""
        mask = self.mask
        return self.size if mask is None else int((mask != 0).sum())

    def __repr__(self) -> str:
        state = f"kept={self.kept}" if self.prunable else f"not prunable: {self.reason}"
        return f"ChannelGroup({self.key} {self.name!r}, size={self.size}, {state})"


def mask_buffer(bank: torch.nn.Module, key: str, name: str, size: int) -> torch.Tensor:
    """Group ``key``'s mask buffer in the model's mask bank, checked to be a tensor of
    ``size`` entries (a buffer replaced by one of another length would mask wrong channels)."""
    mask = getattr(bank, key, None)
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (size,):
        got = f"shape {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else repr(type(mask).__name__)
        raise ArgumentError(f"the mask buffer of group {key} ({name}) must be a tensor of {size} "
                            f"entries, one per channel, but it is {got}; write into the mask "
                            "(g.mask[:] = values) instead of replacing it")
    return mask


def is_prepared(model) -> bool:
    """Whether ``model`` is a GraphModule :func:`fxprune.prepare` returned (not yet finalized)."""
    return isinstance(model, fx.GraphModule) and model.meta.get("fxprune") is not None


def mark_finalized(model: fx.GraphModule) -> None:
    """Mark ``model`` as :func:`fxprune.finalize`'s result, in plain data (it loads without
    fxprune): an attribute, which ``torch.load`` restores, and ``meta``, which a deep copy
    keeps (each loses the other: break51 #2, break53 #6)."""
    model.fxprune_finalized = True
    model.meta["fxprune_finalized"] = True


def record_input_shape(model: nn.Module, shape) -> None:
    """Set ``model.fxprune_input_shape`` (what ``fxprune deploy`` reads; ``torch.save`` keeps
    it). A plain attribute only: ``copy.deepcopy`` of a GraphModule drops it, which deploy then
    says. A second copy in torch.fx's deep-copy-preserved ``meta`` (break111 F4) came back
    stale after the user set the attribute, and was lost by ``torch.load`` (review115 F2)."""
    model.fxprune_input_shape = tuple(shape)


def is_finalized(model) -> bool:
    return isinstance(model, fx.GraphModule) and bool(
        getattr(model, "fxprune_finalized", False) or model.meta.get("fxprune_finalized"))


# prepared model -> its latest pruner, both held weakly (nothing is stored on the model, which
# must pickle): fxprune.finalize asks it whether its final selection was made (break64 C). Here,
# with the model's state, so that finalize reads it without importing the methods
_LATEST_PRUNER: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def register_pruner(prepared, pruner) -> None:
    """Record ``pruner`` as the latest built on ``prepared`` (a method's constructor does)."""
    _LATEST_PRUNER[prepared] = weakref.ref(pruner)


def latest_pruner(prepared):
    """The pruner built last on ``prepared``, while it lives (None otherwise)."""
    ref = _LATEST_PRUNER.get(prepared)
    return ref() if ref is not None else None


def state_of(prepared) -> "PreparedState":
    state = prepared.meta["fxprune"] if is_prepared(prepared) else None
    if state is None:
        for attr, wrapper in (("_orig_mod", "a torch.compile'd model"), ("module", "a wrapper")):
            if is_prepared(getattr(prepared, attr, None)):  # the prepared model, wrapped
                raise NotPreparedError(
                    f"got {wrapper} ({type(prepared).__name__}) around a prepared model; pass "
                    f"the prepared model itself (.{attr}): its masks are the wrapper's too")
        if is_finalized(prepared):
            raise NotPreparedError(  # break48 #5: "got GraphModule" while holding one
                "expected the GraphModule returned by fxprune.prepare(model, example_inputs), got "
                "one fxprune.finalize returned (no masks left): pass the prepared model, or "
                "fxprune.prepare this one to prune it further")
        raise NotPreparedError(
            f"expected the GraphModule returned by fxprune.prepare(model, example_inputs), got "
            f"{type(prepared).__name__}; call fxprune.prepare first")
    return state


def mask_bank(prepared) -> nn.Module:
    """The module of a prepared model that holds its group masks as buffers (one per prunable
    group, named by the group's key). Raises NotPreparedError as :func:`state_of` does."""
    return prepared.get_submodule(state_of(prepared).mask_owner)


@dataclass
class PreparedState:
    """What ``prepare`` leaves in ``prepared.meta["fxprune"]`` for later steps."""

    channels: ChannelGraph
    rules: dict
    example_inputs: tuple
    mask_owner: str = "fxprune_masks"
    #: parameters of the model given to prepare that its traced forward never reads (an
    #: auxiliary head in eval mode), and the top-level modules holding them: not in the
    #: prepared model, so not in its counts (break120 F3)
    untraced_params: int = 0
    untraced_modules: tuple = ()
    #: the model's quantized layers: their packed int8 weights are no nn.Parameter, so no
    #: count holds them (break139 F1)
    quantized_layers: tuple = ()


def channel_groups(prepared: fx.GraphModule, *, all_groups: bool = False) -> list[ChannelGroup]:
    """The channel groups of a prepared model (those with a conv or linear in them, unless
    ``all_groups``), each with its live mask tensor (None for a group kept whole).

    Raises NotPreparedError for a model :func:`fxprune.prepare` did not return (a wrapper
    around one is named, with the attribute that holds it)."""
    state = state_of(prepared)
    masks = mask_bank(prepared)
    out = []
    for g in state.channels.groups:
        if not (g.listed or all_groups):
            continue
        if g.prunable:
            mask_buffer(masks, g.key, g.name, g.size)  # a replaced buffer is refused here
        out.append(ChannelGroup(g.key, g.name, g.size, g.prunable, g.reason,
                                list(g.producers), list(g.consumers), list(g.members),
                                [torch.from_numpy(p) for p, _ in g.keep_one_of],
                                bank=masks if g.prunable else None, graph=state.channels))
    return out
