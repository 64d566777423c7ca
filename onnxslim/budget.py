"""The accuracy budget of a run: how far a lossy change may move the model's outputs.

One concept used everywhere a lossy result is accepted or refused: the manager's rollback check
after a lossy pass, ``prune``'s ``target=budget`` search, and any later pass that spends a
budget (mixed precision). A budget is met when every criterion it holds is met on the outputs
it counts (``outputs``; all outputs when None):

* ``min_cosine``   pooled cosine similarity per output ≥ this (the worst output decides);
* ``min_agreement`` top-1 agreement (same argmax over the last axis) per classification output;
* ``max_error``    largest absolute difference per output ≤ this;
* ``metric``       a callable ``metric(original_outputs, candidate_outputs) -> float`` (higher
  is better; both are lists with one ``{output name: array}`` dict per sample) that must stay
  ≥ ``min_metric``.

:meth:`Budget.usage` expresses a result as the fraction of the budget it spends (0 identical, 1
at the limit, > 1 over it), which lets a search compare candidates on one scale.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from .errors import UsageError, arg, did_you_mean

Outputs = list  # one {name: array} per sample (validation.Outputs)
Metric = Callable[[Outputs, Outputs], float]


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of a budget check: ``ok``, the fraction of the budget spent, and why not."""

    ok: bool
    usage: float
    reason: str | None
    values: dict

    def to_dict(self) -> dict:
        return {"ok": self.ok, "usage": _finite(self.usage), "reason": self.reason, "values": self.values}


