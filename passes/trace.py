"""Trace the user's model into a torch.fx GraphModule, on a copy.

The GraphModule ``symbolic_trace`` makes shares the original's layer objects, so pruning it
would edit the user's model; we deep-copy first and trace the copy. Data-dependent control flow
cannot be traced: the error names the module path and the source line, and points at
``leaf_modules`` (a leaf is called as a whole and its channels become a barrier).
"""
from __future__ import annotations

import collections
import contextlib
import copy
import enum
import functools
import inspect
import linecache
import logging
import operator
import os
import re
import reprlib
import traceback
import types
import typing
import warnings

import torch
from torch import fx, nn

from fxprune.errors import ArgumentError, ArgumentTypeError, TraceError, UnsupportedModelError
from fxprune.op_table import CHANNEL_RULES, add_installed_rows

from .follow_mode import AUTOWRAP_FUNCTIONS, dropouts_follow_mode, mode_dependence
from .grad_mode import ModeRecordingTracer
from .group_analysis import arg_leaves, module_rule

# with the separator: torchvision's (or torchaudio's) files are model code, not torch's
_PASSES_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep  # this pass and the others
_TORCH_DIR = os.path.join(os.path.dirname(torch.__file__), "")


class _Tracer(ModeRecordingTracer):
    # The traced graph records this class; unpickling a GraphModule re-traces its code with
    # ``tracer_cls()``, so every argument needs a default or torch.load fails.
    def __init__(self, leaf_types: tuple[type, ...] = (), leaf_names: frozenset[str] = frozenset(),
                 rules: dict | None = None, fixed: dict | None = None):
        # functions with a row recorded as one call (their bodies read a training flag)
        super().__init__(autowrap_functions=AUTOWRAP_FUNCTIONS)
        self.record_stack_traces = True
        self.leaf_types, self.leaf_names = leaf_types, leaf_names
        self.rules = rules or {}
        self.fixed = dict(fixed or {})  # forward arguments traced as values (fixed_arguments)
        self.module_path: list[tuple[str, type]] = []
        self.failed_at: list[tuple[str, type]] | None = None
        #: paths of the modules called while tracing (a head called in one mode only)
        self.called: set[str] = set()

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, self.leaf_types) or qualname in self.leaf_names:
            return True
        # A module with a row of the op table (its own, or its base's when it keeps the base's
        # forward) is called as one op; a subclass with its own forward is traced through.
        if module_rule(type(m), self.rules) is not None:
            return True
        return super().is_leaf_module(m, qualname)

    def trace(self, root, concrete_args=None):
        # torch.zeros(b, c, h, w) with sizes read from x.shape: torch's argument parser rejects
        # proxies before torch.fx sees the call, so the creation functions are wrapped while
        # tracing to record the call when a proxy is among their arguments.
        originals = {name: getattr(torch, name) for name in _CREATORS}
        # torch.overrides builds two tables of torch's functions once per process (lru_cache),
        # on the first __torch_function__ of a proxy: built while the wrappers below stand in
        # for torch.zeros..., the tables kept them, and through them this tracer, its graph
        # and the first prepared model, for good (break145 F3). Built first, they hold torch's.
        torch.overrides.get_ignored_functions()
        torch.overrides.get_overridable_functions()

        def recording(fn):
            def call(*args, **kwargs):
                if any(isinstance(a, fx.Proxy) for a in arg_leaves(args, kwargs)):
                    if fn.__name__ != "full" and len(args) > 1:
                        # recorded as zeros((b, c, h, w)): a GraphModule unpickles by
                        # re-tracing its code with plain torch.fx, which takes proxies inside
                        # a size tuple but not as separate sizes (break79 F1: a finalized
                        # model saved, and then torch.load failed)
                        args = (tuple(args),)
                    return self.create_proxy("call_function", fn, args, kwargs)
                return fn(*args, **kwargs)
            return call

        try:
            for name, fn in originals.items():
                setattr(torch, name, recording(fn))
            fixing = concrete_args is None and bool(self.fixed) and isinstance(root, nn.Module)
            # (ModeRecordingTracer keeps no_grad and autocast regions: passes/grad_mode.py)
            graph = super().trace(root, dict(self.fixed) if fixing else concrete_args)
            if fixing:  # torch.fx names a fixed argument `flag_1`: a call by keyword needs `flag`
                for node in graph.find_nodes(op="placeholder"):
                    if node.target.endswith("_1") and node.target[:-2] in self.fixed:
                        node.target = node.target[:-2]
                _keep_annotations(graph, root, self.fixed)
            return graph
        finally:
            for name, fn in originals.items():
                setattr(torch, name, fn)

    def create_proxy(self, kind, target, args, kwargs, *rest, **more):
        if (kind == "call_function" and isinstance(target, types.BuiltinFunctionType)) or (
                kind == "call_method" and isinstance(getattr(torch.Tensor, target, None),
                                                     types.MethodDescriptorType)):
            # torch's argument parser (builtins, tensor methods in C) takes numpy's names
            # (torch.cat(xs, axis=1)); recorded under torch's, which every row reads (break79
            # F2: a raw KeyError or numpy error). Python functions' own arguments are theirs.
            name = target if isinstance(target, str) else getattr(target, "__name__", "")
            kwargs = {_TORCH_NAMES[k] if k in _TORCH_NAMES and _TORCH_NAMES[k] not in kwargs
                      and not _own_argument(name, k) else k: v for k, v in kwargs.items()}
        return super().create_proxy(kind, target, args, kwargs, *rest, **more)

    def proxy(self, node):
        return _Proxy(node, self)

    def iter(self, obj):
        """``list(x.chunk(2, 1))`` / ``for y in x.split([a, b], 1)``: unrolled when the piece
        count is written in the call (shape propagation later checks it on real inputs)."""
        node = obj.node
        n = _piece_count(node)
        if n is None:
            raise fx.proxy.TraceError(_iteration_cause(node))
        node.meta["fxprune_pieces"] = n
        return iter([obj[i] for i in range(n)])

    def call_module(self, m, forward, args, kwargs):
        self.module_path.append((self.path_of_module(m), type(m)))
        self.called.add(self.module_path[-1][0])
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_at is None:  # the innermost module is where it failed
                self.failed_at = list(self.module_path)
            raise
        finally:
            self.module_path.pop()


_CREATORS = ("zeros", "ones", "empty", "full", "rand", "randn")
# numpy's spellings torch's argument parser accepts for its own (python_arg_parser.cpp)
_TORCH_NAMES = {"axis": "dim", "keepdims": "keepdim"}


