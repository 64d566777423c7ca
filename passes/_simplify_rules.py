"""Rewrite rules ``simplify`` adds to onnxscript's defaults (only what those do not cover).

- ``Add(Conv(x, W[, B]), b)`` → ``Conv(x, W, B + b)`` when ``b`` is constant per output channel
  (Paddle and some PyTorch exports keep the bias as a separate Add; ConvTranspose too). This also
  lets a following BatchNormalization fold into the convolution.
- ``Pad(x, pads=0)`` → ``Identity(x)`` (removed by the identity elimination afterwards).
- ``Gemm(Transpose(a), b)`` → ``Gemm(a, b, transA=1)``.
- ``Shape`` of tensors with the same (symbolic) shape computed once (:class:`ShapeCSEPass`).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter._rewrite_rule import RewriteRuleClassBase, RewriteRuleSet


def _constant(value: ir.Value | None) -> np.ndarray | None:
    """The array of a true constant (an initializer that is not also a graph input, or a Constant)."""
    if value is None or value.is_graph_input():
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


class _FuseBiasAdd(RewriteRuleClassBase):
    op_type: ClassVar[str]

    def pattern(self, op, x, b):
        return op.Add(getattr(op, self.op_type)(x, _allow_other_inputs=True, _outputs=["conv_out"]), b)

    def _channels(self, conv: ir.Node, weight: np.ndarray) -> int:
        raise NotImplementedError

    def check(self, context, x, b, conv_out: ir.Value) -> MatchResult:
        result = MatchResult()
        conv = conv_out.producer()
        if len(conv.inputs) < 2 or conv_out.is_graph_output() or len(conv_out.uses()) != 1:
            return result.fail("the convolution's output has other users")
        weight = conv.inputs[1]
        if weight is None or weight.shape is None or _constant(weight) is None:
            return result.fail("weight is not constant")
        if len(conv.inputs) > 2 and conv.inputs[2] is not None and _constant(conv.inputs[2]) is None:
            return result.fail("existing bias is not constant")
        bias = _constant(b)
        if bias is None or bias.dtype != weight.const_value.numpy().dtype:
            return result.fail("the added term is not a constant of the weight's type")
        rank = len(weight.shape)
        channels = self._channels(conv, weight)
        shape = (1,) * (rank - bias.ndim) + bias.shape
        if bias.ndim > rank or any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
            return result.fail("the added term is not per output channel")
        return result

    def rewrite(self, op, x, b, conv_out: ir.Value):
        conv = conv_out.producer()
        weight = conv.inputs[1]
        channels = self._channels(conv, weight)
        added = np.broadcast_to(_constant(b).reshape(-1), (channels,))
        old = conv.inputs[2] if len(conv.inputs) > 2 else None
        total = added if old is None else _constant(old) + added
        name = (old.name if old is not None else weight.name + "_bias") + "_fused"
        bias = op.initializer(ir.tensor(np.ascontiguousarray(total, dtype=added.dtype)), name=name)
        return op.op(self.op_type, x, weight, bias, **conv.attributes)


class FuseConvBiasAdd(_FuseBiasAdd):
    op_type: ClassVar[str] = "Conv"

    def _channels(self, conv, weight):
        return weight.shape[0]


class FuseConvTransposeBiasAdd(_FuseBiasAdd):
    op_type: ClassVar[str] = "ConvTranspose"

    def _channels(self, conv, weight):
        group = conv.attributes.get("group")
        return weight.shape[1] * (group.as_int() if group is not None else 1)


class RemoveZeroPad(RewriteRuleClassBase):
    def pattern(self, op, x):
        return op.Pad(x, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, x, out: ir.Value) -> MatchResult:
        result = MatchResult()
        pad = out.producer()
        if "pads" in pad.attributes:  # opset < 11
            pads = np.asarray(pad.attributes["pads"].as_ints())
        else:
            pads = _constant(pad.inputs[1]) if len(pad.inputs) > 1 else None
        if pads is None or pads.size == 0 or np.any(pads != 0):
            return result.fail("pads are not constant zeros")
        return result

    def rewrite(self, op, x, out):
        return op.Identity(x)


def extra_rules() -> list:
    return list(
        RewriteRuleSet(
            [
                FuseConvBiasAdd.rule(),
                FuseConvTransposeBiasAdd.rule(),
                RemoveZeroPad.rule(),
                FuseTransposeIntoGemm.rule(0),
                FuseTransposeIntoGemm.rule(1),
            ],
            commute=True,
        ).rules
    )


class FuseTransposeIntoGemm(RewriteRuleClassBase):
    """``Gemm(Transpose(a), b)`` → ``Gemm(a, b, transA=1)`` (and for ``b``): the 2-D transpose is
    Gemm's own attribute."""

    def __init__(self, operand: int):
        super().__init__(name=f"FuseTransposeIntoGemm{'AB'[operand]}")
        self.operand = operand

    def pattern(self, op, a, b):
        t = op.Transpose(a if self.operand == 0 else b, _outputs=["t"])
        args = (t, b) if self.operand == 0 else (a, t)
        return op.Gemm(*args, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, a, b, t: ir.Value, out: ir.Value) -> MatchResult:
        result = MatchResult()
        perm = t.producer().attributes.get("perm")
        if perm is None or list(perm.as_ints()) != [1, 0]:
            return result.fail("not a 2-D transpose")
        if t.is_graph_output() or len(t.uses()) != 1:
            return result.fail("the transpose has other users")
        return result

    def rewrite(self, op, a, b, t: ir.Value, out: ir.Value):
        gemm = out.producer()
        key = "transA" if self.operand == 0 else "transB"
        attributes = {k: v for k, v in gemm.attributes.items()}
        flag = attributes.get(key)
        attributes[key] = ir.AttrInt64(key, 1 - (flag.as_int() if flag is not None else 0))
        source = t.producer().inputs[0]
        inputs = list(gemm.inputs)
        inputs[self.operand] = source
        return op.Gemm(*inputs, **attributes)


