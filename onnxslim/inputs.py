"""Model inputs for validation and calibration: seeded from the signature, or the user's data.

Random inputs are built from each graph input's dtype and shape. Dynamic dimensions come from
``--input-shape name=1x3x224x224``; otherwise the leading dimension is 1 and every other
unknown dimension is :data:`DEFAULT_DIM` (a named dim gets one size across all inputs, and a
name that is some input's leading dim is the batch) (64: divisible by a typical CNN's stride of 32 and a
plausible sequence length), with a warning naming the dims chosen. Integer inputs get valid
small ranges: Gather indices stay inside the table, "mask" inputs are ones, other ids are in
``[0, 10)``.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from .errors import UsageError, arg, did_you_mean

Sample = dict[str, np.ndarray]

DEFAULT_DIM = 64
DEFAULT_BATCH = 1
DEFAULT_INT_HIGH = 10


class DefaultedDimsWarning(UserWarning):
    """Dynamic input dims were given default sizes (the model may not run at them)."""


def model_inputs(model: ir.Model) -> list[ir.Value]:
    """Graph inputs that need feeding (inputs that are also initializers are optional)."""
    return [v for v in model.graph.inputs if not (v.is_initializer() and v.const_value is not None)]


def parse_shape_arg(text: str) -> tuple[str, tuple[int, ...]]:
    """One input shape as the command line gives it: ours, ``name=1x3x224x224``, or the other
    tools' (onnxsim, OnnxSlim, Polygraphy), ``name:1,3,224,224`` or ``name:[1,3,224,224]``.
    A name may itself hold ``:`` (``input:0``): the last separator splits. ``name=`` is a scalar."""
    sep = "=" if "=" in text else ":"
    name, found, dims = text.rpartition(sep)
    if not found or not name:
        raise UsageError(f"input shape: expected name=1x3x224x224 or name:1,3,224,224, got {text!r}")
    dims = dims.strip().removeprefix("[").removesuffix("]").replace(",", "x")
    try:
        shape = tuple(int(d) for d in dims.split("x")) if dims else ()
    except ValueError:
        raise UsageError(f"input shape: bad dimensions in {text!r}") from None
    return name, shape


def check_shapes(shapes: Mapping[str, Sequence[int]] | None) -> dict[str, tuple[int, ...]] | None:
    """User input shapes as tuples of positive ints (names are checked against the model later)."""
    if shapes is None:
        return None
    if not isinstance(shapes, Mapping):
        raise UsageError(f"{arg('input_shapes')}: expected a mapping of input name to shape, got {type(shapes).__name__}")
    result = {}
    for name, dims in shapes.items():
        try:
            shape = tuple(dims)
        except TypeError:
            shape = None
        if shape is None or not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape):
            raise UsageError(f"{arg('input_shapes')}: dimensions of {name!r} must be positive integers, got {dims!r}")
        result[name] = tuple(int(d) for d in shape)
    return result


def check_shape_names(model: ir.Model, shapes: Mapping[str, Sequence[int]] | None) -> None:
    """Every ``--input-shape`` name must be an input of the model (also when data is given)."""
    names = {v.name for v in model_inputs(model)}
    for name in shapes or {}:
        if name not in names:
            hint = did_you_mean(name, names)
            raise UsageError(f"{arg('input_shapes')}: model has no input {name!r}{hint} (inputs: {', '.join(sorted(names))})")


def resolve_shapes(model: ir.Model, shapes: Mapping[str, Sequence[int]] | None) -> dict[str, tuple[int, ...]]:
    """A concrete shape for every input; unknown dims get documented defaults with a warning."""
    shapes = dict(shapes or {})
    inputs = model_inputs(model)
    check_shape_names(model, shapes)
    resolved: dict[str, tuple[int, ...]] = {}
    defaulted: list[str] = []
    # A named dim means the same size everywhere: learn sizes from user shapes first, and
    # treat a name that is axis 0 of some input as the batch.
    symbols: dict[str, int] = {}
    for value in inputs:
        if value.name in shapes and value.shape is not None:
            for dim, size in zip(value.shape, shapes[value.name]):
                if not isinstance(dim, int) and dim.value is not None:
                    symbols.setdefault(str(dim.value), int(size))
    batch_names = {str(v.shape[0].value) for v in inputs if v.shape is not None and len(v.shape) and not isinstance(v.shape[0], int)}
    for value in inputs:
        declared = value.shape
        if value.name in shapes:
            shape = tuple(shapes[value.name])
            if declared is not None and len(declared) != len(shape):
                raise UsageError(f"{arg('input_shapes')}: input {value.name!r} has rank {len(declared)}, got {len(shape)} dims")
            if declared is not None:
                for have, want in zip(declared, shape):
                    if isinstance(have, int) and have != want:
                        raise UsageError(f"{arg('input_shapes')}: input {value.name!r} has fixed dim {have}, got {want}")
            resolved[value.name] = shape
            continue
        if declared is None:
            raise UsageError(f"input {value.name!r} has no declared shape; give it with {arg('input_shapes')} {value.name}=...")
        dims = []
        for axis, dim in enumerate(declared):
            if isinstance(dim, int):
                dims.append(dim)
                continue
            name = str(dim.value) if dim.value is not None else None
            if name is not None and name in symbols:
                dims.append(symbols[name])
                continue
            size = DEFAULT_BATCH if axis == 0 or name in batch_names else DEFAULT_DIM
            if name is not None:
                symbols[name] = size
            dims.append(size)
            defaulted.append(f"{value.name}[{axis}]={size}")
        resolved[value.name] = tuple(dims)
    if defaulted:
        warnings.warn(
            f"dynamic input dims defaulted ({', '.join(defaulted)}); set them with {arg('input_shapes')}",
            DefaultedDimsWarning,
            stacklevel=2,
        )
    return resolved


def _gather_bound(value: ir.Value) -> int | None:
    """If ``value`` indexes a constant table (Gather indices), the table's size along the axis."""
    for use in value.uses():
        node = use.node
        if node.op_type == "Gather" and use.idx == 1:
            table = node.inputs[0]
            data = table.const_value if table is not None else None
            if data is None and table is not None and table.producer() is not None:
                prod = table.producer()
                if prod.op_type == "Constant" and "value" in prod.attributes:
                    data = prod.attributes["value"].as_tensor()
            if data is not None:
                attr = node.attributes.get("axis")
                axis = attr.as_int() if attr is not None else 0
                return int(data.shape[axis])
        if node.op_type in ("Cast", "Unsqueeze", "Reshape", "Identity") and use.idx == 0:
            bound = _gather_bound(node.outputs[0])
            if bound is not None:
                return bound
    return None


