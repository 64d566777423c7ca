"""Data-driven channel importance for ``prune``: activation statistics and OBS saliency.

Every criterion has the signature of the table in ``passes/prune.py``,
``score(group, ctx, model) -> np.ndarray[group.size]`` (higher = more important), and a
``prepare(groups, ctx, model, riders=())`` attribute: ``prune`` calls it once with every group it
will score, so all groups' tensors come from ONE calibration run (one onnxruntime session), which
``riders`` share (the reconstruction records the original outputs it needs on the way). A score
call for a group that was not prepared captures that group alone.

``activation`` / ``activation_l2``
    Mean |x| (or the root mean square, i.e. ‖x‖ per element) of each channel over all other
    axes and all calibration samples, summed over the group's tensors through their
    positions→slots mapping (a Flatten repeat or a head's head_dim positions add up into their
    slot). The tensors used are those the consuming layers read (after BN/activation, what the
    next layer actually sees); slots no consumer reads fall back to the producers' outputs.
    Tensors inside subgraphs cannot be captured: a group with none elsewhere is scored by weight
    L2 (Silero VAD: every pruned layer sits in an If branch); ``activation.fallback(group, ctx)``
    says why, and ``prune`` reports those groups.

``obs``
    Second-order saliency in the style of Optimal Brain Surgeon / SparseGPT. For each layer
    consuming the group, ``H = XᵀX / rows`` of its input on calibration data, damped with
    ``DAMP · mean(diag(H))``. Removing slot ``s`` removes a block ``Q`` of input columns (a Conv
    channel's k×k taps, a head's head_dim rows, a flattened channel's H·W features); with the
    remaining weights optimally compensated the output error grows by
    ``Σ_out w_Qᵀ ([H⁻¹]_QQ)⁻¹ w_Q``, summed over the group's consumers.
    For Conv the Hessian is the exact one of the *unfolded* (im2col) input while
    ``Cin·k·k ≤ EXACT_LIMIT`` (4096: a 4096² float64 Hessian is 128 MiB and inverts in 2 s on
    two cores; this covers 3×3 convs up to 455 input channels and 1×1 convs up to 4096): the
    per-channel approximation ignores how a channel's taps correlate with each other, which is
    exactly what distinguishes a smooth feature map from a noisy one. Wider Convs use the
    per-input-channel Gram of the (not unfolded) input, shared by all taps; layers whose channel
    count also exceeds the limit use the diagonal (``[H⁻¹]_cc ≈ 1/H_cc``, Wanda-like). Groups
    with no usable consumer (none, or only LSTM/grouped/subgraph ones) are scored by weight L2.
    All Hessians are accumulated in one calibration run while they fit in
    ``HESSIAN_BUDGET_BYTES`` (2 GiB; a 24-layer BERT-large's FFN down-projections alone would
    need 3 GiB), else in one run per batch of layers that fits.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
import scipy.linalg
import scipy.linalg.lapack

from . import ridge
from .channels import Activation, ChannelGroup
from .pass_api import PassContext
from .reconstruct import LinearLayer, consumer_layers, one_blas_thread, pick_rows, row_quota

#: Hessian damping relative to its mean diagonal (SparseGPT uses 1%).
DAMP = 1e-2
#: Largest Hessian side inverted exactly (see the module docstring).
EXACT_LIMIT = 4096
#: Hessians accumulated in one calibration run (float64); more layers take more runs.
HESSIAN_BUDGET_BYTES = 2 * 2**30

_ROLE_ORDER = ("input", "output", "internal")
_CACHE: dict[str, weakref.WeakKeyDictionary] = {
    name: weakref.WeakKeyDictionary() for name in ("activation", "activation_l2", "obs")
}


def _cached(name: str, group: ChannelGroup, ctx: PassContext) -> np.ndarray | None:
    entry = _CACHE[name].get(group)
    if entry is not None and entry[0] is ctx.calibration:
        return entry[1]
    return None


def _store(name: str, group: ChannelGroup, ctx: PassContext, values: np.ndarray, why: str | None = None) -> None:
    _CACHE[name][group] = (ctx.calibration, values, why)


def fallback(name: str, group: ChannelGroup, ctx: PassContext) -> str | None:
    """Why criterion ``name`` scored ``group`` by weight L2 instead (None when it did not)."""
    entry = _CACHE[name].get(group)
    return entry[2] if entry is not None and entry[0] is ctx.calibration else None


def _needs_calibration(ctx: PassContext, name: str) -> None:
    if ctx.calibration is None:
        raise ValueError(f"criterion {name} needs calibration data")


def _in_main_graph(value: ir.Value, model: ir.Model) -> bool:
    producer = value.producer()
    return producer.graph is model.graph if producer is not None else value in model.graph.inputs


# --------------------------------------------------------------------------- activation


def _chosen_activations(group: ChannelGroup, model: ir.Model) -> list[list[Activation]]:
    """The group's tensors by preference (consumer inputs first), main graph only."""
    usable = [a for a in group.activations if _in_main_graph(a.value, model)]
    return [[a for a in usable if a.role == role] for role in _ROLE_ORDER]


