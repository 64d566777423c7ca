"""``quantize``: INT8 (and 4-bit weight-only) quantization through onnxruntime's own tooling (lossy).

Modes, each a wrapper around :mod:`onnxruntime.quantization`:

* ``dynamic``  ``quantize_dynamic``: INT8 weights, activations quantized at run time
  (MatMulInteger/ConvInteger). For transformers, RNNs and MLPs; no calibration data needed.
* ``static``   ``quantize_static`` in QDQ format: INT8 weights (per channel by default) and
  activation ranges from the ``--calibration`` data (``calibrate=minmax|entropy|percentile``).
  For CNNs.
* ``weight4``  ``MatMulNBitsQuantizer``: 4-bit block-wise weight-only quantization of MatMul
  weights into ``com.microsoft.MatMulNBits`` (``block_size``; ``accuracy_level`` is the
  precision MatMulNBits computes in: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8).

onnxruntime's tools work on files, so the pass writes the model into a private temporary
directory (external data above :data:`_INLINE_LIMIT` of weights), runs its pre-processing step
(shape inference and the basic graph optimisations such as BatchNormalization folding) and the
quantizer there, and reads the result back through onnx-ir; the model's metadata and model-local
functions are kept (the IR version never goes down). The directory is removed whatever happens.

With an accuracy budget on the run (``--min-cosine`` …) the pass spends it layer by layer:
when the fully quantized model is over budget it ranks the quantized layers by the quantization
noise each adds (signal-to-quantization-noise ratio of the layer's output against its inputs,
onnxruntime's ``qdq_loss_debug`` measure, on the calibration data) and keeps the costliest in
float — the fewest that bring the model within budget on the validation data (mixed precision).
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import onnx
import onnx_ir as ir

from onnxslim import model_io, runtime, sparse_codec, validation
from onnxslim.constants import constant, weight_bytes
from onnxslim.errors import ModelError, UsageError
from onnxslim.pass_api import Pass, PassContext, PassResult, option

#: Layers each mode can quantize (the MAC ops the report counts).
_LAYER_OPS = {
    "dynamic": ("Conv", "MatMul", "Gemm"),
    "static": ("Conv", "ConvTranspose", "Gemm", "MatMul"),
    "weight4": ("MatMul",),
}
#: Why dynamic mode leaves Conv alone unless asked (measured: digits CNN 0.9 -> 20 ms, 64 images).
_DYNAMIC_CONV = ("left in float: onnxruntime's ConvInteger (dynamic Conv) runs many times slower than float Conv "
                 "on CPU; use mode=static for CNNs (or op_types=Conv to force it)")
#: Ops that mean the model is quantized already (their layers are left alone).
_QUANTIZED_OPS = {"DequantizeLinear", "QuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearConv",
                  "QLinearMatMul", "MatMulNBits", "DynamicQuantizeLinear"}
#: Above this many weight bytes onnxruntime's tools read and write external data.
_INLINE_LIMIT = 1 << 30


class Quantize(Pass):
    name = "quantize"
    summary = "INT8 (dynamic or static QDQ) or 4-bit weight-only quantization via onnxruntime.quantization; mixed precision within the budget"
    lossless = False
    #: Its mixed-precision search is judged on validation data held out from calibration.
    needs_held_out: ClassVar[bool] = True

    class Options(Pass.Options):
        mode: Literal["dynamic", "static", "weight4"] = option(
            "dynamic", "dynamic (INT8 weights, run-time activations), static (QDQ, needs --calibration), weight4 (4-bit MatMulNBits)"
        )
        calibrate: Literal["minmax", "entropy", "percentile"] = option("minmax", "static: how activation ranges are taken from the calibration data")
        percentile: float = option(99.999, "static, calibrate=percentile: the percentile of |activation| kept")
        per_channel: bool = option(True, "dynamic/static: one scale per output channel of Conv/MatMul/Gemm weights")
        op_types: list[str] = option([], "op types to quantize (default: onnxruntime's choice for the mode, without Conv in dynamic mode)")
        exclude: list[str] = option([], "glob patterns of node or weight names to leave in float")
        preprocess: bool = option(True, "run onnxruntime's pre-processing (shape inference, BN folding) first")
        block_size: int = option(32, "weight4: weights per quantization block (a power of 2, >= 16)")
        accuracy_level: int = option(4, "weight4: MatMulNBits compute precision: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8")
        symmetric: bool = option(True, "weight4: symmetric blocks (no zero points)")
        mixed: bool = option(True, "with a budget: keep the costliest layers in float until the budget holds")

    def validate_options(self) -> None:
        o = self.options
        if o.block_size < 16 or o.block_size & (o.block_size - 1):
            raise UsageError(f"quantize:block_size must be a power of 2 >= 16, got {o.block_size}")
        if o.accuracy_level not in range(5):
            raise UsageError(f"quantize:accuracy_level must be 0-4, got {o.accuracy_level}")
        if not 90.0 <= o.percentile <= 100.0:
            raise UsageError(f"quantize:percentile must be in [90, 100], got {o.percentile}")

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        o = self.options
        samples = list(ctx.calibration.samples) if ctx.calibration is not None else []
        if o.mode == "static" and not samples:
            raise UsageError("quantize:mode=static needs --calibration data (activation ranges are taken from it)")
        with tempfile.TemporaryDirectory(prefix="onnxslim-quantize-") as tmp:
            # Layers are named as in the pre-processed model (its fusions rename some).
            work = _Workspace(Path(tmp), model, o, samples)
            layers, floats = _plan(work.float_model, o)
            if not layers:
                why = "; ".join(sorted(set(floats.values()))) or "the model has none"
                ops = "/".join(o.op_types or _LAYER_OPS[o.mode])
                return PassResult(False, f"nothing to quantize ({ops} layers: {why})", {"mode": o.mode, "float": floats})
            work.save_float()
            quantized = work.quantize(floats)
            details: dict[str, Any] = {}
            notes = list(work.notes)
            kept = _spend_budget(work, quantized, floats, ctx, layers, details, notes)
            quantized = work.result
        if quantized is None:
            return PassResult(False, "over budget with any layer quantized", {"mode": o.mode, "float": floats}, notes)
        done = _quantized_layers(quantized, layers)
        for name in layers:
            if name not in done and name not in floats:
                floats[name] = "left in float by onnxruntime (no quantized kernel for this layer's types or shapes)"
        if not done:
            why = "every layer kept in float for the budget" if kept else "no layer could be quantized"
            return PassResult(False, why, {"mode": o.mode, "float": floats}, notes)
        before = weight_bytes(model)
        _adopt(model, quantized)
        details.update(
            mode=o.mode,
            quantized=sorted(done),
            float=floats,
            kept_float_for_budget=kept,
            weight_bytes_before=before,
            weight_bytes_after=weight_bytes(model),
            preprocessed=work.preprocessed,
            **_mode_details(o),
        )
        summary = f"{o.mode}: {len(done)} of {len(layers)} layers quantized"
        if kept:
            summary += f", {len(kept)} kept in float for the budget"
        return PassResult(True, summary, details, notes)


def _mode_details(o: Quantize.Options) -> dict[str, Any]:
    if o.mode == "weight4":
        return {"bits": 4, "block_size": o.block_size, "accuracy_level": o.accuracy_level, "symmetric": o.symmetric}
    out: dict[str, Any] = {"weights": "int8", "per_channel": o.per_channel}
    if o.mode == "static":
        out.update(activations="uint8", format="QDQ", calibrate=o.calibrate)
    else:
        out.update(activations="uint8, quantized at run time")
    return out


def _matches(node: ir.Node, patterns: Sequence[str]) -> bool:
    names = [node.name or ""] + [v.name for v in node.inputs if v is not None and v.name]
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)


def _plan(model: ir.Model, o: Quantize.Options) -> tuple[list[str], dict[str, str]]:
    """Names of the main-graph layers to quantize, and the layers left in float with the reason.

    Unnamed nodes get a name (onnxruntime's tools select and exclude by node name).
    """
    ops = set(o.op_types or _LAYER_OPS[o.mode])
    layers: list[str] = []
    floats: dict[str, str] = {}
    taken = {n.name for n in model.graph if n.name}
    sparse = {id(d.output) for d in sparse_codec.find_decodes(model)}
    for index, node in enumerate(model.graph):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
        if node.domain not in ("", "ai.onnx") or node.op_type not in ops:
            continue
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        const = constant(weight)
        if weight is not None and id(weight) in sparse:
            floats[node.name] = "weight stored as CSR by sparsify: run quantize before sparsify (or densify first)"
        elif const is not None and const.storage == "dequantized":
            floats[node.name] = "already quantized (weight behind a dequantization)"
        elif weight is not None and weight.producer() is not None and weight.producer().op_type in _QUANTIZED_OPS:
            floats[node.name] = "already quantized"
        elif _matches(node, o.exclude):
            floats[node.name] = "excluded by pattern"
        elif o.mode == "dynamic" and node.op_type == "Conv" and not o.op_types:
            floats[node.name] = _DYNAMIC_CONV
        elif o.mode != "static" and const is None:
            floats[node.name] = f"{o.mode} mode quantizes constant weights only (both inputs are computed)"
        elif o.mode == "weight4" and (const is None or len(const.shape) != 2):
            floats[node.name] = "weight4 quantizes 2-D MatMul weights only"
        else:
            layers.append(node.name)
    return layers, floats


class _Workspace:
    """The float model on disk (pre-processed once) and quantizations of it with given exclusions."""

    def __init__(self, tmp: Path, model: ir.Model, o: Quantize.Options, samples: list[dict]):
        self.tmp, self.o, self.samples = tmp, o, samples
        self.notes: list[str] = []
        self.external = weight_bytes(model) > _INLINE_LIMIT
        self.float_path = tmp / "float.onnx"
        model_io.save(model.clone(), self.float_path, external_data=self.external)
        self.preprocessed = False
        if o.preprocess and o.mode != "weight4":  # its fusions (MatMul+Add -> Gemm) would hide MatMuls from weight4
            self._preprocess()
        # Only used while the directory exists: external weights stay memory-mapped.
        self.float_model = ir.load(str(self.float_path))
        self.result: ir.Model | None = None
        self.trials = 0

    def save_float(self) -> None:
        """Write the float model again (planning named its unnamed layers)."""
        self.float_path = self.tmp / "named.onnx"
        model_io.save(self.float_model, self.float_path, external_data=self.external)

    def _preprocess(self) -> None:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        out = self.tmp / "pre.onnx"
        try:
            # Symbolic shape inference is skipped: it rejects many valid graphs (and the
            # quantizers need only onnx's); ORT's basic optimisations fold BN into Conv.
            with _quiet():
                quant_pre_process(str(self.float_path), str(out), skip_symbolic_shape=True,
                                  save_as_external_data=self.external, all_tensors_to_one_file=True,
                                  external_data_location="pre.onnx.data")
            onnx.checker.check_model(str(out))
        except Exception as exc:  # a model pre-processing cannot handle is quantized as it is
            self.notes.append(f"onnxruntime's pre-processing failed, quantized without it: {_first_line(exc)}")
            return
        self.float_path = out
        self.preprocessed = True

    def quantize(self, floats: Sequence[str]) -> ir.Model:
        """Quantize the float model leaving the layers ``floats`` in float; return it in onnx-ir."""
        o = self.o
        self.trials += 1
        out = self.tmp / f"q{self.trials}.onnx"
        exclude = [n for name in floats for n in (name, name + _GEMM_AS_MATMUL)]
        op_types = o.op_types or self.default_op_types()
        try:
            with _quiet():
                self._run_quantizer(out, exclude, op_types)
        except UsageError:
            raise
        except Exception as exc:
            raise ModelError(f"onnxruntime quantization ({o.mode}) failed: {_first_line(exc)}") from exc
        proto = onnx.load(str(out), load_external_data=True)  # in memory: the directory goes away
        self.result = ir.serde.deserialize_model(proto)
        return self.result

    def default_op_types(self) -> list[str] | None:
        """onnxruntime's choice for the mode, except Conv in dynamic mode (see _DYNAMIC_CONV)."""
        if self.o.mode != "dynamic":
            return None
        from onnxruntime.quantization.registry import IntegerOpsRegistry

        return [op for op in IntegerOpsRegistry if op != "Conv"]

    def _run_quantizer(self, out: Path, exclude: list[str], op_types: list[str] | None) -> None:
        o = self.o
        if o.mode == "dynamic":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(
                self.float_path, out, op_types_to_quantize=op_types, per_channel=o.per_channel,
                weight_type=QuantType.QInt8, nodes_to_exclude=exclude, use_external_data_format=self.external,
                extra_options={"MatMulConstBOnly": True},
            )
        elif o.mode == "static":
            from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

            method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                      "percentile": CalibrationMethod.Percentile}[o.calibrate]
            quantize_static(
                self.float_path, out, _Reader(self.samples), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types, per_channel=o.per_channel, activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8, nodes_to_exclude=exclude, use_external_data_format=self.external,
                calibrate_method=method, extra_options={"CalibPercentile": o.percentile, "CalibTensorRangeSymmetric": False},
            )
        else:
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            proto = onnx.load(str(self.float_path))
            quantizer = MatMulNBitsQuantizer(
                proto, bits=4, block_size=o.block_size, is_symmetric=o.symmetric,
                accuracy_level=o.accuracy_level, nodes_to_exclude=exclude, op_types_to_quantize=("MatMul",),
            )
            quantizer.process()
            del proto
            quantizer.model.save_model_to_file(str(out), use_external_data_format=self.external)


