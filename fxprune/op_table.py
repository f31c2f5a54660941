"""The table of channel rules: which op maps channels how.

Keys are module classes (for ``call_module``; a subclass that does not override ``forward``
uses its base's row, one that does is traced through), functions (``call_function``) or method names (``call_method`` on tensors). Values
are rule instances from :mod:`fxprune.rules`. Supporting a new op is adding a row here:

    CHANNEL_RULES[MyNorm] = ChannelAffine(("weight", "bias"))

or, without editing fxprune, ``fxprune.prepare(model, x, rules={MyNorm: ...})``. An op missing
from the table is a barrier: the channels reaching it are kept whole, with the op named as the
reason.
"""
from __future__ import annotations

import operator
import sys

import torch
import torch.nn.functional as F
from torch import nn

from .rules import (Barrier, MatMul, ScaledDotProductAttention, ChannelAffine, ChannelShuffle, Concat, Conv, ConvSame, ConvTranspose, Create, StandardizedConv,
                    Elementwise, FunctionalAffine, PixelShuffle,
                            Expand, FunctionalGroupNorm, FunctionalLayerNorm, FunctionalRMSNorm, GroupNorm, GroupNormAct, Index, LayerNorm, Linear, RMSNorm,
                            Flip, Metadata, MixesDim, Pad, Permute, Reduce, ReducePair, Repeat, Reshape, Roll, ShapeRead, Spatial,
                            Split, Stack, TupleItem, Unpool)

ELEMENTWISE = Elementwise()
SPATIAL = Spatial()
RESHAPE = Reshape()
PERMUTE = Permute()
REDUCE = Reduce()
REDUCE_PAIR = ReducePair()
METADATA = Metadata()
SHAPE_READ = ShapeRead()
SPLIT = Split(dim_pos=2)

_ACTIVATIONS = [
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.LogSigmoid, nn.RReLU, nn.Hardshrink, nn.Softshrink, nn.Threshold,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
]
# an Nd pool transforms the last N dims whatever the input's rank: on an unbatched-looking
# input (avg_pool3d of an (N, C, H, W) map) the channel dim is among them
_POOLS = {
    1: [nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.LPPool1d,
        nn.ReflectionPad1d, nn.ReplicationPad1d, nn.ZeroPad1d, nn.ConstantPad1d, nn.CircularPad1d,
        F.max_pool1d, F.avg_pool1d, F.adaptive_max_pool1d, F.adaptive_avg_pool1d, F.lp_pool1d,
        F.max_pool1d_with_indices, F.adaptive_max_pool1d_with_indices],
    2: [nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d,
        nn.ReflectionPad2d, nn.ReplicationPad2d, nn.ZeroPad2d, nn.ConstantPad2d, nn.CircularPad2d,
        F.max_pool2d, F.avg_pool2d, F.adaptive_max_pool2d, F.adaptive_avg_pool2d, F.lp_pool2d,
        F.max_pool2d_with_indices, F.adaptive_max_pool2d_with_indices,
        torch._C._nn.avg_pool2d],
    3: [nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d,
        nn.ReflectionPad3d, nn.ReplicationPad3d, nn.ZeroPad3d, nn.ConstantPad3d, nn.CircularPad3d,
        F.max_pool3d, F.avg_pool3d, F.adaptive_max_pool3d, F.adaptive_avg_pool3d, F.lp_pool3d,
        F.max_pool3d_with_indices, F.adaptive_max_pool3d_with_indices],
}

#: BatchNorm / InstanceNorm: a per-channel affine and running statistics, normalizing over
#: the other dims (one row object: rows hold no state)
_STATISTICS_NORM = ChannelAffine(("weight", "bias", "running_mean", "running_var"), normalizes=True)

