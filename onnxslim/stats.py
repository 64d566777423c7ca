"""Model statistics for reports: nodes, parameters, MACs, weight sparsity, serialized size."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from .constants import constant, iter_nodes, model_constants
from . import sparse_codec
from .model_io import inline_size
from .shapes import ShapeInferenceError, concrete_shapes


@dataclasses.dataclass
class ModelStats:
    nodes: int
    params: int
    #: Multiply-accumulates of Conv/ConvTranspose/Gemm/MatMul at the validation input shapes.
    macs: int | None
    #: Ops whose MACs could not be resolved (dynamic intermediate shapes); ``macs`` excludes them.
    macs_unresolved: int
    weight_bytes: int
    zero_params: int
    #: Size of the model file written inline (external data files are this minus the weights).
    file_bytes: int
    #: MACs as a polynomial in the model's dynamic input dims (e.g. ``"1.18M·N·S + 8.19K·N·S²"``),
    #: for models with dynamic inputs whose MAC ops inference resolves; else None.
    macs_symbolic: str | None = None
    #: The resolved MACs split by the precision they run in ("float32", "int8" for integer and
    #: QDQ layers, "int4-weights" for MatMulNBits, …); None when MACs are unknown.
    macs_by_precision: dict[str, int] | None = None

    @property
    def sparsity(self) -> float:
        return self.zero_params / self.params if self.params else 0.0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["sparsity"] = round(self.sparsity, 6)
        return d


def compute(
    model: ir.Model,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    sample: Mapping[str, np.ndarray] | None = None,
    *,
    inferred: onnx.ModelProto | None = None,
    proto: onnx.ModelProto | None = None,
) -> ModelStats:
    """Statistics at ``input_shapes``; with a ``sample``, shapes inference cannot resolve are
    measured by running the model once in onnxruntime. ``inferred`` is the model's shape
    inference at its declared shapes (``shapes.infer``) when the caller has it: it serves the
    symbolic MACs, and the concrete ones when ``input_shapes`` are the declared shapes; ``proto``
    is the model's ``model_io.to_proto`` when the caller has it (for the file size)."""
    consts = model_constants(model)
    params = 0
    zeros = 0
    nbytes = 0
    # Weights stored as CSR count as the dense tensors they decode to (params and sparsity are
    # the model's, whatever the storage); their stored bytes count as they are.
    encoded: set[int] = set()
    for decode in sparse_codec.find_decodes(model):
        parts = decode.parts()
        size = math.prod(parts.shape)
        params += size
        zeros += size - int(np.count_nonzero(parts.values))
        encoded.update(id(v) for v in decode.inputs())
    for c in consts:
        nbytes += c.nbytes
        if all(id(v) in encoded for v in c.storage_values):
            continue
        arr = c.numpy()
        params += arr.size
        zeros += int(arr.size - np.count_nonzero(arr))
    params += _integer_weight_params(model)
    by_precision: dict[str, int] = {}
    macs, unresolved = count_macs(model, input_shapes or {}, sample, by_precision, inferred=inferred)
    nodes = sum(1 for _ in iter_nodes(model))
    return ModelStats(
        nodes, params, macs, unresolved, nbytes, zeros, inline_size(model, proto), symbolic_macs(model, inferred=inferred),
        by_precision if macs is not None else None,
    )


#: Ops that compute with integer weights directly (no DequantizeLinear in front, so the float
#: constant view does not see them): input index of the weight.
_INTEGER_WEIGHT_INPUT = {"MatMulInteger": 1, "ConvInteger": 1, "QLinearMatMul": 3, "QLinearConv": 3}


