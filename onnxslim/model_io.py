"""Loading and saving models: every check on the way in, atomic writes on the way out.

Load goes through ``onnx.load(load_external_data=False)`` and ``onnx_ir`` deserialisation, so
external weights stay on disk (memory-mapped on first use) and a model is never held twice.
Standard ``sparse_initializer`` entries (which onnx-ir would drop) become dense initializers
marked with :data:`~onnxslim.constants.SPARSE_FORMAT_KEY`; :func:`save` writes marked ones back
as sparse tensors, so nothing is lost and passes see ordinary weights.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import math
import mmap
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from . import wire
from .constants import SPARSE_FORMAT_KEY, all_graphs, all_proto_graphs, release_mapping, weight_bytes
from .errors import ModelError, UsageError, did_you_mean

#: onnxruntime 1.31 refuses IR version 14 (onnx 1.23's default); never write more than this.
MAX_IR_VERSION = 13
#: Above this many weight bytes the model is saved with external data (protobuf's limit is 2 GiB).
INLINE_LIMIT_BYTES = 1_900_000_000

ModelSource = str | os.PathLike | bytes | onnx.ModelProto | ir.Model


@dataclasses.dataclass
class Document:
    """A loaded model. ``model`` is the onnx-ir graph, or None when onnx-ir cannot represent it.

    In the latter case ``proto`` keeps the model exactly as read (passes are skipped with
    ``unsupported`` as the reason) and it is written back unchanged.
    """

    model: ir.Model | None
    proto: onnx.ModelProto | None = None
    path: Path | None = None
    unsupported: str | None = None
    #: Every file the model is read from (the .onnx and its external data files), resolved:
    #: outputs must never land on one of them unless asked to (``--in-place``).
    files: frozenset[Path] = frozenset()


#: Value metadata: the axes the model declared as a negative ``dim_value`` (Paddle's ``-1``).
NEGATIVE_DIMS_KEY = "onnxslim.negative_dims"


def _values(model: ir.Model) -> Iterator[ir.Value]:
    for graph in all_graphs(model):
        yield from graph.inputs
        yield from graph.outputs
        for node in graph:
            yield from (v for v in node.outputs if v is not None)


def _normalise_negative_dims(model: ir.Model) -> None:
    """A negative ``dim_value`` means a dynamic dim (Paddle writes -1): hold it as an unknown dim,
    so that every shape consumer treats it as one, and remember it for :func:`_declared_dims`
    (the graph's entry says whether any value has one: serialisations skip the walk when none)."""
    found = False
    for value in _values(model):
        shape = value.shape
        if shape is not None and any(isinstance(d, int) and d < 0 for d in shape):
            value.meta[NEGATIVE_DIMS_KEY] = {i: d for i, d in enumerate(shape) if isinstance(d, int) and d < 0}
            value.shape = ir.Shape([None if isinstance(d, int) and d < 0 else d for d in shape])
            found = True
    model.graph.meta[NEGATIVE_DIMS_KEY] = found


#: Graph metadata (main graph and every subgraph): ``value_info`` entries the model declared for
#: the graph's own outputs, with the output's declaration they were written beside (onnx-ir
#: keeps one type per value, so it drops them).
OUTPUT_VALUE_INFO_KEY = "onnxslim.output_value_info"


def _graph_pairs(proto_graph: onnx.GraphProto, graph: ir.Graph) -> Iterator[tuple[onnx.GraphProto, ir.Graph]]:
    """A proto graph and the onnx-ir graph it was read as (or written from), then their
    subgraphs pairwise (nodes are in the same order on both sides)."""
    yield proto_graph, graph
    nodes = list(graph)
    if len(nodes) != len(proto_graph.node):
        return
    for proto_node, node in zip(proto_graph.node, nodes):
        for attr in proto_node.attribute:
            held = node.attributes.get(attr.name)
            if held is None:
                continue
            if attr.type == onnx.AttributeProto.GRAPH and held.type == ir.AttributeType.GRAPH:
                yield from _graph_pairs(attr.g, held.as_graph())
            elif attr.type == onnx.AttributeProto.GRAPHS and held.type == ir.AttributeType.GRAPHS:
                for proto_sub, sub in zip(attr.graphs, held.as_graphs()):
                    yield from _graph_pairs(proto_sub, sub)


def _keep_output_value_info(proto: onnx.ModelProto, model: ir.Model) -> None:
    for proto_graph, graph in _graph_pairs(proto.graph, model.graph):
        if not proto_graph.value_info:
            continue
        outputs = {o.name: o for o in proto_graph.output}
        kept = {vi.name: (outputs[vi.name].SerializeToString(), vi.SerializeToString()) for vi in proto_graph.value_info if vi.name in outputs}
        if kept:
            graph.meta[OUTPUT_VALUE_INFO_KEY] = kept


def _restore_output_value_info(model: ir.Model, proto: onnx.ModelProto) -> None:
    """Write back the kept ``value_info`` of each graph output (subgraphs' too) whose
    declaration is unchanged."""
    for proto_graph, graph in _graph_pairs(proto.graph, model.graph):
        kept = graph.meta.get(OUTPUT_VALUE_INFO_KEY)
        if not kept:
            continue
        present = {vi.name for vi in proto_graph.value_info}
        for out in proto_graph.output:
            entry = kept.get(out.name)
            if entry is not None and out.name not in present and out.SerializeToString() == entry[0]:
                proto_graph.value_info.append(onnx.ValueInfoProto.FromString(entry[1]))


@contextlib.contextmanager
def _declared_dims(model: ir.Model) -> Iterator[None]:
    """Put back the negative dims the model declared (where the dim is still unknown) while it is
    serialised: the written model keeps its declaration."""
    restored = []
    # Only values of a loaded model carry the entry: none when loading found none (every value's
    # ``meta`` would otherwise be created just to look).
    values = () if model.graph.meta.get(NEGATIVE_DIMS_KEY) is False else _values(model)
    for value in values:
        axes = value.meta.get(NEGATIVE_DIMS_KEY)
        shape = value.shape
        if not axes or shape is None:
            continue
        dims = list(shape)
        changed = False
        for axis, size in axes.items():
            if axis < len(dims) and not isinstance(dims[axis], int) and dims[axis].value is None:
                dims[axis], changed = size, True
        if changed:
            restored.append((value, shape))
            value.shape = ir.Shape(dims)
    try:
        yield
    finally:
        for value, shape in restored:
            value.shape = shape


def load(source: ModelSource) -> ir.Model:
    """Load a model for editing; raise ``ModelError`` if it cannot be read or represented."""
    doc = load_document(source)
    if doc.model is None:
        raise ModelError(f"onnx-ir cannot represent this model: {doc.unsupported}")
    return doc.model


def _nearby(path: Path) -> str:
    """`` (did you mean 'resnet.onnx'?)`` for a file of a close name in the same folder."""
    try:
        names = [p.name for p in path.parent.iterdir()] if path.parent.is_dir() else []
    except OSError:
        names = []
    return did_you_mean(path.name, names, n=1)


def load_document(source: ModelSource) -> Document:
    """Load a model from a path, bytes, a ModelProto or an ``ir.Model`` with every input check."""
    if isinstance(source, ir.Model):
        model = source.clone()  # never modify the caller's model (tensors are shared, not copied)
        _normalise_negative_dims(model)
        return Document(model)
    path: Path | None = None
    if isinstance(source, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(source)  # never modify the caller's proto
    elif isinstance(source, (bytes, bytearray)):
        proto = _parse(bytes(source), "<bytes>")
    else:
        path = Path(source)
        # A path that names no file is a usage error (exit 2), like a missing recipe or data file.
        if not path.exists():
            raise UsageError(f"{path}: no such file{_nearby(path)}")
        if path.is_dir():
            raise UsageError(f"{path}: is a directory, not an ONNX file")
        proto = _parse_path(path)
    where = str(path) if path else "model"
    base_dir = path.parent if path else None
    _check_structure(proto, where)
    _check_external_data(proto, base_dir, where)
    files = frozenset(_referenced_files(proto, path)) if path is not None else frozenset()
    sparse_names = _densify_sparse_initializers(proto)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:
        root = _root_cause(exc)
        if isinstance(root, NotImplementedError):  # valid ONNX that onnx-ir cannot hold
            if path is not None:  # kept as read, with its external data (if any) read in
                proto = _parse_file(path)
                _check_external_data(proto, base_dir, where)
                _inline_external_data(proto)
            return Document(None, proto, path, unsupported=str(root).split(". Please")[0], files=files)
        raise ModelError(f"{where}: cannot read model: {str(root).splitlines()[0]}") from exc
    for graph in all_graphs(model):
        for value in graph.initializers.values():
            if value.name in sparse_names:
                value.meta[SPARSE_FORMAT_KEY] = "coo"
            if type(value.const_value) is ir.ExternalTensor:
                value.const_value = _MappedRange.of(value.const_value)
    _normalise_negative_dims(model)
    _keep_output_value_info(proto, model)
    return Document(model, None, path, files=files)


class _MappedRange(ir.ExternalTensor):
    """An external tensor that memory-maps only its own bytes.

    onnx-ir maps the whole file for every tensor, and the kernel maps whole page-cache folios on
    a fault, so each tensor's mapping also holds pages of its neighbours: after one onnxruntime
    run over a 434 MB BERT-base file 584 MB of it was resident (every page counted once per
    mapping). Mapping the tensor's own range keeps resident bytes at the bytes read.
    """

    @classmethod
    def of(cls, tensor: ir.ExternalTensor) -> _MappedRange:
        return cls(
            tensor.location, tensor.offset, tensor.length, tensor.dtype, shape=tensor.shape, name=tensor.name,
            doc_string=tensor.doc_string, metadata_props=tensor.metadata_props, base_dir=tensor.base_dir,
        )

    def _load(self) -> None:
        if self.size == 0 or self.dtype.bitwidth % 8 or self.dtype.bitwidth > 64:  # packed types: onnx-ir's own path
            super()._load()
            return
        self._check_validity()
        getattr(self, "_check_path_containment", lambda: None)()  # onnx-ir's own check, where it has one
        start = self.offset or 0
        aligned = start - start % mmap.ALLOCATIONGRANULARITY
        with open(self.path, "rb") as f:
            self.raw = mmap.mmap(f.fileno(), start - aligned + self.nbytes, offset=aligned, access=mmap.ACCESS_READ)
        dtype = np.dtype(self.dtype.numpy()).newbyteorder("<")
        self._array = np.frombuffer(self.raw, dtype=dtype, offset=start - aligned, count=self.size).reshape(self.shape.numpy())


#: Below this many weight bytes :func:`release_memory` does nothing: the fixed floor (interpreter,
#: libraries: ~100 MB) dominates, and a full garbage collection costs ~25 ms of CPU.
RELEASE_ABOVE_BYTES = 64 * 2**20


def release_memory(model: ir.Model) -> None:
    """Between phases: free unreachable graphs, unmap the external tensors nothing holds a view
    of (they map again when next read) and hand the C heap's free pages back to the system.

    Mapped pages a phase read stay resident, in RSS, until their mapping is closed. And glibc
    serves arrays under its (self-raising, up to 32 MB) mmap threshold from the heap, whose
    free pages stay resident: after ``unstructured`` freed its rollback copy of a BERT-base's
    weights, 340 MB of free heap was still counted.
    """
    if weight_bytes(model) < RELEASE_ABOVE_BYTES:
        return
    gc.collect()  # graphs are cyclic (values <-> nodes): a dropped rollback copy is freed here
    for graph in all_graphs(model):
        for value in graph.initializers.values():
            if isinstance(value.const_value, ir.ExternalTensor):
                release_mapping(value.const_value)
    trim_heap()


def trim_heap() -> None:
    """Return the C heap's free pages to the system (glibc's ``malloc_trim``; a no-op elsewhere)."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(None).malloc_trim  # glibc; absent on musl, macOS, Windows
        except (AttributeError, OSError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def _referenced_files(proto: onnx.ModelProto, path: Path) -> Iterator[Path]:
    yield path.resolve()
    for tensor in _external_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            yield (path.parent / location).resolve()


def uses_external_data(model: ir.Model | onnx.ModelProto, external_data: bool | None) -> bool:
    """Whether :func:`save` writes ``model`` with a data file (``None``: only above the limit)."""
    if external_data is not None:
        return external_data
    if isinstance(model, onnx.ModelProto):
        return model.ByteSize() > INLINE_LIMIT_BYTES
    from .constants import weight_bytes

    return weight_bytes(model) > INLINE_LIMIT_BYTES


def output_files(path: Path, external_data: bool) -> list[Path]:
    """The files :func:`save` writes for ``path``: the model, and with external data its data file."""
    return [path, path.parent / f"{path.name}.data"] if external_data else [path]


def _root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


#: Files up to this size are parsed whole: protobuf's parser is 2-3x faster than walking the
#: wire format in Python, and a transient second copy of so few weights is noise beside the
#: process's fixed floor (~100 MB).
LAZY_PARSE_ABOVE_BYTES = 16 * 2**20


def _parse_path(path: Path) -> onnx.ModelProto:
    """Parse with weights left in the file (see :mod:`onnxslim.wire`); a file the lazy reader
    does not understand is parsed normally, which also gives the precise error."""
    try:
        if path.stat().st_size <= LAZY_PARSE_ABOVE_BYTES:
            return _parse_file(path)
    except OSError:
        pass  # the lazy reader says what is wrong
    try:
        proto, _ = wire.parse_lazily(path)
    except (wire.WireError, DecodeError, RuntimeError, ValueError, IndexError, OSError):
        return _parse_file(path)
    if not proto.HasField("graph") or not proto.opset_import:
        return _parse_file(path)
    return proto


def _parse_file(path: Path) -> onnx.ModelProto:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read: {exc.strerror}") from exc
    return _parse(data, str(path))


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    if not data:
        raise ModelError(f"{where}: empty file, not an ONNX model")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelError(f"{where}: not an ONNX model (protobuf parse failed; truncated or not ONNX)") from exc
    if not proto.HasField("graph") or not proto.opset_import:
        raise ModelError(f"{where}: not an ONNX model (no graph or opset import)")
    return proto


def _check_structure(proto: onnx.ModelProto, where: str) -> None:
    """Every node input must name something defined (dangling inputs are a common corruption)."""

    def visit(graph: onnx.GraphProto, outer: set[str]) -> None:
        for name in _names(graph):
            if not isinstance(name, str):  # protobuf hands out invalid UTF-8 as bytes
                raise ModelError(f"{where}: name {name!r} is not valid UTF-8")
        known = set(outer)
        known.update(i.name for i in graph.input)
        known.update(t.name for t in graph.initializer)
        known.update(s.values.name for s in graph.sparse_initializer)
        for node in graph.node:
            known.update(node.output)
        for node in graph.node:
            for name in node.input:
                if name and name not in known:
                    label = node.name or node.op_type
                    raise ModelError(f"{where}: node {label!r} reads {name!r}, which nothing produces (dangling input)")
            for attr in node.attribute:
                subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
                for sub in subs:
                    visit(sub, known)
        for out in graph.output:
            if out.name not in known:
                raise ModelError(f"{where}: graph output {out.name!r} is not produced by any node")

    if not proto.graph.output:  # onnxruntime would answer with a page of C++ signatures
        raise ModelError(f"{where}: the graph has no outputs")
    visit(proto.graph, set())


def _names(graph: onnx.GraphProto) -> Iterator[str | bytes]:
    yield graph.name
    for info in (*graph.input, *graph.output, *graph.value_info):
        yield info.name
    for tensor in graph.initializer:
        yield tensor.name
    for node in graph.node:
        yield from (node.name, node.op_type, node.domain, *node.input, *node.output)
        yield from (a.name for a in node.attribute)


def _external_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    for graph in all_proto_graphs(proto.graph):
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t


def _check_external_data(proto: onnx.ModelProto, base_dir: Path | None, where: str) -> None:
    """Check every tensor's data size and external reference; pin each reference to the file it
    names (absolute, symlinks followed), so that a model path that is a symlink (the Hugging Face
    cache: ``snapshots/<rev>/model.onnx -> ../../blobs/<sha>``) reads what onnxruntime reads."""
    for tensor in _external_tensors(proto):
        expected = _expected_nbytes(tensor)
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            if tensor.HasField("raw_data") and expected is not None and len(tensor.raw_data) != expected:
                raise ModelError(f"{where}: tensor {tensor.name!r} has {len(tensor.raw_data)} bytes of data, its shape needs {expected}")
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        if base_dir is None:
            raise ModelError(f"{where}: tensor {tensor.name!r} uses external data {location!r}; load the model from its path")
        if os.path.isabs(location) or os.path.normpath(location).split(os.sep)[0] == "..":
            raise ModelError(f"{where}: external data {location!r} of tensor {tensor.name!r} is outside the model's directory")
        try:
            offset, length = int(info.get("offset", 0)), int(info["length"]) if "length" in info else expected
        except ValueError:
            raise ModelError(f"{where}: tensor {tensor.name!r} has a bad external data offset or length") from None
        if offset < 0 or (length or 0) < 0:
            raise ModelError(f"{where}: tensor {tensor.name!r} has a negative external data offset or length")
        if length is not None and expected is not None and length != expected:
            raise ModelError(f"{where}: tensor {tensor.name!r} has {length} bytes of data, its shape needs {expected}")
        file = base_dir / location
        if not location or not file.is_file():
            raise ModelError(f"{where}: external data file {location!r} for tensor {tensor.name!r} is missing")
        end = offset + (length or 0)
        if end > file.stat().st_size:
            raise ModelError(f"{where}: external data file {location!r} is truncated (tensor {tensor.name!r} needs {end} bytes)")
        next(e for e in tensor.external_data if e.key == "location").value = str(file.resolve())


def _expected_nbytes(tensor: onnx.TensorProto) -> int | None:
    """The raw data bytes a tensor's type and shape need (None for strings and unknown types)."""
    try:
        dtype = ir.DataType(tensor.data_type)
    except ValueError:
        return None
    if dtype in (ir.DataType.STRING, ir.DataType.UNDEFINED):
        return None
    return (math.prod(tensor.dims) * dtype.bitwidth + 7) // 8


def _inline_external_data(proto: onnx.ModelProto) -> None:
    """Read every (checked and pinned) external tensor into the proto."""
    for tensor in _external_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in tensor.external_data}
            with open(info["location"], "rb") as f:
                f.seek(int(info.get("offset", 0)))
                tensor.raw_data = f.read(int(info["length"]) if "length" in info else _expected_nbytes(tensor))
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT


def _sparse_to_dense(sparse: onnx.SparseTensorProto) -> onnx.TensorProto:
    values = onnx.numpy_helper.to_array(sparse.values)
    indices = onnx.numpy_helper.to_array(sparse.indices).astype(np.int64)
    dims = tuple(sparse.dims)
    dense = np.zeros(int(np.prod(dims)) if dims else 1, dtype=values.dtype)
    if indices.ndim == 2:  # [NNZ, rank] coordinates
        indices = np.ravel_multi_index(tuple(indices.T), dims) if len(dims) else indices[:, 0]
    dense[indices] = values
    return onnx.numpy_helper.from_array(dense.reshape(dims), name=sparse.values.name)


def _densify_sparse_initializers(proto: onnx.ModelProto) -> set[str]:
    names = set()
    for graph in all_proto_graphs(proto.graph):
        for sparse in graph.sparse_initializer:
            graph.initializer.append(_sparse_to_dense(sparse))
            names.add(sparse.values.name)
        del graph.sparse_initializer[:]
    return names


def dense_to_coo(tensor: onnx.TensorProto) -> onnx.SparseTensorProto:
    """The standard COO form of a dense tensor (sorted flat int64 indices of non-zero bits)."""
    array = onnx.numpy_helper.to_array(tensor)
    flat = np.ascontiguousarray(array).reshape(-1)
    # Entries with any bit set, sorted as the standard requires: an explicit -0.0 is kept.
    idx = np.flatnonzero(flat.view(np.uint8).reshape(flat.size, flat.dtype.itemsize).any(axis=1)).astype(np.int64)
    values = onnx.numpy_helper.from_array(flat[idx], name=tensor.name)
    indices = onnx.numpy_helper.from_array(idx, name=f"{tensor.name}_indices")
    return onnx.helper.make_sparse_tensor(values, indices, list(array.shape))


def _restore_sparse_initializers(proto: onnx.ModelProto, names: set[str]) -> None:
    for graph in all_proto_graphs(proto.graph):
        keep = []
        for tensor in graph.initializer:
            if tensor.name in names:
                graph.sparse_initializer.append(dense_to_coo(tensor))
            else:
                keep.append(tensor)
        if len(keep) != len(graph.initializer):
            del graph.initializer[:]
            graph.initializer.extend(keep)


def _sparse_marked(model: ir.Model) -> set[str]:
    return {
        v.name
        for graph in all_graphs(model)
        for v in graph.initializers.values()
        if v.meta.get(SPARSE_FORMAT_KEY) == "coo" and v.const_value is not None and not v.is_graph_input()
    }


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """Serialise in memory (weights inline), with sparse-marked initializers restored."""
    originals = _materialise_external(model)
    try:
        with _declared_dims(model):
            proto = ir.serde.serialize_model(model)
    finally:
        for value, tensor in originals:
            value.const_value = tensor
    _restore_sparse_initializers(proto, _sparse_marked(model))
    _drop_initializer_value_info(proto)
    _restore_output_value_info(model, proto)
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    return proto


def _drop_initializer_value_info(proto: onnx.ModelProto) -> None:
    """onnx-ir writes a value_info per initializer; the tensor already says it, so drop them."""
    for graph in all_proto_graphs(proto.graph):
        inits = {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
        inputs = {i.name for i in graph.input}
        keep = [vi for vi in graph.value_info if vi.name not in inits or vi.name in inputs]
        if len(keep) != len(graph.value_info):
            del graph.value_info[:]
            graph.value_info.extend(keep)


def to_bytes(model: ir.Model | onnx.ModelProto) -> bytes:
    proto = model if isinstance(model, onnx.ModelProto) else to_proto(model)
    return proto.SerializeToString()


def _materialise_external(model: ir.Model) -> list[tuple[ir.Value, ir.TensorProtocol]]:
    """Swap external tensors for in-memory ones (returned so the caller can restore them)."""
    swapped = []
    for graph in all_graphs(model):
        for value in graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.ExternalTensor):
                swapped.append((value, tensor))
                value.const_value = ir.Tensor(tensor.numpy(), name=value.name)
    return swapped


def save(
    model: ir.Model | onnx.ModelProto,
    path: str | os.PathLike,
    *,
    external_data: bool | None = None,
    overwrite_input: Path | None = None,
) -> list[Path]:
    """Write ``model`` atomically; return the files written.

    ``external_data`` None picks inline below :data:`INLINE_LIMIT_BYTES` of weights and an
    external ``<name>.data`` file next to the output above it. Everything is written into a
    temporary directory beside the target and renamed into place, so a failure leaves no partial
    output. Saving over the input is safe: every lazy tensor is read (and its memory map,
    which keeps the old file's data alive, cached) before the rename.
    """
    path = Path(path)
    target_dir = path.parent if str(path.parent) else Path(".")
    if not target_dir.is_dir():
        raise ModelError(f"{path}: output directory {target_dir} does not exist")
    if isinstance(model, ir.Model) and model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
    for dest in output_files(path, uses_external_data(model, external_data)):
        if dest.is_dir():
            raise UsageError(f"{dest}: is a directory")
    _remove_stale_temporaries(target_dir)
    tmp_dir = Path(tempfile.mkdtemp(prefix=_temp_prefix(path.name), dir=target_dir))
    try:
        written = _write(model, tmp_dir / path.name, external_data)
        final = [target_dir / file.name for file in written]
        # The data file first, the model last: a failure never leaves a model without its data.
        for file, dest in reversed(list(zip(written, final))):
            os.replace(file, dest)
        return final
    except OSError as exc:  # disk full, quota, permissions: a model error naming the path
        raise ModelError(f"{path}: cannot write: {exc.strerror or exc} (nothing written)") from exc
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


#: Temporaries beside an output are named ``.<name>.onnxslim-<pid>-<random>``: a run that was
#: killed (SIGKILL runs no clean-up) leaves one, and the next save in that directory removes
#: those whose process is gone.
_TEMP_MARK = ".onnxslim-"


def _temp_prefix(name: str) -> str:
    return f".{name}{_TEMP_MARK}{os.getpid()}-"


def _remove_stale_temporaries(directory: Path) -> None:
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(".") or _TEMP_MARK not in entry.name:
            continue
        pid_text = entry.name.rsplit(_TEMP_MARK, 1)[1].split("-", 1)[0]
        if not pid_text.isdigit() or _process_alive(int(pid_text)):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        elif entry.is_file(follow_symlinks=False):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _write(model: ir.Model | onnx.ModelProto, path: Path, external_data: bool | None) -> list[Path]:
    external_data = uses_external_data(model, external_data)
    data_name = f"{path.name}.data"
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
        proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
        if external_data:
            onnx.save(proto, path, save_as_external_data=True, location=data_name, size_threshold=1024)
        else:
            onnx.save(proto, path)
    elif not external_data:
        _write_inline_streaming(model, path)
    elif _sparse_marked(model):
        # Sparse entries must be moved out of the initializer list in proto form.
        proto = to_proto(model)
        onnx.save(proto, path, save_as_external_data=True, location=data_name, size_threshold=1024)
    else:
        _save_external(model, path, data_name)
    data = path.parent / data_name
    return [path, data] if data.exists() else [path]


def copy_atomic(source: Path, path: str | os.PathLike) -> list[Path]:
    """Copy a single-file model unchanged (via a temporary file and rename)."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise ModelError(f"{path}: output directory {directory} does not exist")
    if path.is_dir():
        raise UsageError(f"{path}: is a directory")
    if path.exists() and os.path.samefile(source, path):
        return [path]
    with _atomic_file(path, directory) as (fd, tmp):
        os.close(fd)
        shutil.copyfile(source, tmp)
    return [path]


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small text file (a report) via a temporary file and rename."""
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise ModelError(f"{path}: directory {directory} does not exist")
    with _atomic_file(path, directory) as (fd, tmp):
        with os.fdopen(fd, "w") as f:
            f.write(text)


@contextlib.contextmanager
def _atomic_file(path: Path, directory: Path):
    """``(fd, temporary path)`` beside ``path``, renamed onto it when the block succeeds; removed
    otherwise, an OSError (disk full, …) becoming a model error that names ``path``."""
    _remove_stale_temporaries(directory)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), dir=directory)
    try:
        yield fd, tmp
        # mkstemp creates 0600; the result is an ordinary file (umask applies).
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ModelError(f"{path}: cannot write: {exc.strerror or exc} (nothing written)") from exc
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _save_external(model: ir.Model, path: Path, data_name: str) -> None:
    """Like ``ir.save(external_data=...)`` (tensors streamed to the data file, never all in
    memory), plus our proto clean-ups; the model's tensors are restored afterwards."""
    values = [v for graph in all_graphs(model) for v in graph.initializers.values()]
    tensors = [v.const_value for v in values]
    try:
        ir.external_data.unload_from_model(model, path.parent, data_name, size_threshold_bytes=1024)
        with _declared_dims(model):
            proto = ir.serde.serialize_model(model)
        _drop_initializer_value_info(proto)
        _restore_output_value_info(model, proto)
        proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
        onnx.save(proto, path)
    finally:
        for value, tensor in zip(values, tensors):
            value.const_value = tensor


