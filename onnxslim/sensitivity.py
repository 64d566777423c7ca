"""Sensitivity analysis: how much the outputs drift when one channel group alone loses channels.

For every group and every ratio (10%, 20%, … 90% of its channels removed, lowest-scored first),
the drift of the outputs that count against the unpruned model, on calibration data:
``nmse`` = Σ‖Δy‖²/Σ‖y‖² (smooth, roughly additive over groups: what allocation uses), the worst
output cosine and top-1 agreement.

Removing one group's channels only changes what its *consumers* read (every path out of a group
ends in a consumer weight; otherwise the channel analysis freezes the group), so it equals
zeroing the consumers' input slices. The model is therefore compiled ONCE with the consumer
weights (and biases) as overridable initializers, and each point is one onnxruntime run with the
edited weights fed in — no model rebuilt per point. With reconstruction, each consumer's kept
slices are refit by ridge least squares from Gram statistics of its input captured once on
3/4 of the calibration samples (``[W'; b'] = argmin ‖[X_k 1][W; b] − (XW + b)‖² + λ‖·‖²``), and
the drift is measured on the other 1/4, so that a refit that only fits its own data shows. Points run in
parallel threads (onnxruntime releases the GIL), one intra-op thread each.

The shortcut is checked per group: at 50% it must reproduce a real removal (without refit) on
one sample; a group where it does not (weights behind a dequantization, in If branches, read by
ops other than their consumers) is evaluated by rebuilding a pruned copy per point instead.

Results are cached as JSON keyed by the model's bytes, the data and the options (directory
``$ONNXSLIM_CACHE_DIR`` or ``~/.cache/onnxslim``), so a ``prune`` after ``analyze`` on the same
model and data does not repeat it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from . import channels, model_io, runtime, validation
from .budget import relative_error
from .channels import ChannelAnalysis, ChannelGroup
from .constants import constant

RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: Bump when the meaning of cached numbers changes.
CACHE_VERSION = 5
#: Consumers wider than this (unfolded inputs) are zeroed, not refit, in the analysis.
MAX_REFIT_WIDTH = 4096
#: Rows of each consumer's input used for its Gram matrix.
GRAM_ROWS = 8192
DAMP = 1e-2
#: A consumer is refit only with at least this many input rows per unknown (as in reconstruct).
MIN_ROWS_PER_UNKNOWN = 2

KeepFn = Callable[[ChannelGroup, float], np.ndarray]


@dataclasses.dataclass
class GroupCurve:
    """One group's sensitivity: per ratio, channels kept, MACs/params saved and the drift."""

    index: int  # position in ChannelAnalysis.groups
    name: str
    kind: str
    size: int
    layers: list[str]
    macs_share: float  # MACs of the layers the group touches / model MACs
    ratios: list[float]
    kept: list[int]
    macs_saved: list[int]
    params_saved: list[int]
    nmse: list[float]
    cosine: list[float]
    agreement: list[float | None]
    mode: str  # "masked" (weights fed to one session) or "rebuilt" (a pruned copy per point)
    #: mean KL(softmax(original) ‖ softmax(pruned)) per row of the worst classification output
    #: (None when no counted output is one): the drift that predicts top-1 flips
    kl: list[float | None] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: (_json(v) if not isinstance(v, list) else [_json(x) for x in v]) for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass
class Sensitivity:
    groups: list[GroupCurve]
    ratios: list[float]
    outputs: list[str]
    reconstruct: bool
    criterion: str
    samples: int
    macs: int
    params: int
    seconds: float
    cached: bool = False
    cache_file: str | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["groups"] = [g.to_dict() for g in self.groups]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Sensitivity":
        groups = [GroupCurve(**{k: ([_unjson(x) for x in v] if isinstance(v, list) and k in ("nmse", "cosine", "kl") else v) for k, v in g.items()}) for g in d["groups"]]
        return cls(**{**d, "groups": groups})

    def table(self, limit: int | None = None) -> str:
        """A plain-text table: group, layers, channels, MACs share, nmse at each ratio."""
        head = f"{'group':<28} {'kind':<6} {'ch':>5} {'MACs%':>6} " + " ".join(f"{r:>8.0%}" for r in self.ratios)
        lines = [f"sensitivity: output drift (nmse = Σ|Δy|²/Σ|y|², worst of {', '.join(self.outputs)}) when one group alone loses a fraction of its channels"
                 + (" (with reconstruction)" if self.reconstruct else "")
            + "; MACs% = share of the model's MACs in layers the group touches", head, "-" * len(head)]
        rows = self.groups if limit is None else self.groups[:limit]
        for g in rows:
            cells = " ".join(f"{_short(v):>8}" for v in g.nmse)
            lines.append(f"{_clip(g.name, 28):<28} {g.kind:<6} {g.size:>5} {100 * g.macs_share:>6.1f} {cells}")
        if limit is not None and len(self.groups) > limit:
            lines.append(f"... {len(self.groups) - limit} more groups in the JSON report")
        return "\n".join(lines) + "\n"


