"""Which dims of which nodes change size when the inputs do (run on demand by the analysis).

The example inputs fix every size, so a dim of ``y.flatten(1)`` (channels times H*W) looks the
same to the rules as one of a channel shuffle's output (channels times a literal group count).
Surgery may write a split of the first in numbers only at the example's resolution; the second
is safe. This pass runs the graph again on fake tensors (torch's FakeTensorMode: shapes only,
no compute) with one input size changed at a time (to twice the example's, one less, and 2),
and with every size but a 4-D input's channels changed together (a model that needs H == W),
and records the dims whose size moved.

A run the model cannot do (a conv's weight fixes the input's channels; a linear after a flatten
fixes the resolution) is skipped. A dim that did not move counts as fixed only if every input
size reached its node in some probe that ran; else the answer is unknown (a stride can round
n-1 back to n's size, a position table refuse 2n), except for a float input's dim 1 (channels,
features), which the weights fix. Code the trace did not see runs for real on the probed
shapes, so a branch on the size inside it is followed as the model would.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import warnings

import torch
from torch import fx

from fxprune.masks import RESCALED_CLASS

from .grad_mode import preserving_modes
from .shape_prop import TensorMeta


def input_dependent_dims(gm: fx.GraphModule) -> dict[str, tuple[frozenset[int], bool]] | None:
    """``{node name: (dims whose size moved when an input size did, complete)}`` for every
    tensor node. ``complete`` is False when some input size (other than a float input's dim 1:
    channels or features) never reached the node in a probe that ran: a dim that did
    not move is then not known to be fixed. None when the graph does not run on fake tensors
    even at the example's sizes. Reads the placeholders' shapes left by ``propagate_shapes``."""
    try:  # a copy: a module may cache what its forward computes (timm's attention biases),
        gm = copy.deepcopy(gm)  # and a fake tensor kept in the real model would break it
    except Exception:  # noqa: BLE001 - a model deepcopy cannot copy
        return None
    for m in gm.modules():  # the user's hooks would see fake tensors (and could keep them)
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    gm.eval()  # as propagate_shapes: no norm statistics touched (the copy's flags only)
    for m in gm.modules():
        if type(m) in _BATCH_NORMS and m.running_mean is not None:
            m.forward = _ShapeOnlyBatchNorm(m)  # the copy's instance only
    tensors = [*gm.parameters(), *gm.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    metas = [n.meta.get("fxprune_value") for n in gm.graph.find_nodes(op="placeholder")]
    from torch._subclasses.fake_tensor import FakeTensorMode

    # one mode for every run: the weights are made fake once (per run, that was a third of
    # the probes' time on EfficientNet-B0)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with _quiet():
        example = _shapes(gm, metas, {}, device, mode)
    if example is None:  # data-dependent code, ops without a fake kernel
        return None
    dims = [(i, d, size) for i, m in enumerate(metas) if isinstance(m, TensorMeta)
            for d, size in enumerate(m.shape) if size > 1]
    moves = []
    for other in _PROBES:
        for i, d, size in dims:
            if other(size) != size:
                moves.append({(i, d): other(size)})
        together = {(i, d): other(size) for i, d, size in dims if other(size) != size
                    and not (len(metas[i].shape) == 4 and d == 1)}  # all but NCHW channels
        if len(together) > 1:
            moves.append(together)
    with _quiet():
        runs = [_shapes(gm, metas, sizes, device, mode) for sizes in moves]
    # the input sizes whose change must reach a node before a still dim of it counts as fixed:
    # a float input's dim 1 (channels, features) is fixed by the first layer's weights
    needed = {(i, d) for i, d, _ in dims
              if not (metas[i].dtype.is_floating_point and d == 1)}
    moved: dict[str, set[int]] = {name: set() for name in example}
    reached: dict[str, set] = {name: set() for name in example}
    for sizes, shapes in zip(moves, runs):
        if shapes is None:  # the model cannot run there (a size it needs, or one it rounds)
            continue
        for name, shape in example.items():
            other = shapes.get(name)
            if other is None or len(other) != len(shape):
                moved[name].update(range(len(shape)))  # another path: assume every dim moves
            elif other != shape:
                moved[name].update(d for d, (a, b) in enumerate(zip(shape, other)) if a != b)
                reached[name].update(sizes)
    # a size no probe carried to the node (a stride rounding n-1 back, a position table
    # refusing 2n, a stem refusing 2) may still move it at sizes the probes missed
    return {name: (frozenset(moved[name]), needed <= reached[name]) for name in example}


# the other sizes an input dim is tried at: above the example, just below it, and small (a size
# branch such as min(h, 4) or ``if w >= 8`` differs only below the example's size)
_PROBES = (lambda n: 2 * n, lambda n: n - 1 if n > 2 else n, lambda n: 2 if n > 3 else n)


_BATCH_NORMS = tuple(RESCALED_CLASS)  # the plain BatchNorm1d/2d/3d (a subclass keeps its forward)


class _ShapeOnlyBatchNorm:
    """An eval-mode BatchNorm's forward on the probes' fake tensors: the input's shape, after
    the checks the real forward makes (the input's rank; its channels against the statistics'
    and the affine weight's sizes, not ``num_features``, which it never reads). Fake tensors run
    the real one through a Python decomposition of ~20 ops, half of the probes' time on
    ShuffleNetV2 (13 s of its 14 s prepare at 224x224 went to the probes)."""

    def __init__(self, norm):
        self.norm = norm

    def __call__(self, x):
        self.norm._check_input_dim(x)
        sizes = {t.numel() for t in (self.norm.running_mean, self.norm.running_var, self.norm.weight,
                                     self.norm.bias) if t is not None}
        if sizes != {x.shape[1]}:
            raise ValueError(f"expected {sorted(sizes)} channels, got {x.shape[1]}")
        return torch.empty_like(x)


@contextlib.contextmanager
def _quiet():
    """FakeTensorMode logs the failures of the runs the model cannot do (they are expected),
    and the model's own warnings would speak of sizes the user never passed."""
    logger = logging.getLogger("torch._subclasses.fake_tensor")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _shapes(gm: fx.GraphModule, metas: list, sizes: dict, device, mode) -> dict[str, tuple] | None:
    """Every tensor node's shape on fake inputs (on ``device``) whose ``(input, dim)`` sizes
    are ``sizes`` (the example's elsewhere), run in the FakeTensorMode ``mode``; None when the
    graph fails there."""
    args = []
    for i, meta in enumerate(metas):
        if isinstance(meta, TensorMeta):
            shape = [sizes.get((i, d), s) for d, s in enumerate(meta.shape)]
            empty = torch.empty(shape, dtype=meta.dtype, device=device)  # outside the mode
            args.append(mode.from_tensor(empty))
        else:
            args.append(meta)
    shapes: dict[str, tuple] = {}

    class _Run(fx.Interpreter):
        def run_node(self, n):
            result = super().run_node(n)
            if isinstance(result, torch.Tensor):
                shapes[n.name] = tuple(result.shape)
            return result

    try:
        with preserving_modes(), mode, torch.no_grad():
            _Run(gm).run(*args)
    except Exception:  # noqa: BLE001 - a size the model cannot take, or code fake tensors cannot run
        return None
    return shapes
