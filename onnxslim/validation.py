"""Compare a model's onnxruntime outputs against the reference outputs of the original.

Reference outputs are computed once; after each pass the current model runs on the same
samples with graph optimisations disabled (onnxruntime's fusions would hide differences).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import numbers
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from . import runtime
from .errors import UsageError, did_you_mean
from .inputs import Sample

Outputs = list[dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """``|a - b| <= atol + rtol * max|ref|`` element-wise, per output.

    The defaults absorb kernel summation-order noise and nothing more: with optimisations
    disabled onnxruntime skips constant folding and prepacking, so the same weights reached
    through a constant subgraph sum in a different order (measured 1.5e-5 absolute on a
    1024-wide MatMul whose outputs reach ~30, i.e. 5e-7 of the output scale).

    A nonzero ``rtol`` finer than the output's own precision is raised to it (float16: its
    epsilon, 9.8e-4): one rounding of a float16 value is already larger than 1e-5 of the
    output's scale. onnxruntime computes some float16 chains in float32 (it drops a
    float32 → float16 → float32 Cast pair), so a constant folded to the float16 the graph says
    moves such outputs by one float16 step (measured 2.4e-4-4.9e-4 on the onnx float16
    attention cases). ``rtol=0`` is left as it is.
    """

    atol: float = 1e-5
    rtol: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("atol", "rtol"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not value >= 0:  # NaN too
                raise UsageError(f"tolerance {name} must be a number >= 0, got {value!r}")


def per_output(tolerances: Mapping[str, Tolerance | float] | None, outputs: Sequence[str]) -> dict[str, Tolerance]:
    """Per-output tolerances, checked against the model's ``outputs``. A number stands for
    ``Tolerance(atol=number, rtol=0)``, like the CLI's ``OUTPUT=ATOL``."""
    result = {}
    for name, tol in (tolerances or {}).items():
        if name not in outputs:
            hint = did_you_mean(name, outputs)
            raise UsageError(f"tolerance for {name!r}: the model has no such output{hint} (outputs: {', '.join(outputs)})")
        if isinstance(tol, numbers.Real):
            tol = Tolerance(tol, 0.0)
        if not isinstance(tol, Tolerance):
            raise UsageError(f"tolerance for {name!r}: expected a Tolerance or a number, got {type(tol).__name__}")
        result[name] = tol
    return result


@dataclasses.dataclass
class OutputMetrics:
    name: str
    max_abs: float
    max_rel: float
    cosine: float
    #: NaN/Inf positions and values agree with the reference (NaN == NaN counts as equal).
    nan_equal: bool
    #: For logits-like outputs (last dim > 1, float): fraction of rows with the same argmax.
    top1: float | None
    shape_equal: bool
    within_tolerance: bool

    def to_dict(self) -> dict:
        return {k: _json_float(v) for k, v in dataclasses.asdict(self).items()}


