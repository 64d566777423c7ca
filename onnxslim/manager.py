"""The pass manager: run a pipeline, validate every pass against the original, roll back.

For each pass: snapshot (``Model.clone`` shares tensors, so it is cheap; passes never mutate
tensor data in place), run, check the graph (onnx checker on a weight-less skeleton), run the
model in onnxruntime on the validation samples and compare with the reference outputs. A
lossless pass outside tolerance, a lossy pass over the user's budget, or a pass that raised or
produced a graph onnxruntime cannot run is rolled back and named in the report.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from . import model_io, registry, runtime, shapes, stats, validation
from .budget import Budget, Metric
from .constants import model_fingerprint
from .calibration import Calibration
from .errors import EXIT_INCOMPLETE, ModelError, PassFailedError, UsageError, arg
from .inputs import MAX_SAMPLES, RETRY_DIMS, DefaultedDimsWarning, InputConfig, Sample, check_shape_names, check_shapes, resolve_shapes
from .pass_api import Pass, PassContext
from .report import APPLIED, FAILED, NO_CHANGE, ROLLED_BACK, SKIPPED, PassReport, Report
from .validation import Tolerance

PassSpec = str | Pass | Mapping[str, Any]


@dataclasses.dataclass
class OptimizeResult:
    model: ir.Model | None
    report: Report
    #: The unchanged proto when onnx-ir could not represent the model (passes were skipped).
    proto: onnx.ModelProto | None = None
    source: Path | None = None
    #: The files the input model was read from (see :attr:`model_io.Document.files`).
    input_files: frozenset[Path] = frozenset()

    @property
    def complete(self) -> bool:
        """Every requested pass applied or had nothing to do (none rolled back or failed)."""
        return not self.report.incomplete

    def exit_code(self, allow_rollback: bool = False) -> int:
        """What the CLI returns for this run: 0, or :data:`~onnxslim.errors.EXIT_INCOMPLETE` (3)
        when a pass was rolled back or failed and ``allow_rollback`` is not set."""
        return 0 if self.complete or allow_rollback else EXIT_INCOMPLETE

    def save(self, path: str | os.PathLike, *, external_data: bool | None = None, in_place: bool = False) -> list[Path]:
        """Write the result atomically; refuse to overwrite the input unless ``in_place``, and
        refuse a result that fails a final check the input model passes."""
        path = Path(path)
        target = self.model if self.model is not None else self.proto
        if not in_place:
            writes = model_io.output_files(path, model_io.uses_external_data(target, external_data))
            if self.source is not None and _same_file(path, self.source):
                raise UsageError(f"{path}: refusing to overwrite the input model (use {arg('in_place', True)})")
            clash = next((f for f in writes if f.resolve() in self.input_files), None)
            if clash is not None:
                raise UsageError(f"{clash}: refusing to overwrite a file the input model is read from (use {arg('in_place', True)})")
        broken = self.report.broken_checks
        if broken:
            detail = "; ".join(f"{k} {self.report.final_checks[k]}" for k in broken)
            raise PassFailedError(f"the optimized model fails a check the input model passes ({detail}); nothing written")
        started = time.perf_counter()
        if self._unchanged_single_file() and not external_data:
            # Nothing changed: the input's own bytes, not a re-serialisation in another layout.
            files = model_io.copy_atomic(self.source, path)
            if self.report.before is not None:  # the file written is the input's, byte for byte
                self.report.before = dataclasses.replace(self.report.before, file_bytes=files[0].stat().st_size)
        else:
            files = model_io.save(target, path, external_data=external_data)
        self.report.seconds += time.perf_counter() - started
        self.report.output = str(path)
        self.report.output_bytes = sum(f.stat().st_size for f in files)
        return files


    def _unchanged_single_file(self) -> bool:
        target = self.model if self.model is not None else self.proto
        return (
            self.source is not None
            and not any(row.status == APPLIED for row in self.report.passes)
            and self.input_files <= {self.source.resolve()}
            and target is not None
            and target.ir_version <= model_io.MAX_IR_VERSION
        )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def optimize(
    model: model_io.ModelSource,
    passes: str | Sequence[PassSpec] | None = None,
    *,
    inputs: str | os.PathLike | Sequence[str | os.PathLike] | Sequence[Sample] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    calibration: str | os.PathLike | Sequence[str | os.PathLike] | Sequence[Sample] | None = None,
    validate: bool = True,
    strict: bool = False,
    min_cosine: float | None = None,
    tolerances: Mapping[str, Tolerance] | None = None,
    default_tolerance: Tolerance = Tolerance(),
    samples: int = 2,
    seed: int = 0,
    progress: bool = False,
    final_check: bool = True,
    min_agreement: float | None = None,
    max_error: float | None = None,
    metric_outputs: Sequence[str] | None = None,
    metric: Metric | None = None,
    min_metric: float | None = None,
    measure_latency: bool = False,
) -> OptimizeResult:
    """Load ``model``, run ``passes`` (default: ``simplify``) with validation after each one.

    ``passes`` is a CLI-style string (``"prune:ratio=0.3,sparsify"``), or a list of pass
    objects, names or ``{"name": ..., **options}`` mappings. ``inputs``/``calibration`` are
    ``.npz`` paths, folders of ``.npz`` files, lists of those, or lists of feed dicts (one
    dict: one sample), checked against the input signature; samples may differ in shape
    (each is run on its own); without ``inputs``, ``samples`` seeded random
    samples are built from the input signature (``input_shapes`` fixes dynamic dims).
    ``tolerances`` maps output names to a :class:`Tolerance` (a number: its atol, rtol 0).

    The budget of lossy passes (:class:`onnxslim.budget.Budget`): ``min_cosine``,
    ``min_agreement`` (top-1 agreement), ``max_error`` (max |Δ|) and/or a callable
    ``metric(original_outputs, pruned_outputs) -> float`` that must stay ≥ ``min_metric``, on the
    outputs named in ``metric_outputs`` (default all). A lossy pass over budget is rolled back;
    ``prune:target=budget`` searches for the largest reduction within it.

    ``measure_latency`` times the input and the result side by side in onnxruntime (CPU, default
    optimisation level, interleaved calls, medians) on the first validation sample.
    """
    started = time.perf_counter()
    budget = Budget(min_cosine, min_agreement, max_error, metric, min_metric, tuple(metric_outputs) if metric_outputs else None)
    if not isinstance(model, (str, os.PathLike, bytes, onnx.ModelProto, ir.Model)):
        raise UsageError(f"model: expected a path, bytes, an onnx.ModelProto or an ir.Model, got {type(model).__name__}")
    if not isinstance(samples, int) or samples < 1:
        raise UsageError(f"{arg('samples')} must be at least 1, got {samples!r}")
    if samples > MAX_SAMPLES:
        raise UsageError(f"{arg('samples')} {samples}: at most {MAX_SAMPLES} random samples are built; give more data with {arg('inputs')}")
    if not isinstance(seed, int) or seed < 0:
        raise UsageError(f"{arg('seed')} must be a non-negative integer, got {seed!r}")
    input_shapes = check_shapes(input_shapes)
    pipeline = registry.build_all(passes)
    doc = model_io.load_document(model)
    source = doc.path
    console = _Console(progress)
    if doc.model is None:
        report = Report(str(source) if source else None, None, validated=False)
        for p in pipeline:
            report.passes.append(
                PassReport(p.name, p.lossless, SKIPPED, reason=f"onnx-ir cannot represent the model ({doc.unsupported})")
            )
        report.warnings.append(f"model kept unchanged: {doc.unsupported}")
        report.seconds = time.perf_counter() - started
        return OptimizeResult(None, report, doc.proto, source, doc.files)

    current = doc.model
    tolerances = validation.per_output(tolerances, [v.name for v in current.graph.outputs])
    check_shape_names(current, input_shapes)
    budget.check_outputs([v.name for v in current.graph.outputs])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calib_samples = InputConfig(calibration, input_shapes, samples, seed, "calibration").samples(current) if calibration is not None else None
        validation_data = inputs
        if inputs is None and calib_samples is not None and any(getattr(p, "needs_held_out", False) for p in pipeline):
            # A search judged on calibration data would fit its own test: hold out part of it.
            calib_samples, validation_data = held_out_split(calib_samples)
            warnings.warn(
                f"no --inputs: validating on {len(validation_data)} of {len(validation_data) + len(calib_samples)} "
                "calibration samples held out from calibration (give --inputs for a separate validation set)"
            )
        config = InputConfig(validation_data, input_shapes, samples, seed)
        reference, shape_map = None, None
        reached: set[str] = set()  # the branches (If branches, Loop/Scan bodies) some sample runs
        # What sessions load for the model as it stands: one serialisation per state, shared by
        # its validation session and (for the last state) the final default-level check.
        loaded = _session_model(current) if validate else None
        if validate:
            console.step("reference outputs of the original model")
            feeds, reference = _reference_outputs(current, config, caught, loaded)
            feeds, reference, reached = _reach_branches(current, feeds, reference, random=validation_data is None)
        elif validation_data is not None or measure_latency:  # latency is timed on a sample
            feeds = config.samples(current)
        else:
            # Without validation no sample is built (a declared dim of 10**9 must not allocate);
            # statistics use the shapes alone. A signature without shapes is no error here.
            feeds = []
            try:
                shape_map = {k: list(v) for k, v in resolve_shapes(current, input_shapes).items()}
            except UsageError:
                shape_map = {}
        calib = Calibration(calib_samples) if calib_samples is not None else None
    model_io.release_memory(current)  # each phase maps again only what it reads
    report = Report(str(source) if source else None, None, validated=validate)
    report.warnings.extend(str(w.message) for w in caught)
    for message in report.warnings:
        console.warn(message)
    first = feeds[0] if feeds else None
    if shape_map is None:
        shape_map = {k: list(v.shape) for k, v in (first or {}).items() if isinstance(v, np.ndarray)}
    report.input_shapes = shape_map
    report.samples = len(feeds)
    # Strict shape inference catches stale or wrong shapes a pass leaves behind; it is only a
    # criterion when the original model passes it (custom domains, for one, do not). The same
    # skeleton gives the checker's verdict on the input (the final check's, if nothing changes)
    # and the inferred shapes serve the statistics.
    state = _initial_state(current, loaded)
    loaded = None  # held by the state only: freed once a pass changes the model
    infer_ok = state.inferred is not None
    report.before = stats.compute(current, shape_map, first, inferred=state.inferred, proto=_proto(state))

    # Outputs of the model as it stands before each pass: a lossless pass must reproduce these
    # (not the original's, which an earlier lossy pass has legitimately moved away from).
    previous = reference
    original = current.clone() if measure_latency else None  # tensors shared: passes never edit them in place
    ctx = PassContext(
        calibration=calib, progress=console.progress, seed=seed, input_shapes=shape_map,
        validation=feeds, reference=reference, budget=budget, sample=first,
    )
    model_io.release_memory(current)  # what the statistics read
    for index, p in enumerate(pipeline, 1):
        console.step(f"[{index}/{len(pipeline)}] {p.name}")
        row = PassReport(p.name, p.lossless, NO_CHANGE, options=dataclasses.asdict(p.options))
        snapshot = current.clone()
        fingerprint = model_fingerprint(current)
        branches = validation.if_branches(current) if validate else {}
        start = time.perf_counter()
        ctx.inferred = state.inferred
        try:
            result = p.run(current, ctx)
        except UsageError:
            raise
        except Exception as exc:  # a pass bug must not take the pipeline down
            result = None
            row.status, row.reason = FAILED, f"{type(exc).__name__}: {_first_line(exc)}"
        row.seconds = time.perf_counter() - start
        ctx.inferred = None
        if result is not None:
            row.summary, row.details, row.notes = result.summary, result.details, list(result.notes)
            modified = result.modified
            if not modified and model_fingerprint(current) != fingerprint:  # never trust an unvalidated change
                modified = True
                row.notes.append("the pass reported no change but changed the model: checked as a change")
            if modified:
                row.status = APPLIED
                problem, inferred = _check_graph(current, infer=infer_ok)
                state = _State() if problem is not None else _State("ok", _session_model(current) if validate else None, inferred)
                if problem is None and validate:
                    t0 = time.perf_counter()
                    problem, outputs = _validate(
                        row, current, feeds, reference, previous, tolerances, default_tolerance, budget, state.session
                    )
                    row.validate_seconds = time.perf_counter() - t0
                    if problem is None:
                        previous = outputs
                        _name_unreached_branches(row, branches, validation.if_branches(current), reached)
                if problem is not None:
                    row.status, row.reason = (FAILED if problem.startswith("broken") else ROLLED_BACK), problem
        if row.status in (FAILED, ROLLED_BACK):
            current = snapshot
            state = _State()  # nothing known about the snapshot's state: checked afresh
            if strict and (p.lossless or row.status == FAILED):
                raise PassFailedError(f"pass {p.name!r} {row.status}: {row.reason}")
        if row.status == NO_CHANGE:
            state.inferred = None  # a pass may annotate shapes without changing the graph
        if row.status == APPLIED:
            row.stats = stats.compute(current, shape_map, first, inferred=state.inferred, proto=_proto(state))
        del snapshot, result  # the rollback copy's own weights (a pass's new arrays) go now
        model_io.release_memory(current)
        report.passes.append(row)
        console.done(row)

    if measure_latency and first is not None:
        console.step("latency of the input and the result, side by side")
        report.latency = _latency(original, current, first)
    if final_check:
        report.final_checks = _final_checks(current, state)
        model_io.release_memory(current)
        if any(v != "ok" for v in report.final_checks.values()) and not isinstance(model, ir.Model):
            # Only a check the input model passes is this run's fault: look at a fresh copy.
            report.input_checks = _final_checks(model_io.load_document(model).model)
    report.seconds = time.perf_counter() - started
    return OptimizeResult(current, report, None, source, doc.files)


def _reference_outputs(
    model: ir.Model, config: InputConfig, caught: list, loaded: ir.Model | onnx.ModelProto | None = None
) -> tuple[list[Sample], validation.Outputs]:
    """Samples and the original model's outputs on them (its sessions load ``loaded``, see
    :func:`_session_model`). When the model fails at defaulted
    dynamic dims, the larger :data:`~onnxslim.inputs.RETRY_DIMS` are tried in turn (a warning
    says which worked); the samples' own warnings are kept in ``caught``."""
    loaded = model if loaded is None else loaded
    mark = len(caught)
    feeds = config.samples(model)
    try:
        return feeds, validation.run_model(loaded, feeds)
    except ModelError as exc:
        failure = exc
    defaulted = any(issubclass(w.category, DefaultedDimsWarning) for w in caught[mark:])
    if defaulted and config.data is None:
        for size in RETRY_DIMS:
            retry = dataclasses.replace(config, default_dim=size)
            with warnings.catch_warnings(record=True) as again:
                warnings.simplefilter("always")
                try:
                    feeds = retry.samples(model)
                except UsageError:  # over the sample size limit: stop growing
                    break
                try:
                    outputs = validation.run_model(loaded, feeds)
                except ModelError:
                    continue
            del caught[mark:]
            caught.extend(again)
            warnings.warn(f"the model does not run at the default size {config.default_dim} for dynamic dims ({failure}); validating at {size}")
            return feeds, outputs
        tried = ", ".join(map(str, RETRY_DIMS))
        hint = f"dynamic input dims were defaulted (also tried sizes {tried}): set them with {arg('input_shapes')}, give {arg('inputs')}, or {arg('validate', False)}"
    else:
        hint = f"use {arg('validate', False)} to skip validation"
    raise ModelError(f"{failure} (the original model; {hint})") from failure