class _Reader:
    """onnxruntime's CalibrationDataReader over our calibration samples."""

    def __init__(self, samples: list[dict]):
        self._samples = samples
        self._next = iter(samples)

    def get_next(self) -> dict | None:
        return next(self._next, None)

    def rewind(self) -> None:
        self._next = iter(self._samples)


@contextlib.contextmanager
def _quiet():
    """onnxruntime's quantization tools print progress and log at INFO on the root logger."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _quantized_layers(model: ir.Model, layers: Sequence[str]) -> set[str]:
    """Layers that run quantized in ``model``: replaced by another op (MatMulInteger,
    MatMulNBits, …) or reading their weight through a DequantizeLinear (QDQ)."""
    by_name = {n.name: n for n in model.graph if n.name}
    done = set()
    for name in layers:
        # The dynamic quantizer turns every Gemm into MatMul (+Add) named "<name>_MatMul" first.
        nodes = [by_name.get(name), by_name.get(name + _GEMM_AS_MATMUL)]
        if not any(node is not None and node.op_type in _LAYER_OPS["static"] and not _dequantized_weight(node) for node in nodes):
            done.add(name)
    return done


_GEMM_AS_MATMUL = "_MatMul"


def _dequantized_weight(node: ir.Node) -> bool:
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    producer = weight.producer() if weight is not None else None
    return producer is not None and producer.op_type == "DequantizeLinear"


def _adopt(model: ir.Model, quantized: ir.Model) -> None:
    """Make ``model`` the quantized one, keeping what onnxruntime's tools may drop."""
    metadata = dict(model.metadata_props)
    functions = dict(model.functions)
    ir_version = model.ir_version
    model.graph = quantized.graph
    model.ir_version = max(ir_version, quantized.ir_version)  # what the quantized graph needs (save caps it)
    for key, fn in functions.items():
        model.functions.setdefault(key, fn)
    for key, fn in quantized.functions.items():
        model.functions.setdefault(key, fn)
    used = {n.domain for g in (model.graph, *model.functions.values()) for n in ir.traversal.RecursiveGraphIterator(g)}
    for domain in list(model.graph.opset_imports):  # the pre-processing step imports every domain it knows
        if domain not in ("", "ai.onnx") and domain not in used:
            del model.graph.opset_imports[domain]
    model.metadata_props.clear()
    model.metadata_props.update({**quantized.metadata_props, **metadata})