#: Wire tag of ModelProto.graph (field 7, length-delimited).
_GRAPH_TAG = bytes([(7 << 3) | 2])


def inline_size(model: ir.Model, proto: onnx.ModelProto | None = None) -> int:
    """Bytes of the file :func:`save` writes inline for ``model``, computed without reading weights.

    ``proto``, the model's :func:`to_proto` when the caller has it, saves serialising the model
    again: the file's skeleton is that proto less its main-graph initializers.
    """
    if proto is None:
        skeleton, records = _inline_layout(model)
        head = len(skeleton)
    else:
        records = _initializer_records(model)
        head = _size_without_initializers(proto)
    return head + sum(len(prefix) + (tensor.nbytes if tensor is not None else 0) for prefix, tensor in records)


def _size_without_initializers(proto: onnx.ModelProto) -> int:
    """``proto.ByteSize()`` less its main graph's (sparse) initializer fields, i.e. the size of
    :func:`_inline_layout`'s skeleton (each field: a one-byte tag, a varint length, the message)."""
    graph = proto.graph.ByteSize()
    removed = 0
    for tensor in (*proto.graph.initializer, *proto.graph.sparse_initializer):
        n = tensor.ByteSize()
        removed += 1 + len(wire.encode_varint(n)) + n
    rest = graph - removed
    return proto.ByteSize() - len(wire.encode_varint(graph)) - graph + len(wire.encode_varint(rest)) + rest


