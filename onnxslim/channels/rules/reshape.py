"""Axis mappings: Transpose, (Un)Squeeze, Flatten, Reshape and Expand."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from fractions import Fraction

import numpy as np
import onnx_ir as ir

from ..mapping import Folded, Product, align, axis_size, folded, merged_atoms, outer_blocks, same_slot_in_every_block
from ..shape_entries import entries, resolved, target_shape
from ..walk import Dim, Edit, Walk, attr_int, attr_ints, given_ints, ints, label
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
    _, new = given_ints(node, "axes", 1)
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
    given, gone = given_ints(node, "axes", 1)
    shape = w.shape(node.inputs[0])
    if not given and shape is not None and all(isinstance(d, int) for d in shape):
        # no axes: every size-1 dim goes (computed axes stay unknown, whatever the shape)
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
        src, inferred = _known_sizes(shape(node.inputs[0]), axes), shape(node.outputs[0])
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
        atoms = axes[inside[0]]
        heads = _fold(w, atoms, inside[0], in_axes, out_axes, src, dst) if len(inside) == 1 else None
        if heads is not None:  # [batch, C] → [batch·heads, head_dim]
            result[out_axes[0]] = heads
            w.head_atoms.append(heads)
            continue
        if len(inside) > 1 or (len(in_axes) > 1 and len(out_axes) > 1):
            w.freeze_inputs(node, "Reshape that mixes channel axes")
            return
        if isinstance(atoms, Folded):  # [batch·heads] stays, or → [batch, heads]: unfolded
            if len(in_axes) == len(out_axes) == 1 and Product.of(dst[out_axes[0]]) == axis_size(atoms):
                result[out_axes[0]] = atoms
            elif len(in_axes) == 1 and len(out_axes) == 2 and Product.of(dst[out_axes[0]]) == Product.of(atoms.outer) and dst[out_axes[1]] == len(atoms):
                result[out_axes[1]] = np.asarray(atoms)
            else:
                w.freeze_inputs(node, "Reshape of heads folded into the batch axis")
                return
            continue
        if len(out_axes) == 1:  # identity or merge
            merged = merged_atoms(atoms, in_axes.index(inside[0]), _solve_one([src[a] for a in in_axes], dst[out_axes[0]]))
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
        if len(split) == 1:  # only unit axes added
            result[split[0]] = atoms
        elif len(split) == 2 and _shuffled(node, *split):  # channel shuffle: same slot in every group
            result[split[1]] = same_slot_in_every_block(atoms, dst[split[0]], w.union)
        elif len(split) == 2 and _selected_blocks(node.outputs[0], split[0]):
            # [3, C] taken apart by Gather (q, k, v of one projection): same slots in each
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


def _known_sizes(src: list[Dim] | None, axes: Mapping[int, np.ndarray]) -> list[Dim] | None:
    """Channel axes have the size of their atoms where inference left it unknown."""
    if src is None:
        return None
    src = list(src)
    for a, atoms in axes.items():
        if a < len(src) and not isinstance(src[a], int):
            src[a] = axis_size(atoms)
    return src


def _solve_one(dims: list[Dim], total: Dim) -> list[Dim]:
    """A merged run with one unknown size: the merged size divided by the others."""
    unknown = [i for i, d in enumerate(dims) if not isinstance(d, int)]
    known = int(np.prod([d for d in dims if isinstance(d, int)]))
    if len(unknown) == 1 and isinstance(total, int) and known and total % known == 0:
        dims = list(dims)
        dims[unknown[0]] = total // known
    return dims


def _fold(w: Walk, atoms: np.ndarray, axis: int, in_axes, out_axes, src, dst) -> np.ndarray | None:
    """``[outer, C] → [outer·heads, C/heads]`` with ``outer`` a run-time dim (the batch): the
    heads fold into the outer axis; whole heads go together (see :class:`Folded`)."""
    if isinstance(atoms, Folded) or len(in_axes) != 2 or len(out_axes) != 2 or in_axes[1] != axis:
        return None
    outer, width = Product.of(src[in_axes[0]]), dst[out_axes[1]]
    blocks = Product.of(dst[out_axes[0]])
    if outer is None or not outer.symbols or blocks is None or not isinstance(width, int) or width <= 0:
        return None
    n = len(atoms) // width
    if n * width != len(atoms) or blocks != outer * Product(n):
        return None
    return folded(outer_blocks(atoms, n, w.union), src[in_axes[0]])


def _selected_blocks(value: ir.Value, axis: int) -> bool:
    """Every reader ends, through Unsqueeze/Transpose/Squeeze, in a Gather of one constant
    index along ``axis`` (``qkv[0], qkv[1], qkv[2]``)."""
    uses = value.uses()
    if not uses:
        return False
    for use in uses:
        node = use.node
        if node.op_type == "Gather" and attr_int(node, "axis", 0) == axis and use.idx == 0:
            idx = ints(node.inputs[1])
            if idx is None or len(idx) != 1:
                return False
            continue
        if node.op_type == "Transpose":
            perm = attr_ints(node, "perm")
            if perm is None or not _selected_blocks(node.outputs[0], perm.index(axis)):
                return False
        elif node.op_type in ("Unsqueeze", "Squeeze") and len(node.inputs) > 1:
            given = ints(node.inputs[1])
            if given is None or any(a < 0 for a in given):
                return False
            if node.op_type == "Unsqueeze":
                pos = axis
                for a in sorted(given):
                    pos += a <= pos
            else:
                if axis in given:
                    return False
                pos = axis - sum(a < axis for a in given)
            if not _selected_blocks(node.outputs[0], pos):
                return False
        else:
            return False
    return True


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
        elif isinstance(atoms, Folded):  # batch × heads: the literal heads count is rewritten
            factor = entry.factor if entry.kind == "dim" else None
            if factor is None or factor.number != len(atoms) or Product.of(resolved(w, dataclasses.replace(entry, scale=Fraction(1), factor=None))) != Product.of(atoms.outer):
                w.freeze(atoms, f"Reshape with a fixed batch × heads entry at node {node.name}")
            else:
                w.edit(Edit("shape", node, [atoms], {"source": factor.value, "index": factor.index, "consumer": factor.reader}))
                w.factors.append((factor.reader, node, atoms))
        elif entry.kind == "literal" and entry.number == len(atoms):
            w.edit(Edit("shape", node, [atoms], {"source": entry.value, "index": entry.index, "consumer": entry.reader}))
        elif entry.piece is not None and resolved(w, entry) == len(atoms):
            # a computed entry alone in its Concat input becomes the literal kept count (timm's
            # reshape(B, N, C) with C read from the block input: no longer the heads' width)
            w.edit(Edit("piece", node, [atoms], {"concat": entry.piece[0], "index": entry.piece[1]}))
        elif entry.kind == "dim" and entry.offset == 0 and not entry.times and entry.axis in w.tracked(entry.source):
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
