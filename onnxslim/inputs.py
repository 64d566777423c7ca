"""Model inputs for validation and calibration: seeded from the signature, or the user's data.

Random inputs are built from each graph input's dtype and shape. Dynamic dimensions (named,
unnamed, or written as a negative ``dim_value`` as Paddle exports do) come from
``--input-shape name=1x3x224x224``; otherwise the leading dimension is 1 and every other
unknown dimension is :data:`DEFAULT_DIM` (a named dim gets one size across all inputs, and a
name that is some input's leading dim is the batch) (64: divisible by a typical CNN's stride of 32 and a
plausible sequence length), with a warning naming the dims chosen; when the model cannot run
at those, the manager retries the larger :data:`RETRY_DIMS`. Integer inputs get values from
how the graph uses them (:func:`derived_values`): constants they are compared with (one sample
per value, so every branch they select is validated), Gather table sizes, Range/Slice steps;
"mask" inputs are ones, other ids are in ``[0, 10)``.

Built samples are bounded: all of them together take at most :data:`MAX_SAMPLE_BYTES`, and at
most :data:`MAX_SAMPLES` are built (larger data comes with ``--inputs``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from .errors import UsageError, arg, did_you_mean

Sample = dict[str, np.ndarray]

DEFAULT_DIM = 64
#: Larger sizes for the defaulted dims, tried in order when the model fails at the smaller ones
#: (a voice-activity detector needs more than 64 samples; 16000 is one second of 16 kHz audio).
RETRY_DIMS = (256, 1024, 16000)
DEFAULT_BATCH = 1
DEFAULT_INT_HIGH = 10
#: The most bytes all built (random) samples may take together, and the most samples built.
MAX_SAMPLE_BYTES = 1 << 30
MAX_SAMPLES = 10_000


class DefaultedDimsWarning(UserWarning):
    """Dynamic input dims were given default sizes (the model may not run at them)."""


class DerivedValuesWarning(UserWarning):
    """Integer inputs take values found in the graph (each one is validated)."""


def fixed_dim(dim) -> int | None:
    """A dim's fixed size, or None when it is dynamic: symbolic, unknown, or negative (Paddle
    writes ``dim_value: -1`` for a dynamic dim)."""
    return dim if isinstance(dim, int) and dim >= 0 else None


def _dim_name(dim) -> str | None:
    return str(dim.value) if not isinstance(dim, int) and dim.value is not None else None


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


def resolve_shapes(
    model: ir.Model, shapes: Mapping[str, Sequence[int]] | None, default_dim: int = DEFAULT_DIM
) -> dict[str, tuple[int, ...]]:
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
                if _dim_name(dim) is not None:
                    symbols.setdefault(_dim_name(dim), int(size))
    batch_names = {_dim_name(v.shape[0]) for v in inputs if v.shape is not None and len(v.shape)} - {None}
    for value in inputs:
        declared = value.shape
        if value.name in shapes:
            shape = tuple(shapes[value.name])
            if declared is not None and len(declared) != len(shape):
                raise UsageError(f"{arg('input_shapes')}: input {value.name!r} has rank {len(declared)}, got {len(shape)} dims")
            if declared is not None:
                for have, want in zip(declared, shape):
                    if fixed_dim(have) is not None and have != want:
                        raise UsageError(f"{arg('input_shapes')}: input {value.name!r} has fixed dim {have}, got {want}")
            resolved[value.name] = shape
            continue
        if declared is None:
            raise UsageError(f"input {value.name!r} has no declared shape; give it with {arg('input_shapes')} {value.name}=...")
        dims = []
        for axis, dim in enumerate(declared):
            if fixed_dim(dim) is not None:
                dims.append(dim)
                continue
            name = _dim_name(dim)
            if name is not None and name in symbols:
                dims.append(symbols[name])
                continue
            size = DEFAULT_BATCH if axis == 0 or name in batch_names else default_dim
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


def check_sample_size(model: ir.Model, shapes: Mapping[str, Sequence[int]], count: int) -> None:
    """Refuse to build samples over :data:`MAX_SAMPLE_BYTES` (or more than :data:`MAX_SAMPLES`)
    before allocating anything: a declared dim of 10**9 must not exhaust memory."""
    if count > MAX_SAMPLES:
        raise UsageError(f"{arg('samples')} {count}: at most {MAX_SAMPLES} random samples are built; give more data with {arg('inputs')}")
    sizes = {}
    for value in model_inputs(model):
        if value.name in shapes and value.dtype is not None:
            itemsize = value.dtype.itemsize if value.dtype != ir.DataType.STRING else 8
            sizes[value.name] = math.prod(shapes[value.name]) * max(1, int(itemsize)) * count
    total = sum(sizes.values())
    if total > MAX_SAMPLE_BYTES:
        name = max(sizes, key=sizes.get)
        shape = "x".join(map(str, shapes[name]))
        raise UsageError(
            f"input {name!r} of shape {shape} needs {_gib(sizes[name])} for {count} random sample(s), over the "
            f"{_gib(MAX_SAMPLE_BYTES)} limit for built samples; give data with {arg('inputs')} (or a smaller {arg('input_shapes')})"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB"


#: Ops that pass an integer through unchanged in value (to find how the graph uses an input).
_VALUE_PRESERVING = {"Cast", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten", "Expand", "Gather"}
_ORDERED_COMPARISONS = {"Greater", "Less", "GreaterOrEqual", "LessOrEqual"}


def _constant(value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        return producer.attributes["value"].as_tensor().numpy()
    return None


def _uses(value: ir.Value) -> Iterator[tuple[ir.Node, int]]:
    """Every (node, input index) reading ``value`` or a value-preserving view of it."""
    seen, stack = set(), [value]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for use in current.uses():
            node = use.node
            if node.op_type in _VALUE_PRESERVING and use.idx == 0 and node.outputs:
                stack.append(node.outputs[0])
            else:
                yield node, use.idx


def _gather_bound(value: ir.Value) -> int | None:
    """If ``value`` indexes a constant table (Gather indices), the table's size along the axis."""
    for node, idx in _uses(value):
        if node.op_type == "Gather" and idx == 1:
            data = _constant(node.inputs[0])
            if data is not None:
                attr = node.attributes.get("axis")
                axis = attr.as_int() if attr is not None else 0
                return int(data.shape[axis])
    return None