def _integer_weight_params(model: ir.Model) -> int:
    """Parameters held as integers by quantized kernels (dynamic INT8, QLinear*, 4-bit
    MatMulNBits): they are the model's weights too, so params do not fall to 0 after `quantize`."""
    seen: set[int] = set()
    total = 0
    for node in iter_nodes(model):
        if node.op_type == "MatMulNBits" and node.domain == "com.microsoft":
            k, n = node.attributes.get_int("K", 0), node.attributes.get_int("N", 0)
            if id(node.inputs[1]) not in seen:
                seen.add(id(node.inputs[1]))
                total += k * n
            continue
        index = _INTEGER_WEIGHT_INPUT.get(node.op_type)
        if index is None or node.domain not in ("", "ai.onnx") or len(node.inputs) <= index:
            continue
        weight = node.inputs[index]
        if weight is None or id(weight) in seen:
            continue
        c = constant(weight)
        if c is not None and not c.dtype.is_floating_point():
            seen.add(id(weight))
            total += math.prod(c.shape)
    return total


def human(n: float) -> str:
    """A count with four significant digits and a K/M/G/T suffix."""
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.4g}{unit}"
        n /= 1000
    return f"{n:.4g}P"


class Polynomial:
    """A polynomial in named dims with integer coefficients: MAC counts of dynamic models."""

    __slots__ = ("terms",)

    def __init__(self, terms: Mapping[tuple[str, ...], int]):
        #: sorted symbol tuple (a symbol repeated for powers) -> coefficient
        self.terms = {k: v for k, v in terms.items() if v}

    @classmethod
    def of(cls, dim: int | str) -> Polynomial:
        return cls({(): dim}) if isinstance(dim, int) else cls({(dim,): 1})

    def __mul__(self, other: Polynomial | int) -> Polynomial:
        other = other if isinstance(other, Polynomial) else Polynomial.of(other)
        out: dict[tuple[str, ...], int] = {}
        for a, x in self.terms.items():
            for b, y in other.terms.items():
                key = tuple(sorted(a + b))
                out[key] = out.get(key, 0) + x * y
        return Polynomial(out)

    __rmul__ = __mul__

    def __add__(self, other: Polynomial | int) -> Polynomial:
        other = other if isinstance(other, Polynomial) else Polynomial.of(other)
        out = dict(self.terms)
        for k, v in other.terms.items():
            out[k] = out.get(k, 0) + v
        return Polynomial(out)

    __radd__ = __add__

    def __str__(self) -> str:
        def monomial(symbols: tuple[str, ...]) -> str:
            powers = {s: symbols.count(s) for s in dict.fromkeys(symbols)}
            return "·".join(s + ("" if p == 1 else _SUPERSCRIPT[p] if p < 10 else f"^{p}") for s, p in powers.items())

        parts = []
        for symbols in sorted(self.terms, key=lambda k: (-len(k), k)):
            coeff = self.terms[symbols]
            parts.append(human(coeff) if not symbols else monomial(symbols) if coeff == 1 else f"{human(coeff)}·{monomial(symbols)}")
        return " + ".join(parts) or "0"


_SUPERSCRIPT = dict(zip(range(10), "⁰¹²³⁴⁵⁶⁷⁸⁹"))


def symbolic_macs(model: ir.Model, *, inferred: onnx.ModelProto | None = None) -> str | None:
    """MACs as a polynomial in the graph inputs' named dynamic dims; None for static models or
    when a MAC op's shape depends on dims inference cannot name. ``inferred``: as in
    :func:`compute`."""
    symbols = {d.value for v in model.graph.inputs if v.shape is not None for d in v.shape if isinstance(d, ir.SymbolicDim) and d.value}
    if not symbols:
        return None
    try:
        inferred = concrete_shapes(model, {}, symbolic=True, inferred=inferred)
    except ShapeInferenceError:
        return None
    shapes = {
        name: tuple(Polynomial.of(d) if isinstance(d, int) or d in symbols else None for d in dims)
        for name, dims in inferred.items()
    }
    total = Polynomial({})
    for node in iter_nodes(model):
        if node.op_type not in _MAC_OPS:
            continue
        macs = node_macs(node, _lookup(shapes))
        if macs is None:
            return None
        total = total + macs
    return str(total)


