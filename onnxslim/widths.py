"""Latency-aware widths: the kept channel count of each group that onnxruntime CPU runs fast.

A group's width changes the cost of a handful of nodes only: the layers that produce its
channels, the ones in between (BatchNormalization, activations, depthwise convs, pools) and the
layers that read them. :func:`measured_widths` cuts those nodes out of the model (a small model of
the layer at its real input shapes, neighbouring groups already at their pruned widths), prunes
that small model to each candidate width near the requested one, times the candidates side by
side (:func:`onnxslim.latency.measure`: interleaved rounds, medians) and keeps the width on the
latency staircase nearest to the request. Timings are cached per layer shape, thread count,
onnxruntime version and CPU (``$ONNXSLIM_CACHE_DIR/widths`` or ``~/.cache/onnxslim/widths``), so
repeated blocks and later runs measure nothing again.

Why a staircase: onnxruntime's CPU convolutions run in the NCHWc layout, with channels in blocks
of :func:`nchwc_block` (16 with AVX-512, 8 with AVX2); a width is padded up to the next block, and
a Conv whose input channels are not a multiple of 4 falls back to the plain NCHW kernels. Measured
on this project's AVX-512 machine (onnxruntime 1.32, one thread, a chain of four 3×3 convs at
28×28): 48 channels 6.1 ms, every width from 50 to 64 about 11 ms, 66 channels 15.5 ms.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import platform
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from . import channels, latency, model_io, shapes
from .channels import ChannelGroup
from .errors import OnnxSlimError

#: Bump when the meaning of cached timings changes.
CACHE_VERSION = 1
#: Candidate widths are multiples of this: NCHWc convolutions need input channels divisible by 4
#: (a depthwise 3×3 of 90 or 94 channels took twice the time of 88, 92 or 96).
ALIGN = 4
#: A narrower width is chosen only when it is faster than every wider candidate by this much:
#: timings on a loaded machine move by a few percent, the steps of the staircase by 10–50%.
TOLERANCE = 0.05


@functools.lru_cache(maxsize=1)
def nchwc_block() -> int:
    """The channel block of onnxruntime's NCHWc convolutions on this CPU (16 with AVX-512, 8 with
    AVX2), read from the weight shape onnxruntime writes for a 4-filter Conv; 1 where it does not
    use the NCHWc layout."""
    w = numpy_helper.from_array(np.zeros((4, 16, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1] * 4)
    graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with tempfile.TemporaryDirectory(prefix="onnxslim-") as tmp:
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        opts.log_severity_level = 4
        try:
            ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            optimized = onnx.load(opts.optimized_model_filepath)
        except Exception:  # noqa: BLE001 - no probe, no blocks
            return 1
    if not any(n.domain == "com.microsoft.nchwc" for n in optimized.graph.node):
        return 1
    filters = [t.dims[0] for t in optimized.graph.initializer if len(t.dims) == 4]
    return int(max(filters)) if filters and max(filters) > 4 else 1


def channel_block() -> int:
    """What ``round_to=block`` rounds to: :func:`nchwc_block`, or 8 where onnxruntime uses no
    NCHWc kernels (the portable default)."""
    return nchwc_block() if nchwc_block() > 1 else 8


def window(size: int, keep: int, step: int, block: int = 1, min_channels: int = 1, blocked: bool = False) -> list[int]:
    """Candidate widths for a group of ``size`` asked to keep ``keep``: multiples of
    :data:`ALIGN` (of ``step`` when it is smaller) from ``keep - step`` (never more than one step
    below the request) up to ``keep`` rounded up to ``step`` or to ``block`` (the NCHWc block:
    a small group's width below a block is padded to it, so keeping the block may cost nothing),
    and that upper end itself.

    ``blocked`` (a group whose layers are all convolutions, which onnxruntime runs in NCHWc
    blocks): from one block up only multiples of ``block``. Widths in between are padded to the
    block above and cost what it costs (a fit of MobileNetV2's conv times on padded MACs is within
    2%), so timing them only lets noise choose: on a loaded machine ``measure`` kept 140 of 192
    (padded to 144) and 104 of 144 (padded to 112), channels pruned for nothing."""
    step = max(1, step)
    up = max(step, block)
    hi = min(size, -(-keep // up) * up)
    lo = max(min_channels, 1, keep - step)
    align = min(ALIGN, step)
    found = {w for w in range(-(-lo // align) * align, hi + 1, align) if w >= 1 and (not blocked or w < block or w % block == 0)}
    return sorted(found | {hi})


def choose(times: Mapping[int, float], keep: int, tolerance: float = TOLERANCE) -> int:
    """The width to keep from measured ``times`` ({width: seconds}): on the latency staircase
    (the widths faster than every wider candidate by ``tolerance``; the widest is always on it),
    the one nearest to the requested ``keep``, the wider one on a tie. Fewer channels are kept
    only where that is faster."""
    staircase, fastest = [], float("inf")
    for width in sorted(times, reverse=True):
        if times[width] < fastest * (1.0 - tolerance) or not staircase:
            staircase.append(width)
            fastest = min(fastest, times[width])
    return min(staircase, key=lambda w: (abs(w - keep), -w))


@dataclasses.dataclass
class GroupWidth:
    """What was decided for one group: ``requested`` channels, the ``chosen`` width, the timings
    behind it ({width: ms}; empty where nothing was measured) and why not, if not."""

    group: str
    size: int
    requested: int
    chosen: int
    times_ms: dict[int, float]
    cached: bool = False
    reason: str | None = None

    def to_dict(self) -> dict:
        return {"group": self.group, "size": self.size, "requested": self.requested, "chosen": self.chosen,
                "times_ms": {str(k): round(v, 4) for k, v in self.times_ms.items()}, "cached": self.cached,
                **({"reason": self.reason} if self.reason else {})}


def measured_widths(
    model: ir.Model,
    analysis: channels.ChannelAnalysis,
    requested: Mapping[ChannelGroup, int],
    step: Callable[[ChannelGroup], int],
    *,
    block: int = 1,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    threads: int = 1,
    rounds: int = 15,
    min_channels: int = 1,
    use_cache: bool = True,
    progress=None,
) -> list[GroupWidth]:
    """Per group of ``requested`` ({group: channels to keep, unrounded}), the width to keep,
    measured (see the module docstring); ``step(group)`` is the rounding step that bounds the
    window below, ``block`` (with it) above (:func:`window`). ``analysis`` is ``model``'s (its groups are the keys); the model is not changed.
    Groups whose layers cannot be cut out and timed keep the top of their window, with the reason."""
    windows = {g: window(g.size, k, step(g), block, min_channels, blocked=block > 1 and _all_convs(g)) for g, k in requested.items()}
    rounded = {g: w[-1] for g, w in windows.items()}
    results = {g: GroupWidth(g.name, g.size, k, rounded[g], {}) for g, k in requested.items()}
    todo = [g for g in requested if len(windows[g]) > 1]
    if not todo:
        return list(results.values())
    # neighbours at their rounded widths: each layer is timed among the widths it will have
    index = {g: i for i, g in enumerate(analysis.groups)}
    wide = model.clone()
    fresh = channels.analyze(wide, freeze_residual_stream=analysis.freeze_residual_stream)
    plan = {fresh.groups[index[g]]: np.arange(n) for g, n in rounded.items() if n < g.size}
    if plan:
        fresh.apply(plan)
        fresh = channels.analyze(wide, freeze_residual_stream=analysis.freeze_residual_stream)
    by_name = {g.name: g for g in fresh.groups}
    proto = model_io.to_proto(wide)
    dims = _input_dims(wide, input_shapes)
    known = _float_shapes(wide, dims)
    node_index = {id(n): i for i, n in enumerate(wide.graph)}
    parts = {}
    for group in todo:
        counterpart = by_name.get(group.name)
        if counterpart is None or counterpart.size != rounded[group]:
            results[group].reason = "group not found after rounding its neighbours"
            continue
        try:
            parts[group] = _layer_nodes(proto.graph, counterpart, node_index)
        except _NotMeasurable as exc:
            results[group].reason = str(exc)
    missing = {name for _, boundary in parts.values() for name in boundary if name not in known}
    if missing:  # shapes inference left open: read them from one onnxruntime run
        known.update(_run_shapes(wide, dims, missing))
    items = progress(list(parts), "measuring widths", total=len(parts)) if progress is not None else list(parts)
    for group in items:
        result = results[group]
        try:
            layer, feeds = _layer_model(proto, *parts[group], known)
            candidates = _candidates(layer, group.name, windows[group])
        except _NotMeasurable as exc:
            result.reason = str(exc)
            continue
        key = _cache_key(candidates, feeds, threads)
        times = _load(key) if use_cache else None
        if times is None:
            try:
                timings = latency.measure([m for _, m in candidates], feeds, rounds=rounds, threads=threads, budget_s=5.0,
                                          clock="cpu" if threads == 1 else "wall", spinning=False)
            except OnnxSlimError as exc:
                result.reason = f"its layers do not run on their own: {exc}"
                continue
            times = {w: t.median * 1e3 for (w, _), t in zip(candidates, timings)}
            if use_cache:
                _store(key, times)
        else:
            result.cached = True
        result.times_ms = times
        result.chosen = choose(times, result.requested)
    return list(results.values())


class _NotMeasurable(Exception):
    pass


def _all_convs(group: ChannelGroup) -> bool:
    """Whether ``group``'s weighted layers are all convolutions (which onnxruntime runs in NCHWc
    blocks): a Conv among its producers/consumers and no MatMul/Gemm (dense layers are not blocked)."""
    ops = {m.node.op_type for m in group.producers + group.consumers}
    return "Conv" in ops and not ops & {"MatMul", "Gemm", "ConvTranspose", "MatMulInteger", "QLinearMatMul", "QLinearConv", "ConvInteger"}


def _input_dims(model: ir.Model, input_shapes: Mapping[str, Sequence[int]] | None) -> dict[str, list[int]]:
    from . import inputs

    with warnings.catch_warnings():  # defaulted dims were reported where the run was validated
        warnings.simplefilter("ignore")
        return {k: list(v) for k, v in inputs.resolve_shapes(model, dict(input_shapes or {})).items()}


def _float_shapes(model: ir.Model, dims: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """Concrete shapes of the model's float tensors at ``dims`` (shape inference)."""
    try:
        proto = shapes.infer(model, dims, strict=False)
    except shapes.ShapeInferenceError:
        return {}
    found = {}
    for vi in list(proto.graph.input) + list(proto.graph.value_info) + list(proto.graph.output):
        tt = vi.type.tensor_type
        if tt.elem_type == TensorProto.FLOAT and tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            found[vi.name] = tuple(d.dim_value for d in tt.shape.dim)
    return found


