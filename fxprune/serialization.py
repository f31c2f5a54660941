"""``torch.save`` / ``torch.load`` of a prepared model, masks, groups and all.

torch.fx pickles a GraphModule as its generated Python code and, on load, re-traces that code
into a new graph (``GraphModule.__reduce__``). For a prepared model that loses what the later
steps need: ``meta["fxprune"]`` (the channel groups) is dropped, the re-traced graph has other
nodes (one ``get_attr`` per use of a mask) and none of the per-node facts the group analysis
and shape propagation recorded, so ``finalize`` could not work on the loaded model. A prepared
model therefore pickles its graph itself (nodes, names and ``meta``, as a flat list of node
records: the linked nodes would recurse once per node) with the module's state, and is rebuilt
with the public ``GraphModule(root, graph)`` constructor.

Once ``finalize`` has removed ``meta["fxprune"]`` the model pickles the standard way again, so
finalized models load where fxprune is not installed.
"""
from __future__ import annotations

import copy
import importlib

from torch import fx, nn
from torch.fx.node import _get_qualified_name

from .masks import strip_method_hooks


def make_savable(gm: fx.GraphModule) -> None:
    """Give ``gm`` (and every deep copy of it) the pickling described above."""
    # GraphModule.__new__ gives each instance a class of its own: patching it touches no other.
    type(gm).__reduce__ = _reduce_prepared
    if make_savable not in gm._deepcopy_hooks:
        gm._deepcopy_hooks.append(make_savable)


def _reduce_prepared(self: fx.GraphModule):
    if "fxprune" not in getattr(self, "meta", {}):  # finalized: torch's own, fxprune-free form
        fn, (body, import_block) = fx.GraphModule.__reduce__(self)
        body = dict(body)
        hooks = [h for h in body.get("_deepcopy_hooks", []) if h is not make_savable]
        body["_deepcopy_hooks"] = hooks
        return fn, (body, import_block)
    body = self.__dict__.copy()
    graph = _flat_graph(body.pop("_graph"))
    return _rebuild_prepared, (body, graph, self._get_name())


class _NodeRef:
    """A node named in another node's arguments, in a pickled graph (by its name)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __reduce__(self):
        return _NodeRef, (self.name,)


class _FunctionRef:
    """A call's target pickled by its public name: torch's ``boolean_dispatch`` functions
    (``F.max_pool2d``, ``F.adaptive_max_pool2d``) are local closures pickle cannot name."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __reduce__(self):
        return _FunctionRef, (self.name,)

    def resolve(self):
        module, _, attr = self.name.rpartition(".")
        return getattr(importlib.import_module(module), attr)


def _target(target):
    if callable(target) and "<locals>" in getattr(target, "__qualname__", ""):
        ref = _FunctionRef(_get_qualified_name(target))
        try:
            found = ref.resolve()
        except (ImportError, AttributeError):
            found = None
        if found is target:
            return ref
    return target


def _flat_graph(graph: fx.Graph) -> tuple:
    """``graph`` as a flat list of node records whose arguments name other nodes: pickling the
    linked nodes themselves recurses once per node and hits Python's recursion limit at about
    500 nodes (torchvision's densenet121 has 669)."""
    def ref(n):
        return _NodeRef(n.name)
    nodes = [(n.name, n.op, _target(n.target), fx.node.map_arg(n.args, ref), fx.node.map_arg(n.kwargs, ref),
              n.type, copy.deepcopy(n.meta)) for n in graph.nodes]
    return nodes, graph._codegen, getattr(graph, "_tracer_cls", None), getattr(graph, "_tracer_extras", None)


def _graph_from(flat: tuple) -> fx.Graph:
    nodes, codegen, tracer_cls, tracer_extras = flat
    graph = fx.Graph(tracer_cls=tracer_cls, tracer_extras=tracer_extras)
    graph._codegen = codegen
    env: dict[str, fx.Node] = {}

    def node_of(a):
        return env[a.name] if isinstance(a, _NodeRef) else a
    for name, op, target, args, kwargs, type_expr, meta in nodes:
        target = target.resolve() if isinstance(target, _FunctionRef) else target
        node = graph.create_node(op, target, fx.node.map_aggregate(args, node_of),
                                 fx.node.map_aggregate(kwargs, node_of), name=name, type_expr=type_expr)
        node.meta = meta
        env[name] = node
    return graph


def _rebuild_prepared(body: dict, graph, class_name: str) -> fx.GraphModule:
    if not isinstance(graph, fx.Graph):  # pickled as node records (all but the oldest saves)
        graph = _graph_from(graph)
    root = nn.Module()
    root.__dict__.update(body)
    gm = fx.GraphModule(root, graph, class_name)
    for key, value in body.items():  # attributes the graph does not reference, flags, meta
        if key == "_modules":
            # the saved modules themselves: GraphModule puts plain stand-in containers where
            # the graph reads through one (the MaskBank lost its class, and with it the record
            # of which group each mask is: break84 F1); the saved ones hold the same layers
            gm._modules.update(value)
        elif key in ("_parameters", "_buffers"):
            for name, item in value.items():  # what the graph does not call is kept too
                getattr(gm, key).setdefault(name, item)
        elif key not in ("_graph", "_code"):
            gm.__dict__[key] = value
    saved = dict(root.named_modules())
    for path, m in gm.named_modules():  # the stand-ins GraphModule made for containers, too
        if path and path in saved:
            m.training = saved[path].training
    gm.meta = body["meta"]
    gm.recompile()
    strip_method_hooks(gm)  # the no-ops a method's hooks were pickled as
    make_savable(gm)
    return gm
