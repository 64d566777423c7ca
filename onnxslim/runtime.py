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

from . import model_io
from .constants import weight_bytes
from .errors import ModelError

Feeds = Mapping[str, np.ndarray]

# onnxruntime logs kernel failures to stderr in colour; we report them as one line instead.
ort.set_default_logger_severity(3)

#: Graph optimisation levels by name. Comparisons use "disabled": onnxruntime's own fusions
#: would hide differences (a BN-fusion difference of 6e-5 showed as exactly 0 with them on).
LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "default": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


#: Above this many weight bytes a session is built from a temporary file with external data:
#: tensors stream to disk one by one, instead of a serialised proto plus its bytes (two
#: transient copies of every weight) living beside the model and onnxruntime's own copy.
_IN_MEMORY_LIMIT_BYTES = 16 * 2**20


@contextlib.contextmanager
def session(
    model: ir.Model | onnx.ModelProto,
    level: str = "disabled",
    extra_outputs: Sequence[ir.Value] = (),
    threads: int = 0,
) -> Iterator[ort.InferenceSession]:
    """A CPU session for ``model``; ``extra_outputs`` are exposed as additional outputs.

    Models with more than :data:`_IN_MEMORY_LIMIT_BYTES` of weights go through a temporary file
    with external data.
    """
    opts = ort.SessionOptions()
    opts.graph_optimization_level = LEVELS[level]
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    added: list[ir.Value] = []
    if isinstance(model, ir.Model):
        for value in extra_outputs:
            if value not in model.graph.outputs and not value.is_graph_input():
                model.graph.outputs.append(value)
                added.append(value)
    try:
        if isinstance(model, onnx.ModelProto) or weight_bytes(model) <= _IN_MEMORY_LIMIT_BYTES:
            data = model_io.to_bytes(model)
            yield _create(data, opts)
        else:
            with tempfile.TemporaryDirectory(prefix="onnxslim-") as tmp:
                path = Path(tmp) / "model.onnx"
                model_io.save(model, path, external_data=True)
                yield _create(str(path), opts)
    finally:
        for value in added:
            model.graph.outputs.remove(value)


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
    return dict(zip(outputs, values))