def _run_shapes(model: ir.Model, dims: Mapping[str, Sequence[int]], names: set[str]) -> dict[str, tuple[int, ...]]:
    """Shapes of the float tensors ``names``, read from one onnxruntime run on a random sample."""
    from . import inputs, runtime

    values = [v for node in model.graph for v in node.outputs if v.name in names]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sample = inputs.random_samples(model, 1, 0, dims)[0]
        with runtime.session(model, "disabled", extra_outputs=values) as sess:
            arrays = runtime.run(sess, sample, [v.name for v in values])
    except OnnxSlimError:
        return {}
    return {k: tuple(a.shape) for k, a in arrays.items() if a.dtype == np.float32}


def _layer_nodes(graph: onnx.GraphProto, group: ChannelGroup, node_index) -> tuple[list[int], list[str]]:
    """The positions of the nodes whose cost depends on ``group``'s width (with the Constant
    nodes they read), and the tensors they read from outside (not initializers)."""
    nodes = {id(m.node): m.node for m in group.producers + group.consumers}
    nodes.update((id(n), n) for n in group.nodes)
    if any(id(n) not in node_index for n in nodes.values()):
        raise _NotMeasurable("some of its layers are inside a subgraph")
    picked = set(node_index[i] for i in nodes)
    produced = {out: i for i, n in enumerate(graph.node) for out in n.output}
    for i in list(picked):  # constants the layers read come along
        for name in graph.node[i].input:
            j = produced.get(name)
            if j is not None and graph.node[j].op_type == "Constant":
                picked.add(j)
    order = sorted(picked)
    inits = {t.name for t in graph.initializer}
    inside = {out for i in order for out in graph.node[i].output}
    read = [name for i in order for name in graph.node[i].input if name]
    return order, list(dict.fromkeys(n for n in read if n not in inside and n not in inits))