def _reach_branches(model: ir.Model, feeds: list, reference: validation.Outputs, random: bool) -> tuple[list, validation.Outputs, set[str]]:
    """The branches the samples run (a pass that changes one no sample reaches is named); random
    samples are extended by mirrored ones that reach branches they miss (a warning says so)."""
    reached = validation.branches_reached(model, feeds)
    if not random:
        return feeds, reference, reached
    extra, more = validation.samples_reaching_more(model, feeds, reached)
    if not extra:
        return feeds, reference, reached
    try:
        outputs = validation.run_model(model, extra)
    except ModelError:  # the original rejects them: keep the random samples alone
        return feeds, reference, reached
    warnings.warn(f"added {len(extra)} mirrored sample(s) (float inputs negated) to reach {', '.join(sorted(more - reached))}")
    return [*feeds, *extra], [*reference, *outputs], more


def _name_unreached_branches(row: PassReport, before: Mapping, after: Mapping, reached: set[str]) -> None:
    """Name each branch (If branch, Loop/Scan body) the pass changed that no validation sample
    executes: its outputs were not compared."""
    unreached = validation.unvalidated_branches(before, after, reached)
    if unreached:
        row.unvalidated_branches = unreached
        row.notes.append(
            f"not validated: no validation sample reaches {', '.join(unreached)}, which this pass changed (give {arg('inputs')} that take it)"
        )