@functools.lru_cache(maxsize=None)
def _own_argument(op: str, name: str) -> bool:
    """Whether the aten op ``op`` has an argument called ``name`` of its own: per-channel
    quantization's ``axis`` is not numpy's spelling of ``dim`` (break82 F3)."""
    try:
        schemas = torch._C._jit_get_schemas_for_operator(f"aten::{op}")
    except Exception:  # noqa: BLE001 - no aten op of that name: nothing of its own
        return False
    return any(a.name == name for schema in schemas for a in schema.arguments)
_SPLITS = {"chunk", "split", "tensor_split", "unbind", "split_with_sizes"}


def _op_name(node) -> str:
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")



def _keep_annotations(graph: fx.Graph, root: nn.Module, fixed: dict) -> None:
    """torch.fx's code for arguments fixed to a value drops their annotations: ``flip=False``
    read as a tensor, and TorchScript refused the finalized model of a forward that scripted
    (break163 F2). The fixed placeholders get the forward's annotations back. (An argument
    fixed to None keeps its guard ``mask == None``, which TorchScript refuses for a tensor:
    ``is`` would not survive the re-trace a saved model is loaded with, see _plain_guards.)"""
    try:
        hints = typing.get_type_hints(type(root).forward)
    except Exception:  # noqa: BLE001 - an annotation that does not evaluate: left as it is
        return
    for node in graph.find_nodes(op="placeholder"):
        if node.target in fixed and node.target in hints and node.type is None:
            node.type = hints[node.target]


def _piece_count(node) -> int | None:
    """How many tensors a split-like call returns, when its arguments say so."""
    if node.op not in ("call_method", "call_function") or _op_name(node) not in _SPLITS:
        return None
    name = _op_name(node)
    arg = node.args[1] if len(node.args) > 1 else next(
        (node.kwargs[k] for k in ("chunks", "split_size_or_sections", "split_size", "sections",
                                  "indices_or_sections", "split_sizes") if k in node.kwargs), None)
    if name == "chunk" and isinstance(arg, int):
        return arg
    if name in ("split", "split_with_sizes") and isinstance(arg, (list, tuple)):
        return len(arg)
    if name == "tensor_split":
        if isinstance(arg, int):
            return arg
        if isinstance(arg, (list, tuple)):
            return len(arg) + 1
    return None


class _Proxy(fx.Proxy):
    """A proxy whose ``len`` is known for split-like calls with a written piece count (``list()``
    asks for it before iterating)."""

    def __len__(self) -> int:
        n = _piece_count(self.node)
        if n is None:
            return super().__len__()
        return n


def _iteration_cause(node) -> str:
    name = _op_name(node)
    if name in _SPLITS:
        return (f"iterating the result of `{name}` needs its number of pieces, which depends on the "
                "input's size that torch.fx does not know while tracing; unpack it to names "
                f"(`a, b = x.{name}(...)`), or write the count in the call (`x.chunk(2, 1)`, "
                "`x.split([16, 16], 1)`)")
    return (f"iterating over a traced value (`{node.name}`, from {name or node.op}) needs its length, "
            "which torch.fx does not know while tracing; unpack it to names (`a, b = ...`) or index it "
            "(`x[0]`, `x[1]`)")


def _user_frame(exc: BaseException):
    """The deepest traceback frame outside torch and fxprune's passes: the line of model code
    that failed (break154 F2: the grad-mode tracer's create_proxy was named instead)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not os.path.abspath(f.filename).startswith((_TORCH_DIR, _PASSES_DIR))]
    return frames[-1] if frames else None


def fixed_arguments(model: nn.Module, example_inputs: tuple = ()) -> dict:
    """The forward arguments traced as the values they have rather than as inputs: those that
    are None or a bool in ``example_inputs`` and, past them, those whose default is. Keyword-
    only arguments count too, placed after the positional ones (as the graph's placeholders
    are: ``example_inputs`` may give them). A flag
    (``return_features=False``) or an optional tensor left out (``skip=None``) decides a branch,
    which a traced input cannot (``if flag:`` fails; ``skip is None`` is always False). torch.fx
    puts an assertion in the graph, so a call with another value fails instead of running the
    traced branch."""
    # (break129 F2: ``*, feats=False`` was traced as an input, its branch refused;
    # review130 F2: a keyword-only tensor given in example_inputs is one)
    return {name: value for name, value in _forward_values(model, example_inputs)
            if value is None or isinstance(value, bool)}


def _forward_values(model: nn.Module, example_inputs: tuple) -> list[tuple[str, object]]:
    """(name, value) of each named forward argument: its value in ``example_inputs`` or,
    past them, its default (``inspect.Parameter.empty`` where it has none)."""
    params = _forward_parameters(model)
    # the graph's placeholders, in order: the positional parameters, then the keyword-only
    # ones (which example_inputs fill by that position), then *args and **kwargs
    named = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD,
                                             p.KEYWORD_ONLY)]
    return [(p.name, example_inputs[i] if i < len(example_inputs) else p.default)
            for i, p in enumerate(named)]


def _forward_parameters(model: nn.Module) -> list[inspect.Parameter]:
    """``model.forward``'s parameters ([] where it has no signature to read)."""
    try:
        return list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return []


def _var_keyword(model: nn.Module) -> str | None:
    """The name of ``model.forward``'s ``**kwargs`` parameter, or None."""
    return next((p.name for p in _forward_parameters(model) if p.kind is p.VAR_KEYWORD), None)


