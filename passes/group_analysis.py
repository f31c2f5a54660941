"""Find the channel groups.

Walks the graph once in topological order. Every weight or buffer dim a rule touches becomes a
*space* (a node of a networkx graph) whose positions are fresh element ids; each node's output
gets labels (per channel dim, the element at each position) from its rule in
:data:`fxprune.op_table.CHANNEL_RULES`. Rules unify elements that must go together (an edge
between their spaces, carrying the index mapping) and mark elements that must stay. Afterwards
units are the classes of unified elements, and groups the units tied through the spaces that
produce them (a layer's output dim): a consumer's input dim may span several groups (a concat's)
without merging them, so a group is not a connected component of the graph of spaces.
"""
from __future__ import annotations

import collections
import dataclasses
import operator

import networkx as nx
import numpy as np
import torch
from torch import fx, nn
from torch.nn.utils import parametrize

from fxprune.errors import ArgumentError, FxPruneError, described
from fxprune.rules import Barrier, Elementwise, SizeOf
from fxprune.rules.layers import _WeightLayer
from fxprune.cost import LayerSpec
from fxprune.groups import (KEPT_ON_REQUEST, ChannelGraph, GroupInfo, LayerInfo, MaskSite, Space,
                            StatSite)
from fxprune.op_table import (CHANNEL_RULES, INDEX, QUANTIZATION_WAY_OUT, TUPLE_ITEM, describe,
                              quantization_stage)

from .autograd_function import function_of
from .shape_prop import NodeFacts, TensorMeta
from .size_probe import input_dependent_dims


def module_rule(cls: type, extra_rules: dict | None = None):
    """The row for a module class: its own, else its nearest base's when the class does not
    override ``forward`` (``class MyConv(nn.Conv2d): pass`` is a Conv2d). A subclass with its own
    ``forward`` has no row (it is traced through, see :mod:`fxprune.passes.trace`)."""
    for base in cls.__mro__:
        row = (extra_rules or {}).get(base)
        if row is None:
            row = CHANNEL_RULES.get(base)
        if row is not None:
            return row if base is cls or cls.forward is base.forward else None
    return None


def lookup_rule(node: fx.Node, gm: fx.GraphModule, extra_rules: dict | None = None):
    """The channel rule for ``node`` (None: no rule, the op is a barrier)."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        row = module_rule(type(m), extra_rules)
        if isinstance(row, _WeightLayer) and type(m) not in (extra_rules or {}):
            # weight_norm / spectral_norm: the weight is computed from other tensors at each
            # call; a parametrized bias too (break43 #6: finalize set the sliced bias onto it)
            computed = [name for name in ("weight", "bias") if parametrize.is_parametrized(m, name)
                        or (name == "weight" and not isinstance(m._parameters.get(name), nn.Parameter))]
            if computed:
                what = " and ".join(computed)
                return Barrier(f"`{node.target}` ({type(m).__name__}) computes its {what} "
                               "(weight_norm, spectral_norm or another parametrization); remove it "
                               "first (torch.nn.utils.parametrize.remove_parametrizations, or "
                               "torch.nn.utils.remove_weight_norm) to prune these channels")
        return row
    key = node.target
    function = function_of(node)
    if function is not None:  # a custom autograd Function: its class's row
        row = (extra_rules or {}).get(function) or CHANNEL_RULES.get(function)
        return row if row is not None else Barrier(
            f"no channel rule for the custom autograd Function {function.__module__}."
            f"{function.__qualname__} (called as one op, its backward kept); if it acts element "
            f"by element, pass rules={{{function.__name__}: fxprune.rules.Elementwise()}}")
    if extra_rules and key in extra_rules:
        return extra_rules[key]
    if isinstance(key, type) and issubclass(key, tuple) and hasattr(key, "_fields"):
        # not an op with channels: "no channel rule for Out; add one" misled (break39 #5)
        return Barrier(f"packed into the namedtuple {key.__name__}, whose fields fxprune does "
                       "not follow (a model output is kept whole anyway)")
    if node.target is operator.getitem:
        container = node.args[0].meta.get("fxprune_value") if isinstance(node.args[0], fx.Node) else None
        return INDEX if isinstance(container, TensorMeta) else TUPLE_ITEM
    try:
        return CHANNEL_RULES.get(key)
    except TypeError:  # unhashable target
        return None


class _UnionFind:
    """Union-find over element ids, batched: :meth:`union` records pairs of id arrays, and
    :meth:`roots` resolves them at once with numpy (a Python loop per element pair was most of
    the analysis: ViT-H/14 has 10^6 elements). Each class's root is its oldest (smallest) id,
    so units keep their first owner's order."""

    def __init__(self):
        self.size = 0
        self._pairs: list[tuple[np.ndarray, np.ndarray]] = []
        self._roots: np.ndarray | None = None

    def add(self, n: int) -> int:
        start, self.size, self._roots = self.size, self.size + n, None
        return start

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Elements ``a[i]`` and ``b[i]`` are one (int arrays of equal length, ids >= 0)."""
        self._pairs.append((a, b))
        self._roots = None

    def roots(self) -> np.ndarray:
        """``(size,)`` int64: each element's root, the smallest id of its class."""
        if self._roots is None:
            self._roots = min_label_components(self.size, self._pairs)
        return self._roots


