"""The graph walk: tracked channel axes per value, constants registered as members, and the
dispatch of every node to its op family's rule (:mod:`.rules`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from .. import model_io, shapes
from ..constants import ConstantTensor, constant, model_fingerprint
from .atoms import AtomTable
from .mapping import Folded

#: ops whose rules follow an axis of heads folded into the batch axis (see ``mapping.Folded``);
#: any other reader freezes those heads
FOLDED_OK = frozenset({"Transpose", "Reshape", "Shape", "Size", "Identity", "Softmax", "MatMul", "Mul", "Div"})

Dim = int | str | None


@dataclasses.dataclass(eq=False)
class Ref:
    """One (stored constant, axis) registered by the nodes that read it.

    ``private``: a constant whose elements are all equal (a zero bias, a ones scale) that the
    exporter de-duplicated into one tensor read by several layers. It only looks shared, so each
    reader gets its own ref (its layers stay independent) and apply writes it a fresh copy.
    """

    tensor: ConstantTensor
    axis: int
    atoms: np.ndarray
    uses: list[tuple[ir.Node, str, str]]  # (node, role, "producer"|"consumer")
    views: list[ir.Value]
    private: bool = False


@dataclasses.dataclass(eq=False)
class Edit:
    """A node attribute/constant to rewrite from kept counts (Split sizes, Slice bounds, ...)."""

    kind: str
    node: ir.Node
    atoms: list[np.ndarray]
    extra: dict


class Walk:
    """The state the rules read and write while the graph is walked once in order."""

    def __init__(self, model: ir.Model):
        from .rules import RULES  # the rule modules register themselves on import

        self._rules = RULES
        self.model = model
        self._shapes = infer_shapes(model)
        self.table = AtomTable()
        self._axes: dict[ir.Value, dict[int, np.ndarray]] = {}
        self._refs: dict[tuple, Ref] = {}
        self._edits: list[Edit] = []
        self.head_atoms: list[np.ndarray] = []
        self.ln_atoms: list[tuple[np.ndarray, ir.Node]] = []
        self._tracked_nodes: list[tuple[ir.Node, np.ndarray]] = []
        self.layers: list[tuple[ir.Node, list[np.ndarray]]] = []  # MAC ops and the atoms they scale with
        self._uniform: dict[int, bool] = {}
        self.counts: list[tuple[np.ndarray, np.ndarray, object, str]] = []  # see same_count
        self._filled = False  # symbolic shape inference run
        self.factors: list[tuple[ir.Node, ir.Node, np.ndarray]] = []  # (Mul of batch × heads, Reshape, heads)

    # ---- atoms ---------------------------------------------------------------------

    def new_atoms(self, n: int) -> np.ndarray:
        return self.table.new(n)

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        self.table.union(a, b)

    def freeze(self, atoms: np.ndarray, reason: str) -> None:
        self.table.freeze(atoms, reason)

    def freeze_value(self, value: ir.Value | None, reason: str) -> None:
        for atoms in self._axes.get(value, {}).values() if value is not None else ():
            self.freeze(atoms, reason)

    def freeze_inputs(self, node: ir.Node, reason: str) -> None:
        for inp in node.inputs:
            self.freeze_value(inp, f"{reason} ({label(node)})")

    def same_count(self, a: np.ndarray, b: np.ndarray, scale, reason: str) -> None:
        """Whatever is kept, ``kept(a) * scale == kept(b)`` must hold (a shape entry read at
        run time from ``a``'s axis sizes ``b``); checked once the components are known."""
        self.counts.append((a, b, scale, reason))

    def edit(self, edit: Edit) -> None:
        self._edits.append(edit)

    # ---- values --------------------------------------------------------------------

    def tracked(self, value: ir.Value | None) -> dict[int, np.ndarray]:
        """The channel axes of ``value``: axis -> the atom each position holds."""
        return self._axes.get(value, {}) if value is not None else {}

    def set(self, value: ir.Value | None, axes: Mapping[int, np.ndarray], node: ir.Node) -> None:
        if value is None or not axes:
            return
        self._axes[value] = dict(axes)
        for atoms in axes.values():
            self._tracked_nodes.append((node, atoms))

    def shape(self, value: ir.Value | None) -> list[Dim] | None:
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

    def resolved_shape(self, value: ir.Value | None, axes: Sequence[int] | None = None) -> list[Dim] | None:
        """``shape``, with dims onnx could not work out (at ``axes``, or anywhere) filled in by
        symbolic inference, which runs once and only for models that need it (it is slow)."""
        dims = self.shape(value)
        if dims is None or self._filled:
            return dims
        if any(_unknown(dims[a]) for a in (axes if axes is not None else range(len(dims))) if -len(dims) <= a < len(dims)):
            self._filled = True
            fill_unknown(self.model, self._shapes)
            return self.shape(value)
        return dims

    def rank(self, value: ir.Value | None) -> int | None:
        shape = self.shape(value)
        return None if shape is None else len(shape)

    def ref(self, value: ir.Value, axis: int, atoms: np.ndarray | None, node: ir.Node, role: str, kind: str) -> np.ndarray | None:
        """Register constant ``value`` along ``axis``; returns its atoms (new ones if ``atoms`` is None)."""
        tensor = constant(value)
        if tensor is None:
            return None
        axis = axis % len(tensor.shape)
        storage = tensor.storage_values[0]
        private = self._looks_shared(tensor)
        key = (id(storage), axis, id(node), id(value)) if private else (id(storage), axis)
        ref = self._refs.get(key)
        if ref is None:
            if atoms is None:
                atoms = self.new_atoms(tensor.shape[axis])
            ref = self._refs[key] = Ref(tensor, axis, atoms, [], [], private)
        elif atoms is not None:
            self.union(ref.atoms, atoms)
        ref.uses.append((node, role, kind))
        if all(v is not value for v in ref.views):
            ref.views.append(value)
        return ref.atoms

    def _looks_shared(self, tensor: ConstantTensor) -> bool:
        """A uniform constant (all elements equal) read by more than one node."""
        storage = tensor.storage_values[0]
        key = id(storage)
        if key not in self._uniform:
            readers = []
            for use in storage.uses():
                if use.node.op_type == "Identity":
                    readers += [u.node for u in use.node.outputs[0].uses()]
                else:
                    readers.append(use.node)
            uniform = False
            if len(readers) > 1 and tensor.storage != "dequantized" and int(np.prod(tensor.shape)) > 1:
                flat = tensor.numpy().reshape(-1)
                uniform = bool((flat[:16] == flat[0]).all() and (flat == flat[0]).all())
            self._uniform[key] = uniform
        return self._uniform[key]

    # ---- walking -------------------------------------------------------------------

    def walk(self, graph: ir.Graph) -> None:
        for node in graph:
            rule = self._rules.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            if rule is not None and node.op_type not in FOLDED_OK:
                for inp in node.inputs:
                    for atoms in self.tracked(inp).values():
                        if isinstance(atoms, Folded):
                            self.freeze(atoms, f"heads folded into the batch axis read by {label(node)}")
            if rule is None:
                self.unsupported(node)
            else:
                rule(self, node)

    def unsupported(self, node: ir.Node) -> None:
        reason = f"unsupported op {node.op_type} at node {node.name or '<unnamed>'}"
        for inp in node.inputs:
            self.freeze_value(inp, reason)
        for attr in node.attributes.values():  # outer values read inside Loop/Scan bodies
            graphs = [attr.as_graph()] if attr.type == ir.AttributeType.GRAPH else (
                list(attr.as_graphs()) if attr.type == ir.AttributeType.GRAPHS else [])
            for sub in graphs:
                for inner in ir.traversal.RecursiveGraphIterator(sub):
                    for inp in inner.inputs:
                        self.freeze_value(inp, reason)


# --------------------------------------------------------------------------- helpers for rules


def label(node: ir.Node) -> str:
    return f"{node.op_type} at node {node.name or '<unnamed>'}"


def ints(value: ir.Value | None) -> list[int] | None:
    c = constant(value)
    if c is None:
        return None
    arr = c.numpy()
    if arr.dtype.kind not in "iu":
        return None
    return [int(x) for x in arr.reshape(-1)]


def float_values(value: ir.Value | None) -> list[float] | None:
    c = constant(value)
    if c is None:
        return None
    return [float(x) for x in c.numpy().reshape(-1)]


def attr_int(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return attr.as_int() if attr is not None else default


def attr_ints(node: ir.Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    return list(attr.as_ints()) if attr is not None else None


def input_at(node: ir.Node, i: int) -> ir.Value | None:
    return node.inputs[i] if len(node.inputs) > i else None


def given_ints(node: ir.Node, attr: str, index: int) -> tuple[bool, list[int] | None]:
    """An int list an op takes as attribute ``attr`` (older opsets) or as input ``index`` (newer):
    ``(given, values)``. ``given`` is False when the node has neither, so the op's default
    applies; ``values`` is None when the input is computed at run time, which callers must treat
    as unknown, never as the default."""
    values = attr_ints(node, attr)
    if values is not None:
        return True, values
    operand = input_at(node, index)
    if operand is None:
        return False, None
    return True, ints(operand)


def infer_shapes(model: ir.Model) -> dict[str, list[Dim]]:
    """Shapes by value name from onnx shape inference on a skeleton (the model is untouched)."""
    try:
        with shapes.skeleton(model) as proto:
            _fold_shape_arithmetic(proto.graph)
            proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=False, data_prop=True)
    except Exception:  # shapes stay unknown; the groups they touch freeze
        proto = model_io.to_proto(model)
    return _collect(proto)


#: integer ops exporters compute shape pieces with; onnx's data propagation skips some (Mod)
_FOLDABLE = frozenset({"Mod", "Add", "Sub", "Mul", "Div", "Reshape", "Unsqueeze", "Squeeze", "Concat", "Cast", "Gather", "Slice"})


def _fold_shape_arithmetic(graph: onnx.GraphProto) -> None:
    """In the inference skeleton only: replace small integer ops on constants by their value
    (``Slice(shape, 0, Reshape(Mod(2, 3)))`` in nn.MultiheadAttention's export), so that onnx
    infers the shapes behind them."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    known = {t.name: t for t in graph.initializer if t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)}
    opsets = [helper.make_opsetid("", 17)]
    for i, node in enumerate(graph.node):
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            t = node.attribute[0].t
            if t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
                known[node.output[0]] = numpy_helper.from_array(numpy_helper.to_array(t), node.output[0])
            continue
        if node.domain not in ("", "ai.onnx") or node.op_type not in _FOLDABLE or len(node.output) != 1:
            continue
        if not node.input or not all(x in known and int(np.prod(known[x].dims)) <= 64 for x in node.input if x):
            continue
        try:
            sub = helper.make_graph([node], "fold", [], [helper.make_tensor_value_info(node.output[0], onnx.TensorProto.UNDEFINED, None)],
                                    [known[x] for x in dict.fromkeys(x for x in node.input if x)])
            value = np.asarray(ReferenceEvaluator(helper.make_model(sub, opset_imports=opsets)).run(None, {})[0])
        except Exception:  # not foldable here: inference sees the node as it is
            continue
        if value.dtype.kind not in "iu":
            continue
        tensor = numpy_helper.from_array(value, node.output[0])
        known[node.output[0]] = tensor
        graph.node[i].CopyFrom(helper.make_node("Constant", [], [node.output[0]], value=tensor))


def fill_unknown(model: ir.Model, found: dict[str, list[Dim]]) -> None:
    """Where onnx left dims unknown (an attention mask built from Shape/ConstantOfShape/Expand),
    onnxruntime's symbolic shape inference fills them in (its own symbols kept apart)."""
    inputs = {d for dims in (found.get(v.name, ()) for v in model.graph.inputs) for d in dims if isinstance(d, str)}
    for name, dims in _symbolic_cached(model).items():
        mine = found.get(name)
        dims = [d if not isinstance(d, str) or d in inputs else f"sym:{d}" for d in dims]
        if mine is None:
            found[name] = dims
        elif len(mine) == len(dims):
            found[name] = [s if _unknown(d) and s is not None else d for d, s in zip(mine, dims)]


def _unknown(dim: Dim) -> bool:
    """onnx names a dim it cannot work out ``unk__N``: unknown, like None."""
    return dim is None or isinstance(dim, str) and dim.startswith("unk__")


#: symbolic shapes of the last few models analysed, by model identity and fingerprint: passes
#: that analyse an unchanged model again (zeros, then prune) do not pay for inference twice
_SYMBOLIC_CACHE: dict[int, tuple[tuple, dict[str, list[Dim]]]] = {}


def _symbolic_cached(model: ir.Model) -> dict[str, list[Dim]]:
    fingerprint = model_fingerprint(model)
    hit = _SYMBOLIC_CACHE.get(id(model))
    if hit is not None and hit[0] == fingerprint:
        return hit[1]
    found = _symbolic(model)
    while len(_SYMBOLIC_CACHE) >= 4:
        _SYMBOLIC_CACHE.pop(next(iter(_SYMBOLIC_CACHE)))
    _SYMBOLIC_CACHE[id(model)] = (fingerprint, found)
    return found


def _symbolic_shape_inference():
    """onnxruntime's SymbolicShapeInference, loaded from its file: the ``onnxruntime.tools``
    package imports torch whenever torch is installed (9 s), which this does not need."""
    global _SYMBOLIC_CLASS
    if _SYMBOLIC_CLASS is None:
        import importlib.util
        import os

        import onnxruntime

        path = os.path.join(os.path.dirname(onnxruntime.__file__), "tools", "symbolic_shape_infer.py")
        spec = importlib.util.spec_from_file_location("onnxslim._ort_symbolic_shape_infer", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _SYMBOLIC_CLASS = module.SymbolicShapeInference
    return _SYMBOLIC_CLASS


_SYMBOLIC_CLASS = None


def _symbolic(model: ir.Model) -> dict[str, list[Dim]]:
    try:
        inference = _symbolic_shape_inference()
        with shapes.skeleton(model) as proto:
            inferred = inference.infer_shapes(proto, auto_merge=True, guess_output_rank=False)
    except Exception:  # best effort: a model it cannot handle keeps onnx's shapes
        return {}
    return _collect(inferred) if inferred is not None else {}


def _collect(proto: onnx.ModelProto) -> dict[str, list[Dim]]:
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
