"""One view of constant tensors, wherever a model keeps them.

Real exports keep weights in initializers, in ``Constant`` nodes (Paddle has no initializers at
all), as outer-scope initializers read inside If/Loop branches, or as INT8 behind a
``Cast→Mul`` or ``DequantizeLinear`` dequantization. ``constant(value)`` resolves any of these
to a :class:`ConstantTensor` so a pass reads the effective values with ``numpy()`` and edits the
storage with ``take`` (keep some indices along an axis) or ``replace`` (new values), without
caring where the tensor lives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

import numpy as np
import onnx
import onnx_ir as ir

Storage = Literal["initializer", "constant_node", "dequantized"]

#: Metadata key on a Value whose tensor is stored in the file as a sparse tensor (see model_io).
SPARSE_FORMAT_KEY = "onnxslim.sparse_format"


def set_tensor(value: ir.Value, tensor: ir.TensorProtocol | np.ndarray) -> None:
    """Give ``value`` a new constant tensor and keep its dtype and shape in step.

    onnx-ir's ``const_value`` setter leaves ``Value.shape``/``dtype`` stale; every write of a
    constant goes through here.
    """
    if isinstance(tensor, np.ndarray):
        tensor = ir.Tensor(np.ascontiguousarray(tensor), name=value.name)
    old = value.const_value
    value.const_value = tensor
    value.dtype = tensor.dtype
    value.shape = ir.Shape(tensor.shape)
    if isinstance(old, ir.ExternalTensor) and old is not tensor:
        release_mapping(old)


def release_mapping(tensor: ir.ExternalTensor) -> None:
    """Unmap an external tensor's file bytes unless a view of them is alive; it maps again when
    read (a rollback copy may still hold it). Resident mapped pages count in RSS until then."""
    if tensor.raw is not None:
        with contextlib.suppress(BufferError):
            tensor.release()


def tensor_to_numpy(tensor: ir.TensorProtocol) -> np.ndarray:
    return tensor.numpy()


@dataclasses.dataclass
class _Part:
    """One stored tensor behind a constant: an initializer value or a Constant node."""

    value: ir.Value  # the value carrying the tensor (initializer) or output of the Constant node
    node: ir.Node | None  # the Constant node, or None for an initializer

    def numpy(self) -> np.ndarray:
        if self.node is None:
            return self.value.const_value.numpy()
        return _constant_node_array(self.node)

    def write(self, array: np.ndarray) -> None:
        if self.node is None:
            set_tensor(self.value, array)
            return
        array = np.asarray(array)
        # ascontiguousarray turns a scalar into shape (1,): reshape keeps a 0-d constant 0-d
        tensor = ir.Tensor(np.ascontiguousarray(array).reshape(array.shape), name=self.value.name)
        for key in list(self.node.attributes):
            del self.node.attributes[key]
        self.node.attributes["value"] = ir.Attr("value", ir.AttributeType.TENSOR, tensor)
        self.value.dtype = tensor.dtype
        self.value.shape = ir.Shape(tensor.shape)

    @property
    def shared(self) -> bool:
        return len(self.value.uses()) > 1 or self.value.is_graph_output()


_IR_TENSORS = (ir.Tensor, ir.ExternalTensor, ir.StringTensor, ir.LazyTensor, ir.PackedTensor, ir.serde.TensorProtoTensor)
#: type -> whether it is one of onnx-ir's own tensor classes. Even ``isinstance`` with those goes
#: through typing's Protocol check (they all derive from ``TensorProtocol``): asked once per type.
_IS_IR_TENSOR: dict[type, bool] = {}


def _attr_tensor(attr: ir.Attr):
    """The tensor of a TENSOR attribute; onnx-ir's ``as_tensor`` checks it against a runtime
    Protocol (slow ``isinstance``: a tenth of a run on Constant-heavy models); onnx-ir's own
    tensor classes need no check."""
    value = attr.value
    if attr.type == ir.AttributeType.TENSOR:
        kind = type(value)
        known = _IS_IR_TENSOR.get(kind)
        if known is None:
            known = _IS_IR_TENSOR[kind] = issubclass(kind, _IR_TENSORS)
        if known:
            return value
    return attr.as_tensor()


def tensor_nbytes(tensor: ir.TensorProtocol) -> int:
    """``tensor.nbytes``. A tensor still held as its proto (Constant nodes as loaded) is sized
    from the proto's dims: onnx-ir builds a new Shape and DataType on every access to them."""
    if type(tensor) is ir.serde.TensorProtoTensor:
        proto = tensor.raw
        return math.ceil(_itemsize(proto.data_type) * math.prod(proto.dims))
    return int(tensor.nbytes)