def derived_values(value: ir.Value) -> tuple[list[int], str] | None:
    """Values an integer input should take, from how the graph uses it, and why: the constants it
    is compared with (``Equal``: each constant and one value equal to none of them, so every
    branch an ``If`` selects on it is reached; ordered comparisons: one value either side), or
    1 where it is a ``Range`` delta, a ``Slice`` step or a ``SplitToSequence`` split (0 would be
    invalid) and 0 for a ``Slice`` axis. None when the graph says nothing."""
    equal: set[int] = set()
    ordered: set[int] = set()
    fixed: set[int] = set()
    for node, idx in _uses(value):
        op = node.op_type
        if op == "Equal" or op in _ORDERED_COMPARISONS:
            other = _constant(node.inputs[1 - idx]) if idx in (0, 1) else None
            if other is None or other.dtype.kind not in "iub" or other.size > 16:
                continue
            for c in (int(v) for v in other.reshape(-1)):
                if op == "Equal":
                    equal.add(c)
                else:
                    ordered.update((c - 1, c + 1))
        elif (op == "Range" and idx == 2) or (op == "Slice" and idx == 4) or (op == "SplitToSequence" and idx == 1):
            fixed.add(1)
        elif op == "Slice" and idx == 3:
            fixed.add(0)
    if equal or ordered:
        values = sorted(equal | ordered)
        if equal:
            values.append(next(v for v in range(len(values) + 1) if v not in equal | ordered))
        why = ", ".join(
            part for part in (
                f"compared with {', '.join(map(str, sorted(equal)))}" if equal else "",
                "ordered comparisons" if ordered else "",
            ) if part
        )
        return values, why
    if fixed:
        return [min(fixed)], "Range delta / Slice step or axis / SplitToSequence split"
    return None


def _fit(values: list[int], dtype: np.dtype) -> list[int]:
    info = np.iinfo(dtype)
    return list(dict.fromkeys(min(max(v, info.min), info.max) for v in values))


def random_samples(
    model: ir.Model,
    count: int = 1,
    seed: int = 0,
    shapes: Mapping[str, Sequence[int]] | None = None,
    default_dim: int = DEFAULT_DIM,
) -> list[Sample]:
    """At least ``count`` seeded random samples matching the input signature (more when an
    integer input takes more derived values than that: one sample per value)."""
    resolved = resolve_shapes(model, shapes, default_dim)
    rng = np.random.default_rng(seed)
    inputs = model_inputs(model)
    derived: dict[str, list[int]] = {}
    for value in inputs:
        dtype = value.dtype
        if dtype is None:
            raise UsageError(f"input {value.name!r} has no declared type; provide data with --inputs")
        if dtype.is_integer() and "mask" not in (value.name or "").lower():
            found = derived_values(value)
            if found is not None:
                values = _fit(found[0], dtype.numpy())
                bound = _gather_bound(value)
                values = [v for v in values if bound is None or 0 <= v < bound] or values
                derived[value.name] = values
                if len(values) > 1 or found[1].startswith("compared"):
                    warnings.warn(
                        f"input {value.name!r} takes {', '.join(map(str, values))} (from the graph: {found[1]}); "
                        "one sample per value",
                        DerivedValuesWarning,
                        stacklevel=2,
                    )
    count = max([count, *(len(v) for v in derived.values())])
    check_sample_size(model, resolved, count)
    samples = []
    for index in range(count):
        sample: Sample = {}
        for value in inputs:
            shape = resolved[value.name]
            dtype = value.dtype
            np_dtype = dtype.numpy()
            if dtype == ir.DataType.BOOL:
                arr = rng.random(shape) < 0.5
            elif dtype.is_floating_point():
                arr = rng.standard_normal(shape).astype(np_dtype)
            elif dtype.is_integer():
                if value.name in derived:
                    values = derived[value.name]
                    arr = np.full(shape, values[index % len(values)], dtype=np_dtype)
                elif "mask" in (value.name or "").lower():
                    arr = np.ones(shape, dtype=np_dtype)
                else:
                    high = _gather_bound(value) or DEFAULT_INT_HIGH
                    arr = rng.integers(0, high, size=shape).astype(np_dtype)
            elif dtype == ir.DataType.STRING:
                arr = np.array(rng.choice(["a", "b", "c"], size=shape), dtype=object)
            else:
                raise UsageError(f"input {value.name!r} has type {dtype.name}; provide data with --inputs")
            sample[value.name] = np.asarray(arr, order="C")  # (ascontiguousarray makes a scalar 1-D)
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
    known = {v.name for v in model.graph.inputs}
    unknown = sorted(set(arrays) - known)
    if unknown:  # before counting samples: a misspelled key would read as a count mismatch
        raise UsageError(f"{path}: model has no input {unknown[0]!r} (inputs: {', '.join(sorted(known))})")
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
    _warn_non_finite(result, where)
    return result