def number_arguments(model: nn.Module, example_inputs: tuple = ()) -> dict:
    """The forward arguments that are a Python number (not a bool) in ``example_inputs`` or,
    past them, by default: traced as inputs (a scale multiplies as one), so a number that
    sets a loop count or a size fails the trace, which then names them."""
    return {name: value for name, value in _forward_values(model, example_inputs)
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def _plain_guards(graph: fx.Graph) -> None:
    """torch.fx guards an argument traced as None with its own wrapped ``_assert_is_none``,
    which a pickled GraphModule re-registers by name on load (``torch.fx.wrap(...)`` in its
    code), and torch.export then failed on the loaded model (KeyError: 'torch.fx.
    _symbolic_trace._assert_is_none'; break95 #1: every timm ViT, whose forward takes
    ``attn_mask=None``, saved and given to ``fxprune deploy``). The same guard in plain ops:
    ``torch._assert(x == None, message)`` (``==``, not ``is``: loading re-traces the code, and
    ``proxy is None`` is False there, where ``proxy == None`` is recorded; a tensor given
    instead compares False too)."""
    from torch.fx._symbolic_trace import _assert_is_none
    for node in list(graph.find_nodes(op="call_function", target=_assert_is_none)):
        value, message = node.args
        with graph.inserting_before(node):
            is_none = graph.call_function(operator.eq, (value, None))
            guard = graph.call_function(torch._assert, (is_none, message))
        guard.meta = dict(node.meta)
        node.replace_all_uses_with(guard)
        graph.erase_node(node)


def trace(model: nn.Module, *, leaf_modules=(), rules: dict | None = None,
          fixed: dict | None = None, numbers: dict | None = None) -> fx.GraphModule:
    """Deep-copy ``model`` and trace the copy; ``leaf_modules`` holds classes or module paths,
    ``rules`` extra op-table rows (a module class with a row is called as one op), ``fixed``
    forward arguments traced as values (:func:`fixed_arguments`), ``numbers`` those that are
    numbers, named when the trace fails (:func:`number_arguments`). Code that
    reads ``self.training`` is kept following the mode (:mod:`.follow_mode`); the model's own
    ``forward`` doing so, or a model that cannot be traced in the other mode, warns."""
    leaf_types = tuple(m for m in leaf_modules if isinstance(m, type))
    leaf_names = frozenset(m for m in leaf_modules if isinstance(m, str))
    bad = next((m for m in leaf_modules if not isinstance(m, (type, str))), None)
    if bad is not None:  # (break205 F6: a module was printed whole, 13,000 characters)
        path = next((p for p, m in model.named_modules() if m is bad and p), None)
        what = (f"the module `{path}` itself: pass its path, {path!r}" if path is not None
                else f"a {type(bad).__name__}")
        raise ArgumentTypeError(f"leaf_modules takes module classes or module paths (str), got "
                                f"{what}")
    unknown = [n for n in leaf_names if n not in dict(model.named_modules())]
    if unknown:
        raise ArgumentError(f"leaf_modules names {unknown} are not modules of the model; "
                            f"paths look like {[n for n, _ in list(model.named_modules())[1:4]]}")
    # Code that reads self.training is frozen by tracing: a module whose code differs between
    # the modes is traced again as one call, until the graphs of both modes agree
    # (passes/follow_mode.py).
    # Every trace gets a fresh copy: a model may cache a traced value in itself (timm's
    # attention biases), which the next trace must not read.
    add_installed_rows()
    # a module's hooks run when it is called: traced through, torch.fx ran them once on proxies
    # (a feature tap kept two proxies and never fired again; an output hook was baked in) and
    # dropped backward hooks (break43 #2); called as one op, they run as they did
    hooked = _hooked_modules(model, _Tracer(leaf_types, leaf_names, rules, fixed))
    mode_leaves: dict[str, str] = dict(hooked)
    called = None  # the layers the first trace calls as modules
    root_updates = ""  # why the model's own forward cannot be traced faithfully
    # checkpoint(fn, x) is traced as fn(x); what ran under it is said below
    checkpointed: list[str] = []
    with _through_checkpoints(checkpointed) as module_names:
        for _ in model.modules():
            root = copy_model(model)
            names = leaf_names | frozenset(mode_leaves)
            tracer = _Tracer(leaf_types, names, rules, fixed)
            checkpointed.clear()  # the last trace's: the one kept
            module_names.clear()
            module_names.update({id(m): n for n, m in root.named_modules()})
            try:
                graph = tracer.trace(root)
            except Exception as e:  # noqa: BLE001 - any tracing failure gets the same explanation
                raise _trace_error(model, tracer, e, numbers or {}) from e
            if called is None:
                called = _layers_reached(graph)
            updated = _updated_while_tracing(model, root, graph)
            _restore_assigned_buffers(model, root)
            # the other mode's traces are thrown away: their copies hold root's tensors
            found = mode_dependence(root, graph, lambda: _Tracer(leaf_types, names, rules, fixed),
                                    lambda: copy_model(model, tensors_of=root), tracer.called)
            # a buffer the forward updates in place ran its update once, while tracing, and the
            # graph reads a frozen copy (break39 #1): its module is called as one op, as it is
            leaves = {**found.leaves, **{owner: why for owner, why in updated.items() if owner}}
            if "" in updated and not root_updates:
                root_updates = updated[""]
            if not leaves:
                break
            mode_leaves.update(leaves)
    output = next(n for n in reversed(graph.nodes) if n.op == "output")
    read: list[fx.Node] = []
    fx.node.map_arg(output.args, read.append)
    if not read:  # break44 #2: timm's features_only models with feature_cls='hook'
        raise TraceError(
            f"{type(model).__name__}.forward, as torch.fx traces it, returns "
            f"{reprlib.repr(output.args[0])} whatever its inputs: its output is not computed from "
            "them in the graph (read from state that hooks fill, e.g. a timm features_only model "
            "with feature_cls='hook'), so the prepared model would return that; make forward "
            "return the tensors it computes (timm: forward_intermediates, or features_only with "
            "another feature_cls)")
    _plain_guards(graph)
    for node in graph.nodes:
        if isinstance(node.type, str):
            # a string annotation (a model module with `from __future__ import annotations`)
            # becomes a str global of the generated code, which torch 2.11's GraphModule
            # pickling cannot name (an H200 run failed saving the finalized model); the
            # annotation is cosmetic there, so it is dropped
            node.type = None
    updated_parameters = _restore_parameters(model, root)
    stored = _attributes_set_while_tracing(model, root)
    gm = fx.GraphModule(root, graph, type(model).__name__)
    originals = dict(root.named_modules())
    for name, m in gm.named_modules():  # the stand-ins of traced-through modules, too
        if name in originals:
            m.training = originals[name].training
    dropouts_follow_mode(gm, found.dropouts)
    gm.meta["fxprune_mode_leaves"] = mode_leaves
    _warn_mode_overrides(model, root, gm)
    mode = "train" if model.training else "eval"
    # a whole block made one call puts its layers out of reach; layers whose weights the block
    # only passed to a function (torchvision's Swin attention) were out of reach before
    def weight_layer(m):  # a torch conv/linear, or a module a weight row (rules=) is given for
        return (isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))  # (break200 F8: a user's,
                or hasattr(module_rule(type(m), rules), "in_dim"))  # dropped without a word)

    hiding = [name for name in mode_leaves if any(
        weight_layer(m)
        # (a hooked module is never traced through: its own call counts, if the forward makes it)
        and ((f"{name}.{path}" if path else name) in called or (name in hooked and name in called))
        for path, m in root.get_submodule(name).named_modules())]
    if hiding:
        warnings.warn(
            f"{len(hiding)} submodule{'s' if len(hiding) > 1 else ''} holding convs or linears "
            f"({', '.join(hiding[:3])}{', ...' if len(hiding) > 3 else ''}) "
            f"{'are' if len(hiding) > 1 else 'is'} called as one op, so those layers are not "
            f"pruned: `{hiding[0]}`: {mode_leaves[hiding[0]]}; "
            + ("to keep the layers prunable, register the hook on a layer module inside it "
               "instead (one the prepared model calls), or on the finalized model"
               if hiding[0] in hooked else
               "move that code into a small submodule of its own to keep the layers prunable"),
            UserWarning, stacklevel=3)
    lone = [name for name in hooked if name in called and name not in hiding
            and module_rule(type(root.get_submodule(name)), rules) is None]
    if lone:  # no conv inside, no row: its channels, and the layers' around it, kept whole
        first = root.get_submodule(lone[0])
        cls = type(first).__name__
        # a row is per class: for a container (nn.Sequential) it would reach every one of them
        # (break46 #2), so its way out is the hook's place
        way_out = ("register the hooks on a module inside it, or remove them before prepare"
                   if any(True for _ in first.children()) else
                   f"if {cls} works channel by channel, prepare(..., rules={{{cls}: "
                   "fxprune.rules.Elementwise()}) keeps them prunable, or remove the hooks "
                   "before prepare")
        warnings.warn(
            f"{len(lone)} submodule{'s' if len(lone) > 1 else ''} with hooks "
            f"({', '.join(lone[:3])}{', ...' if len(lone) > 3 else ''}) "
            f"{'are' if len(lone) > 1 else 'is'} called as one op, so that the hooks run at each "
            f"call, and without a channel rule keep{'' if len(lone) > 1 else 's'} the channels "
            f"around {'them' if len(lone) > 1 else 'it'} whole (`{lone[0]}`: "
            f"{hook_names(model.get_submodule(lone[0]))}); {way_out}", UserWarning, stacklevel=3)
    if checkpointed:
        where = list(dict.fromkeys(checkpointed))
        named = (where[0] if len(where) == 1 else f"{where[0]} and {where[1]}" if len(where) == 2
                 else f"{', '.join(where[:3])}{', ...' if len(where) > 3 else ''}")
        warnings.warn(
            f"{named} run{'s' if len(where) == 1 else ''} under torch.utils.checkpoint (activation "
            "checkpointing), which a torch.fx graph does not keep: the prepared and finalized "
            "models compute the same outputs but store those activations for backward (more "
            "memory in training); to save that memory in the finalized model, call its blocks "
            "through torch.utils.checkpoint again", UserWarning, stacklevel=3)
    copied = _copied_hook_objects(model)
    if copied:  # break44 #1: a tap object's list stayed empty; sharing it broke more (break46 #1)
        where, kind, owner = copied[0]
        warnings.warn(
            f"`{where}` has a {kind} that is {owner}: prepare (and finalize) "
            "work on a deep copy of the model, hook objects included, so the prepared model "
            f"calls a copy's, and yours gets nothing; register it on the prepared (and the "
            f"finalized) model, e.g. pm.get_submodule('{where}').register_forward_hook(...)"
            + (f" ({len(copied) - 1} more such hook{'s' if len(copied) > 2 else ''})"
               if len(copied) > 1 else ""), UserWarning, stacklevel=3)
    if found.root_line and not root_updates:  # (a buffer updated while tracing differs too)
        other = "eval" if mode == "train" else "train"
        warnings.warn(
            f"{type(model).__name__}.forward reads self.training ({found.root_line}); the prepared "
            f"model does what it does in {mode} mode, the mode it was prepared in, in both modes; "
            f"prepare it in {other} mode for what it does there (e.g. auxiliary heads), or move "
            "that code into a submodule, which then follows .train()/.eval()",
            UserWarning, stacklevel=3)
    own = hook_names(model)
    if own:  # torch.fx traces forward itself: the model's own hooks are not in the graph
        warnings.warn(f"{type(model).__name__} has {own} on the model itself, which the prepared "
                      "and finalized models do not run (a traced graph holds its forward only); "
                      "register it there again", UserWarning, stacklevel=3)
    if root_updates:
        warnings.warn(f"{type(model).__name__}.forward {root_updates.removeprefix('its forward ')}; "
                      "move that code into a "
                      "small submodule of its own, which is then called as one op",
                      UserWarning, stacklevel=3)
    if updated_parameters:  # break99 F2: MoCo's momentum update of its key encoder
        more = f" ({len(updated_parameters) - 1} more)" if len(updated_parameters) > 1 else ""
        warnings.warn(
            f"{type(model).__name__}.forward changes parameter `{updated_parameters[0]}`{more} "
            "while it runs (a momentum or EMA teacher update, `p.data = ...` or `p.mul_(m)` on "
            "real tensors): torch.fx ran that once, while tracing, and the prepared and finalized "
            "models never do (prepare kept the weights as they were); make that update outside "
            "forward, after optimizer.step()", UserWarning, stacklevel=3)
    if stored:  # break97 F8: a feature kept for a loss or Grad-CAM, a call counter
        names = ", ".join(f"`{a}`" for a in stored[:3]) + (", ..." if len(stored) > 3 else "")
        warnings.warn(
            f"{type(model).__name__}'s forward sets attribute{'s' if len(stored) > 1 else ''} "
            f"{names} while it runs: "
            "torch.fx ran that once, while tracing, and the prepared and finalized models never "
            "do (a traced graph holds tensor operations only); return the value from forward, or "
            "register a forward hook on the prepared (and the finalized) model's submodule",
            UserWarning, stacklevel=3)
    if found.heads_unchecked:
        heads, why = found.heads_unchecked
        warnings.warn(
            f"`{heads[0]}`{f' ({len(heads) - 1} more)' if len(heads) > 1 else ''} is called in "
            f"{mode} mode only, and its code could not be traced alone in the other mode "
            f"({why}), so what it does with self.training could not be found: the prepared "
            f"model keeps what it does in {mode} mode (prepare in the other mode to leave it "
            "out)", UserWarning, stacklevel=3)
    if found.unchecked and not found.root_line:
        warnings.warn(
            f"{type(model).__name__} could not be traced with every module's mode flipped "
            f"({found.unchecked}), so code that reads self.training could not be found; the "
            f"prepared model keeps what such code does in {mode} mode", UserWarning, stacklevel=3)
    return gm


