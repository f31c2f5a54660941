"""Loading the models ``fxprune deploy`` is given, and the input shape they run at.

A model file is either an ONNX file (``*.onnx``: plain data, loading it runs no code) or a
whole module pickled with ``torch.save(module, path)`` (a plain ``nn.Module`` or a
``torch.fx.GraphModule``; a pruned model's layers have new shapes, so a ``state_dict`` alone
could not be loaded back into the original class). Unpickling a module can run any code the
file carries, so pickled files load only with ``trust_model_file=True``
(``--trust-model-file``).

How a file records its input shape: whoever saves the module may set the attribute
``module.fxprune_input_shape`` to the full input shape, batch first, e.g.
``model.fxprune_input_shape = (1, 3, 224, 224)``, before ``torch.save`` (``fxprune.finalize``
sets it to the example input's shape, for a model of one tensor input). It is pickled with
the module (GraphModules keep it too). ``--input-shape`` / ``input_shape=`` overrides it,
``--batch`` / ``batch=`` replaces its first dim. With neither, deploy stops and says so.
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import re
import warnings
from typing import Sequence

import torch
from torch import nn
from torch.utils import _pytree as pytree

from .common import DeployError, first_line, out_of_memory, parse_shape

#: the precisions a model is exported at, and their dtypes
EXPORT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def eval_copy(module: nn.Module, precision: str = "fp32") -> nn.Module:
    """An eval-mode CPU copy in the wanted dtype: export needs eval(), and the caller's module
    (its training flag, dtype and device) must stay as it was."""
    return copy.deepcopy(module).eval().to(device="cpu", dtype=EXPORT_DTYPES[precision])


def flat_outputs(out) -> list[torch.Tensor]:
    """The tensors in a model's output (nested tuples, lists, dicts), in order; None leaves are
    dropped (as the exporters drop them). Raises :class:`DeployError` for an output with no
    tensor or with another kind of value, which no ONNX output holds."""
    leaves = pytree.tree_flatten_with_path(out)[0]
    tensors = [t for _, t in leaves if isinstance(t, torch.Tensor)]
    if not tensors:
        raise DeployError(f"the model returned no tensor (got {type(out).__name__})")
    other = next(((where, v) for where, v in leaves
                  if v is not None and not isinstance(v, torch.Tensor)), None)
    if other is not None:  # (break129 F8: both exporters failed, the message cut mid-word)
        where, value = other
        raise DeployError(f"the model's output{pytree.keystr(where)} is {str(value)[:40]} "
                          f"({type(value).__name__}), not a tensor: an ONNX model returns tensors "
                          "only; wrap the model in a module whose forward drops it or makes it "
                          "a tensor")
    return tensors


INPUT_SHAPE_ATTR = "fxprune_input_shape"


TRUST_HELP = (
    "a .pt file holding a whole module is a pickle: loading it runs code stored in the file "
    "(torch.load(weights_only=False)), so fxprune loads it only when you say you trust it: "
    "--trust-model-file (trust_model_file=True in Python) if you wrote it or trust its source; "
    "or deploy an ONNX file (model.onnx), which runs no code")


def is_onnx(model) -> bool:
    return isinstance(model, (str, os.PathLike)) and os.fspath(model).lower().endswith(".onnx")


def load_model(model: nn.Module | str | os.PathLike, *,
               trust_model_file: bool = False, role: str = "model") -> tuple[nn.Module, str]:
    """The module itself and a label for reports (its path, or its class name).

    A path is unpickled only with ``trust_model_file=True`` (unpickling can run any code the
    file carries); otherwise :class:`DeployError` says why and how to allow it. A file that
    loads with ``torch.load(weights_only=True)`` (a state_dict) is refused with the way out.
    """
    if isinstance(model, nn.Module):
        return model, type(model).__name__
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise not_a_file(path, role)
    other = _other_format(path)
    if other:  # before any load: these were called pickles or corrupt files (break66 #4)
        raise DeployError(f"{path!r} is {other}")
    from fxprune.run_io import zip_damage

    damage = zip_damage(path)
    if damage is not None:  # (break187: a file cut short was "not loaded" until trusted, then
        # torch.load's "Invalid argument")
        raise DeployError(f"{path!r} is damaged: {damage}; it was cut short or changed after "
                          "torch.save wrote it: save or copy it again")
    if not trust_model_file:
        try:  # safe: tensors and plain data only; a pickled module fails here by design
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - not plain data: a pickled object, or not torch's
            with open(path, "rb") as f:
                head = f.read(4)
            if not (head == b"PK\x03\x04" or head[:1] == b"\x80"):  # torch.save's zip, or a pickle
                raise DeployError(f"{path!r} is not a file torch.save wrote (neither a zip nor a "
                                  "pickle): save the module with torch.save(model, path), or "
                                  "deploy an ONNX file") from None
            raise DeployError(f"{path!r} not loaded: {TRUST_HELP}") from None
    else:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            first = first_line(e)
            main_class = re.search(r"Can't get attribute '([\w.]+)' on <module '[\w.]*__main__'", first)
            if main_class:  # break48 #3: "is it a file torch.save wrote?" -- it was
                raise DeployError(
                    f"{path!r} pickles class {main_class.group(1)} from the script that saved it "
                    "(__main__), which only that script defines: move the class into a module "
                    "on PYTHONPATH and save again, call fxprune.deploy.deploy(model, ...) from "
                    "that script, or deploy an .onnx file") from None
            if isinstance(e, ModuleNotFoundError) and e.name:  # break97 F4: the class's module
                raise DeployError(
                    f"{path!r} pickles a model whose class is in module {e.name!r}, which cannot "
                    "be imported here: run with that module's folder on PYTHONPATH (the fxprune "
                    "command does not put the current folder on the path; `python -m fxprune` "
                    "does), install the package holding it, or deploy an .onnx file") from None
            raise DeployError(f"could not load {path!r} with torch.load ({type(e).__name__}: "
                              f"{first}); is it a file written by torch.save(module, path)?"
                              ) from None
    if not isinstance(loaded, nn.Module):
        hint = (" (it looks like a state_dict: save the whole module with torch.save(model, path))"
                if isinstance(loaded, dict) else "")
        inside = ([k for k, v in loaded.items() if isinstance(v, nn.Module)]
                  if isinstance(loaded, dict) else [])
        if inside:  # (break187 F6: {'model': module} "looks like a state_dict")
            hint = (f" (it holds a module under key {inside[0]!r}: save that module itself, "
                    f"torch.save(d[{inside[0]!r}], path))")
        if isinstance(loaded, dict) and {"format", "epoch", "model", "optimizer"} <= set(loaded):
            hint = (" (a fxprune train checkpoint: deploy the model_pruned.pt or model_dense.pt "
                    "its run wrote beside it)")  # break35 #6
        kind = type(loaded).__name__
        raise DeployError(f"{path!r} holds {'an' if kind[0] in 'AEIOaeio' else 'a'} {kind}, "
                          f"not an nn.Module{hint}")
    return loaded, path


def _other_format(path: str) -> str | None:
    """What a model file is when it is not a ``torch.save`` file but a known other format
    (read without running anything), with the way out; None otherwise."""
    import zipfile
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":
        try:
            names = zipfile.ZipFile(path).namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        if any(n.endswith("/archive_format") for n in names) and any(
                "/models/" in n for n in names):
            return ("a torch.export program (torch.export.save), not a module: load it with "
                    "torch.export.load(path).module() and deploy that module from Python "
                    "(fxprune.deploy.deploy), or export ONNX and deploy the .onnx file")
        return None
    if head[:1] == b"\x08":  # ONNX's protobuf opens with its ir_version field
        try:
            import onnx
            graph = onnx.load(path, load_external_data=False)
        except Exception:  # noqa: BLE001 - not ONNX after all
            return None
        if graph.ir_version > 0 and len(graph.graph.node) > 0:
            return "an ONNX file under another name: name it .onnx (deploy reads ONNX by its extension)"
    return None


def not_a_file(path: str, role: str = "model") -> DeployError:
    """The error for a model path that is no file: a folder (a train run's) is named as one.
    ``role`` is what the path was given as: ``"model"``, or ``"--compare"`` (the dense model)."""
    if os.path.isdir(path):  # "does not exist" named the wrong cause (break37 #3)
        held = [f for f in ("model_pruned.pt", "model_dense.pt")
                if os.path.isfile(os.path.join(path, f))]
        if held or os.path.isfile(os.path.join(path, "checkpoint.pt")):
            # break38 #8, break44 #6: the file named is one the run holds, and --compare's is
            # the dense model, which only a dense run (prune.method none) writes
            want = "model_dense.pt" if role == "--compare" else (held or ["model_pruned.pt"])[0]
            if want in held:
                return DeployError(f"{role} {path!r} is a folder, a fxprune train run: pass the "
                                   f"model file in it ({os.path.join(path, want)}, with "
                                   "--trust-model-file) or an .onnx file")
            other = (" (a dense run's, prune.method none)" if role == "--compare" else "")
            return DeployError(f"{role} {path!r} is a folder, a fxprune train run that holds no "
                               f"{want}{' yet' if role != '--compare' else ''}: pass a "
                               f"{want}{other} with --trust-model-file, or an .onnx file")
        return DeployError(f"{role} {path!r} is a folder: pass a model file (a torch.save of the "
                           "module, with --trust-model-file) or an .onnx file")
    return DeployError(f"{role} file {path!r} does not exist")


#: the way out for a model fxprune deploy cannot time (break106 #2: "export the ONNX yourself
#: and deploy that file" sent users to a file deploy then refused for the same reason)
_TIME_IT_YOURSELF = ("or export it with torch.onnx.export and time it with ONNX Runtime "
                     "directly (fxprune deploy times models of one float tensor input)")


def _available_memory() -> int | None:
    """Bytes of memory available now (Linux's MemAvailable, page cache counted as free; else
    the machine's physical memory), None where the OS does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_one_tensor_input(module: nn.Module, label: str) -> None:
    """DeployError when ``module``'s forward needs more than one argument (no input shape can
    make it fit)."""
    import inspect

    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        params = []
    required = [p.name for p in params
                if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if isinstance(module, torch.fx.GraphModule):  # a default the graph reads anyway: an
        # optional tensor given when it was traced (break129 F4: blamed on a deep copy, then
        # on the input shape); a default it only guards (== None, == False) is not an input
        import operator

        # (a float default, scale=2.0, runs as it is: review130 F1)
        required += [n.target for n in module.graph.nodes
                     if n.op == "placeholder" and n.args == (None,) and not n.target.startswith("*")
                     and n.target not in required
                     and any(u.target is not operator.eq for u in n.users)]
    keyword_only = [p.name for p in params if p.default is p.empty and p.kind == p.KEYWORD_ONLY]
    if keyword_only:  # no input shape can fit: "pass a fitting --input-shape" was wrong advice
        raise DeployError(f"{label}'s forward requires the keyword argument"
                          f"{'s' if len(keyword_only) > 1 else ''} {', '.join(keyword_only)}; "
                          "fxprune deploy times single-input models: wrap it in a module whose "
                          f"forward takes one tensor, {_TIME_IT_YOURSELF}")
    if len(required) > 1:
        raise DeployError(f"{label} takes {len(required)} inputs "
                          f"({', '.join(required)}); fxprune deploy times "
                          "single-input models: wrap it in a module whose forward takes one "
                          f"tensor, {_TIME_IT_YOURSELF}")


def memory_refusal(label: str, shape, said: str, why: str = "") -> DeployError:
    """The one-line error for ``label`` run out of memory at ``shape`` (``said``: what the
    allocator said, :func:`fxprune.errors.out_of_memory`; ``why``: why deploy ran it at that
    shape): the batch is the lever, not the shape's fit (break186 F1)."""
    return DeployError(f"running {label} at input shape {tuple(shape)}{why} ran out of memory "
                       f"({said}); pass a smaller batch (--batch; batch= in Python), or free "
                       "memory")


def check_input_fits(module: nn.Module, shape: tuple[int, ...], label: str) -> None:
    """Run ``module`` once at ``shape``: a shape that does not fit is a one-line error showing
    the shape the file records, not a traceback from inside the exporter."""

    check_one_tensor_input(module, label)
    need = 4 * math.prod(shape)
    free = _available_memory()
    if free is not None and need > free:  # (break106 #1: the probe's second allocation raised)
        raise DeployError(f"input shape {tuple(shape)} needs {need / 2**30:.3g} GiB for one fp32 "
                          f"tensor, more than the {free / 2**30:.3g} GiB this machine has "
                          "available; pass a smaller batch (--batch; batch= in Python) or "
                          "--input-shape")
    copy = None
    try:
        copy = eval_copy(module, "fp32")  # on the CPU, as the inputs below
        with torch.no_grad(), _quiet():
            copy(torch.zeros(shape, dtype=torch.float32))  # the copy's dtype, whatever the default
    except Exception as e:  # noqa: BLE001 - whatever fails, the shape does not fit
        said = out_of_memory(e)
        if said is not None:  # it fits; the memory does not
            raise memory_refusal(label, shape, said) from None
        first = first_line(e) or type(e).__name__
        container = None if copy is None else _reads_a_container(copy, shape)
        if container is not None and container.startswith("it indexes"):
            # no shape fits (break77 F3: "pass a fitting --input-shape")
            raise _reads_a_dict(label, container) from None
        if copy is not None and _wants_integers(copy, shape):
            # no shape fits (break66 #4: "pass a fitting --input-shape")
            raise DeployError(
                f"{label} takes an integer input (it runs on a torch.long tensor of shape "
                f"{tuple(shape)}, not on a float one): fxprune deploy times models of one "
                "float input; export it with torch.onnx.export and time it with ONNX Runtime "
                "directly") from None
        recorded = getattr(module, INPUT_SHAPE_ATTR, None)
        rec = (f"the model records {INPUT_SHAPE_ATTR} = {tuple(recorded)}" if recorded is not None
               else f"the model records no input shape ({INPUT_SHAPE_ATTR})")
        if container:
            # iterating over the input is a tuple's unpacking, or a loop over the samples: both
            # said, the unpacking first (break82 F6: a per-sample loop with a wrong shape was
            # told it read a container; break83 F3: told a shape first, a tuple-input model
            # "fit" at batch 2, each sample taken for an input, and the wrong model was timed)
            raise DeployError(
                f"input shape {tuple(shape)} does not fit {label} ({first}), whose forward "
                "iterates over its input: if it unpacks a tuple or list input (a, b = inputs), "
                "no shape fits: wrap it in a module whose forward takes one tensor; if it loops "
                f"over the samples, pass a fitting --input-shape ({rec})") from None
        raise DeployError(f"input shape {tuple(shape)} does not fit {label} ({first}); {rec}; "
                          "pass a fitting --input-shape (input_shape= in Python)") from None


def check_runs_at(module: nn.Module, shape: tuple[int, ...], label: str, precision: str,
                  device: torch.device, what: str) -> None:
    """Run ``module`` (which fits ``shape`` at fp32: :func:`check_input_fits`) once at
    ``precision`` on ``device``: an op without a kernel in that dtype there (an antialiased
    resize or an FFT in half precision on the CPU) is a one-line error before deploy writes
    anything (break179 F1: a traceback, and a model.onnx left without a report). ``what``:
    what happens to the model there ("exported", "timed"). Run at batch 1 (a dtype's kernels
    do not depend on the batch, and half precision on the CPU is slow: review181 F9); a
    failure that fp32 on that device shares (memory, a tensor made on another device) is not
    blamed on the dtype: left to the step that meets it."""
    from .torch_backend import prepare_module

    if precision == "fp32":
        return
    one = (1, *shape[1:])

    def runs(dtype: str) -> list[torch.Tensor] | Exception:
        try:
            copy, x = prepare_module(module, one, device, dtype, channels_last=False)
            with torch.no_grad(), _quiet():
                return [t for t in flat_outputs(copy(x)) if t.is_floating_point()]
        except Exception as e:  # noqa: BLE001 - judged below
            return e

    low = runs(precision)
    if isinstance(low, Exception):
        if not isinstance(runs("fp32"), Exception):
            raise dtype_refusal(label, precision, device, what, low)
        return
    refusal = overflow_refusal(label, precision, device, what, low, lambda: runs("fp32"))
    if refusal is not None:
        raise refusal


_DTYPE_OF = {"fp16": torch.float16, "bf16": torch.bfloat16}


def overflow_refusal(label: str, precision: str, device: torch.device, what: str,
                     low: list[torch.Tensor], at_fp32) -> DeployError | None:
    """The one-line error for a model whose float outputs ``low`` at ``precision`` hold inf or
    NaN where the same input at fp32 (``at_fp32()``: its outputs, or an exception) gives none:
    a value past the dtype's range inside the model or at its outputs (break182 F2: told of a
    branch on the batch size, then that the export changed the model's behaviour). None where
    ``low`` is finite or fp32 is not."""
    if all(bool(torch.isfinite(t).all()) for t in low):
        return None
    full = at_fp32()
    if isinstance(full, Exception) or not all(bool(torch.isfinite(t).all()) for t in full):
        return None
    peak = max((float(t.abs().max()) for t in full if t.numel()), default=0.0)
    # (review183 R4: the overflow may be inside the model, its outputs small)
    return DeployError(
        f"{label} gives inf or NaN at {precision} on {device}, where it is {what}, and finite "
        f"outputs at fp32 (largest |output| {peak:.3g}): a value inside the model or at its "
        f"outputs leaves {precision}'s range or precision (largest number "
        f"{torch.finfo(_DTYPE_OF[precision]).max:.3g}); pass precision='fp32' (--precision fp32)")


def dtype_refusal(label: str, precision: str, device: torch.device, what: str,
                  exc: BaseException) -> DeployError:
    """The one-line error for a model that runs at fp32 but not at ``precision`` on
    ``device`` (deploy's check before writing, and export_onnx's own forward)."""
    way_out = "pass precision='fp32' (--precision fp32)" + (
        ", or time it on a GPU (--backend torch --device cuda)"
        if device.type == "cpu" and what == "timed" else "")
    return DeployError(f"{label} runs at fp32 but not at {precision} on {device}, where it is "
                       f"{what} ({first_line(exc) or type(exc).__name__}); {way_out}")


def _reads_a_dict(label: str, how: str) -> DeployError:
    return DeployError(
        f"{label}'s forward reads its input as a container ({how}); fxprune deploy "
        "times models that take one tensor: wrap it in a module whose forward takes one "
        f"tensor, {_TIME_IT_YOURSELF}")


def _graph_indexes_its_input(module: nn.Module) -> str | None:
    """How a GraphModule's graph reads its one input by a key (``x["image"]``), where it
    does; None otherwise (and for a plain module, whose code is not read)."""
    import operator

    if not isinstance(module, torch.fx.GraphModule):
        return None
    inputs = [n for n in module.graph.nodes if n.op == "placeholder"]
    for node in inputs[:1]:
        for user in node.users:
            if (user.op == "call_function" and user.target is operator.getitem
                    and user.args[0] is node and isinstance(user.args[1], str)):
                return f"it indexes it by the key {user.args[1]!r}"
    return None


@contextlib.contextmanager
def _quiet():
    """Warnings off and stderr kept, around a probe call of the user's model: torch.fx
    prints the generated code's traceback to stderr before it re-raises (break171 F3), and
    the probe's failure is said in one line."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")  # (x["image"]: torch's indexing deprecation)
        yield


class _InputProbe(torch.Tensor):
    """The input tensor, noting how forward reads it: ``x["image"]`` or ``a, b = x``."""

    probed: "_InputProbe | None" = None
    seen: str | None = None

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if args and args[0] is cls.probed and cls.seen is None:
            key = args[1] if len(args) > 1 else None
            if func is torch.Tensor.__getitem__ and isinstance(key, str):
                cls.seen = f"it indexes it by the key {key!r}"
            elif func is torch.Tensor.__iter__ or (func is torch.Tensor.unbind and (
                    key in (None, 0) and not kwargs)):  # (iteration unbinds dim 0)
                cls.seen = "it unpacks it into several values"
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))


def _reads_a_container(copy: nn.Module, shape: tuple[int, ...]) -> str | None:
    """How ``copy`` (an :func:`eval_copy`) reads its input as a dict or a tuple, where it
    does; None otherwise."""
    probe = torch.zeros(shape, dtype=torch.float32).as_subclass(_InputProbe)
    _InputProbe.probed, _InputProbe.seen = probe, None
    try:
        with torch.no_grad(), _quiet():
            copy(probe)
    except Exception:  # noqa: BLE001 - it fails, as it did on the plain tensor
        pass
    finally:
        seen, _InputProbe.probed, _InputProbe.seen = _InputProbe.seen, None, None
    return seen


def _wants_integers(copy: nn.Module, shape: tuple[int, ...]) -> bool:
    """Whether ``copy`` (an :func:`eval_copy`, on the CPU) runs on integer indices of
    ``shape`` (an embedding's input)."""
    try:
        with torch.no_grad(), _quiet():
            copy(torch.zeros(shape, dtype=torch.long))
    except Exception:  # noqa: BLE001 - it fails on integers too
        return False
    return True


def read_onnx(path: str, load_external_data: bool = False):
    """``onnx.load``, with a file that is not an ONNX model (corrupt, empty, another format
    renamed ``.onnx``) reported as a :class:`DeployError` naming it."""
    import onnx

    way_out = "export one again, or deploy the PyTorch model file instead"
    try:
        model = onnx.load(path, load_external_data=load_external_data)
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - protobuf raises its own DecodeError
        raise DeployError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e}); "
                          f"{way_out}") from None
    # protobuf parses an empty file (or any bytes that happen to decode) as an empty ModelProto
    if not model.graph.node and not model.graph.output:
        raise DeployError(f"{path} is not a readable ONNX model (it holds no graph: an empty "
                          f"file?); {way_out}")
    return model


def _onnx_input(path: str):
    """The first graph input of an ONNX file that is not an initializer."""
    m = read_onnx(path)
    inits = {i.name for i in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    if not inputs:
        raise DeployError(f"{path} has no graph input")
    if len(inputs) > 1:  # each would get random floats, an int64 one an ORT error mid-timing
        raise DeployError(f"{path} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                          "fxprune deploy times models of one input tensor, as the modules it "
                          "exports: time this one with ONNX Runtime directly")
    if inputs[0].type.tensor_type.HasField("shape") and not inputs[0].type.tensor_type.shape.dim:
        raise DeployError(f"{path}'s input {inputs[0].name!r} is a 0-d (scalar) tensor; fxprune "
                          "deploy times models whose input is batch first")
    return inputs[0]


def check_onnx_input_fits(path: str, shape: Sequence[int]) -> None:
    """An ONNX file's fixed input dims must equal ``shape``'s (symbolic dims take any size): a
    mismatch is a one-line error before anything is written, not ONNX Runtime's traceback."""
    first = _onnx_input(path)
    if not first.type.tensor_type.HasField("shape"):  # rank unknown: any shape may fit
        return
    dims = [d.dim_value if d.dim_value > 0 else None for d in first.type.tensor_type.shape.dim]
    fits = len(dims) == len(shape) and all(d is None or d == s for d, s in zip(dims, shape))
    if not fits:
        fixed = "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"
        raise DeployError(f"input shape {tuple(shape)} does not fit {path}, whose input "
                          f"{first.name!r} is {fixed} (? = any size); pass a matching "
                          "--input-shape/--batch, or export it with dynamic dims")


def onnx_input_shape(path: str, input_shape=None, batch: int | None = None) -> tuple[int, ...]:
    """The input shape of an ONNX file: ``input_shape`` if given, else its first input's static
    dims (a symbolic batch dim counts as 1); ``batch`` replaces the first dim."""
    if input_shape is not None:
        shape = parse_shape(input_shape)
    else:
        first = _onnx_input(path)
        dims = first.type.tensor_type.shape.dim
        shape = tuple(d.dim_value if d.dim_value > 0 else (1 if i == 0 else 0)
                      for i, d in enumerate(dims))
        if not shape or 0 in shape:
            raise DeployError(f"{path}: input {first.name!r} has symbolic dims beyond the "
                              "batch; pass --input-shape")
    if batch is not None:
        if int(batch) <= 0:
            raise DeployError(f"--batch must be positive, got {batch}")
        shape = (int(batch),) + shape[1:]
    return shape


def resolve_input_shape(module: nn.Module, input_shape: str | Sequence[int] | None = None,
                        batch: int | None = None) -> tuple[int, ...]:
    """The full input shape (batch first) to export and time the model at: ``input_shape``
    ("1,3,224,224" or a sequence) when given, else the module's ``fxprune_input_shape``
    (``finalize`` records it); ``batch`` then replaces the first dim. Raises DeployError when
    neither gives a shape (naming how to give one), or for a batch <= 0."""
    if input_shape is not None:
        shape = parse_shape(input_shape)
    else:
        recorded = getattr(module, INPUT_SHAPE_ATTR, None)
        if recorded is None:
            check_one_tensor_input(module, type(module).__name__)  # no shape would help
            how = _graph_indexes_its_input(module)
            if how is not None:  # (break171 F4: blamed on a deep copy, then on the shape)
                raise _reads_a_dict(type(module).__name__, how)
            from fxprune.groups import is_finalized

            # (break111 F4: a deep copy of a finalized model has the mark, not the attribute)
            copied = (f" (copy.deepcopy of a finalized model does not keep its "
                      f"{INPUT_SHAPE_ATTR}: set it on the copy)" if is_finalized(module) else "")
            raise DeployError(
                f"the model's input shape is unknown{copied}: pass --input-shape (e.g. "
                f"--input-shape 1,3,224,224; input_shape= in Python), or set "
                f"model.{INPUT_SHAPE_ATTR} = (1, 3, 224, 224) before torch.save")
        shape = parse_shape(recorded)
    if batch is not None:
        if int(batch) <= 0:
            raise DeployError(f"--batch must be positive, got {batch}")
        shape = (int(batch),) + shape[1:]
    return shape
