"""Concat, Split and Slice: channels at offsets along one axis."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..mapping import same_slot_in_every_block
from ..shape_entries import entries, resolved
from ..walk import Edit, Walk, attr_int, attr_ints, given_ints, input_at, ints, label
from . import rule


@rule("Concat")
def concat(w: Walk, node: ir.Node) -> None:
    inputs = [i for i in node.inputs]
    if not any(w.tracked(i) for i in inputs):
        return
    rank = w.rank(node.outputs[0])
    if rank is None:
        w.freeze_inputs(node, "unknown rank")
        return
    axis = attr_int(node, "axis", 0) % rank
    out: dict[int, np.ndarray] = {}
    for inp in inputs:
        for a, atoms in w.tracked(inp).items():
            if a == axis:
                continue
            if a in out:
                w.union(out[a], atoms)
            else:
                out[a] = atoms
    parts = []
    for inp in inputs if any(w.tracked(i).get(axis) is not None for i in inputs) else ():
        atoms = w.tracked(inp).get(axis)
        if atoms is None:
            shape = w.shape(inp)
            dim = shape[axis] if shape is not None else None
            if not isinstance(dim, int):
                w.freeze_inputs(node, "Concat of an input with unknown width")
                return
            atoms = w.new_atoms(dim)
            w.freeze(atoms, f"Concat input {inp.name!r} at node {node.name} is not produced by a prunable layer")
        parts.append(atoms)
    if parts:
        out[axis] = np.concatenate(parts)
        w.edit(Edit("concat", node, parts, {}))
    for a, atoms in out.items():
        if a == axis:
            continue
        for inp in inputs:
            if a not in w.tracked(inp):
                shape = w.shape(inp)
                if shape is None or shape[a] != 1:
                    w.freeze(atoms, f"{label(node)} joins channels with a fixed-width input")
    w.set(node.outputs[0], out, node)

@rule("Split")
def split(w: Walk, node: ir.Node) -> None:
    axes = w.tracked(node.inputs[0])
    if not axes:
        return
    rank = w.rank(node.inputs[0])
    if rank is None:
        w.freeze_inputs(node, "unknown rank")
        return
    axis = attr_int(node, "axis", 0) % rank
    outs = list(node.outputs)
    if axis not in axes:
        for out in outs:
            w.set(out, axes, node)
        return
    atoms = axes[axis]
    given, sizes = given_ints(node, "split", 1)
    if given and sizes is None:
        w.freeze_inputs(node, "Split with computed sizes")
        return
    if not given:
        n = len(outs)
        step = -(-len(atoms) // n)
        sizes = [min(step, len(atoms) - i * step) for i in range(n)]
    bounds = np.cumsum([0, *sizes])
    pieces = [atoms[bounds[i] : bounds[i + 1]] for i in range(len(outs))]
    for out, piece in zip(outs, pieces):
        w.set(out, {**axes, axis: piece}, node)
    w.edit(Edit("split", node, pieces, {}))

@rule("Slice")
def slice_(w: Walk, node: ir.Node) -> None:
    """Slice on a channel axis: its bounds may be literals (rewritten to kept counts) or read
    at run time from a channel count (chunk: ``(C + 1) // 2``; the counts must then agree)."""
    axes = w.tracked(node.inputs[0])
    if not axes:
        return
    rank = w.rank(node.inputs[0])
    starts, ends = entries(w, node.inputs[1], node), entries(w, node.inputs[2], node)
    sl_axes = ints(input_at(node, 3)) if input_at(node, 3) is not None else None
    steps = ints(input_at(node, 4)) if input_at(node, 4) is not None else None
    if starts is None or ends is None or rank is None or (sl_axes is None and input_at(node, 3) is not None):
        w.freeze_inputs(node, "Slice with computed bounds")
        return
    sl_axes = [a % rank for a in (sl_axes if sl_axes is not None else range(len(starts)))]
    out = dict(axes)
    for j, a in enumerate(sl_axes):
        if a not in axes:
            continue
        if steps is None and input_at(node, 4) is not None or steps is not None and steps[j] != 1:
            w.freeze_inputs(node, "strided Slice on channels")
            return
        n = len(axes[a])
        bounds = [resolved(w, starts[j]), resolved(w, ends[j])]
        if not all(isinstance(b, int) for b in bounds):
            w.freeze_inputs(node, "Slice with computed bounds")
            return
        lo, hi, _ = slice(*bounds).indices(n)
        hi = max(hi, lo)
        out[a] = axes[a][lo:hi]
        rewrite = []
        for which, entry, bound, value in (("lo", starts[j], lo, bounds[0]), ("hi", ends[j], hi, bounds[1])):
            if entry.kind == "literal":
                rewrite.append((which, entry.value, entry.index, entry.reader))
            elif entry.kind == "dim" and entry.offset == 0 and not entry.times and entry.axis in w.tracked(entry.source):
                source = w.tracked(entry.source)[entry.axis]
                parts = 1 / entry.scale
                if source is axes[a] and parts.denominator == 1 and n % int(parts) == 0 and bound % (n // int(parts)) == 0:
                    # chunk(k) of this very axis: every chunk keeps the same slots, so counts agree
                    same_slot_in_every_block(axes[a], int(parts), w.union)
                reason = f"Slice bound read from another channel count at node {node.name}"
                w.same_count(w.tracked(entry.source)[entry.axis], axes[a][:bound], entry.scale, reason)
            elif not (which == "lo" and value == 0 or which == "hi" and value >= n and entry.kind == "fixed"):
                w.freeze_inputs(node, "Slice with computed bounds")
                return
        w.edit(Edit("slice", node, [axes[a]], {"lo": lo, "hi": hi, "rewrite": rewrite}))
    w.set(node.outputs[0], out, node)