CHANNEL_RULES: dict = {
    # -- layers that read and write channels
    nn.Conv1d: Conv(), nn.Conv2d: Conv(), nn.Conv3d: Conv(),
    nn.ConvTranspose1d: ConvTranspose(), nn.ConvTranspose2d: ConvTranspose(),
    nn.ConvTranspose3d: ConvTranspose(),
    nn.Linear: Linear(),
    # -- the same layers written functionally on a module's own parameters (a subclass's forward
    #    calling F.conv2d(x, self.weight, ...)); a weight computed in the graph is a barrier
    F.conv1d: Conv(functional=True), F.conv2d: Conv(functional=True), F.conv3d: Conv(functional=True),
    F.conv_transpose1d: ConvTranspose(functional=True), F.conv_transpose2d: ConvTranspose(functional=True),
    F.conv_transpose3d: ConvTranspose(functional=True),
    F.linear: Linear(functional=True),
    # -- per-channel layers
    nn.BatchNorm1d: _STATISTICS_NORM,
    nn.BatchNorm2d: _STATISTICS_NORM,
    nn.BatchNorm3d: _STATISTICS_NORM,
    nn.SyncBatchNorm: _STATISTICS_NORM,
    nn.InstanceNorm1d: _STATISTICS_NORM,
    nn.InstanceNorm2d: _STATISTICS_NORM,
    nn.InstanceNorm3d: _STATISTICS_NORM,
    nn.PReLU: ChannelAffine(("weight",)),
    # -- norms whose statistics span channels
    nn.LayerNorm: LayerNorm(),
    nn.GroupNorm: GroupNorm(),
    F.group_norm: FunctionalGroupNorm(), torch.group_norm: FunctionalGroupNorm(),
    F.layer_norm: FunctionalLayerNorm(),
    torch.layer_norm: FunctionalLayerNorm(),  # same positions (plus cudnn_enable)
    nn.RMSNorm: RMSNorm(),
    F.rms_norm: FunctionalRMSNorm(), torch.rms_norm: FunctionalRMSNorm(),
    F.batch_norm: FunctionalAffine(), F.instance_norm: FunctionalAffine(),
    # -- shape ops
    nn.Flatten: RESHAPE, nn.Unflatten: Reshape(unflatten=True),
    torch.flatten: RESHAPE, "flatten": RESHAPE,
    torch.reshape: Reshape(sizes_from=1), "reshape": Reshape(sizes_from=1), "view": Reshape(sizes_from=1),
    "unflatten": Reshape(unflatten=True), torch.unflatten: Reshape(unflatten=True),
    torch.squeeze: RESHAPE, "squeeze": RESHAPE, torch.unsqueeze: RESHAPE, "unsqueeze": RESHAPE,
    "view_as": RESHAPE, "reshape_as": RESHAPE,
    torch.permute: PERMUTE, "permute": PERMUTE, torch.transpose: PERMUTE, "transpose": PERMUTE,
    torch.swapaxes: PERMUTE, "swapaxes": PERMUTE, "swapdims": PERMUTE, torch.t: PERMUTE, "t": PERMUTE,
    torch.movedim: PERMUTE, "movedim": PERMUTE, "moveaxis": PERMUTE,
    "expand": Expand(), "expand_as": Expand(), "repeat": Repeat(),
    torch.cat: Concat(), torch.concat: Concat(), torch.concatenate: Concat(), torch.stack: Stack(),
    torch.split: SPLIT, "split": Split(dim_pos=2), torch.chunk: SPLIT, "chunk": SPLIT,
    torch.tensor_split: SPLIT, "tensor_split": SPLIT,
    torch.unbind: Split(dim_pos=1, removes_dim=True), "unbind": Split(dim_pos=1, removes_dim=True),
    nn.ChannelShuffle: ChannelShuffle(),
    # -- spatial ops keep channels
    F.interpolate: SPATIAL, nn.Upsample: SPATIAL, nn.UpsamplingNearest2d: SPATIAL,
    nn.UpsamplingBilinear2d: SPATIAL, F.pad: Pad(),
    # -- reductions and ops along one dim
    torch.mean: REDUCE, "mean": REDUCE, torch.sum: REDUCE, "sum": REDUCE,
    torch.amax: REDUCE, "amax": REDUCE, torch.amin: REDUCE, "amin": REDUCE,
    torch.std: REDUCE, "std": REDUCE, torch.var: REDUCE, "var": REDUCE,
    torch.logsumexp: REDUCE, "logsumexp": REDUCE,
    torch.max: REDUCE_PAIR, "max": REDUCE_PAIR, torch.min: REDUCE_PAIR, "min": REDUCE_PAIR,
    torch.median: REDUCE_PAIR, "median": REDUCE_PAIR, torch.var_mean: REDUCE_PAIR,
    torch.std_mean: REDUCE_PAIR, torch.aminmax: REDUCE_PAIR, "aminmax": REDUCE_PAIR,
    F.softmax: MixesDim(), torch.softmax: MixesDim(), "softmax": MixesDim(),
    F.log_softmax: MixesDim(), torch.log_softmax: MixesDim(), "log_softmax": MixesDim(),
    torch.cumsum: MixesDim(), "cumsum": MixesDim(),
    # -- reading shape only
    "size": SHAPE_READ, "numel": SHAPE_READ, getattr: SHAPE_READ, "dim": METADATA,
    # -- products that sum over channels without a weight: attention's query/key dims
    operator.matmul: MatMul(), torch.matmul: MatMul(), "matmul": MatMul(),
    torch.bmm: MatMul(), "bmm": MatMul(), torch.mm: MatMul(), "mm": MatMul(),
    F.scaled_dot_product_attention: ScaledDotProductAttention(),
    # in_proj_weight packs q, k and v in one tensor and the heads are split in C++
    nn.MultiheadAttention: Barrier("multi-head attention: its heads and embedding dims are kept"),
}

