"""What a prepared graph computes with: soft masks on input channels and masked statistics.

SMCP masks *input* channels: a layer that reads a group's channels multiplies the input-channel
slice of its weight by the group's mask, ``W~ = W * m``. With a straight-through estimator the
weight's gradient ignores the mask (``dL/dW = dL/dW~``) so a masked-out channel keeps learning
and can come back. ``finalize`` folds ``m`` into the weight and deletes the channels.

The masked layer classes below subclass the torch.nn classes they stand for and are swapped in
by assigning ``__class__`` on the prepared model's own layer object: parameters, state-dict keys
and ``isinstance`` checks stay what they were, and ``unwrap`` puts the plain class back.
"""
from __future__ import annotations

import functools
import inspect
import math
import weakref

import torch
import torch.nn.functional as F
from torch import nn

try:  # the flag torch.fx sets while it traces (read per masked forward: no warning logged)
    from torch.fx._symbolic_trace import _get_is_fx_tracing
except ImportError:  # pragma: no cover - a torch without it: its public, logging form
    from torch.fx._symbolic_trace import is_fx_tracing as _get_is_fx_tracing


def _traced_by_another_tracer() -> bool:
    """A torch.fx symbolic trace is running (not torch.compile or torch.export, whose tracing
    the masked forwards support)."""
    return not torch.compiler.is_compiling() and _get_is_fx_tracing()


def _refuse_another_tracer(what: str) -> None:
    if _traced_by_another_tracer():
        from .errors import FxPruneError
        raise FxPruneError(
            f"a torch.fx tracer went into fxprune's {what}, which runs as one op: keep "
            "fxprune's layers and functions as leaves, e.g. create_feature_extractor(pm, nodes, "
            "tracer_kwargs=fxprune.tracer_kwargs(pm)), or trace the finalized model")


def one_op(fn):
    """A masked layer's ``forward``, or a function fxprune puts into the prepared graph, is
    one op of it: a torch.fx tracer that enters it (``torch.fx.symbolic_trace(prepared)``,
    torchvision's ``create_feature_extractor``) fails on its host-side logic with torch's
    message (break90 F5: "'Proxy' object does not support item assignment"; break92 F2), or,
    with every mask at 1, records the plain norm and no later mask change (break92 F1:
    silently). So it is refused in one line naming the way out
    (:func:`fxprune.tracer_kwargs`)."""
    if "." in fn.__qualname__:  # a method: the layer's class is named
        @functools.wraps(fn)
        def checked(self, *args, **kwargs):
            _refuse_another_tracer(f"masked layer {type(self).__name__}")
            return fn(self, *args, **kwargs)
    else:
        @functools.wraps(fn)
        def checked(*args, **kwargs):
            _refuse_another_tracer(f"function {fn.__name__}")
            return fn(*args, **kwargs)
    return checked


