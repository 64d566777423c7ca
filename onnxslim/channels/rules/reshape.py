"""Axis mappings: Transpose, (Un)Squeeze, Flatten, Reshape and Expand."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from ..mapping import align, merged_atoms, outer_blocks, same_slot_in_every_block
from ..shape_entries import entries, resolved, target_shape
from ..walk import Dim, Edit, Walk, attr_int, attr_ints, ints, label
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
    for shape in (w.shape, w.resolved_shape):  # symbolic inference only where onnx's fails
        src, inferred = shape(node.inputs[0]), shape(node.outputs[0])
        found = entries(w, node.inputs[1], node)
        dst = target_shape(w, found, src, inferred) if found is not None and src is not None else inferred
        segments = align(src, dst) if src is not None and dst is not None else None
        if segments is not None:
            break
    if src is None or dst is None:
        w.freeze_inputs(node, "Reshape of unknown shape")
        return
    if segments is None:
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
        dims = [dst[o] for o in out_axes]
        if not all(isinstance(d, int) for d in dims):
            w.freeze_inputs(node, "Reshape split with unknown sizes")
            return
        split = [o for o, d in zip(out_axes, dims) if d > 1]
        atoms = axes[inside[0]]
        if len(split) == 1:  # only unit axes added
            result[split[0]] = atoms
        elif len(split) == 2 and _shuffled(node, *split):  # channel shuffle: same slot in every group
            result[split[1]] = same_slot_in_every_block(atoms, dst[split[0]], w.union)
        elif len(split) == 2:  # heads: whole blocks of the outer axis go together
            outer = split[0]
            result[outer] = outer_blocks(atoms, dst[outer], w.union)
            w.head_atoms.append(result[outer])
        elif len(split) == 3:  # [3, heads, head_dim] (one qkv projection): the same heads in q, k and v
            qkv, heads = split[0], split[1]
            result[heads] = outer_blocks(same_slot_in_every_block(atoms, dst[qkv], w.union), dst[heads], w.union)
            w.head_atoms.append(result[heads])
        else:
            w.freeze_inputs(node, "Reshape splitting channels into more than three axes")
            return
    _check_entries(w, node, found, src, dst, result)
    w.set(node.outputs[0], result, node)


def _shuffled(node: ir.Node, first: int, second: int) -> bool:
    """The Reshape output feeds only a Transpose that swaps the two split axes (ShuffleNet)."""
    uses = node.outputs[0].uses()
    if len(uses) != 1 or uses[0].node.op_type != "Transpose":
        return False
    perm = attr_ints(uses[0].node, "perm")
    return perm is not None and perm[first] == second and perm[second] == first


def _check_entries(w: Walk, node: ir.Node, found, src, dst, result) -> None:
    """Every output channel axis needs a shape entry that follows the kept count: a literal
    (rewritten), -1, 0 over an unchanged axis, or the same channels' dim read at run time."""
    for j in range(len(dst)):
        entry = found[j] if found is not None and j < len(found) else None
        atoms = result.get(j)
        if atoms is None:
            if entry is not None and entry.kind == "dim" and entry.axis in w.tracked(entry.source):
                w.freeze(w.tracked(entry.source)[entry.axis], f"channel count used as a fixed dim by {label(node)}")
            continue
        if entry is None or entry.kind == "unknown":
            w.freeze(atoms, f"Reshape with computed shape at node {node.name}")
        elif entry.is_infer:
            continue
        elif entry.is_copy:
            if j >= len(src) or src[j] != dst[j]:
                w.freeze(atoms, f"Reshape copying a changed axis at node {node.name}")
        elif entry.kind == "literal" and entry.number == len(atoms):
            w.edit(Edit("shape", node, [atoms], {"source": entry.value, "index": entry.index, "consumer": entry.reader}))
        elif entry.piece is not None and resolved(w, entry) == len(atoms):
            # a computed entry alone in its Concat input becomes the literal kept count (timm's
            # reshape(B, N, C) with C read from the block input: no longer the heads' width)
            w.edit(Edit("piece", node, [atoms], {"concat": entry.piece[0], "index": entry.piece[1]}))
        elif entry.kind == "dim" and entry.offset == 0 and entry.axis in w.tracked(entry.source):
            # read at run time from another channel axis: its kept count must give this one's
            reason = f"Reshape entry {j} read from another channel count at node {node.name}"
            w.same_count(w.tracked(entry.source)[entry.axis], atoms, entry.scale, reason)
        else:
            w.freeze(atoms, f"Reshape with a fixed channel count at node {node.name}")


@rule("Expand")
def expand(w: Walk, node: ir.Node) -> None:
    """Broadcast to a shape: a channel axis passes through where its entry is 1 (kept as is),
    C (a literal, rewritten to the kept count) or the same channels' dim read at run time."""
    axes = w.tracked(node.inputs[0])
    if not axes:
        return
    found, rank = entries(w, node.inputs[1], node), w.rank(node.inputs[0])
    if found is None or rank is None:
        w.freeze_inputs(node, "Expand with computed shape")
        return
    shift = max(len(found) - rank, 0)
    lead = max(rank - len(found), 0)  # input axes with no entry in the shape
    out: dict[int, np.ndarray] = {}
    for a, atoms in axes.items():
        j = a + shift - lead
        entry = found[j] if j >= 0 else None
        size = resolved(w, entry) if entry is not None else 1
        if size == 1:
            pass
        elif entry.kind == "literal" and size == len(atoms):
            w.edit(Edit("shape", node, [atoms], {"source": entry.value, "index": entry.index, "consumer": entry.reader}))
        elif entry.kind == "dim" and entry.offset == 0 and entry.axis in w.tracked(entry.source):
            reason = f"Expand entry {j} read from another channel count at node {node.name}"
            w.same_count(w.tracked(entry.source)[entry.axis], atoms, entry.scale, reason)
        else:
            w.freeze_inputs(node, "Expand broadcasting a channel axis")
            return
        out[a + shift] = atoms
    for j, entry in enumerate(found):
        if entry.kind == "dim" and entry.axis in w.tracked(entry.source) and j - shift + lead not in axes:
            w.freeze(w.tracked(entry.source)[entry.axis], f"channel count used as a fixed dim by {label(node)}")
    w.set(node.outputs[0], out, node)
