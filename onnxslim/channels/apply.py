"""The edit step: slice every member, rewrite group attributes and shape constants, drop
emptied branches. The analysis is stale afterwards."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from .. import shapes
from ..constants import add_initializer, constant, drop_if_unused, remove_dead
from .mapping import Folded

if TYPE_CHECKING:
    from .analysis import ChannelAnalysis
    from .groups import ChannelGroup


def apply(analysis: ChannelAnalysis, keep: Mapping[ChannelGroup, np.ndarray | Sequence[int]]) -> dict[str, int]:
    """Keep only the given slots of each group.

    Every member is sliced, ``group`` attributes and Reshape/Expand/Split/Slice constants are
    rewritten, value shapes updated. A group kept with no slot (see ``can_empty``) leaves
    whole: Concats drop the inputs it empties and the dead nodes go. The analysis cannot be
    applied twice.
    """
    a = analysis
    if a._applied:
        raise RuntimeError("this channel analysis was already applied; analyse the model again")
    removed = np.zeros(len(a._slot_of_comp), dtype=bool)
    emptied = []
    for group, slots in keep.items():
        if group.id in a._frozen_ids or a._all_groups[group.id] is not group:
            raise ValueError(f"group {group.name!r} is frozen or not from this analysis")
        slots = np.unique(np.asarray(slots, dtype=np.int64))
        if len(slots) and (slots.min() < 0 or slots.max() >= group.size):
            raise ValueError(f"group {group.name!r}: keep must name 1..{group.size} slots in range")
        if len(slots) == 0:
            emptied.append(group)
        gone = np.ones(group.size, dtype=bool)
        gone[slots] = False
        comps = np.flatnonzero(a._group_of_comp == group.id)
        removed[comps[gone[a._slot_of_comp[comps]]]] = True
    empty = left_empty(a, removed)
    if empty is None and emptied:
        raise ValueError(
            f"group {emptied[0].name!r}: keep must name 1..{emptied[0].size} slots in range "
            "(none only where the channels reach the rest of the graph through Concat inputs alone)"
        )
    if empty is None:
        # A group of several layers (joined by a Concat and an Add) can lose every channel of
        # one layer; where that layer's output cannot leave (it reaches more than Concats),
        # it keeps its first channel rather than become a 0-channel Conv.
        for axes in a._axes.values():
            for atoms in axes.values():
                if len(atoms) and removed[a._comp[atoms]].all():
                    removed[a._comp[atoms[0]]] = False
        empty = left_empty(a, removed) or set()
    # Values left with no channel feed only Concats (which drop them) and dead code: the
    # producers go, with the weights only they read.
    groups_changed = len(np.unique(a._group_of_comp[removed]))
    total = int(removed.sum())
    a._applied = True
    if not removed.any():
        return {"groups": 0, "channels_removed": 0, "nodes_removed": 0}

    def kept(atoms: np.ndarray) -> np.ndarray:
        return ~removed[a._comp[atoms]]

    for ref in a._refs.values():
        mask = kept(ref.atoms)
        if mask.all():
            continue
        if ref.private:
            _write_private(ref, np.flatnonzero(mask))
            continue
        ref.tensor.take(np.flatnonzero(mask), ref.axis)
        for view in ref.views:
            if view.shape is not None:
                view.shape = ir.Shape(ref.tensor.shape)
            _drop_untyped_shapes(view)
    writes: dict[int, list] = {}
    for edit in a._edits:
        counts = [int(kept(x).sum()) for x in edit.atoms]
        if all(c == len(x) for c, x in zip(counts, edit.atoms)):
            continue
        if edit.kind == "group":
            edit.node.attributes["group"] = ir.AttrInt64("group", counts[0])
        elif edit.kind == "shape":
            src, index, reader = edit.extra["source"], edit.extra["index"], edit.extra["consumer"]
            scale = edit.extra.get("scale", 1)  # an entry that counts several channels per slot
            _queue(writes, src, reader, {index: counts[0] * scale})
        elif edit.kind == "piece":  # a computed one-entry Concat input becomes the kept count
            concat, index = edit.extra["concat"], edit.extra["index"]
            old = concat.inputs[index]
            dtype = old.dtype.numpy() if old.dtype is not None else np.int64
            concat.replace_input_with(index, add_initializer(concat.graph, f"{concat.name or 'shape'}_{index}_pruned", np.array([counts[0]], dtype)))
            if old.producer() is not None:
                remove_dead([old.producer()])
        elif edit.kind == "split":
            _write_split(edit.node, counts)
        elif edit.kind == "slice":
            mask = kept(edit.atoms[0])
            lo = int(mask[: edit.extra["lo"]].sum())
            hi = lo + int(mask[edit.extra["lo"] : edit.extra["hi"]].sum())
            for which, source, index, reader in edit.extra["rewrite"]:
                _queue(writes, source, reader, {index: lo if which == "lo" else hi})
        elif edit.kind == "concat" and edit.node.outputs[0] not in empty:
            _set_inputs(edit.node, [v for v in edit.node.inputs if v not in empty])
    _flush(writes)
    for value, axes in a._axes.items():
        if value.shape is None or value.is_graph_input():
            continue
        # Only axes that lost channels are rewritten: symbolic dims elsewhere (and declared
        # graph-output dims, which are frozen) stay as they were.
        dims = list(value.shape)
        shrunk = False
        for axis, atoms in axes.items():
            count = int(kept(atoms).sum())
            if axis < len(dims) and count != len(atoms):
                dims[axis] = None if isinstance(atoms, Folded) else count  # batch × heads: inferred
                shrunk = True
        if shrunk:
            value.shape = ir.Shape(dims)
    dead = remove_dead([v.producer() for v in empty if v.producer() is not None])
    shapes.refresh_shapes(a.model)  # strict: raises ShapeInferenceError on an inconsistent result
    return {"groups": groups_changed, "channels_removed": total, "nodes_removed": dead}


def left_empty(analysis: ChannelAnalysis, removed: np.ndarray) -> set[ir.Value] | None:
    """The values that ``removed`` (per component) leaves without channels on some axis, or
    None when one would still be read: each may feed only Concats (which drop it) and nodes
    whose outputs are all left empty too (dead code, removed with their weights)."""
    a = analysis
    empty = {v for v, axes in a._axes.items() if any(len(x) and removed[a._comp[x]].all() for x in axes.values())}
    concats = {id(e.node) for e in a._edits if e.kind == "concat"}
    for value in empty:
        if value.is_graph_output():
            return None
        for use in value.uses():
            if id(use.node) not in concats and not all(o in empty for o in use.node.outputs):
                return None
    return empty


def _write_private(ref, indices: np.ndarray) -> None:
    """A uniform constant de-duplicated by the exporter: each reader gets a sliced copy."""
    array = np.take(ref.tensor.numpy(), indices, axis=ref.axis)
    readers = {id(n): n for n, _, _ in ref.uses}
    for view in ref.views:
        for node in readers.values():
            for i, inp in enumerate(node.inputs):
                if inp is view:
                    node.replace_input_with(i, add_initializer(node.graph, f"{view.name or 'const'}_pruned", array))
        if view.producer() is not None:
            remove_dead([view.producer()])
        else:
            drop_if_unused(view)


def _queue(writes: dict[int, list], value: ir.Value, reader: ir.Node, entries: Mapping[int, int]) -> None:
    slot = writes.setdefault(id(value), [value, {}])
    slot[1].setdefault(id(reader), [reader, {}])[1].update(entries)


def _flush(writes: dict[int, list]) -> None:
    """Write integer constants; a constant read by other nodes gets a private copy per reader."""
    for value, readers in writes.values():
        tensor = constant(value)
        base = tensor.numpy().reshape(-1)
        if value.dtype is None:  # untyped Constant output: ConstantTensor.replace would assume float
            value.dtype = ir.DataType.from_numpy(base.dtype)
        arrays = {}
        for key, (reader, entries) in readers.items():
            arr = base.copy()
            for i, v in entries.items():
                arr[i] = v
            arrays[key] = (reader, arr.reshape(tensor.shape))
        uses = {id(u.node) for u in value.uses()}
        same = len({x.tobytes() for _, x in arrays.values()}) == 1
        if uses <= set(arrays) and same and tensor.can_replace and tensor.exclusive:
            tensor.replace(next(iter(arrays.values()))[1])
            continue
        for reader, arr in arrays.values():
            fresh = add_initializer(reader.graph, f"{value.name or 'shape'}_pruned", arr)
            for i, inp in enumerate(reader.inputs):
                if inp is value:
                    reader.replace_input_with(i, fresh)
        drop_if_unused(value)


def _set_inputs(node: ir.Node, values: Sequence[ir.Value]) -> None:
    for i, value in enumerate(values):
        node.replace_input_with(i, value)
    node.resize_inputs(len(values))


def _drop_untyped_shapes(view: ir.Value) -> None:
    """A shape without an element type cannot be serialised; dequantization chains get one."""
    producer = view.producer()
    chain = [view] + ([i for i in producer.inputs if i is not None] if producer is not None else [])
    for value in chain:
        if value.dtype is None and value.shape is not None:
            value.shape = None


def _write_split(node: ir.Node, counts: list[int]) -> None:
    sizes = np.array(counts, dtype=np.int64)
    if "split" in node.attributes:
        node.attributes["split"] = ir.AttrInt64s("split", counts)
        return
    if "num_outputs" in node.attributes:
        del node.attributes["num_outputs"]
    old = node.inputs[1] if len(node.inputs) > 1 else None
    fresh = add_initializer(node.graph, f"{node.name or 'split'}_sizes", sizes)
    if old is None:
        node.resize_inputs(2)
    node.replace_input_with(1, fresh)
    if old is not None:
        drop_if_unused(old)
