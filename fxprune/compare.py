"""Comparing a model's outputs with another's: what finalize's exactness check, the trace
check, CUCB's gathered execution, ``fxprune.summary`` and the benchmarks share.

Outputs are compared tensor by tensor (:func:`flat_tensors`), relative to each output's scale
(:func:`max_relative_error`), with both models run alike (:func:`run_eval`: eval mode, no
grad, IEEE float32, inputs moved to the model's device and dtype, buffers restored).
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch
from torch import fx, nn

from fxprune.passes.grad_mode import autocast_dtypes
from fxprune.passes.shape_prop import map_tensors, restoring_buffers

__all__ = ["flat_tensors", "output_scales", "max_relative_error", "floating_dtypes",
           "DEFAULT_RTOL", "default_rtol", "model_device_dtype", "inputs_for", "ieee_float32",
           "run_eval"]


def flat_tensors(out):
    """The tensors in a model's output: a tensor, or lists, tuples, dicts and dataclasses of
    them (break163 F5: a dataclass output held "no values", and the trace check compared
    nothing); anything else holds none."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in flat_tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in flat_tensors(o)]
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return [t for f in dataclasses.fields(out) for t in flat_tensors(getattr(out, f.name))]
    return []


def output_scales(a) -> list[float]:
    """max |a| over the finite values of each output tensor (0 for one with none)."""
    out = []
    for x in flat_tensors(a):
        finite = x.detach()[torch.isfinite(x.detach())] if x.numel() else x.detach()
        out.append(finite.double().abs().max().item() if finite.numel() else 0.0)
    return out


def max_relative_error(a, b, min_scales: list[float] | None = None) -> float:
    """max |a - b| / max |a| over the finite values of all output tensors (compared in the same
    order). NaN and +-inf must sit at the same positions in both (masked logits of -inf), else,
    or where the structure or a shape differs, the result is ``inf``: a NaN never compares as 0.
    ``min_scales``: per tensor, a floor under its max |a| (see
    :func:`fxprune.passes.surgery.verify`)."""
    ta, tb = flat_tensors(a), flat_tensors(b)
    if len(ta) != len(tb):
        return float("inf")
    worst = 0.0
    for i, (x, y) in enumerate(zip(ta, tb)):
        if x.shape != y.shape:
            return float("inf")
        if not x.numel():
            continue
        if x.is_complex() or y.is_complex():  # (break124 #10: .double() dropped the imaginary part)
            x, y = torch.view_as_real(x.detach().resolve_conj()), torch.view_as_real(
                y.detach().resolve_conj())
        x, y = x.detach().double(), y.detach().double()
        finite = torch.isfinite(x)
        special = ~finite
        # nan_to_num(nan=0) keeps NaN, inf and -inf apart (0, max, min) at the special places
        if not (torch.equal(finite, torch.isfinite(y))
                and torch.equal(x[special].nan_to_num(nan=0.0), y[special].nan_to_num(nan=0.0))):
            return float("inf")
        if not bool(finite.any()):
            continue
        scale = x[finite].abs().max().item()
        if min_scales is not None and i < len(min_scales):
            scale = max(scale, min_scales[i])
        diff = (x[finite] - y[finite]).abs().max().item()
        worst = max(worst, diff / max(scale, 1e-12))
    return worst


def floating_dtypes(model: nn.Module) -> dict[torch.dtype, int]:
    """{floating dtype: elements} over the model's parameters and buffers, most elements first."""
    counts: dict[torch.dtype, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point():
            counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


#: the default check tolerance by the model's floating dtype: half-precision models sum the
#: kept channels in another order than the masked model does, which moves results by about
#: their rounding step (bfloat16: 8 bits of mantissa); 1e-4 for the others.
DEFAULT_RTOL = {torch.float16: 1e-2, torch.bfloat16: 5e-2}


def default_rtol(prepared: fx.GraphModule) -> float:
    """The relative tolerance of the lowest precision ``prepared`` computes in: every dtype its
    tensors hold and its forward's autocast regions (break99 F4, break104 F1), by
    :data:`DEFAULT_RTOL`."""
    dtypes = {*floating_dtypes(prepared), *autocast_dtypes(prepared.graph)}
    return max((DEFAULT_RTOL.get(d, 1e-4) for d in dtypes), default=1e-4)


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype | None]:
    """The device of the model's first parameter (or buffer) and the floating dtype most of its
    elements hold (a float32 input scale in a bfloat16 model does not make it a float32 one)."""
    tensors = list(model.parameters()) + list(model.buffers())
    device = tensors[0].device if tensors else torch.device("cpu")
    return device, next(iter(floating_dtypes(model)), None)