# --- the budget: mixed precision --------------------------------------------------------------


def budget_verdict(ctx: PassContext, outputs: validation.Outputs) -> tuple[bool, str | None]:
    """Whether ``outputs`` (on ``ctx.validation``) are within the run's budget, and why not.

    ``ctx.budget`` is the run's :class:`onnxslim.budget.Budget` where the core has one, else the
    ``--min-cosine`` number.
    """
    budget = ctx.budget
    if hasattr(budget, "check"):
        verdict = budget.check(ctx.reference, outputs)
        return verdict.ok, verdict.reason
    metrics = validation.compare(ctx.reference, outputs)
    low = min(metrics, key=lambda m: m.cosine)
    if low.cosine < float(budget):
        return False, f"cosine {low.cosine:.6f} on {low.name!r} below budget {float(budget)}"
    return True, None


def _budget_active(ctx: PassContext) -> bool:
    budget = ctx.budget
    if budget is None or not ctx.validation or ctx.reference is None:
        return False
    return bool(getattr(budget, "active", True))


def _spend_budget(
    work: _Workspace,
    quantized: ir.Model,
    floats: dict[str, str],
    ctx: PassContext,
    layers: list[str],
    details: dict[str, Any],
    notes: list[str],
) -> list[str]:
    """Keep the fewest costliest layers in float that bring the model within budget; returns them."""
    if not work.o.mixed or not _budget_active(ctx):
        return []
    fixed = list(floats)
    ok, reason = _within(ctx, quantized)
    if ok:
        return []
    ranked = _rank_layers(work, quantized, _budget_candidates(work, layers, floats), ctx)
    details["layer_cost_db"] = {group[0]: round(db, 2) for group, db in ranked if np.isfinite(db)}
    groups = [group for group, _ in ranked]
    # Exponential then binary search on how many of the costliest layers stay in float.
    results: dict[int, tuple[bool, ir.Model]] = {}

    def trial(k: int) -> bool:
        if k not in results:
            model = work.quantize(fixed + [n for group in groups[:k] for n in group])
            results[k] = (_within(ctx, model)[0], model)
        return results[k][0]

    hi = 1
    while hi < len(groups) and not trial(hi):
        hi *= 2
    hi = min(hi, len(groups))
    if not trial(hi):
        notes.append(f"over budget however many layers stay in float ({reason}); nothing quantized")
        names = [n for group in groups for n in group]
        for name in names:
            floats[name] = "kept in float: the budget does not hold with it quantized"
        work.result = None
        return names
    lo = hi // 2  # known over budget (or 0: the fully quantized model)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if trial(mid):
            hi = mid
        else:
            lo = mid
    work.result = results[hi][1]
    kept = [n for group in groups[:hi] for n in group]
    for name in kept:
        floats[name] = "kept in float for the budget (its quantization costs most)"
    details["budget_trials"] = work.trials
    notes.append(f"fully quantized: {reason}; kept the {len(kept)} costliest node(s) in float to stay within budget: {', '.join(kept)}")
    return kept


