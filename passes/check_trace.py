"""Check the traced graph against the model it was traced from, on the example inputs.

torch.fx records the calls made on proxies. A value the forward computes from a real tensor
while tracing is stored in the graph as a constant (``_tensor_constant0``): a module buffer
written in place (``torch.add(y, 1, out=self.buf)``, ``self.buf.copy_(y)``) and then read through
an op was computed once, from the buffer's value at trace time, and the graph silently computed
another function, whose masked and pruned forms then agreed with each other (break122 F0). One
forward of each, in the model's own modes and from one random state, finds such a graph before
anything is pruned.
"""
from __future__ import annotations

import torch
from torch import fx, nn

from fxprune.errors import TraceError
from .shape_prop import restoring_buffers
from .surgery import ieee_float32, inputs_for, max_relative_error, model_device_dtype

#: relative tolerance by the model's floating dtype (the same ops in the same order: these only
#: absorb a kernel choosing another summation order)
_RTOL = {torch.float16: 1e-2, torch.bfloat16: 5e-2}


def _run(model: nn.Module, inputs: tuple, grad: bool = False):
    """``model`` on ``inputs`` from random state 0, its buffers restored after; without grad
    (a forward writing ``out=`` refuses grad), or with it (``grad``) to confirm a difference."""
    device = model_device_dtype(model)[0]
    cuda = [device] if getattr(device, "type", "cpu") == "cuda" else []
    with (torch.random.fork_rng(devices=cuda), ieee_float32(), restoring_buffers(model),
          torch.set_grad_enabled(grad)):
        torch.manual_seed(0)
        return model(*inputs_for(model, inputs))


def _differs(model: nn.Module, gm: fx.GraphModule, inputs: tuple, rtol: float, grad: bool) -> float:
    """The graph's relative difference from the model (0 where the model differs from itself
    between two runs: randomness the seed does not fix, nothing to judge the graph by)."""
    expected = _run(model, inputs, grad)
    error = max_relative_error(expected, _run(gm, inputs, grad))
    if error > rtol and max_relative_error(expected, _run(model, inputs, grad)) > rtol:
        return 0.0
    return error


def check_traced(model: nn.Module, gm: fx.GraphModule, inputs: tuple) -> None:
    """Raise :class:`~fxprune.errors.TraceError` when ``gm`` (traced from ``model``, no masks
    yet) computes another output than ``model`` on ``inputs`` (a tuple of forward arguments),
    both run without grad in their current train/eval modes from the same random state, and
    again with grad before raising. ``model`` is run as given: pass a copy of the user's
    (hooks and buffers are its own). A model that differs from itself between two such runs
    (randomness the seed does not fix) is not judged."""
    rtol = _RTOL.get(model_device_dtype(model)[1], 1e-4)
    error = _differs(model, gm, inputs, rtol, grad=False)
    if error <= rtol:
        return
    try:  # with grad, as it was traced (a branch on torch.is_grad_enabled() took that side)
        if _differs(model, gm, inputs, rtol, grad=True) <= rtol:
            return
    except Exception:  # noqa: BLE001 - a forward that runs without grad only: judged without
        pass
    constants = [n.target for n in gm.graph.nodes
                 if n.op == "get_attr" and n.target.startswith("_tensor_constant")]
    held = (f" (it holds {', '.join(constants[:3])}, a tensor computed while tracing)"
            if constants else "")
    raise TraceError(
        f"prepare: the traced graph computes another output than the model on the example "
        f"inputs (relative difference {error:.3g}){held}: torch.fx stores a value the forward "
        "computes from a real tensor as a constant, as when it reads a module attribute it "
        "wrote in place (torch.add(y, 1, out=self.buf), self.buf.copy_(y)); compute into a new "
        "tensor instead (y = ...), or pass the module doing it in leaf_modules= to call it as "
        "one op")
