"""Shape inference on onnx-ir models, with failures reported instead of logged and ignored.

onnx-ir's ShapeInferencePass only logs a failure and leaves stale shapes behind; passes that
change channel counts call :func:`refresh_shapes`, which clears every intermediate shape first
and raises :class:`ShapeInferenceError` when strict inference fails.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator, Mapping, Sequence

import onnx
import onnx_ir as ir

from .constants import all_graphs, all_proto_graphs, iter_nodes

#: Initializers above this size are sent to onnx's C++ inference as typed inputs, not data.
_SKELETON_LIMIT_BYTES = 1024


class ShapeInferenceError(Exception):
    """Strict shape inference failed on a model (message: onnx's first line)."""


@contextlib.contextmanager
def skeleton(model: ir.Model) -> Iterator[onnx.ModelProto]:
    """A proto of ``model`` without large initializer data (types and shapes only).

    Large initializers become graph inputs for the duration, so inference needs no copy of the
    weights; the model is restored afterwards.
    """
    graph = model.graph
    saved = list(graph.initializers.values())
    n_inputs = len(graph.inputs)
    tensors = {id(v): v.const_value for v in saved}
    order = [v.name for v in saved]
    try:
        for value in saved:
            tensor = value.const_value
            if tensor is None or tensor.nbytes <= _SKELETON_LIMIT_BYTES:
                continue
            value.shape = value.shape or ir.Shape(tensor.shape)
            value.dtype = value.dtype or tensor.dtype
            if value not in graph.inputs:
                graph.inputs.append(value)
            graph.initializers.pop(value.name)
            value.const_value = None
        yield ir.serde.serialize_model(model)
    finally:
        graph.inputs[n_inputs:] = []
        forget_removed_io(graph)
        for value in saved:
            value.const_value = tensors[id(value)]
        graph.initializers.clear()
        by_name = {v.name: v for v in saved}
        for name in order:
            graph.initializers.add(by_name[name])


def forget_removed_io(graph: ir.Graph) -> None:
    """Drop the values taken off ``graph``'s inputs or outputs from onnx-ir's reference counts.

    onnx-ir (1.1) counts each graph input and output in a ``Counter`` and leaves a removed value
    in it at zero: every weight :func:`skeleton` lent to the inputs stayed alive with the model
    (on BERT-base, 340 MB of replaced weights after ``unstructured,sparsify``).
    """
    for io in (graph.inputs, graph.outputs):
        counter = getattr(io, "_ref_counter", None)
        if isinstance(counter, collections.Counter):
            counter += collections.Counter()  # in place: keeps the positive counts only


def infer(
    model: ir.Model, input_shapes: Mapping[str, Sequence[int]] | None = None, *, strict: bool = True
) -> onnx.ModelProto:
    """Run onnx shape inference (data propagation on) and return the inferred skeleton proto.

    ``input_shapes`` overrides the graph inputs' shapes in the proto only (concrete shapes for
    MACs); the model itself is not changed.
    """
    decodes = _main_graph_decodes(model)
    with skeleton(model) as proto:
        return infer_skeleton(proto, decodes, input_shapes, strict=strict)


def infer_skeleton(
    proto: onnx.ModelProto,
    decodes: tuple[list[onnx.ValueInfoProto], set[str]],
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    strict: bool = True,
) -> onnx.ModelProto:
    """``infer`` on a proto ``skeleton`` already made (changes it); ``decodes`` from
    ``_main_graph_decodes(model)``, taken before the skeleton hid its weights."""
    _decodes_as_inputs(proto, *decodes)
    if input_shapes:
        for vi in proto.graph.input:
            if vi.name in input_shapes:
                dims = vi.type.tensor_type.shape.dim
                for dim, size in zip(dims, input_shapes[vi.name]):
                    dim.Clear()
                    dim.dim_value = int(size)
    try:
        return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=strict, data_prop=True)
    except Exception as exc:
        raise ShapeInferenceError(_first_line(exc)) from exc


