"""Element-wise ops: unary ops keep channels; broadcasting ops on two computed tensors couple
them (a residual Add); a constant operand with one value per channel is sliced with them."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ...constants import constant
from ..walk import Walk, label
from . import rule

UNARY = (
    "Relu", "Sigmoid", "Tanh", "Erf", "Gelu", "LeakyRelu", "Elu", "Selu", "Celu", "HardSigmoid",
    "HardSwish", "Softplus", "Softsign", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Cast",
    "Identity", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Tan", "Atan", "Asin", "Acos",
    "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Mish", "ThresholdedRelu", "Not", "IsNaN", "IsInf",
    "Clip", "Dropout", "Shrink", "CastLike", "BitwiseNot",
)  # fmt: skip
BROADCAST = (
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where", "Equal",
    "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "Mod", "BitShift",
)  # fmt: skip
_CONST_ROLE = {"Mul": "scale", "Add": "shift", "Sub": "shift", "Div": "divisor", "PRelu": "slope"}


@rule(*UNARY)
def unary(w: Walk, node: ir.Node) -> None:
    axes = w.tracked(node.inputs[0])
    for out in node.outputs:
        w.set(out, axes, node)


@rule(*BROADCAST)
def broadcast(w: Walk, node: ir.Node) -> None:
    out = node.outputs[0]
    rank = w.rank(out)
    tracked_inputs = [i for i in node.inputs if w.tracked(i)]
    if not tracked_inputs:
        return
    if rank is None:
        w.freeze_inputs(node, "unknown rank")
        return
    result: dict[int, np.ndarray] = {}
    for inp in tracked_inputs:
        shift = rank - (w.rank(inp) or rank)
        for a, atoms in w.tracked(inp).items():
            if a + shift in result:
                w.union(result[a + shift], atoms)
            else:
                result[a + shift] = atoms
    role = _CONST_ROLE.get(node.op_type, "param")
    for inp in node.inputs:
        if inp is None or w.tracked(inp):
            continue
        shape = w.shape(inp)
        if shape is not None:  # dims at the channel axes must be known: ask symbolic inference
            local_axes = [a - (rank - len(shape)) for a in result]
            shape = w.resolved_shape(inp, [a for a in local_axes if 0 <= a < len(shape)])
        is_const = constant(inp) is not None
        for axis, atoms in result.items():
            local = axis - (rank - len(shape)) if shape is not None else None
            dim = shape[local] if shape is not None and 0 <= local < len(shape) else (1 if shape is not None else None)
            if dim == 1:
                continue
            if is_const and dim == len(atoms):
                w.ref(inp, local, atoms, node, role, "producer")
            else:
                w.freeze(atoms, f"{label(node)} combines channels with {inp.name!r}, which has no matching channels")
    w.set(out, result, node)