TUPLE_ITEM = TupleItem()
INDEX = Index()

for _m in _ACTIVATIONS:
    CHANNEL_RULES[_m] = ELEMENTWISE
for _n, _mods in _POOLS.items():
    for _m in _mods:
        CHANNEL_RULES[_m] = Spatial(_n)
# max unpooling (SegNet's decoder): values and a max pool's indices, per channel both
for _n in (1, 2, 3):
    CHANNEL_RULES[getattr(nn, f"MaxUnpool{_n}d")] = CHANNEL_RULES[getattr(F, f"max_unpool{_n}d")] = Unpool(_n)
# pixel (un)shuffle move r*r channels into space: pruned in blocks
CHANNEL_RULES[nn.PixelShuffle] = CHANNEL_RULES[F.pixel_shuffle] = PixelShuffle()
CHANNEL_RULES[nn.PixelUnshuffle] = CHANNEL_RULES[F.pixel_unshuffle] = PixelShuffle(inverse=True)
# tensors the graph creates: a channel count from a shape, or a literal one surgery rewrites
for _name in ("new_zeros", "new_ones", "new_empty"):
    CHANNEL_RULES[_name] = Create(sizes_from=1)
for _f in (torch.zeros, torch.ones, torch.empty, torch.randn, torch.rand):
    CHANNEL_RULES[_f] = Create(sizes_from=0)
CHANNEL_RULES["new_full"] = Create(sizes_from=1, one_size_arg=True)
CHANNEL_RULES[torch.full] = Create(sizes_from=0, one_size_arg=True)
CHANNEL_RULES[F.normalize] = MixesDim(dim_pos=2, default_dim=1)  # elementwise but along dim
# Swin's shifted windows: a cyclic shift of H and W keeps channels
CHANNEL_RULES[torch.roll] = CHANNEL_RULES["roll"] = Roll()
# flips: a channel dim flipped is the channels reversed (test-time flips, symmetric nets)
CHANNEL_RULES[torch.flip] = CHANNEL_RULES["flip"] = Flip()
CHANNEL_RULES[torch.fliplr] = CHANNEL_RULES["fliplr"] = Flip(dims=(1,))
CHANNEL_RULES[torch.flipud] = CHANNEL_RULES["flipud"] = Flip(dims=(0,))
# x.narrow(dim, start, length): a slice whose bounds are numbers; of a channel dim it is kept
CHANNEL_RULES[torch.narrow] = CHANNEL_RULES["narrow"] = MixesDim(
    reason="narrowed along the channel dim (use y[:, a:b], whose bounds fxprune rewrites)")