def _warn_mode_overrides(model: nn.Module, root: nn.Module, gm: fx.GraphModule) -> None:
    """A traced-through module becomes a plain ``nn.Module`` in the graph module (the model
    itself a GraphModule), so its class's methods are gone. ``train``/``eval`` overrides are the
    ones whose loss changes results silently (break90 F3: a backbone that keeps its BatchNorms
    in eval mode, mmdet's ``norm_eval``; after ``pm.train()`` their statistics updated)."""
    kept = dict(gm.named_modules())
    overriding = [name for name, m in root.named_modules()
                  if (type(m).train is not nn.Module.train or type(m).eval is not nn.Module.eval)
                  and type(kept.get(name)) is not type(m)]
    if overriding:  # one that sets the modes as nn.Module's does (timm's attention clearing a
        # cache: levit, efficientformer) loses nothing: each is tried on a copy
        copy = copy_model(model)
        overriding = [name for name in overriding if _sets_other_modes(copy.get_submodule(name))]
    if overriding:
        first = overriding[0]
        cls = type(root.get_submodule(first)).__name__
        where = f"`{first}` ({cls})" if first else f"{cls} itself"
        more = f" ({len(overriding) - 1} more)" if len(overriding) > 1 else ""
        warnings.warn(
            f"{where}{more} overrides train()/eval(), which the prepared and finalized models do "
            "not keep (torch.fx traces through it: its class becomes a plain module), so "
            ".train() sets every submodule's mode alike and the override's other changes are "
            "not made; after each .train()/.eval(), do what it does yourself (e.g. frozen "
            "BatchNorms: m.eval() for each)",
            UserWarning, stacklevel=4)


