"""fxprune's public functions: prepare -> (train) -> finalize, and what to look at in between."""
from __future__ import annotations

import copy
import difflib
import functools
import inspect
import operator
import warnings
from collections.abc import Iterable, Mapping

import torch
from torch import fx, nn

from fxprune.compare import (DEFAULT_RTOL, default_rtol, inputs_for,  # noqa: F401 (api.DEFAULT_RTOL)
                             max_relative_error, run_eval)
from fxprune.passes.autograd_function import function_of
from fxprune.passes.bn_rescale import sync_loaded_rescale
from fxprune.passes.check_hooks import check_hooks_take_the_masks
from fxprune.passes.check_trace import check_traced
from fxprune.passes.group_analysis import analyze
from fxprune.passes.insert_masks import MASK_OWNER, insert_masks
from fxprune.passes.normalize_args import normalize_input_keyword
from fxprune.passes.shape_prop import (check_example_values, map_tensors, normalize_example_inputs,
                                      preserving_rng, propagate_shapes)
from fxprune.passes.surgery import is_tolerance, remove_channels, verify
from fxprune.passes.trace import copy_model, fixed_arguments, number_arguments, trace

from .checks import check_bool
from .cost import LayerSpec
from .errors import ArgumentError, ArgumentTypeError, UnsupportedModelError, warn
from .masks import MaskBank
from .groups import (PreparedState, channel_groups, is_prepared, latest_pruner, mask_bank,
                     record_input_shape, state_of)
from .op_table import DEFAULT_LEAF_MODULES
from .rules import ChannelRule
from .serialization import make_savable


