"""MACs and parameter counts now and after a keep plan (the prune pass's prediction)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from .. import shapes, stats
from ..constants import constant, model_constants

if TYPE_CHECKING:
    from .analysis import ChannelAnalysis
    from .groups import ChannelGroup


def predict(
    analysis: ChannelAnalysis,
    keep: Mapping[ChannelGroup, np.ndarray | Sequence[int]] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    sample: Mapping[str, np.ndarray] | None = None,
) -> dict[str, int]:
    """MACs (Conv/ConvTranspose/Gemm/MatMul, every one of them) and parameters now and after
    keeping ``keep``.

    MACs are counted at ``input_shapes``; dynamic dims not given count as 1 for a dim that
    leads some input (the batch) and 64 elsewhere. Shapes inference cannot resolve are
    measured in one onnxruntime run, as :func:`stats.count_macs` measures them: on ``sample``
    (the pass context's validation sample) when given, else on a seeded random sample at those
    shapes. Layers still unresolved (inside an If branch the sample does not take) are left out
    of both figures and counted in ``macs_unresolved``.
    """
    a = analysis
    kept = a._kept_components(keep)

    def frac(atoms: np.ndarray) -> float:
        return float(kept[a._comp[atoms]].mean()) if len(atoms) else 1.0

    base, unresolved = layer_macs(a, input_shapes, sample)
    macs_before = sum(base.values())
    macs_after = 0.0
    for node, factors in a.layers:
        macs_after += base.get(id(node), 0) * float(np.prod([frac(x) for x in factors]))
    params_before = sum(int(np.prod(c.shape)) for c in model_constants(a.model))
    per_storage: dict[int, tuple[int, float]] = {}
    private: dict[int, list[tuple[int, float]]] = {}
    for key, ref in a._refs.items():
        size = int(np.prod(ref.tensor.shape))
        if ref.private:
            private.setdefault(key[0], []).append((size, frac(ref.atoms)))
            continue
        size, f = per_storage.get(key[0], (size, 1.0))
        per_storage[key[0]] = (size, f * frac(ref.atoms))
    params_after = params_before - sum(size * (1.0 - f) for size, f in per_storage.values())
    for copies in private.values():  # sliced readers get copies; the original goes once none reads it
        params_after += sum(size * f for size, f in copies if f < 1.0)
        if all(f < 1.0 for _, f in copies):
            params_after -= copies[0][0]
    return {
        "macs_before": int(macs_before),
        "macs_after": int(round(macs_after)),
        "macs_unresolved": unresolved,
        "params_before": int(params_before),
        "params_after": int(round(params_after)),
    }


def layer_macs(
    analysis: ChannelAnalysis, input_shapes: Mapping[str, Sequence[int]] | None, sample: Mapping[str, np.ndarray] | None = None
) -> tuple[dict[int, int], int]:
    """MACs per layer node id at the input shapes, and how many layers have unknown shapes."""
    a = analysis
    dims = {k: [int(d) for d in v] for k, v in (input_shapes or {}).items()}
    key = (tuple(sorted((k, tuple(v)) for k, v in dims.items())), sample is not None)
    if key in a._base_macs:
        return a._base_macs[key]
    inputs = [v for v in a.model.graph.inputs if v.shape is not None and len(v.shape)]
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
        concrete = shapes.concrete_shapes(a.model, dims)
    except shapes.ShapeInferenceError:
        concrete = {}
    result = {}
    for node, _ in a.layers:
        macs = node_macs(node, concrete)
        if macs is not None:
            result[id(node)] = macs
    if len(result) < len(a.layers):  # measure what inference cannot resolve, as the report does
        measured = stats.measured_shapes(a.model, concrete, sample) if sample is not None else _measured(a.model, concrete, dims)
        concrete = {**concrete, **measured}
    for node, _ in a.layers:
        # measured on the pass's sample: no guess; else an open batch axis counts as the batch
        macs = node_macs(node, concrete, batch if sample is None else None) if id(node) not in result else None
        if macs is not None:
            result[id(node)] = macs
    a._base_macs[key] = result, len(a.layers) - len(result)
    return a._base_macs[key]


def node_macs(node: ir.Node, concrete: Mapping[str, tuple], batch: int | None = None) -> int | None:
    """Multiply-accumulates of one Conv/ConvTranspose/Gemm/MatMul at concrete shapes.

    With ``batch``, a batch axis inference leaves open (a broadcast against a shape it could
    not compute) counts as ``batch``; any other unknown dim makes the count unknown (None)."""
    matmul = node.op_type == "MatMul"

    def shape(value: ir.Value | None) -> tuple | None:
        c = constant(value)
        found = tuple(c.shape) if c is not None else concrete.get(value.name) if value is not None else None
        if found is None:
            return None
        batch_axis = [i < len(found) - 2 if matmul else i == 0 for i in range(len(found))]
        dims = tuple(batch if d is None and b and batch is not None else d for d, b in zip(found, batch_axis))
        return dims if all(isinstance(d, int) for d in dims) else None

    macs = stats.node_macs(node, shape)
    return None if macs is None else int(macs)


def _measured(model: ir.Model, concrete: Mapping[str, tuple], dims: Mapping[str, Sequence[int]]) -> dict[str, tuple]:
    """Shapes of layer tensors read from one onnxruntime run on a random sample at ``dims``."""
    from .. import inputs
    from ..errors import OnnxSlimError

    try:
        sample = inputs.random_samples(model, 1, 0, dims)[0]
    except OnnxSlimError:
        return {}
    return stats.measured_shapes(model, concrete, sample)