@dataclasses.dataclass(frozen=True)
class Budget:
    min_cosine: float | None = None
    min_agreement: float | None = None
    max_error: float | None = None
    metric: Metric | None = None
    min_metric: float | None = None
    #: Output names the budget counts (None: every output). A debug output must not decide.
    outputs: tuple[str, ...] | None = None

    def __post_init__(self):
        for name, lo, hi in (("min_cosine", -1.0, 1.0), ("min_agreement", 0.0, 1.0)):
            value = getattr(self, name)
            if value is not None and not lo <= value <= hi:
                raise UsageError(f"{arg(name)} must be in [{lo:g}, {hi:g}], got {value}")
        if self.max_error is not None and not self.max_error >= 0:
            raise UsageError(f"{arg('max_error')} must be non-negative, got {self.max_error}")
        if self.metric is not None and not callable(self.metric):
            raise UsageError(f"metric must be callable(original_outputs, pruned_outputs) -> float, got {type(self.metric).__name__}")
        if (self.metric is None) != (self.min_metric is None):
            raise UsageError("metric and min_metric go together (the callable's score must stay >= min_metric)")
        if self.outputs is not None:
            object.__setattr__(self, "outputs", tuple(self.outputs))
            if not self.outputs:
                raise UsageError(f"{arg('metric_outputs')}: no output names given")

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.min_cosine, self.min_agreement, self.max_error, self.metric))

    def check_outputs(self, names: Sequence[str]) -> None:
        """Refuse output names the model does not have (a usage error, before anything runs)."""
        for name in self.outputs or ():
            if name not in names:
                raise UsageError(f"{arg('metric_outputs')}: the model has no output {name!r}{did_you_mean(name, names)} (outputs: {', '.join(names)})")

    def counted(self, names: Sequence[str]) -> list[str]:
        return [n for n in names if self.outputs is None or n in self.outputs]

    def describe(self) -> str:
        parts = []
        if self.min_cosine is not None:
            parts.append(f"cosine ≥ {self.min_cosine:g}")
        if self.min_agreement is not None:
            parts.append(f"top-1 agreement ≥ {self.min_agreement:g}")
        if self.max_error is not None:
            parts.append(f"max |Δ| ≤ {self.max_error:g}")
        if self.metric is not None:
            parts.append(f"{getattr(self.metric, '__name__', 'metric')} ≥ {self.min_metric:g}")
        where = f" on {', '.join(self.outputs)}" if self.outputs else ""
        return (" and ".join(parts) or "no budget") + where

    def check(self, reference: Outputs, candidate: Outputs, metrics=None, confidence: float | None = None) -> Verdict:
        """Check ``candidate`` outputs against the ``reference`` (the original model's, same samples).

        ``metrics``: the :func:`validation.compare` result for these outputs when the caller has
        it already (the manager), else it is computed here. ``confidence`` (e.g. 0.9): top-1
        agreement, a proportion measured on a finite number of rows, must hold at this one-sided
        confidence (Wilson bound) — what a search that picks the furthest passing candidate
        needs, so that it does not select the lucky draws of the validation sample.
        """
        from . import validation

        if metrics is None:
            metrics = validation.compare(reference, candidate)
        counted = [m for m in metrics if self.outputs is None or m.name in self.outputs]
        usages: list[float] = [0.0]
        reasons: list[str] = []
        values: dict = {}
        if self.min_cosine is not None:
            worst = min(counted, key=lambda m: m.cosine)
            values["cosine"] = worst.cosine
            usages.append(_spent(1.0 - worst.cosine, 1.0 - self.min_cosine))
            if worst.cosine < self.min_cosine:
                reasons.append(f"cosine {worst.cosine:.6f} on {worst.name!r} below budget {self.min_cosine}")
        if self.min_agreement is not None:
            scored = [m for m in counted if m.top1 is not None]
            if not scored:
                raise UsageError(
                    f"{arg('min_agreement')} needs a classification output (float, last axis > 1) among "
                    + ", ".join(m.name for m in counted)
                )
            worst = min(scored, key=lambda m: m.top1)
            agreement = worst.top1
            values["agreement"] = agreement
            if confidence is not None:
                rows = sum(int(np.prod(np.shape(r[worst.name])[:-1])) for r in reference)
                agreement = wilson_lower(worst.top1, rows, confidence)
                values["agreement_lower_bound"] = agreement
            usages.append(_spent(1.0 - agreement, 1.0 - self.min_agreement))
            if agreement < self.min_agreement:
                bound = f" (lower {confidence:.0%} bound {agreement:.4f} on {rows} rows)" if confidence is not None else ""
                reasons.append(f"top-1 agreement {worst.top1:.4f}{bound} on {worst.name!r} below budget {self.min_agreement}")
        if self.max_error is not None:
            worst = max(counted, key=lambda m: m.max_abs)
            values["max_error"] = worst.max_abs
            usages.append(_spent(worst.max_abs, self.max_error))
            if not worst.max_abs <= self.max_error:
                reasons.append(f"max |Δ| {worst.max_abs:.4g} on {worst.name!r} above budget {self.max_error}")
        if self.metric is not None:
            keep = self.counted(list(reference[0])) if reference else []
            ref = [{k: r[k] for k in keep} for r in reference]
            cand = [{k: c.get(k) for k in keep} for c in candidate]
            score = float(self.metric(ref, cand))
            perfect = float(self.metric(ref, ref))
            values["metric"] = score
            usages.append(_spent(perfect - score, perfect - self.min_metric))
            if not score >= self.min_metric:
                reasons.append(f"metric {score:.6g} below budget {self.min_metric}")
        usage = max(usages)
        return Verdict(not reasons, usage, "; ".join(reasons) or None, values)


def wilson_lower(p: float, n: int, confidence: float) -> float:
    """One-sided Wilson lower confidence bound of a proportion ``p`` observed on ``n`` trials."""
    if n <= 0:
        return 0.0
    from statistics import NormalDist

    z = NormalDist().inv_cdf(confidence)
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))


def _spent(loss: float, allowance: float) -> float:
    if not math.isfinite(loss):
        return math.inf
    loss = max(loss, 0.0)
    if allowance <= 0:
        return 0.0 if loss <= 1e-12 else math.inf
    return loss / allowance


def _finite(x: float):
    return x if math.isfinite(x) else str(x)


def relative_error(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> float:
    """Normalised squared error Σ‖c − r‖² / Σ‖r‖² over arrays (a smooth drift: ≈ 2·(1 − cosine)
    for small changes, additive over independent small perturbations)."""
    num = den = 0.0
    for r, c in zip(reference, candidate):
        r64 = np.asarray(r, dtype=np.float64)
        d = np.asarray(c, dtype=np.float64) - r64
        num += float(np.vdot(d, d))
        den += float(np.vdot(r64, r64))
    if not math.isfinite(num):
        return math.inf
    return num / den if den > 0 else (0.0 if num == 0 else math.inf)