class ShapeCSEPass(ir.passes.InPlacePass):
    """``Shape`` of tensors whose shapes inference proved equal (the same dims, symbolic ones by
    name, as ONNX defines them) computed once: ``Shape(q)``, ``Shape(k)`` and ``Shape(v)`` of an
    attention layer become one, so the Gather/Unsqueeze/Concat chains behind them merge too."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        seen: dict[tuple, ir.Value] = {}
        modified = False
        for node in list(model.graph):
            if node.op_type != "Shape" or node.domain not in ("", "ai.onnx") or node.inputs[0] is None:
                continue
            shape = node.inputs[0].shape
            if shape is None or any(not isinstance(d, int) and getattr(d, "value", None) is None for d in shape):
                continue
            start, end = node.attributes.get("start"), node.attributes.get("end")
            key = (
                tuple(d if isinstance(d, int) else ("sym", d.value) for d in shape),
                start.as_int() if start is not None else 0,
                end.as_int() if end is not None else None,
            )
            out = node.outputs[0]
            first = seen.setdefault(key, out)
            if first is out or out.is_graph_output():
                continue
            ir.convenience.replace_all_uses_with(out, first)
            modified = True
        return ir.passes.PassResult(model, modified)


def _ints(value: ir.Value | None) -> list[int] | None:
    array = _constant(value)
    return None if array is None or array.dtype.kind not in "iu" else [int(x) for x in array.reshape(-1)]


def _shape_element(value: ir.Value) -> tuple[ir.Value, int] | None:
    """``Unsqueeze(Gather(Shape(x), k), [0])`` → ``(x, k)``; else None."""
    unsq = value.producer()
    if unsq is None or unsq.op_type != "Unsqueeze" or unsq.domain != "":
        return None
    axes = _ints(unsq.inputs[1]) if len(unsq.inputs) > 1 else (list(unsq.attributes["axes"].as_ints()) if "axes" in unsq.attributes else None)
    gather = unsq.inputs[0].producer() if unsq.inputs[0] is not None else None
    if axes != [0] or gather is None or gather.op_type != "Gather" or gather.domain != "":
        return None
    axis = gather.attributes.get("axis")
    index = _constant(gather.inputs[1])
    shape = gather.inputs[0].producer()
    if (axis is not None and axis.as_int() != 0) or index is None or index.ndim != 0 or shape is None:
        return None
    if shape.op_type != "Shape" or shape.domain != "" or shape.attributes:
        return None
    return shape.inputs[0], int(index)


class ShapeChainPass(ir.passes.InPlacePass):
    """``Concat(Unsqueeze(Gather(Shape(x), 0)), ..., Unsqueeze(Gather(Shape(x), r-1)))`` is
    ``Shape(x)``; ``Reshape`` of a 1-D tensor to its own length is the tensor."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in list(model.graph):
            if node.domain != "" or not node.outputs or node.outputs[0].is_graph_output():
                continue
            out = node.outputs[0]
            if node.op_type == "Concat" and node.attributes.get("axis") is not None and node.attributes["axis"].as_int() == 0:
                parts = [_shape_element(v) if v is not None else None for v in node.inputs]
                if not parts or any(p is None for p in parts):
                    continue
                source = parts[0][0]
                if source.shape is None or any(p[0] is not source for p in parts):
                    continue
                rank = len(source.shape)
                if [p[1] % rank if -rank <= p[1] < rank else None for p in parts] != list(range(rank)):
                    continue
                shape_of = next((u for u, _ in source.uses() if u.op_type == "Shape" and u.domain == "" and not u.attributes), None)
                if shape_of is None or shape_of.graph is not model.graph:
                    continue
                ir.convenience.replace_all_uses_with(out, shape_of.outputs[0])
                modified = True
            elif node.op_type == "Reshape" and node.inputs[0] is not None:
                shape = node.inputs[0].shape
                target = _ints(node.inputs[1])
                if shape is None or len(shape) != 1 or target is None or len(target) != 1:
                    continue
                if target[0] == -1 or (isinstance(shape[0], int) and target[0] == shape[0]):
                    ir.convenience.replace_all_uses_with(out, node.inputs[0])
                    modified = True
        return ir.passes.PassResult(model, modified)