def prepare(model: nn.Module, example_inputs, *, leaf_modules=(), rules: dict | None = None,
            keep=()) -> fx.GraphModule:
    """Trace ``model``, find its channel groups and insert soft masks.

    Args:
        model: any ``nn.Module`` torch.fx can trace. It is deep-copied first and never modified:
            the prepared model owns its own copy of every weight.
        example_inputs: the forward arguments, e.g. ``(torch.randn(1, 3, 224, 224),)``; they fix
            the shapes the analysis reasons about (the groups do not depend on the batch size;
            what is counted for the example does: :func:`summary`'s FLOPs are the whole
            batch's, and :func:`finalize` records its shape, batch included, as the input
            ``fxprune deploy`` times) and are what
            :func:`finalize` checks its surgery on, so they may not all be empty or all NaN/inf
            (:class:`~fxprune.errors.ExampleInputsError`). Arguments that are a bool or None
            here, or left out with such a default (``return_features=False``, ``skip=None``),
            are traced as those values: the prepared model takes the branch they choose, and
            raises AssertionError when called with another (prepare with that value instead).
        leaf_modules: module classes or module paths traced as one call. Use it for modules with
            data-dependent control flow; a leaf with no channel rule keeps its channels whole.
        rules: extra rows for the channel rule table (``{MyModule: ChannelAffine(("weight",))}``,
            ``{MyConv: Conv()}``), see :mod:`fxprune.op_table`. A key is a module class, a
            function (``torch.flip``) or a Tensor method's name (``"flip"``); a module instance
            or a key that is neither callable nor a string raises TypeError, and a key the
            graph never calls (a module class the model has no module of; torch's own
            functions and classes and Python's operators excepted: a shared rules dict) is
            warned of. A
            module class given a row is traced as one call. A row that cannot describe its module (a conv rule for a module
            without ``groups``, ``Conv()`` for a transposed conv) raises
            :class:`~fxprune.errors.FxPruneError` naming the module and what it lacks.
        keep: modules whose output channels are never pruned, as Torch-Pruning's ignored
            layers or NNI's excluded ops: module paths (``"conv1"``; a path keeps every module
            under it, ``"layer1"`` the whole block), module classes (``nn.Linear``: every one
            the model has) or the model's own module objects. A kept layer's output channels,
            and all that share them (the residual stream it adds into), stay whole; its input
            channels follow the layer before it (keep that one too to keep them). Their groups
            say why in :func:`channel_groups` and :func:`fxprune.summary`. An entry that is no
            module of the model, the model itself, or no conv, linear or norm layer whose
            output channels the graph holds (an activation, a module inside a leaf module)
            raises ArgumentError; a layer kept whole anyway (the model's output) changes
            nothing.

    Returns:
        A ``torch.fx.GraphModule`` computing the same function while all masks are 1. Its groups
        are in :func:`channel_groups`; :func:`finalize` turns it into a smaller plain model.
        Code that reads ``self.training`` keeps following ``.train()/.eval()``: a submodule
        whose traced code depends on it is called as one op (kept whole unless the op table
        has a row for it), a functional dropout becomes an ``nn.Dropout`` module; the model's
        own ``forward`` (auxiliary heads) keeps the mode it was prepared in, with a
        ``UserWarning`` (see :mod:`fxprune.passes.follow_mode`).
    """
    # its weights and masks are trained: no inference tensors, even under inference_mode (a
    # `with`, not a decorator, so warnings still point at the caller's line) (break43 #7)
    with torch.inference_mode(False):
        if not isinstance(model, nn.Module):
            raise ArgumentTypeError(f"prepare expects an nn.Module, got {type(model).__name__}")
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            raise UnsupportedModelError(
                f"prepare got a {type(model).__name__} wrapper; pass the model it wraps "
                "(model.module) and wrap the prepared model instead")
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            raise UnsupportedModelError(
                "prepare got a torch.compile'd model; pass the model before compiling "
                "(model._orig_mod) and compile the prepared or the finalized one")
        if isinstance(model, torch.jit.ScriptModule):  # (break79 F3: fx's own assertion)
            raise UnsupportedModelError(
                "prepare got a TorchScript module (torch.jit.script or trace); "
                "torch.fx traces the Python code, which it no longer holds: pass the "
                "model before scripting, and script the finalized one")
        if isinstance(model, fx.GraphModule) and "fxprune" in getattr(model, "meta", {}):
            raise UnsupportedModelError(
                "this model is already prepared by fxprune; prepare the original model")
        inner = next((name for name, m in model.named_modules() if isinstance(m, MaskBank)), None)
        if inner is not None:  # (review143 F6: its masked layers were offered as leaf_modules)
            raise UnsupportedModelError(
                f"prepare: the model holds a prepared model (its masks at `{inner}`); "
                "finalize that one first, or prepare the model it came from")
        if leaf_modules is None:  # (break111 F16: 'NoneType' object is not iterable)
            leaf_modules = ()
        elif isinstance(leaf_modules, (str, type)):  # one path or class: 'conv' read as c, o, n, v
            leaf_modules = (leaf_modules,)
        elif not isinstance(leaf_modules, Iterable):
            raise ArgumentTypeError(f"prepare: leaf_modules= is a list of module classes or module paths "
                                    f"(str), got {type(leaf_modules).__name__}")
        kept = _kept_modules(model, keep)
        aten = _aten_layer(model, leaf_modules)
        if aten:  # (break121 #6: every op a barrier "with no channel rule for aten.conv2d", and
            # rules for ATen ops suggested as the way out)
            raise UnsupportedModelError(
                f"prepare got a graph whose layers are ATen ops ({aten}: "
                "torch.export(...).module(), or make_fx / AOTAutograd output): "
                "fxprune's channel rules are for the model's own layers and torch "
                "functions; pass the nn.Module before torch.export, and export the "
                "finalized one")
        lazy = next((name for name, t in (*model.named_parameters(), *model.named_buffers())
                     if isinstance(t, nn.parameter.UninitializedTensorMixin)), None)
        if lazy is not None:  # (break136 F4: torch's "Can't access the shape ... load_state_dict")
            raise UnsupportedModelError(
                f"prepare: the model has uninitialized lazy parameters ({lazy}): "
                "their shapes are not known yet; run the model once on an example "
                "batch (model(x)) before prepare")
        meta = next((name for name, t in (*model.named_parameters(), *model.named_buffers())
                     if t.is_meta), None)
        if meta is not None:  # (break68 #3: torch's aten::equal NotImplementedError, mid-trace)
            raise UnsupportedModelError(
                f"prepare: the model's tensors are on the meta device ({meta}): they "
                "hold no values to trace, check and prune; materialize the model "
                "first (model.to_empty(device='cpu'), then load_state_dict)")
        _refuse_quantization_prepared(model)
        example_inputs = normalize_example_inputs(example_inputs)
        check_example_values(example_inputs)
        if rules is not None and not isinstance(rules, Mapping):  # (break111 F16: 'list' ... 'items')
            raise ArgumentTypeError(f"prepare: rules= is a dict {{module class, function or Tensor method "
                                    f"name: channel rule}}, got a {type(rules).__name__}")
        for key, row in (rules or {}).items():
            if isinstance(key, nn.Module):  # break111 F1: a row keyed by an instance did nothing
                cls = type(key).__name__
                raise ArgumentTypeError(f"prepare: rules= has a module instance as a key ({cls}); rows "
                                        f"are per class: key it by {cls} (type(module)), or a subclass "
                                        "of it that only this module is")
            if not isinstance(key, str) and not callable(key):
                raise ArgumentTypeError(f"prepare: rules= has the key {key!r} (of type "
                                        f"{type(key).__name__}); a key is a module class, a function, "
                                        "or the name of a Tensor method")
            if not isinstance(row, ChannelRule):
                raise ArgumentTypeError(f"rules[{getattr(key, '__name__', key)!r}] is a {type(row).__name__}, "
                                        "not a channel rule: give an instance such as "
                                        "fxprune.rules.ChannelAffine(('weight',)) or fxprune.rules.Barrier('why')")
        gm = trace(model, leaf_modules=tuple(DEFAULT_LEAF_MODULES) + tuple(leaf_modules), rules=rules,
                   fixed=fixed_arguments(model, example_inputs),
                   numbers=number_arguments(model, example_inputs))
        normalize_input_keyword(gm)  # torch.flip(input=y, ...): the tensor where rules read it
        _warn_unused_rules(model, gm, rules)
        # Analysis runs the inputs on the model's device/dtype (CPU example, GPU model is fine); the
        # inputs are stored as given and moved (copied) again at each later use (finalize's check,
        # FLOPs): no run writes into the user's tensors or the stored ones.
        stored = map_tensors(example_inputs, lambda t: t.detach().clone())
        eval_output = propagate_shapes(gm, inputs_for(gm, stored))
        # a copy (the user's hooks) holding the graph's tensors, not new ones (review125 F3: a
        # second copy of every weight at prepare's peak, on the GPU too); what a forward writes
        # into them (ci104: a momentum teacher) is put back from the user's model
        check_traced(copy_model(model, tensors_of=gm), gm, stored, eval_output=eval_output,
                     reference=model)
        channels = analyze(gm, rules, kept)
        # the traced model's output as the masked one's is judged: eval mode, IEEE float32,
        # autocast off (review202 R1: against propagate_shapes' run, in the caller's autocast
        # or TF32, a right row was refused)
        unmasked = _reference_output(gm, stored) if rules else None
        insert_masks(gm, channels)
        # a state loaded from a model SMCP rescaled rescales this one too (passes/bn_rescale.py)
        gm.register_load_state_dict_post_hook(sync_loaded_rescale)
        check_hooks_take_the_masks(gm, stored)
        if rules:
            _check_rows_keep_the_function(gm, stored, unmasked, rules)
        count, holders = _untraced_parameters(model, gm)
        quantized = _warn_quantized_layers(model)
        gm.meta["fxprune"] = PreparedState(channels, dict(rules or {}), stored, MASK_OWNER,
                                           untraced_params=count, untraced_modules=holders,
                                           quantized_layers=quantized)
        make_savable(gm)  # torch.save / torch.load round-trip, masks and groups included
        return gm