@functools.lru_cache(maxsize=None)
def _itemsize(data_type: int) -> float:
    return ir.DataType(data_type).itemsize


def _constant_node_array(node: ir.Node) -> np.ndarray:
    attr = next(iter(node.attributes.values()))
    if attr.name == "value":
        return _attr_tensor(attr).numpy()
    if attr.name == "value_float":
        return np.array(attr.as_float(), dtype=np.float32)
    if attr.name == "value_floats":
        return np.array(attr.as_floats(), dtype=np.float32)
    if attr.name == "value_int":
        return np.array(attr.as_int(), dtype=np.int64)
    if attr.name == "value_ints":
        return np.array(attr.as_ints(), dtype=np.int64)
    raise ValueError(f"unsupported Constant attribute {attr.name}")


def _plain_part(value: ir.Value | None) -> _Part | None:
    if value is None:
        return None
    if value.const_value is not None and value.is_initializer() and not value.is_graph_input():
        return _Part(value, None)
    node = value.producer()
    if node is not None and node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attributes) == 1:
        name = next(iter(node.attributes))
        if name in ("value", "value_float", "value_floats", "value_int", "value_ints"):
            return _Part(value, node)
    return None


class ConstantTensor:
    """A constant as its consumers see it, with the storage behind it.

    ``value`` is the tensor consumers read. ``storage`` says where it lives. For
    ``dequantized`` the effective array is ``scale * (q - zero_point)``; ``take`` slices the
    quantized tensor and per-axis scales alike, so the file stays INT8.
    """

    def __init__(self, value: ir.Value, storage: Storage, parts: Sequence[_Part], dequant: ir.Node | None = None):
        self.value = value
        self.storage: Storage = storage
        self._parts = list(parts)
        self._dequant = dequant  # the Mul or DequantizeLinear node for dequantized storage

    def __repr__(self) -> str:
        return f"ConstantTensor({self.name!r}, {self.storage}, shape={self.shape})"

    @property
    def name(self) -> str:
        return self.value.name or ""

    @property
    def storage_values(self) -> list[ir.Value]:
        """The values that carry stored tensors (initializers or Constant outputs)."""
        return [p.value for p in self._parts]

    @property
    def nbytes(self) -> int:
        return sum(_part_nbytes(p) for p in self._parts)

    def numpy(self) -> np.ndarray:
        if self.storage != "dequantized":
            return self._parts[0].numpy()
        node = self._dequant
        if node.op_type == "DequantizeLinear":
            q = self._parts[0].numpy()
            scale = self._parts[1].numpy()
            zp = self._parts[2].numpy() if len(self._parts) > 2 else np.zeros((), q.dtype)
            axis = _dq_axis(node, q.ndim)
            if scale.ndim == 1 and q.ndim > 0:
                shape = [1] * q.ndim
                shape[axis] = -1
                scale = scale.reshape(shape)
                zp = zp.reshape(shape) if zp.ndim == 1 else zp
            return ((q.astype(np.float32) - zp.astype(np.float32)) * scale).astype(scale.dtype)
        q = self._parts[0].numpy()
        scale = self._parts[1].numpy()
        cast_to = ir.DataType(self._cast_node().attributes["to"].as_int()).numpy()
        return q.astype(cast_to) * scale

    @property
    def shape(self) -> tuple[int, ...]:
        if self.storage == "dequantized":
            return tuple(_part_shape(self._parts[0]))
        return tuple(_part_shape(self._parts[0]))

    @property
    def dtype(self) -> ir.DataType:
        """The effective element type (from the stored data when the value is untyped)."""
        if self.value.dtype is not None:
            return self.value.dtype
        if self.storage == "dequantized":
            return ir.DataType.from_numpy(self._parts[1].numpy().dtype)
        return ir.DataType.from_numpy(self._parts[0].numpy().dtype)

    @property
    def users(self) -> list[ir.Node]:
        """Nodes that read the effective tensor (in any graph, subgraphs included)."""
        return [use.node for use in self.value.uses()]

    @property
    def exclusive(self) -> bool:
        """True when editing the storage affects only this constant's own consumers."""
        if self.storage == "dequantized":
            inner = self._parts[:1] + ([self._cast_node().outputs[0]] if self._dequant.op_type == "Mul" else [])
            for v in inner:
                val = v.value if isinstance(v, _Part) else v
                if len(val.uses()) != 1:
                    return False
            return not self.value.is_graph_output()
        return not self.value.is_graph_output()

    @property
    def can_replace(self) -> bool:
        """Whether ``replace`` can store arbitrary new values (plain float/int storage only)."""
        return self.storage != "dequantized"

    def replace(self, array: np.ndarray) -> None:
        """Store new values (any shape, same dtype) in place of the old ones."""
        if not self.can_replace:
            raise ValueError(f"{self.name}: cannot store arbitrary values in dequantized storage")
        array = np.asarray(array, dtype=self.dtype.numpy())
        self._parts[0].write(array)
        if self._parts[0].value is not self.value:  # Identity-forwarded: keep the shape in step
            self.value.shape = ir.Shape(array.shape)

    def take(self, indices: np.ndarray, axis: int) -> None:
        """Keep only ``indices`` along ``axis`` of the effective tensor, in every stored part."""
        indices = np.asarray(indices, dtype=np.int64)
        shape = self.shape
        axis = axis % len(shape)
        if self.storage != "dequantized":
            self._parts[0].write(np.take(self._parts[0].numpy(), indices, axis=axis))
            self._refresh_shape(axis, len(indices))
            return
        q_part = self._parts[0]
        q_part.write(np.take(q_part.numpy(), indices, axis=axis))
        if self._dequant.op_type == "DequantizeLinear":
            if _dq_axis(self._dequant, len(shape)) == axis:
                for part in self._parts[1:]:
                    arr = part.numpy()
                    if arr.ndim == 1 and arr.shape[0] == shape[axis]:
                        part.write(np.take(arr, indices))
        else:
            scale_part = self._parts[1]
            scale = scale_part.numpy()
            offset = len(shape) - scale.ndim
            if scale.ndim and axis >= offset and scale.shape[axis - offset] == shape[axis]:
                scale_part.write(np.take(scale, indices, axis=axis - offset))
            cast_node = self._cast_node()
            cast_out = cast_node.outputs[0]
            cast_out.dtype = ir.DataType(cast_node.attributes["to"].as_int())
            cast_out.shape = ir.Shape(q_part.numpy().shape)
        self._refresh_shape(axis, len(indices))

    def _refresh_shape(self, axis: int, size: int) -> None:
        if self.value.shape is not None and len(self.value.shape) > axis:
            dims = list(self.value.shape)
            dims[axis] = size
            self.value.shape = ir.Shape(dims)

    def _cast_node(self) -> ir.Node:
        return next(inp.producer() for inp in self._dequant.inputs if inp.producer() is not None and inp.producer().op_type == "Cast")