for _f in (
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.pow,
    operator.neg, operator.pos, operator.abs, operator.iadd, operator.isub, operator.imul,
    operator.itruediv, operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge,
    torch.add, torch.sub, torch.subtract, torch.mul, torch.multiply, torch.div, torch.divide,
    torch.true_divide, torch.maximum, torch.minimum, torch.where, torch.clamp, torch.clip,
    torch.pow, torch.abs, torch.neg, torch.exp, torch.log, torch.sqrt, torch.rsqrt, torch.sigmoid,
    torch.tanh, torch.relu, torch.erf, torch.sin, torch.cos, torch.square, torch.reciprocal,
    torch.nn.functional.relu, F.relu6, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid,
    F.hardtanh, F.leaky_relu, F.elu, F.selu, F.celu, F.softplus, F.sigmoid, F.tanh, F.dropout,
    F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, torch.relu_, F.relu_,
    # the in-place forms (break59 #3: masked_fill_ was a barrier where masked_fill was not)
    F.hardtanh_, F.leaky_relu_, F.elu_, F.celu_, F.selu_, F.threshold, F.threshold_,
    # the functional forms of modules in the table (break104 F2: F.logsigmoid was a barrier
    # where nn.LogSigmoid was not), and more maps of one value each
    F.logsigmoid, F.tanhshrink, F.softsign, F.hardshrink, F.softshrink, F.rrelu, F.rrelu_,
    torch.log1p, torch.expm1, torch.sign, torch.sgn, torch.nan_to_num, torch.erfc,
    torch.log2, torch.log10, torch.exp2, torch.floor, torch.ceil, torch.round, torch.trunc,
    torch.frac, torch.sinh, torch.cosh, torch.atan, torch.asin, torch.acos, torch.tan,
    torch.logit,
    # torch's in-place functions (torch.sigmoid_(x): x.sigmoid_() had a row, this not)
    *(getattr(torch, name) for name in (
        "sigmoid_", "tanh_", "exp_", "clamp_", "clip_", "abs_", "square_", "neg_", "sqrt_",
        "rsqrt_", "log_", "erf_", "reciprocal_", "clamp_min_", "clamp_max_", "nan_to_num_")
      if hasattr(torch, name)),
):
    CHANNEL_RULES[_f] = ELEMENTWISE
for _name in (
    "add", "sub", "mul", "div", "truediv", "pow", "neg", "abs", "exp", "log", "sqrt", "rsqrt",
    "sigmoid", "tanh", "relu", "clamp", "clip", "square", "reciprocal", "maximum", "minimum",
    "add_", "sub_", "mul_", "div_", "relu_", "sigmoid_", "clamp_", "masked_fill", "where",
    "masked_fill_", "clamp_min", "clamp_max", "clamp_min_", "clamp_max_", "clip_", "tanh_",
    "exp_", "abs_", "neg_", "sqrt_", "pow_", "square_",
    "erf", "erf_", "erfc", "log1p", "log1p_", "expm1", "expm1_", "sign", "sign_", "sgn",
    "nan_to_num", "nan_to_num_", "rsqrt_", "log_", "reciprocal_", "log2", "log10", "exp2",
    "floor", "ceil", "round", "trunc", "frac", "sin", "cos", "tan", "sinh", "cosh", "atan",
    "logit", "hardshrink",
    "contiguous", "clone", "detach", "float", "half", "double", "bfloat16", "cpu", "cuda",
    "requires_grad_",
):
    CHANNEL_RULES[_name] = ELEMENTWISE