class _StraightThroughScale(torch.autograd.Function):
    """``x * s`` forward; the gradient reaches ``x`` as if ``s`` were 1. Written with
    ``setup_context`` and a generated vmap rule, so ``torch.func.grad``/``vmap`` (per-sample
    gradients) work on a prepared model."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return x * s

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass  # the backward needs nothing saved

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def scale(x: torch.Tensor, s: torch.Tensor, *, straight_through: bool) -> torch.Tensor:
    s = s.to(x.dtype)
    return _StraightThroughScale.apply(x, s) if straight_through else x * s


def broadcast_along(mask: torch.Tensor, ndim: int, dim: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[dim] = -1
    return mask.view(shape)


@one_op
def gather_mask(index: torch.Tensor, *group_masks: torch.Tensor) -> torch.Tensor:
    """Per-position mask of a layer input that mixes groups (concat) or repeats them (flatten).

    ``index`` points into ``[1, *group_masks]``: 0 marks a position no group owns (never masked).
    The group masks are kept with the result: whether it is all ones, which a masked norm
    asks (a concat, then GroupNorm: a U-Net decoder), is their answer, each remembered by its
    version (:func:`_is_all_ones`); it was read from the device at every forward (review134
    F7), and is not read where nothing asks (a conv's input: review135 F1).
    """
    return _gathered(index, group_masks)


def _gathered(index: torch.Tensor, group_masks: tuple) -> torch.Tensor:
    ones = group_masks[0].new_ones(1)
    gathered = torch.cat([ones, *group_masks])[index]
    try:
        gathered._fxprune_gathered_from = group_masks
    except (AttributeError, RuntimeError):  # a tensor subclass that takes no attributes
        pass
    return gathered


class MaskGather(nn.Module):
    """:func:`gather_mask` as a module of the mask bank, holding its ``index`` (a buffer): what
    prepare puts into the graph. Another torch.fx tracer records a function only when one of
    its arguments is traced, and every argument of the function is a buffer, which tracers
    return as the tensor itself: ``create_feature_extractor(pm, ..., tracer_kwargs=
    fxprune.tracer_kwargs(pm))`` failed on every model with a concat or a flatten into a
    linear (break141 F1). A leaf module's call is recorded whatever its arguments are.
    (Graphs saved with the function call it as before.)"""

    def __init__(self, index: torch.Tensor):
        super().__init__()
        self.register_buffer("index", index, persistent=False)
        # A host copy, outside the module's state: ``to_empty`` (a model moved to the meta
        # device, then made real) refills every buffer with garbage, and a non-persistent one is
        # not in the state dict that ``load_state_dict`` would restore (review143 F8)
        self._index_host = index.detach().to("cpu", copy=True)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        index, host = self._buffers["index"], getattr(self, "_index_host", None)
        if host is not None and index.device.type != "meta":
            with torch.no_grad():  # once per move of the model, not per step
                index.copy_(host)
        return self

    @one_op
    def forward(self, *group_masks: torch.Tensor) -> torch.Tensor:
        if self.index.is_meta and getattr(self, "_index_host", None) is not None:
            # load_state_dict(..., assign=True) into a meta-device model leaves this buffer
            # on meta, and indexing with it returned garbage (review149 F6)
            self.index = self._index_host.to(group_masks[0].device)
        return _gathered(self.index, group_masks)


@one_op
def mask_contracted(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` times ``mask`` along its last dim: the left operand of a product that sums over
    channels without a weight (attention's query/key dot products, ``a @ b``), so a masked
    channel adds nothing to the sum, as it adds nothing once removed
    (:mod:`fxprune.rules.attention`). ``x`` (..., K), ``mask`` (K,)."""
    return x * mask.to(x.dtype)


# -- layers whose input channels are masked -------------------------------------------------------

class _FxPruneLayer:
    """Marker of every class fxprune swaps in (``unwrap`` puts ``_fxprune_base`` back)."""

    _fxprune_base: type = nn.Module
    #: how a class made at run time (:func:`variant_class`, :func:`input_masked_class`) is made
    #: again: pickle finds classes by module and name, and these have none to find
    _fxprune_recipe: tuple | None = None

    def __prepare_scriptable__(self):
        # torch.jit.script calls this on every submodule first (break113 F4: "Module
        # 'MaskedConv2d' has no attribute '_fxprune_in_dim'", from inside TorchScript)
        raise TypeError(f"torch.jit.script: {type(self).__name__} is one of fxprune's masked "
                        "layers, which do not script: script the finalized model "
                        "(fxprune.finalize(prepared)), or torch.jit.trace the prepared one")

    def __reduce_ex__(self, protocol):
        recipe = type(self).__dict__.get("_fxprune_recipe")
        if recipe is None:
            return super().__reduce_ex__(protocol)
        return _new_of_derived, (recipe,), self.__dict__.copy()


def _new_of_derived(recipe: tuple):
    """An empty instance of the run-time class ``recipe`` names (its state is set after)."""
    kind, *args = recipe
    if kind == "variant":
        cls = variant_class(args[0], dict([args[1:]]))
    elif kind == "row":
        cls = row_masked_class(*args)
    else:
        cls = input_masked_class(*args)
    return cls.__new__(cls)


class _InputMasked(_FxPruneLayer):
    """Mixin: ``forward(x, mask)`` masks ``weight`` along ``_fxprune_in_dim`` (its input channels:
    1 for conv/linear ``[out, in, ...]``, 0 for a transposed conv ``[in, out/groups, k...]``)."""

    _fxprune_in_dim: int = 1
    #: True: straight-through (SMCP). False: the gradient is masked too (a "hard" mask, as HALP).
    fxprune_straight_through: bool = True

    def masked_weight(self, mask: torch.Tensor) -> torch.Tensor:
        m = broadcast_along(mask, self.weight.ndim, self._fxprune_in_dim)
        return scale(self.weight, m, straight_through=self.fxprune_straight_through)


@one_op
def mask_weight(weight: torch.Tensor, mask: torch.Tensor, dim: int,
                straight_through: bool = True) -> torch.Tensor:
    """A functional layer's weight (``F.conv2d(x, self.w)``) masked along its input dim ``dim``
    (straight-through unless a method's masks are hard: :func:`set_straight_through`)."""
    return scale(weight, broadcast_along(mask, weight.ndim, dim), straight_through=straight_through)


def set_straight_through(prepared: nn.Module, on: bool) -> None:
    """Whether the masks pass their gradient straight through to the masked weights (SMCP's
    soft masks, He et al.'s straight-through estimator) or stop it where a mask is 0 (hard
    masks: CUCB's inactive channels, CCP's and SMCP ``masks="hard"``'s pruned ones): the
    masked layer classes and the functional layers' :func:`mask_weight` calls alike (the
    latter stayed straight-through, so a timm ``Linear`` head trained inactive channels)."""
    for m in prepared.modules():
        if isinstance(m, _InputMasked):
            m.fxprune_straight_through = on
    graph = getattr(prepared, "graph", None)
    changed = False
    for node in (graph.nodes if graph is not None else ()):
        if node.op == "call_function" and node.target is mask_weight and (
                node.kwargs.get("straight_through", True) != on):
            node.update_kwarg("straight_through", on)
            changed = True
    if changed:
        prepared.recompile()


class _MaskedConv(_InputMasked):
    # nn.Conv1d/2d/3d share _conv_forward(x, weight, bias); one forward serves all three.
    @one_op
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.masked_weight(mask), self.bias)


class MaskedConv1d(_MaskedConv, nn.Conv1d):
    _fxprune_base = nn.Conv1d


class MaskedConv2d(_MaskedConv, nn.Conv2d):
    _fxprune_base = nn.Conv2d


class MaskedConv3d(_MaskedConv, nn.Conv3d):
    _fxprune_base = nn.Conv3d


class _MaskedConvTranspose(_InputMasked):
    # weight [in, out/groups, k...]: the input channels are dim 0
    _fxprune_in_dim = 0

    @one_op
    def forward(self, x: torch.Tensor, mask: torch.Tensor, output_size=None) -> torch.Tensor:
        n = len(self.kernel_size)
        out_pad = self._output_padding(x, output_size, self.stride, self.padding, self.kernel_size, n,
                                       self.dilation)
        fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[n - 1]
        return fn(x, self.masked_weight(mask), self.bias, self.stride, self.padding, out_pad,
                  self.groups, self.dilation)


