"""Put the masks into the graph.

Each prunable group gets a buffer ``fxprune_masks.<key>`` (ones, one entry per channel) and a
``get_attr`` node. Every layer that reads a prunable group through its weights becomes the
masked form its op-table row names (:mod:`fxprune.masks`) and receives, as an extra argument,
its per-input-channel mask (a functional ``F.conv2d(x, self.w)`` gets ``mask_weight(w, mask,
dim)`` as its weight instead): the group's buffer itself when the layer reads exactly that
group in order, otherwise a call of a ``MaskGather`` module of the bank that assembles it (concatenated groups, flatten's repeats, untracked
positions held at 1). A norm whose statistics span a prunable group becomes its row's masked
form (``mask_statistics``: statistics over kept channels only), its masks passed likewise.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import fx, nn

from fxprune.errors import FxPruneError
from fxprune.rules import node_arg, set_node_arg
from fxprune.groups import ChannelGraph
from fxprune.masks import (MaskBank, MaskGather, _InputMasked, input_masked_class, mask_weight,
                           remember_all_ones)

from .trace import HOOK_KINDS, hook_names

MASK_OWNER = "fxprune_masks"


class _MaskGraphBuilder:
    def __init__(self, gm: fx.GraphModule, channels: ChannelGraph):
        self.gm, self.ch = gm, channels
        self.bank = MaskBank({g.key: (g.name, g.size) for g in channels.groups if g.prunable})
        self.bank.train(gm.training)  # (break68 #5: it alone stayed in training mode)
        gm.add_submodule(MASK_OWNER, self.bank)
        # masks live where the model does, in its dtype (a model prepared on a GPU gets GPU masks)
        tensors = (*gm.parameters(), *gm.buffers())
        self.device = next((t.device for t in tensors), torch.device("cpu"))
        dtype = next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)
        for g in channels.groups:
            if g.prunable:
                ones = torch.ones(g.size, device=self.device, dtype=dtype)
                remember_all_ones(ones, True)  # (a masked norm's first forward need not read it)
                self.bank.register_buffer(g.key, ones)
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        self.anchor = placeholders[-1] if placeholders else None
        self.group_nodes: dict[str, fx.Node] = {}
        self.n_index = 0

    def _get_attr_at_top(self, target: str) -> fx.Node:
        g = self.gm.graph
        ctx = g.inserting_after(self.anchor) if self.anchor is not None else g.inserting_before(None)
        with ctx:
            node = g.get_attr(target)
        self.anchor = node
        return node

    def group_node(self, key: str) -> fx.Node:
        if key not in self.group_nodes:
            self.group_nodes[key] = self._get_attr_at_top(f"{MASK_OWNER}.{key}")
        return self.group_nodes[key]

    def mask_for(self, ids: np.ndarray) -> fx.Node:
        """A node computing the per-position mask of a dim whose elements are ``ids``."""
        ch = self.ch
        units = ch.units(ids)
        groups = np.where(units >= 0, ch.unit_group[np.maximum(units, 0)], -1)
        prunable = np.array([g >= 0 and ch.groups[g].prunable for g in groups.tolist()], dtype=bool)
        involved = sorted(set(groups[prunable].tolist()))
        pos = ch.unit_pos[np.maximum(units, 0)]
        if len(involved) == 1 and prunable.all():
            g = ch.groups[involved[0]]
            if len(pos) == g.size and np.array_equal(pos, np.arange(g.size)):
                return self.group_node(g.key)
        offsets, total = {}, 1
        for gi in involved:
            offsets[gi] = total
            total += ch.groups[gi].size
        index = np.zeros(len(ids), dtype=np.int64)
        for p in np.nonzero(prunable)[0]:
            index[p] = offsets[groups[p]] + pos[p]
        name = f"gather{self.n_index}"
        self.n_index += 1
        # a module of the bank, not the function on an index buffer: another tracer records
        # its call (break141 F1)
        gather = MaskGather(torch.from_numpy(index).to(self.device)).train(self.bank.training)
        self.bank.add_module(name, gather)  # in the model's mode (review143 F3, break68 #5)
        masks = [self.group_node(ch.groups[gi].key) for gi in involved]
        with self.gm.graph.inserting_after(self.anchor):
            node = self.gm.graph.call_module(f"{MASK_OWNER}.{name}", tuple(masks))
        self.anchor = node
        return node


def _warn_argument_hooks(name: str, module: nn.Module) -> None:
    """A masked layer is called as ``(input, mask)``: hooks that see the call's arguments see
    both (break43 #4: a pre-hook returning ``(x,)`` dropped the mask and the model failed)."""
    # (a forward hook, mostly reading the output, is not said: prepare's check run refuses one
    # that fails on the mask in its input, break144 F8)
    hooks = hook_names(module, [k for k in HOOK_KINDS if k[0] != "_forward_hooks"])
    if hooks:
        warnings.warn(f"`{name}` ({type(module).__name__}) has {hooks}: the prepared model calls "
                      "it as (input, mask), so such a hook gets both arguments (a pre-hook must "
                      "return both, or None; a backward hook gets a grad_input more; prepare runs "
                      "the prepared model once to check them); the finalized model "
                      "calls it as before: register such hooks after finalize",
                      UserWarning, stacklevel=4)


def _not_a_masked_form(site, module, masked) -> str:
    """break200 F4: a row's own masked class passed prepare and trained, and finalize, which
    gives only fxprune's masked forms their plain class back, failed in torch.fx."""
    row = type(site.rule).__name__
    return (f"the row {row}() of `{site.module}` ({type(module).__name__}) gives masked_class "
            f"{getattr(masked, '__name__', masked)!r}, which is not one of fxprune's masked "
            "forms (finalize could not give the layer its class back): return "
            f"fxprune.masks.input_masked_class(type(module), {site.dim}) (its own forward on the "
            "weight masked along that dim), or fxprune.masks.row_masked_class(type(module), "
            "self) with a row method masked_forward(module, x, mask)")


def insert_masks(gm: fx.GraphModule, channels: ChannelGraph) -> None:
    """Give ``gm`` a mask buffer of ones per prunable group (under ``fxprune_masks``) and make
    each op that reads a masked channel dim read it masked: a masked layer class for a conv,
    linear or norm (its input channels times the mask), a multiply elsewhere, each as its row
    in the op table says. In place; returns None. ``channels`` is :func:`analyze`'s result."""
    builder = _MaskGraphBuilder(gm, channels)
    nodes = {n.name: n for n in gm.graph.nodes}
    for site in channels.mask_sites:
        ids = channels.space_ids(site.tensor, site.dim)
        if not channels.touches_prunable(ids):
            continue
        mask = builder.mask_for(ids)
        for name in site.nodes:
            node = nodes[name]
            if name in site.functional_nodes:  # F.conv2d(x, w, ...): mask the weight argument
                weight = node_arg(node, 1, "weight")
                with gm.graph.inserting_before(node):
                    masked = gm.graph.call_function(mask_weight, (weight, mask, site.dim))
                set_node_arg(node, 1, "weight", masked)
            else:
                module = gm.get_submodule(site.module)
                if not isinstance(module, _InputMasked):  # (a module called twice: swapped once)
                    _warn_argument_hooks(site.module, module)
                    masked = (site.rule.masked_class(module) if site.rule is not None
                              else input_masked_class(type(module), site.dim))
                    if not (isinstance(masked, type) and issubclass(masked, _InputMasked)):
                        raise FxPruneError(_not_a_masked_form(site, module, masked))
                    module.__class__ = masked
                # the mask goes second; the call's other arguments (output_size) stay
                node.args = (node.args[0], mask, *node.args[1:])
    for stat in channels.stat_sites:
        if any(channels.touches_prunable(ids) for ids in stat.labels):
            node = nodes[stat.node]
            if node.op == "call_module" and not isinstance(gm.get_submodule(node.target), _InputMasked):
                # a masked norm is called as (input, *masks) too (review142 F1)
                _warn_argument_hooks(node.target, gm.get_submodule(node.target))
            masks = tuple(builder.mask_for(ids) for ids in stat.labels)
            stat.rule.mask_statistics(nodes[stat.node], gm, masks, stat.mask_dims)
    gm.graph.lint()
    gm.recompile()
