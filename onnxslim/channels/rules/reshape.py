"""Axis mappings: Transpose, (Un)Squeeze, Flatten, Reshape and Expand."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from ...constants import constant
from ..mapping import align, literal, merged_atoms
from ..walk import Dim, Edit, Walk, attr_int, attr_ints, ints
from . import rule


@rule("Transpose")
def transpose(w: Walk, node: ir.Node) -> None:
    axes = w.tracked(node.inputs[0])
    rank = w.rank(node.inputs[0])
    if not axes:
        return
    if rank is None:
        w.freeze_inputs(node, "unknown rank")
        return
    perm = attr_ints(node, "perm") or list(reversed(range(rank)))
    w.set(node.outputs[0], {j: axes[p] for j, p in enumerate(perm) if p in axes}, node)

@rule("Unsqueeze")
def unsqueeze(w: Walk, node: ir.Node) -> None:
    axes = w.tracked(node.inputs[0])
    if not axes:
        return
    new = attr_ints(node, "axes") or (ints(node.inputs[1]) if len(node.inputs) > 1 else None)
    rank = w.rank(node.outputs[0])
    if new is None or rank is None:
        w.freeze_inputs(node, "Unsqueeze with computed axes")
        return
    new = {a % rank for a in new}
    kept = [i for i in range(rank) if i not in new]
    w.set(node.outputs[0], {kept[a]: t for a, t in axes.items()}, node)

@rule("Squeeze")
def squeeze(w: Walk, node: ir.Node) -> None:
    axes = w.tracked(node.inputs[0])
    if not axes:
        return
    rank = w.rank(node.inputs[0])
    gone = attr_ints(node, "axes") or (ints(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None)
    shape = w.shape(node.inputs[0])
    if gone is None and shape is not None and all(isinstance(d, int) for d in shape):
        gone = [i for i, d in enumerate(shape) if d == 1]
    if gone is None or rank is None:
        w.freeze_inputs(node, "Squeeze with unknown axes")
        return
    gone = {a % rank for a in gone}
    if gone & set(axes):
        w.freeze_inputs(node, "Squeeze of a channel axis")
        return
    w.set(node.outputs[0], {a - sum(1 for g in gone if g < a): t for a, t in axes.items()}, node)

@rule("Flatten")
def flatten(w: Walk, node: ir.Node) -> None:
    axes = w.tracked(node.inputs[0])
    if not axes:
        return
    shape = w.shape(node.inputs[0])
    if shape is None:
        w.freeze_inputs(node, "Flatten of unknown shape")
        return
    axis = attr_int(node, "axis", 1) % (len(shape) + 1)
    merge_axes(w, node, axes, shape, [(list(range(0, axis)), 0), (list(range(axis, len(shape))), 1)], node.outputs[0])

def merge_axes(w: Walk, node: ir.Node, axes: Mapping[int, np.ndarray], shape: Sequence[Dim], segments, out: ir.Value) -> dict[int, np.ndarray] | None:
    """Map tracked axes through merges of input axis runs into single output axes."""
    result: dict[int, np.ndarray] = {}
    for in_axes, out_axis in segments:
        inside = [a for a in in_axes if a in axes]
        if not inside:
            continue
        if len(inside) > 1:
            w.freeze_inputs(node, "several channel axes merged")
            return None
        merged = merged_atoms(axes[inside[0]], in_axes.index(inside[0]), [shape[a] for a in in_axes])
        if merged is None:
            w.freeze_inputs(node, "merge of axes with unknown sizes")
            return None
        result[out_axis] = merged
    w.set(out, result, node)
    return result

@rule("Reshape")
def reshape(w: Walk, node: ir.Node) -> None:
    axes = w.tracked(node.inputs[0])
    if not axes:
        return
    src, dst = w.shape(node.inputs[0]), w.shape(node.outputs[0])
    if src is None or dst is None:
        w.freeze_inputs(node, "Reshape of unknown shape")
        return
    segments = align(src, dst)
    if segments is None:
        if constant(node.inputs[1]) is None:
            for atoms in axes.values():
                w.freeze(atoms, f"Reshape with computed shape at node {node.name}")
        else:
            w.freeze_inputs(node, "Reshape that cannot be aligned")
        return
    result: dict[int, np.ndarray] = {}
    for in_axes, out_axes in segments:
        inside = [a for a in in_axes if a in axes]
        if not inside:
            continue
        if len(inside) > 1 or (len(in_axes) > 1 and len(out_axes) > 1):
            w.freeze_inputs(node, "Reshape that mixes channel axes")
            return
        if len(out_axes) == 1:  # identity or merge
            merged = merged_atoms(axes[inside[0]], in_axes.index(inside[0]), [src[a] for a in in_axes])
            if merged is None:
                w.freeze_inputs(node, "merge of axes with unknown sizes")
                return
            result[out_axes[0]] = merged
            continue
        # one axis split into several: coarsen to the outermost non-trivial output axis
        dims = [dst[o] for o in out_axes]
        if not all(isinstance(d, int) for d in dims):
            w.freeze_inputs(node, "Reshape split with unknown sizes")
            return
        outer = next(i for i, d in enumerate(dims) if d > 1)
        blocks = axes[inside[0]].reshape(int(np.prod(dims[: outer + 1])), -1)
        for col in range(1, blocks.shape[1]):
            w.union(blocks[:, 0], blocks[:, col])
        w.head_atoms.append(blocks[:, 0])
        result[out_axes[outer]] = blocks[:, 0]
    entries = shape_entries(w, node, len(dst))
    for out_axis, atoms in result.items():
        entry = entries[out_axis] if entries is not None else None
        if entry is None:
            w.freeze(atoms, f"Reshape with computed shape at node {node.name}")
        elif entry[0] == "literal" and entry[3] > 0:
            w.edit(Edit("shape", node, [atoms], {"source": entry[1], "index": entry[2], "consumer": entry[4]}))
        elif entry[0] == "copy" and out_axis >= len(src) or entry[0] == "copy" and src[out_axis] != dst[out_axis]:
            w.freeze(atoms, f"Reshape copying a changed axis at node {node.name}")
    w.set(node.outputs[0], result, node)

def shape_entries(w: Walk, reshape: ir.Node, rank: int) -> list[tuple | None] | None:
    """Where each entry of a Reshape shape comes from: ("literal", value, index, number,
    reading node), ("copy",) for 0, ("infer",) for -1, or None when computed."""
    value = reshape.inputs[1]
    c = constant(value)
    if c is not None:
        arr = c.numpy().reshape(-1)
        return [literal(value, i, int(v), reshape) for i, v in enumerate(arr)]
    node = value.producer()
    if node is None or node.op_type != "Concat":
        return [None] * rank
    entries: list[tuple | None] = []
    for piece in node.inputs:
        pc = constant(piece)
        if pc is not None:
            entries += [literal(piece, i, int(v), node) for i, v in enumerate(pc.numpy().reshape(-1))]
        else:
            shape = w.shape(piece)
            if shape is None or not isinstance(shape[0] if shape else 1, int):
                return None
            entries += [None] * (int(np.prod(shape)) if shape else 1)
    return entries if len(entries) == rank else None

@rule("Expand")
def expand(w: Walk, node: ir.Node) -> None:
    """Broadcast to a constant shape: a channel axis passes through where its entry is 1
    (kept as is) or C (rewritten to the kept count); anything else freezes."""
    axes = w.tracked(node.inputs[0])
    if not axes:
        return
    target, rank = ints(node.inputs[1]), w.rank(node.inputs[0])
    if target is None or rank is None:
        w.freeze_inputs(node, "Expand with computed shape")
        return
    shift = max(len(target) - rank, 0)
    lead = max(rank - len(target), 0)  # input axes with no entry in the shape
    out: dict[int, np.ndarray] = {}
    for a, atoms in axes.items():
        j = a + shift - lead
        entry = target[j] if j >= 0 else 1
        if entry not in (1, len(atoms)):
            w.freeze_inputs(node, "Expand broadcasting a channel axis")
            return
        if entry == len(atoms) and entry != 1:
            extra = {"source": node.inputs[1], "index": j, "consumer": node}
            w.edit(Edit("shape", node, [atoms], extra))
        out[a + shift] = atoms
    w.set(node.outputs[0], out, node)