class MaskedConvTranspose1d(_MaskedConvTranspose, nn.ConvTranspose1d):
    _fxprune_base = nn.ConvTranspose1d


class MaskedConvTranspose2d(_MaskedConvTranspose, nn.ConvTranspose2d):
    _fxprune_base = nn.ConvTranspose2d


class MaskedConvTranspose3d(_MaskedConvTranspose, nn.ConvTranspose3d):
    _fxprune_base = nn.ConvTranspose3d


class _OwnForwardMasked(_InputMasked):
    """A layer fxprune has no masked class for (a subclass of a torch layer, a user's layer given a
    row through ``rules=``): its own ``forward`` runs with the masked weight in place of its
    ``weight`` parameter, so whatever else that forward does stays as it was."""

    @one_op
    def forward(self, x: torch.Tensor, mask: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        params = self._parameters
        weight = params["weight"]
        params["weight"] = self.masked_weight(mask)
        try:
            return self._fxprune_base.forward(self, x, *args, **kwargs)
        finally:
            params["weight"] = weight


class _RowForwardMasked(_InputMasked):
    """A layer whose op-table row computes its masked forward (``row.masked_forward(module, x,
    mask)``): one whose own forward computes with its weight in a way a masked weight alone
    would not reproduce once the channels are gone (weight standardization's statistics)."""

    _fxprune_row = None

    @one_op
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self._fxprune_row.masked_forward(self, x, mask)


class _RowNormMasked(_FxPruneLayer):
    """A norm whose op-table row computes its masked forward (``row.masked_forward(module, x,
    *masks)``, statistics over kept channels only): a library's norm class fxprune has no
    masked subclass of (timm's RmsNorm2d), whose forward the row's replaces."""

    _fxprune_row = None
    #: indices, within the normalized dims, of the dims the masks passed to forward cover
    fxprune_mask_dims: tuple[int, ...] = ()

    @one_op
    def forward(self, x: torch.Tensor, *masks: torch.Tensor) -> torch.Tensor:
        return self._fxprune_row.masked_forward(self, x, *masks)


class MaskedLinear(_InputMasked, nn.Linear):
    _fxprune_base = nn.Linear

    @one_op
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.masked_weight(mask), self.bias)


# -- norms whose statistics mix channels ----------------------------------------------------------
# A pruned channel's value is still computed (only its readers' weights are masked), so a norm
# that averages over channels must leave masked channels out of its statistics, or removing them
# later would change every other channel's output.

def all_ones(masks) -> bool:
    """Whether every mask is all ones (the norm's plain form then runs). While torch.compile
    or torch.export traces, False without a look: the masked form, exact with every mask at 1
    too, is one graph, where reading the answer breaks it (a host read) or fails (fake
    tensors have no data: break90 F6)."""
    if torch.compiler.is_compiling():
        return False
    return all(_is_all_ones(m) for m in masks)


def _is_all_ones(mask: torch.Tensor) -> bool:
    """Whether every entry of ``mask`` is 1, remembered per mask version.

    Reading the answer is a device-to-host copy; on a GPU that stalls the CPU until every
    queued kernel has run, and it happened once per norm per forward (23 times per ConvNeXt-T
    forward). In-place writes (the pruner's ``copy_``, ``g.mask[...] = 0``) bump the tensor's
    version counter, so the answer is read again only when the mask really changes; writes
    through ``.data`` or a numpy view do not (write masks through the tensor itself). A mask
    computed in the forward (:func:`gather_mask`) answers with the group masks it gathers.
    """
    gathered_from = getattr(mask, "_fxprune_gathered_from", None)
    if gathered_from is not None:
        return all(_is_all_ones(m) for m in gathered_from)
    if mask.is_inference():  # made under torch.inference_mode (a gathered mask): no version
        with torch.no_grad():  # counter to remember by (break43 #3: it raised)
            return bool((mask == 1).all().item())
    cached = getattr(mask, "_fxprune_all_ones", None)
    if cached is not None and cached[0] == _version_key(mask):
        return cached[1]
    with torch.no_grad():
        answer = bool((mask == 1).all().item())
    remember_all_ones(mask, answer)
    return answer


def _version_key(mask: torch.Tensor) -> tuple:
    return (mask._version, mask.data_ptr(), mask.device)


def remember_all_ones(mask: torch.Tensor, answer: bool) -> None:
    """Record :func:`_is_all_ones`' answer for ``mask`` as it is now, known to the caller on
    the host (the values it just wrote): a method that writes the masks every step (CUCB)
    made each masked norm read its mask back in every forward (review140 F5)."""
    try:
        mask._fxprune_all_ones = (_version_key(mask), bool(answer))
    except (AttributeError, RuntimeError):  # a tensor subclass that takes no attributes
        pass


def forget_all_ones(masks) -> None:
    """Drop :func:`_is_all_ones`' remembered answers: a write through ``mask.data`` or a numpy
    view leaves the version counter as it was, so the answer can be stale (finalize reads each
    mask afresh before checking the surgery against the masked model)."""
    for mask in masks:
        if hasattr(mask, "_fxprune_all_ones"):
            del mask._fxprune_all_ones