def _within(ctx: PassContext, model: ir.Model) -> tuple[bool, str | None]:
    try:
        outputs = validation.run_model(model, ctx.validation)
    except ModelError as exc:
        return False, str(exc)
    return budget_verdict(ctx, outputs)


def _budget_candidates(work: _Workspace, layers: list[str], floats: dict[str, str]) -> list[str]:
    """What the budget search may keep in float: the layers, and in static mode every other node
    the QDQ quantizer would put between Q/DQ pairs (Add, pooling, …), whose activation
    quantization costs accuracy too."""
    if work.o.mode != "static":
        return layers
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    ops = set(work.o.op_types or (*QDQRegistry, *QLinearOpsRegistry))  # quantize_static's default
    extra = [n.name for n in work.float_model.graph if n.op_type in ops and n.name and n.name not in floats and n.name not in layers]
    return layers + extra


def _rank_layers(work: _Workspace, quantized: ir.Model, layers: list[str], ctx: PassContext) -> list[tuple[list[str], float]]:
    """Groups of nodes to keep in float together, costliest first, with the SQNR (dB) of the
    noise each adds (a node the quantizer folded away goes with the node feeding it).

    A layer's cost is the quantization noise in its output beyond what its inputs already carry:
    output noise power minus input noise power (relative to signal, from onnxruntime's
    ``qdq_loss_debug`` SQNR), both float and quantized models run on the calibration data (the
    validation data when there is none).
    """
    from onnxruntime.quantization.qdq_loss_debug import compute_signal_to_quantization_noice_ratio as sqnr

    float_model = work.float_model
    by_name = {n.name: n for n in float_model.graph}
    wanted: dict[str, tuple[list[str], str]] = {}
    for name in layers:
        node = by_name.get(name)
        if node is not None and node.outputs:
            ins = [v.name for v in node.inputs[:1] if v is not None and constant(v) is None]
            wanted[name] = (ins, node.outputs[0].name)
    names = {n for ins, out in wanted.values() for n in [*ins, out]}
    samples = (work.samples or ctx.validation)[:8]
    ref = _capture(float_model, names, samples)
    got = _capture(quantized, names, samples)
    costs = []
    groups: dict[str, list[str]] = {name: [name] for name in wanted}
    for name, (ins, out) in wanted.items():
        if out not in got:
            # Folded into a neighbour by the quantizer (Relu into its producer's Q): it stays
            # in float with the node that feeds it.
            producer = by_name[name].inputs[0].producer() if by_name[name].inputs else None
            if producer is not None and producer.name in groups and producer.name != name:
                groups[producer.name].append(name)
                groups[name] = []
            continue

        def noise(tensor: str) -> float:
            if tensor not in ref or tensor not in got:
                return 0.0
            return 10 ** (-min(float(sqnr(ref[tensor], got[tensor])), 200.0) / 10)

        added = max(noise(out) - max((noise(i) for i in ins), default=0.0), 1e-20)
        costs.append((name, -10 * float(np.log10(added))))
    costs.sort(key=lambda item: item[1])  # the lowest SQNR of the added noise first
    ranked = {name for name, _ in costs}
    return [(groups[name], db) for name, db in costs] + [(g, float("inf")) for n, g in groups.items() if g and n not in ranked]


def _capture(model: ir.Model, names: set[str], samples: Sequence[dict]) -> dict[str, list[np.ndarray]]:
    values = [v for node in model.graph for v in node.outputs if v.name in names]
    values += [v for v in model.graph.inputs if v.name in names]
    outputs = [v for v in values if not v.is_graph_input()]
    for v in outputs:
        if v.dtype is None:
            v.dtype = ir.DataType.FLOAT
    captured: dict[str, list[np.ndarray]] = {}
    with runtime.session(model, "disabled", extra_outputs=outputs) as sess:
        for sample in samples:
            got = runtime.run(sess, sample, [v.name for v in outputs])
            for v in values:
                arr = sample.get(v.name) if v.is_graph_input() else got.get(v.name)
                if arr is not None:
                    # flat: samples may differ in shape (sequence lengths); SQNR pools elements
                    captured.setdefault(v.name, []).append(np.asarray(arr, dtype=np.float32).ravel())
    return captured
