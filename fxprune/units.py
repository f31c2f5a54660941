"""A flat numbering of every prunable channel, and where each layer reads and writes them.

Pruning methods work on one vector over all prunable channels (group by group, in
``channel_groups`` order): masks, importance and keep decisions are slices of it. ``-1`` marks
a position no prunable group owns (always kept).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx, nn

from .cost import LayerSpec
from .errors import ArgumentError
from .groups import ChannelGraph, GroupInfo, mask_bank, mask_buffer, state_of
from .masks import remember_all_ones


def host_to_device(t: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``t`` (on the host) on ``device`` without waiting: to a CUDA device through pinned
    memory with ``non_blocking``, which queues the copy behind the stream's work (a copy from
    pageable memory may synchronize; torch keeps the pinned block until the copy has run).
    Any other pair of devices copies as ``.to`` does (review140 F4, review142 F8: a
    device-to-host copy must not be non-blocking, its result is read at once)."""
    device = torch.device(device)
    if t.device.type == "cpu" and device.type == "cuda":
        return t.pin_memory().to(device, dtype, non_blocking=True)
    return t.to(device, dtype)


def share_kept(fraction: float, size: int) -> int:
    """The fewest of ``size`` channels that keep ``fraction`` of them: rounded up (a float's
    last bits not counted: 0.3 of 10 is 3), at least 1."""
    return max(1, math.ceil(round(fraction * size, 9)))


def floor_picks(floors, scores: np.ndarray) -> list[int]:
    """The positions that meet every part's floor (``floors``: ``(positions, need)`` pairs),
    each part taking its best by ``scores`` (as many as its need, of those with a finite
    score where it has that many). Parts are served smallest first and count what a part
    inside them took, so a layer's piece and a slice of it need no more than the piece
    (review212 R1: 20 of 32 channels for floors that 16 meet): the fewest where parts are
    nested or apart, as a model's are. Returned part by part in the parts' own order, each
    part's by score (so equal scores fall as they did when each part took one)."""
    # each part's positions best first, ranked once for both passes
    ranked = [(positions[np.argsort(-scores[positions], kind="stable")].tolist(), need,
               int(np.isfinite(scores[positions]).sum())) for positions, need in floors]
    chosen: set[int] = set()
    for best_first, need, finite in sorted(ranked, key=lambda part: len(part[0])):
        short = min(need, max(1, finite)) - sum(p in chosen for p in best_first)
        for best in best_first:
            if short <= 0:
                break
            if best not in chosen:
                chosen.add(best)
                short -= 1
    picks, listed = [], set()
    for best_first, _, _ in ranked:
        for p in best_first:
            if p in chosen and p not in listed:
                listed.add(p)
                picks.append(p)
    return picks


