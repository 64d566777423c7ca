"""Gemm, MatMul, embedding Gather and recurrent layers."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ...constants import constant
from ..walk import Walk, attr_int, label
from . import rule


@rule("Gemm")
def gemm(w: Walk, node: ir.Node) -> None:
    a, bw = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 else None
    trans_a, trans_b = attr_int(node, "transA", 0), attr_int(node, "transB", 0)
    axes = w.tracked(a)
    feature_axis = 0 if trans_a else 1
    if constant(bw) is None or any(ax != feature_axis for ax in axes):
        w.freeze_inputs(node, "Gemm with computed weights or batch-axis channels")
        return
    if feature_axis in axes:
        w.ref(bw, 1 if trans_b else 0, axes[feature_axis], node, "weight", "consumer")
    out_atoms = w.ref(bw, 0 if trans_b else 1, None, node, "weight", "producer")
    w.layers.append((node, [out_atoms] + ([axes[feature_axis]] if feature_axis in axes else [])))
    if c is not None:
        shape = w.shape(c)
        if constant(c) is None:
            w.freeze(out_atoms, f"computed bias at {label(node)}")
        elif shape and shape[-1] == len(out_atoms) and len(out_atoms) > 1:
            w.ref(c, -1, out_atoms, node, "bias", "producer")
        elif shape and shape[-1] != 1:
            w.freeze(out_atoms, f"unusual bias shape at {label(node)}")
    w.set(node.outputs[0], {1: out_atoms}, node)

@rule("MatMul")
def matmul(w: Walk, node: ir.Node) -> None:
    a, b = node.inputs
    ra, rb, ro = w.rank(a), w.rank(b), w.rank(node.outputs[0])
    axes_a, axes_b = w.tracked(a), w.tracked(b)
    weight = constant(b)
    if weight is not None and len(weight.shape) == 2 and ra is not None and ra >= 2:
        out = {k: v for k, v in axes_a.items() if k != ra - 1}
        if ra - 1 in axes_a:
            w.ref(b, 0, axes_a[ra - 1], node, "weight", "consumer")
        out[ra - 1] = w.ref(b, 1, None, node, "weight", "producer")
        w.layers.append((node, [out[ra - 1]] + ([axes_a[ra - 1]] if ra - 1 in axes_a else [])))
        w.set(node.outputs[0], out, node)
        return
    if not axes_a and not axes_b:
        return
    if constant(a) is not None or weight is not None or None in (ra, rb, ro) or min(ra, rb) < 2:
        w.freeze_inputs(node, "MatMul of this form")
        return
    out: dict[int, np.ndarray] = {}
    for axes, r in ((axes_a, ra), (axes_b, rb)):
        for ax, atoms in axes.items():
            if ax < r - 2:  # batch axes broadcast like element-wise ops
                k = ax + ro - r
                if k in out:
                    w.union(out[k], atoms)
                else:
                    out[k] = atoms
    if ra - 2 in axes_a:
        out[ro - 2] = axes_a[ra - 2]
    if rb - 1 in axes_b:
        out[ro - 1] = axes_b[rb - 1]
    ka, kb = axes_a.get(ra - 1), axes_b.get(rb - 2)
    if ka is not None and kb is not None:
        w.union(ka, kb)
    elif ka is not None or kb is not None:
        w.freeze(ka if ka is not None else kb, f"contraction with fixed-width operand at {label(node)}")
    w.layers.append((node, list(out.values()) + ([ka] if ka is not None and kb is not None else [])))
    w.set(node.outputs[0], out, node)

@rule("Gather")
def gather(w: Walk, node: ir.Node) -> None:
    data, idx = node.inputs
    axis = attr_int(node, "axis", 0)
    table = constant(data)
    if w.tracked(idx):
        w.freeze_value(idx, f"channels used as indices at {label(node)}")
    if table is not None:
        if len(table.shape) == 2 and axis % 2 == 0 and constant(idx) is None:
            rank = w.rank(node.outputs[0])
            atoms = w.ref(data, 1, None, node, "weight", "producer")
            if rank is not None:
                w.set(node.outputs[0], {rank - 1: atoms}, node)
        return
    axes = w.tracked(data)
    rank, irank = w.rank(data), w.rank(idx)
    if not axes:
        return
    if rank is None or irank is None or (axis % rank) in axes:
        w.freeze_inputs(node, "Gather along channels")
        return
    axis %= rank
    w.set(node.outputs[0], {a if a < axis else a + irank - 1: t for a, t in axes.items()}, node)

@rule("LSTM", "GRU", "RNN")
def rnn(w: Walk, node: ir.Node) -> None:
    axes = w.tracked(node.inputs[0])
    if not axes:
        return
    if set(axes) != {2} or constant(node.inputs[1]) is None:
        w.freeze_inputs(node, "recurrent layer input")
        return
    w.ref(node.inputs[1], 2, axes[2], node, "weight", "consumer")