def inputs_for(model: nn.Module, inputs: tuple) -> tuple:
    """``inputs`` moved to ``model``'s device; a floating tensor of neither the dtype of the
    model's first floating tensor nor the one most of its elements hold is cast to the first's.

    The example inputs stored at ``prepare`` stay where they were given (usually the CPU, in
    float32); the model may since have moved to a GPU or been cast to float64/bfloat16, and
    every stored-input run (finalize's check, FLOPs counting, summary) must follow it. An input
    of the dtype most of the model holds is kept (break104 F1: a bfloat16 model with a float32
    input scale first had its bfloat16 example cast to float32, which its convs refused); one
    of another dtype still goes to the first tensor's, which its first layer usually reads (a
    float32 example of a bfloat16 model whose norms stay float32: review108 F1).
    Integer inputs (token ids) keep their dtype. Always copies: a forward that writes into its
    input (``x.mul_(2)``, an in-place normalisation) changes the copy, not the stored example
    (finalize's check then compared two runs on different inputs and blamed randomness).
    """
    device, most = model_device_dtype(model)
    tensors = [*model.parameters(), *model.buffers()]
    first = next((t.dtype for t in tensors if t.is_floating_point()), None)

    def move(t):
        if t.is_floating_point() and first is not None and t.dtype not in (first, most):
            return t.to(device=device, dtype=first, copy=True)
        return t.to(device, copy=True)

    return map_tensors(tuple(inputs), move)


@contextlib.contextmanager
def ieee_float32():
    """TF32 off for the block (cuDNN convolutions and CUDA matmuls), restored after. An
    exactness check compares the masked and the pruned model in float32: with TF32 (cuDNN's
    default for convolutions) each conv rounds its inputs to 10 mantissa bits, and the two
    models' different shapes pick different kernels, so resnet50 on an H200 differed by 2.6e-4
    where the check allows 1e-4, and finalize called it a bug in fxprune.

    torch has two APIs for this, and reading one after the other was set raises (break61 #2:
    after ``torch.backends.cuda.matmul.fp32_precision = "tf32"``, finalize raised): the
    settings are read and written through the one the process uses."""
    try:
        legacy = (torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    except RuntimeError:  # the fp32_precision API is in use: the legacy reads refuse the mix
        legacy = None
    if legacy is not None:
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
    else:
        new = (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        if legacy is not None:
            torch.backends.cudnn.allow_tf32 = legacy[0]
            torch.set_float32_matmul_precision(legacy[1])
        else:
            torch.backends.cudnn.conv.fp32_precision = new[0]
            torch.backends.cuda.matmul.fp32_precision = new[1]


def run_eval(model: nn.Module, inputs: tuple, *, inputs_like: nn.Module | None = None):
    """Run ``model`` in eval mode without grad, in IEEE float32 (:func:`ieee_float32`), on
    ``inputs`` moved to the model's device and floating dtype (:func:`inputs_for`), then
    restore every module's mode and every buffer (a check is not a training step:
    :func:`restoring_buffers`). ``inputs_like``: the model whose device and dtypes the inputs
    follow instead (a gathered network that holds few tensors of its own: break109 F1)."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    device = model_device_dtype(model)[0]
    kind = getattr(device, "type", "cpu")
    # in the model's own dtype, whatever autocast region the caller is in: under one, the
    # masked norms' float32 statistics and the plain ones' bfloat16 differed beyond the check's
    # tolerance, and finalize called it a bug in fxprune (break43 #5)
    plain = torch.autocast(kind, enabled=False) if kind in ("cpu", "cuda") else contextlib.nullcontext()
    try:
        with torch.no_grad(), plain, ieee_float32(), restoring_buffers(model):
            return model(*inputs_for(model if inputs_like is None else inputs_like, inputs))
    finally:
        for m, training in modes.items():
            m.training = training
