"""Conv and ConvTranspose: filters create channels, input slices read them.

A depthwise Conv (group == input channels) passes its input's channels on and its ``group``
follows the kept count. Any other grouped Conv removes the same slots in every group, on its
input side and on its output side alike, so ``group`` stays and every group keeps one width
(Torch-Pruning's channel groups)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ...constants import constant
from ..mapping import same_slot_in_every_block
from ..walk import Edit, Walk, attr_int, input_at
from . import rule


@rule("Conv", "ConvTranspose")
def conv(w: Walk, node: ir.Node) -> None:
    x, weight_value, b = node.inputs[0], node.inputs[1], input_at(node, 2)
    weight = constant(weight_value)
    axes = w.tracked(x)
    if weight is None or (b is not None and constant(b) is None):
        w.freeze_inputs(node, "Conv with computed weights")
        return
    if any(a != 1 for a in axes):
        w.freeze_inputs(node, "Conv over non-channel axis")
    transpose = node.op_type == "ConvTranspose"
    group = attr_int(node, "group", 1)
    in_atoms = axes.get(1)
    cout = weight.shape[1] * group if transpose else weight.shape[0]
    cin = weight.shape[0] if transpose else weight.shape[1] * group
    in_axis, out_axis = (0, 1) if transpose else (1, 0)
    if group == 1:
        if in_atoms is not None:
            w.ref(weight_value, in_axis, in_atoms, node, "weight", "consumer")
        out_atoms = w.ref(weight_value, out_axis, None, node, "weight", "producer")
    elif not transpose and group == cin and cout % cin == 0:
        if in_atoms is None:  # channels fixed by an input the analysis cannot shrink
            in_atoms = w.new_atoms(cin)
            w.freeze(in_atoms, f"depthwise Conv on a fixed-width input at node {node.name}")
        out_atoms = np.repeat(in_atoms, cout // cin)
        w.ref(weight_value, 0, out_atoms, node, "weight", "producer")
        w.edit(Edit("group", node, [in_atoms], {}))
        in_atoms = None  # MACs scale with the output channels alone
    elif transpose:  # weight [cin, cout/group, ...]
        if in_atoms is not None:
            same_slot_in_every_block(in_atoms, group, w.union)
            w.ref(weight_value, 0, in_atoms, node, "weight", "consumer")
        out_atoms = np.tile(w.ref(weight_value, 1, None, node, "weight", "producer"), group)
    else:  # weight [cout, cin/group, ...]
        if in_atoms is not None:
            w.ref(weight_value, 1, same_slot_in_every_block(in_atoms, group, w.union), node, "weight", "consumer")
        out_atoms = w.ref(weight_value, 0, None, node, "weight", "producer")
        same_slot_in_every_block(out_atoms, group, w.union)
    if b is not None:
        w.ref(b, 0, out_atoms, node, "bias", "producer")
    w.layers.append((node, [out_atoms] if in_atoms is None else [out_atoms, in_atoms]))
    w.set(node.outputs[0], {1: out_atoms}, node)