def _latency(original: ir.Model, result: ir.Model, feeds: Sample) -> dict[str, Any]:
    from . import latency

    try:
        before, after = latency.measure([original, result], feeds, rounds=30)
    except ModelError as exc:
        return {"error": str(exc)}
    return {"before": before.to_dict(), "after": after.to_dict(), "speedup": before.median / after.median}


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else ""


@dataclasses.dataclass
class _State:
    """What is known about the model as it stands, so nothing is serialised or inferred twice:
    the checker's verdict (None: not run), what its sessions load (:func:`_session_model`; None:
    not made), and strict shape inference at its declared shapes (None: not run or failed)."""

    checker: str | None = None
    session: ir.Model | onnx.ModelProto | None = None
    inferred: onnx.ModelProto | None = None


def _proto(state: _State) -> onnx.ModelProto | None:
    return state.session if isinstance(state.session, onnx.ModelProto) else None


def _session_model(model: ir.Model) -> ir.Model | onnx.ModelProto:
    """What onnxruntime sessions of ``model`` load: its proto, serialised once, when sessions are
    built in memory; else the model itself (large weights are shared, not serialised)."""
    return model_io.to_proto(model) if runtime.loads_in_memory(model) else model


def _initial_state(model: ir.Model, loaded: ir.Model | onnx.ModelProto) -> _State:
    """The input model's checker verdict and strict inference, on one skeleton."""
    state = _State(session=loaded)
    decodes = shapes._main_graph_decodes(model)
    try:
        with shapes.skeleton(model) as proto:
            try:
                onnx.checker.check_model(proto)
                state.checker = "ok"
            except Exception as exc:
                state.checker = f"failed: {_first_line(exc)}"
            state.inferred = shapes.infer_skeleton(proto, decodes, strict=True)
    except shapes.ShapeInferenceError:
        state.inferred = None
    return state