def _json_float(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def compare(
    reference: Outputs,
    candidate: Outputs,
    tolerances: Mapping[str, Tolerance] | None = None,
    default: Tolerance = Tolerance(),
) -> list[OutputMetrics]:
    """Metrics per output over all samples (worst case for errors, pooled for cosine/top-1)."""
    tolerances = tolerances or {}
    names = list(reference[0])
    metrics = []
    for name in names:
        refs = [r[name] for r in reference]
        cands = [c.get(name) for c in candidate]
        metrics.append(_output_metrics(name, refs, cands, tolerances.get(name, default)))
    return metrics


def _output_metrics(name: str, refs: list, cands: list, tol: Tolerance) -> OutputMetrics:
    # An empty optional output is None: None on both sides agrees (and has nothing to compare).
    pairs = [(r, c) for r, c in zip(refs, cands) if r is not None or c is not None]
    refs, cands = [r for r, _ in pairs], [c for _, c in pairs]
    if any(r is None for r in refs):
        return OutputMetrics(name, math.inf, math.inf, 0.0, False, None, False, False)
    if not refs:
        return OutputMetrics(name, 0.0, 0.0, 1.0, True, None, True, True)
    if any(isinstance(x, list) for x in (*refs, *cands)):
        # A sequence output (a list of tensors of any shapes) compares item by item, pooled.
        if not all(isinstance(r, list) and isinstance(c, list) and len(r) == len(c) for r, c in zip(refs, cands)):
            return OutputMetrics(name, math.inf, math.inf, 0.0, False, None, False, False)
        refs, cands = [a for r in refs for a in r], [a for c in cands for a in c]
    if any(c is None for c in cands) or any(np.shape(r) != np.shape(c) for r, c in zip(refs, cands)):
        return OutputMetrics(name, math.inf, math.inf, 0.0, False, None, False, False)
    if not all(np.asarray(r).dtype.kind in "fciub" for r in refs):
        equal = all(np.array_equal(np.asarray(r), np.asarray(c)) for r, c in zip(refs, cands))
        return OutputMetrics(name, 0.0 if equal else math.inf, 0.0 if equal else math.inf, 1.0 if equal else 0.0, True, None, True, equal)
    max_abs = 0.0
    max_rel = 0.0
    dot = na = nb = 0.0
    nan_equal = True
    ok = True
    top_hits = top_rows = 0
    for r, c in zip(refs, cands):
        r64 = np.asarray(r, dtype=np.float64)
        c64 = np.asarray(c, dtype=np.float64)
        r_bad, c_bad = ~np.isfinite(r64), ~np.isfinite(c64)
        same_special = np.array_equal(r_bad, c_bad) and np.array_equal(
            np.where(r_bad, np.nan_to_num(r64, nan=7.0, posinf=8.0, neginf=9.0), 0),
            np.where(c_bad, np.nan_to_num(c64, nan=7.0, posinf=8.0, neginf=9.0), 0),
        )
        nan_equal &= bool(same_special)
        finite = ~(r_bad | c_bad)
        rf, cf = r64[finite], c64[finite]
        if rf.size:
            diff = np.abs(rf - cf)
            scale = float(np.max(np.abs(rf)))
            max_abs = max(max_abs, float(diff.max()))
            max_rel = max(max_rel, float((diff / np.maximum(np.abs(rf), 1e-12 + 1e-6 * scale)).max()))
            ok &= bool(np.all(diff <= tol.atol + _type_rtol(tol.rtol, np.asarray(r).dtype) * scale))
            dot += float(np.dot(rf, cf))
            na += float(np.dot(rf, rf))
            nb += float(np.dot(cf, cf))
        if r64.ndim >= 1 and r64.shape[-1] > 1 and np.asarray(r).dtype.kind == "f":
            rows_r = r64.reshape(-1, r64.shape[-1])
            rows_c = c64.reshape(-1, c64.shape[-1])
            top_hits += int(np.sum(np.argmax(rows_r, -1) == np.argmax(rows_c, -1)))
            top_rows += rows_r.shape[0]
    if na == 0 and nb == 0:
        cosine = 1.0
    elif na == 0 or nb == 0:
        cosine = 0.0
    else:
        cosine = dot / math.sqrt(na * nb)
    top1 = top_hits / top_rows if top_rows else None
    return OutputMetrics(name, max_abs, max_rel, float(cosine), nan_equal, top1, True, bool(ok and nan_equal))


def _type_rtol(rtol: float, dtype: np.dtype) -> float:
    """``rtol``, raised to the dtype's epsilon where it is nonzero and finer (float16)."""
    if rtol > 0 and dtype.kind == "f":
        return max(rtol, float(np.finfo(dtype).eps))
    return rtol


def run_model(model: ir.Model, samples: Sequence[Sample]) -> Outputs:
    """Outputs for every sample, graph optimisations disabled (used for reference and candidate)."""
    with runtime.session(model, "disabled") as sess:
        return [runtime.run(sess, s) for s in samples]


# -- Branches: which subgraphs the samples reach, and which ones a pass changed ------------------
#
# A "branch" is any subgraph: an If's then_branch/else_branch, a Loop's or Scan's body, at any
# depth (an If inside a Loop body inside an If branch...). A subgraph runs only when its node
# decides so (the If's condition, a Loop's trip count), so samples can miss it.

Branch = str  # "If 'name' then_branch", "Loop 'name' body"; nested ones joined with " > "

#: Name prefix of the nodes :func:`branches_reached` renames to see them in onnxruntime's profile.
_MARK = "onnxslim.reached"


def _subgraphs(graph: ir.Graph, prefix: str = "") -> Iterator[tuple[Branch, ir.Graph]]:
    """Every subgraph under ``graph`` with its label, outer ones before the ones they hold. An
    unnamed node is labelled by its index among the graph's nodes of its op type."""
    seen: collections.Counter = collections.Counter()
    for node in graph:
        index = seen[node.op_type]
        seen[node.op_type] += 1
        label = None
        for name, attr in node.attributes.items():
            if attr.type == ir.AttributeType.GRAPH:
                graphs = [(name, attr.as_graph())]
            elif attr.type == ir.AttributeType.GRAPHS:
                graphs = [(f"{name}[{i}]", g) for i, g in enumerate(attr.as_graphs())]
            else:
                continue
            label = label or f"{prefix}{node.op_type} {node.name or f'#{index}'!r}"
            for attr_name, sub in graphs:
                yield f"{label} {attr_name}", sub
                yield from _subgraphs(sub, f"{label} {attr_name} > ")


def if_branches(model: ir.Model) -> dict[Branch, list]:
    """Every branch of the model (If branches and Loop/Scan bodies, nested ones too) with what
    identifies its contents: its nodes (nested ones included), their attributes and inputs, the
    tensors those inputs hold (weights a branch reads from the outer graph count as its
    contents), and what each (nested) subgraph outputs. Compared by identity, so a pass that
    replaces a node, an attribute or a tensor changes it (passes never mutate tensors in place)."""
    return {label: _contents(sub) for label, sub in _subgraphs(model.graph)}


def _contents(graph: ir.Graph) -> list:
    items: list = []
    for sub in (graph, *graph.subgraphs()):
        items.append(tuple(sub.outputs))
        items.extend((value, value.const_value) for value in sub.initializers.values())
        for node in sub:
            items.append((node, node.op_type, tuple(node.attributes.values())))
            items.extend((v, v.const_value if v is not None else None) for v in node.inputs)
    return items


def changed_branches(before: Mapping[Branch, list], after: Mapping[Branch, list]) -> list[Branch]:
    """Branches present before and after whose contents are not the same objects any more (a
    change inside a nested branch changes every branch around it too)."""
    changed = []
    for label, items in before.items():
        now = after.get(label)
        if now is None or (len(now) == len(items) and all(_same(a, b) for a, b in zip(items, now))):
            continue
        changed.append(label)
    return changed


def unvalidated_branches(before: Mapping[Branch, list], after: Mapping[Branch, list], reached: set[Branch]) -> list[Branch]:
    """The changed branches no sample reaches, each named once: at the outermost unreached one
    (whatever it holds is unreached too)."""
    named: list[Branch] = []
    for label in changed_branches(before, after):
        if label not in reached and not any(label.startswith(outer + " > ") for outer in named):
            named.append(label)
    return named


def _same(a, b) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a is b or (isinstance(a, str) and a == b)


def branches_reached(model: ir.Model, samples: Sequence[Sample]) -> set[Branch]:
    """The branches some sample executes, at any depth (If branches, Loop and Scan bodies).

    onnxruntime cannot expose a value inside a subgraph, but its profiler records every kernel
    it runs, subgraphs included: the samples run once on a clone whose subgraph nodes carry
    marker names, and a branch is reached when one of its own nodes ran. Constant nodes become
    initializers in onnxruntime and never run, so a branch without another node gets an
    Identity marker on its first output. A model onnxruntime cannot run reaches nothing."""
    from .errors import ModelError

    if not any(True for _ in _subgraphs(model.graph)):
        return set()
    clone = model.clone()
    labels: dict[str, Branch] = {}
    for k, (label, sub) in enumerate(list(_subgraphs(clone.graph))):
        own = list(sub)
        for j, node in enumerate(own):
            node.name = f"{_MARK}.{k}.{j}"
            labels[node.name] = label
        if sub.outputs and all(n.op_type == "Constant" and n.domain in ("", "ai.onnx") for n in own):
            marker = ir.node("Identity", [sub.outputs[0]], name=f"{_MARK}.{k}.out")
            sub.append(marker)
            sub.outputs[0] = marker.outputs[0]
            labels[marker.name] = label
    with tempfile.TemporaryDirectory(prefix="onnxslim-profile-") as tmp:
        try:
            with runtime.session(clone, "disabled", profile=str(Path(tmp) / "run")) as sess:
                for sample in samples:
                    runtime.run(sess, sample)
                path = sess.end_profiling()
        except ModelError:
            return set()
        return {labels[name] for name in _profiled_nodes(Path(path)) if name in labels}


def samples_reaching_more(model: ir.Model, samples: Sequence[Sample], reached: set[Branch]) -> tuple[list[Sample], set[Branch]]:
    """Random samples can all take the same side of a data-dependent branch (``If(ReduceSum(x)
    > 0)``). Each sample mirrored (float inputs negated: a sign test takes its other side) is
    tried while some branch is unreached; those reaching a new branch are returned, with the
    branches now reached."""
    every = {label for label, _ in _subgraphs(model.graph)}
    extra: list[Sample] = []
    for sample in samples:
        if reached >= every:
            break
        mirrored = {k: -v if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v for k, v in sample.items()}
        if all(mirrored[k] is v for k, v in sample.items()):
            continue
        new = branches_reached(model, [mirrored]) - reached
        if new:
            extra.append(mirrored)
            reached = reached | new
    return extra, reached


def _profiled_nodes(path: Path) -> set[str]:
    """Names of the marked nodes an onnxruntime profile says ran. Read line by line (one event
    per line; a long Loop writes hundreds of bytes per node per iteration), never all at once."""
    pattern = re.compile(r'"name"\s*:\s*"(' + re.escape(_MARK) + r'\.[0-9a-z.]+)_kernel_time"')
    found: set[str] = set()
    with path.open() as f:
        for line in f:
            found.update(m.group(1) for m in pattern.finditer(line))
    return found
