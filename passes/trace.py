"""Pass 1: trace the user's model into a torch.fx GraphModule, on a copy.

The GraphModule ``symbolic_trace`` makes shares the original's layer objects, so pruning it
would edit the user's model; we deep-copy first and trace the copy. Data-dependent control flow
cannot be traced: the error names the module path and the source line, and points at
``leaf_modules`` (a leaf is called as a whole and its channels become a barrier).
"""
from __future__ import annotations

import copy
import linecache
import os
import traceback

import torch
from torch import fx, nn

from fxprune.errors import TraceError

_TORCH_DIR = os.path.dirname(torch.__file__)


class _Tracer(fx.Tracer):
    def __init__(self, leaf_types: tuple[type, ...] | None = None, leaf_names: frozenset[str] = frozenset()):
        if leaf_types is None:
            # Only unpickling constructs it without arguments: torch.fx rebuilds a pickled
            # GraphModule by re-tracing its generated code, which loses the graph metadata
            # fxprune's analysis lives in. Say so instead of failing on a missing argument.
            raise TypeError(
                "a model prepared by fxprune cannot be unpickled (torch.save/torch.load of the "
                "module, or a process spawned with it, e.g. Lightning's ddp_spawn): torch.fx "
                "rebuilds it without fxprune's analysis. Save pm.state_dict() and call "
                "fxprune.prepare again before load_state_dict, or start processes that build the "
                "model themselves (torchrun, Lightning strategy='ddp')")
        super().__init__()
        self.record_stack_traces = True
        self.leaf_types, self.leaf_names = leaf_types, leaf_names
        self.module_path: list[tuple[str, type]] = []
        self.failed_at: list[tuple[str, type]] | None = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, self.leaf_types) or qualname in self.leaf_names:
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        self.module_path.append((self.path_of_module(m), type(m)))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_at is None:  # the innermost module is where it failed
                self.failed_at = list(self.module_path)
            raise
        finally:
            self.module_path.pop()


def _user_frame(exc: BaseException):
    """The deepest traceback frame outside torch: the line of model code that failed."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not os.path.abspath(f.filename).startswith(_TORCH_DIR)]
    return frames[-1] if frames else None


def trace(model: nn.Module, *, leaf_modules=()) -> fx.GraphModule:
    """Deep-copy ``model`` and trace the copy; ``leaf_modules`` holds classes or module paths."""
    leaf_types = tuple(m for m in leaf_modules if isinstance(m, type))
    leaf_names = frozenset(m for m in leaf_modules if isinstance(m, str))
    bad = [m for m in leaf_modules if not isinstance(m, (type, str))]
    if bad:
        raise TypeError(f"leaf_modules takes module classes or module paths (str), got {bad!r}")
    unknown = [n for n in leaf_names if n not in dict(model.named_modules())]
    if unknown:
        raise ValueError(f"leaf_modules names {unknown} are not modules of the model; "
                         f"paths look like {[n for n, _ in list(model.named_modules())[1:4]]}")
    try:
        root = copy.deepcopy(model)
    except Exception as e:  # noqa: BLE001 - re-raised with the way out
        raise TypeError(f"fxprune works on a copy of the model but {type(model).__name__} cannot "
                        f"be deep-copied ({e}); make its attributes copyable") from e
    tracer = _Tracer(leaf_types, leaf_names)
    try:
        graph = tracer.trace(root)
    except Exception as e:  # noqa: BLE001 - any tracing failure gets the same explanation
        raise _trace_error(model, tracer, e) from e
    return fx.GraphModule(root, graph, type(model).__name__)


def _trace_error(model: nn.Module, tracer: _Tracer, e: Exception) -> TraceError:
    path = tracer.failed_at or []
    where = path[-1] if path else ("", type(model))
    name = where[0] or "(the model itself)"
    frame = _user_frame(e)
    source = ""
    if frame is not None:
        line = (frame.line or linecache.getline(frame.filename, frame.lineno)).strip()
        source = f" at {frame.filename}:{frame.lineno} in {frame.name}():\n    {line}\n"
    if where[0]:
        way_out = (f"prepare(..., leaf_modules=[{where[1].__name__}]) or leaf_modules=['{where[0]}'] "
                   f"keeps that module whole (its channels are then not pruned)")
    else:
        way_out = "move the data-dependent part into a submodule and pass it in leaf_modules"
    if isinstance(e, fx.proxy.TraceError):
        why = ("Python control flow that depends on tensor values cannot be traced. Either "
               f"{way_out}, or rewrite the branch so it does not depend on tensor values.")
    else:
        why = ("Code that needs concrete values (numbers, shapes as Python ints) where torch.fx "
               f"passes symbolic proxies cannot be traced. Either {way_out}, or use tensor "
               "methods (x.new_zeros(...), x.size(...)) that torch.fx records.")
    return TraceError(f"torch.fx could not trace module `{name}` ({where[1].__name__})"
                      f"{source or ' '}{type(e).__name__}: {e}\n{why}")
