"""``prune``: structured pruning — whole channels, FFN dimensions and attention heads leave the graph.

Built on the core channel analysis (:mod:`onnxslim.channels`): every coupled group (a Conv and
its BN, the convs joined by a residual Add, the Q/K/V columns of one head, ...) loses the same
slots in all of its members, so the result is a smaller dense model that onnxruntime runs
faster. Importance is summed over the whole group; criteria are functions
``score(group, ctx, model) -> np.ndarray[group.size]`` looked up in :data:`CRITERIA`, and the
data-driven ones (``activation``, ``obs``) come from :mod:`onnxslim.importance` when it exists.
After removal, an optional reconstruction step (``onnxslim.reconstruct``) refits consumers.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable
from typing import Literal, Optional

import numpy as np
import onnx_ir as ir

from onnxslim import channels
from onnxslim.channels import ChannelAnalysis, ChannelGroup
from onnxslim.errors import UsageError, arg
from onnxslim.pass_api import Pass, PassContext, PassResult, option
from onnxslim.stats import human

Score = Callable[[ChannelGroup, PassContext, ir.Model], np.ndarray]


# --------------------------------------------------------------------------- criteria


def _slot_sums(group: ChannelGroup, members, power: float) -> np.ndarray:
    """Sum of |w|**power of each slot over the members' slices (shared storage counted once)."""
    total = np.zeros(group.size, dtype=np.float64)
    seen: set[tuple[int, int]] = set()
    for member in members:
        key = (id(member.tensor.storage_values[0]), member.axis)
        if key in seen:
            continue
        seen.add(key)
        arr = np.abs(np.moveaxis(member.tensor.numpy().astype(np.float64), member.axis, 0)[member.positions])
        per_position = (arr**power).reshape(len(member.positions), -1).sum(axis=1)
        np.add.at(total, member.slots, per_position)
    return total


def _weights(group: ChannelGroup) -> list:
    return [m for m in group.producers + group.consumers if m.role == "weight"]


def score_l1(group: ChannelGroup, ctx: PassContext, model: ir.Model) -> np.ndarray:
    """Sum of |w| over producers' filters and consumers' input slices."""
    return _slot_sums(group, _weights(group), 1.0)


def score_l2(group: ChannelGroup, ctx: PassContext, model: ir.Model) -> np.ndarray:
    """L2 norm over producers' filters and consumers' input slices together."""
    return np.sqrt(_slot_sums(group, _weights(group), 2.0))


def score_bn(group: ChannelGroup, ctx: PassContext, model: ir.Model) -> np.ndarray:
    """|γ| of the group's BatchNormalization layers (network slimming); l2 where there is none."""
    scales = [m for m in group.producers if m.role == "bn_scale"]
    return _slot_sums(group, scales, 1.0) if scales else score_l2(group, ctx, model)


def score_random(group: ChannelGroup, ctx: PassContext, model: ir.Model) -> np.ndarray:
    rng = np.random.default_rng([ctx.seed, group.id])
    return rng.random(group.size)


CRITERIA: dict[str, Score] = {"l1": score_l1, "l2": score_l2, "bn": score_bn, "random": score_random}
#: Criteria provided by :mod:`onnxslim.importance` (functions of the same name and signature).
DATA_CRITERIA = ("activation", "activation_l2", "obs")


def _optional(module: str, attr: str):
    try:
        return getattr(importlib.import_module(module), attr, None)
    except ImportError:
        return None


def criterion(name: str) -> Score | None:
    """The scoring function for ``name``, or None when it is not available in this install."""
    if name in CRITERIA:
        return CRITERIA[name]
    return _optional("onnxslim.importance", name) if name in DATA_CRITERIA else None


# --------------------------------------------------------------------------- the pass