def min_label_components(n: int, pairs) -> np.ndarray:
    """The connected components of the graph on ``0..n-1`` whose edges are the pairs
    ``(a[i], b[i])`` of ``pairs`` (a list of equal-length int array pairs): ``(n,)`` int64, each
    node's smallest connected node. Min-label propagation over the edges, each round followed
    by pointer jumping (``label = label[label]``), until every edge joins equal labels."""
    label = np.arange(n, dtype=np.int64)
    if not pairs:
        return label
    a = np.concatenate([np.asarray(x, dtype=np.int64).ravel() for x, _ in pairs])
    b = np.concatenate([np.asarray(y, dtype=np.int64).ravel() for _, y in pairs])
    while True:
        la, lb = label[a], label[b]
        differ = la != lb
        if not differ.any():
            return label
        low = np.minimum(la[differ], lb[differ])
        # a label only falls, and always to a node of the same component: at the fixed point
        # each component holds one label, which is then its smallest node
        np.minimum.at(label, la[differ], low)
        np.minimum.at(label, lb[differ], low)
        while True:
            jumped = label[label]
            if np.array_equal(jumped, label):
                break
            label = jumped


class ChannelAnalysis(NodeFacts):
    """Runs the rules over a shape-propagated GraphModule; the ``ctx`` every rule receives."""

    def __init__(self, gm: fx.GraphModule, extra_rules: dict | None = None,
                 keep: dict[str, str] | None = None):
        self.gm, self.extra_rules, self.keep = gm, extra_rules or {}, dict(keep or {})
        self.modules = dict(gm.named_modules())
        self.uf = _UnionFind()
        self.spaces: list[Space] = []
        self.space_by_key: dict[str, Space] = {}
        self.starts: list[int] = []
        self.graph = nx.Graph()
        self.marks: list[tuple[np.ndarray, str]] = []
        self.sources: set[str] = set()
        self.keep_one: list[tuple[np.ndarray, str]] = []
        self.mask_sites: dict[str, MaskSite] = {}
        self.stat_sites: list[StatSite] = []
        self.layers: list[LayerInfo] = []
        self.deferred: list[tuple] = []
        self.node: fx.Node | None = None
        self.lost: dict[fx.Node, str] = {}  # node -> the first reason it dropped channels for

    # -- what rules read ------------------------------------------------------------------------
    def module(self):
        return self.modules[self.node.target]

    def module_name(self) -> str:
        return self.node.target

    def size_follows_inputs(self, node: fx.Node, dim: int) -> bool | None:
        """Whether ``node``'s size along ``dim`` changes with the inputs' sizes (H*W in a
        flatten), not fixed by the model (a channel shuffle's groups); None when unknown."""
        if not hasattr(self, "_input_dependent"):  # fake runs of the graph, only when asked
            self._input_dependent = input_dependent_dims(self.gm)
        entry = (self._input_dependent or {}).get(node.name)
        if entry is None:
            return None
        moved, complete = entry
        return True if dim in moved else False if complete else None

    # -- what rules do ---------------------------------------------------------------------------
    def space(self, tensor: str, dim: int, *, source: bool = False) -> np.ndarray:
        """Element ids of one dim of a weight or buffer (created on first use). ``source``: the
        dim creates channels (a layer's output), which is what defines a group."""
        key = f"{tensor}:{dim}"
        if source:
            self.sources.add(key)
        s = self.space_by_key.get(key)
        if s is None:
            size = self._tensor(tensor).shape[dim]
            s = Space(key, tensor, dim, size, self.uf.add(size))
            self.spaces.append(s)
            self.space_by_key[key] = s
            self.starts.append(s.start)
            self.graph.add_node(key, tensor=tensor, dim=dim, size=size)
        return s.ids

    def virtual_space(self, tensor: str, dim: int, size: int) -> np.ndarray:
        """Element ids for a channel dim of a tensor the graph creates (``x.new_zeros(b, 16, h,
        w)``): no weight holds it, but its positions are channels like any other; surgery
        rewrites the literal count."""
        key = f"{tensor}:{dim}"
        s = self.space_by_key.get(key)
        if s is None:
            s = Space(key, tensor, dim, size, self.uf.add(size), virtual=True)
            self.spaces.append(s)
            self.space_by_key[key] = s
            self.starts.append(s.start)
            self.graph.add_node(key, tensor=s.tensor, dim=s.dim, size=size)
        return s.ids

    def shared_size(self, j: int, size: int) -> np.ndarray | None:
        """Element ids standing for entry ``j`` (``size`` positions) of a size the called module
        holds as an attribute (a parameter-free norm's ``normalized_shape``, ``num_groups``,
        ``num_features``), when the module is called at several places; None when at one. One
        module holds one such size, so its calls' channels must be one set there, as a
        weight would make them (break96 #4: two branches' widths, finalize failed)."""
        if self.module_calls() < 2:
            return None
        return self.virtual_space(f"{self.node.target}.<size>", j, size)

    def module_calls(self) -> int:
        """How many nodes call the module this node calls (0 for a node calling none)."""
        if self.node.op != "call_module":
            return 0
        if not hasattr(self, "_calls"):
            self._calls = collections.Counter(
                n.target for n in self.gm.graph.nodes if n.op == "call_module")
        return self._calls[self.node.target]

    def tensor(self, qualname: str) -> torch.Tensor:
        return self._tensor(qualname)

    def _tensor(self, qualname: str) -> torch.Tensor:
        owner, _, attr = qualname.rpartition(".")
        return getattr(self.gm.get_submodule(owner) if owner else self.gm, attr)

    def _space_of(self, ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(np.asarray(self.starts), ids, side="right") - 1

    def why(self, what: str) -> str:
        # a module by its path, as the tables name producers (break81 #5: `layer1_0_conv1`,
        # the graph's node name, found nothing in the model)
        where = self.node.target if self.node.op == "call_module" else self.node.name
        return f"{what} at `{where}` ({describe(self.node, self.gm)})"

    def unify(self, a, b, what: str) -> None:
        """Elements at equal positions of ``a`` and ``b`` are the same channel."""
        a, b = np.broadcast_arrays(np.asarray(a), np.asarray(b))
        a, b = a.ravel(), b.ravel()
        lone = (a < 0) != (b < 0)
        if lone.any():
            # where upstream they were dropped (break144 F2: through a concat, the reader
            # after it was named, never the op that dropped them)
            inputs = self.node.all_input_nodes if self.node is not None else []
            lost = next((found for n in inputs for found in [self.where_lost(n)] if found), None)
            self.untracked(np.where(a < 0, b, a)[lone], f"{what}, meeting channels that are not tracked"
                           + (f" (they were dropped: {lost})" if lost else ""), cause=lost)
        both = (a >= 0) & (b >= 0)
        a, b = a[both], b[both]
        if not a.size:
            return
        self.uf.union(a, b)
        sa, sb = self._space_of(a), self._space_of(b)
        why = self.why(what)
        for pa, pb in set(zip(sa.tolist(), sb.tolist())):
            ka, kb = self.spaces[pa].key, self.spaces[pb].key
            sel = (sa == pa) & (sb == pb)
            edge = self.graph.get_edge_data(ka, kb)
            if edge is None:
                self.graph.add_edge(ka, kb, constraints=[])
                edge = self.graph.get_edge_data(ka, kb)
            edge["constraints"].append(
                (why, a[sel] - self.spaces[pa].start, b[sel] - self.spaces[pb].start))

    def connect(self, space_ids, act_ids, what: str) -> None:
        """A weight dim reads (or writes) an activation's channel dim."""
        if act_ids is None:
            src = self.node.args[0] if self.node is not None and self.node.args else None
            if isinstance(src, fx.Node) and src.op == "placeholder":
                # (break120 F4: every stem read as a possible barrier)
                self.untracked(space_ids, f"{what} reads the model input `{src.name}`, whose "
                                          "channels are the data's")
            else:
                # (either: an op it follows passes the input's untracked channels on, x.float());
                # the op upstream that dropped them is named where one did (break141 F4: after
                # a parametrized conv the model input was suggested)
                lost = self.where_lost(src)
                self.untracked(space_ids, f"{what} reads channels fxprune does not track "
                               + (f"(they were dropped: {lost})" if lost else
                                  "(the model input, or an output of an op whose channels it "
                                  "does not follow)"), cause=lost)
        else:
            self.unify(space_ids, act_ids, what)

    def untracked(self, ids, reason: str, cause: str | None = None) -> None:
        """These elements must stay: something outside fxprune's rules depends on them.
        ``cause``: where upstream they were dropped, which a later reader names (not this
        node's own reason, which would nest one "dropped" in another)."""
        ids = np.asarray(ids).ravel()
        ids = ids[ids >= 0]
        if ids.size:
            self.marks.append((ids, self.why(reason)))
            self.lost.setdefault(self.node, cause or self.why(reason))

    def where_lost(self, node, limit: int = 32) -> str | None:
        """Why the nearest node upstream of ``node`` (itself included) dropped channels, the
        search stopping after ``limit`` nodes; None when none did. A barrier met later (an
        elementwise op with an untracked operand) names it: the op where tracking ended, not
        only the one that found it ended (break59 #2: ``y * softmax(w)`` named the mul)."""
        if not isinstance(node, fx.Node):
            return None
        seen, queue = {node}, [node]
        while queue and len(seen) <= limit:
            n = queue.pop(0)
            # a node whose output carries channels did not drop them: its record is of its
            # input (a stem conv reading the model input; review142 F6 named it for a column
            # that met the batch dim)
            if n in self.lost and not self.carries_channels(n):
                return self.lost[n]
            for a in n.all_input_nodes:
                if a not in seen:
                    seen.add(a)
                    queue.append(a)
        return None

    def carries_channels(self, node) -> bool:
        """Whether ``node``'s output holds channels fxprune tracks (in any dim)."""
        return any(np.any(np.asarray(ids) >= 0) for ids in self._all_labels(self.labels(node)))

    def keep_one_of(self, ids, what: str) -> None:
        """At least one of these channels must stay (an empty slice would break the graph)."""
        ids = np.asarray(ids).ravel()
        if ids.size and not (ids < 0).any():
            self.keep_one.append((ids, self.why(what)))

    def untracked_inputs(self, reason: str) -> None:
        # this node ends tracking, whether or not its inputs still had channels to lose: a
        # later reader names it, not an op before it (review142 F7: a parametrized conv after
        # a leaf without a row, or reading the model input, was passed over)
        self.lost.setdefault(self.node, self.why(reason))
        for a in arg_leaves(self.node.args, self.node.kwargs):
            for ids in self._all_labels(self.labels(a)):
                self.untracked(ids, reason)

    @staticmethod
    def _all_labels(labels):
        if isinstance(labels, SizeOf):
            yield labels.ids
        elif isinstance(labels, dict):
            yield from labels.values()
        elif isinstance(labels, (list, tuple)):
            for item in labels:
                yield from ChannelAnalysis._all_labels(item)

    def same_channels(self, a, b) -> bool:
        """Do ``a`` and ``b`` hold the same set of channels (as unified so far)?"""
        found = self.uf.roots()
        roots = lambda ids: {found[i] if i >= 0 else -1 for i in np.asarray(ids).tolist()}  # noqa: E731
        return roots(a) == roots(b)

    def mask_site(self, tensor: str, dim: int, rule=None) -> None:
        """The weight ``tensor`` reads this node's input channels along ``dim``: SMCP masks it
        there (a module call becomes its rule's masked class; a functional call gets its weight
        argument masked)."""
        functional = self.node.op != "call_module"
        owner = tensor.rpartition(".")[0] if functional else self.module_name()
        out_dim = getattr(rule, "out_dim", 0)
        site = self.mask_sites.setdefault(tensor, MaskSite(owner, tensor, dim, out_dim=out_dim))
        site.nodes.append(self.node.name)
        if functional:
            site.functional_nodes.append(self.node.name)
        elif rule is not None:
            site.rule = rule

    def check_later(self, count_ids, dim_ids, reason: str) -> None:
        """A channel count shapes a dim: fine if that dim holds the same channels once the whole
        graph is seen (an SE's ``view(b, c)`` sits before the multiply that ties its channels to
        the features the count was read from)."""
        self.deferred.append((np.asarray(count_ids), None if dim_ids is None else np.asarray(dim_ids),
                              self.why(reason)))

    def stat_site(self, act_dims: tuple[int, ...], mask_dims: tuple[int, ...], rule=None) -> None:
        """This node's statistics span its input's channel dims ``act_dims`` (``mask_dims``
        within the normalized shape): ``rule.mask_statistics`` makes it count kept channels only."""
        labels = self.labels(self.node.args[0])
        if rule is None:  # a row written before rows owned their masked form: the node's own
            rule = lookup_rule(self.node, self.gm, self.extra_rules)
        self.stat_sites.append(StatSite(self.node.name, act_dims, mask_dims,
                                        [labels[d] for d in act_dims], rule))

    def layer(self, spec: LayerSpec, weight: str, in_dim: int, out_dim: int, depthwise: bool = False) -> None:
        """A costed layer: its spec, and which weight dims hold its input and output channels.
        A module called again (shared weights) is marked ``meta["repeated_call"]``: its
        compute counts at every call, its parameters once."""
        if any(info.weight == weight for info in self.layers):
            spec = dataclasses.replace(spec, meta={**spec.meta, "repeated_call": True})
        self.layers.append(LayerInfo(self.node.name, spec.name, spec, weight, in_dim, out_dim, depthwise))

    # -- the walk ---------------------------------------------------------------------------------
    def run(self) -> ChannelGraph:
        for node in self.gm.graph.nodes:
            self.node = node
            node.meta["fxprune_labels"] = self._visit(node) or {}
        return self._result()

    def _visit(self, node: fx.Node):
        if node.op == "placeholder":
            return {}
        if node.op == "get_attr":
            value = self._tensor(node.target) if isinstance(node.target, str) else None
            if not isinstance(value, torch.Tensor):
                return {}
            return {d: self.space(node.target, d) for d in range(value.ndim) if value.shape[d] > 1}
        if node.op == "output":
            self.untracked_inputs("reaches the model output")
            return {}
        rule = lookup_rule(node, self.gm, self.extra_rules)
        args = arg_leaves(node.args, node.kwargs)
        has_labels = any(True for a in args for _ in self._all_labels(self.labels(a)))
        counts = [lab.ids for a in args for lab in [self.labels(a)] if isinstance(lab, SizeOf)]
        if counts:
            # an int that counts channels: arithmetic keeps following it, shape ops check it,
            # anything else (asserts, creating tensors) would break once the count changes
            if isinstance(rule, Elementwise) and not isinstance(self.out_meta(), TensorMeta):
                return SizeOf(np.concatenate(counts))
            if not getattr(rule, "checks_sizes", False):
                for ids in counts:
                    self.untracked(ids, f"channel count read as a number by {describe(node, self.gm)}")
        if rule is None:
            if has_labels:
                # a module traced as one call because its forward reads self.training
                why = (getattr(self.gm, "meta", {}).get("fxprune_mode_leaves", {})
                       .get(node.target) if node.op == "call_module" else None)
                quantized = (node.op == "call_module" and quantization_stage(
                    type(self.gm.get_submodule(node.target))) == "quantized")
                way_out = (f"a quantized layer: {QUANTIZATION_WAY_OUT}" if quantized else
                           "add one to fxprune.op_table.CHANNEL_RULES or pass rules=")
                self.untracked_inputs(f"no channel rule for {describe(node, self.gm)}"
                                      f"{f' (called as one op: {why})' if why else ''}; {way_out}")
            return {}
        unsliced = self._unsliced_tensors(rule) if node.op == "call_module" else ""
        try:
            if not unsliced:
                return rule.propagate(self)
            # surgery would slice the row's tensors and leave these: the pruned module would
            # fail or compute something else (break47 #3: finalize failed, naming no module)
            why = (f"`{node.target}` ({type(self.module()).__name__}) holds {unsliced}, which its "
                   f"{type(rule).__name__}() row does not slice (give it a row that does; if "
                   "every channel shares it, a row with .slices = None skips this check)")
            self.untracked_inputs(why)
            out = rule.propagate(self)
            for ids in self._all_labels(out):
                self.untracked(ids, why)
            return out
        except (AttributeError, TypeError, ValueError, IndexError, KeyError) as e:
            # a rows=given row that does not fit its module (ChannelShuffle without groups): a
            # bare AttributeError from inside the rule named neither (break47 #4); a
            # functional row keyed by a module class, a KeyError (break176 F9)
            user_row = (node.op == "call_module" and self.extra_rules
                        and any(base in self.extra_rules for base in type(self.module()).__mro__))
            if not user_row or isinstance(e, FxPruneError):
                raise
            raise FxPruneError(
                f"rule {type(rule).__name__}() given in rules= cannot apply to "
                f"`{node.target}` ({type(self.module()).__name__}): {type(e).__name__}: {e}. "
                "Give it a rule of its own kind (a subclass of fxprune.rules.ChannelRule), or "
                "leave it out of rules= to keep its channels whole") from e

    def _unsliced_tensors(self, rule) -> str:
        """The called module's tensors that ``rule`` declares it does not slice and that have
        a dim of (a multiple of) a channel count reaching or leaving it (dim 1 or the last, of
        its input or output), named ("" when none, or when the row does not declare). A tensor
        every channel shares (a learnable activation's 5 slopes, a blur's one kernel) has no
        such dim and needs no slicing (break51 #1: counting every tensor kept such rows'
        channels whole)."""
        module, sliced = self.module(), getattr(rule, "slices", None)
        if sliced is None:
            return ""
        counts = set()
        for shape in (self.shape(self.node.args[0]) if self.node.args else None, self.out_shape()):
            if shape is not None and len(shape) > 1:
                counts |= {shape[1], shape[-1]}
        counts.discard(1)
        # a module called as one op: its submodules' tensors are its own too; a parametrized
        # tensor is kept whole by its own check, with its own way out
        # (a multiple of a count: per-channel values packed as one (2C,) or (C * 3,) tensor,
        # break53 #2; a shared tensor's few entries are no multiple of a channel count)
        names = [n for n, t in [*module.named_parameters(), *module.named_buffers()]
                 if n not in sliced and not n.startswith("parametrizations.")
                 and any(d >= c and d % c == 0 for d in t.shape for c in counts)]
        return described([f"`{n}`" for n in names])

    def _result(self) -> ChannelGraph:
        aliases = _tied_tensors(self.gm)
        for sp in self.spaces:
            if sp.tensor in aliases:
                # Slicing one name would leave the other a different size (and folding masks
                # would scale the one tensor twice), so a tied tensor's channels all stay.
                others = ", ".join(f"`{n}`" for n in aliases[sp.tensor] if n != sp.tensor)
                self.marks.append((sp.ids, f"`{sp.tensor}` is the same tensor as {others} (tied "
                                           "weights); fxprune keeps tied tensors whole"))
        for count_ids, dim_ids, why in self.deferred:
            if dim_ids is None or not self.same_channels(count_ids, dim_ids):
                # the count stays what it was, so the dim it shapes must keep its size too
                for ids in (count_ids, dim_ids if dim_ids is not None else count_ids[:0]):
                    ids = ids[ids >= 0]
                    if ids.size:
                        self.marks.append((ids, why))
        self._mark_kept()
        n = self.uf.size
        roots = self.uf.roots()
        _, element_unit = np.unique(roots, return_inverse=True)  # units numbered by oldest element
        n_units = int(element_unit.max()) + 1 if n else 0
        barrier_reason: dict[int, str] = {}
        for ids, reason in self.marks:
            for u in np.unique(element_unit[ids]).tolist():
                barrier_reason.setdefault(u, reason)
        unit_barrier = np.zeros(n_units, dtype=bool)
        unit_barrier[list(barrier_reason)] = True

        site_units = set()
        for site in self.mask_sites.values():
            site_units.update(np.unique(element_unit[self.space_by_key[f"{site.tensor}:{site.dim}"].ids]).tolist())
        layer_modules = {li.module for li in self.layers}
        site_keys = {f"{s.tensor}:{s.dim}" for s in self.mask_sites.values()}

        # A group is what one producer's output channels are tied to: units sharing a source
        # space (a layer's output dim) go together; a consumer's input dim may span several
        # groups (concat) without merging them. Units no layer produces (the model's input
        # channels) are grouped by the spaces they sit in.
        unit_sets = {sp.key: np.unique(element_unit[sp.ids]) for sp in self.spaces}
        has_source = np.zeros(n_units, dtype=bool)
        for key in self.sources:
            has_source[unit_sets[key]] = True
        first_seen = _first_seen([element_unit[sp.ids] for sp in self.spaces], n_units)
        links = []  # (creation order: a group's units follow its first producer)
        for sp in self.spaces:
            linked = unit_sets[sp.key]
            if sp.key not in self.sources:
                linked = linked[~has_source[linked]]
            links.append((linked[:-1], linked[1:]))
        components = _components_in_order(min_label_components(n_units, links), first_seen)
        unit_group = np.full(n_units, -1, dtype=np.int64)
        unit_pos = np.full(n_units, -1, dtype=np.int64)
        for gi, units in enumerate(components):
            unit_group[units] = gi
            unit_pos[units] = np.arange(len(units))
        space_groups = {k: set(unit_group[us].tolist()) for k, us in unit_sets.items()}
        groups = []
        for gi, units in enumerate(components):
            keys = [sp.key for sp in self.spaces if gi in space_groups[sp.key]]
            tensors = [self.space_by_key[k].tensor for k in keys]
            owners = [t.rpartition(".")[0] or t for t in tensors]
            producers = [o for o, k in zip(owners, keys) if k in self.sources]
            reasons = [barrier_reason[u] for u in units.tolist() if u in barrier_reason]
            # the structure's own reason first, on whichever unit it falls (review212 R2: a
            # keep= mark on an earlier unit was named, and "keep fewer layers" advised)
            reason = next((r for r in reasons if not r.startswith(KEPT_ON_REQUEST)),
                          reasons[0] if reasons else "")
            if not reason and not site_units.intersection(units.tolist()):
                reason = "no layer reads these channels through weights"
                if producers:  # (break101 #1: separate q and k projections read as unread)
                    reason += (f": {producers[0]} writes them, but what reads them has no "
                               "weight that gives them an importance (a product, as attention's "
                               "q @ k.transpose(-2, -1) of separate q and k projections, or "
                               "x @ self.w; a fused qkv projection, whose v channels share the "
                               "group, prunes attention's)")
            consumers = [o for o, k in zip(owners, keys) if k in site_keys]
            lead = self.space_by_key[keys[0]]
            name = producers[0] if producers else f"{lead.tensor}[{lead.dim}]"
            groups.append(GroupInfo(
                key=f"g{gi}", name=name, size=len(units), prunable=not reason, reason=reason,
                sources=[k for k in keys if k in self.sources],
                spaces=keys, members=list(dict.fromkeys(owners)), producers=list(dict.fromkeys(producers)),
                consumers=list(dict.fromkeys(consumers)),
                listed=any(o in layer_modules for o in owners)))
        # No weight or buffer dim may end up empty (a conv with no output channels is an
        # error): a space that holds only part of its group must keep one of its channels.
        # (A created tensor's or a pad's own channels may all go: a pad of 0 is still a pad.)
        keep_one = self.keep_one + [(sp.ids, f"`{sp.tensor}` (dim {sp.dim})") for sp in self.spaces
                                    if not sp.virtual]
        for ids, why in keep_one:
            units = np.unique(element_unit[ids])
            owner = np.bincount(unit_group[units]).argmax()  # the group holding most of them
            positions = np.unique(unit_pos[units[unit_group[units] == owner]])
            listed = {p.tobytes() for p, _ in groups[owner].keep_one_of}
            if positions.size < groups[owner].size and positions.tobytes() not in listed:
                groups[owner].keep_one_of.append((positions, why))
        return ChannelGraph(self.spaces, self.graph, element_unit, unit_group, unit_pos, groups,
                            list(self.mask_sites.values()), self.stat_sites, self.layers, unit_barrier)


    def _mark_kept(self) -> None:
        """The output channels of the modules the user keeps (``keep``: module path -> how the
        user named it) stay whole: a layer's output dims (its sources), a norm's or other
        channel-wise module's every dim. A path keeps the modules under it too. Marked after
        the structure's own reasons, which a group's reason names first."""
        layers = {li.module for li in self.layers}
        matched = set()
        for sp in self.spaces:
            owner = sp.tensor.rpartition(".")[0]
            if sp.virtual or not (sp.key in self.sources or owner not in layers):
                continue
            names = [named for p, named in self.keep.items()
                     if owner == p or owner.startswith(p + ".")]
            if names:
                matched.update(names)
                where = "" if names[0] == f"`{owner}`" else f" (`{owner}`)"
                self.marks.append((sp.ids, f"{KEPT_ON_REQUEST}{names[0]}{where}"))
        missed = [named for named in self.keep.values() if named not in matched]
        if missed:
            raise ArgumentError(
                f"prepare: keep= names {missed[0]}, which holds no channels fxprune prunes (no "
                "conv, linear or norm layer's output in the traced graph: an activation, or a "
                "module inside a leaf module, called as one op and kept whole anyway); name "
                "the layer whose output channels to keep")


def _first_seen(seen: list[np.ndarray], n: int) -> np.ndarray:
    """``(n,)`` int64: each of ``0..n-1``'s rank by first appearance in the arrays of ``seen``
    taken in order (each value appears somewhere)."""
    order = np.concatenate(seen) if seen else np.zeros(0, dtype=np.int64)
    first = np.full(n, order.size, dtype=np.int64)
    np.minimum.at(first, order, np.arange(order.size))
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(n)
    return rank


def _components_in_order(label: np.ndarray, first_seen: np.ndarray) -> list[np.ndarray]:
    """The classes of equal ``label``, each an array of its members by ``first_seen`` (a rank
    per member, all distinct), the classes in the order of their first member."""
    if not label.size:
        return []
    by_seen = np.argsort(first_seen, kind="stable")
    _, first, inverse, counts = np.unique(label[by_seen], return_index=True, return_inverse=True,
                                          return_counts=True)
    order = np.argsort(first, kind="stable")  # the classes by their first member
    class_rank = np.empty(order.size, dtype=np.int64)
    class_rank[order] = np.arange(order.size)
    members = by_seen[np.argsort(class_rank[inverse], kind="stable")]
    return np.split(members, np.cumsum(counts[order])[:-1])


def _tied_tensors(gm: fx.GraphModule) -> dict[str, list[str]]:
    """Each qualname of a parameter or buffer reachable under several names -> all its names."""
    names: dict[int, list[str]] = {}
    for name, t in [*gm.named_parameters(remove_duplicate=False), *gm.named_buffers(remove_duplicate=False)]:
        names.setdefault(id(t), []).append(name)
    return {n: group for group in names.values() if len(group) > 1 for n in group}


def arg_leaves(*args) -> list:
    """What ``args`` hold, through lists, tuples, dicts and slices (torch.fx's own walk)."""
    found: list = []
    fx.node.map_aggregate(args, found.append)
    return found


def analyze(gm: fx.GraphModule, extra_rules: dict | None = None,
            keep: dict[str, str] | None = None) -> ChannelGraph:
    """The channel groups of ``gm`` (traced, with :func:`propagate_shapes` run): every channel
    dim the graph's ops tie together (residual adds, concats, depthwise convs, flatten into a
    linear...) is one group, and a group that an op without a channel rule touches, or that
    reaches the model's output, is a barrier with the reason. ``extra_rules`` (``{op: rule}``)
    come before the op table's rows. Returns the ``ChannelGraph`` (a networkx graph of the
    channel spaces with the groups, mask sites and costed layers); ``gm`` is not modified.
    ``keep`` (``{module path: how the user named it}``) keeps those modules' output channels
    whole (``prepare(keep=...)``); ArgumentError for a path that holds none."""
    return ChannelAnalysis(gm, extra_rules, keep).run()