@one_op
def masked_layer_norm(x, normalized_shape, weight, bias, eps, mask_dims, *masks):
    """``F.layer_norm`` whose mean and variance count only channels with a nonzero mask.

    ``mask_dims[i]`` is the index, within ``normalized_shape``, of the dim ``masks[i]`` covers.
    Masked-out channels are normalized with the kept channels' statistics (their values still
    reach the masked weights that read them, whose straight-through gradient needs them).
    """
    if all_ones(masks):
        return F.layer_norm(x, normalized_shape, weight, bias, eps)
    return _in_float32(_masked_layer_norm, x, weight, bias, normalized_shape, eps, mask_dims, masks)


def _in_float32(norm, x, weight, bias, *args):
    """``norm(x, weight, bias, *args)`` with its statistics in float32 for a float16/bfloat16
    ``x`` (in bfloat16 a sum over hundreds of channels loses most of its digits; in float16
    squared deviations overflow: break87 #2), outside any autocast region, the result in the
    dtype torch's own norm gives ``x`` here (:func:`_autocast_out_dtype`)."""
    out_dtype = _autocast_out_dtype(x)
    if x.element_size() < 4:
        x = x.float()
    with torch.autocast(x.device.type, enabled=False):
        if weight is not None:
            weight = weight.to(x.dtype)
        if bias is not None:
            bias = bias.to(x.dtype)
        return norm(x, weight, bias, *args).to(out_dtype)


def _kept_weights(w: torch.Tensor, dims: tuple[int, ...] | None = None):
    """A masked norm's per-position weights (its masks, broadcast) and their sum over ``dims``
    (None: all), the divisor of its statistics. Where nothing is kept (a group masked whole)
    every position counts, so the statistics are the dense ones: 0/0 made the output NaN
    (break94 #5), and statistics of 0 gave the masked channels ``x / sqrt(eps)``, whose
    straight-through gradients were 100-1000x too large and which overflowed float16
    (break96 #2, #3). A batch norm's masked branch behaves so too. Finalize refuses such a
    group in one line."""
    count = w.sum() if dims is None else w.sum(dims, keepdim=True)
    w = torch.where(count > 0, w, torch.ones_like(w))
    return w, (w.sum() if dims is None else w.sum(dims, keepdim=True))


def _masked_layer_norm(x, weight, bias, normalized_shape, eps, mask_dims, masks):
    # the GEMV form saves passes in eager mode; under torch.compile the weighted sums are
    # fused anyway, and inductor's CPU code for the GEMV form's backward corrupted the heap
    # (break113 F1: a compiled prepared ConvNeXt block died at its first backward)
    if len(normalized_shape) == 1 and len(masks) == 1 and not torch.compiler.is_compiling():
        return layer_norm_mask_vector(x, masks[0], weight, bias, eps)
    return layer_norm_weighted(x, normalized_shape, weight, bias, eps, mask_dims, masks)


def layer_norm_mask_vector(x, mask, weight, bias, eps):
    """Layer norm over the last dim whose statistics weight channel c by ``mask[c]``.

    For one channel dim (ConvNeXt's channels-last LayerNorm) the weighted means are products
    with the normalized mask vector, ``x @ (m / sum(m))``: one GEMV reads the activation instead
    of a product written out and a sum, and the affine is one ``addcmul``: about 7 passes over
    the activation instead of 12 (what a GPU pays for). The same values and gradients as
    :func:`layer_norm_weighted` (``tests/test_device.py``). On the shared 2-core CPU the two
    measured within noise of each other, both 3-5x ``F.layer_norm``
    (``bench_overheads.py --masks-only``); a gathered ``var_mean`` over the kept channels was
    slower there (index_select on the last dim and its scatter backward)."""
    wn, count = _kept_weights(mask.to(x.dtype))
    wn = wn / count
    mean = (x @ wn).unsqueeze(-1)
    d = x - mean
    y = d * torch.rsqrt(((d * d) @ wn).unsqueeze(-1) + eps)
    if weight is not None and bias is not None:
        return torch.addcmul(bias, y, weight)
    if weight is not None:
        return y * weight
    return y + bias if bias is not None else y