def _dq_axis(node: ir.Node, rank: int) -> int:
    attr = node.attributes.get("axis")
    axis = attr.as_int() if attr is not None else 1
    return axis % max(rank, 1)


def _part_shape(part: _Part) -> tuple[int, ...]:
    if part.node is None:
        return tuple(part.value.const_value.shape)
    return tuple(_constant_node_array(part.node).shape)


def _part_nbytes(part: _Part) -> int:
    if part.node is None:
        return tensor_nbytes(part.value.const_value)
    attr = next(iter(part.node.attributes.values()))
    if attr.name == "value":
        return tensor_nbytes(_attr_tensor(attr))
    return int(_constant_node_array(part.node).nbytes)


_QUANT_TYPES = {ir.DataType.INT8, ir.DataType.UINT8, ir.DataType.INT4, ir.DataType.UINT4, ir.DataType.INT16, ir.DataType.UINT16}


def constant(value: ir.Value | None, *, follow_identity: bool = True) -> ConstantTensor | None:
    """Resolve ``value`` to the constant it always holds, or None if it is computed or an input."""
    if value is None:
        return None
    part = _plain_part(value)
    if part is not None:
        storage: Storage = "initializer" if part.node is None else "constant_node"
        return ConstantTensor(value, storage, [part])
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    if follow_identity and node.op_type == "Identity":
        inner = constant(node.inputs[0])
        if inner is not None and inner.storage != "dequantized":
            return ConstantTensor(value, inner.storage, inner._parts)
        return None
    if node.op_type == "DequantizeLinear":
        parts = [_plain_part(v) for v in node.inputs]
        if parts and all(p is not None for p in parts) and parts[0].value.dtype in _QUANT_TYPES:
            if node.attributes.get("block_size") is not None and node.attributes["block_size"].as_int() > 0:
                return None
            return ConstantTensor(value, "dequantized", parts, node)
        return None
    if node.op_type == "Mul" and len(node.inputs) == 2:
        for i in (0, 1):
            cast, scale = node.inputs[i], node.inputs[1 - i]
            cast_node = cast.producer() if cast is not None else None
            if cast_node is None or cast_node.op_type != "Cast":
                continue
            q = _plain_part(cast_node.inputs[0])
            s = _plain_part(scale)
            if q is None or s is None or q.value.dtype not in _QUANT_TYPES:
                continue
            if s.numpy().ndim > len(_part_shape(q)):
                continue
            return ConstantTensor(value, "dequantized", [q, s], node)
    return None


