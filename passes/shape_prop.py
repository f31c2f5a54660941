"""Run the graph once on the example inputs and record what every node produced.

Like ``torch.fx.passes.shape_prop`` but it also keeps small Python values (``x.size(0)``,
``dim`` arguments) that rules need to read, and turns a failure into an error that says which
node failed on which inputs. It runs in eval mode under ``no_grad`` so batch-norm statistics
are not touched, then restores each module's mode.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
from typing import Any, NamedTuple

import torch
from torch import fx, nn

from fxprune.errors import ExampleInputsError, out_of_memory
from .grad_mode import preserving_modes


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
        if type(value) in (list, tuple) or type(value).__module__ == "torch.return_types":
            # (torch's named results keep their field names: y.max(dim=2).values)
            return type(value)(items)
        return tuple(items)
    if isinstance(value, dict):
        return {k: summarize(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str, slice, torch.dtype, torch.device)):
        return value
    return Opaque(type(value).__name__)


_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+), in (\S+)')
# torch's frames and fxprune's tracer (this folder) are not where the user's model went wrong
_INTERNAL_DIRS = tuple(os.path.dirname(os.path.abspath(f)) + os.sep for f in (torch.__file__, __file__))


def user_frame(stack_trace: str | None) -> str:
    """The innermost frame of a node's recorded stack outside torch and fxprune, as
    ``file:line in func: code`` ("" when there is none)."""
    lines = (stack_trace or "").splitlines()
    found = ""
    for i, line in enumerate(lines):
        m = _FRAME.match(line)
        if m and not os.path.abspath(m.group(1)).startswith(_INTERNAL_DIRS):
            code = lines[i + 1].strip() if i + 1 < len(lines) and not _FRAME.match(lines[i + 1]) else ""
            found = f"{m.group(1)}:{m.group(2)} in {m.group(3)}" + (f": {code}" if code else "")
    return found


class _Recorder(fx.Interpreter):
    def _expected_input(self) -> str:
        """What the first conv or linear the graph calls reads (break89 F5: a video model was
        told to pass an image's shape, which it had been given)."""
        spatial = {nn.Conv1d: "L", nn.Conv2d: "H, W", nn.Conv3d: "T, H, W"}
        for node in self.graph.nodes:
            if node.op != "call_module":
                continue
            m = self.module.get_submodule(node.target)
            base = next((b for b in type(m).__mro__ if b in spatial), None)
            if base is not None:
                return (f"its first layer, `{node.target}` ({type(m).__name__}), reads "
                        f"(N, {m.in_channels}, {spatial[base]}): e.g. (torch.randn(1, "
                        f"{m.in_channels}, {spatial[base]}),)")
            if isinstance(m, nn.Linear):
                return (f"its first layer, `{node.target}` (Linear), reads (..., {m.in_features})")
        return "for an image model that is usually (torch.randn(1, 3, H, W),)"

    def _as_run(self, message: str) -> str:
        """``message`` with each ``Proxy(node)`` a traced f-string froze into it (timm's
        "Input height (Proxy(getitem_2)) doesn't match model (56)", break101 #4) replaced by
        the value that node had on the example inputs."""
        nodes = {node.name: node for node in self.graph.nodes}

        def value(match: re.Match) -> str:
            # (what run_node recorded: the interpreter frees a value after its last use)
            v = getattr(nodes.get(match.group(1)), "meta", {}).get("fxprune_value")
            return repr(v) if isinstance(v, (int, float, bool, str)) else match.group(0)

        return re.sub(r"Proxy\((\w+)\)", value, message)

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except ExampleInputsError:
            raise
        except Exception as e:  # noqa: BLE001 - reported with the node that failed
            frame = user_frame(n.stack_trace)
            origin = f"\n  from: {frame}" if frame else ""
            said = out_of_memory(e)
            if said is not None:  # the shapes fit; the memory does not (break186 F6)
                batched = any(len(s) > 0 and s[0] > 1 for s in self.input_shapes
                              if isinstance(s, tuple))
                smaller = ("one sample (batch 1) is enough: the analysis does not depend on the "
                           "batch size" if batched else "a smaller input size")
                raise ExampleInputsError(
                    f"running the model on example_inputs (shapes {self.input_shapes}) ran out of "
                    f"memory at node `{n.name}` ({said}); give a smaller example input: "
                    f"{smaller}") from e
            raise ExampleInputsError(
                f"running the model on example_inputs failed at node `{n.name}` "
                f"({n.op} {getattr(n.target, '__name__', n.target)}){origin}\n  {type(e).__name__}: "
                f"{self._as_run(str(e))}\n"
                f"Check that example_inputs match what the model expects (shapes {self.input_shapes}); "
                f"{self._expected_input()}.") from e
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


def map_tensors(value: Any, fn) -> Any:
    """``value`` with ``fn`` applied to every tensor in it, through tuples (named ones too),
    lists and dicts (a model's forward arguments); anything else as it is."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        items = [map_tensors(v, fn) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, dict):
        return {k: map_tensors(v, fn) for k, v in value.items()}
    return value


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


def check_example_values(example_inputs: tuple) -> None:
    """Refuse example tensors that cannot show a difference: finalize checks its surgery by
    comparing outputs on them. Every tensor empty (a batch of 0) or every floating tensor all
    NaN/inf leaves nothing to compare; one empty or non-finite input among others (an empty
    cache, a causal mask of -inf) is fine, and finalize refuses a non-finite output itself."""
    meta = [i for i, t in enumerate(example_inputs)
            if isinstance(t, torch.Tensor) and t.device.type == "meta"]
    if meta:  # (break187 F5: torch's "Cannot copy out of meta tensor; no data!")
        raise ExampleInputsError(
            f"example_inputs[{meta[0]}] is on the meta device (a shape without data); prepare "
            "runs the model on its examples, so give real tensors, e.g. torch.randn of that "
            "shape on the model's device")
    tensors = [(i, t) for i, t in enumerate(example_inputs) if isinstance(t, torch.Tensor)]
    if tensors and all(t.numel() == 0 for _, t in tensors):
        i, t = tensors[0]
        raise ExampleInputsError(
            f"example_inputs[{i}] is empty (shape {tuple(t.shape)}); finalize checks the pruned "
            "model on these inputs, so give at least one example, e.g. batch size 1")
    floats = [(i, t) for i, t in tensors if t.is_floating_point() and t.numel()]
    if floats and all(not bool(torch.isfinite(t).any()) for _, t in floats):
        i, _ = floats[0]
        raise ExampleInputsError(
            f"example_inputs[{i}] holds only NaN or inf values; finalize checks the pruned model on "
            "these inputs, so give finite ones, e.g. torch.randn of the same shape")


@contextlib.contextmanager
def restoring_buffers(model: torch.nn.Module):
    """Run ``model`` for a check, not for training: every buffer is as it was afterwards (a
    running mean a forward updates whatever the mode moved at each of prepare's and finalize's
    runs, break39 #1). Buffers replaced by another tensor are put back too."""
    saved = [(m, name, b, b.clone()) for m in model.modules() for name, b in m._buffers.items()
             if b is not None]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, name, tensor, value in saved:
                m._buffers[name] = tensor
                if not torch.equal(tensor, value):
                    tensor.copy_(value)


def preserving_rng(model: torch.nn.Module, inputs: tuple):
    """torch's random state on the CPU and on the CUDA devices of ``model`` and ``inputs``,
    given back after the block: a run of the model that fxprune makes (shapes, checks) leaves
    the caller's draws as they were (break154 F6: a forward drawing randn_like moved them)."""
    cuda = sorted({t.device.index or 0 for t in (*model.parameters(), *model.buffers(), *inputs)
                   if isinstance(t, torch.Tensor) and t.is_cuda})
    return torch.random.fork_rng(devices=cuda)


def propagate_shapes(gm: fx.GraphModule, example_inputs: tuple):
    """Run ``gm`` once on ``example_inputs`` (a tuple of its forward's arguments, on its device)
    and record every node's value (a ``TensorMeta``: shape, dtype; containers as such) in
    ``node.meta["fxprune_value"]``, which the channel analysis reads. In place; returns the
    graph's output of that run (without grad, every module in eval mode, buffers restored).

    Raises :class:`~fxprune.errors.ExampleInputsError` when the inputs do not fit the
    forward's arguments or the model fails on them (naming the node and its source line).
    Like ``torch.fx.passes.shape_prop.ShapeProp``, with fxprune's containers and messages."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    # a placeholder's args hold its default; *args and **kwargs are none required (break129
    # F2: ``forward(x, **kw)`` was told to pass (x,), as it had)
    required = [n for n in placeholders if not n.args and not n.target.startswith("*")]
    # (break163 F1: a forward(*xs) was refused for any count but 0 or 1, and one reading
    # **kw got a list there, the error blaming the example inputs)
    star = any(n.target.startswith("*") and not n.target.startswith("**") for n in placeholders)
    read_kwargs = [n.target for n in placeholders if n.target.startswith("**") and n.users]
    if read_kwargs:
        raise ExampleInputsError(
            f"the model's forward reads {read_kwargs[0]}, and prepare passes example_inputs by "
            "position, so it cannot fill keyword arguments; wrap the model in a module whose "
            "forward takes them as named arguments, and prepare that")
    if not len(required) <= len(example_inputs) <= (math.inf if star else len(placeholders)):
        names = ", ".join(n.target for n in placeholders)
        example = ", ".join(n.target for n in required) + ("," if len(required) == 1 else "")
        raise ExampleInputsError(
            f"the model's forward takes {len(required)} required argument(s) ({names}) but "
            f"example_inputs has {len(example_inputs)}; pass one example per argument, in their "
            f"order (keyword-only ones too), e.g. ({example})"
            + ("; a forward taking one list of tensors gets it as one argument: ([a, b],)"
               if len(placeholders) == 1 < len(example_inputs) else ""))  # break39 #5
    modes = {m: m.training for m in gm.modules()}
    recorder = _Recorder(gm)
    recorder.extra_traceback = False  # our error names the node and the model's line already
    recorder.input_shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                             for t in example_inputs]
    gm.eval()
    try:
        with preserving_modes(), torch.no_grad(), restoring_buffers(gm), preserving_rng(gm, example_inputs):
            return recorder.run(*example_inputs)
    finally:
        for m, training in modes.items():
            m.training = training
