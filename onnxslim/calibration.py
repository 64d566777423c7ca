"""Calibration data and the capture of intermediate tensors through onnxruntime.

Data-driven passes (activation criteria, Wanda, reconstruction, OBS) need the tensors flowing
into and out of layers. ``Calibration.capture`` exposes the requested values as extra graph
outputs for one session, runs every sample, and returns them concatenated along axis 0.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import onnx_ir as ir

from . import runtime
from .inputs import Sample


class Calibration:
    """Calibration samples (feeds keyed by input name) shared by every data-driven pass."""

    def __init__(self, samples: Sequence[Sample]):
        if not samples:
            raise ValueError("calibration needs at least one sample")
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def iter_capture(self, model: ir.Model, values: Sequence[ir.Value]) -> Iterator[dict[str, np.ndarray]]:
        """For each sample, the arrays of ``values`` (keyed by value name)."""
        values = _unique(values)
        feeds_only = {v.name for v in values if v.is_graph_input()}
        computed = [v for v in values if v.name not in feeds_only]
        _ensure_types(computed)
        with runtime.session(model, "basic", extra_outputs=computed) as sess:
            for sample in self.samples:
                out = runtime.run(sess, sample, [v.name for v in computed]) if computed else {}
                for name in feeds_only:
                    out[name] = sample[name]
                yield out

    def capture(self, model: ir.Model, values: Sequence[ir.Value]) -> dict[str, np.ndarray | list[np.ndarray]]:
        """The arrays of ``values`` over all samples, concatenated along axis 0; a value whose
        shape differs between samples beyond axis 0 (samples of different sizes) comes as the
        list of per-sample arrays."""
        collected: dict[str, list[np.ndarray]] = {}
        for out in self.iter_capture(model, values):
            for name, arr in out.items():
                collected.setdefault(name, []).append(arr)
        return {name: _concat(arrs) for name, arrs in collected.items()}


def _concat(arrays: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    if arrays[0].ndim == 0:
        return np.stack(arrays) if all(a.ndim == 0 for a in arrays) else arrays
    if len({(a.ndim, a.shape[1:]) for a in arrays}) > 1:
        return arrays
    return np.concatenate(arrays, axis=0)


def _unique(values: Sequence[ir.Value]) -> list[ir.Value]:
    seen: set[int] = set()
    out = []
    for v in values:
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


def _ensure_types(values: Sequence[ir.Value]) -> None:
    """Graph outputs need an element type; fill missing ones from the producer's inputs."""
    for value in values:
        if value.dtype is None:
            node = value.producer()
            dtypes = [i.dtype for i in node.inputs if i is not None and i.dtype is not None] if node else []
            value.dtype = dtypes[0] if dtypes else ir.DataType.FLOAT