def iter_nodes(model_or_graph: ir.Model | ir.Graph) -> Iterator[ir.Node]:
    """Every node of the graph and of all its subgraphs (each node, then its subgraphs' nodes:
    onnx-ir's ``RecursiveGraphIterator`` order, at a fraction of its cost)."""
    graph = model_or_graph.graph if isinstance(model_or_graph, ir.Model) else model_or_graph
    return _nodes(graph)


def _nodes(graph: ir.Graph) -> Iterator[ir.Node]:
    for node in graph:
        yield node
        for sub in _node_subgraphs(node):
            yield from _nodes(sub)


_GRAPH, _GRAPHS = ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS


def _node_subgraphs(node: ir.Node) -> list[ir.Graph]:
    # ``.data``: the dict under onnx-ir's UserDict, whose own views are slow in a hot loop.
    attrs = node.attributes.data
    if not attrs:
        return []
    found = []
    for attr in attrs.values():
        if isinstance(attr, ir.Attr):
            kind = attr.type
            if kind is _GRAPH:
                found.append(attr.value)
            elif kind is _GRAPHS:
                found.extend(attr.value)
    return found


def model_constants(model: ir.Model, *, include_small_ints: bool = False) -> list[ConstantTensor]:
    """Every distinct constant read by some node (weights first found through their users).

    Storage that serves several resolved views (e.g. an INT8 tensor behind a Cast→Mul) is
    listed once, under its effective (dequantized) view.
    """
    seen: set[int] = set()
    found: list[ConstantTensor] = []
    for node in iter_nodes(model):
        for inp in node.inputs:
            c = constant(inp)
            if c is None:
                continue
            key = id(c.storage_values[0])
            if key in seen:
                continue
            if not include_small_ints and not c.dtype.is_floating_point():
                continue
            seen.add(key)
            found.append(c)
    return found


