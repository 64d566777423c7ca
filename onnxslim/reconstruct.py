"""Reconstruction after structured pruning: refit the layers that read removed channels.

When a group loses channels, every Conv/Gemm/MatMul reading them (its *consumers*) loses input
slices and its output drifts. Following He et al. 2017 ("Channel Pruning for Accelerating Very
Deep Neural Networks") and ThiNet, each such layer's remaining weights are refit by ridge-
regularised least squares so that, on calibration data, it reproduces the unpruned output, the
ridge pulling towards the layer's own (sliced) weights ``W₀`` rather than towards zero::

    [W'; δ] = argmin ‖[X_p 1]·[W; δ] − Y‖² + λ‖W − W₀‖²,
    λ = DAMP · mean(diag(X_pᵀX_p)) · max(1, MIN_ROWS_PER_UNKNOWN · D / rows)   (onnxslim.ridge)

With plenty of rows this is the plain least-squares fit; with fewer rows than unknowns (a
100-sample MLP, a few sentences) λ grows and the fit moves only as far from ``W₀`` as the data
supports, instead of memorising the samples — so no layer is skipped for lack of rows.

* ``Y`` is the layer's output in the ORIGINAL model without its bias (kept output channels only:
  the layer may be a producer of a pruned group too), captured before removal;
* ``X_p`` its input in the PRUNED model on the same samples (unfolded by im2col for Conv, with
  stride/pads/dilations), captured after removal (removal keeps value objects and names);
* ``δ`` is a bias correction: removed channels had non-zero means, and their average
  contribution is put back into the bias (a bias input is added where the layer had none).

Layers are refit in *waves*: a layer waits for every refit layer upstream of it, so its ``X_p``
already carries their corrections (one onnxruntime run per wave; a chain of N layers is N runs,
each over the part of the graph since the previous wave: ``Calibration.staged``).

Rows (output positions: N·H·W for Conv, all leading dims for Gemm/MatMul) are subsampled per
layer to ``clip(4·D, MIN_ROWS, MAX_ROWS)`` (D = the unpruned unfolded input width: 4096..16384
rows), spread evenly over the calibration samples with a choice seeded by the layer's name: it
does not depend on the plan, so the criterion's calibration run can record the original outputs
on the way (``OriginalOutputs``) instead of a second run. The original outputs at those rows
are held for every layer (float32, rows × kept outputs); the inputs only as Gram statistics
(XᵀX, XᵀY, ‖Y‖² in float64, fit and held-out) for the layers of the current wave.

Held out: every 5th calibration sample (every 5th row when there are fewer than 5 samples; rows
of one sample are correlated, whole samples test generalisation better). The reported errors
``‖X_p·W − Y‖/‖Y‖`` are on held-out rows, for the pruned (sliced) weights and for weights fitted
on the other rows; a refit that does not lower it is not written (nor one without held-out rows
to check it on). Written weights are fitted on all rows.

Skipped with a reason: grouped/depthwise Conv, ConvTranspose, Gemm with transA, layers inside
subgraphs, weights shared by several nodes, and INT8 (dequantized) storage, which cannot hold
arbitrary new values.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import onnx_ir as ir
import threadpoolctl

from .channels import ChannelGroup
from .constants import ConstantTensor, add_initializer, constant
from .pass_api import PassContext
from .ridge import CHUNK_ROWS, Gram, Rows

#: Ridge damping relative to the mean diagonal of XᵀX.
DAMP = 1e-2
#: Rows per layer: 4·D, at least MIN_ROWS and at most MAX_ROWS (D = the unpruned unfolded input width).
MIN_ROWS = 4096
MAX_ROWS = 16384
#: One calibration sample in HOLDOUT (one row, with fewer samples) is held out to measure the error.
HOLDOUT = 5


# --------------------------------------------------------------------------- layers as matrices


@dataclasses.dataclass(eq=False)
class LinearLayer:
    """A Conv (group=1), Gemm or MatMul with a constant weight, seen as ``Y = unfold(X) @ W``.

    ``matrix(w)`` turns the stored weight into ``W`` of shape [D, Cout] (D = Cin·prod(kernel) for
    Conv); ``unfold(x, rows)`` gives the input rows [R, D] that produce output rows ``rows``
    (flat indices over N × output spatial dims for Conv, over all leading dims otherwise).
    """

    node: ir.Node
    kind: str  # "conv", "gemm" or "matmul"
    weight: ConstantTensor
    #: The per-output bias: Conv B, Gemm C, or the constant of an Add right after a MatMul.
    bias: ConstantTensor | None = None
    #: Whether ``output`` already includes the bias (Conv/Gemm) or not (MatMul → Add).
    bias_in_output: bool = True
    #: For MatMul: the Add constant holding its bias (re-resolved after removal).
    bias_value: ir.Value | None = None
    alpha: float = 1.0
    beta: float = 1.0
    trans_b: bool = False
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    auto_pad: str = "NOTSET"

    @property
    def name(self) -> str:
        return self.node.name or self.weight.name

    @property
    def input(self) -> ir.Value:
        return self.node.inputs[0]

    @property
    def output(self) -> ir.Value:
        return self.node.outputs[0]

    @property
    def can_fit_bias(self) -> bool:
        """A bias can be written: there is one, or the layer takes one (Conv, Gemm with beta≠0)."""
        return self.beta != 0 and (self.bias is not None or self.kind in ("conv", "gemm"))

    def bias_input(self) -> ir.Value | None:
        """The value holding the bias (to re-resolve it after removal)."""
        if self.kind == "matmul":
            return self.bias_value
        return self.node.inputs[2] if len(self.node.inputs) > 2 else None

    @property
    def in_axis(self) -> int:
        """The weight axis that holds input channels."""
        if self.kind == "conv":
            return 1
        return 1 if self.trans_b else 0

    @property
    def out_axis(self) -> int:
        return 1 - self.in_axis if self.kind != "conv" else 0

    @property
    def unit(self) -> int:
        """Unfolded columns per input channel (prod(kernel) for Conv, 1 otherwise)."""
        return int(np.prod(self.kernel)) if self.kind == "conv" else 1

    def matrix(self, w: np.ndarray) -> np.ndarray:
        if self.kind == "conv":
            return w.reshape(w.shape[0], -1).T
        if self.kind == "gemm":
            return self.alpha * (w.T if self.trans_b else w)
        return w

    def weight_from_matrix(self, mat: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        if self.kind == "conv":
            return mat.T.reshape(shape)
        if self.kind == "gemm":
            mat = mat / self.alpha
            return mat.T if self.trans_b else mat
        return mat

    def columns(self, positions: np.ndarray) -> np.ndarray:
        """Unfolded columns of each input-channel position: [len(positions), unit]."""
        k = self.unit
        return np.asarray(positions, dtype=np.int64)[:, None] * k + np.arange(k)

    def _pads(self, spatial: Sequence[int]) -> tuple[list[int], list[int]]:
        nd = len(spatial)
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            begin, end = [], []
            for size, k, s, d in zip(spatial, self.kernel, self.strides, self.dilations):
                out = -(-size // s)
                total = max(0, (out - 1) * s + d * (k - 1) + 1 - size)
                small = total // 2
                begin.append(small if self.auto_pad == "SAME_UPPER" else total - small)
                end.append(total - begin[-1])
            return begin, end
        if self.auto_pad == "VALID" or not self.pads:
            return [0] * nd, [0] * nd
        return list(self.pads[:nd]), list(self.pads[nd:])

    def out_spatial(self, spatial: Sequence[int]) -> list[int]:
        begin, end = self._pads(spatial)
        return [
            (size + b + e - d * (k - 1) - 1) // s + 1
            for size, b, e, k, s, d in zip(spatial, begin, end, self.kernel, self.strides, self.dilations)
        ]

    def n_rows(self, x_shape: Sequence[int]) -> int:
        if self.kind == "conv":
            return int(x_shape[0]) * int(np.prod(self.out_spatial(x_shape[2:])))
        return int(np.prod(x_shape[:-1]))

    def unfold(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Input rows [R, D] (im2col at the chosen output positions for Conv)."""
        if self.kind != "conv":
            return x.reshape(-1, x.shape[-1])[rows]
        n, spatial = x.shape[0], x.shape[2:]
        begin, end = self._pads(spatial)
        out = self.out_spatial(spatial)
        if any(b or e for b, e in zip(begin, end)):
            x = np.pad(x, [(0, 0), (0, 0), *zip(begin, end)])
        nd = len(spatial)
        # every receptive field as a strided view [N, C, *out, *kernel]; one gather of the rows
        span = [d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilations)]
        view = np.lib.stride_tricks.sliding_window_view(x, span, axis=tuple(range(2, 2 + nd)))
        view = view[(slice(None), slice(None), *(slice(0, (o - 1) * s + 1, s) for o, s in zip(out, self.strides)),
                     *(slice(None, None, d) for d in self.dilations))]
        where = np.unravel_index(rows, (n, *out))
        return view[(where[0], slice(None), *where[1:])].reshape(len(rows), -1)

    def n_out_rows(self, y_shape: Sequence[int]) -> int:
        if self.kind == "conv":
            return int(y_shape[0]) * int(np.prod(y_shape[2:]))
        return int(np.prod(y_shape[:-1]))

    def out_rows(self, y: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Output rows [R, Cout] (channels last)."""
        if self.kind != "conv":
            return y.reshape(-1, y.shape[-1])[rows]
        where = np.unravel_index(rows, (y.shape[0], *y.shape[2:]))
        return y[(where[0], slice(None), *where[1:])]


def _ints_attr(node: ir.Node, name: str, default: Sequence[int]) -> tuple[int, ...]:
    attr = node.attributes.get(name)
    return tuple(attr.as_ints()) if attr is not None else tuple(default)


def _float_attr(node: ir.Node, name: str, default: float) -> float:
    attr = node.attributes.get(name)
    return attr.as_float() if attr is not None else default


def _int_attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return attr.as_int() if attr is not None else default


def linear_layer(node: ir.Node, model: ir.Model) -> LinearLayer | str:
    """The layer as a matrix product, or the reason it cannot be treated as one."""
    if node.graph is not model.graph:
        return "inside a subgraph"
    weight = constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None:
        return "computed weight"
    if not weight.dtype.is_floating_point():
        return "non-float weight"
    bias_value = node.inputs[2] if len(node.inputs) > 2 else None
    bias = constant(bias_value)
    if bias_value is not None and bias is None:
        return "computed bias"
    if node.op_type == "Conv":
        if _int_attr(node, "group", 1) != 1:
            return "grouped/depthwise Conv (not refit)"
        nd = len(weight.shape) - 2
        return LinearLayer(
            node, "conv", weight, bias,
            kernel=tuple(weight.shape[2:]),
            strides=_ints_attr(node, "strides", [1] * nd),
            dilations=_ints_attr(node, "dilations", [1] * nd),
            pads=_ints_attr(node, "pads", [0] * 2 * nd),
            auto_pad=node.attributes["auto_pad"].as_string() if "auto_pad" in node.attributes else "NOTSET",
        )  # fmt: skip
    if node.op_type == "Gemm":
        if _int_attr(node, "transA", 0):
            return "Gemm with transA"
        if bias is not None and bias.shape not in ((), (1,), (weight.shape[0 if _int_attr(node, "transB", 0) else 1],)):
            return "Gemm with a 2-D bias"
        return LinearLayer(
            node, "gemm", weight, bias,
            alpha=_float_attr(node, "alpha", 1.0), beta=_float_attr(node, "beta", 1.0),
            trans_b=bool(_int_attr(node, "transB", 0)),
        )  # fmt: skip
    if node.op_type == "MatMul":
        if len(weight.shape) != 2:
            return "MatMul with a batched weight"
        bias_value = _following_bias(node, weight.shape[1])
        return LinearLayer(node, "matmul", weight, constant(bias_value), bias_in_output=False, bias_value=bias_value)
    return f"{node.op_type} is not refit"


def _following_bias(node: ir.Node, width: int) -> ir.Value | None:
    """The constant of ``MatMul → Add(const [width])`` when the MatMul feeds only that Add."""
    uses = node.outputs[0].uses()
    if len(uses) != 1 or node.outputs[0].is_graph_output():
        return None
    add = uses[0].node
    if add.op_type != "Add" or len(add.inputs) != 2:
        return None
    other = add.inputs[1 - uses[0].idx]
    c = constant(other)
    if c is None or c.shape not in ((width,), (1, width)) or len(other.uses()) != 1:
        return None
    return other


def editable(layer: LinearLayer) -> str | None:
    """Why the layer's weights cannot be rewritten, or None."""
    if not layer.weight.can_replace:
        return "INT8 (dequantized) weight storage"
    if any(n is not layer.node for n in layer.weight.users) or not layer.weight.exclusive:
        return "weight shared with other nodes"
    if layer.bias is not None and (len(layer.bias.users) != 1 or not layer.bias.can_replace):
        return "bias shared with other nodes"
    return None


def one_blas_thread(fn):
    """Run ``fn`` with one BLAS thread: calibration statistics are many mid-sized products and
    solves between onnxruntime runs, where OpenBLAS's worker threads mostly spin-wait (obs +
    reconstruction on the ResNet fixture: 9.5 CPU-s with two threads, 2.0 with one, same wall
    time on a loaded two-core machine)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with threadpoolctl.threadpool_limits(1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper


def row_quota(width: int) -> int:
    return int(np.clip(4 * width, MIN_ROWS, MAX_ROWS))


def pick_rows(available: int, quota: int, rng: np.random.Generator) -> np.ndarray:
    """``quota`` distinct row indices out of ``available`` (all of them if fewer), sorted."""
    if available <= quota:
        return np.arange(available)
    return np.sort(rng.choice(available, size=quota, replace=False))


# --------------------------------------------------------------------------- the hook


@dataclasses.dataclass(eq=False)
class _Target:
    layer: LinearLayer
    kept_out: np.ndarray  # kept output channels (indices into the original Cout)
    rows: list[np.ndarray]  # chosen output rows, per calibration sample
    y: list[np.ndarray]  # original pre-bias outputs at those rows, kept channels, per sample


@dataclasses.dataclass
class _State:
    targets: list[_Target]
    skipped: list[dict]


def _kept(tensor: ConstantTensor, axis: int, plan: Mapping[ChannelGroup, np.ndarray]) -> np.ndarray:
    """Indices along ``axis`` of ``tensor`` that survive ``plan``."""
    mask = np.ones(tensor.shape[axis], dtype=bool)
    storage = id(tensor.storage_values[0])
    for group, keep in plan.items():
        for m in group.producers + group.consumers:
            if id(m.tensor.storage_values[0]) == storage and m.axis % len(tensor.shape) == axis:
                mask[m.positions[~np.isin(m.slots, keep)]] = False
    return np.flatnonzero(mask)


def consumer_layers(model: ir.Model, groups: Sequence[ChannelGroup]) -> tuple[list[LinearLayer], list[dict]]:
    """The distinct layers reading the groups' channels, and the ones skipped with reasons."""
    layers: list[LinearLayer] = []
    skipped: list[dict] = []
    seen: set[int] = set()
    for group in groups:
        for member in group.consumers:
            if member.role != "weight" or id(member.node) in seen:
                continue
            seen.add(id(member.node))
            layer = linear_layer(member.node, model)
            if isinstance(layer, str):
                skipped.append({"layer": member.node.name or member.tensor.name, "reason": layer})
            else:
                layers.append(layer)
    return layers, skipped


def refit_quota(layer: LinearLayer) -> tuple[int, int]:
    """(rows, seed key) of a layer's refit: ``row_quota`` of its full unfolded width, and a key
    from its name. Independent of the plan, so a criterion's calibration run over the unchanged
    model can record the rows before the plan exists (:class:`OriginalOutputs`)."""
    return row_quota(layer.weight.shape[layer.in_axis] * layer.unit), zlib.crc32(layer.name.encode())


def refit_rows(quota: tuple[int, int], n_out_rows: int, n_samples: int, seed: int, sample: int) -> np.ndarray:
    """The output rows a refit uses in one calibration sample: the layer's quota (``refit_quota``)
    spread over the samples, a choice seeded by the layer and the sample."""
    rows, key = quota
    return pick_rows(n_out_rows, -(-rows // n_samples), np.random.default_rng([seed, key, sample]))


class OriginalOutputs:
    """Layers' outputs in the ORIGINAL model at their refit rows (all output channels), recorded
    while another calibration run goes over the unchanged model — the criterion's (``obs``,
    ``activation``: ``prepare(..., riders=[...])``) — so that :meth:`Reconstructor.capture` need
    not run the whole model again (one onnxruntime pass of 16 images of ResNet-50 at 160²: ~1.4
    CPU-s). ``values`` are the tensors to fetch; ``observe`` takes each sample's arrays."""

    def __init__(self, layers: Sequence[LinearLayer], ctx: PassContext):
        self.layers = {id(layer.node): layer for layer in layers}
        self.quotas = {id(layer.node): refit_quota(layer) for layer in layers}
        self.values = [layer.output for layer in layers]
        self.calibration, self.seed = ctx.calibration, ctx.seed
        self.rows: dict[int, list[np.ndarray]] = {key: [] for key in self.layers}
        self.y: dict[int, list[np.ndarray]] = {key: [] for key in self.layers}

    def observe(self, sample: int, captured: Mapping[str, np.ndarray]) -> None:
        n_samples = len(self.calibration)
        for key, layer in self.layers.items():
            y = captured[layer.output.name]
            rows = refit_rows(self.quotas[key], layer.n_out_rows(y.shape), n_samples, self.seed, sample)
            self.rows[key].append(rows)
            self.y[key].append(layer.out_rows(y, rows).astype(np.float32))

    def take(self, layer: LinearLayer, ctx: PassContext) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
        """(rows, outputs) per sample of a layer recorded on every sample of ``ctx``'s data, or None."""
        key = id(layer.node)
        if ctx.calibration is not self.calibration or ctx.seed != self.seed or key not in self.layers:
            return None
        del self.layers[key]  # used once: the layer changes after its refit
        rows, y = self.rows.pop(key), self.y.pop(key)
        return (rows, y) if len(rows) == len(ctx.calibration) else None


class Reconstructor:
    """The ``prune`` reconstruction hook: ``capture`` before removal, ``refit`` after it."""

    def __init__(self, fit_bias: bool = True):
        self.fit_bias = fit_bias

    def recorder(self, model: ir.Model, groups: Sequence[ChannelGroup], ctx: PassContext) -> OriginalOutputs:
        """A rider for the criterion's calibration run: records what ``capture`` would run the
        model for, for every layer a plan over ``groups`` could refit."""
        layers, _ = consumer_layers(model, groups)
        return OriginalOutputs([layer for layer in layers if editable(layer) is None], ctx)

    @one_blas_thread
    def capture(
        self, model: ir.Model, plan: Mapping[ChannelGroup, np.ndarray], ctx: PassContext,
        recorded: OriginalOutputs | None = None,
    ) -> _State:  # fmt: skip
        """Record each consumer layer's original output (pre-bias, kept channels, sampled rows);
        from ``recorded`` where it holds the layer, else from one calibration run."""
        changed = [g for g, keep in plan.items() if len(keep) < g.size]
        layers, skipped = consumer_layers(model, changed)
        targets, missing = [], []
        for layer in layers:
            why = editable(layer)
            if why:
                skipped.append({"layer": layer.name, "reason": why})
                continue
            target = _Target(layer, _kept(layer.weight, layer.out_axis, plan), [], [])
            targets.append(target)
            found = recorded.take(layer, ctx) if recorded is not None else None
            if found is None:
                missing.append(target)
                continue
            bias = self._bias(target)
            for rows, y in zip(*found):
                target.rows.append(rows)
                target.y.append(y[:, target.kept_out] - bias)
        if missing:
            n_samples = len(ctx.calibration)
            biases = [self._bias(t) for t in missing]
            quotas = [refit_quota(t.layer) for t in missing]
            for i, captured in enumerate(ctx.calibration.iter_capture(model, [t.layer.output for t in missing])):
                for t, bias, quota in zip(missing, biases, quotas):
                    y = captured[t.layer.output.name]
                    rows = refit_rows(quota, t.layer.n_out_rows(y.shape), n_samples, ctx.seed, i)
                    t.rows.append(rows)
                    t.y.append(t.layer.out_rows(y, rows)[:, t.kept_out].astype(np.float32) - bias)
        return _State(targets, skipped)

    @staticmethod
    def _bias(t: _Target) -> np.ndarray:
        """The bias in the captured outputs, per kept output channel (float32: the outputs
        without it are held for every layer at once)."""
        if t.layer.bias is None or not t.layer.bias_in_output:
            return np.zeros(len(t.kept_out), np.float32)
        bias = t.layer.beta * t.layer.bias.numpy().astype(np.float64).reshape(-1)
        return (np.broadcast_to(bias, (1,)) if bias.size == 1 else bias[t.kept_out]).astype(np.float32)

    @one_blas_thread
    def refit(self, model: ir.Model, state: _State, ctx: PassContext) -> dict:
        """Refit every captured layer on the pruned model; per-layer errors for the report."""
        report: dict = {"layers": [], "skipped": list(state.skipped), "waves": 0}
        report.update(damp=DAMP, fit_bias=self.fit_bias)
        targets = []
        for t in state.targets:
            weight = constant(t.layer.node.inputs[1])
            if weight is None or weight.shape[t.layer.out_axis] != len(t.kept_out):
                report["skipped"].append({"layer": t.layer.name, "reason": "weight changed shape unexpectedly"})
                continue
            t.layer.weight = weight
            t.layer.bias = constant(t.layer.bias_input())
            targets.append(t)
        waves = _waves(model, targets)
        report["waves"] = len(set(waves.values()))
        order = sorted(targets, key=lambda t: waves[id(t)])
        grams: dict[int, Gram | Rows] = {}
        current = None
        staged = ctx.calibration.staged(model)  # each wave runs only the graph since the last one
        for t in ctx.progress(order, "refitting layers", total=len(order)):
            if waves[id(t)] != current:
                current = waves[id(t)]
                wave = [u for u in order if waves[id(u)] == current]
                changing = [u.layer.node for u in order if waves[id(u)] >= current]
                grams = self._accumulate(staged.iter_capture([u.layer.input for u in wave], changing), wave, ctx)
            report["layers"].append(self._refit_one(model, t, grams[id(t)]))
        report["summary"] = _summary(report)
        return report

    def _accumulate(
        self, captures: Iterator[dict[str, np.ndarray]], wave: list[_Target], ctx: PassContext
    ) -> dict[int, Gram | Rows]:
        """One calibration run over the pruned model (``captures``: the wave's layer inputs per
        sample): Gram statistics of the wave's layers."""
        grams: dict[int, Gram | Rows] = {}
        n_samples = len(ctx.calibration)
        for i, captured in enumerate(captures):
            for t in wave:
                x = captured[t.layer.input.name]
                rows, y = t.rows[i], t.y[i]
                free = self._fits_bias(t.layer)
                if id(t) not in grams:
                    width = t.layer.weight.shape[t.layer.in_axis] * t.layer.unit + free
                    # fewer rows than unknowns: keep the rows, solve the small dual system
                    grams[id(t)] = (Rows if sum(map(len, t.rows)) < width else Gram)(width, y.shape[1], DAMP)
                gram = grams[id(t)]
                for start in range(0, len(rows), CHUNK_ROWS):
                    xs = np.asarray(t.layer.unfold(x, rows[start : start + CHUNK_ROWS]), np.float32)
                    if free:
                        xs = np.concatenate([xs, np.ones((len(xs), 1), np.float32)], axis=1)
                    gram.add(xs, y[start : start + CHUNK_ROWS], _held_out(i, n_samples, gram.rows, len(xs)))
        return grams

    def _fits_bias(self, layer: LinearLayer) -> int:
        return int(self.fit_bias and layer.can_fit_bias)

    def _refit_one(self, model: ir.Model, t: _Target, gram: Gram | Rows) -> dict:
        layer = t.layer
        w_old = layer.weight.numpy()
        before = layer.matrix(w_old.astype(np.float64))
        free = self._fits_bias(layer)
        if free:
            before = np.concatenate([before, np.zeros((1, before.shape[1]))])
        entry = {"layer": layer.name, "rows": gram.rows, "inputs": int(before.shape[0] - free)}
        entry["error_before"] = round(gram.error(before, 1), 4)
        if gram.yy[1] <= 0 or gram.fit_rows == 0:  # nothing to check a refit against
            entry.update(error_after=None, applied=False, reason=f"no held-out calibration rows ({gram.rows} rows)")
            return entry
        entry["error_after"] = round(gram.error(gram.solve([0], before, free), 1), 4)
        entry["applied"] = bool(entry["error_after"] < entry["error_before"])
        if not entry["applied"]:
            entry["reason"] = "held-out error not lower"
            return entry
        final = gram.solve([0, 1], before, free)
        layer.weight.replace(layer.weight_from_matrix(final[: len(final) - free], w_old.shape))
        if free:
            _add_to_bias(model, layer, final[-1])
        return entry


def _summary(report: dict) -> str:
    done = [e for e in report["layers"] if e["applied"]]
    text = f"refit {len(done)} of {len(report['layers'])} layers"
    if done:
        before = np.mean([e["error_before"] for e in done])
        after = np.mean([e["error_after"] for e in done])
        text += f", mean held-out relative error {before:.3f} → {after:.3f}"
    reasons = [e["reason"] for e in report["layers"] if not e["applied"]] + [s["reason"] for s in report["skipped"]]
    if reasons:
        counts = {r.split(" (")[0]: 0 for r in reasons}
        for r in reasons:
            counts[r.split(" (")[0]] += 1
        text += "; not refit: " + ", ".join(f"{n}× {r}" for r, n in counts.items())
    return text


def _held_out(sample: int, n_samples: int, first_row: int, n_rows: int) -> np.ndarray:
    """Which rows are held out: every HOLDOUT-th sample, or every HOLDOUT-th row if too few samples."""
    if n_samples >= HOLDOUT:
        return np.full(n_rows, sample % HOLDOUT == HOLDOUT - 1)
    return (np.arange(first_row, first_row + n_rows) % HOLDOUT) == HOLDOUT - 1


def _add_to_bias(model: ir.Model, layer: LinearLayer, delta: np.ndarray) -> None:
    """Add the fitted bias correction (in output units); a Conv/Gemm without bias gets one."""
    dtype = layer.weight.dtype.numpy()
    if layer.bias is not None:
        old = layer.bias.numpy().astype(np.float64)
        delta = delta / layer.beta
        new = old + delta.reshape(old.shape) if old.size == delta.size else old.reshape(-1) + delta
        layer.bias.replace(new.astype(dtype))
        return
    value = add_initializer(model.graph, f"{layer.weight.name}_bias", (delta / layer.beta).astype(dtype))
    layer.node.resize_inputs(3)
    layer.node.replace_input_with(2, value)


def _waves(model: ir.Model, targets: Sequence[_Target]) -> dict[int, int]:
    """For each target, how many other targets lie on some path from the graph inputs to it."""
    by_node = {id(t.layer.node): t for t in targets}
    level: dict[int, int] = {}
    result: dict[int, int] = {}
    for node in model.graph:
        depth = max((level.get(id(v), 0) for v in node.inputs if v is not None), default=0)
        target = by_node.get(id(node))
        if target is not None:
            result[id(target)] = depth
            depth += 1
        for out in node.outputs:
            level[id(out)] = depth
    return result