def _reference_output(gm: fx.GraphModule, inputs: tuple):
    """``gm``'s output as :func:`run_eval` gives it, from the caller's random state, which is
    kept."""
    with preserving_rng(gm, inputs):
        return run_eval(gm, inputs)


def _check_rows_keep_the_function(gm: fx.GraphModule, inputs: tuple, unmasked,
                                  rules: dict) -> None:
    """With every mask 1, the prepared model computes what the traced one did: a row given in
    ``rules=`` whose masked form is another function (break200 F6: a user's weight-standardized
    conv given StandardizedConv(), whose formula differs, trained on another function and was
    refused only at finalize) is refused here, naming the rows. Eval mode, from one random
    state, both runs as :func:`run_eval` makes them; a model whose eval output differs from
    itself between runs is not judged."""
    masked = _reference_output(gm, inputs)
    err = max_relative_error(unmasked, masked)
    rtol = default_rtol(gm)
    if err <= rtol:
        return
    if max_relative_error(masked, _reference_output(gm, inputs)) > rtol:
        return  # random in eval mode: finalize's own check says so
    listed = ", ".join(f"{getattr(key, '__qualname__', None) or key}: {type(row).__name__}()"
                       for key, row in list(rules.items())[:6])
    raise ArgumentError(
        f"prepare: with every channel kept, the prepared model's output differs from the "
        f"model's by {err:.3g} (relative; allowed {rtol:g}): a row given in rules= ({listed}) "
        "has a masked form that is not its op's function (a StandardizedConv() on a layer that "
        "standardizes by another formula: subclass the row and give it the layer's own "
        "standardized_weight), so training would run another model")


def _refuse_quantization_prepared(model: nn.Module) -> None:
    """A model prepared for quantization (QAT layers with fake-quantized weights and a folded
    BatchNorm; observers or fake quantizers of post-training calibration) is refused before it
    runs: eager ``prepare_qat`` models failed in shape propagation with a bare RuntimeError
    (their observers resize their buffers), ``prepare_qat_fx`` and ``prepare_fx`` ones in
    tracing, naming an observer as a leaf to keep (review142 F4, break139 F4, break144 F5)."""
    from torch.ao.quantization.fake_quantize import FakeQuantizeBase
    from torch.ao.quantization.observer import ObserverBase

    from .op_table import QUANTIZATION_WAY_OUT, quantization_stage

    modules = list(model.named_modules())
    found = (next(((name, m, "a quantization-aware-training layer") for name, m in modules
                   if quantization_stage(type(m)) == "qat"), None)  # the layer, before its observers
             or next(((name, m, "an observer of a model prepared for quantization")
                      for name, m in modules if isinstance(m, (ObserverBase, FakeQuantizeBase))), None))
    if found is not None:
        name, m, what = found
        raise UnsupportedModelError(
            f"prepare: `{name or '(the model)'}` is {what} ({type(m).__module__}."
            f"{type(m).__qualname__}), which fxprune does not prune; {QUANTIZATION_WAY_OUT}")


