"""CSR storage of constant tensors, decoded by a small subgraph of standard ONNX ops.

One concept shared by ``sparsify`` (encode, build the decode) and ``densify`` (recognise, decode
back). A tensor of shape ``(R, ...)`` is seen as ``R`` rows of ``width = prod(shape[1:])``
columns (a 1-D tensor is one row) and stored as four ordinary initializers:

* ``values``: the non-zero elements in row-major order, bit-exact (``-0.0`` and NaN count as
  non-zero: zero means all bits zero, so decoding reproduces every bit);
* ``cols``: their column indices, in the smallest unsigned integer type that holds ``width-1``;
* ``starts``: for every non-empty row after the first, the position in ``values`` where it
  begins (the CSR row pointers without their redundant first/last entries and without
  repetitions from empty rows, so they are strictly increasing);
* ``rows`` (only when some row other than trailing ones is empty): the ids of the non-empty rows.

The decode, valid from default-domain opset 11 (ScatterElements-11, CumSum-11) on::

    marks = ScatterElements(ConstantOfShape([nnz]), Cast(starts), ConstantOfShape([n_starts], 1))
    k     = CumSum(marks)                       # index of the non-empty row of every value
    row   = Cast(Gather(rows, k)) or k
    index = row * width + Cast(cols)
    W     = Reshape(ScatterElements(ConstantOfShape([size], 0), index, values), shape)

Every node has no input but constants, so onnxruntime folds it to the dense tensor at session
creation (basic and default levels); optimisers must not fold it back in the file. All decode
nodes carry ``metadata_props`` ``onnxslim.csr_role``; :func:`find_decodes` starts from each
``output`` node and collects the tagged nodes upstream of it (names play no part).

:func:`file_bytes` is the one size accounting of both passes: the exact bytes a set of
initializers and nodes takes in the file :func:`onnxslim.model_io.save` writes inline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import onnx
import onnx_ir as ir

from . import model_io
from .constants import SPARSE_FORMAT_KEY, add_initializer, all_graphs, constant, drop_if_unused, set_tensor

#: Lowest default-domain opset the decode subgraph is valid at.
MIN_OPSET = 11
ROLE_KEY = "onnxslim.csr_role"
#: On the output node: where the dense tensor lived before ("initializer" or "constant_node").
ORIGIN_KEY = "onnxslim.csr_origin"
#: On the output node of a former Constant node: that node's name (even empty), restored by densify.
ORIGIN_NAME_KEY = "onnxslim.csr_origin_name"
#: Bytes a replacement must save beyond its own: the main graph's length prefix (a varint of at
#: most 5 bytes, outside every tensor's entries) can grow by up to 4 when decode nodes join it.
LENGTH_PREFIX_SLACK = 4

#: Float element types the decode handles (ConstantOfShape-9 takes these; bfloat16 only from opset 20).
SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64))

_UINT_OF_SIZE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def smallest_index_type(max_value: int) -> np.dtype:
    """The smallest integer type onnxruntime's Cast reads that holds ``0..max_value``."""
    for dtype in (np.uint8, np.uint16, np.int32, np.int64):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"index {max_value} does not fit int64")


def nonzero_mask(array: np.ndarray) -> np.ndarray:
    """True where any bit is set: ``-0.0`` is kept, so a round trip is bit-exact."""
    flat = np.ascontiguousarray(array).reshape(-1)
    return flat.view(_UINT_OF_SIZE[flat.dtype.itemsize]) != 0


@dataclasses.dataclass
class CsrParts:
    values: np.ndarray
    cols: np.ndarray
    starts: np.ndarray
    rows: np.ndarray | None
    shape: tuple[int, ...]
    width: int

    @property
    def nnz(self) -> int:
        return int(self.values.size)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored arrays (the decode's fixed overhead not included)."""
        extra = self.rows.nbytes if self.rows is not None else 0
        return int(self.values.nbytes + self.cols.nbytes + self.starts.nbytes + extra)


def row_width(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape[1:], dtype=np.int64)) if len(shape) >= 2 else int(np.prod(shape, dtype=np.int64))