def _layer_model(proto: onnx.ModelProto, order: list[int], boundary: list[str], known) -> tuple[onnx.ModelProto, dict]:
    """The nodes at ``order`` as a model of their own (``boundary`` tensors become inputs at their
    concrete shapes), and random feeds for it."""
    graph = proto.graph
    picked = set(order)
    inits = {t.name: t for t in graph.initializer}
    read = [name for i in order for name in graph.node[i].input if name]
    feeds, inputs = {}, []
    rng = np.random.default_rng(0)
    for name in boundary:
        shape = known.get(name)
        if shape is None:
            raise _NotMeasurable(f"input {name!r} of its layers has no concrete float shape")
        feeds[name] = rng.standard_normal(shape, dtype=np.float32)
        inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
    used_later = {name for i, n in enumerate(graph.node) if i not in picked for name in n.input}
    used_later |= {o.name for o in graph.output}
    read_inside = set(read)
    outputs = [out for i in order for out in graph.node[i].output
               if out and (out not in read_inside or out in used_later)]
    sub = helper.make_graph([graph.node[i] for i in order], "layer", inputs,
                            [onnx.ValueInfoProto(name=o) for o in outputs],
                            [inits[n] for n in dict.fromkeys(read) if n in inits])
    layer = helper.make_model(sub, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    return layer, feeds


def _candidates(layer: onnx.ModelProto, name: str, widths: Sequence[int]) -> list[tuple[int, onnx.ModelProto]]:
    """The layer model pruned to each width (``name``'s group keeps its first channels)."""
    result = []
    for width in widths:
        copy = model_io.load(layer)
        analysis = channels.analyze(copy, freeze_residual_stream=False)
        found = [g for g in analysis.groups if g.name == name and g.size == widths[-1]]
        if len(found) != 1:
            raise _NotMeasurable("its layers, cut out, do not form the group again")
        if width < found[0].size:
            analysis.apply({found[0]: np.arange(width)})
        result.append((width, model_io.to_proto(copy)))
    return result


# --------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    return Path(os.environ.get("ONNXSLIM_CACHE_DIR") or Path.home() / ".cache" / "onnxslim") / "widths"


def _signature(model: onnx.ModelProto) -> bytes:
    """The model's structure without weight values or names: what its latency depends on."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    names: dict[str, str] = {"": ""}

    def canon(name: str) -> str:
        return names.setdefault(name, f"v{len(names)}")

    for vi in m.graph.input:
        vi.name = canon(vi.name)
    for t in m.graph.initializer:
        small = t.data_type == TensorProto.INT64 and int(np.prod(t.dims)) <= 64
        if not small:
            dims = list(t.dims)
            t.Clear()
            t.dims.extend(dims)
        t.name = canon(t.name)
    for n in m.graph.node:
        n.name = ""
        n.input[:] = [canon(x) for x in n.input]
        n.output[:] = [canon(x) for x in n.output]
    for vi in m.graph.output:
        vi.name = canon(vi.name)
    m.graph.name = ""
    return m.SerializeToString(deterministic=True)


@functools.lru_cache(maxsize=1)
def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                cpu += "|" + line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                break
    except OSError:
        pass
    return cpu


def _cache_key(candidates, feeds: Mapping[str, np.ndarray], threads: int) -> str:
    h = hashlib.sha256()
    clock = "cpu" if threads == 1 else "wall"
    h.update(json.dumps({"version": CACHE_VERSION, "ort": ort.__version__, "threads": threads, "clock": clock, "machine": _machine(),
                         "feeds": {k: list(v.shape) for k, v in sorted(feeds.items())}}).encode())
    for width, model in candidates:
        h.update(str(width).encode())
        h.update(hashlib.sha256(_signature(model)).digest())
    return h.hexdigest()[:32]


def _load(key: str) -> dict[int, float] | None:
    path = cache_dir() / f"{key}.json"
    try:
        return {int(k): float(v) for k, v in json.loads(path.read_text())["times_ms"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _store(key: str, times: Mapping[int, float]) -> None:
    try:
        path = cache_dir() / f"{key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        model_io.write_text_atomic(path, json.dumps({"times_ms": {str(k): v for k, v in times.items()}}))
    except OSError:
        pass  # a cache that cannot be written is no error