# the other tensor gives a dtype and device only (x.to(y), x.type_as(y)); *_like: a new tensor
# of x's shape, its channels x's
for _f in ("to", "type", "type_as", torch.zeros_like, torch.ones_like, torch.empty_like,
           torch.full_like):
    CHANNEL_RULES[_f] = Elementwise(tensor_args=(0,))
CHANNEL_RULES[nn.Softmax] = MixesDim()
CHANNEL_RULES[nn.LogSoftmax] = MixesDim()

#: Modules traced as one call by default. torchvision's StochasticDepth reads ``self.training``
#: in Python; traced through, the mode at prepare time would be frozen into the graph.
DEFAULT_LEAF_MODULES: list[type] = []
try:  # torchvision is a dependency, but the table should not need it
    from torchvision.ops import StochasticDepth as _StochasticDepth
    from torchvision.ops import stochastic_depth as _stochastic_depth
except ImportError:
    pass
else:  # stochastic depth scales whole samples: channels pass through
    CHANNEL_RULES[_stochastic_depth] = Elementwise(tensor_args=(0,))
    CHANNEL_RULES[_StochasticDepth] = ELEMENTWISE
    DEFAULT_LEAF_MODULES.append(_StochasticDepth)


#: rows for layers of libraries fxprune does not import itself: (module, class name) -> row
_INSTALLED_ROWS = {
    # timm's BatchNorm + activation (+ dropout) in one module; its forward reads self.training
    ("timm.layers", "BatchNormAct2d"): _STATISTICS_NORM,
    # drops whole samples (a per-sample scale): channels pass through
    ("timm.layers", "DropPath"): ELEMENTWISE,
    # the memory-efficient activations (act_layer="hard_mish" and the like): custom autograd
    # Functions, called as one op (passes/autograd_function.py), element by element
    **{("timm.layers.activations_me", name): ELEMENTWISE for name in (
        "SwishAutoFn", "MishAutoFn", "HardSigmoidAutoFn", "HardSwishAutoFn", "HardMishAutoFn")},
    # a Conv2d that pads as TensorFlow's "SAME" in its forward (tf_efficientnet_*): its
    # padding arithmetic on the input's size cannot be traced (a barrier with a reason before)
    ("timm.layers.conv2d_same", "Conv2dSame"): ConvSame(),
    # convs that standardize their weight in their forward (BiT ResNetV2, NFNets, ViT hybrids):
    # traced through, the computed weight was a barrier; as rows, pruned with the statistics
    # the pruned layer computes
    ("timm.layers.std_conv", "StdConv2d"): StandardizedConv(),
    ("timm.layers.std_conv", "StdConv2dSame"): StandardizedConv(),
    ("timm.layers.std_conv", "ScaledStdConv2d"): StandardizedConv(),
    ("timm.layers.std_conv", "ScaledStdConv2dSame"): StandardizedConv(),
    # a GroupNorm whose forward is the norm alone (a fused kernel when timm's fast norm is on):
    # traced through, its F.group_norm had no row (lowformer, shvit)
    ("timm.layers.norm", "GroupNorm"): GroupNorm(forward_is_norm=True),
    ("timm.layers.norm", "GroupNorm1"): GroupNorm(forward_is_norm=True),
    # root-mean-square norms (ConvNeXt-RMS; the 2d forms normalize dim 1 of NCHW) and SimpleNorm
    # (x / std(x)); traced through, their mean over the channels was a barrier
    ("timm.layers.norm", "RmsNorm"): RMSNorm(),
    ("timm.layers.norm", "RmsNormFp32"): RMSNorm(),
    ("timm.layers.norm", "RmsNorm2d"): RMSNorm(channels_first=True),
    ("timm.layers.norm", "RmsNorm2dFp32"): RMSNorm(channels_first=True),
    ("timm.layers.norm", "SimpleNorm"): RMSNorm(centered=True),
    ("timm.layers.norm", "SimpleNormFp32"): RMSNorm(centered=True),
    ("timm.layers.norm", "SimpleNorm2d"): RMSNorm(channels_first=True, centered=True),
    ("timm.layers.norm", "SimpleNorm2dFp32"): RMSNorm(channels_first=True, centered=True),
    # an RMS norm, then dropout and activation, in one module (what ConvNormAct builds for
    # norm_layer=RmsNorm2d; traced through, its mean over the channels was a barrier)
    ("timm.layers.norm_act", "RmsNormAct"): RMSNorm(act=True),
    ("timm.layers.norm_act", "RmsNormActFp32"): RMSNorm(act=True),
    ("timm.layers.norm_act", "RmsNormAct2d"): RMSNorm(channels_first=True, act=True),
    ("timm.layers.norm_act", "RmsNormAct2dFp32"): RMSNorm(channels_first=True, act=True),
    # GroupNorm, then dropout and activation, in one module (BiT ResNetV2s)
    ("timm.layers.norm_act", "GroupNormAct"): GroupNormAct(),
    ("timm.layers.norm_act", "GroupNorm1Act"): GroupNormAct(),
    # pools padded the same way (nasnet, pnasnet): per channel, as a pool is
    ("timm.layers.pool2d_same", "MaxPool2dSame"): Spatial(2),
    ("timm.layers.pool2d_same", "AvgPool2dSame"): Spatial(2),
    # torchvision's detection backbones' norm: traced through, its scale (computed from its
    # buffers alone) was baked in as anonymous constants, losing 80 state_dict names of a
    # resnet18 (break39 #3)
    ("torchvision.ops.misc", "FrozenBatchNorm2d"): ChannelAffine(("weight", "bias", "running_mean",
                                                                 "running_var")),
}