def encode(array: np.ndarray) -> CsrParts:
    """Split ``array`` (at least 1-D, not empty) into its CSR parts."""
    shape = tuple(int(d) for d in array.shape)
    width = row_width(shape)
    flat = np.ascontiguousarray(array).reshape(-1)
    positions = np.flatnonzero(nonzero_mask(flat))
    row = positions // width
    starts = np.flatnonzero(np.diff(row)) + 1  # where each later non-empty row begins
    nonempty = row[np.concatenate(([0], starts))] if positions.size else np.zeros(0, np.int64)
    # CumSum counts non-empty rows; their ids are needed only if an inner row is empty.
    rows = None if np.array_equal(nonempty, np.arange(nonempty.size)) else nonempty
    return CsrParts(
        values=flat[positions],
        cols=(positions % width).astype(smallest_index_type(max(width - 1, 0))),
        starts=starts.astype(smallest_index_type(max(positions.size - 1, 0))),
        rows=None if rows is None else rows.astype(smallest_index_type(int(rows.max()))),
        shape=shape,
        width=width,
    )


def decode(parts: CsrParts) -> np.ndarray:
    """The dense array, in numpy (exactly what the ONNX decode computes)."""
    size = int(np.prod(parts.shape, dtype=np.int64))
    dense = np.zeros(size, dtype=parts.values.dtype)
    if parts.nnz:
        marks = np.zeros(parts.nnz, np.int64)
        marks[parts.starts.astype(np.int64)] = 1
        row = np.cumsum(marks)
        if parts.rows is not None:
            row = parts.rows.astype(np.int64)[row]
        dense[row * parts.width + parts.cols.astype(np.int64)] = parts.values
    return dense.reshape(parts.shape)


def file_bytes(graph: ir.Graph, main: bool, values=(), nodes=()) -> int:
    """Exact bytes ``values`` (initializers of ``graph``; COO-marked ones as sparse_initializer)
    and ``nodes`` (with their outputs' value_info) take in the inline file, ``main`` saying whether
    ``graph`` is the main graph (whose initializers are top-level records there). Registered or
    not, the same entries always count the same."""
    entries = onnx.GraphProto()
    for node in nodes:
        entries.node.append(ir.serde.serialize_node(node))
        entries.value_info.extend(ir.serde.serialize_value(v) for v in node.outputs if _has_value_info(v))
    total = entries.ByteSize()
    for value in values:
        coo = value.meta.get(SPARSE_FORMAT_KEY) == "coo"
        if main:
            prefix, tensor = model_io.initializer_record(value, coo)
            total += len(prefix) + (tensor.nbytes if tensor is not None else 0)
            continue
        proto = ir.serde.serialize_tensor(ir.Tensor(value.const_value.numpy()))
        proto.name = value.name
        entry = onnx.GraphProto()
        if coo:
            entry.sparse_initializer.append(model_io.dense_to_coo(proto))
        else:
            entry.initializer.append(proto)
        total += entry.ByteSize()
    return total


def _has_value_info(value: ir.Value) -> bool:
    """onnx-ir writes a value_info for a node output that is not a graph output and says anything."""
    said = value.type is not None or value.shape is not None or value.metadata_props or value.doc_string
    return bool(value.name) and bool(said) and not value.is_graph_output()


def decode_inputs(nodes: list[ir.Node]) -> list[ir.Value]:
    """The constant values decode ``nodes`` read (each once), in order."""
    inside = {id(v) for n in nodes for v in n.outputs}
    found: dict[int, ir.Value] = {}
    for node in nodes:
        for v in node.inputs:
            if v is not None and id(v) not in inside:
                found.setdefault(id(v), v)
    return list(found.values())


# --------------------------------------------------------------------------- ONNX subgraph


def _attr_tensor(name: str, array: np.ndarray) -> ir.Attr:
    return ir.Attr(name, ir.AttributeType.TENSOR, ir.Tensor(np.ascontiguousarray(array)))


