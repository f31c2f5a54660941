"""Single-layer ONNX models built directly with ``onnx.helper``, for latency tables.

Going through ``torch.onnx.export`` costs about a second per model; a table needs thousands.
"""
from __future__ import annotations

import numpy as np

from fxprune.cost import LayerSpec

from .common import DeployError

# onnx 1.23 writes IR version 14 by default, which onnxruntime 1.31 refuses to load.
IR_VERSION = 10
OPSET = 18
#: nn.Conv's padding_mode -> ONNX Pad's mode
_PAD_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}
_ONNX_DTYPES = {"float32": ("FLOAT", np.float32), "float16": ("FLOAT16", np.float16)}


class _RandomPool:
    """Random weights sliced from one pre-drawn buffer: drawing fresh normals for every grid
    point would cost more than timing the layer. Values are finite, non-denormal normals."""

    def __init__(self, seed: int = 0):
        self._rng = np.random.default_rng(seed)
        self._buf = np.zeros(0, np.float32)

    def take(self, shape, dtype) -> np.ndarray:
        n = int(np.prod(shape)) if len(shape) else 1
        if n > self._buf.size:
            self._buf = self._rng.standard_normal(max(n, 1 << 20), dtype=np.float32)
        return self._buf[:n].reshape(shape).astype(dtype, copy=False)


_POOL = _RandomPool()


def layer_input_shape(layer: LayerSpec, c_in: int) -> tuple[int, ...]:
    shape = list(layer.input_shape)
    if not shape:
        raise DeployError(f"layer {layer.name!r} has no input_shape; a latency table needs one")
    shape[layer.layer_kind.channel_dim] = c_in
    return tuple(shape)


def check_timed(layer: LayerSpec) -> None:
    """Raise :class:`DeployError` unless a latency table can time ``layer``'s kind: ONNX and
    torch single-layer builders exist for it (:data:`TIMED_KINDS`)."""
    if layer.kind not in TIMED_KINDS:
        raise DeployError(f"layer {layer.name!r} has kind {layer.kind!r}; latency tables time "
                          f"{', '.join(repr(k) for k in TIMED_KINDS[:-1])} and {TIMED_KINDS[-1]!r} layers only: price this "
                          "model by cost='flops' or 'params', or a cost model of your own")


def check_groups(layer: LayerSpec, c_in: int, c_out: int) -> int:
    """``layer``'s groups at ``c_in`` input channels; :class:`DeployError` where ``c_in`` or
    ``c_out`` does not split into them."""
    groups = layer.groups_at(c_in)
    if c_in % groups or c_out % groups:
        raise DeployError(f"layer {layer.name!r}: {c_in}->{c_out} channels are not divisible "
                          f"by its {groups} groups")
    return groups


def _conv_nodes(layer: LayerSpec, c_in: int, c_out: int, np_dtype):
    """(initializers, nodes) of a conv from "x" to "y" (a Pad first for non-zero modes)."""
    from onnx import helper, numpy_helper

    groups = check_groups(layer, c_in, c_out)
    w = _POOL.take((c_out, c_in // groups, *layer.kernel_size), np_dtype)
    inits, nodes = [numpy_helper.from_array(w, "W")], []
    inputs = ["x", "W"]
    if layer.bias:
        inits.append(numpy_helper.from_array(_POOL.take((c_out,), np_dtype), "B"))
        inputs.append("B")
    nd = len(layer.kernel_size)
    pads = list(layer.padding) or [0] * nd
    pads = pads * 2 if len(pads) == nd else pads  # else begins then ends already
    if layer.padding_mode != "zeros":  # a Pad of that mode, then an unpadded conv
        nodes.append(helper.make_node("Pad", ["x", "pads"], ["xp"],
                                      mode=_PAD_MODES[layer.padding_mode]))
        inits.append(numpy_helper.from_array(
            np.array([0, 0, *pads[:nd], 0, 0, *pads[nd:]], dtype=np.int64), "pads"))
        inputs[0], pads = "xp", [0] * (2 * nd)
    nodes.append(helper.make_node(
        "Conv", inputs, ["y"], kernel_shape=list(layer.kernel_size),
        strides=list(layer.stride) or [1] * nd, pads=pads,
        dilations=list(layer.dilation) or [1] * nd, group=groups))
    return inits, nodes


def _linear_nodes(layer: LayerSpec, c_in: int, c_out: int, np_dtype):
    """(initializers, nodes) of a linear from "x" to "y", as torch exports one."""
    from onnx import helper, numpy_helper

    w = _POOL.take((c_out, c_in), np_dtype)
    inits, nodes = [numpy_helper.from_array(w, "W")], []
    if len(layer.input_shape) == 2:
        # What torch exports for a 2-D nn.Linear: one Gemm with the weight transposed.
        inputs = ["x", "W"]
        if layer.bias:
            inits.append(numpy_helper.from_array(_POOL.take((c_out,), np_dtype), "B"))
            inputs.append("B")
        nodes.append(helper.make_node("Gemm", inputs, ["y"], transB=1))
    else:
        inits[-1] = numpy_helper.from_array(np.ascontiguousarray(w.T), "W")
        nodes.append(helper.make_node("MatMul", ["x", "W"], ["y" if not layer.bias else "m"]))
        if layer.bias:
            inits.append(numpy_helper.from_array(_POOL.take((c_out,), np_dtype), "B"))
            nodes.append(helper.make_node("Add", ["m", "B"], ["y"]))
    return inits, nodes


#: the ONNX nodes of each layer kind (fxprune.cost.LAYER_KINDS) a latency table can time; the
#: torch backend has a module builder for each (deploy/torch_backend.py)
_NODE_BUILDERS = {"conv": _conv_nodes, "linear": _linear_nodes}
#: the layer kinds a latency table times
TIMED_KINDS = tuple(_NODE_BUILDERS)


def layer_model_bytes(layer: LayerSpec, c_in: int, c_out: int) -> bytes:
    """Serialized ONNX model holding just ``layer`` pruned to ``c_in`` -> ``c_out`` channels."""
    from onnx import TensorProto, helper

    if layer.dtype not in _ONNX_DTYPES:
        raise DeployError(f"layer {layer.name!r} has dtype {layer.dtype!r}; latency tables "
                          f"support {sorted(_ONNX_DTYPES)}: time the deployment precision with "
                          "LatencyTable.measure(..., precision='fp32' or 'fp16')")
    elem_name, np_dtype = _ONNX_DTYPES[layer.dtype]
    elem = getattr(TensorProto, elem_name)
    check_timed(layer)
    x_shape = layer_input_shape(layer, c_in)
    inits, nodes = _NODE_BUILDERS[layer.kind](layer, c_in, c_out, np_dtype)
    graph = helper.make_graph(
        nodes, f"layer_{layer.kind}",
        [helper.make_tensor_value_info("x", elem, list(x_shape))],
        [helper.make_tensor_value_info("y", elem, None)],
        initializer=inits)
    # ONNX's Pad mode "wrap" (circular) came with opset 19
    opset = 19 if layer.padding_mode == "circular" else OPSET
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="fxprune.latency_table")
    model.ir_version = IR_VERSION
    return model.SerializeToString()