def add_installed_rows() -> None:
    """Add the rows of :data:`_INSTALLED_ROWS` whose library the process has imported (a timm
    model's user has imported timm): called when a model is traced, so that importing fxprune
    imports no such library."""
    for (module, name), row in _INSTALLED_ROWS.items():
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type):
            CHANNEL_RULES.setdefault(cls, row)


def describe(node, gm) -> str:
    """A readable name for the op a node runs (for barrier reasons and tables)."""
    if node.op == "call_module":
        cls = type(gm.get_submodule(node.target))
        if getattr(nn, cls.__name__, cls) is not cls:  # (break121 #4: a quantized Linear read
            return f"{cls.__module__}.{cls.__qualname__}"  # as nn.Linear having no rule)
        return cls.__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    target = node.target
    return f"{getattr(target, '__module__', '') or ''}.{getattr(target, '__name__', repr(target))}".lstrip(".")


#: what to do with a quantized or quantization-aware-training model (break139 F1, F4)
QUANTIZATION_WAY_OUT = ("prune the float model (before quantize / prepare_qat / prepare_qat_fx; "
                        "torchvision: quantize=False) and quantize the finalized one")


def quantization_stage(cls: type) -> str | None:
    """``"quantized"`` for a torch.ao quantized layer with weights (packed outside
    ``nn.Parameter``, so no row can slice them and no count holds them: convs, linears,
    dynamic RNNs, embeddings), ``"qat"`` for a quantization-aware-training layer
    (fake-quantized weights, observers, a folded BatchNorm), else None; a subclass of either
    is that too (review142 F5). FloatFunctional and the stubs of an unconverted quantizable
    model are neither: those models prune as float ones."""
    import torch.ao.nn.quantized as nnq
    import torch.ao.nn.quantized.dynamic as nnqd
    from torch.ao.nn.quantized.modules.utils import WeightedQuantizedModule

    for base in cls.__mro__:
        if (getattr(base, "__module__", "") or "").startswith(
                ("torch.ao.nn.qat", "torch.ao.nn.intrinsic.qat", "torch.nn.qat",
                 "torch.nn.intrinsic.qat")):
            return "qat"
    packed = (WeightedQuantizedModule, nnq.Embedding, nnq.EmbeddingBag,
              nnqd.modules.rnn.RNNBase, nnqd.modules.rnn.RNNCellBase)
    return "quantized" if issubclass(cls, packed) else None
