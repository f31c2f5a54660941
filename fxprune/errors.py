"""Errors fxprune raises. Each names the problem and the way out."""
from __future__ import annotations

import sys
import warnings


__all__ = ["FxPruneError", "ArgumentError", "ArgumentTypeError", "NotCopyableError",
           "DivergedError", "InfeasibleBudget",
           "TraceError", "ExampleInputsError", "SurgeryError", "NotPreparedError",
           "UnsupportedModelError", "TargetNotReachedError", "MethodProtocolError"]


class FxPruneError(Exception):
    """Base class of the errors fxprune raises on purpose: about a model, a run, a file or an
    argument of the public API (``ArgumentError``, ``ArgumentTypeError``), ``fxprune.deploy``'s
    included (``DeployError``, ``UnmeasuredLayerError``) and ``InfeasibleBudget`` (a target
    below the cheapest model allowed). Most also derive from the built-in error they are a kind
    of (``ValueError``, ``TypeError``...), so ``except ValueError`` keeps catching them.
    (Recipes' errors are ``fxprune.train.ConfigError``; a few internal checks of data a user
    does not pass still raise the built-in errors.)"""


class ArgumentError(FxPruneError, ValueError):
    """An argument of a public function or method's constructor has a value out of its range:
    the message names the argument, what it takes and what was given."""


class ArgumentTypeError(FxPruneError, TypeError):
    """An argument of a public function or method's constructor is of the wrong kind: the
    message names the argument and what it takes."""


class NotCopyableError(FxPruneError, TypeError):
    """A pruner refuses ``copy.copy``, ``copy.deepcopy`` or pickling in a state that would not
    survive it; the message says how to branch or save the run instead."""


class DivergedError(FxPruneError, ValueError):
    """Statistics a method decides on hold inf or NaN: training diverged, or a mixed-precision
    step overflowed; the message names the lever."""


class InfeasibleBudget(FxPruneError, ValueError):
    """The cost target is below the narrowest model the options allow (``floor``: that model's
    fraction of the dense cost, where known)."""

    floor: float | None = None


class TraceError(FxPruneError):
    """torch.fx could not trace the model (usually data-dependent Python control flow)."""


class ExampleInputsError(FxPruneError, ValueError):
    """``example_inputs`` do not fit the model."""


class SurgeryError(FxPruneError):
    """``finalize`` could not remove channels exactly (it never returns a model that differs)."""


class NotPreparedError(FxPruneError, TypeError):
    """A function that needs ``fxprune.prepare``'s output was given something else."""


class UnsupportedModelError(FxPruneError, TypeError, ValueError):
    """``prepare`` was given a model of a kind it cannot trace: a DDP/DataParallel wrapper, a
    ``torch.compile``'d or TorchScript module, an ATen graph, a model already prepared, or one
    with uninitialised lazy or meta-device tensors. The message names the way out. (A
    ``TypeError`` and a ``ValueError`` too, so that existing ``except`` clauses of either kind catch it.)"""


class TargetNotReachedError(FxPruneError):
    """A training run (``fxprune train``, the Lightning callback) ended with the pruner's cost
    above its target: the schedule did not finish within the run."""


class MethodProtocolError(FxPruneError, TypeError):
    """A pruning method (usually a plug-in) does not do what the protocol of
    :mod:`fxprune.methods.base` asks of it, as the trainer or the Lightning callback found: a
    ``cost()`` that is not a finite number, a ``load_state_dict`` that fails on the state its
    own ``state_dict`` saved or does not bring back its step count. The message names the
    method and the member to fix."""


def described(names: list[str], most: int = 3) -> str:
    """``"a, b, c and 4 more"``: the first ``most`` names and how many others, as a one-line
    error lists them."""
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of ``err``'s message (at most ``limit`` characters; "" when it has none):
    what a one-line error quotes of an exception from torch, ONNX Runtime or a file."""
    return (str(err).strip().splitlines() or [""])[0][:limit]


def out_of_memory(err: BaseException) -> str | None:
    """What ``err`` says of memory where it is an allocation failure (``MemoryError``, torch's
    CPU allocator's "can't allocate memory: you tried to allocate N bytes", a CUDA
    ``torch.OutOfMemoryError``'s first sentences), else None: the cause a one-line error must name
    (not a shape that "does not fit the model")."""
    import re

    import torch

    text = str(err)
    said = re.search(r"can't allocate memory: you tried to allocate \d+ bytes", text)
    if said:
        return said.group(0)
    # CUDA's is one sentence of 400-600 characters: its first two, not 200 characters cut
    # mid-word (review189 R8)
    size = r"[\d.]+ (?:[KMGTP]iB|bytes)"  # (review189 R13: "0 bytes is free", a full GPU)
    said = re.search(rf"CUDA out of memory\. Tried to allocate {size}\."
                     rf"(?: GPU \d+ has a total capacity of {size} of which {size} is free\.)?",
                     text)
    if said:
        return said.group(0)
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return first_line(err) or type(err).__name__
    return None


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` pointing at the first frame outside fxprune: the user's line, whether
    fxprune was called directly, through the method registry, the trainer or a callback (a
    fixed ``stacklevel`` pointed into fxprune on the longer paths). Inside fxprune alone (its
    CLI), at fxprune's outermost frame."""
    frame, level, outside, inner = sys._getframe(1), 1, None, ""
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        # (Lightning's frames too: a method the callback builds points at the fit call)
        # (torch's frames too: an optimizer's step(closure) runs Lightning's closure, and a
        # warning pointed at torch/optim/sgd.py's `loss = closure()`: break119 #3)
        if not (module in ("fxprune", "lightning", "pytorch_lightning", "torch")
                or module.startswith(("fxprune.", "torch.", "lightning.",
                                      "pytorch_lightning."))):
            # the console script that runs fxprune's CLI is not the user's code: its line
            # (`sys.exit(main())`) was printed with the warning (break62 #11)
            if not (module == "__main__" and inner in ("fxprune.cli", "fxprune.__main__")):
                outside = level
            break
        inner = module
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=(outside or level - 1) + 1)
