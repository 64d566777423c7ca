"""Compare a model's onnxruntime outputs against the reference outputs of the original.

Reference outputs are computed once; after each pass the current model runs on the same
samples with graph optimisations disabled (onnxruntime's fusions would hide differences).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence

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
            ok &= bool(np.all(diff <= tol.atol + tol.rtol * scale))
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


def run_model(model: ir.Model, samples: Sequence[Sample]) -> Outputs:
    """Outputs for every sample, graph optimisations disabled (used for reference and candidate)."""
    with runtime.session(model, "disabled") as sess:
        return [runtime.run(sess, s) for s in samples]


# -- If branches: which ones the samples reach, and which ones a pass changed ---------------------

Branch = str  # "If 'name' then_branch", nested ones joined with " > "


def _if_label(node: ir.Node, index: int) -> str:
    return f"If {node.name or f'#{index}'!r}"


def _graph_ifs(graph: ir.Graph, prefix: str = "") -> list[tuple[str, ir.Node]]:
    ifs = [n for n in graph if n.op_type == "If" and n.domain in ("", "ai.onnx")]
    return [(prefix + _if_label(n, i), n) for i, n in enumerate(ifs)]


def if_branches(model: ir.Model) -> dict[Branch, list]:
    """Every If branch of the model (nested ones too) with what identifies its contents: its
    nodes, their attributes and inputs, and the tensors those inputs hold (weights a branch reads
    from the outer graph count as its contents). Compared by identity, so a pass that replaces a
    node, an attribute or a tensor changes it (passes never mutate tensors in place)."""
    result: dict[Branch, list] = {}

    def visit(graph: ir.Graph, prefix: str) -> None:
        for label, node in _graph_ifs(graph, prefix):
            for attr in ("then_branch", "else_branch"):
                if attr in node.attributes:
                    branch = node.attributes[attr].as_graph()
                    result[f"{label} {attr}"] = _contents(branch)
                    visit(branch, f"{label} {attr} > ")

    visit(model.graph, "")
    return result


def _contents(graph: ir.Graph) -> list:
    items: list = [tuple(graph.outputs)]
    for node in graph.all_nodes() if hasattr(graph, "all_nodes") else graph:
        items.append((node, node.op_type, tuple(node.attributes.values())))
        items.extend((v, v.const_value if v is not None else None) for v in node.inputs)
    for value in graph.initializers.values():
        items.append((value, value.const_value))
    return items


def changed_branches(before: Mapping[Branch, list], after: Mapping[Branch, list]) -> list[Branch]:
    """Branches present before and after whose contents are not the same objects any more
    (a nested branch's change is named once, at the outermost changed branch)."""
    changed = []
    for label, items in before.items():
        now = after.get(label)
        if now is None or (len(now) == len(items) and all(_same(a, b) for a, b in zip(items, now))):
            continue
        if not any(label.startswith(outer + " > ") for outer in changed):
            changed.append(label)
    return changed


def _same(a, b) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a is b or (isinstance(a, str) and a == b)


def branches_reached(model: ir.Model, samples: Sequence[Sample], rounds: int = 8) -> set[Branch]:
    """The If branches some sample executes: each sample runs on a clone whose If nodes are
    replaced, one nesting level per round, by the branch it takes (onnxruntime cannot expose a
    value inside a branch)."""
    from .errors import ModelError
    from .stats import _inline_branch

    if not any(n.op_type == "If" for g in model.graphs() for n in g):
        return set()
    reached: set[Branch] = set()
    for sample in samples:
        clone = model.clone()
        graph = clone.graph
        labels = {id(n): label for label, n in _graph_ifs(graph)}
        for _ in range(rounds):
            ifs = [n for n in graph if id(n) in labels]
            if not ifs:
                break
            conds = {v.name: v for v in (n.inputs[0] for n in ifs) if v.const_value is None and not v.is_graph_input()}
            try:
                with runtime.session(clone, "disabled", extra_outputs=list(conds.values())) as sess:
                    measured = runtime.run(sess, sample, list(conds))
            except ModelError:
                break
            for node in ifs:
                cond = node.inputs[0]
                array = cond.const_value.numpy() if cond.const_value is not None else measured.get(cond.name, sample.get(cond.name))
                if array is None:
                    continue
                attr = "then_branch" if bool(np.asarray(array).reshape(-1)[0]) else "else_branch"
                label = f"{labels.pop(id(node))} {attr}"
                reached.add(label)
                branch = node.attributes[attr].as_graph()
                labels.update({id(n): inner for inner, n in _graph_ifs(branch, f"{label} > ")})
                _inline_branch(graph, node, branch)
    return reached