def _sets_other_modes(module: nn.Module) -> bool:
    """Whether ``module``'s ``train()``/``eval()`` override (called on a copy) does anything the
    graph module would not: leave a module in another mode than nn.Module's would, or change
    an attribute of one (a flag its forward reads, which the graph holds as traced: break93
    #2). Emptying an already empty cache (timm's levit attention) changes nothing. An
    override that raises is taken as one that matters (break93 #3: prepare crashed)."""
    def state():
        return [{k: (type(v), v if isinstance(v, (bool, int, float, str, type(None)))
                     else len(v) if isinstance(v, (dict, list, set, tuple)) else id(v))
                 for k, v in vars(m).items() if not k.startswith("_") and k != "training"}
                for m in module.modules()]
    try:
        module.train(True)  # settled: the state a .train() leaves
        before = state()
        for mode in (False, True):
            module.train(mode) if mode else module.eval()
            if any(m.training is not mode for m in module.modules()) or state() != before:
                return True
    except Exception:  # noqa: BLE001 - said in the warning, not raised from prepare
        return True
    return False


_LAYER_FUNCTIONS = {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                    "conv_transpose3d", "linear"}


@contextlib.contextmanager
def _through_checkpoints(seen: list[str]):
    """While tracing, ``torch.utils.checkpoint.checkpoint(fn, *args)`` calls ``fn(*args)`` (the
    same forward, no reentrant autograd Function around proxies) and appends what ``fn`` is to
    ``seen`` (a module's path from the yielded ``{id: path}``, which the caller fills): the
    graph keeps the forward but not the checkpointing, which trace() says (activation
    checkpointing was traced away without a word). Every way of calling checkpoint
    (``checkpoint_sequential`` too) goes through ``torch.utils.checkpoint._checkpoint_impl``;
    where a torch has none, nothing is patched."""
    import torch.utils.checkpoint as ckpt

    names: dict[int, str] = {}  # id -> path of the modules of the copy being traced (the caller's)
    impl = getattr(ckpt, "_checkpoint_impl", None)
    if impl is None:
        yield names
        return

    def path(module) -> str:
        return f"`{names[id(module)]}`" if names[id(module)] else "the model"

    def traced(function, args, kwargs, **options):
        owner = getattr(function, "__self__", None) if inspect.ismethod(function) else function
        if isinstance(owner, nn.Module):
            if id(owner) in names:  # (not a module of another copy: the modes' check traces those)
                seen.append(path(owner) if owner is function else f"{path(owner)}.{function.__name__}")
        else:  # a function: the modules it closes over (checkpoint_sequential's segments)
            held = [v for cell in getattr(function, "__closure__", None) or ()
                    for v in (cell.cell_contents if isinstance(cell.cell_contents, (list, tuple))
                              else [cell.cell_contents])
                    if isinstance(v, nn.Module) and names.get(id(v)) != ""]
            # (break113 F5: a lambda closing over the model itself was named "the model")
            if not held:
                seen.append(getattr(function, "__qualname__", type(function).__name__))
            seen.extend(path(m) for m in held if id(m) in names)
        return function(*args, **(kwargs or {}))

    ckpt._checkpoint_impl = traced
    try:
        yield names
    finally:
        ckpt._checkpoint_impl = impl


def _layers_reached(graph: fx.Graph) -> set[str]:
    """Module paths a trace calls as modules, or whose weight it gives to a conv/linear function
    within a few ops (a conv subclass traced through: ``F.conv2d(x, self.weight * s)``).
    Weights given only to some other function (torchvision's Swin attention) do not count."""
    reached = {n.target for n in graph.nodes if n.op == "call_module"}
    for node in graph.find_nodes(op="get_attr"):
        frontier = list(node.users)
        for _ in range(3):
            if any(getattr(u.target, "__name__", u.target) in _LAYER_FUNCTIONS for u in frontier):
                reached.add(node.target.rpartition(".")[0])
                break
            frontier = [v for u in frontier for v in u.users]
    return reached


def _restore_parameters(model: nn.Module, traced: nn.Module) -> list[str]:
    """Names of the parameters of ``traced`` (a copy of ``model``) that tracing changed, each
    given ``model``'s values back: code that updates parameters on real tensors (reached
    through ``self.parameters()``, not as proxies) ran at trace time, and is in no graph."""
    before = dict(model.named_parameters())
    after = dict(traced.named_parameters())
    changed = _changed(before, after)
    with torch.no_grad():
        for name in changed:
            after[name].copy_(before[name])
    return changed


def _restore_assigned_buffers(model: nn.Module, traced: nn.Module) -> None:
    """Give back ``model``'s value (a copy) to each buffer of ``traced`` (a copy of ``model``)
    that tracing left holding a proxy: ``self.seen += x.shape[0]`` in the model's own forward
    (warned of) put the proxy in the prepared and finalized models, which then could not be
    saved, and the mode check's copy failed on it (break109 F5)."""
    originals = dict(model.named_buffers())
    for name, value in list(traced.named_buffers()):
        if not isinstance(value, torch.Tensor) and name in originals:
            owner, _, leaf = name.rpartition(".")
            module = traced.get_submodule(owner) if owner else traced
            module._buffers[leaf] = originals[name].detach().clone()