def _warn_quantized_layers(model: nn.Module) -> tuple[str, ...]:
    """Say which layers of ``model`` are quantized (weights packed outside ``nn.Parameter``):
    kept whole, and their weights and FLOPs in no count (break139 F1: an int8 resnet18
    prepared silently, and its summary read "params 0; FLOPs 0"). Returns their names."""
    from .op_table import QUANTIZATION_WAY_OUT, quantization_stage

    staged = [(name, type(m)) for name, m in model.named_modules()
              if quantization_stage(type(m)) == "quantized"]
    if staged:
        name, cls = staged[0]
        listed = ", ".join(n for n, _ in staged[:3]) + (", ..." if len(staged) > 3 else "")
        warn(f"prepare: {len(staged)} quantized layer{'s' if len(staged) > 1 else ''} ({listed}; "
             f"`{name}` is {cls.__module__}.{cls.__qualname__}) "
             f"{'are' if len(staged) > 1 else 'is'} kept whole, with the channels "
             f"{'they read and write' if len(staged) > 1 else 'it reads and writes'}, and the "
             f"quantized weights and their FLOPs are in no count: {QUANTIZATION_WAY_OUT}",
             UserWarning)
    return tuple(name for name, _ in staged)


def _untraced_parameters(model: nn.Module, gm: fx.GraphModule) -> tuple[int, tuple[str, ...]]:
    """How many parameters of ``model`` the traced ``gm`` does not hold (a forward that never
    reads them: GoogLeNet's auxiliary heads in eval mode), and the outermost modules holding
    only such parameters (``model.aux1`` of a wrapper, not ``model``: break124 #9; a
    parameter of the root itself is named as it is). By name over every alias: the graph
    holds copies, and a tied weight is read if any of its names is (review123 #4)."""
    traced = set(dict(gm.named_parameters(remove_duplicate=False)))
    aliases: dict[int, list] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), [p]).append(name)
    untraced = {names[0]: p for p, *names in aliases.values()
                if not any(n in traced for n in names)}
    out = {}
    for name in untraced:
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            if depth == len(parts) or not any(t.startswith(prefix + ".") for t in traced):
                out[prefix] = None
                break
    return sum(p.numel() for p in untraced.values()), tuple(out)


#: ATen ops that are a network's layers: a graph calling them is an exported (ATen) graph
_ATEN_LAYERS = frozenset({"aten::convolution", "aten::_convolution", "aten::conv1d",
                          "aten::conv2d", "aten::conv3d", "aten::conv_transpose1d",
                          "aten::conv_transpose2d", "aten::conv_transpose3d", "aten::linear",
                          "aten::addmm"})


def _kept_modules(model: nn.Module, keep) -> dict[str, str]:
    """``prepare``'s ``keep=`` as ``{module path: how the user named it}``, each entry checked
    against ``model`` (one-line errors naming the entry and the way out)."""
    if keep is None:
        return {}
    if isinstance(keep, (str, type, nn.Module)):  # one entry: 'conv1' read as c, o, n, v, 1
        keep = (keep,)
    elif not isinstance(keep, Iterable):
        raise ArgumentTypeError(f"prepare: keep= is a list of module paths, module classes or "
                                f"the model's modules, got {type(keep).__name__}")
    modules = dict(model.named_modules(remove_duplicate=False))
    path_of = {}
    for path, module in modules.items():
        path_of.setdefault(id(module), path)
    kept = {}
    for entry in keep:
        if entry is model or entry is type(model):  # (break207 F8: "a copy, or another
            # model's?" of the model itself)
            raise ArgumentError("prepare: keep= names the whole model: nothing would be "
                                "pruned; name the layers to keep")
        if isinstance(entry, str):
            if entry not in modules:
                paths = [p for p in modules if p]
                close = difflib.get_close_matches(entry, paths, n=1)
                hint = (f"did you mean {close[0]!r}?" if close else
                        f"paths are model.named_modules()'s, e.g. {', '.join(map(repr, paths[:4]))}")
                raise ArgumentError(f"prepare: keep= names {entry!r}, which is no module of the "
                                    f"model; {hint}")
            if not entry:
                raise ArgumentError("prepare: keep= names the whole model (''): nothing would "
                                    "be pruned; name the layers to keep")
            # a module's second name is its first, which the traced graph uses (break207 F5)
            kept.setdefault(path_of[id(modules[entry])], f"`{entry}`")
        elif isinstance(entry, type) and issubclass(entry, nn.Module):
            paths = [p for p, m in modules.items() if p and isinstance(m, entry)]
            if not paths:
                raise ArgumentError(f"prepare: keep= names {entry.__name__}, of which the model "
                                    "has no module")
            for path in paths:
                kept.setdefault(path, entry.__name__)
        elif isinstance(entry, nn.Module):
            path = path_of.get(id(entry))
            if not path:  # (a copy of one, or the model itself)
                raise ArgumentError(f"prepare: keep= holds a {type(entry).__name__} that is not "
                                    "a submodule of this model (a copy, or another model's?); "
                                    "give its path instead")
            kept.setdefault(path, f"`{path}`")
        else:
            raise ArgumentTypeError(f"prepare: keep= takes module paths (str), module classes or "
                                    f"the model's modules, got {type(entry).__name__}")
    return kept


