"""``unstructured``: zero individual weights of Conv/ConvTranspose/Gemm/MatMul (lossy).

Scores every weight and zeroes the lowest:

* ``magnitude``: ``|W|`` ranked over the whole tensor (torch's ``l1_unstructured``);
* ``random``: uniform random scores over the whole tensor (``random_unstructured``), seeded;
* ``wanda``: ``|W| * ||X_in||`` ranked within each output row (Wanda, Sun et al. 2023), with
  ``||X_in||`` the L2 norm of every input feature over the calibration data, captured through
  onnxruntime.

``scope=global`` ranks all selected layers together instead. ``n``/``m`` keep the ``n`` best
of every ``m`` consecutive weights along the input dimension (2:4 and friends) instead of a
sparsity target. The weights are replaced where they are stored (initializer, Constant node,
outer-scope initializer of an If branch); nothing is duplicated. The file does not shrink
until ``sparsify`` stores the zeros sparsely. Run it before ``sparsify`` (or ``densify`` first):
weights behind CSR decodes are not visible to it, and a note says how many there are.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Literal

import numpy as np
import onnx_ir as ir

from onnxslim import sparse_codec
from onnxslim.constants import ConstantTensor, constant, iter_nodes
from onnxslim.errors import UsageError, arg
from onnxslim.pass_api import Pass, PassContext, PassResult, option

#: Op type -> (input-feature axis, output axis) of its weight (input 1); Gemm depends on transB.
_LAYOUTS = {"Conv": (1, 0), "ConvTranspose": (0, 1), "MatMul": (-2, -1)}


@dataclasses.dataclass
class _Layer:
    node: ir.Node
    weight: ConstantTensor
    in_axis: int
    out_axis: int

    @property
    def name(self) -> str:
        return self.weight.name


class Unstructured(Pass):
    name = "unstructured"
    summary = "zero individual Conv/Gemm/MatMul weights by magnitude, random or Wanda score; N:M patterns"
    lossless = False

    class Options(Pass.Options):
        sparsity: float = option(0.5, "fraction of weights to zero in every layer (or overall with scope=global)")
        criterion: Literal["magnitude", "random", "wanda"] = option(
            "magnitude", "score: |W|, random, or |W|*||X|| (needs calibration)"
        )
        scope: Literal["layer", "global"] = option("layer", "reach the sparsity per layer, or rank all layers together")
        n: int = option(0, "N:M pattern: keep n of every m consecutive weights along the input dimension (0 = off)")
        m: int = option(0, "N:M pattern group size (0 = off)")
        exclude: list[str] = option([], "glob patterns of weight or node names to leave alone")
        min_size: int = option(1024, "skip weights with fewer elements")

    def validate_options(self) -> None:
        o = self.options
        if not 0.0 <= o.sparsity < 1.0:
            raise UsageError(f"unstructured:sparsity must be in [0, 1), got {o.sparsity}")
        if (o.n == 0) != (o.m == 0) or o.n < 0 or (o.m and not 0 < o.n < o.m):
            raise UsageError(f"unstructured:n and m must both be 0 (off) or satisfy 0 < n < m, got n={o.n} m={o.m}")
        if o.m and o.scope == "global":
            raise UsageError(
                "unstructured: an N:M pattern is per group of weights; it cannot be combined with scope=global"
            )
        if o.min_size < 0:
            raise UsageError(f"unstructured:min_size must be >= 0, got {o.min_size}")

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        opts = self.options
        if opts.criterion == "wanda" and ctx.calibration is None:
            raise UsageError(f"unstructured:criterion=wanda needs calibration data ({arg('calibration', 'data.npz')})")
        notes: list[str] = []
        hidden = sum(1 for _ in sparse_codec.find_decodes(model))
        if hidden:
            notes.append(
                f"{hidden} weight(s) stored sparse (CSR, from sparsify) are not visible to this pass: "
                "run densify first, or unstructured before sparsify"
            )
        layers = self._layers(model, notes)
        if opts.criterion == "wanda":
            norms = _input_norms(model, layers, ctx, notes)
            layers = [layer for layer in layers if layer.name in norms]
        rng = np.random.default_rng(ctx.seed)

        def score(layer: _Layer, weight: np.ndarray) -> np.ndarray:
            if opts.criterion == "magnitude":
                return np.abs(weight)
            if opts.criterion == "random":
                return rng.random(weight.shape)
            return np.abs(weight) * _broadcast_norm(layer, norms[layer.name], weight.shape)

        if opts.scope == "global" and not opts.m:
            masks = _global_masks({layer.name: score(layer, layer.weight.numpy()) for layer in layers}, opts.sparsity)

            def mask_of(layer: _Layer, weight: np.ndarray) -> np.ndarray | None:
                return masks.pop(layer.name)
        else:
            # One layer at a time: its score and mask live only while it is pruned (a score
            # per weight for the whole model at once was a full copy of the weights).
            def mask_of(layer: _Layer, weight: np.ndarray) -> np.ndarray | None:
                if opts.m:
                    return _n_of_m(score(layer, weight), layer.in_axis, opts.n, opts.m)
                return _layer_mask(score(layer, weight), opts.sparsity, layer.out_axis if opts.criterion == "wanda" else None)

        return self._apply(layers, mask_of, ctx, notes)

    def _layers(self, model: ir.Model, notes: list[str]) -> list[_Layer]:
        opts = self.options
        layers: list[_Layer] = []
        seen: set[int] = set()
        dequantized = []
        for node in iter_nodes(model):
            layout = _layout(node)
            if layout is None:
                continue
            weight = constant(node.inputs[1])
            if weight is None or not weight.dtype.is_floating_point() or len(weight.shape) < 2:
                continue
            key = id(weight.storage_values[0])
            if key in seen:
                continue  # a shared weight is pruned once, by its first user's layout
            seen.add(key)
            if any(fnmatch.fnmatchcase(name, pat) for pat in opts.exclude for name in (weight.name, node.name or "")):
                continue
            if int(np.prod(weight.shape)) < opts.min_size:
                continue
            if not weight.can_replace:
                dequantized.append(weight.storage_values[0].name)
                continue
            rank = len(weight.shape)
            layers.append(_Layer(node, weight, layout[0] % rank, layout[1] % rank))
        if dequantized:
            notes.append(
                f"{len(dequantized)} quantized weight(s) left alone (zeroing INT8 storage is not supported): {', '.join(dequantized[:5])}"
            )
        return layers

    def _apply(self, layers: list[_Layer], mask_of, ctx: PassContext, notes: list[str]) -> PassResult:
        """Prune layer by layer: ``mask_of(layer, weight)`` says which weights to keep (None: the
        layer does not fit an N:M pattern and is left alone)."""
        rows = []
        considered = zeroed_total = size_total = zeros_before_total = 0
        for layer in ctx.progress(layers, "layers", total=len(layers)):
            weight = layer.weight.numpy()
            mask = mask_of(layer, weight)
            if mask is None:
                notes.append(
                    f"{layer.name}: input dimension {layer.weight.shape[layer.in_axis]} is not a multiple of m={self.options.m}; left alone"
                )
                continue
            considered += 1
            pruned = np.where(mask, weight, np.zeros((), weight.dtype))
            del mask
            before = int(weight.size - np.count_nonzero(weight))
            after = int(pruned.size - np.count_nonzero(pruned))
            size_total += weight.size
            zeros_before_total += before
            zeroed_total += after
            shape = list(weight.shape)
            unchanged = after == before and np.array_equal(pruned.view(np.uint8), weight.view(np.uint8))
            del weight  # a view of the stored tensor: dropped first, so the replaced one can be unmapped
            if unchanged:
                continue
            layer.weight.replace(pruned)
            rows.append(
                {
                    "name": layer.name,
                    "node": layer.node.name,
                    "op": layer.node.op_type,
                    "shape": shape,
                    "sparsity_before": round(before / pruned.size, 6),
                    "sparsity_after": round(after / pruned.size, 6),
                }
            )
        details = {
            "layers": rows,
            "layers_changed": len(rows),
            "layers_considered": considered,
            "weights": size_total,
            "sparsity_before": round(zeros_before_total / size_total, 6) if size_total else 0.0,
            "sparsity_after": round(zeroed_total / size_total, 6) if size_total else 0.0,
        }
        if not rows:
            return PassResult(False, "no weight changed", details, notes)
        summary = (
            f"{len(rows)} layer(s): zeros {details['sparsity_before']:.1%} -> {details['sparsity_after']:.1%} "
            f"of these layers' {size_total} weights ({self.options.criterion})"
        )
        return PassResult(True, summary, details, notes)


def _layout(node: ir.Node) -> tuple[int, int] | None:
    if node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
        return None
    if node.op_type == "Gemm":
        trans_b = node.attributes.get("transB")
        return (1, 0) if trans_b is not None and trans_b.as_int() else (0, 1)
    return _LAYOUTS.get(node.op_type)


def _layer_mask(scores: np.ndarray, sparsity: float, row_axis: int | None) -> np.ndarray:
    """True for the weights to keep: all but the ``sparsity`` lowest-scored, per tensor or per row."""
    keep = np.ones(scores.shape, dtype=bool)
    if row_axis is None:
        k = round(sparsity * scores.size)
        if k:
            keep.reshape(-1)[np.argpartition(scores.reshape(-1), k - 1)[:k]] = False
        return keep
    rows = np.moveaxis(scores, row_axis, 0).reshape(scores.shape[row_axis], -1)
    k = round(sparsity * rows.shape[1])
    if not k:
        return keep
    drop = np.argpartition(rows, k - 1, axis=1)[:, :k]
    keep_rows = np.ones(rows.shape, dtype=bool)
    np.put_along_axis(keep_rows, drop, False, axis=1)
    moved = np.moveaxis(keep, row_axis, 0).shape
    return np.moveaxis(keep_rows.reshape(moved), 0, row_axis)


def _global_masks(scores: dict[str, np.ndarray], sparsity: float) -> dict[str, np.ndarray]:
    if not scores:
        return {}
    flat = np.concatenate([s.reshape(-1).astype(np.float64) for s in scores.values()])
    keep = np.ones(flat.size, dtype=bool)
    k = round(sparsity * flat.size)
    if k:
        keep[np.argpartition(flat, k - 1)[:k]] = False
    masks, offset = {}, 0
    for name, s in scores.items():
        masks[name] = keep[offset : offset + s.size].reshape(s.shape)
        offset += s.size
    return masks


def _n_of_m(scores: np.ndarray, in_axis: int, n: int, m: int) -> np.ndarray | None:
    """Keep the ``n`` best of every ``m`` consecutive weights along ``in_axis``."""
    moved = np.moveaxis(scores, in_axis, -1)
    if moved.shape[-1] % m:
        return None
    groups = moved.reshape(-1, m)
    keep = np.ones(groups.shape, dtype=bool)
    np.put_along_axis(keep, np.argsort(groups, axis=1, kind="stable")[:, : m - n], False, axis=1)
    return np.moveaxis(keep.reshape(moved.shape), -1, in_axis)


def _input_norms(model: ir.Model, layers: list[_Layer], ctx: PassContext, notes: list[str]) -> dict[str, np.ndarray]:
    """L2 norm of every input feature of each layer over the calibration samples."""
    reachable = [layer for layer in layers if layer.node.graph is model.graph]
    if len(reachable) < len(layers):
        notes.append(
            f"{len(layers) - len(reachable)} layer(s) inside subgraphs left alone: their inputs cannot be captured for wanda"
        )
    sums: dict[str, np.ndarray] = {}
    values = [layer.node.inputs[0] for layer in reachable]
    for captured in ctx.calibration.iter_capture(model, values):
        for layer in reachable:
            x = captured[layer.node.inputs[0].name].astype(np.float64)
            axis = _feature_axis(layer.node, x.ndim)
            squares = np.sum(np.square(x), axis=tuple(a for a in range(x.ndim) if a != axis))
            sums[layer.name] = sums.get(layer.name, 0) + squares
    return {name: np.sqrt(total) for name, total in sums.items()}


def _feature_axis(node: ir.Node, rank: int) -> int:
    """The axis of a layer's activation input that holds its input features."""
    if node.op_type in ("Conv", "ConvTranspose"):
        return 1
    if node.op_type == "Gemm":
        trans_a = node.attributes.get("transA")
        return 0 if trans_a is not None and trans_a.as_int() else 1
    return rank - 1


def _broadcast_norm(layer: _Layer, norm: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The input-feature norm laid out like the weight (grouped Conv: per output group)."""
    rank = len(shape)
    if layer.node.op_type == "Conv" and norm.size != shape[1]:
        groups = norm.size // shape[1]
        per_out = norm.reshape(groups, shape[1])[np.arange(shape[0]) // (shape[0] // groups)]
        return per_out.reshape(shape[:2] + (1,) * (rank - 2))
    view = [1] * rank
    view[layer.in_axis] = shape[layer.in_axis]
    return norm.reshape(view)