def layer_norm_weighted(x, normalized_shape, weight, bias, eps, mask_dims, masks):
    """Layer norm whose statistics weight each position by its mask value (any masks/dims)."""
    k = len(normalized_shape)
    dims = tuple(range(x.ndim - k, x.ndim))
    w = x.new_ones(())
    for j, m in zip(mask_dims, masks):
        w = w * broadcast_along(m.to(x.dtype), k, j)
    w, count = _kept_weights(w.expand(tuple(normalized_shape)))
    mean = (x * w).sum(dims, keepdim=True) / count
    var = ((x - mean).pow(2) * w).sum(dims, keepdim=True) / count
    y = (x - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


_NORM_DTYPES: dict[tuple, torch.dtype] = {}


def _autocast_out_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype torch's own norms give ``x`` here: the input's, or under autocast what the
    torch in use casts a norm to (float32 under CUDA autocast; under CPU autocast the autocast
    dtype in some torch versions, float32 in 2.14: break88 F5), asked of ``F.group_norm`` once
    per device type, autocast dtype and input dtype."""
    kind = x.device.type
    if not torch.is_autocast_enabled(kind):
        return x.dtype
    key = (kind, torch.get_autocast_dtype(kind), x.dtype)
    if key not in _NORM_DTYPES:
        _NORM_DTYPES[key] = F.group_norm(x.new_zeros(1, 2, 2), 1).dtype
    return _NORM_DTYPES[key]


def masked_group_norm(x, num_groups, weight, bias, eps, mask):
    """``F.group_norm`` whose per-group statistics count only channels with a nonzero mask
    (in float32 for a float16/bfloat16 input: :func:`_in_float32`)."""
    if all_ones((mask,)):
        return F.group_norm(x, num_groups, weight, bias, eps)
    return _in_float32(_masked_group_norm, x, weight, bias, num_groups, eps, mask)


@one_op
def masked_group_norm_call(x, num_groups, weight, bias, eps, mask):
    """The masked form of an ``F.group_norm`` call in a model's own code: graph-level
    :func:`masked_group_norm`, one op to another tracer."""
    return masked_group_norm(x, num_groups, weight, bias, eps, mask)


def _masked_group_norm(x, weight, bias, num_groups, eps, mask):
    n, c = x.shape[:2]
    xg = x.reshape(n, num_groups, c // num_groups, -1)
    w = mask.to(x.dtype).view(1, num_groups, c // num_groups, 1).expand(1, -1, -1, xg.shape[-1])
    w, count = _kept_weights(w, (2, 3))
    mean = (xg * w).sum(dim=(2, 3), keepdim=True) / count
    var = ((xg - mean).pow(2) * w).sum(dim=(2, 3), keepdim=True) / count
    y = ((xg - mean) * torch.rsqrt(var + eps)).reshape(x.shape)
    if weight is not None:
        y = y * broadcast_along(weight, x.ndim, 1)
    if bias is not None:
        y = y + broadcast_along(bias, x.ndim, 1)
    return y


@one_op
def masked_rms_norm(x, normalized_shape, weight, eps, mask_dims, *masks):
    """``F.rms_norm`` whose mean square counts only channels with a nonzero mask (the masked
    form of ``F.rms_norm`` calls). ``mask_dims[i]`` is the index, within ``normalized_shape``,
    of the dim ``masks[i]`` covers. ``eps`` None is torch's: the epsilon of float32 (of float64
    for a float64 ``x``)."""
    if all_ones(masks):
        return F.rms_norm(x, normalized_shape, weight, eps)
    k = len(normalized_shape)
    dims = tuple(range(x.ndim - k, x.ndim))
    return rms_norm_over(x, dims, weight, eps, False, mask_dims, masks)


def rms_norm_over(x, dims, weight, eps, centered, mask_dims, masks):
    """The root-mean-square norm of ``x`` over ``dims`` (Zhang & Sennrich 2019, eq. 4:
    ``x / sqrt(mean(x^2) + eps) * weight``) whose mean counts only positions with a nonzero
    mask; ``centered``: ``x / sqrt(var(x) + eps) * weight`` with the unbiased variance (timm's
    SimpleNorm: x is divided by its standard deviation, not centered). ``masks[i]`` covers
    ``dims[mask_dims[i]]``; ``weight`` has the normalized dims' shape. In float32 for a
    float16/bfloat16 ``x``; ``eps`` None is float32's epsilon (float64's for a float64 ``x``),
    the type torch's own norm computes in."""
    if eps is None:  # torch's: the epsilon of the type it computes in (break94 #1: bfloat16's
        # 0.0078 for a bfloat16 input, where torch takes float32's 1.2e-7)
        eps = torch.finfo(torch.float64 if x.dtype == torch.float64 else torch.float32).eps
    return _in_float32(_rms_norm_over, x, weight, None, dims, eps, centered, mask_dims, masks)


def _rms_norm_over(x, weight, _bias, dims, eps, centered, mask_dims, masks):
    w = x.new_ones(())
    for j, m in zip(mask_dims, masks):
        w = w * broadcast_along(m.to(x.dtype), x.ndim, dims[j])
    others = [x.shape[d] for j, d in enumerate(dims) if j not in mask_dims]
    w, count = _kept_weights(w)
    count = count * math.prod(others)
    if centered:
        mean = (x * w).sum(dims, keepdim=True) / count
        square = ((x - mean).square() * w).sum(dims, keepdim=True) / (count - 1)
    else:
        square = (x.square() * w).sum(dims, keepdim=True) / count
    y = x * torch.rsqrt(square + eps)
    if weight is None:
        return y
    if len(dims) == 1:
        return y * broadcast_along(weight, x.ndim, dims[0])
    # the normalized dims are the last ones (a 2-D weight of a channels-last norm)
    return y * weight


class MaskedLayerNorm(_FxPruneLayer, nn.LayerNorm):
    _fxprune_base = nn.LayerNorm
    #: indices, within normalized_shape, of the dims the masks passed to forward cover
    fxprune_mask_dims: tuple[int, ...] = ()

    @one_op
    def forward(self, x: torch.Tensor, *masks: torch.Tensor) -> torch.Tensor:
        return masked_layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps,
                                 self.fxprune_mask_dims, *masks)


class MaskedGroupNorm(_FxPruneLayer, nn.GroupNorm):
    _fxprune_base = nn.GroupNorm

    @one_op
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_group_norm(x, self.num_groups, self.weight, self.bias, self.eps, mask)


class MaskedGroupNormAct(_FxPruneLayer, nn.GroupNorm):
    """A GroupNorm subclass whose forward is the norm, then its ``drop``, then its ``act``
    (timm's ``GroupNormAct``, ``GroupNorm1Act``: the BiT ResNetV2s'), the norm masked."""

    _fxprune_base = nn.GroupNorm

    @one_op
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = masked_group_norm(x, self.num_groups, self.weight, self.bias, self.eps, mask)
        return self.act(self.drop(x))