def _aten_layer(model: nn.Module, leaf_modules=()) -> str:
    """The first ATen conv or linear op a GraphModule in ``model`` calls, and where ("" when
    none): torch.export's and make_fx's graphs, also as a submodule (break124 #7), not a user's
    graph with a torch.ops call of its own (review123 #1), nor one inside a module the user
    made a leaf (called as one op, kept whole: review125 F4)."""
    classes = tuple(c for c in leaf_modules if isinstance(c, type))
    paths = {p for p in leaf_modules if isinstance(p, str)}
    leaves = [path for path, m in model.named_modules()
              if path and (path in paths or (classes and isinstance(m, classes)))]
    for path, module in model.named_modules():
        if not isinstance(module, fx.GraphModule) or any(
                path == leaf or path.startswith(leaf + ".") for leaf in leaves):
            continue
        for n in module.graph.nodes:
            if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload):
                name = n.target._schema.name
                if name in _ATEN_LAYERS:
                    return name.replace("::", ".") + (f" in `{path}`" if path else "")
    return ""


def _warn_unused_rules(model: nn.Module, gm: fx.GraphModule, rules: dict | None) -> None:
    """Warn of rows the traced graph never reaches, which do nothing: a string key names a
    Tensor method (``x.flip(...)``; break111 F1: ``rules={"Conv2d": ...}`` or a module path, as
    leaf_modules= takes, changed nothing without a word), and a plain function is traced
    through unless wrapped (break47 #5: a Barrier for it did nothing, without a word)."""
    if not rules:
        return
    called = {n.target for n in gm.graph.nodes if n.op == "call_method"}
    functions = {id(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    # a custom autograd Function's row is keyed by its class (passes/autograd_function.py)
    functions |= {id(f) for f in map(function_of, gm.graph.nodes) if f is not None}
    classes = {type(m).__name__ for m in model.modules()}
    paths = dict(model.named_modules())
    for key in rules:
        if not isinstance(key, str) or key in called:
            continue
        if key in paths and key:
            hint = (f"; {key!r} is a submodule's path: key the row by its class "
                    f"{type(paths[key]).__name__}")
        elif key in classes:
            hint = f"; key the row by the class {key} itself, not its name"
        elif id(getattr(operator, key, None)) in functions:  # (break117 F11: x + 1 is not x.add)
            hint = f"; the graph calls operator.{key} (a Python operator): key the row by that"
        elif id(getattr(torch, key, None)) in functions:  # (break124 #12: torch.flip(x, ...))
            hint = f"; the graph calls torch.{key} as a function: key the row by torch.{key}"
        else:
            hint = ""
        warnings.warn(f"rules= has a row for {key!r}, a string, which names a Tensor method "
                      f"(x.{key}(...)) the traced graph never calls, so the row does nothing"
                      f"{hint}", UserWarning, stacklevel=3)
    for key in rules:
        if (isinstance(key, str) or id(key) in functions
                # a module class of the model's (break174 F7: one it has none of was silent)
                or (isinstance(key, type) and issubclass(key, nn.Module)
                    and any(isinstance(m, key) for m in model.modules()))
                # torch's own callables: torch.fx records each call of them, and a rule for
                # one the model does not call is harmless (e.g. a shared rules dict)
                or (getattr(key, "__module__", None) or "").split(".")[0] == "torch"
                # and Python's operators, recorded as operator.* (the op table's own keys)
                or getattr(key, "__module__", None) in ("_operator", "operator")):
            continue
        name = getattr(key, "__name__", None) or repr(key)
        if inspect.isfunction(key):
            why = (f"torch.fx traces through a plain Python function unless "
                   f"torch.fx.wrap({name!r}) is called at top level of the module whose code "
                   "calls it (wrapping where it is defined does not reach an import of it); or "
                   "it runs only inside a module called as one op, or not on this input's path")
        elif id(getattr(operator, name, None)) in functions:  # abs(x) is traced as operator.abs
            why = f"the graph calls operator.{name} for it: key the row by operator.{name}"
        elif inspect.ismethod(key) or isinstance(key, functools.partial):
            why = ("torch.fx traces through a bound method or a functools.partial into the "
                   "calls it makes: key the row by the function or module class it calls")
        elif getattr(key, "__objclass__", None) in (torch.Tensor, torch._C.TensorBase):
            why = (f"x.{name}(...) is traced as a call of the method's name: key the row by the "
                   f"string {name!r}")
        elif isinstance(key, type) and issubclass(key, nn.Module):
            why = f"the model has no {name} module (nor one of a subclass of it)"
        elif isinstance(key, type) and issubclass(key, torch.autograd.Function):
            why = (f"the traced graph applies no {name} (it runs only inside a module called as "
                   "one op, or not on this input's path)")
        elif isinstance(key, type):
            why = (f"{name} is a class that is no nn.Module: a key is a module class, a custom "
                   "autograd Function's class, a function the graph calls as one op, or a "
                   "Tensor method's name")
        else:
            why = "it runs only inside a module called as one op, or not on this input's path"
        what = f"the function {name}" if inspect.isfunction(key) else name
        warnings.warn(f"rules= has a row for {what}, which the traced graph never calls, so the "
                      f"row does nothing: {why}", UserWarning, stacklevel=3)


def _warn_masks_not_final(prepared: fx.GraphModule) -> None:
    """break64 C: a loop that skipped ``pruner.finalize_masks()`` shipped CUCB's last
    exploring draw, or SMCP's masks above its target mid-ramp, without a word."""
    pruner = latest_pruner(prepared)
    why = pruner.masks_not_final() if hasattr(pruner, "masks_not_final") else None
    if why:
        name = type(pruner).__name__
        warn(f"finalize: the model's {name} has not made its final selection ({why}): call "
             f"{name}.finalize_masks() after the last step, then finalize", RuntimeWarning)


def _batchnorm_computing_as_sync(cls) -> bool:
    """A BatchNorm class whose forward is torch's own (BatchNorm1d/2d/3d, or a subclass that
    changes no computation): what ``convert_sync_batchnorm`` turns it into computes the same."""
    base = nn.modules.batchnorm._BatchNorm
    return (isinstance(cls, type) and issubclass(cls, base) and not issubclass(cls, nn.SyncBatchNorm)
            and cls.forward is base.forward)


def _plain_batchnorm_again(prepared: fx.GraphModule, pruned: fx.GraphModule) -> None:
    """Give ``pruned`` back the plain BatchNorm layers that became ``nn.SyncBatchNorm`` after
    ``prepare`` (``nn.SyncBatchNorm.convert_sync_batchnorm`` for DDP training, or Lightning's
    ``sync_batchnorm=True``), sharing their tensors: in eval mode both compute the same, and
    the model ships with no need of a process group (review108 F5: the warning's way out,
    ``use_sync_batchnorm``'s undo, was not the user's to take under Lightning). A layer that
    was already a SyncBatchNorm when traced is the user's choice and stays; so does one whose
    traced class has a forward of its own, which the conversion had dropped."""
    traced = {}  # module path -> its class when prepare traced it (torch.fx's nn_module_stack)
    for node in prepared.graph.nodes:
        if node.op == "call_module":
            for path, cls in (node.meta.get("nn_module_stack") or {}).values():
                traced.setdefault(path, cls)
    for name, layer in list(pruned.named_modules()):
        cls = traced.get(name)
        if not isinstance(layer, nn.SyncBatchNorm) or not _batchnorm_computing_as_sync(cls):
            continue
        # its class's __init__ may take other arguments (review115 F6): built without it, from
        # the layer's own state, sharing its tensors
        plain = cls.__new__(cls)
        plain.__dict__.update({k: v for k, v in layer.__dict__.items() if k != "process_group"})
        plain._parameters, plain._buffers = dict(layer._parameters), dict(layer._buffers)
        parent, _, leaf = name.rpartition(".")
        setattr(pruned.get_submodule(parent) if parent else pruned, leaf, plain)


def finalize(prepared: fx.GraphModule, *, check: bool = True, rtol: float | None = None) -> fx.GraphModule:
    """Remove every channel whose mask is 0 and return a smaller plain model.

    Masks are folded into the weights, so the result computes what the masked model computes
    (in eval mode). ``prepared`` is left untouched; the result stays on its device and dtype.

    Args:
        prepared: the model :func:`prepare` returned (trained, its masks 0 or 1).
        check: run both models on the example inputs given to :func:`prepare` (moved to the
            model's device and cast to its floating dtype) and compare their outputs; NaN and
            +-inf (masked logits) must sit at the same places in both. A float32 model whose
            check fails is judged again on float64 copies, relative to the float32 outputs'
            scale (an output that is 0 in exact arithmetic holds only rounding noise).
        rtol: the check's tolerance, relative to the output's scale; None: 1e-4, or
            :data:`DEFAULT_RTOL` for float16/bfloat16 models and a forward with an autocast
            region.

    Returns:
        A ``torch.fx.GraphModule`` of plain torch.nn layers with no fxprune class or function
        in it: it can be ``torch.save``-d, loaded without fxprune, and exported to ONNX (but
        for a forward that sets the grad or autocast mode, or applies a custom autograd
        Function: loading those needs fxprune). A model of one tensor input records its
        example input's shape as ``fxprune_input_shape``, which ``fxprune deploy`` reads from
        the saved file. Its parameters are new tensors: to fine-tune it, build a new optimizer
        over them (one built over ``prepared`` trains ``prepared``). A BatchNorm that became an
        ``nn.SyncBatchNorm`` after ``prepare`` (converted for DDP training) is its traced class
        again, unless that class has a forward of its own; one that was a SyncBatchNorm when
        traced stays one, with a warning.

    Raises:
        SurgeryError: the outputs differ beyond ``rtol``, or the masked model's output holds no
            finite value (a diverged run: nothing could be checked; ``check=False`` skips it).
        NotPreparedError: ``prepared`` is not :func:`prepare`'s output.
        ArgumentError: ``rtol`` is not a number > 0.

    Warns (RuntimeWarning): masks neither 0 nor 1 (an EMA copy's averages: see
    :func:`copy_masks`); a finalize that removes nothing (no mask is 0); a live pruner of this
    model that has not made its final selection (a loop that skipped
    ``pruner.finalize_masks()``).
    """
    with torch.inference_mode(False):  # a finalized model may be fine-tuned (break43 #7)
        check_bool("check", check)  # ("no" read as True: break196 F5)
        if rtol is not None and not is_tolerance(rtol):
            raise ArgumentError(f"rtol is the relative tolerance of finalize's check, a number > 0 "
                                f"(None: 1e-4, looser for float16/bfloat16); got {rtol!r}")
        state = state_of(prepared)
        _warn_fractional_masks(prepared)
        _warn_masks_not_final(prepared)
        pruned = remove_channels(prepared)
        _plain_batchnorm_again(prepared, pruned)
        synced = [n for n, m in pruned.named_modules() if isinstance(m, nn.SyncBatchNorm)]
        if synced:  # (break107 F5: kept silently; it trains only inside a process group)
            warn(f"finalize: the pruned model holds nn.SyncBatchNorm ({synced[0]}"
                 f"{f' and {len(synced) - 1} more' if len(synced) > 1 else ''}), which trains only "
                 "inside a process group; convert them back to BatchNorm before finalize (the "
                 "undo() of fxprune.distributed.use_sync_batchnorm, if it made them)",
                 RuntimeWarning)
        if check:
            if rtol is None:  # the lowest precision it computes in
                rtol = default_rtol(prepared)
            verify(prepared, pruned, state.example_inputs, rtol)
        inputs = state.example_inputs
        if len(inputs) == 1 and isinstance(inputs[0], torch.Tensor) and _batch_first(
                inputs[0], state.channels.layers):
            # what fxprune deploy reads from a saved model (fxprune.deploy.model_io's
            # INPUT_SHAPE_ATTR): the shape it was checked at (break98 F6: only fxprune
            # train's models recorded it, so deploy asked for --input-shape)
            record_input_shape(pruned, inputs[0].shape)
        return pruned


def _batch_first(x: torch.Tensor, layers) -> bool:
    """Whether ``x``'s dim 0 is the batch its conv/linear layers run at (or a divisor of it:
    frames folded into the batch): then deploy may read the recorded shape batch first. Not
    for a layer fed an unbatched input, nor where dim 0 is not the layers' batch (an input
    unsqueezed before the convs): deploy read its channels as the batch (break117 F5,
    review118 #7) and now asks for --input-shape."""
    if x.ndim == 0 or x.shape[0] < 1:
        return False
    return all(not layer.spec.meta.get("unbatched") and layer.spec.batch % x.shape[0] == 0
               for layer in layers)


def _warn_fractional_masks(prepared: fx.GraphModule) -> None:
    """Masks the methods set are 0 or 1; others are kept and folded into the weights (allowed),
    which is also what an EMA or averaged copy of a prepared model holds: its masks are averages,
    so a pruned channel's decays toward 0 and never reaches it, and that model finalizes dense
    (break24 #3: timm's ModelEmaV2, AveragedModel(use_buffers=True))."""
    between = total = zeros = 0
    for mask in mask_bank(prepared).buffers():
        if not mask.is_floating_point():  # the integer maps of tied units, not masks
            continue
        between += int(((mask != 0) & (mask != 1)).sum())
        zeros += int((mask == 0).sum())
        total += mask.numel()
    if total and not zeros and not between:
        # the plain model of a prepare, or a run whose pruning never happened (finalize before
        # the method's finalize_masks, a target of 1): the "smaller" model is the dense one
        # (break57 #7: "prune first (a method's finalize_masks())" right after that call)
        warn("finalize: no channel mask is 0, so no channel is removed and the result is as "
             "large as the model: nothing was pruned (a target of 1, a run stopped before the "
             "method's first pruning step, or masks never set)", RuntimeWarning)
    if between:
        warnings.warn(f"finalize: {between} of {total} channel masks are neither 0 nor 1: those "
                      "channels are kept, their masks folded into the weights (as intended, if "
                      "you set them). An EMA or averaged copy of a prepared model averages its "
                      "masks: copy the trained model's into it first (fxprune.copy_masks(trained, "
                      "ema_copy))", RuntimeWarning, stacklevel=3)


def tracer_kwargs(model: nn.Module) -> dict:
    """What another torch.fx tracer needs to trace a prepared ``model`` exactly: the classes
    of its masked layers and of the other modules its graph calls as one op (timm's
    ``BatchNormAct2d``, modules whose forward reads ``self.training``, hooked ones, the
    ``leaf_modules`` given to prepare) as ``leaf_modules``, the functions fxprune put into its graph as
    ``autowrap_functions``, each recorded as one call (traced into, they fail, or with every
    mask at 1 record a plain norm that no later mask change reaches).

    Returns:
        ``{"leaf_modules": [classes], "autowrap_functions": [functions]}``: torchvision's
        ``create_feature_extractor(..., tracer_kwargs=...)`` takes it as it is; a
        ``torch.fx.Tracer(autowrap_functions=...)`` takes the functions, and its
        ``is_leaf_module`` the classes. For a finalized model, only the classes its graph
        calls as one op that are not torch.nn's (it holds no masked layer or function).

    The traced model shares ``model``'s mask tensors until either is moved or cast
    (``.to(device)``, ``.half()``): torch then gives each its own copy of the buffers, and
    the traced model keeps the old masks. Trace after moving, and again after
    any move.

    Example::

        from torchvision.models.feature_extraction import create_feature_extractor
        features = create_feature_extractor(pm, {"layer3": "mid", "fc": "out"},
                                            tracer_kwargs=fxprune.tracer_kwargs(pm))
    """
    from .masks import FXPRUNE_CLASSES, GRAPH_FUNCTIONS, MaskGather
    if not isinstance(model, nn.Module):  # (break111 F16: None's AttributeError)
        raise ArgumentTypeError(f"tracer_kwargs takes the prepared or finalized model, got "
                                f"{type(model).__name__}")
    classes = list(dict.fromkeys(type(m) for m in model.modules()
                                 if isinstance(m, (*FXPRUNE_CLASSES, MaskGather))))
    graph = getattr(model, "graph", None)
    used = {n.target for n in graph.nodes if n.op == "call_function"} if graph is not None else set()
    return {"leaf_modules": classes + _one_op_classes(model, classes),
            "autowrap_functions": [f for f in GRAPH_FUNCTIONS if f in used]}


def _one_op_classes(model: nn.Module, listed: list) -> list:
    """The classes of the other modules ``model``'s graph calls as one op (prepare's own
    leaves: op-table rows such as timm's ``BatchNormAct2d``, modules whose forward reads
    ``self.training``, hooked modules, the user's ``leaf_modules``): traced into, another
    tracer froze their mode or ran their hooks on proxies (break94 #2). torch.nn's modules but
    ``nn.Sequential`` are left out (torch.fx calls them as one op anyway; break96 #6: a hooked
    Sequential was traced into). A module the graph traced through keeps no
    class of its own in a GraphModule (a plain ``nn.Module`` holds its submodules), so naming
    a class makes no traced-through module a leaf."""
    graph = getattr(model, "graph", None)
    if graph is None:
        return []
    out, default = [], fx.Tracer()  # (its rule: torch.nn's modules but nn.Sequential are leaves)
    for node in graph.nodes:
        if node.op == "call_module":
            module = model.get_submodule(node.target)
            cls = type(module)
            if cls not in listed and cls not in out and not default.is_leaf_module(module, node.target):
                out.append(cls)
    return out


def copy_masks(source: fx.GraphModule, target: fx.GraphModule) -> None:
    """Set ``target``'s channel masks to ``source``'s: two models prepared alike (e.g. the
    trained model and its EMA or ``AveragedModel`` copy, which averages masks with the weights).

    A wrapper holding the prepared model as ``.module`` (``AveragedModel``, timm's
    ``ModelEmaV2``, DDP) stands for it. ``target``'s BatchNorms take ``source``'s rescaling by
    the kept fraction too (SMCP's ``bn_rescale``, a class swap a copy made before the pruner
    was built lacks: its finalize folded another gamma). Raises ValueError when
    the two hold different mask sets (names or shapes)."""
    source, target = _unwrapped(source), _unwrapped(target)
    state_of(source), state_of(target)  # each a prepared model, or the error saying so
    groups = [{g.key: (g.name, g.size) for g in state_of(m).channels.groups if g.prunable}
              for m in (source, target)]
    # the group masks only: the gathered masks' index tensors are made by prepare, not state
    # (review143 F4: their names changed, and an older pickle's copy was refused)
    src = {k: v for k, v in mask_bank(source).named_buffers() if k in groups[0]}
    dst = {k: v for k, v in mask_bank(target).named_buffers() if k in groups[1]}
    if {k: v.shape for k, v in src.items()} != {k: v.shape for k, v in dst.items()} \
            or groups[0] != groups[1]:  # the same keys may name other groups (break69 F3)
        raise ArgumentError("copy_masks: the two models hold different channel masks; they must be "
                            "prepared from the same model and example inputs, with the same "
                            "keep=")  # (break207 F8)
    for role, masks in (("source", src), ("target", dst)):
        if any(mask.is_meta for mask in masks.values()):
            raise ArgumentError(f"copy_masks: the {role} model's masks are on the meta device (they "
                                "hold no values); move it to a real device first (.to_empty(device=...)"
                                " and load its state_dict)")
    rescaled = getattr(mask_bank(source), "fxprune_rescaled", None)
    bank = mask_bank(target)
    if rescaled is not None and set(rescaled) != set(getattr(bank, "fxprune_rescaled", None) or ()):
        from .passes.bn_rescale import insert_bn_rescale

        insert_bn_rescale(target, "kept_fraction" if rescaled else "off")
        if set(bank.fxprune_rescaled) != set(rescaled):
            raise ArgumentError("copy_masks: the source model rescales other BatchNorms (bn_rescale) "
                                "than the target can; they must be prepared from the same model and "
                                "example inputs")
    with torch.no_grad():
        for name, mask in src.items():
            dst[name].copy_(mask)


def _unwrapped(model):
    inner = getattr(model, "module", None)
    return inner if not is_prepared(model) and is_prepared(inner) else model


def layer_specs(prepared: fx.GraphModule) -> list[LayerSpec]:
    """Every conv/linear call of the model, as a :class:`~fxprune.cost.LayerSpec` (dense sizes,
    the dtype its weight holds now). Each is a copy: editing its ``meta`` leaves the prepared
    model's pricing as it was."""
    import dataclasses

    from .units import specs_now

    return [dataclasses.replace(spec, meta=copy.deepcopy(spec.meta))
            for spec in specs_now(prepared, state_of(prepared).channels.layers)]


__all__ = ["prepare", "finalize", "copy_masks", "layer_specs", "channel_groups"]
