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

import dataclasses
import fnmatch
import importlib
from collections.abc import Callable
from typing import Literal, Optional

import numpy as np
import onnx_ir as ir

from onnxslim import channels
from onnxslim.calibration import Calibration
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
#: What ``criterion=auto`` uses when calibration data is given.
DEFAULT_DATA_CRITERION = "obs"


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
            "auto", "importance: auto = obs (second-order, compensated output error) with calibration data, else l2"
        )
        target: Literal["per_group", "global", "macs", "budget", "latency"] = option(
            "per_group",
            "per_group ratio, global ranking with normalised scores (ratio of all their channels), reach a MACs fraction, "
            "budget = the most MACs removed within the run's budget (--min-cosine/--min-agreement/--max-error) on held-out "
            "data, latency = reach a measured speed-up (per-group ratios from a cached sensitivity analysis)",
        )
        speedup: float = option(1.5, "with target=latency: measured onnxruntime latency speed-up to reach")
        macs: float = option(0.5, "with target=macs: fraction of the original MACs to keep")
        round_to: int | Literal["block", "measure"] = option(
            8,
            "keep a multiple of this many channels per group (not heads; small groups: at most a quarter of their size); "
            "block = onnxruntime's NCHWc channel block on this CPU (16 with AVX-512, 8 with AVX2); measure = per group, "
            "the width onnxruntime runs fastest near the request, timed on the group's layers (cached)",
        )
        threads: int = option(1, "with round_to=measure: onnxruntime threads the layers are timed with")
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
        if o.speedup < 1.0:
            raise UsageError(f"prune:speedup must be at least 1, got {o.speedup}")
        if (isinstance(o.round_to, int) and o.round_to < 1) or o.min_channels < 1:
            raise UsageError("prune:round_to and prune:min_channels must be at least 1")
        if o.threads < 1:
            raise UsageError(f"prune:threads must be at least 1, got {o.threads}")
        for pattern, value in o.layer_ratios.items():
            if not 0.0 <= value < 1.0:
                raise UsageError(f"prune:layer_ratios {pattern}={value}: ratios must be in [0, 1)")

    @property
    def needs_held_out(self) -> bool:
        """Searching targets judge candidates on validation data held out from calibration."""
        return self.options.target in ("budget", "latency")

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
        search = ready = measured = None
        if o.target in ("budget", "latency") and eligible:
            plan, search, search_notes, ready = self._search(model, analysis, eligible, scores, ctx, criterion_name)
            notes.extend(search_notes)
        else:
            plan, measured = self._plan(analysis, eligible, scores, ctx, model)
            if measured is not None:
                notes.append(measured[1])
        prediction = analysis.predict(plan, ctx.input_shapes or None, ctx.sample)
        details = self._details(analysis, plan, skipped, criterion_name, prediction)
        if search is not None:
            details.update(search)
        elif measured is not None:
            details["widths"] = measured[0]
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
        if ready is not None:  # target=budget: the copy the search pruned, reconstructed and verified
            model.graph = ready[0].graph
            if ready[1] is not None:
                details["reconstruction"] = ready[1]
                notes.append(f"reconstruction: {ready[1]['summary']}")
            return PassResult(True, self._summary(details, "removed"), details, notes + _frozen_notes(analysis))
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
            # obs measured best with calibration data (digits CNN/MLP, MobileNetV3-style classifier)
            if ctx.calibration is not None and criterion(DEFAULT_DATA_CRITERION) is not None:
                return criterion(DEFAULT_DATA_CRITERION), DEFAULT_DATA_CRITERION
            why = "no calibration data" if ctx.calibration is None else f"{DEFAULT_DATA_CRITERION} criterion not installed"
            notes.append(f"criterion auto: using l2 ({why})")
            return score_l2, "l2"
        fn = criterion(name)
        if fn is None:
            raise UsageError(f"prune:criterion={name} is not available (needs onnxslim.importance)")
        if name in DATA_CRITERIA and ctx.calibration is None:
            raise UsageError(f"prune:criterion={name} needs calibration data ({arg('calibration', 'data.npz')})")
        return fn, name

    def _search(self, model, analysis, eligible, scores, ctx, criterion_name):
        """target=budget/latency: per-group ratios from sensitivity curves (onnxslim.allocation)."""
        from onnxslim import allocation

        o = self.options
        plan = {}
        keep, refit_copy, options = self._search_parts(scores, ctx)
        chosen, details, notes, copy = allocation.search(
            model, analysis, eligible, keep, ctx, target=o.target, speedup=o.speedup, refit_copy=refit_copy,
            criterion=criterion_name, options=options, freeze_residual_stream=not o.residual,
        )
        for group in eligible:  # groups the allocation leaves whole
            plan[group] = chosen.get(group, np.arange(group.size))
        ready = (copy, getattr(copy, "_onnxslim_refit_report", None)) if copy is not None else None
        return plan, details, notes, ready

    def _search_parts(self, scores, ctx):
        """What a sensitivity analysis needs from this pass: the slots kept at a ratio, the
        reconstruction of a pruned copy (or None), and the options that enter its cache key."""
        o = self.options

        def keep(group: ChannelGroup, ratio: float) -> np.ndarray:
            return _strongest(scores[group], self._n_keep(group, int(np.floor(group.size * ratio + 1e-9))))

        refit = self._reconstructor(ctx, [])
        refit_copy = None
        if refit is not None:

            def refit_copy(copy, groups, fresh, samples=None):  # capture before removal, refit after
                local = ctx if samples is None else dataclasses.replace(ctx, calibration=Calibration(samples))
                state = refit.capture(copy, groups, local)
                fresh.apply(groups)
                copy._onnxslim_refit_report = refit.refit(copy, state, local)

            refit_copy.accepts_samples = True

        options = {"round_to": o.round_to, "min_channels": o.min_channels, "residual": o.residual, "seed": ctx.seed}
        return keep, refit_copy, options

    def sensitivity(self, model: ir.Model, ctx: PassContext, outputs=None, use_cache: bool = True):
        """The sensitivity curves of every group this pass would prune (``onnxslim analyze``);
        the same cached analysis ``target=budget``/``latency`` start from."""
        from onnxslim import sensitivity

        notes: list[str] = []
        score, criterion_name = self._criterion(ctx, notes)
        analysis = channels.analyze(model, freeze_residual_stream=not self.options.residual)
        eligible, _ = self._eligible(analysis)
        prepare = getattr(score, "prepare", None)
        if prepare is not None and eligible:
            prepare(eligible, ctx, model)
        scores = {g: np.asarray(score(g, ctx, model), dtype=np.float64) for g in eligible}
        keep, refit_copy, options = self._search_parts(scores, ctx)
        data = ctx.calibration.samples if ctx.calibration is not None else ctx.validation
        return sensitivity.analyze(
            model, analysis, eligible, keep, data, outputs=outputs, reconstruct=refit_copy is not None,
            criterion=criterion_name, refit_copy=refit_copy, options=options, use_cache=use_cache, progress=ctx.progress,
        ), analysis

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

    def _step(self, group: ChannelGroup) -> int:
        """The multiple ``group`` keeps (round_to=measure: the window its measured width lies in;
        round_to=block: the block itself for a group of at least one block)."""
        if group.kind == "heads":
            return 1
        round_to = self.options.round_to
        if not isinstance(round_to, int):
            from onnxslim.widths import channel_block

            block = channel_block()
            if round_to == "block" and group.size >= block:
                # no quarter-size cap: a narrower width is padded back to the block, and one
                # below it leaves the NCHWc kernels (MobileNetV2's 16/24/32-channel groups kept
                # 8/12 channels: reorders, eff 0.6 instead of 0.8 at ratio 0.5)
                return block
            round_to = block
        return fast_step(group.size, round_to)

    def _n_keep(self, group: ChannelGroup, n_remove: int, rounded: bool = True) -> int:
        keep = max(group.size - n_remove, self.options.min_channels, 1)
        step = self._step(group) if rounded else 1
        return int(min(group.size, -(-keep // step) * step))

    def _plan(self, analysis: ChannelAnalysis, groups: list[ChannelGroup], scores, ctx, model) -> tuple[dict, tuple | None]:
        """The kept slots per group, and with round_to=measure ({the widths' details}, a note)."""
        o = self.options
        if not groups:
            return {}, None
        rounded = o.round_to != "measure"  # measure: requested counts, then a measured width each
        counts = {g: self._n_keep(g, int(np.floor(g.size * self._ratio(g) + 1e-9)), rounded) for g in groups}
        if o.target != "per_group":  # groups with a layer_ratios override keep their own ratio
            fixed = {g: n for g, n in counts.items() if self._override(g) is not None}
            free = [g for g in groups if g not in fixed]
            if o.target == "global":
                ranked = self._global_counts(free, scores, o.ratio, rounded)
            else:
                ranked = self._macs_counts(analysis, free, scores, fixed, ctx, rounded)
            counts = {**fixed, **ranked}
        measured = None
        if not rounded:
            counts, measured = self._measured_counts(model, analysis, counts, ctx)
        return {g: _strongest(scores[g], counts[g]) for g in groups}, measured

    def _measured_counts(self, model, analysis, counts, ctx) -> tuple[dict, tuple[list, str]]:
        """round_to=measure: each group's width timed on its own layers (onnxslim.widths)."""
        from onnxslim import widths

        shapes = ctx.input_shapes or ({k: list(np.shape(v)) for k, v in ctx.sample.items()} if ctx.sample else None)
        pruned = {g: n for g, n in counts.items() if n < g.size and g.kind != "heads"}  # heads are whole units
        found = widths.measured_widths(
            model, analysis, pruned, self._step, block=widths.channel_block(), input_shapes=shapes, threads=self.options.threads,
            min_channels=self.options.min_channels, progress=ctx.progress,
        )
        chosen = {g: r.chosen for g, r in zip(pruned, found)}
        timed = [r for r in found if r.times_ms]
        skipped = [r for r in found if r.reason]
        more = sum(r.chosen > r.requested for r in timed)
        fewer = sum(r.chosen < r.requested for r in timed)
        note = (
            f"round_to=measure: {len(timed)} groups timed with onnxruntime ({sum(r.cached for r in timed)} from the cache, "
            f"threads={self.options.threads}, NCHWc block {widths.nchwc_block()}): {more} keep more channels than asked, "
            f"{fewer} fewer"
        )
        if skipped:
            note += f"; {len(skipped)} rounded up instead (" + "; ".join(f"{r.group}: {r.reason}" for r in skipped[:3]) + ")"
        return {**counts, **chosen}, ([r.to_dict() for r in found], note)

    def _global_counts(self, groups, scores, fraction: float, rounded: bool = True) -> dict[ChannelGroup, int]:
        """Remove the ``fraction`` of all slots with the lowest normalised scores."""
        if not groups:
            return {}
        normalised = [scores[g] / (scores[g].mean() or 1.0) for g in groups]
        owner = np.concatenate([np.full(g.size, i) for i, g in enumerate(groups)])
        order = np.argsort(np.concatenate(normalised), kind="stable")
        n_remove = int(np.floor(len(order) * fraction + 1e-9))
        removed = np.bincount(owner[order[:n_remove]], minlength=len(groups))
        return {g: self._n_keep(g, int(min(removed[i], g.size - 1)), rounded) for i, g in enumerate(groups)}

    def _macs_counts(self, analysis: ChannelAnalysis, groups, scores, fixed, ctx: PassContext, rounded: bool = True) -> dict[ChannelGroup, int]:
        """Global ranking, with the removed fraction found by bisection to reach the MACs target
        (MACs at the validation input shapes, counted as the report counts them; the ``fixed``
        groups' counts are given)."""
        input_shapes, sample = ctx.input_shapes or None, ctx.sample
        base = analysis.predict(None, input_shapes, sample)["macs_before"]
        if not base:
            raise UsageError(f"prune:target=macs: no layer's MACs can be counted at these input shapes ({arg('input_shapes')})")

        def counts_for(fraction: float):
            counts = self._global_counts(groups, scores, fraction, rounded)
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


def fast_step(size: int, round_to: int) -> int:
    """The multiple a group of ``size`` channels keeps: ``round_to``, but at most the largest
    power of two ≤ size/4 (a 16-channel group keeps a multiple of 4, not 8 or 16 of 16).

    Measured with onnxruntime 1.31 on an AVX-512 CPU, one thread, 28×28 maps: a depthwise 3×3
    Conv of 92/96/100 channels runs in 0.15 ms and one of 93/97/101 in 0.30 ms; a dense 3×3
    Conv of 108 channels in 1.78 ms and one of 107 in 1.94 ms; a 1×1 Conv's cost steps up after
    each multiple of 16 outputs. The NCHWc kernels pad channels to their block (4, 8 or 16): odd
    widths pay for the padding and for layout conversions, which is why pruned models with
    widths like 45 or 101 gained little latency. Heads are whole units and are not rounded.
    """
    if round_to <= 1:
        return 1
    cap = 1 << max(int(size // 4).bit_length() - 1, 0) if size >= 4 else 1
    return max(1, min(round_to, cap))


def _matches(group: ChannelGroup, patterns) -> bool:
    names = {group.name} | {m.node.name or "" for m in group.producers} | {m.tensor.name for m in group.producers}
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names if n)


def _strongest(scores: np.ndarray, n: int) -> np.ndarray:
    """The slots of the ``n`` highest scores, in slot order (ties: the lower slot)."""
    return np.sort(np.argsort(-scores, kind="stable")[:n])


def _frozen_notes(analysis: ChannelAnalysis) -> list[str]:
    return [f"frozen {f.group.name} ({f.group.size} channels): {f.reason}" for f in analysis.frozen]