def _prod(dims: Sequence[int | None]) -> int | None:
    if any(d is None for d in dims):
        return None
    return math.prod(dims)


def count_macs(
    model: ir.Model,
    input_shapes: Mapping[str, Sequence[int]],
    sample: Mapping[str, np.ndarray] | None = None,
    by_precision: dict[str, int] | None = None,
    *,
    inferred: onnx.ModelProto | None = None,
) -> tuple[int | None, int]:
    """MACs of the compute-heavy ops at concrete input shapes; (None, 0) if inference fails.
    ``by_precision``, when given, receives the MACs per :func:`mac_precision`; ``inferred``: as
    in :func:`compute`."""
    try:
        shapes = concrete_shapes(model, input_shapes, inferred=inferred)
    except ShapeInferenceError:
        shapes = {}
    if sample is not None:
        shapes.update(measured_shapes(model, shapes, sample))
    if not shapes:
        return None, 0
    total = 0
    unresolved = 0
    for node in iter_nodes(model):
        macs = node_macs(node, _lookup(shapes))
        if macs is None:
            if node.op_type in _MAC_OPS:
                unresolved += 1
            continue
        total += macs
        if by_precision is not None:
            key = mac_precision(node)
            by_precision[key] = by_precision.get(key, 0) + macs
    return total, unresolved


_INT_NAMES = {ir.DataType.INT8: "int8", ir.DataType.UINT8: "int8", ir.DataType.INT16: "int16", ir.DataType.UINT16: "int16",
              ir.DataType.INT4: "int4", ir.DataType.UINT4: "int4"}


def mac_precision(node: ir.Node) -> str:
    """The precision a MAC op computes in: integer ops and QDQ layers (both operands through
    DequantizeLinear) by their integer type, weight-only quantized layers as ``int4-weights``
    (MatMulNBits) or ``int8-weights``, others by their output's element type."""
    op = node.op_type
    if op == "MatMulNBits":
        bits = node.attributes.get("bits")
        return f"int{bits.as_int() if bits is not None else 4}-weights"
    if op in ("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul"):
        return "int8"
    dq = [v.producer() if v is not None else None for v in node.inputs[:2]]
    kinds = [_INT_NAMES.get(p.inputs[0].dtype, "int8") if p is not None and p.op_type == "DequantizeLinear" else None for p in dq]
    if kinds and all(kinds):
        return kinds[0]
    if len(kinds) > 1 and kinds[1]:
        return f"{kinds[1]}-weights"
    dtype = node.outputs[0].dtype if node.outputs else None
    return dtype.numpy().name if dtype is not None else "float32"


_MAC_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "MatMulNBits"}


def _lookup(shapes: Mapping[str, tuple]) -> Callable[[ir.Value | None], tuple | None]:
    return lambda value: None if value is None else shapes.get(value.name)


def node_macs(node: ir.Node, shape: Callable[[ir.Value | None], tuple | None]) -> Any:
    """Multiply-accumulates of one MAC op given each value's shape (None: unknown); the dims may
    be ints or :class:`Polynomial` terms. None for other ops or when a needed dim is unknown."""
    op = node.op_type
    if op == "MatMulNBits" and node.domain == "com.microsoft":
        out, k = shape(node.outputs[0]), node.attributes.get("K")
        n_out = _prod(out) if out is not None else None
        return None if n_out is None or k is None else n_out * k.as_int()
    if node.domain not in ("", "ai.onnx") or op not in _MAC_OPS:
        return None
    out = shape(node.outputs[0])
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w = shape(node.inputs[3 if op == "QLinearConv" else 1])
        if out is None or w is None:
            return None
        per_out = _prod(w[1:])
        n_out = _prod(out)
        return None if per_out is None or n_out is None else per_out * n_out
    if op == "ConvTranspose":
        x, w = shape(node.inputs[0]), shape(node.inputs[1])
        if x is None or w is None:
            return None
        n_in = _prod(x)
        per_in = _prod(w[1:])
        return None if n_in is None or per_in is None else n_in * per_in
    if op == "Gemm":
        a = shape(node.inputs[0])
        if out is None or a is None or len(a) != 2:
            return None
        trans_a = node.attributes.get("transA")
        k = a[0] if trans_a is not None and trans_a.as_int() else a[1]
        n_out = _prod(out)
        return None if k is None or n_out is None else n_out * k
    # MatMul family: K is the last dim of A (1-D A: its only dim).
    a = shape(node.inputs[3 if op == "QLinearMatMul" else 0])
    if out is None or a is None or not a:
        return None
    n_out = _prod(out)
    return None if a[-1] is None or n_out is None else n_out * a[-1]