def _write_inline_streaming(model: ir.Model, path: Path) -> None:
    """Write an inline model one initializer at a time.

    Protobuf merges repeated occurrences of an embedded message field, so the file is the model
    without its main-graph initializers followed by one ``graph { initializer: t }`` record per
    tensor. Peak memory is one tensor's serialisation, not two extra copies of every weight.
    """
    skeleton, records = _inline_layout(model)
    with open(path, "wb") as f:
        f.write(skeleton)
        for prefix, tensor in records:
            f.write(prefix)
            if tensor is not None:
                raw = _raw_view(tensor)
                if raw is None:
                    if isinstance(tensor, ir.ExternalTensor):
                        tensor = ir.Tensor(tensor.numpy())
                    raw = tensor.tobytes()
                if len(raw) != tensor.nbytes:  # the record's framing was sized from nbytes
                    raise ModelError(f"tensor of {tensor.nbytes} bytes serialised to {len(raw)} bytes")
                f.write(raw)
                if isinstance(tensor, ir.ExternalTensor):
                    del raw
                    release_mapping(tensor)  # written: its pages need not stay resident


Record = tuple[bytes, "ir.TensorProtocol | None"]

#: Element types whose raw ONNX bytes are the numpy array's own (little-endian) bytes.
_PLAIN_DTYPES = frozenset(
    np.dtype(t) for t in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64, np.bool_)
)


