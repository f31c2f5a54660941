"""Pass 2: run the graph once on the example inputs and record what every node produced.

Like ``torch.fx.passes.shape_prop`` but it also keeps small Python values (``x.size(0)``,
``dim`` arguments) that rules need to read, and turns a failure into an error that says which
node failed on which inputs. It runs in eval mode under ``no_grad`` so batch-norm statistics
are not touched, then restores each module's mode.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import fx

from fxprune.errors import ExampleInputsError


class TensorMeta(NamedTuple):
    shape: tuple[int, ...]
    dtype: torch.dtype


class Opaque(NamedTuple):
    type_name: str


def summarize(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return TensorMeta(tuple(value.shape), value.dtype)
    if isinstance(value, torch.Size):
        return tuple(value)
    if isinstance(value, (list, tuple)):
        items = [summarize(v) for v in value]
        return type(value)(items) if type(value) in (list, tuple) else tuple(items)
    if isinstance(value, dict):
        return {k: summarize(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str, slice, torch.dtype, torch.device)):
        return value
    return Opaque(type(value).__name__)


class _Recorder(fx.Interpreter):
    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except ExampleInputsError:
            raise
        except Exception as e:  # noqa: BLE001 - reported with the node that failed
            where = (n.stack_trace or "").strip().splitlines()
            origin = f"\n  from: {where[-2].strip()} {where[-1].strip()}" if len(where) >= 2 else ""
            raise ExampleInputsError(
                f"running the model on example_inputs failed at node `{n.name}` "
                f"({n.op} {getattr(n.target, '__name__', n.target)}){origin}\n  {type(e).__name__}: {e}\n"
                f"Check that example_inputs match what the model expects (shapes {self.input_shapes}); "
                f"for an image model that is usually (torch.randn(1, 3, H, W),).") from e
        pieces = n.meta.get("fxprune_pieces")
        if pieces is not None and (not isinstance(result, (list, tuple)) or len(result) != pieces):
            raise ExampleInputsError(
                f"`{n.name}` ({getattr(n.target, '__name__', n.target)}) was unrolled into {pieces} pieces "
                f"while tracing (the model iterates over its result), but returns "
                f"{len(result) if isinstance(result, (list, tuple)) else 'no tuple'} on example_inputs "
                f"(shapes {self.input_shapes}): its input's size along the split dim does not divide "
                "evenly; unpack the pieces to names or use split with explicit sizes")
        n.meta["fxprune_value"] = summarize(result)
        return result


class NodeFacts:
    """Reads what passes leave on nodes: this pass's values and shapes, the analysis's labels.
    Rule contexts (analysis and surgery) inherit it; ``node`` is the node being handled."""

    node: fx.Node | None = None

    def value(self, a) -> Any:
        if isinstance(a, fx.Node):
            return a.meta.get("fxprune_value")
        if isinstance(a, (list, tuple)):
            return type(a)(self.value(v) for v in a)
        return a

    def shape(self, a) -> tuple[int, ...] | None:
        v = self.value(a) if isinstance(a, fx.Node) else None
        return v.shape if isinstance(v, TensorMeta) else None

    def out_meta(self, node: fx.Node | None = None) -> Any:
        return (node or self.node).meta.get("fxprune_value")

    def out_shape(self) -> tuple[int, ...] | None:
        return self.shape(self.node)

    def labels(self, a):
        return (a.meta.get("fxprune_labels") or {}) if isinstance(a, fx.Node) else {}


def normalize_example_inputs(example_inputs) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, list):
        example_inputs = tuple(example_inputs)
    if not isinstance(example_inputs, tuple):
        raise ExampleInputsError(
            f"example_inputs must be a tuple of the model's forward arguments, e.g. (x,); "
            f"got {type(example_inputs).__name__}")
    return example_inputs


def propagate_shapes(gm: fx.GraphModule, example_inputs: tuple) -> None:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    required = [n for n in placeholders if not n.args]  # a placeholder's args hold its default
    if not len(required) <= len(example_inputs) <= len(placeholders):
        names = ", ".join(n.target for n in placeholders)
        raise ExampleInputsError(
            f"the model's forward takes {len(required)} required argument(s) ({names}) but "
            f"example_inputs has {len(example_inputs)}; pass one example per argument, e.g. (x,)")
    modes = {m: m.training for m in gm.modules()}
    recorder = _Recorder(gm)
    recorder.input_shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                             for t in example_inputs]
    gm.eval()
    try:
        with torch.no_grad():
            recorder.run(*example_inputs)
    finally:
        for m, training in modes.items():
            m.training = training