def _check_graph(model: ir.Model, *, infer: bool = False) -> tuple[str | None, onnx.ModelProto | None]:
    """Structural check after a pass: the checker and, with ``infer``, strict shape inference,
    on one skeleton (one serialisation of the model for both). Returns the problem (or None)
    and the inferred proto (with ``infer`` and no problem)."""
    decodes = shapes._main_graph_decodes(model) if infer else None
    inferred = None
    try:
        with shapes.skeleton(model) as proto:
            try:
                onnx.checker.check_model(proto)
            except Exception as exc:
                return f"broken graph (onnx checker): {_first_line(exc)}", None
            if decodes is not None:
                inferred = shapes.infer_skeleton(proto, decodes, strict=True)
    except shapes.ShapeInferenceError as exc:
        return f"broken graph (strict shape inference): {exc}", None
    except Exception as exc:
        return f"broken graph (onnx checker): {_first_line(exc)}", None
    return None, inferred


def _validate(
    row: PassReport,
    model: ir.Model,
    feeds: Sequence[Sample],
    reference: validation.Outputs,
    previous: validation.Outputs,
    tolerances: Mapping[str, Tolerance] | None,
    default_tolerance: Tolerance,
    budget: Budget,
    loaded: ir.Model | onnx.ModelProto | None = None,
) -> tuple[str | None, validation.Outputs | None]:
    """Run the model (its sessions load ``loaded``, see :func:`_session_model`); fill the row's
    drift (vs the original) and step change (vs before the pass). Returns the reason to roll
    back (or None) and the outputs."""
    try:
        outputs = validation.run_model(model if loaded is None else loaded, feeds)
    except ModelError as exc:
        return f"broken graph ({exc})", None
    row.metrics = validation.compare(reference, outputs, tolerances, default_tolerance)
    row.step_metrics = row.metrics if previous is reference else validation.compare(previous, outputs, tolerances, default_tolerance)
    if any(not m.shape_equal for m in row.metrics):
        bad = next(m for m in row.metrics if not m.shape_equal)
        return f"broken graph (output {bad.name!r} changed shape)", outputs
    if row.lossless and not all(m.within_tolerance for m in row.step_metrics):
        worst = max(row.step_metrics, key=lambda m: (not m.within_tolerance, m.max_abs))
        return f"lossless pass changed output {worst.name!r} (max |Δ| {worst.max_abs:.3g})", outputs
    if budget.active and not row.lossless:
        verdict = budget.check(reference, outputs, row.metrics)
        row.details = {**row.details, "budget": {"criteria": budget.describe(), **verdict.to_dict()}}
        if not verdict.ok:
            return verdict.reason, outputs
    return None, outputs