def _raw_view(tensor: ir.TensorProtocol) -> memoryview | None:
    """The tensor's raw bytes without a copy (a memory-mapped weight is written straight from
    its mapping), or None when they must be serialised (other dtypes, big-endian hosts)."""
    if sys.byteorder != "little" or not isinstance(tensor, (ir.Tensor, ir.ExternalTensor)):
        return None
    array = tensor.numpy()
    if (
        array.dtype not in _PLAIN_DTYPES
        or array.dtype != np.dtype(tensor.dtype.numpy())
        or array.nbytes != tensor.nbytes
        or not array.flags.c_contiguous
    ):
        return None
    return memoryview(array).cast("B")


def _inline_layout(model: ir.Model) -> tuple[bytes, list[Record]]:
    """The inline file as a serialised skeleton (the model without its main-graph initializers)
    and one record per initializer: protobuf framing and header, then the tensor whose raw bytes
    follow it (None when the framing already holds everything)."""
    graph = model.graph
    values = list(graph.initializers.values())
    sparse = _sparse_marked(model)
    graph.initializers.clear()
    try:
        skeleton = to_proto(model)
    finally:
        for value in values:
            graph.initializers.add(value)
    names = {v.name for v in values}
    kept = [vi for vi in skeleton.graph.value_info if vi.name not in names]
    del skeleton.graph.value_info[:]
    skeleton.graph.value_info.extend(kept)
    return skeleton.SerializeToString(), _initializer_records(model, sparse)


