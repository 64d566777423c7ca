"""onnxruntime sessions for models held in onnx-ir, for validation and calibration."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from . import model_io, shapes, sparse_codec
from .constants import all_graphs, weight_bytes
from .errors import ModelError

Feeds = Mapping[str, np.ndarray]

# onnxruntime logs kernel failures to stderr in colour; we report them as one line instead
# (the exception carries the same message), so only fatal records get through.
ort.set_default_logger_severity(4)

#: Graph optimisation levels by name. Comparisons use "disabled": onnxruntime's own fusions
#: would hide differences (a BN-fusion difference of 6e-5 showed as exactly 0 with them on).
LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "default": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


#: Above this many weight bytes a session is not built from serialised bytes (a proto plus its
#: bytes: two transient copies of every weight beside the model and onnxruntime's own copy) but
#: shares the model's weight arrays (measured on 2.2 GB: peak RSS 1.06x the weights, 0.03x of
#: it heap), falling back to a temporary file with external data.
_IN_MEMORY_LIMIT_BYTES = 16 * 2**20


@contextlib.contextmanager
def session(
    model: ir.Model | onnx.ModelProto,
    level: str = "disabled",
    extra_outputs: Sequence[ir.Value] = (),
    threads: int = 0,
    profile: str | None = None,
    spinning: bool = False,
) -> Iterator[ort.InferenceSession]:
    """A CPU session for ``model``; ``extra_outputs`` are exposed as additional outputs.
    ``profile``: a file prefix for onnxruntime's profiler (every kernel run, subgraphs included;
    ``end_profiling()`` returns the file).

    ``spinning=False`` (the default) stops idle intra-op threads from busy-waiting between runs
    (onnxruntime's own default spins): calibration runs alternate with numpy work, where spinning
    cost ~2 of 7 CPU-s of obs+reconstruction on a ResNet-18 graph on a loaded machine, and a
    validation session's spinning thread a third of its CPU (PP-OCR det), for no wall-clock
    gain; latency measurements ask for it explicitly.

    Models with more than :data:`_IN_MEMORY_LIMIT_BYTES` of weights share their weight arrays
    with onnxruntime (:func:`_create_sharing_weights`), or else go through a temporary file with
    external data.
    """
    opts = _options(level, threads, profile, spinning)
    added: list[ir.Value] = []
    if isinstance(model, ir.Model):
        for value in extra_outputs:
            if value not in model.graph.outputs and not value.is_graph_input():
                model.graph.outputs.append(value)
                added.append(value)
    try:
        if isinstance(model, onnx.ModelProto) or loads_in_memory(model):
            data = model_io.to_bytes(model)
            yield _create(data, opts)
        else:
            with tempfile.TemporaryDirectory(prefix="onnxslim-") as tmp:
                try:
                    sess = _create_sharing_weights(model, opts, Path(tmp))
                except ModelError:
                    # Some graph optimisers (Conv fusions at "basic" and up) read initializer data
                    # from the proto, i.e. the placeholder file: such sessions take the temp file.
                    if level == "disabled":
                        raise
                    sess = None
                if sess is None:
                    path = Path(tmp) / "model.onnx"
                    model_io.save(model, path, external_data=True)
                    sess = _create(str(path), _options(level, threads, profile, spinning))  # opts may hold shared weights
                yield sess
    finally:
        for value in added:
            model.graph.outputs.remove(value)
        if added:
            shapes.forget_removed_io(model.graph)


#: Dense bytes of the CSR decodes loaded together by :func:`check_loads`.
_DECODE_GROUP_BYTES = 32 * 2**20


def check_loads(model: ir.Model | onnx.ModelProto, level: str = "default") -> None:
    """Raise :class:`ModelError` unless onnxruntime loads ``model`` at ``level``.

    The session only loads, it never runs: it gets one thread (a pool of intra-op threads
    costs more CPU to start than loading a small model; the graph transformations do not
    depend on it).

    onnxruntime folds every CSR decode (:mod:`sparse_codec`) at load, all of them in one pass:
    on a BERT-base-shaped model at 90% sparsity that peaked at 2.7x the dense weights. Above
    :data:`_IN_MEMORY_LIMIT_BYTES` the main graph's decodes are therefore loaded at ``level``
    in groups of :data:`_DECODE_GROUP_BYTES` (folded by onnxruntime as usual), and the model is
    then loaded with the tensors they fold to as its (shared) initializers: the graph
    onnxruntime's folding leaves, at the memory of the dense weights.
    """
    if isinstance(model, onnx.ModelProto):
        with session(model, level, threads=1):
            return
    decodes = [d for d in sparse_codec.find_decodes(model) if d.graph is model.graph]
    sizes = _dense_bytes(decodes) if decodes and not loads_in_memory(model) else None
    if sizes is None:
        with session(model, level, threads=1):
            return
    dense = model.clone()  # tensors shared; its decodes are replaced, the model's are not
    wanted = {d.output.name for d in decodes}
    replace = {d.output.name: d for d in sparse_codec.find_decodes(dense) if d.graph is dense.graph and d.output.name in wanted}
    group: list[str] = []
    group_bytes = 0
    for decode, size in zip(decodes, sizes):
        group.append(decode.output.name)
        group_bytes += size
        if group_bytes >= _DECODE_GROUP_BYTES or decode is decodes[-1]:
            for name, array in _folded(model, group, level).items():
                sparse_codec.replace_with_dense(replace[name], array)
            group, group_bytes = [], 0
            model_io.trim_heap()  # the fold's transients, between the arrays kept
    with session(dense, level, threads=1):
        pass


def _dense_bytes(decodes: Sequence[sparse_codec.Decode]) -> list[int] | None:
    """Bytes of each decode's dense tensor; None if one does not read constants only (edited by
    another tool): such a model is loaded whole."""
    try:
        parts = [d.parts() for d in decodes]
    except (ValueError, KeyError):
        return None
    return [int(np.prod(p.shape, dtype=np.int64)) * p.values.dtype.itemsize for p in parts]


def _folded(model: ir.Model, names: Sequence[str], level: str) -> dict[str, np.ndarray]:
    """Load only the decodes producing ``names`` at ``level``; the tensors onnxruntime makes of them."""
    alone = model.clone()
    graph = alone.graph
    graph.outputs.clear()
    graph.outputs.extend(v for node in graph for v in node.outputs if v.name in names)
    from onnx_ir.passes import common

    common.RemoveUnusedNodesPass()(alone)  # the rest of the model (and the weights only it reads)
    graph.inputs.clear()  # decodes read initializers only
    with session(alone, level) as sess:
        return run(sess, {})


def loads_in_memory(model: ir.Model) -> bool:
    """Whether :func:`session` builds ``model``'s session from its serialised proto (so a caller
    may serialise once with :func:`model_io.to_proto` and pass the proto to several sessions)."""
    return weight_bytes(model) <= _IN_MEMORY_LIMIT_BYTES


def _options(level: str, threads: int, profile: str | None = None, spinning: bool = True) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = LEVELS[level]
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if level == "disabled":
        # Comparisons take one kernel path whatever the model's size: weight-sharing sessions
        # (above the in-memory limit) cannot prepack, so none do (prepacked MatMul sums in
        # another order: 8.5e-6 apart on a 4096-wide stack).
        opts.add_session_config_entry("session.disable_prepacking", "1")
        # Without prepacking onnxruntime lays every initializer out with its memory-pattern
        # planner, quadratic in their number (a 100k-node chain with 50k small initializers:
        # 325 s to create the session instead of 11 s). The layout does not change results.
        opts.enable_mem_pattern = False
    opts.log_severity_level = 4
    if threads:
        opts.intra_op_num_threads = threads
    return opts


#: dtypes onnxruntime can wrap in place (``OrtValue.ortvalue_from_numpy``).
_SHAREABLE_DTYPES = {
    np.dtype(t)
    for t in (np.float32, np.float64, np.float16, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64, np.bool_)
}
_PLACEHOLDER = "onnxslim-shared-weights.bin"


def _create_sharing_weights(model: ir.Model, opts: ort.SessionOptions, tmp: Path) -> ort.InferenceSession | None:
    """A session that computes with the model's own weight arrays, not a copy of them.

    Large main-graph initializers go to onnxruntime through ``add_initializer``, which uses the
    buffers as they are (memory-mapped external data stays file-backed and shared); the proto
    names them with a reference to an empty placeholder file that is never read. Prepacking is
    off: it would copy every MatMul/Conv weight once more (2x weight bytes at peak). None when
    some weight cannot be shared (an exotic dtype, a weight inside a subgraph).
    """
    for graph in all_graphs(model):
        if graph is not model.graph and any(isinstance(v.const_value, ir.ExternalTensor) for v in graph.initializers.values()):
            return None
    large = [v for v in model.graph.initializers.values() if v.const_value is not None and v.const_value.nbytes > shapes._SKELETON_LIMIT_BYTES]
    if any(v.is_graph_input() or v.const_value.dtype.numpy() not in _SHAREABLE_DTYPES for v in large):
        return None
    arrays = {v.name: np.ascontiguousarray(v.const_value.numpy()) for v in large}  # mapped, not read
    with shapes.skeleton(model) as proto:  # the proto without them (as typed inputs); model restored
        pass
    keep = [i for i in proto.graph.input if i.name not in arrays]
    del proto.graph.input[:]
    proto.graph.input.extend(keep)
    (tmp / _PLACEHOLDER).touch()
    shared = []
    for name, array in arrays.items():
        tensor = proto.graph.initializer.add()
        tensor.name = name
        tensor.data_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
        tensor.dims.extend(array.shape)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, val in (("location", _PLACEHOLDER), ("offset", "0"), ("length", str(array.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, val
        value = ort.OrtValue.ortvalue_from_numpy(array)
        opts.add_initializer(name, value)
        shared.append(value)
    proto.ir_version = min(proto.ir_version, model_io.MAX_IR_VERSION)
    opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(tmp))
    opts.add_session_config_entry("session.disable_prepacking", "1")
    opts.enable_mem_pattern = False  # see _options
    sess = _create(proto.SerializeToString(), opts)
    sess._onnxslim_shared_weights = (shared, arrays)  # the buffers must outlive the session
    return sess


def _create(source: bytes | str, opts: ort.SessionOptions) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelError(f"onnxruntime cannot load the model: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def run(sess: ort.InferenceSession, feeds: Feeds, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Run one sample; only feeds the session declares are passed."""
    wanted = {i.name for i in sess.get_inputs()}
    outputs = list(names) if names is not None else [o.name for o in sess.get_outputs()]
    try:
        values = sess.run(outputs, {k: v for k, v in feeds.items() if k in wanted})
    except Exception as exc:
        raise ModelError(f"onnxruntime failed to run the model: {_first_line(exc)}") from exc
    return dict(zip(outputs, map(_owned, values)))


def _owned(value):
    """A copy of an output that wraps onnxruntime's buffer: the wrapper keeps the session's
    whole memory arena alive (kept reference outputs held a freed session's activations;
    folded weights kept this way cost 1.3x their size)."""
    if isinstance(value, np.ndarray) and not value.flags.owndata and type(value.base).__name__ == "PyCapsule":
        return value.copy()
    if isinstance(value, list):
        return [_owned(v) for v in value]
    return value
