"""The kinds of channel behaviour an op can have, each a small class the group analysis calls.

Every tensor in the graph carries *labels*: for each dim that holds channels, an integer array
naming, position by position, the channel element found there (-1: a position no prunable
channel owns, e.g. the model's input). Elements are born as the dims of the model's weights and
buffers ("spaces"); a rule says how an op maps its inputs' labels to its output's and which
elements must be equal (``unify``) or may never be removed (``untracked``).

Which op has which behaviour is data: see :mod:`fxprune.op_table`. The kinds live in
``base`` (the base class, barriers, shape reads), ``elementwise``, ``shape``, ``layers`` and
``attention`` (products that sum over channels without a weight). A rule
owns everything about its op:

* ``propagate(ctx)`` during analysis returns the output labels (a dict ``dim -> ids``, or a
  tuple of them for ops returning tuples);
* the masked form ``prepare`` puts in the graph: ``masked_class`` for a layer whose weight
  reads channels, ``mask_statistics`` (and finalize's ``unmask_statistics``) for a norm whose
  statistics span them;
* ``resize`` and ``rewrite(node, ctx)`` during ``finalize``: a module's size attributes, and
  literal arguments that spell out channel counts (``view(n, 256, 7, 7)``, ``split([32, 32])``,
  ``x[:, :64]``) for the pruned sizes.
"""
from .base import (Barrier, ChannelRule, Labels, Metadata, ShapeRead, SizeOf, check_size_args, node_arg,
                   norm_dim, set_node_arg, varargs)
from .attention import MatMul, ScaledDotProductAttention
from .elementwise import Elementwise, Flip, MixesDim, Pad, Reduce, ReducePair, Roll, Spatial, Unpool, broadcast_unify
from .layers import ChannelAffine, Conv, ConvSame, ConvTranspose, FunctionalAffine, StandardizedConv, FunctionalGroupNorm, FunctionalLayerNorm, FunctionalRMSNorm, GroupNorm, GroupNormAct, LayerNorm, Linear, RMSNorm
from .shape import (ChannelShuffle, Concat, Create, Expand, Index, Permute, PixelShuffle, Repeat, Reshape, Split,
                    Stack, TupleItem, reshape_blocks)

__all__ = ["Barrier", "ChannelAffine", "ChannelRule", "ChannelShuffle", "Concat", "Conv", "ConvSame", "ConvTranspose", "Create", "Elementwise", "FunctionalAffine", "FunctionalGroupNorm", "PixelShuffle",
           "Expand", "FunctionalLayerNorm", "FunctionalRMSNorm", "GroupNorm", "GroupNormAct", "Index", "LayerNorm", "Labels", "Linear", "MatMul", "ScaledDotProductAttention",
           "Flip", "Metadata", "MixesDim", "Pad", "Permute", "Reduce", "ReducePair", "Repeat", "Reshape", "Roll", "ShapeRead", "SizeOf", "Spatial",
           "Split", "StandardizedConv", "Stack", "TupleItem", "Unpool", "broadcast_unify", "check_size_args", "node_arg", "norm_dim",
           "reshape_blocks", "set_node_arg", "varargs"]