def random_samples(
    model: ir.Model, count: int = 1, seed: int = 0, shapes: Mapping[str, Sequence[int]] | None = None
) -> list[Sample]:
    """``count`` seeded random samples matching the input signature."""
    resolved = resolve_shapes(model, shapes)
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        sample: Sample = {}
        for value in model_inputs(model):
            shape = resolved[value.name]
            dtype = value.dtype
            if dtype is None:
                raise UsageError(f"input {value.name!r} has no declared type; provide data with --inputs")
            np_dtype = dtype.numpy()
            if dtype == ir.DataType.BOOL:
                arr = rng.random(shape) < 0.5
            elif dtype.is_floating_point():
                arr = rng.standard_normal(shape).astype(np_dtype)
            elif dtype.is_integer():
                if "mask" in (value.name or "").lower():
                    arr = np.ones(shape, dtype=np_dtype)
                else:
                    high = _gather_bound(value) or DEFAULT_INT_HIGH
                    arr = rng.integers(0, high, size=shape).astype(np_dtype)
            elif dtype == ir.DataType.STRING:
                arr = np.array(rng.choice(["a", "b", "c"], size=shape), dtype=object)
            else:
                raise UsageError(f"input {value.name!r} has type {dtype.name}; provide data with --inputs")
            sample[value.name] = np.ascontiguousarray(arr)
        samples.append(sample)
    return samples