def prepare_activation(
    groups: Sequence[ChannelGroup], ctx: PassContext, model: ir.Model, riders: Sequence = ()
) -> None:
    """Mean |x| and RMS per slot for every group, from one calibration run (which ``riders``
    share, see :func:`_ride`)."""
    _needs_calibration(ctx, "activation")
    choices = {g: _chosen_activations(g, model) for g in groups}
    wanted: dict[tuple[str, int], ir.Value] = {}
    for tiers in choices.values():
        for tier in tiers:
            for a in tier:
                wanted[(a.value.name, a.axis)] = a.value
    sums: dict[tuple[str, int], np.ndarray] = {}  # [2, len]: Σ|x|, Σx²
    counts: dict[tuple[str, int], int] = {}
    values = list({id(v): v for v in wanted.values()}.values())
    if values:
        for captured in _ride(ctx.calibration.iter_capture(model, values + _rider_values(riders)), riders):
            for (name, axis), _ in wanted.items():
                x = captured[name].astype(np.float64)
                other = tuple(i for i in range(x.ndim) if i != axis)
                acc = np.stack([np.abs(x).sum(axis=other), np.square(x).sum(axis=other)])
                sums[(name, axis)] = sums[(name, axis)] + acc if (name, axis) in sums else acc
                counts[(name, axis)] = counts.get((name, axis), 0) + x.size // max(x.shape[axis], 1)
    for group, tiers in choices.items():
        mean_abs = np.zeros(group.size)
        rms = np.zeros(group.size)
        covered = np.zeros(group.size, dtype=bool)
        for tier in tiers:
            tier_abs, tier_rms = np.zeros(group.size), np.zeros(group.size)
            tier_covered = np.zeros(group.size, dtype=bool)
            for a in tier:
                key = (a.value.name, a.axis)
                stats = sums[key][:, a.positions] / max(counts[key], 1)
                np.add.at(tier_abs, a.slots, stats[0])
                np.add.at(tier_rms, a.slots, np.sqrt(stats[1]))
                tier_covered[a.slots] = True
            fill = tier_covered & ~covered
            mean_abs[fill], rms[fill] = tier_abs[fill], tier_rms[fill]
            covered |= tier_covered
        why = None
        if not covered.any():  # every tensor of the group lives inside a subgraph
            mean_abs = rms = _weight_l2(group)
            why = "every tensor of the group is inside a subgraph (If/Loop branch), which calibration cannot capture"
        _store("activation", group, ctx, mean_abs, why)
        _store("activation_l2", group, ctx, rms, why)


def activation(group: ChannelGroup, ctx: PassContext, model: ir.Model) -> np.ndarray:
    """Mean |x| of each slot's channels on calibration data, summed over the group's tensors."""
    if _cached("activation", group, ctx) is None:
        prepare_activation([group], ctx, model)
    return _cached("activation", group, ctx)


def activation_l2(group: ChannelGroup, ctx: PassContext, model: ir.Model) -> np.ndarray:
    """Root mean square (‖x‖ per element) of each slot's channels on calibration data."""
    if _cached("activation_l2", group, ctx) is None:
        prepare_activation([group], ctx, model)
    return _cached("activation_l2", group, ctx)


activation.prepare = prepare_activation  # type: ignore[attr-defined]
activation_l2.prepare = prepare_activation  # type: ignore[attr-defined]
activation.fallback = lambda group, ctx: fallback("activation", group, ctx)  # type: ignore[attr-defined]
activation_l2.fallback = lambda group, ctx: fallback("activation_l2", group, ctx)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- obs