class _Builder:
    """Creates tagged decode nodes and constants in one graph."""

    def __init__(self, graph: ir.Graph, base: str):
        self.graph = graph
        self.base = base
        self.nodes: list[ir.Node] = []

    def const(self, role: str, array: np.ndarray) -> ir.Value:
        value = add_initializer(self.graph, f"{self.base}/csr/{role}", array)
        if np.ndim(array) == 0:  # add_initializer stores scalars as [1]; CumSum's axis must be 0-D
            value.const_value = ir.Tensor(np.asarray(array), name=value.name)
            value.shape = ir.Shape([])
        return value

    def node(self, role: str, op_type: str, inputs, attributes=(), output_name: str | None = None) -> ir.Value:
        out = ir.Value(name=output_name or f"{self.base}/csr/{role}")
        node = ir.Node(
            "",
            op_type,
            inputs,
            attributes,
            outputs=[out],
            name=f"{self.base}/csr/{role}",
            metadata_props={ROLE_KEY: role},
        )
        self.nodes.append(node)
        return out


def build_decode(
    graph: ir.Graph, name: str, parts: CsrParts, origin: str, origin_name: str | None = None
) -> tuple[list[ir.Node], ir.Value]:
    """Component initializers (registered in ``graph``) and the decode nodes (not yet inserted).

    The returned value, named ``name``, carries the dense tensor; the caller inserts the nodes
    before the first consumer and takes ``name`` off the old value first, or drops the
    components again (:func:`discard_decode`).
    """
    b = _Builder(graph, name)
    int64 = ir.DataType.INT64
    size = int(np.prod(parts.shape, dtype=np.int64))
    zero = np.zeros(1, parts.values.dtype)
    shape = b.const("shape", np.array(parts.shape, np.int64))
    if parts.nnz == 0:
        out = b.node("output", "ConstantOfShape", [shape], [_attr_tensor("value", zero)], output_name=name)
        _mark_origin(b.nodes[-1], origin, origin_name)
        return b.nodes, out
    starts = b.node("starts_i64", "Cast", [b.const("starts", parts.starts)], [ir.AttrInt64("to", int64)])
    empty_marks = b.node(
        "marks_zero",
        "ConstantOfShape",
        [b.const("nnz", np.array([parts.nnz], np.int64))],
        [_attr_tensor("value", np.zeros(1, np.int64))],
    )
    ones = b.node(
        "marks_one",
        "ConstantOfShape",
        [b.const("n_starts", np.array([parts.starts.size], np.int64))],
        [_attr_tensor("value", np.ones(1, np.int64))],
    )
    marks = b.node("marks", "ScatterElements", [empty_marks, starts, ones], [ir.AttrInt64("axis", 0)])
    row = b.node("cumsum", "CumSum", [marks, b.const("axis", np.array(0, np.int64))])
    if parts.rows is not None:
        row = b.node("row_ids", "Gather", [b.const("rows", parts.rows), row], [ir.AttrInt64("axis", 0)])
        row = b.node("row_i64", "Cast", [row], [ir.AttrInt64("to", int64)])
    offset = b.node("row_offset", "Mul", [row, b.const("width", np.array(parts.width, np.int64))])
    cols = b.node("cols_i64", "Cast", [b.const("cols", parts.cols)], [ir.AttrInt64("to", int64)])
    index = b.node("index", "Add", [offset, cols])
    dense = b.node(
        "dense_zero", "ConstantOfShape", [b.const("size", np.array([size], np.int64))], [_attr_tensor("value", zero)]
    )
    flat = b.node(
        "scatter", "ScatterElements", [dense, index, b.const("values", parts.values)], [ir.AttrInt64("axis", 0)]
    )
    out = b.node("output", "Reshape", [flat, shape], output_name=name)
    _mark_origin(b.nodes[-1], origin, origin_name)
    return b.nodes, out


def discard_decode(graph: ir.Graph, nodes: list[ir.Node]) -> None:
    """Unregister the components of a decode that was built but not inserted."""
    for value in decode_inputs(nodes):
        graph.initializers.pop(value.name)


def move_initializers(graph: ir.Graph, values: list[ir.Value], before: str) -> None:
    """Re-register ``values`` (initializers of ``graph``) just before initializer ``before``: a
    replacement takes the place of what it replaces, so a round trip keeps the file's order."""
    moving = {id(v) for v in values}
    order = list(graph.initializers.values())
    graph.initializers.clear()
    for value in order:
        if value.name == before:
            for v in values:
                graph.initializers.add(v)
        if id(value) not in moving:
            graph.initializers.add(value)


