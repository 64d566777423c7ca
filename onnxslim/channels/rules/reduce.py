"""Ops that keep channels unless they act across them: pools, reductions, softmax, arg-max,
Resize and Pad over other axes."""

from __future__ import annotations

import onnx_ir as ir

from ..shape_entries import entries, resolved
from ..walk import Walk, attr_int, attr_ints, float_values, given_ints, ints
from . import rule

POOLS = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
REDUCE = (
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
)  # fmt: skip


@rule(*POOLS)
def pool(w: Walk, node: ir.Node) -> None:
    axes = w.tracked(node.inputs[0])
    if any(a != 1 for a in axes) or (len(node.outputs) > 1 and node.outputs[1].uses()):
        w.freeze_inputs(node, "pool over channels")
        return
    w.set(node.outputs[0], axes, node)


@rule("Softmax", "LogSoftmax", "Hardmax")
def softmax(w: Walk, node: ir.Node) -> None:
    axes = w.tracked(node.inputs[0])
    rank = w.rank(node.inputs[0])
    if not axes:
        return
    if rank is None or (attr_int(node, "axis", -1) % rank) in axes:
        w.freeze_inputs(node, "softmax over channels")
        return
    w.set(node.outputs[0], axes, node)

@rule(*REDUCE)
def reduce(w: Walk, node: ir.Node) -> None:
    axes = w.tracked(node.inputs[0])
    if not axes:
        return
    rank = w.rank(node.inputs[0])
    given, reduced = given_ints(node, "axes", 1)
    if given and reduced is None:
        w.freeze_inputs(node, "reduction over computed axes")
        return
    if rank is None:
        w.freeze_inputs(node, "unknown rank")
        return
    if not reduced:
        reduced = [] if attr_int(node, "noop_with_empty_axes", 0) else list(range(rank))
    reduced = {a % rank for a in reduced}
    if reduced & set(axes):
        w.freeze_inputs(node, "reduction over channels")
        return
    keep = attr_int(node, "keepdims", 1)
    out = {a if keep else a - sum(1 for r in reduced if r < a): atoms for a, atoms in axes.items()}
    w.set(node.outputs[0], out, node)

@rule("ArgMax", "ArgMin")
def argmax(w: Walk, node: ir.Node) -> None:
    axes = w.tracked(node.inputs[0])
    rank = w.rank(node.inputs[0])
    if not axes:
        return
    if rank is None or (attr_int(node, "axis", 0) % rank) in axes:
        w.freeze_inputs(node, "arg-reduction over channels")
        return
    axis = attr_int(node, "axis", 0) % rank
    keep = attr_int(node, "keepdims", 1)
    w.set(node.outputs[0], {a if keep or a < axis else a - 1: t for a, t in axes.items()}, node)

@rule("Shape", "Size")
def shape_op(w: Walk, node: ir.Node) -> None:
    return  # the shape adapts; Reshape shape sources are checked where they are used

@rule("Resize", "Upsample")
def resize(w: Walk, node: ir.Node) -> None:
    axes = w.tracked(node.inputs[0])
    if not axes:
        return
    sizes = node.inputs[3] if len(node.inputs) > 3 else None
    scales = float_values(node.inputs[2] if len(node.inputs) > 2 else None)
    if sizes is not None or scales is None or any(a < len(scales) and scales[a] != 1.0 for a in axes):
        w.freeze_inputs(node, "Resize with sizes or channel scaling")
        return
    w.set(node.outputs[0], axes, node)


@rule("Pad")
def pad(w: Walk, node: ir.Node) -> None:
    """Pads on other axes pass channels through; pads may be computed (a Concat of zeros and
    run-time sizes, as exporters write for dynamic spatial dims) if the channel axes' are 0."""
    axes = w.tracked(node.inputs[0])
    if not axes:
        return
    rank = w.rank(node.inputs[0])
    if len(node.inputs) > 1:
        found = entries(w, node.inputs[1], node)
        pads = [resolved(w, e) if e.kind in ("literal", "fixed") else None for e in found] if found is not None else None
    else:
        pads = attr_ints(node, "pads")
    pad_axes = ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
    if pads is None or rank is None or (pad_axes is None and len(node.inputs) > 3 and node.inputs[3] is not None):
        w.freeze_inputs(node, "Pad with computed pads")
        return
    pad_axes = [a % rank for a in pad_axes] if pad_axes is not None else list(range(rank))
    n = len(pad_axes)
    if len(pads) != 2 * n:
        w.freeze_inputs(node, "Pad with computed pads")
        return
    for i, a in enumerate(pad_axes):
        if a in axes and (pads[i] != 0 or pads[i + n] != 0):
            w.freeze_inputs(node, "Pad on the channel axis" if None not in (pads[i], pads[i + n]) else "Pad with computed pads")
            return
    w.set(node.outputs[0], axes, node)