def measured_shapes(model: ir.Model, shapes: Mapping[str, tuple], sample: Mapping[str, np.ndarray]) -> dict[str, tuple]:
    """Shapes of MAC-op tensors that inference left unknown, read from an onnxruntime run.

    onnxruntime cannot expose a value inside an If branch, so when such values are wanted the run
    is made on a clone whose If nodes are replaced by the branch the sample takes (layers of the
    other branch stay unresolved). Measuring is best effort: a model it cannot handle keeps the
    shapes inference found.
    """
    from . import runtime
    from .errors import ModelError

    wanted: set[str] = set()
    in_branches = False
    for node in iter_nodes(model):
        if node.op_type not in _MAC_OPS:
            continue
        for value in (*node.inputs[:2], node.outputs[0]):
            if value is None or value.const_value is not None:
                continue
            shape = shapes.get(value.name)
            if shape is None or any(d is None for d in shape):
                wanted.add(value.name)
                in_branches |= node.graph is not model.graph
    if not wanted:
        return {}
    try:
        probe = _with_taken_branches(model, sample) if in_branches else model
        values = {v.name: v for node in probe.graph for v in node.outputs if v.name in wanted}
        values.update({v.name: v for v in probe.graph.inputs if v.name in wanted})
        with runtime.session(probe, "disabled", extra_outputs=list(values.values())) as sess:
            arrays = runtime.run(sess, sample, list(values))
    except ModelError:
        return {}
    return {name: tuple(arr.shape) for name, arr in arrays.items()}


def _with_taken_branches(model: ir.Model, sample: Mapping[str, np.ndarray], rounds: int = 8) -> ir.Model:
    """A clone (tensors shared) whose main-graph If nodes are replaced by the branch ``sample``
    takes; nested Ifs surface one level per round."""
    from . import runtime
    from .errors import ModelError

    clone = model.clone()
    graph = clone.graph
    for _ in range(rounds):
        ifs = [n for n in graph if n.op_type == "If" and n.domain in ("", "ai.onnx")]
        if not ifs:
            break
        conds = {v.name: v for v in (n.inputs[0] for n in ifs) if v.const_value is None and not v.is_graph_input()}
        with runtime.session(clone, "disabled", extra_outputs=list(conds.values())) as sess:
            measured = runtime.run(sess, sample, list(conds))
        for node in ifs:
            cond = node.inputs[0]
            array = cond.const_value.numpy() if cond.const_value is not None else measured.get(cond.name, sample.get(cond.name))
            if array is None:
                raise ModelError(f"cannot tell which branch If {node.name!r} takes")
            branch = node.attributes["then_branch" if bool(np.asarray(array).reshape(-1)[0]) else "else_branch"].as_graph()
            _inline_branch(graph, node, branch)
    return clone


def _inline_branch(graph: ir.Graph, node: ir.Node, branch: ir.Graph) -> None:
    """Replace ``node`` (an If) by the nodes of one of its branches."""
    inner = list(branch)
    branch.remove(inner)
    graph.insert_before(node, inner)
    for name in list(branch.initializers):
        graph.register_initializer(branch.initializers.pop(name))
    results = list(branch.outputs)
    branch.outputs.clear()
    for out, result in zip(node.outputs, results):
        out.replace_all_uses_with(result, replace_graph_outputs=True)
    graph.remove(node)