def _mark_origin(node: ir.Node, origin: str, origin_name: str | None) -> None:
    node.metadata_props[ORIGIN_KEY] = origin
    if origin_name is not None:
        node.metadata_props[ORIGIN_NAME_KEY] = origin_name


@dataclasses.dataclass
class Decode:
    """A recognised decode subgraph in ``graph``."""

    graph: ir.Graph
    nodes: list[ir.Node]
    output: ir.Value
    origin: str
    origin_name: str | None = None

    def parts(self) -> CsrParts:
        by_role = {n.metadata_props[ROLE_KEY]: n for n in self.nodes}

        def array(role: str, index: int) -> np.ndarray:
            c = constant(by_role[role].inputs[index])
            if c is None:
                raise ValueError(f"CSR decode {self.output.name!r}: input of {role!r} is not constant")
            return c.numpy()

        out = by_role["output"]
        if out.op_type == "ConstantOfShape":
            shape = tuple(int(d) for d in array("output", 0))
            dtype = out.attributes["value"].as_tensor().numpy().dtype
            empty = np.zeros(0, np.int64)
            return CsrParts(np.zeros(0, dtype), empty, empty, None, shape, row_width(shape))
        return CsrParts(
            values=array("scatter", 2),
            cols=array("cols_i64", 0),
            starts=array("starts_i64", 0),
            rows=array("row_ids", 0) if "row_ids" in by_role else None,
            shape=tuple(int(d) for d in array("output", 1)),
            width=int(array("row_offset", 1).reshape(-1)[0]),
        )

    def inputs(self) -> list[ir.Value]:
        """The constant values the decode reads (candidates for removal with it)."""
        return decode_inputs(self.nodes)

    def own_inputs(self) -> list[ir.Value]:
        """The inputs nothing but this decode reads (the ones removed with it)."""
        inside = {id(n) for n in self.nodes}
        return [
            v
            for v in self.inputs()
            if not v.is_graph_output() and not v.is_graph_input() and all(id(u.node) in inside for u in v.uses())
        ]


def replace_with_dense(decode: Decode, dense: np.ndarray) -> tuple[ir.Value, ir.Node | None]:
    """Swap the decode for the dense tensor: (its value, the Constant node holding it or None)."""
    graph, old, name = decode.graph, decode.output, decode.output.name
    component_inputs = decode.inputs()
    output_node = old.producer()
    old.name = f"{name}.csr_decoded"
    value = ir.Value(name=name)
    node = None
    if decode.origin == "constant_node":
        attr = ir.Attr("value", ir.AttributeType.TENSOR, ir.Tensor(dense, name=name))
        node = ir.Node("", "Constant", [], [attr], outputs=[value], name=decode.origin_name)
        value.type, value.shape = old.type, old.shape  # the value_info the decode output had, if any
        graph.insert_before(output_node, node)
    else:
        set_tensor(value, dense)
        graph.register_initializer(value)
        components = {id(v) for v in component_inputs}
        first = next((v for v in graph.initializers.values() if id(v) in components), None)
        if first is not None:
            move_initializers(graph, [value], before=first.name)
    old.replace_all_uses_with(value, replace_graph_outputs=True)
    graph.remove(decode.nodes, safe=True)
    for component in component_inputs:  # values, indices, shapes: gone unless shared
        drop_if_unused(component)
    return value, node


def find_decodes(model: ir.Model) -> Iterator[Decode]:
    """Every decode subgraph this module wrote, in every graph."""
    for graph in all_graphs(model):
        for node in graph:
            if node.metadata_props.get(ROLE_KEY) == "output":
                props = node.metadata_props
                origin = props.get(ORIGIN_KEY, "initializer")
                yield Decode(graph, _tagged_upstream(node), node.outputs[0], origin, props.get(ORIGIN_NAME_KEY))


def _tagged_upstream(output: ir.Node) -> list[ir.Node]:
    """The output node and every tagged node it depends on through tagged nodes only."""
    found = {id(output): output}
    stack = [output]
    while stack:
        for inp in stack.pop().inputs:
            producer = inp.producer() if inp is not None else None
            if producer is not None and ROLE_KEY in producer.metadata_props and id(producer) not in found:
                found[id(producer)] = producer
                stack.append(producer)
    return list(found.values())


def default_opset(model: ir.Model) -> int | None:
    version = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    return int(version) if version is not None else None