# -- SMCP's batch-norm rescaling ------------------------------------------------------------------

def _batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, weight) -> torch.Tensor:
    """``_BatchNorm.forward`` with a substitute ``weight`` (same running-stat bookkeeping)."""
    bn._check_input_dim(x)
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    track = not bn.training or bn.track_running_stats
    return F.batch_norm(x, bn.running_mean if track else None, bn.running_var if track else None,
                        weight, bn.bias, use_batch_stats, factor, bn.eps)


class _RescaledBatchNorm(_FxPruneLayer):
    """SMCP: the BN after a layer with masked inputs scales gamma by the kept input fraction.

    ``gamma_used = gamma * sum(m) / C_in``: SMCP's argument is that pruning many inputs shrinks
    the layer's output and the rescale keeps the BN's output in step with it. In training mode
    the BN's batch statistics already undo that shrink, so the factor lowers the BN's output;
    ``fxprune.SMCP`` therefore leaves it off by default (``bn_rescale``, evidence in
    ``benchmarks/results/smcp_bn_rescale.md``). The gradient reaches gamma unscaled
    (straight-through), so the optimiser sees the unscaled parameter. ``finalize`` folds the
    factor into gamma.
    """

    #: "kept_fraction" (SMCP) or "off"
    fxprune_rescale: str = "kept_fraction"

    def rescale_factor(self, mask: torch.Tensor) -> torch.Tensor:
        if self.fxprune_rescale == "off":
            return mask.new_ones(())
        # in float64, as finalize folds it: a bfloat16 sum of over 256 ones rounds (review140 F6)
        return mask.sum(dtype=torch.float64) / mask.numel()

    @one_op
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if weight is not None and self.fxprune_rescale != "off":
            weight = scale(weight, self.rescale_factor(mask), straight_through=True)
        return _batch_norm(self, x, weight)


class RescaledBatchNorm1d(_RescaledBatchNorm, nn.BatchNorm1d):
    _fxprune_base = nn.BatchNorm1d


class RescaledBatchNorm2d(_RescaledBatchNorm, nn.BatchNorm2d):
    _fxprune_base = nn.BatchNorm2d


class RescaledBatchNorm3d(_RescaledBatchNorm, nn.BatchNorm3d):
    _fxprune_base = nn.BatchNorm3d