def _changed(before: dict, after: dict) -> list[str]:
    """Names of the tensors of ``after`` (in its order) whose values differ from the same-named, same-shaped
    and same-dtype ones of ``before`` (NaN equal to NaN); compared where they are (a copy
    shares the device): no host copy."""
    out = []
    for name, now in after.items():
        was = before.get(name)
        if (not isinstance(now, torch.Tensor) or was is None or was.shape != now.shape
                or was.dtype != now.dtype):
            continue
        if not (torch.equal(was, now) or (was.is_floating_point() and bool(
                ((was == now) | (was.isnan() & now.isnan())).all()))):
            out.append(name)
    return out


def _attributes_set_while_tracing(model: nn.Module, traced: nn.Module) -> list[str]:
    """``module.attr`` paths of plain attributes that the traced copy ``traced`` of ``model``
    gained or changed while tracing: set to a traced value (a proxy, or a list or tuple holding
    one: ``self.features = x``), or a number, bool or string changed (``self.calls += 1``).
    Dicts are left out: timm caches traced values in one (its attention biases), which the
    graph computes again."""
    def traced_value(value) -> bool:
        if isinstance(value, (list, tuple)):
            return any(isinstance(v, fx.Proxy) for v in value)
        return isinstance(value, fx.Proxy)

    originals = dict(model.named_modules())
    out = []
    for path, m in traced.named_modules():
        original = originals.get(path)
        if original is None:
            continue
        before = vars(original)
        for attr, now in vars(m).items():
            if attr in _MODULE_INTERNALS:
                continue
            was = before.get(attr, _MISSING)
            if traced_value(now) or (isinstance(now, (bool, int, float, str)) and was is not _MISSING
                                     and type(was) is type(now) and was != now
                                     and not (was != was and now != now)):  # NaN (review108 F7)
                out.append(f"{path}.{attr}" if path else attr)
    return out


_MISSING = object()


def _updated_while_tracing(model: nn.Module, traced: nn.Module, graph: fx.Graph) -> dict[str, str]:
    """{owner module path: why} for buffers the forward updates (a running mean it keeps
    itself): what ran on the buffer alone ran once, at trace time, and the graph reads a
    frozen copy. Found as a buffer that tracing changed in ``traced`` (a copy of ``model``),
    one the graph updates in place (``buf.mul_(0.9)`` on zeros changes nothing to see), or one
    assigned a traced value (``self.mu = 0.9 * self.mu + 0.1 * x.mean()``)."""
    before = dict(model.named_buffers())
    buffers = dict(traced.named_buffers())
    names = {}  # buffer -> how it is updated
    updated = set(_changed(before, buffers))
    for name, now in buffers.items():
        if not isinstance(now, torch.Tensor):  # it holds a proxy (break41: the check raised)
            names[name] = "assigns the buffer"
        elif name in updated:
            names[name] = "updates the buffer"
    for node in graph.nodes:
        first = node.args[0] if node.args else None
        if (node.op == "call_method" and node.target.endswith("_") and not node.target.startswith("_")
                and isinstance(first, fx.Node) and first.op == "get_attr" and first.target in buffers):
            names.setdefault(first.target, "updates the buffer")
    out: dict[str, dict[str, list[str]]] = {}
    for name, how in names.items():
        owner, _, leaf = name.rpartition(".")
        out.setdefault(owner, {}).setdefault(how, []).append(leaf)
    return {owner: "its forward " + " and ".join(
                f"{how}{'s' if len(leaves) > 1 else ''} {', '.join(leaves)}"
                + (" a value computed from its input" if how == "assigns the buffer" else " in place")
                for how, leaves in hows.items())
            + ", which a traced graph would freeze at its example value"
            for owner, hows in out.items()}


HOOK_KINDS = (("_forward_pre_hooks", "forward pre-hook"), ("_forward_hooks", "forward hook"),
               ("_backward_pre_hooks", "backward pre-hook"), ("_backward_hooks", "backward hook"))
#: the hooks a forward calls (what a check run of the model meets)
FORWARD_HOOK_KINDS = HOOK_KINDS[:2]


def hook_names(module: nn.Module, kinds=HOOK_KINDS) -> str:
    """The user's hooks on ``module`` itself, named ("" when none): "a forward hook (tap)"."""
    said = []
    for attr, kind in kinds:
        hooks = [h for h in (getattr(module, attr, None) or {}).values()
                 if type(h).__module__.split(".")[0] != "fxprune"]  # not a method's own
        if hooks:
            names = ", ".join(getattr(h, "__name__", type(h).__name__) for h in hooks)
            said.append(f"{'a ' if len(hooks) == 1 else ''}{kind}{'s' if len(hooks) > 1 else ''} ({names})")
    return " and ".join(said)


# objects of these packages in a hook's partial are its settings, not its store
_LIBRARIES = frozenset({"builtins", "numpy", "torch", "functools", "collections", "enum",
                        "logging", "pathlib", "re", "types", "fxprune"})


def _hook_owner(hook) -> tuple[object | None, tuple]:
    """The object ``hook`` is bound to (a bound method's ``__self__``, a callable object itself;
    None for a plain function, closure or builtin) and, for a ``functools.partial``, the
    arguments it holds (the owner is then its function's)."""
    func, args = hook, ()
    if isinstance(hook, functools.partial):
        func, args = hook.func, (*hook.args, *hook.keywords.values())
    if inspect.ismethod(func):
        return func.__self__, args
    return (None if inspect.isfunction(func) or inspect.isbuiltin(func) else func), args