class Prune(Pass):
    name = "prune"
    summary = "structured pruning: remove whole channels, FFN dims and attention heads in coupled groups"
    lossless = False

    class Options(Pass.Options):
        ratio: float = option(0.3, "fraction of each group's channels to remove (0..1)")
        criterion: Literal["auto", "l1", "l2", "bn", "random", "activation", "activation_l2", "obs"] = option(
            "auto", "importance: auto = activation (mean |x|) with calibration data, else l2"
        )
        target: Literal["per_group", "global", "macs"] = option(
            "per_group",
            "per_group ratio, global ranking with normalised scores (ratio of all their channels), or reach a MACs fraction",
        )
        macs: float = option(0.5, "with target=macs: fraction of the original MACs to keep")
        round_to: int = option(1, "keep a multiple of this many channels per group (not for heads)")
        min_channels: int = option(1, "never keep fewer channels than this in a group")
        exclude: list[str] = option([], "glob patterns of layer or weight names whose groups stay whole")
        layer_ratios: dict[str, float] = option(
            {}, "per-layer ratio overrides: pattern=ratio (target=global/macs rank or bisect the other groups only)"
        )
        heads: bool = option(True, "prune whole attention heads")
        ffn: bool = option(True, "prune Gemm/MatMul features (FFN intermediate dims, MLP hidden units)")
        residual: bool = option(False, "also prune the residual stream (hidden size, through LayerNorm)")
        reconstruct: Optional[bool] = option(None, "refit consumers on calibration data (default: when calibration given)")
        dry_run: bool = option(False, "report what would be removed and the predicted MACs/params; change nothing")

    def validate_options(self) -> None:
        o = self.options
        if not 0.0 <= o.ratio < 1.0:
            raise UsageError(f"prune:ratio must be in [0, 1), got {o.ratio}")
        if not 0.0 < o.macs <= 1.0:
            raise UsageError(f"prune:macs must be in (0, 1], got {o.macs}")
        if o.round_to < 1 or o.min_channels < 1:
            raise UsageError("prune:round_to and prune:min_channels must be at least 1")
        for pattern, value in o.layer_ratios.items():
            if not 0.0 <= value < 1.0:
                raise UsageError(f"prune:layer_ratios {pattern}={value}: ratios must be in [0, 1)")

    # -- main --------------------------------------------------------------------------

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        o = self.options
        notes: list[str] = []
        score, criterion_name = self._criterion(ctx, notes)
        analysis = channels.analyze(model, freeze_residual_stream=not o.residual)
        eligible, skipped = self._eligible(analysis)
        scores = {}
        prepare = getattr(score, "prepare", None)
        if prepare is not None and eligible:  # data-driven: every group's tensors in one calibration run
            prepare(eligible, ctx, model)
        for group in ctx.progress(eligible, "scoring groups", total=len(eligible)):
            values = np.asarray(score(group, ctx, model), dtype=np.float64)
            if values.shape != (group.size,):
                raise ValueError(f"criterion {criterion_name} returned shape {values.shape} for a group of {group.size}")
            scores[group] = values
        plan = self._plan(analysis, eligible, scores, ctx)
        prediction = analysis.predict(plan, ctx.input_shapes or None, ctx.sample)
        details = self._details(analysis, plan, skipped, criterion_name, prediction)
        fallback = getattr(score, "fallback", None)  # data-driven criteria: groups they could not measure
        fallbacks = [(g, fallback(g, ctx)) for g in eligible] if fallback is not None else []
        details["fallback"] = [{"group": g.name, "size": g.size, "reason": why} for g, why in fallbacks if why]
        if details["fallback"]:
            by_reason: dict[str, list[str]] = {}
            for entry in details["fallback"]:
                by_reason.setdefault(entry["reason"], []).append(entry["group"])
            for why, names in by_reason.items():
                notes.append(f"criterion {criterion_name}: {len(names)} groups scored by weight l2 instead, {why}: {', '.join(names)}")
        removed = sum(g.size - len(k) for g, k in plan.items())
        if o.dry_run or removed == 0:
            verb = "would remove" if o.dry_run else "nothing to remove:"
            summary = self._summary(details, verb) if removed else f"{verb} no channels ({len(analysis.frozen)} groups frozen)"
            return PassResult(False, summary, details, notes + _frozen_notes(analysis))
        refit = self._reconstructor(ctx, notes)
        state = refit.capture(model, plan, ctx) if refit is not None else None
        analysis.apply(plan)
        if refit is not None:
            details["reconstruction"] = refit.refit(model, state, ctx)
            notes.append(f"reconstruction: {details['reconstruction']['summary']}")
        return PassResult(True, self._summary(details, "removed"), details, notes + _frozen_notes(analysis))

    def _criterion(self, ctx: PassContext, notes: list[str]) -> tuple[Score, str]:
        name = self.options.criterion
        if name == "auto":
            if ctx.calibration is not None and criterion("activation") is not None:
                return criterion("activation"), "activation"
            why = "no calibration data" if ctx.calibration is None else "activation criterion not installed"
            notes.append(f"criterion auto: using l2 ({why})")
            return score_l2, "l2"
        fn = criterion(name)
        if fn is None:
            raise UsageError(f"prune:criterion={name} is not available (needs onnxslim.importance)")
        if name in DATA_CRITERIA and ctx.calibration is None:
            raise UsageError(f"prune:criterion={name} needs calibration data ({arg('calibration', 'data.npz')})")
        return fn, name

    def _reconstructor(self, ctx: PassContext, notes: list[str]):
        """The reconstruction hook: an object with ``capture(model, plan, ctx)`` before removal and
        ``refit(model, state, ctx) -> dict`` after it, from ``onnxslim.reconstruct``."""
        wanted = self.options.reconstruct
        if wanted is False or (wanted is None and ctx.calibration is None):
            return None
        if ctx.calibration is None:
            raise UsageError(f"prune:reconstruct=true needs calibration data ({arg('calibration', 'data.npz')})")
        factory = _optional("onnxslim.reconstruct", "Reconstructor")
        if factory is None:
            if wanted:
                raise UsageError(f"prune:reconstruct=true needs onnxslim.reconstruct, which is not installed")
            notes.append("reconstruction skipped: onnxslim.reconstruct is not available")
            return None
        return factory()

    def _eligible(self, analysis: ChannelAnalysis) -> tuple[list[ChannelGroup], list[dict]]:
        o = self.options
        eligible, skipped = [], []
        for group in analysis.groups:
            why = None
            if group.kind == "heads" and not o.heads:
                why = "heads=false"
            elif group.kind == "linear" and not o.ffn:
                why = "ffn=false"
            elif _matches(group, o.exclude):
                why = "excluded by pattern"
            elif self._ratio(group) == 0.0:
                why = "ratio 0"
            if why:
                skipped.append({"group": group.name, "kind": group.kind, "size": group.size, "reason": why})
            else:
                eligible.append(group)
        return eligible, skipped

    def _ratio(self, group: ChannelGroup) -> float:
        fixed = self._override(group)
        return self.options.ratio if fixed is None else fixed

    def _override(self, group: ChannelGroup) -> float | None:
        for pattern, value in self.options.layer_ratios.items():
            if _matches(group, [pattern]):
                return value
        return None

    # -- selection ---------------------------------------------------------------------

    def _n_keep(self, group: ChannelGroup, n_remove: int) -> int:
        o = self.options
        keep = max(group.size - n_remove, o.min_channels, 1)
        if group.kind != "heads" and o.round_to > 1:
            keep = int(np.ceil(keep / o.round_to) * o.round_to)
        return int(min(group.size, keep))

    def _plan(self, analysis: ChannelAnalysis, groups: list[ChannelGroup], scores, ctx) -> dict:
        o = self.options
        if not groups:
            return {}
        counts = {g: self._n_keep(g, int(np.floor(g.size * self._ratio(g) + 1e-9))) for g in groups}
        if o.target != "per_group":  # groups with a layer_ratios override keep their own ratio
            fixed = {g: n for g, n in counts.items() if self._override(g) is not None}
            free = [g for g in groups if g not in fixed]
            if o.target == "global":
                ranked = self._global_counts(free, scores, o.ratio)
            else:
                ranked = self._macs_counts(analysis, free, scores, fixed, ctx)
            counts = {**fixed, **ranked}
        return {g: _strongest(scores[g], counts[g]) for g in groups}

    def _global_counts(self, groups, scores, fraction: float) -> dict[ChannelGroup, int]:
        """Remove the ``fraction`` of all slots with the lowest normalised scores."""
        if not groups:
            return {}
        normalised = [scores[g] / (scores[g].mean() or 1.0) for g in groups]
        owner = np.concatenate([np.full(g.size, i) for i, g in enumerate(groups)])
        order = np.argsort(np.concatenate(normalised), kind="stable")
        n_remove = int(np.floor(len(order) * fraction + 1e-9))
        removed = np.bincount(owner[order[:n_remove]], minlength=len(groups))
        return {g: self._n_keep(g, int(min(removed[i], g.size - 1))) for i, g in enumerate(groups)}

    def _macs_counts(self, analysis: ChannelAnalysis, groups, scores, fixed, ctx: PassContext) -> dict[ChannelGroup, int]:
        """Global ranking, with the removed fraction found by bisection to reach the MACs target
        (MACs at the validation input shapes, counted as the report counts them; the ``fixed``
        groups' counts are given)."""
        input_shapes, sample = ctx.input_shapes or None, ctx.sample
        base = analysis.predict(None, input_shapes, sample)["macs_before"]
        if not base:
            raise UsageError(f"prune:target=macs: no layer's MACs can be counted at these input shapes ({arg('input_shapes')})")

        def counts_for(fraction: float):
            counts = self._global_counts(groups, scores, fraction)
            plan = {g: _strongest(scores[g], n) for g, n in {**fixed, **counts}.items()}
            return counts, analysis.predict(plan, input_shapes, sample)["macs_after"] / base

        lo, hi = 0.0, 0.99
        best, ratio = counts_for(hi)
        if ratio > self.options.macs:
            return best  # the target is out of reach; remove as much as allowed
        for _ in range(20):
            mid = (lo + hi) / 2
            counts, ratio = counts_for(mid)
            if ratio <= self.options.macs:
                hi, best = mid, counts
            else:
                lo = mid
        return best

    # -- reporting ---------------------------------------------------------------------

    def _details(self, analysis, plan, skipped, criterion_name, prediction) -> dict:
        pruned = []
        for group, keep in plan.items():
            gone = np.setdiff1d(np.arange(group.size), keep)
            if len(gone) == 0:
                continue
            entry = {"group": group.name, "kind": group.kind, "before": group.size, "after": len(keep), "removed": gone.tolist()}
            pruned.append(entry)
        return {
            "criterion": criterion_name,
            "target": self.options.target,
            "groups_pruned": len(pruned),
            "groups_frozen": len(analysis.frozen),
            "channels_before": sum(g.size for g in plan),
            "channels_after": sum(len(k) for k in plan.values()),
            "pruned": pruned,
            "skipped": skipped,
            "frozen": [{"group": f.group.name, "size": f.group.size, "reason": f.reason} for f in analysis.frozen],
            "predicted": prediction,
        }

    def _summary(self, details: dict, verb: str) -> str:
        p = details["predicted"]
        fallback = len(details.get("fallback", ()))
        criterion = details["criterion"] + (f"; {fallback} groups scored by weight l2, see notes" if fallback else "")
        macs = f"MACs {human(p['macs_before'])} → {human(p['macs_after'])}" if p["macs_before"] else "MACs unknown"
        if p["macs_unresolved"]:  # not a total: say which part is missing
            unknown = p["macs_unresolved"]
            macs += f" (+{unknown} layers at shapes inference cannot resolve, e.g. inside If branches, not counted)"
        return (
            f"{verb} {details['channels_before'] - details['channels_after']} of {details['channels_before']} channels "
            f"in {details['groups_pruned']} groups ({criterion}), {details['groups_frozen']} frozen; "
            f"{macs}, params {human(p['params_before'])} → {human(p['params_after'])} (predicted)"
        )


def _matches(group: ChannelGroup, patterns) -> bool:
    names = {group.name} | {m.node.name or "" for m in group.producers} | {m.tensor.name for m in group.producers}
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names if n)


def _strongest(scores: np.ndarray, n: int) -> np.ndarray:
    """The slots of the ``n`` highest scores, in slot order (ties: the lower slot)."""
    return np.sort(np.argsort(-scores, kind="stable")[:n])


def _frozen_notes(analysis: ChannelAnalysis) -> list[str]:
    return [f"frozen {f.group.name} ({f.group.size} channels): {f.reason}" for f in analysis.frozen]