def _main_graph_decodes(model: ir.Model) -> tuple[list[onnx.ValueInfoProto], set[str]]:
    """Main-graph CSR decodes (``sparsify``): their outputs as dense-shaped graph inputs, and
    their node names. Shape inference sees the inputs instead of the decodes: data propagation
    would otherwise carry every decoded element through ConstantOfShape and ScatterElements as
    a shape proto (2.9 GB and 16 s on a 90%-sparse BERT-base)."""
    from .sparse_codec import find_decodes

    inputs, names = [], set()
    for decode in find_decodes(model):
        if decode.graph is not model.graph:
            continue
        parts = decode.parts()
        dtype = decode.output.dtype or ir.DataType.from_numpy(parts.values.dtype)
        inputs.append(onnx.helper.make_tensor_value_info(decode.output.name, int(dtype), list(parts.shape)))
        names.update(n.name for n in decode.nodes)
    return inputs, names


def _decodes_as_inputs(proto: onnx.ModelProto, inputs: list[onnx.ValueInfoProto], names: set[str]) -> None:
    if not inputs:
        return
    proto.graph.input.extend(inputs)
    kept = [n for n in proto.graph.node if n.name not in names]
    del proto.graph.node[:]
    proto.graph.node.extend(kept)


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def refresh_shapes(model: ir.Model) -> None:
    """Clear every intermediate shape and re-infer them strictly; raise if inference fails.

    Graph inputs, outputs and initializers keep their declared shapes; outputs are checked.
    """
    keep: set[int] = set()
    for graph in all_graphs(model):
        keep.update(id(v) for v in graph.inputs)
        keep.update(id(v) for v in graph.outputs)
        keep.update(id(v) for v in graph.initializers.values())
    for node in iter_nodes(model):
        for out in node.outputs:
            if id(out) not in keep:
                out.shape = None
    inferred = infer(model, strict=True)
    merge_shapes(model, inferred)


def merge_shapes(model: ir.Model, proto: onnx.ModelProto) -> None:
    """Copy inferred shapes and types from ``proto`` onto the model's values of the same name."""
    inferred: dict[str, onnx.ValueInfoProto] = {}
    for graph in all_proto_graphs(proto.graph):
        for vi in list(graph.value_info) + list(graph.output):
            inferred[vi.name] = vi
    declared_outputs = {id(v) for graph in all_graphs(model) for v in graph.outputs if v.shape is not None}
    for node in iter_nodes(model):
        for out in node.outputs:
            if id(out) in declared_outputs:  # a graph output keeps its declared (named) dims
                continue
            vi = inferred.get(out.name)
            if vi is None or not vi.type.HasField("tensor_type"):
                continue
            tt = vi.type.tensor_type
            if tt.elem_type and out.dtype is None:
                out.dtype = ir.DataType(tt.elem_type)
            if tt.HasField("shape"):
                dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
                out.shape = ir.Shape(dims)


def concrete_shapes(
    model: ir.Model,
    input_shapes: Mapping[str, Sequence[int]],
    *,
    symbolic: bool = False,
    inferred: onnx.ModelProto | None = None,
) -> dict[str, tuple]:
    """Every inferable value's shape at the given input shapes (non-strict; for statistics).

    Unknown dims are None, or with ``symbolic`` their ``dim_param`` name where inference kept one.
    ``inferred``, :func:`infer`'s result for the model at its declared shapes, is used instead
    of inferring again when ``input_shapes`` fix no dim the declaration leaves open.
    """
    if inferred is None or not declares(model, input_shapes):
        inferred = infer(model, input_shapes, strict=False)
    return shapes_in(inferred, symbolic=symbolic)


def declares(model: ir.Model, input_shapes: Mapping[str, Sequence[int]]) -> bool:
    """Whether the model's graph inputs already declare exactly ``input_shapes`` (static dims)."""
    declared = {v.name: v.shape for v in model.graph.inputs}
    for name, dims in input_shapes.items():
        shape = declared.get(name)
        if shape is None or len(shape) != len(dims) or any(not isinstance(d, int) or d != int(s) for d, s in zip(shape, dims)):
            return False
    return True


def shapes_in(proto: onnx.ModelProto, *, symbolic: bool = False) -> dict[str, tuple]:
    """Every shape an inferred proto holds (see :func:`concrete_shapes`)."""
    shapes: dict[str, tuple] = {}

    def dim(d: onnx.TensorShapeProto.Dimension) -> int | str | None:
        if d.HasField("dim_value"):
            return d.dim_value
        return (d.dim_param or None) if symbolic else None

    for graph in all_proto_graphs(proto.graph):
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            tt = vi.type.tensor_type
            if tt.HasField("shape"):
                shapes[vi.name] = tuple(dim(d) for d in tt.shape.dim)
        for init in graph.initializer:
            shapes[init.name] = tuple(init.dims)
    return shapes