def load_samples(path: str | Path, model: ir.Model) -> list[Sample]:
    """Samples from an ``.npz`` keyed by input name, checked by :func:`conform`.

    An array with one more dimension than the input's rank holds several samples along axis 0;
    an array of the input's rank is one sample.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such input data file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:
        raise UsageError(f"{path}: not a readable .npz file ({type(exc).__name__})") from None
    ranks = {v.name: len(v.shape) for v in model_inputs(model) if v.shape is not None}
    split = {name: list(arr) if arr.ndim == ranks.get(name, arr.ndim) + 1 else [arr] for name, arr in arrays.items()}
    counts = {len(arrs) for arrs in split.values()}
    if len(counts) > 1:
        raise UsageError(f"{path}: inputs hold different numbers of samples {sorted(counts)}")
    n = counts.pop() if counts else 1
    return conform(model, [{name: arrs[i] for name, arrs in split.items()} for i in range(n)], str(path))


def conform(model: ir.Model, samples: Sample | Sequence[Sample], where: str) -> list[Sample]:
    """User samples (validation or calibration) checked against the input signature: at least
    one; each a dict with an array for every input the model needs and no unknown name; each
    array of the input's rank and fixed dims, cast to its dtype where the kind is kept
    (float64 to float32, not float to int). A single dict is one sample."""
    if isinstance(samples, Mapping):
        samples = [samples]
    if not isinstance(samples, Sequence) or isinstance(samples, str):
        raise UsageError(f"{where}: expected an .npz path or a list of dicts of arrays, got {type(samples).__name__}")
    if not samples:
        raise UsageError(f"{where}: no samples")
    inputs = model_inputs(model)
    known = {v.name for v in model.graph.inputs}
    result = []
    for index, sample in enumerate(samples):
        label = f"{where} (sample {index})" if len(samples) > 1 else where
        if not isinstance(sample, Mapping):
            raise UsageError(f"{label}: a sample is a dict of arrays keyed by input name, got {type(sample).__name__}")
        unknown = sorted(set(sample) - known)
        if unknown:
            raise UsageError(f"{label}: model has no input {unknown[0]!r} (inputs: {', '.join(sorted(known))})")
        missing = [v.name for v in inputs if v.name not in sample]
        if missing:
            raise UsageError(f"{label}: no data for input {missing[0]!r}")
        sample = dict(sample)
        for value in inputs:
            if isinstance(value.type, ir.TensorType):
                sample[value.name] = _conform_array(value, sample[value.name], label)
        result.append(sample)
    return result


def _conform_array(value: ir.Value, data, where: str) -> np.ndarray:
    arr = np.asarray(data)
    declared = value.shape
    if declared is not None:
        if arr.ndim != len(declared):
            raise UsageError(f"{where}: {value.name!r} has rank {arr.ndim}, the input has rank {len(declared)}")
        for axis, (have, want) in enumerate(zip(arr.shape, declared)):
            if isinstance(want, int) and have != want:
                raise UsageError(f"{where}: {value.name!r} has shape {arr.shape}, the input has size {want} at axis {axis}")
    want = value.dtype.numpy() if value.dtype is not None else arr.dtype
    if not np.can_cast(arr.dtype, want, "same_kind"):
        raise UsageError(f"{where}: {value.name!r} is {arr.dtype}, the input is {want}")
    return np.asarray(arr, dtype=want, order="C")  # (ascontiguousarray would make a scalar 1-D)


@dataclasses.dataclass
class InputConfig:
    """Where samples come from: a data file, or seeded random data with optional shapes."""

    data: str | os.PathLike | Sample | Sequence[Sample] | None = None
    shapes: Mapping[str, Sequence[int]] | None = None
    count: int = 2
    seed: int = 0
    #: What the samples are for, in messages ("inputs", "calibration").
    label: str = "inputs"

    def samples(self, model: ir.Model) -> list[Sample]:
        if self.data is None:
            return random_samples(model, self.count, self.seed, self.shapes)
        if isinstance(self.data, (str, os.PathLike)):
            return load_samples(self.data, model)
        return conform(model, self.data, self.label)