def weight_bytes(model: ir.Model) -> int:
    """Bytes of every stored constant tensor (initializers and Constant nodes, subgraphs included)."""
    total = 0
    for graph in all_graphs(model):
        for init in graph.initializers.values():
            if init.const_value is not None:
                total += tensor_nbytes(init.const_value)
        for node in graph:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for attr in node.attributes.values():
                    if attr.type == ir.AttributeType.TENSOR:
                        total += tensor_nbytes(attr.value)  # .value: as_tensor()'s Protocol check is slow
    return total


def all_proto_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """A serialised graph and every subgraph at any depth, outermost first (depth-first)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from all_proto_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from all_proto_graphs(sub)


def all_graphs(model: ir.Model) -> Iterator[ir.Graph]:
    """The main graph and every subgraph, outermost first (``model.graphs()``'s order; that
    walks every node through onnx-ir's generic traversal, 10-20x slower: it was a quarter of a
    default run on a 20k-node chain, called some 60 times)."""
    found: dict[ir.Graph, None] = {model.graph: None}

    def visit(graph: ir.Graph) -> None:
        for node in graph:
            for sub in _node_subgraphs(node):
                if sub not in found:
                    found[sub] = None
                    visit(sub)

    visit(model.graph)
    return iter(list(found))


def add_initializer(graph: ir.Graph, name_hint: str, array: np.ndarray) -> ir.Value:
    """Register a new initializer with a name unique in the graph (its subgraphs' values included)."""
    taken = {v.name for v in graph.initializers.values()} | {v.name for v in graph.inputs}
    taken |= {v.name for n in iter_nodes(graph) for v in n.outputs}
    name = name_hint
    i = 1
    while name in taken:
        name = f"{name_hint}_{i}"
        i += 1
    value = ir.Value(name=name)
    set_tensor(value, np.asarray(array))
    graph.register_initializer(value)
    return value


def drop_if_unused(value: ir.Value) -> None:
    """Remove the initializer (or the Constant node) behind ``value`` once nothing reads it."""
    if value.uses() or value.is_graph_output() or value.is_graph_input():
        return
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant":
        producer.graph.remove(producer, safe=True)
    elif value.is_initializer() and value.graph is not None:
        value.graph.initializers.pop(value.name, None)


def remove_dead(nodes: Iterable[ir.Node]) -> int:
    """Remove each of ``nodes`` once none of its outputs is read, then (transitively) the nodes and
    initializers only they read. Returns how many nodes were removed."""
    work, removed = list(nodes), 0
    while work:
        node = work.pop()
        if node.graph is None or any(o.uses() or o.is_graph_output() for o in node.outputs):
            continue
        inputs = [v for v in node.inputs if v is not None]
        node.graph.remove(node, safe=True)
        removed += 1
        for value in inputs:
            if value.producer() is not None:
                work.append(value.producer())
            else:
                drop_if_unused(value)
    return removed


def model_fingerprint(model: ir.Model) -> tuple:
    """Identity of everything a pass can change (nodes, their inputs and attributes, initializers
    and their tensors, graph signatures, model metadata): cheap, since passes replace tensors and
    attributes rather than mutating them."""
    graphs = []
    for graph in all_graphs(model):
        nodes = tuple(
            (id(n), n.op_type, tuple(map(id, n.inputs)), tuple(map(id, n.outputs)), tuple((k, id(a)) for k, a in n.attributes.items()))
            for n in graph
        )
        inits = tuple((name, id(v), id(v.const_value)) for name, v in graph.initializers.items())
        graphs.append((nodes, inits, tuple(map(id, graph.inputs)), tuple(map(id, graph.outputs))))
    return tuple(graphs), tuple(model.metadata_props.items()), tuple(model.opset_imports.items())