class UnitIndex:
    """The prepared model's prunable channels numbered flat, group after group. ``min_kept``
    (a fraction in [0, 1]): every group keeps at least that share of its positions, and every
    layer's part of a group (a concat's piece, a weight dim holding some of its channels: the
    group's ``keep_one_of`` sets) that share of the part, each rounded up
    (:meth:`piece_floors`); :meth:`ranking` reports the fewest that meets them all."""

    def __init__(self, prepared: fx.GraphModule, min_kept: float = 0.0):
        state = state_of(prepared)
        ch: ChannelGraph = state.channels
        self.channels = ch
        self.groups: list[GroupInfo] = [g for g in ch.groups if g.prunable]
        sizes = np.array([g.size for g in self.groups], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.n = int(self.offsets[-1])
        group_number = {g.key: i for i, g in enumerate(self.groups)}
        gi = np.array([group_number.get(ch.groups[g].key, -1) for g in ch.unit_group], dtype=np.int64)
        self._unit_flat = np.where(gi >= 0, self.offsets[np.maximum(gi, 0)] + ch.unit_pos, -1)
        #: channels one unit is in its producer's output (more than 1 when a grouped conv ties
        #: position j of every group, or a depthwise conv multiplies channels)
        self.unit_channels = [self._channels_per_unit(g) for g in self.groups]
        self.min_kept = float(min_kept)
        #: the fewest positions each group keeps by ``min_kept`` (1 at 0: no layer is emptied)
        self.min_counts = self._min_counts(min_kept)

    def _min_counts(self, min_kept: float) -> list[int]:
        return [share_kept(min_kept, g.size) for g in self.groups]

    def with_floor(self, min_kept: float) -> "UnitIndex":
        """This index with another ``min_kept`` (a shallow copy: the arrays are shared)."""
        other = copy.copy(self)
        other.min_kept = float(min_kept)
        other.min_counts = self._min_counts(min_kept)
        return other

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        # an index pickled (with its pruner) before min_kept: no floor but the one channel
        if "min_counts" not in self.__dict__:
            self.min_counts = self._min_counts(0.0)
        # one pickled before the floor held per layer too (break210 F1): per group only, as
        # the run it belongs to began
        self.__dict__.setdefault("min_kept", 0.0)

    def _channels_per_unit(self, group: GroupInfo) -> int:
        for key in group.sources[:1]:
            space = self.channels.space_by_key[key]
            units = np.unique(self.channels.units(space.ids))
            return max(1, space.size // max(len(units), 1))
        return 1

    def group_slice(self, i: int) -> slice:
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def flat(self, ids: np.ndarray) -> np.ndarray:
        """Flat channel index of each element id (-1: not prunable)."""
        units = self.channels.units(np.asarray(ids))
        return np.where(units >= 0, self._unit_flat[np.maximum(units, 0)], -1)

    def space_flat(self, tensor: str, dim: int) -> np.ndarray | None:
        ids = self.channels.space_ids(tensor, dim)
        return None if ids is None else self.flat(ids)

    def mask_tensors(self, prepared: fx.GraphModule) -> list[torch.Tensor]:
        bank = mask_bank(prepared)
        return [mask_buffer(bank, g.key, g.name, g.size) for g in self.groups]

    def masks(self, prepared: fx.GraphModule) -> torch.Tensor:
        """Every group's mask, flat, on the CPU in float64 (a float64 model's fractional masks
        saved in a pruner state come back to the bit)."""
        tensors = [t.detach().double() for t in self.mask_tensors(prepared)]
        if not tensors:
            return torch.zeros(0, dtype=torch.float64)
        if len({t.device for t in tensors}) == 1:  # one copy to the host, not one per group
            return torch.cat(tensors).cpu()  # (break166 F4)
        return torch.cat([t.cpu() for t in tensors])

    def set_masks(self, prepared: fx.GraphModule, flat: torch.Tensor | np.ndarray) -> None:
        """Write the flat vector of every prunable group's masks (length :attr:`n`, groups in
        order) into the prepared model's mask buffers. Raises ValueError on another length."""
        flat = (flat.detach() if isinstance(flat, torch.Tensor)
                else torch.as_tensor(np.asarray(flat, dtype=np.float64)))
        if tuple(flat.shape) != (self.n,):
            raise ArgumentError(f"set_masks takes one mask per prunable channel, a vector of length "
                                f"{self.n}; got shape {tuple(flat.shape)}")
        on_host, moved = flat.device.type == "cpu", {}
        with torch.no_grad():
            for i, t in enumerate(self.mask_tensors(prepared)):
                if (t.device, t.dtype) not in moved:  # one copy to the masks' device, not one
                    # blocking copy per group (review140 F4: CUCB writes every step)
                    moved[t.device, t.dtype] = (host_to_device(flat, t.device, t.dtype) if on_host
                                                else flat.to(t.device, t.dtype))
                t.copy_(moved[t.device, t.dtype][self.group_slice(i)])
                if on_host:  # known here: a masked norm's all-ones check need not read it back
                    remember_all_ones(t, bool((flat[self.group_slice(i)].to(t.dtype) == 1).all()))

    def piece_floors(self, i: int) -> list[tuple[np.ndarray, int]]:
        """Group ``i``'s parts that a layer holds (its ``keep_one_of`` sets: a split piece, a
        slice, a conv writing or reading some of the group's channels), each with the fewest of
        its positions kept: ``min_kept``'s share of it rounded up, at least 1. (break210 F1:
        with the floor per group alone, a concat piece's conv went from 16 channels to 1 at
        ``min_kept=0.5``.)"""
        return [(positions, share_kept(self.min_kept, len(positions)))
                for positions, _ in self.groups[i].keep_one_of]

    def ranking(self, i: int, scores: np.ndarray) -> tuple[np.ndarray, int]:
        """Group ``i``'s channels, most important first, and the fewest that may be kept
        (``min_kept``'s count, or more).

        The best channels of every part a layer holds (:meth:`piece_floors`: as many as its
        floor, of those with a finite score where it has that many) are moved to the front, so
        keeping the top ``k >= min_k`` never empties a piece nor takes one below its floor.
        """
        order = np.argsort(-scores, kind="stable")
        front = floor_picks(self.piece_floors(i), scores)
        if not front:
            return order, self.min_counts[i]
        front = sorted(front, key=lambda p: -scores[p])
        rest = order[~np.isin(order, front)]
        return (np.concatenate([np.array(front, dtype=order.dtype), rest]),
                max(len(front), self.min_counts[i]))


@dataclass
class ConsumerWeight:
    """A weight that reads prunable channels along ``dim`` (SMCP's masked input channels)."""

    module: str
    layer: nn.Module  # the module holding the weight, as ``layer.<attr>``
    attr: str
    dim: int
    out_dim: int  # the weight dim of the layer's outputs (0; 1 for a transposed conv)
    in_flat: torch.Tensor  # position along dim -> flat channel (-1: not prunable)
    out_flat: torch.Tensor  # position along out_dim -> flat channel (-1: not prunable)
    built: nn.Parameter  # the weight when the pruner was built

    @property
    def param(self) -> nn.Parameter:
        """The weight the layer holds now: read at each use, since
        ``load_state_dict(assign=True)`` (or ``.to()`` under torch's overwrite setting) puts
        new Parameter objects on the layer (break68 #2: a pruner built before saw no
        gradients again, and blamed the training loop). A weight torch made a computed
        attribute since (``torch.nn.utils.prune``, a parametrization: break69 F2) is no
        Parameter of the layer's: the one of the build is read, as before."""
        param = self.layer._parameters.get(self.attr)
        if param is not None:
            return param
        if not any(p is self.built for p in self.layer.parameters()):
            # weight_norm's parametrization trains two new tensors: the build's weight would
            # get no gradient and the layer's scores would be left out, silently (break71 #1)
            from .errors import FxPruneError
            raise FxPruneError(
                f"the weight of `{self.module}` is no longer a parameter the model trains (a "
                "parametrization such as weight_norm was put on it after the pruner was built); "
                "put it on before fxprune.prepare (the layer is then kept whole), or remove it")
        return self.built


def consumer_weights(prepared: fx.GraphModule, index: UnitIndex) -> list[ConsumerWeight]:
    out = []
    for site in index.channels.mask_sites:
        in_flat = index.space_flat(site.tensor, site.dim)
        if in_flat is None or not (in_flat >= 0).any():
            continue
        param = prepared.get_parameter(site.tensor)
        path, _, attr = site.tensor.rpartition(".")
        out_flat = index.space_flat(site.tensor, site.out_dim)
        if out_flat is None:
            out_flat = np.full(param.shape[site.out_dim], -1)
        out.append(ConsumerWeight(site.module, prepared.get_submodule(path), attr, site.dim,
                                  site.out_dim,
                                  torch.as_tensor(in_flat, device=param.device),
                                  torch.as_tensor(out_flat, device=param.device), param))
    return out


@dataclass
class CostedLayer:
    """One conv/linear call and which flat channels set its input and output widths."""

    spec: LayerSpec
    out_flat: np.ndarray  # output positions (weight dim 0)
    in_flat: np.ndarray | None  # weight dim 1 positions; None for depthwise (input = output)
    in_factor: int  # channels per weight-dim-1 position (groups for a grouped conv)
    mult: int  # depthwise channel multiplier
    out_factor: int = 1  # channels per output position (groups for a grouped transposed conv)

    def widths(self, kept: np.ndarray) -> tuple[int, int]:
        """(c_in, c_out) when ``kept[flat]`` says which prunable channels stay."""
        c_out = self.out_factor * _count(self._positions[0], kept)
        if self.in_flat is None:
            return c_out // self.mult, c_out
        return self.in_factor * _count(self._positions[1], kept), c_out

    def read_positions(self, kept: np.ndarray) -> int:
        """Kept positions of the dim the layer reads: its input's weight dim, or a depthwise
        conv's output (which follows its input)."""
        return _count(self._positions[0 if self.in_flat is None else 1], kept)

    @functools.cached_property
    def _positions(self):
        """Per side (output, input): positions that always stay, and the flat channels of the
        others (split once: the allocator asks for widths thousands of times per solve)."""
        return tuple(None if flat is None else (int((flat < 0).sum()), flat[flat >= 0], len(flat))
                     for flat in (self.out_flat, self.in_flat))


def reachable_widths(layer: CostedLayer) -> tuple[tuple[int, int, int] | None,
                                                   tuple[int, int, int] | None]:
    """The input and output widths ``layer`` can take, each as ``(fixed, unit, n)``: the width
    is ``fixed + unit * k`` for ``k`` of its ``n`` prunable channels kept (``n == 0``: always
    ``fixed``, the dense width). A linear reading a flattened ``C x H x W`` map has ``unit``
    ``H * W``. None where the widths are not of that form (grouped convs, channels repeated
    unevenly); a depthwise conv's input is None (it follows the output).

    Latency tables time only these widths (a classifier's 1000 outputs never shrink)."""
    def widths(flat, factor):
        if flat is None:
            return None
        prunable = flat[flat >= 0]
        if prunable.size == 0:
            return factor * len(flat), 0, 0
        repeats = np.unique(prunable, return_counts=True)[1]
        if factor != 1 or (repeats != repeats[0]).any():
            return None
        return int((flat < 0).sum()), int(repeats[0]), len(repeats)

    return widths(layer.in_flat, layer.in_factor), widths(layer.out_flat, layer.out_factor)


def _count(positions: tuple[int, np.ndarray, int], kept: np.ndarray) -> int:
    fixed, prunable, total = positions
    if not kept.size:
        return total
    return fixed + int(np.count_nonzero(kept[prunable]))


def specs_now(prepared: nn.Module, layers) -> list[LayerSpec]:
    """The layers' specs (``LayerInfo.spec``, made at ``prepare``) with the floating dtype
    their weights hold now: a model cast since (``pm.half()``, ``pm.double()``) is priced and
    timed at its dtype now (break42 #3: a float32 latency table priced it silently)."""
    tensors = dict(prepared.named_parameters(remove_duplicate=False))
    tensors.update(prepared.named_buffers(remove_duplicate=False))
    out = []
    for layer in layers:
        w = tensors.get(layer.weight)
        now = str(w.dtype).removeprefix("torch.") if w is not None and w.is_floating_point() else None
        spec = layer.spec
        out.append(spec if now is None or now == spec.dtype else dataclasses.replace(spec, dtype=now))
    return out


def costed_layers(index: UnitIndex, prepared: nn.Module | None = None) -> list[CostedLayer]:
    """Every conv/linear call as a :class:`CostedLayer`; with ``prepared``, at the dtype its
    weights hold now (:func:`specs_now`)."""
    layers = []
    specs = (specs_now(prepared, index.channels.layers) if prepared is not None
             else [layer.spec for layer in index.channels.layers])
    for layer, spec in zip(index.channels.layers, specs):
        mult = spec.out_channels // max(spec.in_channels, 1)
        if layer.depthwise and layer.in_dim == 0:  # transposed: outputs repeat their input's flat
            in_flat = index.space_flat(layer.weight, 0)
            layers.append(CostedLayer(spec, np.repeat(in_flat, mult), None, 1, mult))
        elif layer.depthwise:
            layers.append(CostedLayer(spec, index.space_flat(layer.weight, layer.out_dim), None, 1, mult))
        else:
            out_flat = index.space_flat(layer.weight, layer.out_dim)
            in_flat = index.space_flat(layer.weight, layer.in_dim)
            in_factor = spec.groups if layer.in_dim == 1 else 1
            out_factor = spec.groups if layer.out_dim == 1 else 1
            layers.append(CostedLayer(spec, out_flat, in_flat, in_factor, 1, out_factor))
    return layers
