"""Channel dependency groups: which weight slices must be removed together, and removing them.

This is the ONNX counterpart of Torch-Pruning's DepGraph. Every output channel a layer creates
(a Conv filter, a Gemm/MatMul column, an embedding feature) is an *atom*. The analysis walks the
graph once in order and records, for every tensor axis that carries channels, which atom each
position holds. Ops relate atoms:

* pass-through ops (BatchNormalization, activations, pools, Resize, Cast, ...) keep them;
* element-wise ops on two computed tensors (residual Add/Mul/Sub) *couple* them (union);
* Concat/Split/Slice offset them; Expand keeps them (its shape constant rewritten);
  Flatten/Reshape repeat them (C×H×W → features); a Reshape that splits features into
  [heads, head_dim] couples each head's atoms, so heads go whole;
* consumers (Conv/Gemm/MatMul input channels, depthwise Conv, LSTM inputs) read them.

Atoms that must go together form a *component* (one channel "slot"); all components created by
one layer form a :class:`ChannelGroup`. Each member of a group is a weight axis with, for each of
its positions that belongs to the group, the group slot it maps to (identity, offset, repeat or
per-head mapping all reduce to that one index array). Anything not understood *freezes* the groups
it touches with a reason naming the node; graph outputs freeze their groups.

``ChannelAnalysis.apply({group: keep_slots})`` slices every member, rewrites ``group``
attributes, Reshape/Expand/Split/Slice constants and value shapes. A group may keep no slot where
its channels reach the rest of the graph through Concat inputs alone (``can_empty``): the Concats
drop those inputs and the nodes left without uses go, with the weights only they read. The
analysis is then stale: analyse again before another change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from . import model_io, shapes, stats
from .constants import ConstantTensor, add_initializer, constant, drop_if_unused, model_constants, remove_dead

Dim = int | str | None

# --------------------------------------------------------------------------- public objects


@dataclasses.dataclass(eq=False)
class Member:
    """A weight axis (or part of one) whose positions belong to a group.

    ``positions[i]`` is an index along ``axis`` of ``tensor``; ``slots[i]`` the group channel it
    carries. ``role`` says what the slice is: "weight", "bias", "bn_scale", "bn_bias",
    "bn_mean", "bn_var", "scale" (per-channel Mul), "shift" (Add/Sub), "divisor" (Div),
    "slope" (PRelu), "ln_scale", "ln_bias", "param" (other element-wise constants).
    """

    tensor: ConstantTensor
    axis: int
    positions: np.ndarray
    slots: np.ndarray
    node: ir.Node
    role: str

    @property
    def mapping(self) -> str:
        """How the member's positions map to slots: identity, offset, repeat or heads."""
        return _mapping_kind(self.positions, self.slots, self.tensor.shape[self.axis])

    def __repr__(self) -> str:
        return f"Member({self.tensor.name!r}, axis={self.axis}, role={self.role}, {self.mapping}, n={len(self.positions)})"


@dataclasses.dataclass(eq=False)
class Activation:
    """A tensor that carries the group's channels along ``axis`` (for data-driven criteria).

    ``role``: "output" (a producer's output), "input" (read by a consumer), or "internal".
    """

    value: ir.Value
    axis: int
    positions: np.ndarray
    slots: np.ndarray
    role: str


@dataclasses.dataclass(eq=False)
class ChannelGroup:
    """Channels that are removed together. ``size`` slots; slot i is channel i of ``name``'s layer."""

    id: int
    size: int
    kind: str  # "conv", "linear", "heads" or "residual"
    name: str  # the first producer node's name
    producers: list[Member]
    consumers: list[Member]
    activations: list[Activation]
    nodes: list[ir.Node]  # every node whose tensors carry the group's channels
    #: Width of one slot in the producers' outputs (head_dim for heads, 1 otherwise).
    slot_width: int = 1

    def __repr__(self) -> str:
        return f"ChannelGroup({self.id}, {self.name!r}, kind={self.kind}, size={self.size})"

    def __hash__(self) -> int:
        return id(self)


@dataclasses.dataclass(eq=False)
class FrozenGroup:
    group: ChannelGroup
    reason: str  # the first reason found
    reasons: list[str]

    def __repr__(self) -> str:
        return f"FrozenGroup({self.group.name!r}, {self.reason!r})"


# --------------------------------------------------------------------------- internals


@dataclasses.dataclass(eq=False)
class _Ref:
    """One (stored constant, axis) registered by the nodes that read it."""

    tensor: ConstantTensor
    axis: int
    atoms: np.ndarray
    uses: list[tuple[ir.Node, str, str]]  # (node, role, "producer"|"consumer")
    views: list[ir.Value]


@dataclasses.dataclass(eq=False)
class _Edit:
    """A node attribute/constant to rewrite from kept counts (Split sizes, Slice bounds, ...)."""

    kind: str
    node: ir.Node
    atoms: list[np.ndarray]
    extra: dict


