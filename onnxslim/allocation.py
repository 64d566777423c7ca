"""Per-group pruning ratios for a target: the largest reduction within the accuracy budget
(``prune:target=budget``) or the least-drift plan reaching a measured speed-up
(``prune:target=latency``).

1. Sensitivity curves (:mod:`onnxslim.sensitivity`, cached) give each group's drift (nmse) and
   MACs saved at 10…90% removal.
2. A greedy *path* orders the moves: from no pruning, repeatedly take the step (one group to a
   higher ratio) with the most MACs saved per unit of added drift, until every group is at its
   largest ratio. Each prefix of the path is a plan; later plans remove more and drift more.
   For a budget, the uniform path (every group at one ratio, what ``prune:ratio`` does) is a
   second candidate: per-group curves measure each group alone, and the search must never do
   worse than the plain ratio it replaces.
3. The position along each path (a global scale) is bisected. For a budget, probes are first
   screened cheaply (the sensitivity analysis's masked session, now on the held-out validation
   samples), then the plan found is applied to a real copy (with reconstruction when calibration
   data is given) and checked with onnxruntime on the held-out samples against the run's budget
   (top-1 agreement at 90% one-sided confidence); if it fails, the bisection continues on real
   copies. The path whose furthest plan within budget keeps the fewest MACs wins. For a
   speed-up, each probe is a real copy timed side by side with the original (medians of
   interleaved runs); the first plan fast enough wins.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from . import latency, sensitivity, validation
from .channels import ChannelAnalysis, ChannelGroup
from .errors import UsageError
from .sensitivity import Sensitivity

#: One-sided confidence at which a probe's top-1 agreement must meet the budget (it is measured
#: on a finite validation sample, and the search keeps the furthest plan that passes).
CONFIDENCE = 0.9

#: Greedy steps coarser than this many plans are thinned before bisection.
MAX_PATH = 4096


def greedy_path(sens: Sensitivity, objective: str = "macs", drift: str = "nmse") -> list[dict[int, int]]:
    """Plans (group index → ratio level, 0 = unpruned, j = ratios[j-1]) from nothing to all-max,
    ordered by marginal ``drift`` (a curve of the sensitivity: "nmse" or "kl") per unit saved."""
    curves = {c.index: c for c in sens.groups}
    gain = {i: [0] + list(c.macs_saved if objective == "macs" else c.params_saved) for i, c in curves.items()}
    drift = {i: [0.0] + [_finite(x) for x in getattr(c, drift)] for i, c in curves.items()}
    level = {i: 0 for i in curves}
    path = [dict(level)]
    while True:
        best, best_key = None, None
        for i in curves:
            cur = level[i]
            for j in range(cur + 1, len(gain[i])):
                dm = gain[i][j] - gain[i][cur]
                if dm <= 0:
                    continue
                dd = max(drift[i][j] - drift[i][cur], 1e-15)
                key = (dm / dd, dm)
                if best_key is None or key > best_key:
                    best, best_key = (i, j), key
        if best is None:
            break
        level[best[0]] = best[1]
        path.append(dict(level))
    return path


def _finite(x) -> float:
    x = math.inf if x is None else float(x)
    return x if math.isfinite(x) else 1e30


#: Ratios of the uniform candidate path (every group at the same ratio, like ``prune:ratio``).
UNIFORM_RATIOS = tuple(round(0.02 * k, 2) for k in range(46))


def uniform_path(sens: Sensitivity, kept: Callable[[int, float], int]) -> list[dict[int, float]]:
    """Plans with every group at one ratio (0 … 0.9), duplicates after rounding dropped."""
    path, seen = [], set()
    for r in UNIFORM_RATIOS:
        key = tuple(kept(c.index, r) for c in sens.groups)
        if key not in seen:
            seen.add(key)
            path.append({c.index: r for c in sens.groups})
    return path


def search(
    model: ir.Model,
    analysis: ChannelAnalysis,
    groups: Sequence[ChannelGroup],
    keep: Callable[[ChannelGroup, float], np.ndarray],
    ctx,
    *,
    target: str,
    speedup: float = 1.5,
    refit_copy=None,
    criterion: str = "",
    options: Mapping | None = None,
    freeze_residual_stream: bool = True,
) -> tuple[dict[ChannelGroup, np.ndarray], dict, list[str], ir.Model | None]:
    """The chosen plan {group: kept slots}, details for the report, notes, and the verified
    pruned copy of ``model`` (budget target) when there is one."""
    notes: list[str] = []
    budget = ctx.budget
    if target == "budget" and (budget is None or not budget.active):
        raise UsageError("prune:target=budget needs a budget: --min-cosine, --min-agreement, --max-error or a metric")
    if not ctx.validation:
        raise UsageError(f"prune:target={target} needs validation samples (validation is off?)")
    if ctx.calibration is not None:
        data = ctx.calibration.samples
    else:
        data = ctx.validation
        notes.append(f"target={target}: no calibration data; sensitivity measured on the validation samples")
    outputs = list(budget.outputs) if budget is not None and budget.outputs else None
    sens = sensitivity.analyze(
        model, analysis, groups, keep, data, outputs=outputs, reconstruct=refit_copy is not None,
        criterion=criterion, refit_copy=refit_copy, options=options,
        progress=ctx.progress,
    )
    notes.append(
        f"sensitivity of {len(sens.groups)} groups × {len(sens.ratios)} ratios on {sens.samples} samples: "
        + (f"reused from cache {sens.cache_file}" if sens.cached else f"{sens.seconds:.1f} s")
    )
    by_index = {i: g for i, g in enumerate(analysis.groups)}
    curves = {c.index: c for c in sens.groups}
    # nmse orders the moves, also for classifiers: the softmax KL (sens.groups[*].kl) was
    # measured as the alternative for top-1 budgets and transferred worse to unseen images, because
    # the held-out calibration images are classified with margins new images do not have.
    drift = "nmse"

    def as_ratios(levels: Mapping[int, int]) -> dict[int, float]:
        return {i: (curves[i].ratios[j - 1] if j else 0.0) for i, j in levels.items()}

    greedy = [as_ratios(levels) for levels in greedy_path(sens, drift=drift)]
    if len(greedy) > MAX_PATH:
        step = len(greedy) / MAX_PATH
        greedy = [greedy[int(k * step)] for k in range(MAX_PATH)] + [greedy[-1]]
    # Candidate paths: the greedy allocation and, for a budget, the uniform one (what
    # prune:ratio does). Per-group curves measure each group alone; when their drifts do not
    # add up, the uniform path can reach further, and the search keeps whichever does.
    paths = {"greedy": greedy}
    if target == "budget":
        paths["uniform"] = uniform_path(sens, lambda i, r: len(keep(by_index[i], r)))

    def plan_of(ratios: Mapping[int, float]) -> dict[int, np.ndarray]:
        return {i: np.asarray(keep(by_index[i], r), dtype=np.int64) for i, r in ratios.items() if r > 0}

    def macs_kept(plan: Mapping[int, np.ndarray]) -> tuple[float, float]:
        m = analysis.predict({by_index[i]: kk for i, kk in plan.items()}, ctx.input_shapes or None, ctx.sample)
        return m["macs_after"] / max(m["macs_before"], 1), m["params_after"] / max(m["params_before"], 1)

    reference = ctx.reference
    if reference is None:
        reference = validation.run_model(model, ctx.validation)
    probes: list[dict] = []
    verified: dict[tuple[str, int], ir.Model] = {}
    screen = _screen(model, groups, sens, ctx, data, refit_copy) if target == "budget" else None

    fast_refit = _subset_refit(refit_copy, data)

    def probe(name: str, k: int, real: bool = True, final: bool = False) -> bool:
        t0 = time.perf_counter()
        plan = plan_of(paths[name][k])
        macs, params = macs_kept(plan)
        entry = {"path": name, "step": k, "check": ("onnxruntime, full refit" if final else "onnxruntime") if real else "masked screen",
                 "macs_kept": macs, "params_kept": params}
        if target == "budget":
            if real:
                refit = refit_copy if final else fast_refit
                copy = sensitivity.pruned_copy_plan(model, plan, freeze_residual_stream=freeze_residual_stream, refit_copy=refit)
                verdict = budget.check(reference, validation.run_model(copy, ctx.validation), confidence=CONFIDENCE)
                if verdict.ok and refit is refit_copy:
                    verified[(name, k)] = copy
            else:
                verdict = budget.check(screen.reference, screen.plan_outputs({by_index[i]: kk for i, kk in plan.items()}), confidence=CONFIDENCE)
            entry.update(ok=verdict.ok, usage=verdict.usage, values=verdict.values)
            ok = verdict.ok
        else:  # timing needs no reconstruction: it does not change shapes
            copy = sensitivity.pruned_copy_plan(model, plan, freeze_residual_stream=freeze_residual_stream)
            measured = latency.speedup(model, copy, ctx.validation[0], rounds=15, budget_s=10.0)
            entry.update(ok=measured >= speedup, speedup=measured)
            ok = measured >= speedup
        entry["seconds"] = time.perf_counter() - t0
        probes.append(entry)
        return ok

    def furthest_ok(name: str, lo: int, hi: int, real: bool) -> int:
        """The last step in [lo, hi] that passes (lo is taken to pass)."""
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if probe(name, mid, real):
                lo = mid
            else:
                hi = mid
        return lo

    candidates = []
    if target == "budget":
        # Per path, the furthest plan within budget. A masked screen (the sensitivity session
        # on the validation samples, refit from calibration statistics; pessimistic, it does
        # not correct drift accumulated upstream) gives a lower bracket; real copies,
        # reconstructed from a subset of the calibration samples, bisect above it.
        for name, path in paths.items():
            lo = 0
            if screen is not None:
                lo = furthest_ok(name, 0, len(path) - 1, real=False)
                if lo and not probe(name, lo, real=True):
                    lo = 0
            k = furthest_ok(name, lo, len(path) - 1, real=True) if lo < len(path) - 1 else lo
            candidates.append((macs_kept(plan_of(path[k]))[0], name, k))
        # The path reaching the fewest MACs wins. Its plan is rebuilt with all calibration
        # samples and checked again (the subset refit can pass where the full one does not:
        # step back until it holds); the other path's plan is tried when that costs the lead.
        candidates.sort()
        best = None
        for macs, name, k in candidates:
            if best is not None and macs >= best[0]:
                break
            while k and fast_refit is not refit_copy and not probe(name, k, real=True, final=True):
                k -= 1
            macs = macs_kept(plan_of(paths[name][k]))[0]
            if best is None or macs < best[0]:
                best = (macs, name, k)
        chosen_path, chosen = best[1], best[2]
    else:
        # The first plan along the path that is fast enough (the least drift reaching it).
        chosen_path = "greedy"
        lo, hi = 0, len(greedy) - 1
        if not probe(chosen_path, hi):
            notes.append(f"target=latency: speed-up {speedup} not reached even at the largest ratios; removing all the path allows")
            chosen = hi
        else:
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if probe(chosen_path, mid):
                    hi = mid
                else:
                    lo = mid
            chosen = hi
    if screen is not None:
        screen.close()
    ratios = paths[chosen_path][chosen]
    plan = {by_index[i]: kk for i, kk in plan_of(ratios).items()}
    details = {
        "sensitivity": sens.to_dict(),
        "allocation": {
            "target": target,
            "criteria": budget.describe() if budget is not None else None,
            "speedup": speedup if target == "latency" else None,
            "drift": drift,
            "path": chosen_path,
            "path_length": len(paths[chosen_path]) - 1,
            "chosen_step": chosen,
            "candidates": [{"path": n, "step": k, "macs_kept": m} for m, n, k in candidates],
            "ratios": {curves[i].name: r for i, r in ratios.items()},
            "probes": probes,
        },
    }
    notes.append(sens.table(limit=40).rstrip())
    if len(candidates) > 1:
        notes.append("allocation candidates within budget: " + ", ".join(f"{n} path {m:.3f} of the MACs" for m, n, _ in sorted(candidates, key=lambda c: c[1]))
                     + f"; chosen: {chosen_path} ({drift} drift per MAC saved orders the greedy path)")
    notes.append(allocation_table(sens, ratios, {i: len(kk) for i, kk in plan_of(ratios).items()}, drift))
    if target == "budget" and chosen == 0:
        notes.append("target=budget: even the first step of the allocation goes over budget; nothing removed")
    return plan, details, notes, verified.get((chosen_path, chosen))


#: Probes refit from this fraction of the calibration samples (at least 4): the refit
#: subsamples rows per layer anyway, so quality barely changes while runs get shorter.
PROBE_CALIBRATION = 0.25


def _subset_refit(refit_copy, data):
    """``refit_copy`` reconstructing from a subset of the calibration samples (or itself)."""
    if refit_copy is None or not getattr(refit_copy, "accepts_samples", False):
        return refit_copy
    n = max(4, int(len(data) * PROBE_CALIBRATION))
    if n >= len(data):
        return refit_copy
    subset = list(data)[:: max(1, len(data) // n)][:n]
    return lambda copy, groups, fresh: refit_copy(copy, groups, fresh, samples=subset)


def _screen(model, groups, sens: Sensitivity, ctx, data, refit_copy):
    """A masked evaluator on the validation samples (refit statistics from the calibration data),
    when every group's removal is exactly a masking (see :mod:`onnxslim.sensitivity`)."""
    if any(c.mode != "masked" for c in sens.groups):
        return None
    try:
        return sensitivity.MaskedEvaluator(model, groups, ctx.validation, [v.name for v in model.graph.outputs],
                                           reconstruct=refit_copy is not None, fit_samples=data)
    except Exception:  # the screen is an optimisation: real copies still decide
        return None


def allocation_table(sens: Sensitivity, ratios: Mapping[int, float], kept: Mapping[int, int], drift: str = "nmse") -> str:
    """The chosen per-group ratios (one line per group) with each group's own drift there."""
    lines = [f"{'group':<28} {'channels':>10} {'ratio':>6} {drift:>8}"]
    for c in sens.groups:
        r = ratios.get(c.index, 0.0)
        curve = getattr(c, drift) or []
        at = [v for x, v in zip(c.ratios, curve) if abs(x - r) < 1e-9]
        value = "0" if r == 0 else (sensitivity._short(float(at[0])) if at and at[0] is not None else "-")
        lines.append(f"{sensitivity._clip(c.name, 28):<28} {f'{c.size}→{kept.get(c.index, c.size)}':>10} {r:>6.0%} {value:>8}")
    return "chosen per-group ratios:\n" + "\n".join(lines)
