"""The analysis object: walks the graph with the rules, then turns atoms into groups."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from .. import stats
from ..constants import iter_nodes
from . import apply as _apply
from . import macs as _macs
from .groups import Activation, ChannelGroup, FrozenGroup, Member
from .walk import Walk, label

_LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Gather")


class ChannelAnalysis(Walk):
    """The channel groups of a model. Build with :func:`analyze`."""

    def __init__(self, model: ir.Model, *, freeze_residual_stream: bool = True):
        super().__init__(model)
        self.freeze_residual_stream = freeze_residual_stream
        self._base_macs: dict[tuple, tuple[dict[int, int], int]] = {}  # by input shapes
        self._applied = False
        self.walk(model.graph)
        counted = {id(node) for node, _ in self.layers}
        for node in iter_nodes(model):  # every MAC op counts, at a fixed width where no group touches it
            if node.op_type in stats._MAC_OPS and node.domain in ("", "ai.onnx") and id(node) not in counted:
                self.layers.append((node, []))
        for out in model.graph.outputs:
            for atoms in self.tracked(out).values():
                self.freeze(atoms, f"graph output {out.name!r}")
        self._finish()

    # ---- finishing -----------------------------------------------------------------

    def _check_refs(self) -> None:
        """A sliced constant must be read only by nodes that registered it (a private copy of a
        uniform constant is written for its reader alone)."""
        for ref in self._refs.values():
            readers = {id(n) for n, _, _ in ref.uses}
            chain = set()
            for view in ref.views:
                producer = view.producer()
                if producer is not None:
                    chain.add(id(producer))
                    chain.update(id(i.producer()) for i in producer.inputs if i is not None and i.producer() is not None)
            for view in ref.views + ref.tensor.storage_values:
                if view.is_graph_output():
                    self.freeze(ref.atoms, f"weight {ref.tensor.name!r} is a graph output")
                if ref.private:
                    continue
                for use in view.uses():
                    if id(use.node) not in readers and id(use.node) not in chain:
                        self.freeze(ref.atoms, f"weight {ref.tensor.name!r} is also read by {label(use.node)}")

    def _check_factors(self) -> None:
        """A batch × heads product rewritten for fewer heads must reach only the Reshapes that
        fold or unfold those heads (through Unsqueeze/Concat/Cast), or another reader would
        see the new count."""
        by_mul: dict[int, tuple[ir.Node, set[int], list[np.ndarray]]] = {}
        for mul, reshape, atoms in self.factors:
            entry = by_mul.setdefault(id(mul), (mul, set(), []))
            entry[1].add(id(reshape))
            entry[2].append(atoms)
        for mul, reshapes, atoms in by_mul.values():
            readers, stack, escapes = [], list(mul.outputs[0].uses()), mul.outputs[0].is_graph_output()
            while stack:
                use = stack.pop()
                if use.node.op_type in ("Unsqueeze", "Squeeze", "Cast", "Concat", "Identity") and use.idx == 0 or use.node.op_type == "Concat":
                    stack.extend(use.node.outputs[0].uses())
                    escapes = escapes or use.node.outputs[0].is_graph_output()
                else:
                    readers.append(use)
            if escapes or any(id(u.node) not in reshapes or u.node.op_type != "Reshape" or u.idx != 1 for u in readers):
                for a in atoms:
                    self.freeze(a, f"batch × heads product {label(mul)} also read elsewhere")

    def _finish(self) -> None:
        self._check_refs()
        self._check_factors()
        n = self.table.count
        comp, group_of = self.table.resolve()
        n_comp = len(group_of)
        self._comp = comp
        self._group_of_comp = group_of
        n_groups = int(group_of.max()) + 1 if n_comp else 0
        first_atom = np.full(n_comp, n, dtype=np.int64)
        np.minimum.at(first_atom, comp, np.arange(n))
        order = np.lexsort((first_atom, group_of))  # components by group, then by creation
        slot = np.empty(n_comp, dtype=np.int64)
        sizes = np.bincount(group_of, minlength=n_groups)
        starts = np.cumsum(sizes) - sizes
        slot[order] = np.arange(n_comp) - np.repeat(starts, sizes)
        self._slot_of_comp = slot

        groups = [ChannelGroup(g, int(sizes[g]), "conv", "", [], [], [], []) for g in range(n_groups)]
        self._all_groups = groups
        for ref in self._refs.values():
            uses = list({(id(node), role, kind): (node, role, kind) for node, role, kind in ref.uses}.values())
            for group, positions, slots in self._split(ref.atoms):
                for node, role, kind in uses:
                    member = Member(ref.tensor, ref.axis, positions, slots, node, role)
                    (group.producers if kind == "producer" else group.consumers).append(member)
        consumer_nodes = {id(m.node) for g in groups for m in g.consumers}
        for value, axes in self._axes.items():
            producer = value.producer()
            for axis, atoms in axes.items():
                for group, positions, slots in self._split(atoms):
                    is_output = producer is not None and producer.op_type in _LAYER_OPS and any(m.node is producer for m in group.producers)
                    role = "output" if is_output else "internal"
                    if any(id(u.node) in consumer_nodes for u in value.uses()):
                        role = "input" if role == "internal" else role
                    group.activations.append(Activation(value, axis, positions, slots, role))
        for node, atoms in self._tracked_nodes:
            for g in np.unique(group_of[comp[atoms]]):
                if all(n is not node for n in groups[g].nodes):
                    groups[g].nodes.append(node)

        for a, b, scale, reason in self.counts:
            ca, na = np.unique(comp[a], return_counts=True)
            cb, nb = np.unique(comp[b], return_counts=True)
            if not np.array_equal(ca, cb) or any(int(x) * scale != int(y) for x, y in zip(na, nb)):
                self.freeze(a, reason)
                self.freeze(b, reason)
        reasons: dict[int, list[str]] = {}
        for atoms, reason in self.table.frozen:
            for g in np.unique(group_of[comp[atoms]]):
                reasons.setdefault(int(g), []).append(reason)
        for atoms in self.head_atoms:
            for g in np.unique(group_of[comp[atoms]]):
                groups[g].kind = "heads"
        for atoms, node in self.ln_atoms:
            for g in np.unique(group_of[comp[atoms]]):
                groups[g].kind = "residual"
                if self.freeze_residual_stream:
                    reasons.setdefault(int(g), []).append(f"residual stream (LayerNormalization at node {node.name}); pass residual=true to prune it")
        for group in groups:
            weights = [m for m in group.producers if m.role == "weight"]
            if weights:
                group.name = weights[0].node.name or weights[0].tensor.name
                ops = {m.node.op_type for m in weights}
                if group.kind == "conv" and not ops <= {"Conv", "ConvTranspose"}:
                    group.kind = "linear"
                width = len(weights[0].positions) // max(len(np.unique(weights[0].slots)), 1)
                group.slot_width = max(width, 1)
            else:
                reasons.setdefault(group.id, []).append("no layer produces these channels")
        self.groups = [g for g in groups if g.id not in reasons]
        self.frozen = [FrozenGroup(groups[g], r[0], list(dict.fromkeys(r))) for g, r in sorted(reasons.items())]
        self._frozen_ids = set(reasons)

    def _split(self, atoms: np.ndarray) -> Iterable[tuple[ChannelGroup, np.ndarray, np.ndarray]]:
        comps = self._comp[atoms]
        gids = self._group_of_comp[comps]
        for g in np.unique(gids):
            positions = np.flatnonzero(gids == g)
            yield self._all_groups[g], positions, self._slot_of_comp[comps[positions]]

    def _kept_components(self, keep: Mapping[ChannelGroup, np.ndarray | Sequence[int]] | None) -> np.ndarray:
        kept = np.ones(len(self._slot_of_comp), dtype=bool)
        for group, slots in (keep or {}).items():
            mask = np.zeros(group.size, dtype=bool)
            mask[np.asarray(slots, dtype=np.int64)] = True
            comps = np.flatnonzero(self._group_of_comp == group.id)
            kept[comps] = mask[self._slot_of_comp[comps]]
        return kept

    # ---- predictions and edits -----------------------------------------------------

    def predict(
        self,
        keep: Mapping[ChannelGroup, np.ndarray | Sequence[int]] | None = None,
        input_shapes: Mapping[str, Sequence[int]] | None = None,
        sample: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, int]:
        """MACs (Conv/ConvTranspose/Gemm/MatMul) and parameters now and after keeping ``keep``
        (see :func:`onnxslim.channels.macs.predict`)."""
        return _macs.predict(self, keep, input_shapes, sample)

    def apply(self, keep: Mapping[ChannelGroup, np.ndarray | Sequence[int]]) -> dict[str, int]:
        """Keep only the given slots of each group; returns {"groups": n, "channels_removed": n,
        "nodes_removed": n} (see :func:`onnxslim.channels.apply.apply`)."""
        return _apply.apply(self, keep)

    def can_empty(self, groups: Iterable[ChannelGroup]) -> bool:
        """Whether ``groups`` may lose every slot together (``apply`` with no slot kept)."""
        removed = np.zeros(len(self._slot_of_comp), dtype=bool)
        for group in groups:
            removed[self._group_of_comp == group.id] = True
        return _apply.left_empty(self, removed) is not None