_UNARY = {
    "Relu", "Sigmoid", "Tanh", "Erf", "Gelu", "LeakyRelu", "Elu", "Selu", "Celu", "HardSigmoid",
    "HardSwish", "Softplus", "Softsign", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Cast",
    "Identity", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Tan", "Atan", "Asin", "Acos",
    "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Mish", "ThresholdedRelu", "Not", "IsNaN", "IsInf",
    "Clip", "Dropout", "Shrink", "CastLike", "BitwiseNot",
}  # fmt: skip
_BROADCAST = {
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where", "Equal",
    "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "Mod", "BitShift",
}  # fmt: skip
_POOLS = {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
_REDUCE = {
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
}  # fmt: skip
_CONST_ROLE = {"Mul": "scale", "Add": "shift", "Sub": "shift", "Div": "divisor", "PRelu": "slope"}


def _label(node: ir.Node) -> str:
    return f"{node.op_type} at node {node.name or '<unnamed>'}"


def _mapping_kind(positions: np.ndarray, slots: np.ndarray, length: int) -> str:
    if len(np.unique(slots)) < len(slots):
        return "repeat"
    if np.array_equal(slots, np.arange(len(slots))):
        return "identity" if len(positions) == length and np.array_equal(positions, slots) else "offset"
    return "offset"


def _ints(value: ir.Value | None) -> list[int] | None:
    c = constant(value)
    if c is None:
        return None
    arr = c.numpy()
    if arr.dtype.kind not in "iu":
        return None
    return [int(x) for x in arr.reshape(-1)]


def _attr_int(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return attr.as_int() if attr is not None else default


def _attr_ints(node: ir.Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    return list(attr.as_ints()) if attr is not None else None


def _infer_shapes(model: ir.Model) -> dict[str, list[Dim]]:
    """Shapes by value name from onnx shape inference on a skeleton (the model is untouched)."""
    try:
        proto = shapes.infer(model, strict=False)
    except shapes.ShapeInferenceError:  # shapes stay unknown; the groups they touch freeze
        proto = model_io.to_proto(model)
    found: dict[str, list[Dim]] = {}

    def record(vi: onnx.ValueInfoProto) -> None:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
            return
        found[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]

    def visit(graph: onnx.GraphProto) -> None:
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            record(vi)
        for node in graph.node:
            for attr in node.attribute:
                for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                    visit(sub)

    visit(proto.graph)
    return found


# --------------------------------------------------------------------------- the analysis


class ChannelAnalysis:
    """The channel groups of a model. Build with :func:`analyze`."""

    def __init__(self, model: ir.Model, *, freeze_residual_stream: bool = True):
        self.model = model
        self.freeze_residual_stream = freeze_residual_stream
        self._shapes = _infer_shapes(model)
        self._n_atoms = 0
        self._batches: list[np.ndarray] = []
        self._unions: list[tuple[np.ndarray, np.ndarray]] = []
        self._frozen: list[tuple[np.ndarray, str]] = []
        self._axes: dict[ir.Value, dict[int, np.ndarray]] = {}
        self._refs: dict[tuple[int, int], _Ref] = {}
        self._edits: list[_Edit] = []
        self._head_atoms: list[np.ndarray] = []
        self._ln_atoms: list[tuple[np.ndarray, ir.Node]] = []
        self._tracked_nodes: list[tuple[ir.Node, np.ndarray]] = []
        self._layers: list[tuple[ir.Node, list[np.ndarray]]] = []  # MAC ops and the atoms they scale with
        self._base_macs: dict[tuple, tuple[dict[int, int], int]] = {}  # by input shapes
        self._applied = False
        self._walk(model.graph)
        for out in model.graph.outputs:
            for atoms in self._axes.get(out, {}).values():
                self._freeze(atoms, f"graph output {out.name!r}")
        self._finish()

    # ---- atoms ---------------------------------------------------------------------

    def _new_atoms(self, n: int) -> np.ndarray:
        atoms = np.arange(self._n_atoms, self._n_atoms + n, dtype=np.int64)
        self._n_atoms += n
        self._batches.append(atoms)
        return atoms

    def _union(self, a: np.ndarray, b: np.ndarray) -> None:
        if a is not b:
            self._unions.append((a, b))

    def _freeze(self, atoms: np.ndarray, reason: str) -> None:
        self._frozen.append((atoms, reason))

    def _freeze_value(self, value: ir.Value | None, reason: str) -> None:
        for atoms in self._axes.get(value, {}).values() if value is not None else ():
            self._freeze(atoms, reason)

    def _set(self, value: ir.Value | None, axes: Mapping[int, np.ndarray], node: ir.Node) -> None:
        if value is None or not axes:
            return
        self._axes[value] = dict(axes)
        for atoms in axes.values():
            self._tracked_nodes.append((node, atoms))

    def _shape(self, value: ir.Value | None) -> list[Dim] | None:
        if value is None:
            return None
        c = constant(value)
        if c is not None:
            return list(c.shape)
        if value.name in self._shapes:
            return self._shapes[value.name]
        if value.shape is not None:
            return [d if isinstance(d, int) else (d.value if hasattr(d, "value") else None) for d in value.shape]
        return None

    def _rank(self, value: ir.Value | None) -> int | None:
        shape = self._shape(value)
        return None if shape is None else len(shape)

    def _ref(self, value: ir.Value, axis: int, atoms: np.ndarray | None, node: ir.Node, role: str, kind: str) -> np.ndarray | None:
        """Register constant ``value`` along ``axis``; returns its atoms (new ones if ``atoms`` is None)."""
        tensor = constant(value)
        if tensor is None:
            return None
        axis = axis % len(tensor.shape)
        key = (id(tensor.storage_values[0]), axis)
        ref = self._refs.get(key)
        if ref is None:
            if atoms is None:
                atoms = self._new_atoms(tensor.shape[axis])
            ref = self._refs[key] = _Ref(tensor, axis, atoms, [], [])
        elif atoms is not None:
            self._union(ref.atoms, atoms)
        ref.uses.append((node, role, kind))
        if all(v is not value for v in ref.views):
            ref.views.append(value)
        return ref.atoms

    # ---- walking -------------------------------------------------------------------

    def _walk(self, graph: ir.Graph) -> None:
        for node in graph:
            if node.domain not in ("", "ai.onnx"):
                self._unsupported(node)
                continue
            handler = getattr(self, f"_op_{node.op_type}", None)
            if node.op_type in _UNARY:
                handler = self._unary
            elif node.op_type in _BROADCAST:
                handler = self._broadcast
            elif node.op_type in _POOLS:
                handler = self._pool
            elif node.op_type in _REDUCE:
                handler = self._reduce
            if handler is None:
                self._unsupported(node)
            else:
                handler(node)

    def _unsupported(self, node: ir.Node) -> None:
        reason = f"unsupported op {node.op_type} at node {node.name or '<unnamed>'}"
        for inp in node.inputs:
            self._freeze_value(inp, reason)
        for attr in node.attributes.values():  # outer values read inside Loop/Scan bodies
            graphs = [attr.as_graph()] if attr.type == ir.AttributeType.GRAPH else (
                list(attr.as_graphs()) if attr.type == ir.AttributeType.GRAPHS else [])
            for sub in graphs:
                for inner in ir.traversal.RecursiveGraphIterator(sub):
                    for inp in inner.inputs:
                        self._freeze_value(inp, reason)

    def _tracked(self, value: ir.Value | None) -> dict[int, np.ndarray]:
        return self._axes.get(value, {}) if value is not None else {}

    def _freeze_inputs(self, node: ir.Node, reason: str) -> None:
        for inp in node.inputs:
            self._freeze_value(inp, f"{reason} ({_label(node)})")

    # ---- pass-through ops ----------------------------------------------------------

    def _unary(self, node: ir.Node) -> None:
        axes = self._tracked(node.inputs[0])
        for out in node.outputs:
            self._set(out, axes, node)

    def _pool(self, node: ir.Node) -> None:
        axes = self._tracked(node.inputs[0])
        if any(a != 1 for a in axes) or (len(node.outputs) > 1 and node.outputs[1].uses()):
            self._freeze_inputs(node, "pool over channels")
            return
        self._set(node.outputs[0], axes, node)

    def _broadcast(self, node: ir.Node) -> None:
        out = node.outputs[0]
        rank = self._rank(out)
        tracked_inputs = [i for i in node.inputs if self._tracked(i)]
        if not tracked_inputs:
            return
        if rank is None:
            self._freeze_inputs(node, "unknown rank")
            return
        result: dict[int, np.ndarray] = {}
        for inp in tracked_inputs:
            shift = rank - (self._rank(inp) or rank)
            for a, atoms in self._tracked(inp).items():
                if a + shift in result:
                    self._union(result[a + shift], atoms)
                else:
                    result[a + shift] = atoms
        role = _CONST_ROLE.get(node.op_type, "param")
        for inp in node.inputs:
            if inp is None or self._tracked(inp):
                continue
            shape = self._shape(inp)
            is_const = constant(inp) is not None
            for axis, atoms in result.items():
                local = axis - (rank - len(shape)) if shape is not None else None
                dim = shape[local] if shape is not None and 0 <= local < len(shape) else (1 if shape is not None else None)
                if dim == 1:
                    continue
                if is_const and dim == len(atoms):
                    self._ref(inp, local, atoms, node, role, "producer")
                else:
                    self._freeze(atoms, f"{_label(node)} combines channels with {inp.name!r}, which has no matching channels")
        self._set(out, result, node)

    def _op_BatchNormalization(self, node: ir.Node) -> None:
        axes = self._tracked(node.inputs[0])
        if not axes:
            return
        if len([o for o in node.outputs if o is not None]) > 1 or any(a != 1 for a in axes):
            self._freeze_inputs(node, "training-mode BatchNormalization")
            return
        for inp, role in zip(node.inputs[1:5], ("bn_scale", "bn_bias", "bn_mean", "bn_var")):
            if self._ref(inp, 0, axes[1], node, role, "producer") is None:
                self._freeze(axes[1], f"BatchNormalization with computed {role} at node {node.name}")
        self._set(node.outputs[0], axes, node)

    def _op_InstanceNormalization(self, node: ir.Node) -> None:
        axes = self._tracked(node.inputs[0])
        if not axes:
            return
        if any(a != 1 for a in axes):
            self._freeze_inputs(node, "normalization over channels")
            return
        for inp, role in zip(node.inputs[1:3], ("bn_scale", "bn_bias")):
            if self._ref(inp, 0, axes[1], node, role, "producer") is None:
                self._freeze(axes[1], f"computed {role} at {_label(node)}")
        self._set(node.outputs[0], axes, node)

    def _op_LayerNormalization(self, node: ir.Node) -> None:
        axes = self._tracked(node.inputs[0])
        if not axes:
            return
        rank = self._rank(node.inputs[0])
        axis = _attr_int(node, "axis", -1)
        if rank is None:
            self._freeze_inputs(node, "unknown rank")
            return
        axis %= rank
        normalized = [a for a in axes if a >= axis]
        if normalized and (axis != rank - 1 or len(node.outputs) > 1 and any(o.uses() for o in node.outputs[1:])):
            self._freeze_inputs(node, "normalization over several axes")
            return
        if normalized:
            atoms = axes[rank - 1]
            for inp, role in zip(node.inputs[1:3], ("ln_scale", "ln_bias")):
                if inp is not None and self._ref(inp, -1, atoms, node, role, "producer") is None:
                    self._freeze(atoms, f"computed {role} at {_label(node)}")
            self._ln_atoms.append((atoms, node))
        self._set(node.outputs[0], axes, node)

    def _op_Softmax(self, node: ir.Node) -> None:
        axes = self._tracked(node.inputs[0])
        rank = self._rank(node.inputs[0])
        if not axes:
            return
        if rank is None or (_attr_int(node, "axis", -1) % rank) in axes:
            self._freeze_inputs(node, "softmax over channels")
            return
        self._set(node.outputs[0], axes, node)

    _op_LogSoftmax = _op_Softmax
    _op_Hardmax = _op_Softmax

    def _reduce(self, node: ir.Node) -> None:
        axes = self._tracked(node.inputs[0])
        if not axes:
            return
        rank = self._rank(node.inputs[0])
        reduced = _attr_ints(node, "axes")
        if reduced is None and len(node.inputs) > 1 and node.inputs[1] is not None:
            reduced = _ints(node.inputs[1])
            if reduced is None:
                self._freeze_inputs(node, "reduction over computed axes")
                return
        if rank is None:
            self._freeze_inputs(node, "unknown rank")
            return
        if not reduced:
            reduced = [] if _attr_int(node, "noop_with_empty_axes", 0) else list(range(rank))
        reduced = {a % rank for a in reduced}
        if reduced & set(axes):
            self._freeze_inputs(node, "reduction over channels")
            return
        keep = _attr_int(node, "keepdims", 1)
        out = {a if keep else a - sum(1 for r in reduced if r < a): atoms for a, atoms in axes.items()}
        self._set(node.outputs[0], out, node)

    def _op_ArgMax(self, node: ir.Node) -> None:
        axes = self._tracked(node.inputs[0])
        rank = self._rank(node.inputs[0])
        if not axes:
            return
        if rank is None or (_attr_int(node, "axis", 0) % rank) in axes:
            self._freeze_inputs(node, "arg-reduction over channels")
            return
        axis = _attr_int(node, "axis", 0) % rank
        keep = _attr_int(node, "keepdims", 1)
        self._set(node.outputs[0], {a if keep or a < axis else a - 1: t for a, t in axes.items()}, node)

    _op_ArgMin = _op_ArgMax

    def _op_Shape(self, node: ir.Node) -> None:
        return  # the shape adapts; Reshape shape sources are checked where they are used

    _op_Size = _op_Shape

    def _op_Resize(self, node: ir.Node) -> None:
        axes = self._tracked(node.inputs[0])
        if not axes:
            return
        sizes = node.inputs[3] if len(node.inputs) > 3 else None
        scales = _float_values(node.inputs[2] if len(node.inputs) > 2 else None)
        if sizes is not None or scales is None or any(a < len(scales) and scales[a] != 1.0 for a in axes):
            self._freeze_inputs(node, "Resize with sizes or channel scaling")
            return
        self._set(node.outputs[0], axes, node)

    _op_Upsample = _op_Resize

    def _op_Pad(self, node: ir.Node) -> None:
        axes = self._tracked(node.inputs[0])
        if not axes:
            return
        pads = _ints(node.inputs[1]) if len(node.inputs) > 1 else _attr_ints(node, "pads")
        rank = self._rank(node.inputs[0])
        pad_axes = _ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
        if pads is None or rank is None:
            self._freeze_inputs(node, "Pad with computed pads")
            return
        pad_axes = [a % rank for a in pad_axes] if pad_axes is not None else list(range(rank))
        n = len(pad_axes)
        for i, a in enumerate(pad_axes):
            if a in axes and (pads[i] != 0 or pads[i + n] != 0):
                self._freeze_inputs(node, "Pad on the channel axis")
                return
        self._set(node.outputs[0], axes, node)

    # ---- layers --------------------------------------------------------------------

    def _op_Conv(self, node: ir.Node) -> None:
        x, w = node.inputs[0], node.inputs[1]
        b = node.inputs[2] if len(node.inputs) > 2 else None
        weight = constant(w)
        axes = self._tracked(x)
        if weight is None or (b is not None and constant(b) is None):
            self._freeze_inputs(node, "Conv with computed weights")
            return
        if any(a != 1 for a in axes):
            self._freeze_inputs(node, "Conv over non-channel axis")
        transpose = node.op_type == "ConvTranspose"
        group = _attr_int(node, "group", 1)
        in_atoms = axes.get(1)
        cout = weight.shape[1] * group if transpose else weight.shape[0]
        cin = weight.shape[0] if transpose else weight.shape[1] * group
        if group == 1:
            if in_atoms is not None:
                self._ref(w, 0 if transpose else 1, in_atoms, node, "weight", "consumer")
            out_atoms = self._ref(w, 1 if transpose else 0, None, node, "weight", "producer")
        elif not transpose and group == cin and cout % cin == 0:
            if in_atoms is None:  # channels fixed by an input the analysis cannot shrink
                in_atoms = self._new_atoms(cin)
                self._freeze(in_atoms, f"depthwise Conv on a fixed-width input at node {node.name}")
            out_atoms = np.repeat(in_atoms, cout // cin)
            self._ref(w, 0, out_atoms, node, "weight", "producer")
            self._edits.append(_Edit("group", node, [in_atoms], {}))
        else:
            if in_atoms is not None:
                self._freeze(in_atoms, f"grouped {_label(node)} (group={group})")
            out_atoms = self._ref(w, 1 if transpose else 0, None, node, "weight", "producer")
            self._freeze(out_atoms, f"grouped {_label(node)} (group={group})")
        if b is not None:
            self._ref(b, 0, out_atoms, node, "bias", "producer")
        self._layers.append((node, [out_atoms] if group > 1 or in_atoms is None else [out_atoms, in_atoms]))
        self._set(node.outputs[0], {1: out_atoms}, node)

    _op_ConvTranspose = _op_Conv

    def _op_Gemm(self, node: ir.Node) -> None:
        a, bw = node.inputs[0], node.inputs[1]
        c = node.inputs[2] if len(node.inputs) > 2 else None
        trans_a, trans_b = _attr_int(node, "transA", 0), _attr_int(node, "transB", 0)
        axes = self._tracked(a)
        feature_axis = 0 if trans_a else 1
        if constant(bw) is None or any(ax != feature_axis for ax in axes):
            self._freeze_inputs(node, "Gemm with computed weights or batch-axis channels")
            return
        if feature_axis in axes:
            self._ref(bw, 1 if trans_b else 0, axes[feature_axis], node, "weight", "consumer")
        out_atoms = self._ref(bw, 0 if trans_b else 1, None, node, "weight", "producer")
        self._layers.append((node, [out_atoms] + ([axes[feature_axis]] if feature_axis in axes else [])))
        if c is not None:
            shape = self._shape(c)
            if constant(c) is None:
                self._freeze(out_atoms, f"computed bias at {_label(node)}")
            elif shape and shape[-1] == len(out_atoms) and len(out_atoms) > 1:
                self._ref(c, -1, out_atoms, node, "bias", "producer")
            elif shape and shape[-1] != 1:
                self._freeze(out_atoms, f"unusual bias shape at {_label(node)}")
        self._set(node.outputs[0], {1: out_atoms}, node)

    def _op_MatMul(self, node: ir.Node) -> None:
        a, b = node.inputs
        ra, rb, ro = self._rank(a), self._rank(b), self._rank(node.outputs[0])
        axes_a, axes_b = self._tracked(a), self._tracked(b)
        weight = constant(b)
        if weight is not None and len(weight.shape) == 2 and ra is not None and ra >= 2:
            out = {k: v for k, v in axes_a.items() if k != ra - 1}
            if ra - 1 in axes_a:
                self._ref(b, 0, axes_a[ra - 1], node, "weight", "consumer")
            out[ra - 1] = self._ref(b, 1, None, node, "weight", "producer")
            self._layers.append((node, [out[ra - 1]] + ([axes_a[ra - 1]] if ra - 1 in axes_a else [])))
            self._set(node.outputs[0], out, node)
            return
        if not axes_a and not axes_b:
            return
        if constant(a) is not None or weight is not None or None in (ra, rb, ro) or min(ra, rb) < 2:
            self._freeze_inputs(node, "MatMul of this form")
            return
        out: dict[int, np.ndarray] = {}
        for axes, r in ((axes_a, ra), (axes_b, rb)):
            for ax, atoms in axes.items():
                if ax < r - 2:  # batch axes broadcast like element-wise ops
                    k = ax + ro - r
                    if k in out:
                        self._union(out[k], atoms)
                    else:
                        out[k] = atoms
        if ra - 2 in axes_a:
            out[ro - 2] = axes_a[ra - 2]
        if rb - 1 in axes_b:
            out[ro - 1] = axes_b[rb - 1]
        ka, kb = axes_a.get(ra - 1), axes_b.get(rb - 2)
        if ka is not None and kb is not None:
            self._union(ka, kb)
        elif ka is not None or kb is not None:
            self._freeze(ka if ka is not None else kb, f"contraction with fixed-width operand at {_label(node)}")
        self._layers.append((node, list(out.values()) + ([ka] if ka is not None and kb is not None else [])))
        self._set(node.outputs[0], out, node)

    def _op_Gather(self, node: ir.Node) -> None:
        data, idx = node.inputs
        axis = _attr_int(node, "axis", 0)
        table = constant(data)
        if self._tracked(idx):
            self._freeze_value(idx, f"channels used as indices at {_label(node)}")
        if table is not None:
            if len(table.shape) == 2 and axis % 2 == 0 and constant(idx) is None:
                rank = self._rank(node.outputs[0])
                atoms = self._ref(data, 1, None, node, "weight", "producer")
                if rank is not None:
                    self._set(node.outputs[0], {rank - 1: atoms}, node)
            return
        axes = self._tracked(data)
        rank, irank = self._rank(data), self._rank(idx)
        if not axes:
            return
        if rank is None or irank is None or (axis % rank) in axes:
            self._freeze_inputs(node, "Gather along channels")
            return
        axis %= rank
        self._set(node.outputs[0], {a if a < axis else a + irank - 1: t for a, t in axes.items()}, node)

    def _rnn(self, node: ir.Node) -> None:
        axes = self._tracked(node.inputs[0])
        if not axes:
            return
        if set(axes) != {2} or constant(node.inputs[1]) is None:
            self._freeze_inputs(node, "recurrent layer input")
            return
        self._ref(node.inputs[1], 2, axes[2], node, "weight", "consumer")

    _op_LSTM = _op_GRU = _op_RNN = _rnn

    # ---- index mappings ------------------------------------------------------------

    def _op_Transpose(self, node: ir.Node) -> None:
        axes = self._tracked(node.inputs[0])
        rank = self._rank(node.inputs[0])
        if not axes:
            return
        if rank is None:
            self._freeze_inputs(node, "unknown rank")
            return
        perm = _attr_ints(node, "perm") or list(reversed(range(rank)))
        self._set(node.outputs[0], {j: axes[p] for j, p in enumerate(perm) if p in axes}, node)

    def _op_Unsqueeze(self, node: ir.Node) -> None:
        axes = self._tracked(node.inputs[0])
        if not axes:
            return
        new = _attr_ints(node, "axes") or (_ints(node.inputs[1]) if len(node.inputs) > 1 else None)
        rank = self._rank(node.outputs[0])
        if new is None or rank is None:
            self._freeze_inputs(node, "Unsqueeze with computed axes")
            return
        new = {a % rank for a in new}
        kept = [i for i in range(rank) if i not in new]
        self._set(node.outputs[0], {kept[a]: t for a, t in axes.items()}, node)

    def _op_Squeeze(self, node: ir.Node) -> None:
        axes = self._tracked(node.inputs[0])
        if not axes:
            return
        rank = self._rank(node.inputs[0])
        gone = _attr_ints(node, "axes") or (_ints(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None)
        shape = self._shape(node.inputs[0])
        if gone is None and shape is not None and all(isinstance(d, int) for d in shape):
            gone = [i for i, d in enumerate(shape) if d == 1]
        if gone is None or rank is None:
            self._freeze_inputs(node, "Squeeze with unknown axes")
            return
        gone = {a % rank for a in gone}
        if gone & set(axes):
            self._freeze_inputs(node, "Squeeze of a channel axis")
            return
        self._set(node.outputs[0], {a - sum(1 for g in gone if g < a): t for a, t in axes.items()}, node)

    def _op_Flatten(self, node: ir.Node) -> None:
        axes = self._tracked(node.inputs[0])
        if not axes:
            return
        shape = self._shape(node.inputs[0])
        if shape is None:
            self._freeze_inputs(node, "Flatten of unknown shape")
            return
        axis = _attr_int(node, "axis", 1) % (len(shape) + 1)
        self._merge_axes(node, axes, shape, [(list(range(0, axis)), 0), (list(range(axis, len(shape))), 1)], node.outputs[0])

    def _merge_axes(self, node: ir.Node, axes: Mapping[int, np.ndarray], shape: Sequence[Dim], segments, out: ir.Value) -> dict[int, np.ndarray] | None:
        """Map tracked axes through merges of input axis runs into single output axes."""
        result: dict[int, np.ndarray] = {}
        for in_axes, out_axis in segments:
            inside = [a for a in in_axes if a in axes]
            if not inside:
                continue
            if len(inside) > 1:
                self._freeze_inputs(node, "several channel axes merged")
                return None
            merged = _merged_atoms(axes[inside[0]], in_axes.index(inside[0]), [shape[a] for a in in_axes])
            if merged is None:
                self._freeze_inputs(node, "merge of axes with unknown sizes")
                return None
            result[out_axis] = merged
        self._set(out, result, node)
        return result

    def _op_Reshape(self, node: ir.Node) -> None:
        axes = self._tracked(node.inputs[0])
        if not axes:
            return
        src, dst = self._shape(node.inputs[0]), self._shape(node.outputs[0])
        if src is None or dst is None:
            self._freeze_inputs(node, "Reshape of unknown shape")
            return
        segments = _align(src, dst)
        if segments is None:
            if constant(node.inputs[1]) is None:
                for atoms in axes.values():
                    self._freeze(atoms, f"Reshape with computed shape at node {node.name}")
            else:
                self._freeze_inputs(node, "Reshape that cannot be aligned")
            return
        result: dict[int, np.ndarray] = {}
        for in_axes, out_axes in segments:
            inside = [a for a in in_axes if a in axes]
            if not inside:
                continue
            if len(inside) > 1 or (len(in_axes) > 1 and len(out_axes) > 1):
                self._freeze_inputs(node, "Reshape that mixes channel axes")
                return
            if len(out_axes) == 1:  # identity or merge
                merged = _merged_atoms(axes[inside[0]], in_axes.index(inside[0]), [src[a] for a in in_axes])
                if merged is None:
                    self._freeze_inputs(node, "merge of axes with unknown sizes")
                    return
                result[out_axes[0]] = merged
                continue
            # one axis split into several: coarsen to the outermost non-trivial output axis
            dims = [dst[o] for o in out_axes]
            if not all(isinstance(d, int) for d in dims):
                self._freeze_inputs(node, "Reshape split with unknown sizes")
                return
            outer = next(i for i, d in enumerate(dims) if d > 1)
            blocks = axes[inside[0]].reshape(int(np.prod(dims[: outer + 1])), -1)
            for col in range(1, blocks.shape[1]):
                self._union(blocks[:, 0], blocks[:, col])
            self._head_atoms.append(blocks[:, 0])
            result[out_axes[outer]] = blocks[:, 0]
        entries = self._shape_entries(node, len(dst))
        for out_axis, atoms in result.items():
            entry = entries[out_axis] if entries is not None else None
            if entry is None:
                self._freeze(atoms, f"Reshape with computed shape at node {node.name}")
            elif entry[0] == "literal" and entry[3] > 0:
                self._edits.append(_Edit("shape", node, [atoms], {"source": entry[1], "index": entry[2], "consumer": entry[4]}))
            elif entry[0] == "copy" and out_axis >= len(src) or entry[0] == "copy" and src[out_axis] != dst[out_axis]:
                self._freeze(atoms, f"Reshape copying a changed axis at node {node.name}")
        self._set(node.outputs[0], result, node)

    def _shape_entries(self, reshape: ir.Node, rank: int) -> list[tuple | None] | None:
        """Where each entry of a Reshape shape comes from: ("literal", value, index, number,
        reading node), ("copy",) for 0, ("infer",) for -1, or None when computed."""
        value = reshape.inputs[1]
        c = constant(value)
        if c is not None:
            arr = c.numpy().reshape(-1)
            return [_literal(value, i, int(v), reshape) for i, v in enumerate(arr)]
        node = value.producer()
        if node is None or node.op_type != "Concat":
            return [None] * rank
        entries: list[tuple | None] = []
        for piece in node.inputs:
            pc = constant(piece)
            if pc is not None:
                entries += [_literal(piece, i, int(v), node) for i, v in enumerate(pc.numpy().reshape(-1))]
            else:
                shape = self._shape(piece)
                if shape is None or not isinstance(shape[0] if shape else 1, int):
                    return None
                entries += [None] * (int(np.prod(shape)) if shape else 1)
        return entries if len(entries) == rank else None

    def _op_Expand(self, node: ir.Node) -> None:
        """Broadcast to a constant shape: a channel axis passes through where its entry is 1
        (kept as is) or C (rewritten to the kept count); anything else freezes."""
        axes = self._tracked(node.inputs[0])
        if not axes:
            return
        target, rank = _ints(node.inputs[1]), self._rank(node.inputs[0])
        if target is None or rank is None:
            self._freeze_inputs(node, "Expand with computed shape")
            return
        shift = max(len(target) - rank, 0)
        lead = max(rank - len(target), 0)  # input axes with no entry in the shape
        out: dict[int, np.ndarray] = {}
        for a, atoms in axes.items():
            j = a + shift - lead
            entry = target[j] if j >= 0 else 1
            if entry not in (1, len(atoms)):
                self._freeze_inputs(node, "Expand broadcasting a channel axis")
                return
            if entry == len(atoms) and entry != 1:
                extra = {"source": node.inputs[1], "index": j, "consumer": node}
                self._edits.append(_Edit("shape", node, [atoms], extra))
            out[a + shift] = atoms
        self._set(node.outputs[0], out, node)

    def _op_Concat(self, node: ir.Node) -> None:
        inputs = [i for i in node.inputs]
        if not any(self._tracked(i) for i in inputs):
            return
        rank = self._rank(node.outputs[0])
        if rank is None:
            self._freeze_inputs(node, "unknown rank")
            return
        axis = _attr_int(node, "axis", 0) % rank
        out: dict[int, np.ndarray] = {}
        for inp in inputs:
            for a, atoms in self._tracked(inp).items():
                if a == axis:
                    continue
                if a in out:
                    self._union(out[a], atoms)
                else:
                    out[a] = atoms
        parts = []
        for inp in inputs if any(self._tracked(i).get(axis) is not None for i in inputs) else ():
            atoms = self._tracked(inp).get(axis)
            if atoms is None:
                shape = self._shape(inp)
                dim = shape[axis] if shape is not None else None
                if not isinstance(dim, int):
                    self._freeze_inputs(node, "Concat of an input with unknown width")
                    return
                atoms = self._new_atoms(dim)
                self._freeze(atoms, f"Concat input {inp.name!r} at node {node.name} is not produced by a prunable layer")
            parts.append(atoms)
        if parts:
            out[axis] = np.concatenate(parts)
            self._edits.append(_Edit("concat", node, parts, {}))
        for a, atoms in out.items():
            if a == axis:
                continue
            for inp in inputs:
                if a not in self._tracked(inp):
                    shape = self._shape(inp)
                    if shape is None or shape[a] != 1:
                        self._freeze(atoms, f"{_label(node)} joins channels with a fixed-width input")
        self._set(node.outputs[0], out, node)

    def _op_Split(self, node: ir.Node) -> None:
        axes = self._tracked(node.inputs[0])
        if not axes:
            return
        rank = self._rank(node.inputs[0])
        if rank is None:
            self._freeze_inputs(node, "unknown rank")
            return
        axis = _attr_int(node, "axis", 0) % rank
        outs = list(node.outputs)
        if axis not in axes:
            for out in outs:
                self._set(out, axes, node)
            return
        atoms = axes[axis]
        sizes = _attr_ints(node, "split")
        if sizes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
            sizes = _ints(node.inputs[1])
            if sizes is None:
                self._freeze_inputs(node, "Split with computed sizes")
                return
        if sizes is None:
            n = len(outs)
            step = -(-len(atoms) // n)
            sizes = [min(step, len(atoms) - i * step) for i in range(n)]
        bounds = np.cumsum([0, *sizes])
        pieces = [atoms[bounds[i] : bounds[i + 1]] for i in range(len(outs))]
        for out, piece in zip(outs, pieces):
            self._set(out, {**axes, axis: piece}, node)
        self._edits.append(_Edit("split", node, pieces, {}))

    def _op_Slice(self, node: ir.Node) -> None:
        axes = self._tracked(node.inputs[0])
        if not axes:
            return
        rank = self._rank(node.inputs[0])
        starts, ends = _ints(node.inputs[1]), _ints(node.inputs[2])
        sl_axes = _ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
        steps = _ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else None
        if starts is None or ends is None or rank is None:
            touched = set(axes) if sl_axes is None or rank is None else {a % rank for a in sl_axes} & set(axes)
            if touched or sl_axes is None:
                self._freeze_inputs(node, "Slice with computed bounds")
                return
            self._set(node.outputs[0], axes, node)
            return
        sl_axes = [a % rank for a in (sl_axes if sl_axes is not None else range(len(starts)))]
        out = dict(axes)
        for j, a in enumerate(sl_axes):
            if a not in axes:
                continue
            if steps is not None and steps[j] != 1:
                self._freeze_inputs(node, "strided Slice on channels")
                return
            n = len(axes[a])
            lo, hi, _ = slice(starts[j], ends[j]).indices(n)
            hi = max(hi, lo)
            out[a] = axes[a][lo:hi]
            self._edits.append(_Edit("slice", node, [axes[a]], {"j": j, "lo": lo, "hi": hi}))
        self._set(node.outputs[0], out, node)

    def _op_If(self, node: ir.Node) -> None:
        self._freeze_value(node.inputs[0], f"channels used as a condition at {_label(node)}")
        branches = [node.attributes[k].as_graph() for k in ("then_branch", "else_branch") if k in node.attributes]
        for graph in branches:
            self._walk(graph)
        for i, out in enumerate(node.outputs):
            maps = [self._tracked(g.outputs[i]) for g in branches]
            merged: dict[int, np.ndarray] = {}
            for a in set().union(*maps):
                present = [m[a] for m in maps if a in m]
                if len(present) < len(maps):
                    for atoms in present:
                        self._freeze(atoms, f"If output {out.name!r}: only one branch carries channels")
                    continue
                for atoms in present[1:]:
                    self._union(present[0], atoms)
                merged[a] = present[0]
            self._set(out, merged, node)

    # ---- finishing -----------------------------------------------------------------

    def _check_refs(self) -> None:
        """A sliced constant must be read only by nodes that registered it."""
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
                    self._freeze(ref.atoms, f"weight {ref.tensor.name!r} is a graph output")
                for use in view.uses():
                    if id(use.node) not in readers and id(use.node) not in chain:
                        self._freeze(ref.atoms, f"weight {ref.tensor.name!r} is also read by {_label(use.node)}")

    def _finish(self) -> None:
        self._check_refs()
        n = self._n_atoms
        comp = _components(n, self._unions)
        n_comp = int(comp.max()) + 1 if n else 0
        batch_edges = [(comp[b[:-1]], comp[b[1:]]) for b in self._batches if len(b) > 1]
        group_of = _components(n_comp, batch_edges)
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
                    role = "output" if producer is not None and producer.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul", "Gather") and any(m.node is producer for m in group.producers) else "internal"
                    if any(id(u.node) in consumer_nodes for u in value.uses()):
                        role = "input" if role == "internal" else role
                    group.activations.append(Activation(value, axis, positions, slots, role))
        for node, atoms in self._tracked_nodes:
            for g in np.unique(group_of[comp[atoms]]):
                if all(n is not node for n in groups[g].nodes):
                    groups[g].nodes.append(node)

        reasons: dict[int, list[str]] = {}
        for atoms, reason in self._frozen:
            for g in np.unique(group_of[comp[atoms]]):
                reasons.setdefault(int(g), []).append(reason)
        for atoms in self._head_atoms:
            for g in np.unique(group_of[comp[atoms]]):
                groups[g].kind = "heads"
        for atoms, node in self._ln_atoms:
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

    # ---- predictions ---------------------------------------------------------------

    def _kept_components(self, keep: Mapping[ChannelGroup, np.ndarray | Sequence[int]] | None) -> np.ndarray:
        kept = np.ones(len(self._slot_of_comp), dtype=bool)
        for group, slots in (keep or {}).items():
            mask = np.zeros(group.size, dtype=bool)
            mask[np.asarray(slots, dtype=np.int64)] = True
            comps = np.flatnonzero(self._group_of_comp == group.id)
            kept[comps] = mask[self._slot_of_comp[comps]]
        return kept

    def predict(
        self,
        keep: Mapping[ChannelGroup, np.ndarray | Sequence[int]] | None = None,
        input_shapes: Mapping[str, Sequence[int]] | None = None,
        sample: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, int]:
        """MACs (Conv/ConvTranspose/Gemm/MatMul) and parameters now and after keeping ``keep``.

        MACs are counted at ``input_shapes``; dynamic dims not given count as 1 for a dim that
        leads some input (the batch) and 64 elsewhere. With a ``sample`` (the pass context's),
        shapes inference cannot resolve are measured on it as :func:`stats.count_macs` measures
        them, so the prediction counts the layers the report counts. Layers still unresolved
        (inside an If branch the sample does not take) are left out of both figures and counted
        in ``macs_unresolved``.
        """
        kept = self._kept_components(keep)

        def frac(atoms: np.ndarray) -> float:
            return float(kept[self._comp[atoms]].mean()) if len(atoms) else 1.0

        base, unresolved = self._layer_macs(input_shapes, sample)
        macs_before = sum(base.values())
        macs_after = 0.0
        for node, factors in self._layers:
            macs_after += base.get(id(node), 0) * float(np.prod([frac(a) for a in factors]))
        params_before = sum(int(np.prod(c.shape)) for c in model_constants(self.model))
        per_storage: dict[int, tuple[int, float]] = {}
        for (storage, _), ref in self._refs.items():
            size, f = per_storage.get(storage, (int(np.prod(ref.tensor.shape)), 1.0))
            per_storage[storage] = (size, f * frac(ref.atoms))
        params_after = params_before - sum(size * (1.0 - f) for size, f in per_storage.values())
        return {
            "macs_before": int(macs_before),
            "macs_after": int(round(macs_after)),
            "macs_unresolved": unresolved,
            "params_before": int(params_before),
            "params_after": int(round(params_after)),
        }

    def _layer_macs(
        self, input_shapes: Mapping[str, Sequence[int]] | None, sample: Mapping[str, np.ndarray] | None = None
    ) -> tuple[dict[int, int], int]:
        """MACs per layer node id at the input shapes, and how many layers have unknown shapes."""
        dims = {k: [int(d) for d in v] for k, v in (input_shapes or {}).items()}
        key = (tuple(sorted((k, tuple(v)) for k, v in dims.items())), sample is not None)
        if key in self._base_macs:
            return self._base_macs[key]
        inputs = [v for v in self.model.graph.inputs if v.shape is not None and len(v.shape)]
        batched = [v for v in inputs if getattr(v.shape[0], "value", None)]  # leading named dim
        batch_names = {v.shape[0].value for v in batched}
        for value in inputs:
            if value.name not in dims:  # a named batch dim is 1 wherever it sits (VAD: state[2, batch, 128])
                dims[value.name] = [
                    d if isinstance(d, int) else 1 if i == 0 or getattr(d, "value", None) in batch_names else 64
                    for i, d in enumerate(value.shape)
                ]
        batch = dims[batched[0].name][0] if batched else 1
        try:
            concrete = shapes.concrete_shapes(self.model, dims)
        except shapes.ShapeInferenceError:
            concrete = {}
        if sample is not None:
            concrete.update(stats.measured_shapes(self.model, concrete, sample))
        result = {}
        for node, _ in self._layers:
            macs = _node_macs(node, concrete, batch if sample is None else None)  # measured: no guess
            if macs is not None:
                result[id(node)] = macs
        self._base_macs[key] = result, len(self._layers) - len(result)
        return self._base_macs[key]

    # ---- applying ------------------------------------------------------------------

    def apply(self, keep: Mapping[ChannelGroup, np.ndarray | Sequence[int]]) -> dict[str, int]:
        """Keep only the given slots of each group; returns {"groups": n, "channels_removed": n,
        "nodes_removed": n}.

        Every member is sliced, ``group`` attributes and Reshape/Expand/Split/Slice constants are
        rewritten, value shapes updated. A group kept with no slot (see :meth:`can_empty`) leaves
        whole: Concats drop the inputs it empties and the dead nodes go. The analysis cannot be
        applied twice.
        """
        if self._applied:
            raise RuntimeError("this channel analysis was already applied; analyse the model again")
        removed = np.zeros(len(self._slot_of_comp), dtype=bool)
        groups_changed = 0
        total = 0
        emptied = []
        for group, slots in keep.items():
            if group.id in self._frozen_ids or self._all_groups[group.id] is not group:
                raise ValueError(f"group {group.name!r} is frozen or not from this analysis")
            slots = np.unique(np.asarray(slots, dtype=np.int64))
            if len(slots) and (slots.min() < 0 or slots.max() >= group.size):
                raise ValueError(f"group {group.name!r}: keep must name 1..{group.size} slots in range")
            if len(slots) == 0:
                emptied.append(group)
            gone = np.ones(group.size, dtype=bool)
            gone[slots] = False
            if gone.any():
                groups_changed += 1
                total += int(gone.sum())
            comps = np.flatnonzero(self._group_of_comp == group.id)
            removed[comps[gone[self._slot_of_comp[comps]]]] = True
        empty = self._left_empty(removed) if emptied else set()
        if empty is None:
            raise ValueError(
                f"group {emptied[0].name!r}: keep must name 1..{emptied[0].size} slots in range "
                "(none only where the channels reach the rest of the graph through Concat inputs alone)"
            )
        self._applied = True
        if not removed.any():
            return {"groups": 0, "channels_removed": 0, "nodes_removed": 0}

        def kept(atoms: np.ndarray) -> np.ndarray:
            return ~removed[self._comp[atoms]]

        for ref in self._refs.values():
            mask = kept(ref.atoms)
            if not mask.all():
                ref.tensor.take(np.flatnonzero(mask), ref.axis)
                for view in ref.views:
                    if view.shape is not None:
                        view.shape = ir.Shape(ref.tensor.shape)
                    _drop_untyped_shapes(view)
        writes: dict[int, list] = {}
        for edit in self._edits:
            counts = [int(kept(a).sum()) for a in edit.atoms]
            if all(c == len(a) for c, a in zip(counts, edit.atoms)):
                continue
            if edit.kind == "group":
                edit.node.attributes["group"] = ir.AttrInt64("group", counts[0])
            elif edit.kind == "shape":
                src, index, reader = edit.extra["source"], edit.extra["index"], edit.extra["consumer"]
                _queue(writes, src, reader, {index: counts[0]})
            elif edit.kind == "split":
                _write_split(edit.node, counts, self.model)
            elif edit.kind == "slice":
                mask = kept(edit.atoms[0])
                lo = int(mask[: edit.extra["lo"]].sum())
                hi = lo + int(mask[edit.extra["lo"] : edit.extra["hi"]].sum())
                _queue(writes, edit.node.inputs[1], edit.node, {edit.extra["j"]: lo})
                _queue(writes, edit.node.inputs[2], edit.node, {edit.extra["j"]: hi})
            elif edit.kind == "concat" and edit.node.outputs[0] not in empty:
                _set_inputs(edit.node, [v for v in edit.node.inputs if v not in empty])
        _flush(writes)
        for value, axes in self._axes.items():
            if value.shape is None or value.is_graph_input():
                continue
            # Only axes that lost channels are rewritten: symbolic dims elsewhere (and declared
            # graph-output dims, which are frozen) stay as they were.
            dims = list(value.shape)
            shrunk = False
            for axis, atoms in axes.items():
                count = int(kept(atoms).sum())
                if axis < len(dims) and count != len(atoms):
                    dims[axis] = count
                    shrunk = True
            if shrunk:
                value.shape = ir.Shape(dims)
        dead = remove_dead([v.producer() for v in empty if v.producer() is not None])
        shapes.refresh_shapes(self.model)  # strict: raises ShapeInferenceError on an inconsistent result
        return {"groups": groups_changed, "channels_removed": total, "nodes_removed": dead}

    def can_empty(self, groups: Iterable[ChannelGroup]) -> bool:
        """Whether ``groups`` may lose every slot together (``apply`` with no slot kept)."""
        removed = np.zeros(len(self._slot_of_comp), dtype=bool)
        for group in groups:
            removed[self._group_of_comp == group.id] = True
        return self._left_empty(removed) is not None

    def _left_empty(self, removed: np.ndarray) -> set[ir.Value] | None:
        """The values that ``removed`` (per component) leaves without channels on some axis, or
        None when one would still be read: each may feed only Concats (which drop it) and nodes
        whose outputs are all left empty too (dead code, removed with their weights)."""
        empty = {
            v for v, axes in self._axes.items() if any(len(a) and removed[self._comp[a]].all() for a in axes.values())
        }
        concats = {id(e.node) for e in self._edits if e.kind == "concat"}
        for value in empty:
            if value.is_graph_output():
                return None
            for use in value.uses():
                if id(use.node) not in concats and not all(o in empty for o in use.node.outputs):
                    return None
        return empty


def _node_macs(node: ir.Node, concrete: Mapping[str, tuple], batch: int | None = 1) -> int | None:
    """Multiply-accumulates of one Conv/ConvTranspose/Gemm/MatMul at concrete shapes.

    A batch axis inference leaves open (a broadcast against a shape it could not compute)
    counts as ``batch``; any other unknown dim makes the count unknown (None)."""
    matmul = node.op_type == "MatMul"

    def shape(value: ir.Value | None) -> tuple | None:
        c = constant(value)
        found = tuple(c.shape) if c is not None else concrete.get(value.name) if value is not None else None
        if found is None:
            return None
        batch_axis = [i < len(found) - 2 if matmul else i == 0 for i in range(len(found))]
        dims = tuple(batch if d is None and b else d for d, b in zip(found, batch_axis))
        return dims if all(isinstance(d, int) for d in dims) else None

    macs = stats.node_macs(node, shape)
    return None if macs is None else int(macs)


def _merged_atoms(atoms: np.ndarray, pos: int, dims: list[Dim]) -> np.ndarray | None:
    """Atoms of one axis spread over the flattened run ``dims`` (C×H×W → features: repeat)."""
    if len(dims) == 1:
        return atoms
    dims = [len(atoms) if i == pos else d for i, d in enumerate(dims)]
    if not all(isinstance(d, int) for d in dims):
        return None
    bshape = [1] * len(dims)
    bshape[pos] = len(atoms)
    return (np.zeros(dims, dtype=np.int64) + atoms.reshape(bshape)).reshape(-1)


def _literal(value: ir.Value, index: int, number: int, reader: ir.Node | None) -> tuple:
    if number == 0:
        return ("copy",)
    if number == -1:
        return ("infer",)
    return ("literal", value, index, number, reader)


def _float_values(value: ir.Value | None) -> list[float] | None:
    c = constant(value)
    if c is None:
        return None
    return [float(x) for x in c.numpy().reshape(-1)]


def _align(src: Sequence[Dim], dst: Sequence[Dim]) -> list[tuple[list[int], list[int]]] | None:
    """Pair runs of input axes with runs of output axes of equal total size."""
    segments = []
    i = j = 0
    while i < len(src) and j < len(dst):
        if src[i] == dst[j] and (isinstance(src[i], int) or src[i] is not None):
            segments.append(([i], [j]))
            i, j = i + 1, j + 1
            continue
        if not isinstance(src[i], int) or not isinstance(dst[j], int):
            return None
        a, b = [i], [j]
        pa, pb = src[i], dst[j]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb:
                if i >= len(src) or not isinstance(src[i], int):
                    return None
                pa *= src[i]
                a.append(i)
                i += 1
            else:
                if j >= len(dst) or not isinstance(dst[j], int):
                    return None
                pb *= dst[j]
                b.append(j)
                j += 1
        segments.append((a, b))
    while i < len(src) and src[i] == 1:
        segments.append(([i], []))
        i += 1
    while j < len(dst) and dst[j] == 1:
        segments.append(([], [j]))
        j += 1
    if i != len(src) or j != len(dst):
        return None
    return segments


def _components(n: int, edges: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if edges:
        rows = np.concatenate([np.asarray(a, dtype=np.int64).reshape(-1) for a, _ in edges])
        cols = np.concatenate([np.asarray(b, dtype=np.int64).reshape(-1) for _, b in edges])
    else:
        rows = cols = np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    # renumber in order of first appearance so component ids follow atom creation
    _, first = np.unique(labels, return_index=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(np.argsort(first))] = np.arange(len(first))
    return rank[labels]


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
        same = len({a.tobytes() for _, a in arrays.values()}) == 1
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


def _write_split(node: ir.Node, counts: list[int], model: ir.Model) -> None:
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


def analyze(model: ir.Model, *, freeze_residual_stream: bool = True) -> ChannelAnalysis:
    """The channel groups of ``model`` (see the module docstring). The model is not changed."""
    return ChannelAnalysis(model, freeze_residual_stream=freeze_residual_stream)


def remove_channels(analysis: ChannelAnalysis, keep: Mapping[ChannelGroup, np.ndarray | Sequence[int]]) -> dict[str, int]:
    """Remove every slot not kept in each group (see :meth:`ChannelAnalysis.apply`)."""
    return analysis.apply(keep)


__all__ = ["Activation", "ChannelAnalysis", "ChannelGroup", "FrozenGroup", "Member", "analyze", "remove_channels"]