class NonFiniteDataWarning(UserWarning):
    """User data holds NaN or inf (outputs compare NaN with NaN; drift and cosine skip them)."""


def _warn_non_finite(samples: Sequence[Sample], where: str) -> None:
    bad = {}
    for sample in samples:
        for name, arr in sample.items():
            if isinstance(arr, np.ndarray) and arr.dtype.kind in "fc" and not np.isfinite(arr).all():
                bad[name] = bad.get(name, 0) + int(arr.size - np.isfinite(arr).sum())
    if bad:
        listed = ", ".join(f"{name!r} ({n} values)" for name, n in bad.items())
        warnings.warn(
            f"{where}: NaN or inf in {listed}; max |Δ| and cosine skip them, so results on this data say less",
            NonFiniteDataWarning,
            stacklevel=3,
        )


def _conform_array(value: ir.Value, data, where: str) -> np.ndarray:
    arr = np.asarray(data)
    declared = value.shape
    if declared is not None:
        if arr.ndim != len(declared):
            raise UsageError(f"{where}: {value.name!r} has rank {arr.ndim}, the input has rank {len(declared)}")
        for axis, (have, want) in enumerate(zip(arr.shape, declared)):
            if fixed_dim(want) is not None and have != want:
                raise UsageError(f"{where}: {value.name!r} has shape {arr.shape}, the input has size {want} at axis {axis}")
    want = value.dtype.numpy() if value.dtype is not None else arr.dtype
    if not np.can_cast(arr.dtype, want, "same_kind"):
        raise UsageError(f"{where}: {value.name!r} is {arr.dtype}, the input is {want}")
    return np.asarray(arr, dtype=want, order="C")  # (ascontiguousarray would make a scalar 1-D)


def sample_files(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The ``.npz`` files named by ``paths``: files as given, folders as their ``*.npz`` files
    in name order (not recursive)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix == ".npz" and p.is_file())
            if not found:
                raise UsageError(f"{path}: folder holds no .npz files")
            files.extend(found)
        else:
            files.append(path)
    return files


def load_sample_files(paths: str | os.PathLike | Sequence[str | os.PathLike], model: ir.Model) -> list[Sample]:
    """Samples from ``.npz`` files and folders of them (see :func:`sample_files`), in order. Each
    file is read by :func:`load_samples`, so samples of different files may have different
    shapes (variable-width crops, sentences of different lengths)."""
    return [sample for path in sample_files(paths) for sample in load_samples(path, model)]


def _is_paths(data) -> bool:
    if isinstance(data, (str, os.PathLike)):
        return True
    return isinstance(data, Sequence) and bool(data) and all(isinstance(d, (str, os.PathLike)) for d in data)


@dataclasses.dataclass
class InputConfig:
    """Where samples come from: data files (an ``.npz``, a folder of them, or a list of either),
    samples given directly, or seeded random data with optional shapes."""

    data: str | os.PathLike | Sequence[str | os.PathLike] | Sample | Sequence[Sample] | None = None
    shapes: Mapping[str, Sequence[int]] | None = None
    count: int = 2
    seed: int = 0
    #: What the samples are for, in messages ("inputs", "calibration").
    label: str = "inputs"
    #: The size given to dynamic dims that are neither batch nor set by ``shapes``.
    default_dim: int = DEFAULT_DIM

    def samples(self, model: ir.Model) -> list[Sample]:
        if self.data is None:
            return random_samples(model, self.count, self.seed, self.shapes, self.default_dim)
        if _is_paths(self.data):
            return load_sample_files(self.data, model)
        return conform(model, self.data, self.label)