@dataclasses.dataclass(eq=False)
class _Hessian:
    """The input statistics of one consuming layer, over *units* (columns or input channels).

    Rows are kept (``chunks``) until they are multiplied, a block of ``ridge.block_rows`` at a
    time. While fewer rows than units have been seen they all stay, and the
    damped inverse's diagonal blocks come from the R×R dual system (:class:`_InverseBlocks`): a
    deep layer of a ResNet at 112² has a few hundred output positions for D = 2304..4608
    unfolded columns, where XᵀX costs R·D² and its inverse D³.
    """

    layer: LinearLayer
    mode: str  # "exact" (unfolded columns), "channel" (Conv channel Gram) or "diagonal"
    index: int  # for seeding the row choice
    h: np.ndarray | None = None
    rows: int = 0
    chunks: list = dataclasses.field(default_factory=list)
    pending: int = 0  # rows in chunks
    captured: bool = False

    @functools.cached_property
    def width(self) -> int:
        cin = self.layer.weight.shape[self.layer.in_axis]
        return cin * self.layer.unit if self.mode == "exact" else cin

    def add(self, x: np.ndarray, sample: int, n_samples: int, seed: int) -> None:
        layer = self.layer
        rng = np.random.default_rng([seed, self.index, sample])
        if self.mode == "exact":
            rows = pick_rows(layer.n_rows(x.shape), -(-row_quota(self.width) // n_samples), rng)
            xs = layer.unfold(x, rows)
        else:  # per input channel: channels last, every position is a row
            xs = np.moveaxis(x, 1, -1) if layer.kind == "conv" else x
            xs = xs.reshape(-1, xs.shape[-1])
            if self.mode == "channel":
                xs = xs[pick_rows(len(xs), -(-row_quota(self.width) // n_samples), rng)]
        # float32 products over blocks of rows, accumulated in float64 (as in ridge.Gram)
        xs = np.asarray(xs, np.float32)
        self.rows += len(xs)
        self.captured = True
        if self.mode == "diagonal":
            part = np.sum(np.square(xs, dtype=np.float64), axis=0)
            self.h = part if self.h is None else self.h + part
            return
        self.chunks.append(xs)
        self.pending += len(xs)
        # rows kept while fewer than units (the dual form may be the smaller one), then one
        # product per block of rows
        if self.rows >= self.width and self.pending >= ridge.block_rows(self.width):
            self._flush()

    def _flush(self) -> None:
        if self.chunks:
            x = self.chunks[0] if len(self.chunks) == 1 else np.concatenate(self.chunks)
            part = x.T @ x
            self.h = part.astype(np.float64) if self.h is None else np.add(self.h, part, out=self.h)
        self.chunks, self.pending = [], 0

    def weight_units(self) -> np.ndarray:
        """The weight as [units, F]: each unit's outgoing weights."""
        w = self.layer.weight.numpy().astype(np.float64)
        if self.mode == "exact" or self.layer.kind != "conv":
            return self.layer.matrix(w)
        return np.moveaxis(w, 1, 0).reshape(w.shape[1], -1)

    def units(self, positions: np.ndarray) -> np.ndarray:
        """Units of each input-channel position: [len(positions), u]."""
        if self.mode == "exact":
            return self.layer.columns(positions)
        return np.asarray(positions, dtype=np.int64)[:, None]

    def saliency(self, blocks: np.ndarray, w: np.ndarray, hinv) -> np.ndarray:
        """Output error from removing each block of units ([S, q] unit indices) with compensation."""
        wb = w[blocks]  # [S, q, F]
        if self.mode == "diagonal":
            h = self.h / max(self.rows, 1)
            diag = h + DAMP * float(h.mean() or 1.0)
            return np.einsum("sqf,sq->s", wb * wb, diag[blocks])
        if isinstance(hinv, _InverseBlocks):
            sub = hinv.blocks(blocks)
        else:
            sub = hinv[blocks[:, :, None], blocks[:, None, :]]  # [S, q, q]
        if blocks.shape[1] == 1:  # one unit per slot (1×1 Conv, Gemm): no q×q systems to solve
            return np.einsum("sqf,sqf->s", wb, wb) / sub[:, 0, 0]
        return np.einsum("sqf,sqf->s", wb, np.linalg.solve(sub, wb))

    def inverse(self):
        """The damped inverse Hessian's diagonal blocks (:class:`_InverseBlocks`; a dense matrix
        when the Hessian is singular): from the Gram, or from the rows while rows < units."""
        if self.mode == "diagonal":
            return None
        if self.h is None and self.chunks and self.rows < self.width:
            dual = _InverseBlocks.dual(np.concatenate(self.chunks))
            if dual is not None:
                return dual
        self._flush()
        h = self.h / max(self.rows, 1)
        lam = DAMP * float(np.diag(h).mean() or 1.0)
        h[np.diag_indices_from(h)] += lam
        return _InverseBlocks.of(h) or np.linalg.pinv(h)


@dataclasses.dataclass
class _InverseBlocks:
    """Diagonal blocks of a damped inverse Hessian ``H⁻¹`` from a factor ``Z`` (only those
    blocks are read, so the D×D inverse itself is never formed):

    * Gram form: ``H⁻¹ = ZᵀZ`` with ``Z = L⁻¹``, ``LLᵀ = H`` (Cholesky, then LAPACK trtri: half
      the work of potri, which would go on to multiply out the whole inverse);
    * dual form, R < D rows (Woodbury): ``(XᵀX/R + λI)⁻¹ = (I − ZᵀZ)/λ`` with ``Z = L⁻¹X``,
      ``LLᵀ = XXᵀ + λR·I``: R²·D work instead of R·D² + D³.
    """

    z: np.ndarray  # [D, D] float64 or [R, D] float32
    lam: float | None = None  # the dual form's damping; None: Gram form

    @classmethod
    def of(cls, h: np.ndarray) -> _InverseBlocks | None:
        factor, info = scipy.linalg.lapack.dpotrf(h, lower=True, clean=True)
        if info == 0:
            inv_factor, info = scipy.linalg.lapack.dtrtri(factor, lower=True)
            if info == 0:
                return cls(inv_factor)
        return None

    @classmethod
    def dual(cls, rows: np.ndarray) -> _InverseBlocks | None:
        x32 = np.asarray(rows, np.float32)
        r, d = x32.shape
        k = ridge.kernel(x32)  # float32 product, as the Gram form's
        lam = DAMP * float(np.trace(k)) / max(r * d, 1)
        if lam <= 0:
            return None  # undamped: singular, left to the dense pseudo-inverse
        k[np.diag_indices_from(k)] += lam * r
        try:
            factor = scipy.linalg.cholesky(k, lower=True, overwrite_a=True)
        except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
            return None
        # the R²·D triangular solve in float32 (backward stable: an error of the size of the
        # float32 products above; saliencies moved by ≤ 6e-6 relative on ResNet-50, PP-OCR and
        # the digits nets, no kept channel changed), the blocks' products in float64
        z = scipy.linalg.solve_triangular(factor.astype(np.float32), x32, lower=True, check_finite=False)
        return cls(z, lam)  # float32: :meth:`blocks` casts only the columns it gathers

    def blocks(self, blocks: np.ndarray) -> np.ndarray:
        """[S, q, q] blocks of the inverse at the unit indices ``blocks`` ([S, q])."""
        zb = np.ascontiguousarray(np.moveaxis(self.z[:, blocks], 0, -1), dtype=np.float64)  # [S, q, rows of Z]
        gram = zb @ np.swapaxes(zb, 1, 2)
        return gram if self.lam is None else (np.eye(blocks.shape[1]) - gram) / self.lam


def _mode(layer: LinearLayer) -> str:
    cin = layer.weight.shape[layer.in_axis]
    if cin * layer.unit <= EXACT_LIMIT:
        return "exact"
    return "channel" if layer.kind == "conv" and cin <= EXACT_LIMIT else "diagonal"


def _blocks(units: np.ndarray, slots: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(slot ids, [S, q] unit blocks) per block size q: the units of each slot's positions."""
    order = np.argsort(slots, kind="stable")
    ids, starts, counts = np.unique(slots[order], return_index=True, return_counts=True)
    per_slot = units[order]
    out = []
    for q in np.unique(counts):
        pick = np.flatnonzero(counts == q)
        rows = (starts[pick][:, None] + np.arange(q)).reshape(-1)
        out.append((ids[pick], per_slot[rows].reshape(len(pick), -1)))
    return out


@one_blas_thread
def prepare_obs(groups: Sequence[ChannelGroup], ctx: PassContext, model: ir.Model, riders: Sequence = ()) -> None:
    """OBS saliency per slot for every group; consumer inputs captured in as few calibration
    runs as the Hessian memory budget allows (one for most models; ``riders`` share the first,
    see :func:`_ride`)."""
    _needs_calibration(ctx, "obs")
    layers, skipped = consumer_layers(model, groups)
    hessians = [_Hessian(layer, _mode(layer), i) for i, layer in enumerate(layers)]
    batches = _batches(hessians)
    scores = {g: np.zeros(g.size) for g in groups}
    covered = {g: np.zeros(g.size, dtype=bool) for g in groups}
    riders = list(riders)
    for h in ctx.progress(hessians, "OBS saliency", total=len(hessians)):
        if not h.captured:
            _accumulate(next(b for b in batches if h in b), ctx, model, riders)
            riders = []  # they rode the first run
        hinv, w = h.inverse(), h.weight_units()
        for group in groups:
            for member in group.consumers:
                if member.node is not h.layer.node or member.role != "weight" or member.axis != h.layer.in_axis:
                    continue
                for slot_ids, blocks in _blocks(h.units(member.positions), member.slots):
                    np.add.at(scores[group], slot_ids, h.saliency(blocks, w, hinv))
                    covered[group][slot_ids] = True
        h.h, h.chunks = np.zeros(0), []  # done: free the statistics
    for group in groups:
        values, why = scores[group], None
        if not covered[group].any():
            values = _weight_l2(group)
            names = {m.node.name or m.tensor.name for m in group.consumers}
            reasons = sorted({s["reason"] for s in skipped if s["layer"] in names}) or ["it has none"]
            why = f"no consumer layer whose input can be measured ({'; '.join(reasons)})"
        _store("obs", group, ctx, values, why)


def _batches(hessians: list[_Hessian]) -> list[list[_Hessian]]:
    """Consecutive layers whose Hessians together fit in HESSIAN_BUDGET_BYTES (one run each)."""
    batches: list[list[_Hessian]] = []
    used = HESSIAN_BUDGET_BYTES
    for h in hessians:
        size = 8 * (h.width if h.mode == "diagonal" else h.width**2)
        if used + size > HESSIAN_BUDGET_BYTES:
            batches.append([])
            used = 0
        batches[-1].append(h)
        used += size
    return batches


def _accumulate(batch: list[_Hessian], ctx: PassContext, model: ir.Model, riders: Sequence = ()) -> None:
    n = len(ctx.calibration)
    values = [h.layer.input for h in batch] + _rider_values(riders)
    for i, captured in enumerate(_ride(ctx.calibration.iter_capture(model, values), riders)):
        for h in batch:
            h.add(captured[h.layer.input.name], i, n, ctx.seed)


def obs(group: ChannelGroup, ctx: PassContext, model: ir.Model) -> np.ndarray:
    """Second-order saliency: consumers' output error from removing each slot (compensated)."""
    if _cached("obs", group, ctx) is None:
        prepare_obs([group], ctx, model)
    return _cached("obs", group, ctx)


obs.prepare = prepare_obs  # type: ignore[attr-defined]
obs.fallback = lambda group, ctx: fallback("obs", group, ctx)  # type: ignore[attr-defined]


def _rider_values(riders: Sequence) -> list[ir.Value]:
    return [v for rider in riders for v in rider.values]


def _ride(captures, riders: Sequence):
    """Riders on a criterion's calibration run over the unchanged model: objects with ``values``
    (more tensors to fetch) and ``observe(sample, arrays)``, e.g. the reconstruction's record of
    the original outputs (``reconstruct.OriginalOutputs``), which then needs no run of its own."""
    for i, captured in enumerate(captures):
        for rider in riders:
            rider.observe(i, captured)
        yield captured


def _weight_l2(group: ChannelGroup) -> np.ndarray:
    """L2 norm of the group's weight slices (the fallback when no consumer can be measured)."""
    total = np.zeros(group.size)
    seen: set[tuple[int, int]] = set()
    for m in group.producers + group.consumers:
        key = (id(m.tensor.storage_values[0]), m.axis)
        if m.role != "weight" or key in seen:
            continue
        seen.add(key)
        arr = np.moveaxis(m.tensor.numpy().astype(np.float64), m.axis, 0)[m.positions]
        np.add.at(total, m.slots, np.square(arr).reshape(len(m.positions), -1).sum(axis=1))
    return np.sqrt(total)