class MaskBank(nn.Module):
    """The prepared model's ``fxprune_masks``: one mask buffer per prunable group (``g0``,
    ``g2``...: keys numbered by the analysis) and the index buffers of gathered masks.

    A group's key names it only within one analysis: another fxprune version, or other
    ``rules``, may number the same model's groups otherwise. The state_dict therefore carries
    each key's group (its name and size) as extra state, and a load that would put a saved mask
    on another group raises, with ``strict=False`` too (break68 #1: a mask landed on the next
    layer silently). A state_dict saved before this record loads as before.

    The state_dict's metadata (beside ``version``, as torch keeps it: not a tensor, so an EMA
    that zips two models' tensors sees none) names the BatchNorms SMCP rescales by the kept
    fraction (``bn_rescale="kept_fraction"``, :mod:`fxprune.passes.bn_rescale`): that rescale is
    the norm's class, so a state saved with it and loaded into a model without it finalized to
    another model, its check passing (break159 F1). The load keeps the record for the prepared
    model's post-hook (``bn_rescale.sync_loaded_rescale``), which rescales those BatchNorms too.
    A state without the metadata (saved before it, or through safetensors) loads as before.
    """

    #: names of the BatchNorms rescaled by the kept fraction (set by ``insert_bn_rescale``);
    #: None in a bank pickled before this record, whose state then says nothing of them
    fxprune_rescaled: list[str] | None = None

    def __init__(self, groups: dict[str, tuple[str, int]] | None = None):
        super().__init__()
        #: key -> (group name, size), of the groups whose masks this bank holds
        self.fxprune_groups = dict(groups or {})
        self.fxprune_rescaled = []

    def get_extra_state(self) -> torch.Tensor:
        # a tensor (UTF-8 JSON), so that the state_dict stays tensors only (safetensors, EMA)
        import json
        text = json.dumps({k: list(v) for k, v in self.fxprune_groups.items()}, sort_keys=True)
        return torch.frombuffer(bytearray(text.encode()), dtype=torch.uint8)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        metadata = getattr(destination, "_metadata", None)
        if metadata is not None and self.fxprune_rescaled is not None:
            metadata.setdefault(prefix[:-1], {})[_RESCALED_KEY] = sorted(self.fxprune_rescaled)

    def set_extra_state(self, state) -> None:
        pass  # compared in _load_from_state_dict, where the error can name the load

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + "_extra_state"
        mine = [prefix + name for name in self._buffers]
        if mine and key not in state_dict and not any(k in state_dict for k in mine):
            self._plain_state_dict(error_msgs)
            return  # the masks stay as they are (the original's weights load, strict or not)
        if key not in state_dict:  # saved before groups were recorded: nothing to compare
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                          missing_keys, unexpected_keys, error_msgs)
            if key in missing_keys:
                missing_keys.remove(key)
            return
        problem = self._other_groups(state_dict[key])
        saved = (local_metadata or {}).get(_RESCALED_KEY)
        self._loaded_rescale = list(map(str, saved)) if isinstance(saved, (list, tuple)) else None
        if problem:  # no mask of this bank is written (torch loads the other modules' tensors)
            wider = self._size_mismatches(error_msgs)
            if problem.startswith("the saved masks are of a wider model") and wider and all(
                    len(saved) == len(here) and all(a >= b for a, b in zip(saved, here))
                    for _, saved, here in wider.values()):
                # (break121 #5: torch's line per layer; the one cause said once)
                error_msgs[:] = [m for m in error_msgs if m not in wider]
            error_msgs.append(problem)
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    @staticmethod
    def _size_mismatches(error_msgs: list) -> dict[str, tuple[str, list[int], list[int]]]:
        """torch's size-mismatch lines in ``error_msgs``: line -> (key, saved shape, this shape)."""
        import re
        shapes = re.compile(r"size mismatch for (\S+): copying a param with shape "
                            r"torch.Size\(\[([\d, ]*)\]\).* is torch.Size\(\[([\d, ]*)\]\)")
        found = {}
        for m in error_msgs:
            match = shapes.match(m)
            if match:
                saved, here = ([int(v) for v in g.split(",") if v.strip()]
                               for g in match.groups()[1:])
                found[m] = (match.group(1), saved, here)
        return found

    @classmethod
    def _plain_state_dict(cls, error_msgs: list) -> None:
        """A state_dict without masks is a plain model's (torch passes each module its own keys
        only; the bank is loaded last, after the others). A finalized model's narrower tensors
        gave one size-mismatch line per layer (break90 F9: 103 lines for resnet18): those
        become one line naming the route that works."""
        narrower = {m: (name, len(saved) == len(here) and all(a <= b for a, b in zip(saved, here)))
                    for m, (name, saved, here) in cls._size_mismatches(error_msgs).items()}
        # every mismatch narrower (another head's wider classifier is torch's to say)
        if narrower and all(ok for _, ok in narrower.values()):
            names = [name for name, _ in narrower.values()]
            error_msgs[:] = [m for m in error_msgs if m not in narrower]
            error_msgs.append(
                f"the state_dict has no fxprune_masks.* and {len(names)} tensors narrower than "
                f"this prepared model's ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}): "
                "a finalized model's? Prepare the model, load the prepared state_dict saved "
                "before finalize, finalize, then load it into the finalized model (README, Safety)")

    def _other_groups(self, record) -> str | None:
        """Why the saved masks (described by ``record``) cannot load here; None if they can."""
        import json
        try:
            saved = json.loads(bytes(record.cpu().to(torch.uint8).tolist()).decode())
            saved = {str(k): (str(v[0]), int(v[1])) for k, v in saved.items()}
        except (ValueError, UnicodeDecodeError, AttributeError, TypeError, IndexError):
            return "fxprune_masks._extra_state is not fxprune's record of the masks' groups"
        other = [f"{k} is {saved[k][0]!r} ({saved[k][1]} channels) in the saved state, "
                 f"{name!r} ({size}) here" for k, (name, size) in self.fxprune_groups.items()
                 if k in saved and saved[k] != (name, size)]
        if not other:
            return None
        if saved.keys() == self.fxprune_groups.keys() and all(
                saved[k][0] == name and saved[k][1] >= size
                for k, (name, size) in self.fxprune_groups.items()):
            return (f"the saved masks are of a wider model with the same channel groups "
                    f"({'; '.join(other[:3])}{'; ...' if len(other) > 3 else ''}): a state_dict "
                    "of the model before an earlier finalize? Load it into a prepare of that "
                    "model (pruning again starts from the finalized model's own prepared "
                    "state_dict)")
        return (f"the saved masks belong to other channel groups than this prepared model's "
                f"({'; '.join(other[:3])}{'; ...' if len(other) > 3 else ''}): it was prepared "
                "with other rules or by another fxprune version; prepare the model as the saved "
                "one was, or load the saved weights without fxprune_masks.* and set the masks "
                "by group name (fxprune.channel_groups)")


_RESCALED_KEY = "fxprune_bn_rescale"  # the mask bank's metadata entry for the rescaled BatchNorms

MASKED_CLASS = {
    nn.Conv1d: MaskedConv1d, nn.Conv2d: MaskedConv2d, nn.Conv3d: MaskedConv3d,
    nn.ConvTranspose1d: MaskedConvTranspose1d, nn.ConvTranspose2d: MaskedConvTranspose2d,
    nn.ConvTranspose3d: MaskedConvTranspose3d,
    nn.Linear: MaskedLinear,
}
RESCALED_CLASS = {
    nn.BatchNorm1d: RescaledBatchNorm1d, nn.BatchNorm2d: RescaledBatchNorm2d,
    nn.BatchNorm3d: RescaledBatchNorm3d,
}
FXPRUNE_CLASSES = (_FxPruneLayer,)
_DERIVED: dict[tuple[type, type], type] = {}


def variant_class(cls: type, table: dict[type, type]) -> type | None:
    """The fxprune variant of ``cls``: the table's class for a torch class, and for a subclass of
    one (a user's ``class MyConv(nn.Conv2d)``) a class deriving from both (made once, cached), so
    the subclass keeps its own attributes and methods. None when no base of ``cls`` is known."""
    if cls in table:
        return table[cls]
    base = next((b for b in cls.__mro__[1:] if b in table), None)
    if base is None:
        return None
    key = (cls, table[base])
    if key not in _DERIVED:
        masked = table[base]  # its forward comes first in the MRO, the subclass's attributes after
        _DERIVED[key] = type(f"{masked.__name__}_{cls.__name__}", (masked, cls),
                             {"_fxprune_base": cls, "__module__": __name__,
                              "_fxprune_recipe": ("variant", cls, base, masked)})
    return _DERIVED[key]