def held_out_split(samples: Sequence[Sample]) -> tuple[list[Sample], list[Sample]]:
    """(calibration, validation): every 4th sample held out for validation (at least one; a
    single sample is split along its leading axis when that holds several rows)."""
    samples = list(samples)
    if len(samples) == 1:
        sample = samples[0]
        rows = {len(v) for v in sample.values() if isinstance(v, np.ndarray) and v.ndim}
        if len(rows) == 1 and (n := rows.pop()) >= 4:
            cut = n - max(1, n // 4)
            head = {k: v[:cut] if isinstance(v, np.ndarray) and v.ndim else v for k, v in sample.items()}
            tail = {k: v[cut:] if isinstance(v, np.ndarray) and v.ndim else v for k, v in sample.items()}
            return [head], [tail]
        return samples, samples
    held = samples[3::4] or samples[-1:]
    kept = [s for i, s in enumerate(samples) if not (i % 4 == 3)] if len(samples) > 3 else samples[:-1]
    return kept, held


def _final_checks(model: ir.Model, known: _State | None = None) -> dict[str, Any]:
    """The final model must pass the checker and load at onnxruntime's default level.
    ``known``: what is already known about the model as it stands (verdict, serialisation)."""
    known = known or _State()
    checks: dict[str, Any] = {}
    if known.checker is not None:
        checks["onnx_checker"] = known.checker
    else:
        try:
            with shapes.skeleton(model) as proto:
                onnx.checker.check_model(proto, full_check=False)
            checks["onnx_checker"] = "ok"
        except Exception as exc:
            checks["onnx_checker"] = f"failed: {_first_line(exc)}"
    try:
        # The state's serialisation (a small model, loaded in memory), else the model: a large
        # one's CSR decodes are folded in groups, not all at once.
        proto = _proto(known)
        runtime.check_loads(proto if proto is not None else model, "default")
        checks["onnxruntime_default_level"] = "ok"
    except ModelError as exc:
        checks["onnxruntime_default_level"] = f"failed: {exc}"
    return checks


class _Console:
    """Progress on stderr: one line per pass, a bar for per-layer loops (only when enabled)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._console = None
        if enabled:
            from rich.console import Console

            self._console = Console(stderr=True)

    def step(self, text: str) -> None:
        if self._console:
            self._console.print(f"[bold]…[/bold] {text}")

    def warn(self, text: str) -> None:
        if self._console:
            self._console.print(f"[yellow]warning:[/yellow] {text}")

    def done(self, row: PassReport) -> None:
        if self._console:
            extra = f" — {row.reason}" if row.reason else (f" — {row.summary}" if row.summary else "")
            self._console.print(f"  {row.name}: {row.status}{extra}".replace("[", r"\["))

    def progress(self, items: Iterable[Any], description: str, total: int | None = None) -> Iterator[Any]:
        if not self._console:
            yield from items
            return
        from rich.progress import track

        yield from track(items, description=f"  {description}", total=total, console=self._console, transient=True)