def _short(v: float) -> str:
    if not math.isfinite(v):
        return "inf"
    return "0" if v == 0 else f"{v:.1e}"


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else "…" + text[-(n - 1):]


def _json(v):
    return str(v) if isinstance(v, float) and not math.isfinite(v) else v


def _unjson(v):
    return float(v) if isinstance(v, str) else v


# --------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    return Path(os.environ.get("ONNXSLIM_CACHE_DIR") or Path.home() / ".cache" / "onnxslim") / "sensitivity"


def cache_key(model_bytes: bytes, samples: Sequence[Mapping[str, np.ndarray]], options: Mapping) -> str:
    h = hashlib.sha256()
    h.update(hashlib.sha256(model_bytes).digest())
    for sample in samples:
        for name in sorted(sample):
            arr = np.ascontiguousarray(sample[name])
            h.update(f"{name}:{arr.dtype}:{arr.shape}".encode())
            h.update(arr.tobytes() if arr.dtype != object else repr(arr.tolist()).encode())
    h.update(json.dumps({**options, "version": CACHE_VERSION}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def _load_cached(path: Path) -> Sensitivity | None:
    try:
        return Sensitivity.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _store(path: Path, result: Sensitivity) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        model_io.write_text_atomic(path, json.dumps(result.to_dict()))
    except OSError:
        pass  # a cache that cannot be written is no error


# --------------------------------------------------------------------------- the analysis


def analyze(
    model: ir.Model,
    analysis: ChannelAnalysis,
    groups: Sequence[ChannelGroup],
    keep: KeepFn,
    samples: Sequence[Mapping[str, np.ndarray]],
    *,
    outputs: Sequence[str] | None = None,
    reconstruct: bool = False,
    criterion: str = "",
    ratios: Sequence[float] = RATIOS,
    refit_copy: Callable[[ir.Model, dict], None] | None = None,
    options: Mapping | None = None,
    use_cache: bool = True,
    workers: int | None = None,
    progress=None,
) -> Sensitivity:
    """Sensitivity curves of ``groups`` (groups of ``analysis``, an analysis of ``model``).

    ``keep(group, ratio)`` gives the slots kept at a ratio (the pruning criterion's choice);
    ``samples`` are the data (calibration); ``outputs`` the outputs that count (default all).
    ``refit_copy(copy, plan)`` refits a pruned copy (for groups evaluated by rebuilding, with
    ``reconstruct``). ``options`` (criterion, rounding, …) enter the cache key.
    """
    start = time.perf_counter()
    # MACs at the data's shapes (the first sample): the same for analyze and prune on the same data.
    input_shapes = {k: list(np.shape(v)) for k, v in samples[0].items()}
    names = [v.name for v in model.graph.outputs]
    counted = [n for n in names if outputs is None or n in outputs] or names
    ratios = [float(r) for r in ratios]
    index = {id(g): i for i, g in enumerate(analysis.groups)}
    path = None
    if use_cache:
        key_options = {
            **dict(options or {}), "ratios": ratios, "outputs": counted, "reconstruct": reconstruct,
            "criterion": criterion, "groups": [(index[id(g)], g.name, g.size) for g in groups],
        }
        path = cache_dir() / f"{cache_key(model_io.to_bytes(model), samples, key_options)}.json"
        hit = _load_cached(path) if path.is_file() else None
        if hit is not None:
            hit.cached, hit.cache_file = True, str(path)
            return hit
    base = analysis.predict(None, input_shapes, samples[0])
    total_macs = base["macs_before"] or 1
    plans = {id(g): [np.asarray(keep(g, r), dtype=np.int64) for r in ratios] for g in groups}
    # With reconstruction, drift is measured on calibration samples the refit did not see
    # (every 4th): a refit judged on its own data hides overfitting (a layer refit from a fifth
    # of its inputs reproduces the calibration outputs far better than new ones).
    fit, held = _fit_split(samples) if reconstruct else (samples, samples)
    evaluator = MaskedEvaluator(model, groups, held, counted, reconstruct, fit_samples=fit)
    try:
        curves = []
        rebuild = [g for g in groups if not evaluator.exact(g, plans[id(g)][len(ratios) // 2], analysis, index[id(g)])]
        jobs = [(g, j) for g in groups if g not in rebuild for j in range(len(ratios))]
        results: dict[tuple[int, int], tuple] = {}
        n_workers = workers or max(1, min(os.cpu_count() or 1, 8))
        with concurrent.futures.ThreadPoolExecutor(n_workers) as pool:
            futures = {pool.submit(evaluator.point, g, plans[id(g)][j]): (id(g), j) for g, j in jobs}
            done = concurrent.futures.as_completed(futures)
            for fut in progress(done, "sensitivity", total=len(futures)) if progress else done:
                results[futures[fut]] = fut.result()
        for g in rebuild:
            for j in range(len(ratios)):
                results[(id(g), j)] = evaluator.rebuilt_point(analysis, index[id(g)], plans[id(g)][j], refit_copy if reconstruct else None)
    finally:
        evaluator.close()
    for g in groups:
        touched = _touched_macs(analysis, g, input_shapes, samples[0])
        row = [results[(id(g), j)] for j in range(len(ratios))]
        predicted = [analysis.predict({g: plans[id(g)][j]}, input_shapes, samples[0]) for j in range(len(ratios))]
        curves.append(
            GroupCurve(
                index=index[id(g)], name=g.name, kind=g.kind, size=g.size,
                layers=sorted({m.node.name or m.tensor.name for m in g.producers + g.consumers if m.role == "weight"}),
                macs_share=touched / total_macs, ratios=ratios,
                kept=[int(len(p)) for p in plans[id(g)]],
                macs_saved=[int(base["macs_before"] - p["macs_after"]) for p in predicted],
                params_saved=[int(base["params_before"] - p["params_after"]) for p in predicted],
                nmse=[r[0] for r in row], cosine=[r[1] for r in row], agreement=[r[2] for r in row],
                mode="rebuilt" if g in rebuild else "masked", kl=[r[3] for r in row],
            )
        )
    result = Sensitivity(
        curves, ratios, counted, reconstruct, criterion, len(samples), int(base["macs_before"]), int(base["params_before"]),
        time.perf_counter() - start,
    )
    if path is not None:
        result.cache_file = str(path)
        _store(path, result)
    return result


def _fit_split(samples):
    samples = list(samples)
    if len(samples) < 2:
        return samples, samples
    held = samples[3::4] or samples[-1:]
    fit = [x for i, x in enumerate(samples) if i % 4 != 3] if len(samples) > 3 else samples[:-1]
    return fit, held


def _touched_macs(analysis: ChannelAnalysis, group: ChannelGroup, input_shapes, sample) -> int:
    """MACs of the layers whose cost depends on the group (removing all but one channel)."""
    before = analysis.predict(None, input_shapes, sample)["macs_before"]
    after = analysis.predict({group: np.arange(1)}, input_shapes, sample)["macs_after"]
    return int(before - after)


def pruned_copy(model: ir.Model, index: int, keep: np.ndarray, *, freeze_residual_stream: bool = True,
                refit_copy: Callable[[ir.Model, dict], None] | None = None) -> ir.Model:
    """A copy of ``model`` with group ``index`` (of a fresh analysis) cut to ``keep``."""
    return pruned_copy_plan(model, {index: keep}, freeze_residual_stream=freeze_residual_stream, refit_copy=refit_copy)


def pruned_copy_plan(model: ir.Model, plan: Mapping[int, np.ndarray], *, freeze_residual_stream: bool = True,
                     refit_copy: Callable[[ir.Model, dict], None] | None = None) -> ir.Model:
    """A copy of ``model`` pruned by ``plan`` ({group index: kept slots}); ``refit_copy(copy,
    {group: kept})`` wraps the removal (capture before, refit after) when given."""
    copy = model.clone()
    fresh = channels.analyze(copy, freeze_residual_stream=freeze_residual_stream)
    groups = {fresh.groups[i]: np.asarray(k, dtype=np.int64) for i, k in plan.items() if len(k) < fresh.groups[i].size}
    if groups:
        if refit_copy is not None:
            refit_copy(copy, groups, fresh)
        else:
            fresh.apply(groups)
    return copy


def compare_outputs(reference: list, candidate: list, counted: Sequence[str]) -> tuple[float, float, float | None, float | None]:
    """(nmse, worst cosine, worst top-1 agreement or None, worst mean softmax KL or None) over the
    counted outputs."""
    # per output (an output's scale must not hide another's drift), worst of the float outputs
    floats = [n for n in counted if np.asarray(reference[0][n]).dtype.kind == "f"] or list(counted)
    nmse = max(relative_error([r[n] for r in reference], [c[n] for c in candidate]) for n in floats)
    metrics = validation.compare([{n: r[n] for n in counted} for r in reference], [{n: c[n] for n in counted} for c in candidate])
    cosine = min(m.cosine for m in metrics)
    tops = [m.top1 for m in metrics if m.top1 is not None]
    kls = [softmax_kl([r[n] for r in reference], [c[n] for c in candidate]) for n in floats if _classifier(reference[0][n])]
    return float(nmse), float(cosine), (min(tops) if tops else None), (max(kls) if kls else None)


def softmax_kl(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> float:
    """Mean over rows of KL(softmax(r) ‖ softmax(c)) along the last axis: how far the pruned
    model's class probabilities moved. Unlike nmse it weighs logit changes by what they do to
    the decision (a shift of all logits costs nothing, a change between close classes a lot)."""
    total, rows = 0.0, 0
    for r, c in zip(reference, candidate):
        r64 = np.asarray(r, np.float64).reshape(-1, np.shape(r)[-1])
        c64 = np.asarray(c, np.float64).reshape(-1, np.shape(c)[-1])
        lp = r64 - r64.max(1, keepdims=True)
        lp -= np.log(np.exp(lp).sum(1, keepdims=True))
        lq = c64 - c64.max(1, keepdims=True)
        lq -= np.log(np.exp(lq).sum(1, keepdims=True))
        kl = (np.exp(lp) * (lp - lq)).sum(1)
        if not np.all(np.isfinite(kl)):
            return math.inf
        total += float(kl.sum())
        rows += len(kl)
    return max(total / max(rows, 1), 0.0)


class MaskedEvaluator:
    """One session of the model with every consumer weight (and bias) overridable."""

    def __init__(self, model: ir.Model, groups: Sequence[ChannelGroup], samples, counted: Sequence[str], reconstruct: bool,
                 fit_samples=None):
        self.model = model
        self.samples = list(samples)
        self.fit_samples = list(fit_samples) if fit_samples is not None else self.samples
        self.counted = list(counted)
        self.overridable: dict[str, np.ndarray] = {}  # value name -> original array
        self.refit: dict[str, _Refit] = {}  # consumer weight name -> its Gram statistics
        self._session = None
        proto = model_io.to_proto(model)
        graph = proto.graph
        init_names = {t.name for t in graph.initializer}
        input_names = {i.name for i in graph.input}
        constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and len(n.output) == 1}
        main_values = {v.name for n in model.graph for v in n.inputs if v is not None}
        wanted: dict[str, np.ndarray] = {}
        for g in groups:
            for m in g.consumers:
                if m.role != "weight" or m.tensor.name not in main_values:
                    continue
                wanted.setdefault(m.tensor.name, None)
        for name in list(wanted):
            value = _find_value(model, name)
            c = constant(value) if value is not None else None
            if c is None or name in input_names:
                continue
            if name in init_names:
                arr = c.numpy()
            elif name in constants:
                arr = c.numpy()
                graph.node.remove(constants[name])
                graph.initializer.append(onnx.numpy_helper.from_array(arr, name))
            else:
                continue  # computed (dequantized) weights: those groups are rebuilt
            graph.input.append(onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(arr.dtype), list(arr.shape)))
            self.overridable[name] = arr
        if reconstruct:
            self._prepare_refit(groups, graph, init_names, input_names)
        if proto.ir_version < 4:
            proto.ir_version = 4
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 4
        self._session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in self._session.get_inputs() if i.name not in self.overridable]
        self.reference = self._run({})

    def close(self) -> None:
        self._session = None

    def _run(self, overrides: Mapping[str, np.ndarray]) -> list[dict]:
        out = []
        for sample in self.samples:
            feeds = {k: v for k, v in sample.items() if k in self._inputs}
            feeds.update(overrides)
            arrays = self._session.run(self.counted, feeds)
            out.append(dict(zip(self.counted, arrays)))
        return out

    def _overrides(self, group: ChannelGroup, keep: np.ndarray) -> dict[str, np.ndarray] | None:
        return self.plan_overrides({group: keep})

    def plan_overrides(self, plan: Mapping[ChannelGroup, np.ndarray]) -> dict[str, np.ndarray] | None:
        """Weights (and biases) to feed for ``plan``: every consumer's removed input slices zeroed,
        or its kept slices refit; None when a consumer weight is not overridable."""
        removed: dict[tuple[str, int], list[np.ndarray]] = {}
        for group, keep in plan.items():
            gone_slots = np.setdiff1d(np.arange(group.size), keep)
            if not len(gone_slots):
                continue
            for m in group.consumers:
                if m.role != "weight":
                    continue
                if m.tensor.name not in self.overridable:
                    return None
                removed.setdefault((m.tensor.name, m.axis), []).append(m.positions[np.isin(m.slots, gone_slots)])
        edits: dict[str, np.ndarray] = {}
        for (name, axis), parts in removed.items():
            gone = np.unique(np.concatenate(parts))
            arr = edits.get(name, self.overridable[name]).copy()
            fit = self.refit.get(name)
            if fit is not None and fit.axis == axis and name not in edits:
                kept = np.setdiff1d(np.arange(arr.shape[axis]), gone)
                edits.update(fit.solve(arr, kept, gone))
                continue
            index = [slice(None)] * arr.ndim
            index[axis] = gone
            arr[tuple(index)] = 0
            edits[name] = arr
        return edits

    def plan_outputs(self, plan: Mapping[ChannelGroup, np.ndarray]) -> list[dict] | None:
        """The counted outputs on this evaluator's samples with ``plan`` applied by masking."""
        edits = self.plan_overrides(plan)
        return None if edits is None else self._run(edits)

    def exact(self, group: ChannelGroup, keep: np.ndarray, analysis: ChannelAnalysis, index: int) -> bool:
        """Does zeroing the consumers' slices reproduce a real removal of ``group``?"""
        if not group.consumers or any(m.role == "weight" and m.tensor.name not in self.overridable for m in group.consumers):
            return False
        edits = self._zero_overrides(group, keep)
        sample = self.samples[0]
        feeds = {k: v for k, v in sample.items() if k in self._inputs}
        masked = dict(zip(self.counted, self._session.run(self.counted, {**feeds, **edits})))
        try:
            copy = pruned_copy(self.model, index, keep)
            real = validation.run_model(copy, [sample])[0]
        except Exception:
            return False
        for name in self.counted:
            a, b = np.asarray(masked[name], np.float64), np.asarray(real.get(name), np.float64)
            if a.shape != b.shape or not np.allclose(a, b, rtol=1e-3, atol=1e-4 * (np.abs(b).max() + 1e-12)):
                return False
        return True

    def _zero_overrides(self, group: ChannelGroup, keep: np.ndarray) -> dict[str, np.ndarray]:
        saved, self.refit = self.refit, {}
        try:
            return self._overrides(group, keep)
        finally:
            self.refit = saved

    def point(self, group: ChannelGroup, keep: np.ndarray) -> tuple:
        if len(keep) >= group.size:
            classifier = any(_classifier(a) for a in self.reference[0].values())
            return 0.0, 1.0, 1.0 if classifier else None, 0.0 if classifier else None
        edits = self._overrides(group, keep)
        return compare_outputs(self.reference, self._run(edits), self.counted)

    def rebuilt_point(self, analysis: ChannelAnalysis, index: int, keep: np.ndarray, refit_copy) -> tuple:
        group = analysis.groups[index]
        if len(keep) >= group.size:
            return 0.0, 1.0, None, None
        try:
            copy = pruned_copy(self.model, index, keep, refit_copy=refit_copy)
            outputs = validation.run_model(copy, self.samples)
        except Exception:
            return math.inf, 0.0, 0.0, math.inf
        return compare_outputs(self.reference, outputs, self.counted)

    # -- reconstruction statistics --------------------------------------------------------

    def _prepare_refit(self, groups, graph, init_names, input_names) -> None:
        from . import reconstruct

        layers: dict[str, reconstruct.LinearLayer] = {}
        for g in groups:
            for m in g.consumers:
                if m.role != "weight" or m.tensor.name not in self.overridable or m.tensor.name in layers:
                    continue
                layer = reconstruct.linear_layer(m.node, self.model)
                if isinstance(layer, str) or layer.weight.name != m.tensor.name or layer.in_axis != m.axis:
                    continue
                if layer.matrix(self.overridable[m.tensor.name]).shape[0] > MAX_REFIT_WIDTH:
                    continue
                layers[m.tensor.name] = layer
        if not layers:
            return
        values = [layer.input for layer in layers.values()]
        grams: dict[str, np.ndarray] = {}
        rows_seen: dict[str, int] = {}
        rng = np.random.default_rng(0)
        n = len(self.fit_samples)
        with runtime.session(self.model, "basic", extra_outputs=[v for v in values if not v.is_graph_input()]) as sess:
            for sample in self.fit_samples:
                out = runtime.run(sess, sample, [v.name for v in values if not v.is_graph_input()])
                for name, layer in layers.items():
                    x = sample[layer.input.name] if layer.input.is_graph_input() else out[layer.input.name]
                    rows = np.sort(rng.choice(layer.n_rows(x.shape), size=min(layer.n_rows(x.shape), -(-GRAM_ROWS // n)), replace=False))
                    z = layer.unfold(np.asarray(x, np.float64), rows)
                    z = np.concatenate([z, np.ones((len(z), 1))], axis=1)
                    grams[name] = grams.get(name, 0) + z.T @ z
                    rows_seen[name] = rows_seen.get(name, 0) + len(z)
        for name, layer in layers.items():
            if rows_seen.get(name, 0) < MIN_ROWS_PER_UNKNOWN * grams[name].shape[0]:
                continue  # too few rows to refit without overfitting: zeroed only (as reconstruct does)
            bias = None
            b = layer.bias
            if b is not None and layer.kind in ("conv", "gemm") and b.name in init_names and b.name not in input_names:
                bias = b.name
                if b.name not in self.overridable:
                    arr = b.numpy()
                    graph.input.append(onnx.helper.make_tensor_value_info(b.name, onnx.helper.np_dtype_to_tensor_dtype(arr.dtype), list(arr.shape)))
                    self.overridable[b.name] = arr
            self.refit[name] = _Refit(layer, grams[name], bias, self.overridable)


class _Refit:
    """Ridge refit of one consumer's kept input slices (and its bias) from its input Gram."""

    def __init__(self, layer, gram: np.ndarray, bias: str | None, arrays: Mapping[str, np.ndarray]):
        self.layer, self.gram, self.bias, self.arrays = layer, gram, bias, arrays
        self.axis = layer.in_axis

    def solve(self, current: np.ndarray, kept_positions: np.ndarray, gone_positions: np.ndarray) -> dict[str, np.ndarray]:
        layer = self.layer
        w = self.arrays[layer.weight.name]
        mat = layer.matrix(w.astype(np.float64))  # [D, Cout]
        d = mat.shape[0]
        b = self.arrays[self.bias].astype(np.float64).reshape(1, -1) if self.bias else np.zeros((1, mat.shape[1]))
        full = np.concatenate([mat, b], axis=0)
        cols = layer.columns(np.asarray(kept_positions)).reshape(-1)
        support = np.concatenate([cols, [d]]) if self.bias else cols
        g_ss = self.gram[np.ix_(support, support)]
        lam = DAMP * float(np.mean(np.diag(g_ss))) if len(support) else 0.0
        rhs = self.gram[support][:, : d + 1] @ full if self.bias else self.gram[np.ix_(support, np.arange(d))] @ mat
        try:
            sol = np.linalg.solve(g_ss + lam * np.eye(len(support)), rhs)
        except np.linalg.LinAlgError:
            sol = np.linalg.lstsq(g_ss + lam * np.eye(len(support)), rhs, rcond=None)[0]
        new = np.zeros_like(mat)
        new[cols] = sol[: len(cols)]
        out = {layer.weight.name: layer.weight_from_matrix(new, w.shape).astype(w.dtype)}
        if self.bias:
            out[self.bias] = sol[-1].reshape(self.arrays[self.bias].shape).astype(self.arrays[self.bias].dtype)
        return out


def _classifier(arr) -> bool:
    a = np.asarray(arr)
    return a.dtype.kind == "f" and a.ndim >= 1 and a.shape[-1] > 1


def _find_value(model: ir.Model, name: str) -> ir.Value | None:
    if name in model.graph.initializers:
        return model.graph.initializers[name]
    for node in model.graph:
        for v in node.outputs:
            if v.name == name:
                return v
    return None