def input_masked_class(cls: type, in_dim: int) -> type:
    """The masked form of a layer class whose weight reads input channels along ``in_dim``."""
    if cls in MASKED_CLASS and MASKED_CLASS[cls]._fxprune_in_dim == in_dim:
        return MASKED_CLASS[cls]
    key = (cls, _OwnForwardMasked, in_dim)
    if key not in _DERIVED:
        _DERIVED[key] = type(f"Masked_{cls.__name__}", (_OwnForwardMasked, cls),
                             {"_fxprune_base": cls, "_fxprune_in_dim": in_dim, "__module__": __name__,
                              "_fxprune_recipe": ("input", cls, in_dim)})
    return _DERIVED[key]


def row_masked_class(cls: type, row, mixin: type = _RowForwardMasked) -> type:
    """The masked form of ``cls`` whose forward is ``row.masked_forward`` (made once per class,
    row and mixin, cached; pickled by naming them): ``_RowForwardMasked`` for a layer whose
    input channels are masked in its weight, ``_RowNormMasked`` for a norm."""
    key = (cls, mixin, row)
    if key not in _DERIVED:
        attrs = {"_fxprune_base": cls, "_fxprune_row": row, "__module__": __name__,
                 "_fxprune_recipe": ("row", cls, row, mixin)}
        if issubclass(mixin, _InputMasked):
            attrs["_fxprune_in_dim"] = row.in_dim
        _DERIVED[key] = type(f"Masked_{cls.__name__}", (mixin, cls), attrs)
    return _DERIVED[key]


def wrap(module: nn.Module, table: dict[type, type]) -> nn.Module:
    """Turn ``module`` (in place) into its fxprune variant; parameters stay the same objects.
    A module already turned (one norm called at several places) stays as it is."""
    if isinstance(module, tuple(table.values())):
        return module
    variant = variant_class(type(module), table)
    if variant is None:
        from .errors import FxPruneError
        known = ", ".join(sorted(c.__name__ for c in table))
        raise FxPruneError(f"{type(module).__name__} has no masked form: it is not a subclass of any of "
                           f"{known}; give it a rule whose layer it is (e.g. rules={{MyLayer: Conv()}} "
                           "for a subclass of nn.Conv2d)")
    module.__class__ = variant
    return module


def user_class(module: nn.Module) -> type:
    """The class ``module`` had before ``prepare`` (the user's), whether or not fxprune swapped
    in its masked form."""
    return getattr(type(module), "_fxprune_base", type(module))


def unwrap(module: nn.Module) -> nn.Module:
    """Give ``module`` (in place) back its plain torch.nn class and drop fxprune attributes."""
    if isinstance(module, FXPRUNE_CLASSES):
        module.__class__ = module._fxprune_base
        for attr in [a for a in vars(module) if a.startswith("fxprune_")]:
            delattr(module, attr)
    return module


# ----------------------------------------------------------------------------- methods' hooks

class MethodHook:
    """A forward (pre-)hook a pruning method puts on the prepared model's layers while it
    trains (CCP's activation taps). It belongs to the method, not to the model: a pickled or
    deep-copied model holds a :class:`DetachedHook` in its place (the hook's state stays with
    the method), which :func:`strip_method_hooks` removes (``finalize``, loading a prepared
    model). A bound method is held weakly: the model does not keep a pruner alive (a pruner
    rebuilt over the same model left the old one, and its gathered model, behind: break109),
    and a hook whose pruner is gone does nothing."""

    def __init__(self, fn):
        self._weak = inspect.ismethod(fn)
        self._fn = weakref.WeakMethod(fn) if self._weak else fn

    @property
    def fn(self):
        """The hook's function (None once the object of a bound method is gone)."""
        return self._fn() if self._weak else self._fn

    def __call__(self, *args):
        fn = self.fn
        return None if fn is None else fn(*args)

    def __reduce__(self):
        return DetachedHook, ()


class DetachedHook:
    """What a :class:`MethodHook` becomes in a copy of the model: a no-op, picklable."""

    def __call__(self, *args):
        return None


HOOK_DICTS = ("_forward_pre_hooks", "_forward_hooks")
HOOK_SIDE_TABLES = ("_forward_pre_hooks_with_kwargs", "_forward_hooks_with_kwargs",
                     "_forward_hooks_always_called")


def strip_method_hooks(model: nn.Module, *, detached_only: bool = False,
                       recurse: bool = True) -> None:
    """Remove (in place) every :class:`MethodHook` and :class:`DetachedHook` from ``model``'s
    modules (``recurse=False``: from ``model`` itself), or the :class:`DetachedHook` alone (a
    copy putting its own hooks where its model holds no-ops: another pruner's live hooks stay);
    the user's own hooks stay."""
    kinds = (DetachedHook,) if detached_only else (MethodHook, DetachedHook)
    for module in (model.modules() if recurse else [model]):
        for attr in HOOK_DICTS:
            hooks = getattr(module, attr, None) or {}
            for key in [k for k, h in hooks.items() if isinstance(h, kinds)]:
                del hooks[key]
                for side in HOOK_SIDE_TABLES:
                    getattr(module, side, {}).pop(key, None)


#: the functions fxprune puts into a prepared graph, each one op there: another torch.fx
#: tracer records them as calls given them as ``autowrap_functions`` (:func:`fxprune.tracer_kwargs`)
GRAPH_FUNCTIONS = (gather_mask, mask_weight, masked_layer_norm, masked_rms_norm, mask_contracted,
                   masked_group_norm_call)