def _initializer_records(model: ir.Model, sparse: set[str] | None = None) -> list[Record]:
    sparse = _sparse_marked(model) if sparse is None else sparse
    return [initializer_record(v, v.name in sparse) for v in model.graph.initializers.values() if v.const_value is not None]


#: Wire tags: GraphProto.initializer (5), TensorProto.raw_data (9).
_INIT_TAG = bytes([(5 << 3) | 2])
_RAW_TAG = bytes([(9 << 3) | 2])


def initializer_record(value: ir.Value, as_sparse: bool) -> Record:
    """One main-graph initializer's record in the inline file (see :func:`_inline_layout`)."""
    tensor = value.const_value
    if as_sparse or tensor.dtype == ir.DataType.STRING:
        if isinstance(tensor, ir.ExternalTensor):
            tensor = ir.Tensor(tensor.numpy(), name=value.name)
        record = onnx.GraphProto()
        proto = ir.serde.serialize_tensor(tensor)
        proto.name = value.name
        if as_sparse:
            record.sparse_initializer.append(dense_to_coo(proto))
        else:
            record.initializer.append(proto)
        payload = record.SerializeToString()
        return _GRAPH_TAG + wire.encode_varint(len(payload)) + payload, None
    # Header (name, type, dims) serialised by protobuf; the raw bytes are written straight from
    # the tensor, so the largest transient is one copy of one tensor.
    header = onnx.TensorProto(name=value.name, data_type=int(tensor.dtype), dims=list(tensor.shape))
    if tensor.doc_string:
        header.doc_string = tensor.doc_string
    head = header.SerializeToString()
    raw_len = tensor.nbytes
    tensor_len = len(head) + len(_RAW_TAG) + len(wire.encode_varint(raw_len)) + raw_len
    init = _INIT_TAG + wire.encode_varint(tensor_len)
    return _GRAPH_TAG + wire.encode_varint(len(init) + tensor_len) + init + head + _RAW_TAG + wire.encode_varint(raw_len), tensor