def _copied_hook_objects(model: nn.Module) -> list[tuple[str, str, str]]:
    """(module path, hook kind, object class) for hooks on submodules that a deep copy copies
    with their object: bound methods of objects outside the model (an ``nn.Module`` collector
    or LightningModule too: break50 #2), callable objects, and a ``functools.partial``'s
    arguments (``partial(tap, store)`` appends to a copy of ``store``); a plain function or
    closure is shared by a deep copy, and a module of the model is copied with it anyway."""
    inside = {id(m) for m in model.modules()}

    def copied(value) -> bool:
        """A store the hook fills, which the copy's hook fills instead: an empty container,
        or an object of the user's (an argument read only, a list of names, an Enum, a
        logger, a number, reads alike in a copy or is not copied at all: break53 #5)."""
        if isinstance(value, (tuple, frozenset)):
            return any(copied(v) for v in value)
        if isinstance(value, (list, dict, set, collections.deque)):
            return not value
        if inspect.ismethod(value):
            value = value.__self__
        return (id(value) not in inside and hasattr(value, "__dict__")
                and not isinstance(value, (nn.Module, torch.Tensor, enum.Enum, logging.Logger))
                and not inspect.isroutine(value) and not inspect.isclass(value)
                and not inspect.ismodule(value)
                and type(value).__module__.split(".")[0] not in _LIBRARIES)

    out = []
    for name, m in model.named_modules():
        if not name:
            continue  # the model's own hooks are not run at all (warned of in trace())
        for attr, kind in HOOK_KINDS:
            for hook in (getattr(m, attr, None) or {}).values():
                owner, args = _hook_owner(hook)
                if (owner is not None and id(owner) not in inside
                        and type(owner).__module__.split(".")[0] not in ("fxprune", "torch")):
                    out.append((name, kind, f"a method of a {type(owner).__name__} object"))
                elif any(copied(a) for a in args):
                    held = next(a for a in args if copied(a))
                    out.append((name, kind, f"a functools.partial holding a {type(held).__name__}"))
    return out


def _hooked_modules(model: nn.Module, tracer: "_Tracer") -> dict[str, str]:
    """{module path: why} for submodules with hooks that tracing would go through: they are
    called as one op, so their hooks run at each call (the model's own: see trace())."""
    out: dict[str, str] = {}
    for name, m in model.named_modules():
        if not name or any(name.startswith(f"{done}.") for done in out):
            continue
        hooks = hook_names(m)
        if hooks and not tracer.is_leaf_module(m, name):
            out[name] = (f"it has {hooks}, which run at each call only of a module called "
                         "as one op (traced through, once, while tracing)")
    return out


def copy_model(model: nn.Module, when: str = "prepare", tensors_of: nn.Module | None = None) -> nn.Module:
    """A deep copy of ``model``; TypeError naming what cannot be copied, with the way out
    (to take ``before {when}``). With ``tensors_of`` (a copy of ``model`` that fxprune made),
    the copy's parameters and buffers are that module's, same name for same name, not new ones:
    for a copy only traced and thrown away, whose tensors torch.fx reads as proxies (cloning
    ResNet-50's weights was a third of prepare's time)."""
    hooked = hook_reparametrization(model, when)
    if hooked:  # whatever the grad state (break121 #1: after a no_grad forward the copy went
        # through, prepare accepted the model, and finalize failed after the training)
        raise UnsupportedModelError(f"fxprune cannot work on {type(model).__name__}: {hooked}")
    memo = {}
    if tensors_of is not None:
        theirs = {**dict(tensors_of.named_parameters(remove_duplicate=False)),
                  **dict(tensors_of.named_buffers(remove_duplicate=False))}
        for name, t in [*model.named_parameters(remove_duplicate=False),
                        *model.named_buffers(remove_duplicate=False)]:
            if name in theirs and theirs[name].shape == t.shape:
                memo[id(t)] = theirs[name]
    try:
        return copy.deepcopy(model, memo)
    except Exception as e:  # noqa: BLE001 - re-raised with the way out
        why = _why_uncopyable(model, when)
        if not why:
            raise UnsupportedModelError(f"fxprune works on a copy of the model but {type(model).__name__} "
                                        f"cannot be deep-copied: {e}; make its attributes copyable") from e
        # the cause is named: one line, not torch's traceback above it (break121 #1)
        raise UnsupportedModelError(f"fxprune works on a copy of the model but {type(model).__name__} "
                                    f"cannot be deep-copied: {why}") from None


_DEPRECATED_HOOKS = {  # torch's hook-based reparametrizations hold a computed weight
    "WeightNorm": ("torch.nn.utils.weight_norm", "torch.nn.utils.remove_weight_norm(module)",
                   "torch.nn.utils.parametrizations.weight_norm"),
    "SpectralNorm": ("torch.nn.utils.spectral_norm", "torch.nn.utils.remove_spectral_norm(module)",
                     "torch.nn.utils.parametrizations.spectral_norm"),
}


_MODULE_INTERNALS = frozenset(vars(nn.Module()))  # _parameters, _buffers, the hook dicts...


def hook_reparametrization(model: nn.Module, when: str = "prepare") -> str:
    """The first layer of ``model`` that torch.nn.utils.prune or the deprecated hook-based
    weight_norm / spectral_norm reparametrizes, with the way out ("" when none). Such a layer's
    weight is recomputed by a forward pre-hook from ``weight_orig`` and a mask (or ``weight_g``
    and ``weight_v``): fxprune can neither prune the computed tensor nor always copy it (a
    deep copy fails while it holds autograd history)."""
    from torch.nn.utils import prune as torch_prune

    for name, m in model.named_modules():
        where = f"`{name}`" if name else f"the model ({type(model).__name__})"
        for hook in (getattr(m, "_forward_pre_hooks", None) or {}).values():
            cls = type(hook).__name__
            if cls in _DEPRECATED_HOOKS:
                api, remove, new = _DEPRECATED_HOOKS[cls]
                return (f"{where} uses the deprecated {api}, which recomputes its weight at each "
                        f"call; call {remove} before {when}, or use {new} (kept whole by fxprune)")
            if isinstance(hook, torch_prune.BasePruningMethod):
                return (f"{where} is pruned with torch.nn.utils.prune, which recomputes its "
                        f"{hook._tensor_name} from a mask at each call; call "
                        f"torch.nn.utils.prune.remove(module, {hook._tensor_name!r}) before "
                        f"{when}, which makes the pruning permanent")
    return ""


