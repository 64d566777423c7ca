"""Quantize/dequantize on activations (QDQ models from onnxruntime's quantize_static).

A per-tensor scale passes channels through; a per-axis scale and zero point along a channel
axis are sliced with the channels. Quantized *weights* (DequantizeLinear or Cast→Mul of a
constant) are resolved by :func:`onnxslim.constants.constant`, which slices the INT8 tensor,
its scales and zero points together."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ...constants import constant
from ..walk import Walk, attr_int, input_at, label
from . import rule


@rule("QuantizeLinear", "DequantizeLinear")
def qdq(w: Walk, node: ir.Node) -> None:
    axes = w.tracked(node.inputs[0])
    if not axes:
        return
    rank, scale, zero_point = w.rank(node.inputs[0]), input_at(node, 1), input_at(node, 2)
    scale_shape = w.shape(scale)
    if rank is None or scale_shape is None or attr_int(node, "block_size", 0) > 0:
        w.freeze_inputs(node, "blocked or unknown quantization")
        return
    if int(np.prod(scale_shape)) > 1:  # per axis
        axis = attr_int(node, "axis", 1) % rank
        if axis in axes:
            for value, role in ((scale, "q_scale"), (zero_point, "q_zero_point")):
                if value is not None and (constant(value) is None or w.ref(value, 0, axes[axis], node, role, "producer") is None):
                    w.freeze(axes[axis], f"computed quantization parameters at {label(node)}")
    w.set(node.outputs[0], axes, node)