def _why_uncopyable(model: nn.Module, when: str = "prepare") -> str:
    """What makes ``model`` fail a deep copy, with the way out, for the causes users meet
    (break50 #8: the deprecated weight_norm, a buffer or tap holding autograd history; the
    message named weight_norm for all of them); "" when none is found."""

    def computed(value) -> bool:
        if isinstance(value, (list, tuple)):
            return any(computed(v) for v in value)
        if isinstance(value, dict):
            return any(computed(v) for v in value.values())
        return isinstance(value, torch.Tensor) and value.grad_fn is not None

    def computed_attributes(obj) -> list[str]:
        """Its attributes (a module's buffers too; not nn.Module's own dicts) holding such."""
        items = list(getattr(obj, "__dict__", {}).items())
        if isinstance(obj, nn.Module):
            items = [*obj._buffers.items(), *[(k, v) for k, v in items if k not in _MODULE_INTERNALS]]
        return [k for k, v in items if computed(v)]

    inside = {id(m) for m in model.modules()}
    for name, m in model.named_modules():
        where = f"`{name}`" if name else f"the model ({type(model).__name__})"
        for attr, kind in HOOK_KINDS:
            for hook in (getattr(m, attr, None) or {}).values():
                # (torch's prune and deprecated weight_norm: hook_reparametrization, first)
                owner, args = _hook_owner(hook)
                for obj in (owner, *args):  # (a partial's store too, as _copied_hook_objects reads it)
                    held = ([] if obj is None or id(obj) in inside
                            else ["its argument"] if computed(obj) else computed_attributes(obj))
                    if held:  # (a collector module outside the model too: break53 #4)
                        return (f"the {kind} on {where} ({type(obj).__name__}) holds "
                                f"{held[0] if held[0] == 'its argument' else f'`{held[0]}`'}, "
                                "tensors with autograd history (outputs it stored): clear it, or "
                                f"store .detach()'d tensors, before {when}")
        held = computed_attributes(m)
        if held:
            return (f"{where}.{held[0]} holds a tensor with autograd history (computed, not a leaf): "
                    ".detach() it where it is set")
    return ""


def _parts_to_prepare(model: nn.Module) -> str:
    """The children of ``model`` worth preparing alone: its ``backbone`` where it has one, else
    those holding conv layers (break112 F3: RAFT has no backbone, and was told to pass it)."""
    if isinstance(getattr(model, "backbone", None), nn.Module):
        return "its backbone: fxprune.prepare(model.backbone, ...)"
    convs = (nn.modules.conv._ConvNd,)
    parts = [name for name, child in model.named_children()
             if any(isinstance(m, convs) for m in child.modules())]
    if not parts:
        return "a submodule: fxprune.prepare(model.SUBMODULE, ...)"
    listed = ", ".join(f"model.{name}" for name in parts[:4]) + (", ..." if len(parts) > 4 else "")
    return f"a submodule with its convs ({listed}): fxprune.prepare(model.{parts[0]}, ...)"


def _trace_error(model: nn.Module, tracer: _Tracer, e: Exception, numbers: dict) -> TraceError:
    path = tracer.failed_at or []
    where = path[-1] if path else ("", type(model))
    name = where[0] or "(the model itself)"
    frame = _user_frame(e)
    source = line = ""
    if frame is not None:
        line = (frame.line or linecache.getline(frame.filename, frame.lineno)).strip()
        source = f" at {frame.filename}:{frame.lineno} in {frame.name}():\n    {line}\n"
    if where[0]:
        way_out = (f"prepare(..., leaf_modules=[{where[1].__name__}]) or leaf_modules=['{where[0]}'] "
                   f"keeps that module whole (its channels are then not pruned)")
        base = next((b for b in where[1].__mro__[1:] if b in CHANNEL_RULES), None)
        if base is not None:  # a norm or conv subclass calling super().forward
            named = (f"torch.nn.{base.__name__}" if getattr(nn, base.__name__, None) is base
                     else f"{base.__module__}.{base.__qualname__}")
            way_out += (f"; if it works channel by channel as {base.__name__} does, prepare(..., "
                        f"rules={{{where[1].__name__}: fxprune.op_table.CHANNEL_RULES[{named}]}}) "
                        "keeps it one op with its channels prunable")
    else:  # the model's own forward: a detector's loop over images, its postprocessing
        way_out = ("move the data-dependent part into a submodule and pass it in leaf_modules, "
                   f"or prepare the part of the model that traces ({_parts_to_prepare(model)})")
    if isinstance(e, fx.proxy.TraceError) and str(e).startswith("iterating"):
        why = f"Either rewrite it as said, or {way_out}."
    elif isinstance(e, fx.proxy.TraceError):
        why = ("Python control flow that depends on tensor values or shapes cannot be traced "
               "(forward arguments that are a bool or None can: give their values in "
               "example_inputs; a str or number that picks the branch cannot: make it a "
               f"module attribute set in __init__). Either {way_out}, or rewrite the branch so it does "
               "not depend on tensor values (a guard on the input's rank or shape, `if x.dim() "
               "== 3` or `assert x.shape[1] == 3`: delete it, or check with torch._assert(cond, "
               "message), which traces).")
    elif isinstance(e, TypeError) and "does not support item assignment" in str(e):
        why = ("torch.fx records no in-place item assignment (`x[...] = v`). Either write it out "
               "of place (`x = x.index_fill(1, idx, v)`, `x = torch.where(mask, v, x)`, "
               f"`torch.cat` of the pieces), or {way_out}.")
    else:
        why = ("Code that needs concrete values (numbers, shapes as Python ints) where torch.fx "
               f"passes symbolic proxies cannot be traced. Either {way_out}, or use tensor "
               "methods (x.new_zeros(...), x.size(...)) that torch.fx records.")
    code = line.split("#", 1)[0]  # the failing line's code, its comment left out
    star = _var_keyword(model) if not where[0] else None
    if star is not None and re.search(rf"\b{re.escape(star)}\b", code):
        # (break174 F12: `if kw.get("double"):` was told of tensor-dependent control flow)
        why = (f"The line reads forward's **{star}, and prepare passes example_inputs by "
               "position, so it cannot fill keyword arguments (torch.fx traces **"
               f"{star} as a proxy, so a branch on it fails); wrap the model in a module whose "
               "forward takes them as named arguments, and prepare that.")
    # the number arguments the failing line names (review172 F6: not a failure elsewhere)
    numbers = {k: v for k, v in numbers.items() if re.search(rf"\b{re.escape(k)}\b", code)}
    if numbers and not str(e).startswith("iterating"):
        # (break171 F8: `for _ in range(n)` with forward(x, n=1) was told to use tensor methods)
        listed = ", ".join(f"{k}={v!r}" for k, v in numbers.items())
        one = len(numbers) == 1
        why += (f" Note that forward's number argument{'' if one else 's'} ({listed}) "
                f"{'is' if one else 'are'} traced as {'an input' if one else 'inputs'}, not as "
                "a value (bools and None are): one that sets a loop count, a size or a branch "
                "cannot be; make it a module attribute set in __init__, or prepare a wrapper "
                "module whose forward calls the model with it written in.")
    return TraceError(f"torch.fx could not trace module `{name}` ({where[1].__name__})"
                      f"{source or ' '}{type(e).__name__}: {e}\n{why}")
