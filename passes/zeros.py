"""``zeros``: lossless removal of zero weights — channels, neurons and whole branches.

Models trained with L1/group-lasso sparsity or pruned by ``torch.nn.utils.prune`` keep whole
filters, neurons and input columns of exact zeros, and onnxruntime spends full time on them.
This pass removes them physically without changing any output:

* A value analysis (:class:`KnownValues`) propagates, tensor by tensor, which channels are
  *known constants* because the weights producing them are zero (a zero Conv filter emits
  ``bias``, which BatchNormalization/Relu/... turn into ``act(bias)``; a BN with ``gamma == 0``
  emits ``beta``; a Mul by zero emits zero).
* Whole branches: where a fully known tensor meets a live tensor in an element-wise op, the
  branch is replaced by a constant (or bypassed when it adds zero) and dead nodes go.
* Channels: with the core's channel groups (:mod:`onnxslim.channels`, shared with ``prune``),
  a channel leaves its whole group when every consumer either ignores it (all-zero input
  columns) or can absorb its constant value exactly into its bias. A group loses every channel
  only where they reach the rest of the graph through Concat inputs alone: the Concat drops
  the input and the branch goes; elsewhere one channel stays.

Exact for finite activations: ``x * 0`` is taken as 0, so inf/NaN inputs can give different outputs.
Subgraphs are analysed too: branches fold inside If/Loop/Scan bodies, and channels leave groups
wherever :mod:`onnxslim.channels` finds them (If branches), outer-scope weights included.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import numpy as np
import onnx_ir as ir
import scipy.special

from onnxslim import channels, shapes
from onnxslim.constants import add_initializer, constant, drop_if_unused, iter_nodes, remove_dead, weight_bytes
from onnxslim.errors import UsageError
from onnxslim.pass_api import Pass, PassContext, PassResult, option

#: Per-tensor knowledge: an array broadcastable (numpy rules, right-aligned) to the tensor,
#: holding the value where it is known to be constant and NaN where it is not.
Known = np.ndarray

_DEFAULT_DOMAINS = ("", "ai.onnx")


# --------------------------------------------------------------------------- helpers


def _attr(node: ir.Node, name: str, default):
    attr = node.attributes.get(name)
    if attr is None:
        return default
    return attr.value


def _all_unknown(known: Known | None) -> bool:
    return known is None or bool(np.all(np.isnan(known)))


def _normalize(known: Known | None) -> Known | None:
    """None for 'nothing known'; arrays stay as they are."""
    return None if _all_unknown(known) else known


def _channel_vector(known: Known | None, rank: int | None, channels: int, axis: int = 1) -> np.ndarray | None:
    """The per-channel values of ``known`` along ``axis`` of a rank-``rank`` tensor.

    Returns a float vector (NaN = unknown) of length ``channels``, or None when the knowledge
    varies along another axis (then it is not a per-channel constant).
    """
    if known is None:
        return np.full(channels, np.nan, np.float32)
    if rank is None:
        return None
    axis = axis % rank
    if known.ndim > rank:
        return None
    full = known.reshape((1,) * (rank - known.ndim) + known.shape)
    for i, size in enumerate(full.shape):
        if i != axis and size != 1:
            return None
    vec = full.reshape(-1)
    if vec.size == 1:
        return np.full(channels, vec[0], dtype=full.dtype)
    if vec.size != channels:
        return None
    return vec


def _per_channel(vec: np.ndarray, rank: int, axis: int = 1) -> Known:
    """A channel vector laid out right-aligned for a rank-``rank`` tensor with channels on ``axis``."""
    axis = axis % rank
    return vec.reshape((-1,) + (1,) * (rank - axis - 1))


def _has_padding(node: ir.Node) -> bool:
    auto_pad = _attr(node, "auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad not in ("NOTSET", "VALID"):
        return True
    return any(p != 0 for p in (_attr(node, "pads", None) or []))


def zero_mask(array: np.ndarray, eps: float) -> np.ndarray:
    """Element-wise 'counts as zero' (exact zero when ``eps`` is 0)."""
    return array == 0 if eps == 0 else np.abs(array) <= eps


# --------------------------------------------------------------------------- zero structure of weights


def conv_zero_filters(weight: np.ndarray, eps: float = 0.0) -> np.ndarray:
    """[Cout, Cin/group] mask: the kernel from input channel j to output channel o is all zero."""
    flat = weight.reshape(weight.shape[0], weight.shape[1], -1)
    return np.all(zero_mask(flat, eps), axis=2)


def gemm_weight_kn(node: ir.Node, weight: np.ndarray) -> np.ndarray:
    """A Gemm/MatMul weight as [K (input features), N (output features)]."""
    if node.op_type == "Gemm" and _attr(node, "transB", 0):
        return weight.T
    return weight


# --------------------------------------------------------------------------- element-wise evaluators


def _hard_sigmoid(x, alpha, beta):
    return np.clip(alpha * x + beta, 0, 1)


def _unary(node: ir.Node) -> Callable[[np.ndarray], np.ndarray] | None:
    op = node.op_type
    if op in ("Identity", "Dropout"):
        return lambda x: x
    if op == "Relu":
        return lambda x: np.maximum(x, 0)
    if op == "LeakyRelu":
        alpha = _attr(node, "alpha", 0.01)
        return lambda x: np.where(x >= 0, x, x * np.float32(alpha))
    if op == "Elu":
        alpha = _attr(node, "alpha", 1.0)
        return lambda x: np.where(x >= 0, x, np.float32(alpha) * np.expm1(x))
    if op == "Selu":
        alpha, gamma = _attr(node, "alpha", 1.67326319217681884765625), _attr(node, "gamma", 1.05070102214813232421875)
        return lambda x: np.float32(gamma) * np.where(x > 0, x, np.float32(alpha) * np.expm1(x))
    if op == "Sigmoid":
        return scipy.special.expit
    if op == "HardSigmoid":
        alpha, beta = _attr(node, "alpha", 0.2), _attr(node, "beta", 0.5)
        return lambda x: _hard_sigmoid(x, np.float32(alpha), np.float32(beta))
    if op == "HardSwish":
        return lambda x: x * _hard_sigmoid(x, np.float32(1 / 6), np.float32(0.5))
    simple = {
        "Tanh": np.tanh,
        "Erf": scipy.special.erf,
        "Exp": np.exp,
        "Neg": np.negative,
        "Abs": np.abs,
        "Softplus": lambda x: np.logaddexp(x, 0),
        "Softsign": lambda x: x / (1 + np.abs(x)),
        "Sqrt": np.sqrt,
        "Reciprocal": np.reciprocal,
        "Floor": np.floor,
        "Ceil": np.ceil,
    }
    return simple.get(op)


_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Pow": np.power}
#: Ops that map a constant channel to the same constant, whatever the window.
_KEEPS_CONSTANT = {"GlobalAveragePool", "GlobalMaxPool", "MaxPool"}


# --------------------------------------------------------------------------- the analysis


class KnownValues:
    """Forward analysis of the graph and its subgraphs: which tensor entries are constants, and why.

    ``known[value]`` is a right-aligned broadcastable array (NaN = not constant).
    ``derived`` holds the values whose knowledge comes from zero weights (as opposed to
    ordinary constant subgraphs, which this pass must leave alone).
    """

    def __init__(self, model: ir.Model, eps: float = 0.0, value_shapes: Mapping[str, tuple] | None = None):
        self.model = model
        self.eps = eps
        self.shapes = dict(value_shapes or {})
        self.known: dict[ir.Value, Known] = {}
        self.derived: set[ir.Value] = set()
        self.constants: set[ir.Value] = set()
        for node in iter_nodes(model):  # sorted graphs; a subgraph's outer values come first
            self._visit(node)

    # -- queries ---------------------------------------------------------------------

    def get(self, value: ir.Value | None) -> Known | None:
        return None if value is None else self.known.get(value)

    def fully_known(self, value: ir.Value) -> bool:
        known = self.known.get(value)
        return known is not None and not np.any(np.isnan(known))

    def rank(self, value: ir.Value) -> int | None:
        shape = self.shape(value)
        return None if shape is None else len(shape)

    def shape(self, value: ir.Value) -> tuple | None:
        if value.name in self.shapes:
            return self.shapes[value.name]
        if value.shape is not None:
            return tuple(d if isinstance(d, int) else (str(d) if d.value is not None else None) for d in value.shape)
        return None

    # -- propagation -----------------------------------------------------------------

    def _input(self, value: ir.Value | None) -> Known | None:
        if value is None:
            return None
        if value in self.known:
            return self.known[value]
        c = constant(value)
        if c is None or not c.dtype.is_floating_point():
            return None
        array = c.numpy()
        if array.size > (1 << 16):  # no full copy of a large constant: only 'all zero' is kept
            if np.any(array):
                return None
            array = np.zeros((), np.float32)  # broadcasts to the tensor, right-aligned
        known = array.astype(np.float32, copy=False)
        self.known[value] = known
        self.constants.add(value)
        return known

    def _visit(self, node: ir.Node) -> None:
        if node.domain not in _DEFAULT_DOMAINS or not node.outputs:
            return
        out = node.outputs[0]
        if out.dtype is not None and not out.dtype.is_floating_point():
            return
        try:
            results = self._split(node) if node.op_type == "Split" else [self._evaluate(node)]
        except (ValueError, IndexError, TypeError):  # shapes that do not line up: not constant
            return
        inputs = [v for v in node.inputs if v is not None]
        if all(v in self.constants or (v not in self.derived and constant(v) is not None) for v in inputs):
            return  # an ordinary constant subgraph: not ours to touch
        for value, result in zip(node.outputs, results):
            result = _normalize(result)
            if result is not None:
                self.known[value] = result.astype(np.float32, copy=False)
                self.derived.add(value)

    def _evaluate(self, node: ir.Node) -> Known | None:
        op = node.op_type
        # layer weights are read by the handlers themselves, never as known values
        ins = [None if i == 1 and op in _LAYERS else self._input(v) for i, v in enumerate(node.inputs)]
        if op in ("Conv", "ConvTranspose"):
            return self._conv(node, ins)
        if op in ("Gemm", "MatMul"):
            return self._matmul(node, ins)
        if op == "BatchNormalization":
            return self._batch_norm(node, ins)
        if not ins:
            return None
        fn = _unary(node)
        if fn is not None:
            return None if ins[0] is None else fn(ins[0])
        if op in _BINARY and len(ins) == 2:
            return self._binary(op, ins[0], ins[1])
        if op == "PRelu":
            if ins[0] is None or ins[1] is None:
                return None
            return np.where(ins[0] < 0, ins[0] * ins[1], ins[0])
        if op == "Clip":
            lo = ins[1] if len(ins) > 1 and node.inputs[1] is not None else None
            hi = ins[2] if len(ins) > 2 and node.inputs[2] is not None else None
            if (len(ins) > 1 and node.inputs[1] is not None and lo is None) or (
                len(ins) > 2 and node.inputs[2] is not None and hi is None
            ):
                return None
            x = ins[0]
            if lo is not None:
                x = np.maximum(x, lo)
            if hi is not None:
                x = np.minimum(x, hi)
            return x
        if op == "Concat":  # any input may carry the knowledge
            return self._concat(node, ins)
        if ins[0] is None:
            return None
        if op in _KEEPS_CONSTANT:
            return ins[0]
        if op == "AveragePool":
            exact = not _has_padding(node) or _attr(node, "count_include_pad", 0) == 0
            return ins[0] if exact and not _attr(node, "ceil_mode", 0) else _zeros_only(ins[0])
        if op == "Resize":
            mode = _attr(node, "mode", "nearest")
            return ins[0] if mode in ("nearest", "linear") else _zeros_only(ins[0])
        if op == "Flatten":
            return self._flatten(node, ins[0])
        if op == "Reshape":
            return self._reshape(node, ins[0])
        return None

    def _binary(self, op: str, a: Known | None, b: Known | None) -> Known | None:
        if a is None and b is None:
            return None
        if op == "Mul":  # x * 0 == 0 for any finite x
            if a is None:
                return np.where(b == 0, np.float32(0), np.float32(np.nan))
            if b is None:
                return np.where(a == 0, np.float32(0), np.float32(np.nan))
        if a is None or b is None:
            return None
        with np.errstate(all="ignore"):
            return _BINARY[op](a, b)

    def _batch_norm(self, node: ir.Node, ins: list[Known | None]) -> Known | None:
        if len(ins) < 5 or any(v is None for v in ins[1:5]) or len(node.outputs) > 1 and any(o.uses() for o in node.outputs[1:]):
            return None
        scale, bias, mean, var = (np.asarray(v).reshape(-1) for v in ins[1:5])
        rank = self.rank(node.inputs[0])
        if rank is None or rank < 2:
            return None
        x = _channel_vector(ins[0], rank, scale.size)
        if x is None:
            return None
        eps = np.float32(_attr(node, "epsilon", 1e-5))
        with np.errstate(all="ignore"):
            y = (x - mean) / np.sqrt(var + eps) * scale + bias
        y = np.where(scale == 0, bias, y)  # gamma == 0 emits beta whatever the input
        return _per_channel(y.astype(np.float32), rank)

    def _conv(self, node: ir.Node, ins: list[Known | None]) -> Known | None:
        w = constant(node.inputs[1]) if len(node.inputs) > 1 else None
        if w is None:
            return None
        weight = w.numpy()
        group = _attr(node, "group", 1)
        spatial = weight.ndim - 2
        rank = spatial + 2
        transpose = node.op_type == "ConvTranspose"
        if transpose:  # weight [Cin, Cout/group, k...]: view it as [Cout, Cin/group, k...]
            cin = weight.shape[0]
            cout = weight.shape[1] * group
            per_group = weight.reshape(group, cin // group, weight.shape[1], -1)
            weight = per_group.transpose(0, 2, 1, 3).reshape(cout, cin // group, -1)
        cout, cin_g = weight.shape[0], weight.shape[1]
        zero = conv_zero_filters(weight, self.eps)  # [Cout, Cin/g]
        x = _channel_vector(ins[0], rank, cin_g * group)
        if x is None:
            x = np.full(cin_g * group, np.nan, np.float32)
        # input channel read by output o at local index j: group(o) * cin_g + j
        groups_of_out = np.arange(cout) // (cout // group)
        local = x[groups_of_out[:, None] * cin_g + np.arange(cin_g)[None, :]]  # [Cout, Cin/g]
        if transpose or _has_padding(node):
            usable = local == 0  # a constant reaches the borders only when it is zero
        else:
            usable = ~np.isnan(local)
        known = np.all(zero | usable, axis=1)
        if not known.any():
            return None
        kernel_sum = weight.reshape(cout, cin_g, -1).sum(axis=2, dtype=np.float32)
        contrib = np.where(zero, 0, kernel_sum * np.where(np.isnan(local), 0, local)).sum(axis=1)
        bias = ins[2].reshape(-1) if len(ins) > 2 and ins[2] is not None else np.zeros(cout, np.float32)
        if len(node.inputs) > 2 and node.inputs[2] is not None and ins[2] is None:
            return None
        out = np.where(known, contrib + bias, np.nan).astype(np.float32)
        return _per_channel(out, rank)

    def _matmul(self, node: ir.Node, ins: list[Known | None]) -> Known | None:
        if len(node.inputs) < 2:
            return None
        w = constant(node.inputs[1])
        if w is None or len(w.shape) != 2 or (node.op_type == "Gemm" and _attr(node, "transA", 0)):
            return None
        weight = gemm_weight_kn(node, w.numpy())  # [K, N]
        k, n = weight.shape
        x = _feature_vector(ins[0], k)
        if x is None:
            return None
        zero = zero_mask(weight, self.eps)
        known = np.all(zero | ~np.isnan(x)[:, None], axis=0)
        if not known.any():
            return None
        out = np.where(zero, 0, weight * np.where(np.isnan(x), 0, x)[:, None]).sum(axis=0, dtype=np.float32)
        if node.op_type == "Gemm":
            out = out * np.float32(_attr(node, "alpha", 1.0))
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                if ins[2] is None:
                    return None
                out = out + np.float32(_attr(node, "beta", 1.0)) * ins[2]
        mask = known if out.ndim < 2 else np.broadcast_to(known, out.shape)
        return np.where(mask, out, np.nan).astype(np.float32)

    def _full_rank(self, value: ir.Value, known: Known | None, axis: int) -> np.ndarray | None:
        """``known`` at the value's full rank, varying along ``axis`` only (NaN-filled if None)."""
        shape = self.shape(value)
        if shape is None:
            return None
        if known is None:
            if not isinstance(shape[axis], int):
                return None
            dims = [1] * len(shape)
            dims[axis] = shape[axis]
            return np.full(dims, np.nan, np.float32)
        if known.ndim > len(shape):
            return None
        full = known.reshape((1,) * (len(shape) - known.ndim) + known.shape)
        if any(size != 1 for i, size in enumerate(full.shape) if i != axis):
            return None
        if full.shape[axis] == 1 and shape[axis] != 1:
            if not isinstance(shape[axis], int):
                return None
            full = np.repeat(full, shape[axis], axis=axis)
        return full

    def _concat(self, node: ir.Node, ins: list[Known | None]) -> Known | None:
        rank = self.rank(node.outputs[0])
        if rank is None or all(k is None for k in ins):
            return None
        axis = _attr(node, "axis", 0) % rank
        parts = [self._full_rank(v, k, axis) for v, k in zip(node.inputs, ins)]
        if any(p is None for p in parts):
            return None
        return np.concatenate(parts, axis=axis)

    def _split(self, node: ir.Node) -> list[Known | None]:
        x = node.inputs[0]
        known, rank = self.get(x), self.rank(x)
        if known is None or rank is None:
            return []
        axis = _attr(node, "axis", 0) % rank
        full = self._full_rank(x, known, axis)
        sizes = _attr(node, "split", None)
        if sizes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
            c = constant(node.inputs[1])
            sizes = None if c is None else [int(v) for v in c.numpy().reshape(-1)]
        if full is None:
            return []
        if sizes is None:
            step = -(-full.shape[axis] // len(node.outputs))
            sizes = [min(step, full.shape[axis] - i * step) for i in range(len(node.outputs))]
        bounds = np.cumsum([0, *sizes])
        return [np.take(full, np.arange(bounds[i], bounds[i + 1]), axis=axis) for i in range(len(node.outputs))]

    def _flatten(self, node: ir.Node, x: Known | None) -> Known | None:
        shape = self.shape(node.inputs[0])
        if x is None or shape is None:
            return None
        axis = _attr(node, "axis", 1) % max(len(shape), 1)
        return _collapse(x, shape, axis)

    def _reshape(self, node: ir.Node, x: Known | None) -> Known | None:
        """Reshapes that keep the leading (batch) dimension and flatten the rest."""
        in_shape, out_shape = self.shape(node.inputs[0]), self.shape(node.outputs[0])
        if x is None or in_shape is None or out_shape is None or len(out_shape) != 2:
            return None
        if not isinstance(out_shape[1], int):
            return None
        return _collapse(x, in_shape, 1)


def _feature_vector(known: Known | None, size: int) -> np.ndarray | None:
    """Per-feature values along the last axis (NaN = unknown), or None if they vary elsewhere."""
    if known is None:
        return np.full(size, np.nan, np.float32)
    if known.size == 1:
        return np.full(size, known.reshape(-1)[0], np.float32)
    if known.ndim == 0 or known.shape[-1] != size or known.size != size:
        return None
    return known.reshape(-1)


def _zeros_only(x: Known | None) -> Known | None:
    return None if x is None else np.where(x == 0, np.float32(0), np.float32(np.nan))


def _collapse(x: Known, shape: tuple, axis: int) -> Known | None:
    """``x`` for a tensor of ``shape`` flattened from ``axis`` on (dims there must be static)."""
    trailing = shape[axis:]
    if not all(isinstance(d, int) for d in trailing):
        return None
    lead = x.ndim - len(trailing)
    if lead > 0:
        if any(d != 1 for d in x.shape[:lead]):
            return None
        x = x.reshape(x.shape[lead:])
    return np.broadcast_to(x, trailing).reshape(-1)


def value_shapes(model: ir.Model) -> dict[str, tuple]:
    """Inferred shapes by value name, subgraphs included (analysis only: the model is not changed)."""
    try:
        proto = shapes.infer(model, strict=False)
    except shapes.ShapeInferenceError:
        return {}
    found: dict[str, tuple] = {}
    graphs = [proto.graph]
    while graphs:
        graph = graphs.pop()
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            tt = vi.type.tensor_type
            if tt.HasField("shape"):
                found[vi.name] = tuple(
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim
                )
        graphs += [g for node in graph.node for a in node.attribute for g in ([a.g] if a.HasField("g") else a.graphs)]
    return found


# --------------------------------------------------------------------------- graph edits


def _same_shape(a: tuple | None, b: tuple | None) -> bool:
    return a is not None and b is not None and len(a) == len(b) and all(x is not None and x == y for x, y in zip(a, b))


def _fit_rank(array: np.ndarray, rank: int) -> np.ndarray | None:
    """Drop leading size-1 axes so ``array`` has at most ``rank`` dims (None if it cannot)."""
    while array.ndim > rank:
        if array.shape[0] != 1:
            return None
        array = array[0]
    return array


#: (op, index of the known operand) -> the known value that makes the op an identity on the other.
_NEUTRAL = {("Add", 0): 0.0, ("Add", 1): 0.0, ("Sub", 1): 0.0, ("Mul", 0): 1.0, ("Mul", 1): 1.0, ("Div", 1): 1.0}


class Editor:
    """Graph edits shared by the branch and channel steps, with dead-code removal afterwards.

    New constants are main-graph initializers, which subgraph nodes read as outer-scope values.
    """

    def __init__(self, model: ir.Model):
        self.model = model
        self.graph = model.graph
        self.touched: list[ir.Node] = []  # producers whose outputs may have lost their last use
        self.prepared = False  # biases were added or copied for folding (outputs unchanged)

    def new_constant(self, name_hint: str, array: np.ndarray) -> ir.Value:
        return add_initializer(self.graph, name_hint, np.ascontiguousarray(array))

    def replace_input(self, node: ir.Node, index: int, value: ir.Value) -> None:
        old = node.inputs[index]
        node.replace_input_with(index, value)
        if old is not None and old.producer() is not None:
            self.touched.append(old.producer())
        elif old is not None and old.is_initializer():
            drop_if_unused(old)

    def bypass(self, node: ir.Node, keep: ir.Value) -> None:
        """Route every use of ``node``'s output to ``keep`` (an Identity if it is a graph output)."""
        out = node.outputs[0]
        if out.is_graph_output():
            identity = ir.node("Identity", [keep], name=f"{node.name or 'node'}_bypass")
            self.touched.extend(v.producer() for v in node.inputs if v is not None and v.producer() is not None)
            ir.convenience.replace_nodes_and_values(node.graph, node, [node], [identity], [out], [identity.outputs[0]])
            return
        ir.convenience.replace_all_uses_with(out, keep)
        self.touched.append(node)

    def remove_dead(self) -> int:
        """Remove nodes left without uses (transitively) and the initializers only they read."""
        removed = remove_dead(self.touched)
        self.touched.clear()
        return removed


def fold_branches(model: ir.Model, known: KnownValues, editor: Editor, *, apply: bool = True) -> int:
    """Replace fully known (zero-derived) tensors meeting live ones in element-wise ops.

    ``y = x + branch`` with a known branch becomes ``x + constant`` (or ``x`` when the constant
    is 0; likewise ``x * 1``); the branch's nodes become dead. Returns the number of edits
    (only counted when ``apply`` is False).
    """
    edits = 0
    shared: dict[ir.Value, ir.Value] = {}
    for node in list(iter_nodes(model)):
        if node.op_type not in _BINARY or node.domain not in _DEFAULT_DOMAINS or len(node.inputs) != 2:
            continue
        out = node.outputs[0]
        if known.fully_known(out) and out in known.derived:
            continue  # still constant downstream: the edit belongs further on
        for index in (0, 1):
            value, other = node.inputs[index], node.inputs[1 - index]
            if value is None or other is None or value not in known.derived or not known.fully_known(value):
                continue
            if known.fully_known(other) or not _same_shape(known.shape(out), known.shape(other)):
                continue  # the constant must not decide the output's shape
            array = _fit_rank(known.get(value), len(known.shape(out)))
            if array is None:
                continue
            neutral = _NEUTRAL.get((node.op_type, index))
            if apply and neutral is not None and np.all(array == neutral):
                editor.bypass(node, other)
            elif apply:
                if value not in shared:
                    dtype = (value.dtype or other.dtype or ir.DataType.FLOAT).numpy()
                    shared[value] = editor.new_constant(f"{value.name}_folded", array.astype(dtype))
                editor.replace_input(node, index, shared[value])
            edits += 1
            break
    return edits


# --------------------------------------------------------------------------- consumers absorb constants


def input_feature_axis(node: ir.Node) -> int | None:
    """The axis of a consumer's weight that indexes its input features (channels)."""
    if node.op_type == "Conv":
        return 1
    if node.op_type == "Gemm":
        return 1 if _attr(node, "transB", 0) else 0
    if node.op_type == "MatMul":
        return 0
    return None


def absorb_constant_features(node: ir.Node, features: np.ndarray, values: np.ndarray, editor: Editor) -> None:
    """Add the contribution of constant input ``features`` (= ``values``) to ``node``'s bias.

    Call before those features are sliced away; ``_absorbs_nonzero`` must have said yes
    for non-zero values.
    """
    live = values != 0
    if not np.any(live):
        return
    features, values = np.asarray(features)[live], values[live].astype(np.float32)
    axis = input_feature_axis(node)
    weight = np.moveaxis(constant(node.inputs[1]).numpy(), axis, 0)[features]  # [F, ...]
    if node.op_type == "Conv":
        contrib = np.einsum("f,fo->o", values, weight.reshape(len(features), weight.shape[1], -1).sum(axis=2))
        _add_to_input(node, 2, contrib, editor)
    elif node.op_type == "Gemm":  # Y = alpha*A@B + beta*C  ->  C' = beta*C + alpha*contrib, beta = 1
        contrib = values @ weight * np.float32(_attr(node, "alpha", 1.0))
        _add_to_input(node, 2, contrib, editor, scale=_attr(node, "beta", 1.0))
        node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
    else:  # MatMul: into the bias Add that follows, or a new one
        contrib = values @ weight
        bias_add = _matmul_bias(node)
        if bias_add is not None:
            add, index = bias_add
            _add_to_input(add, index, contrib, editor)
        else:
            _append_bias_add(node, contrib, editor)


def _matmul_bias(node: ir.Node) -> tuple[ir.Node, int] | None:
    """The ``Add(MatMul(x, W), b)`` that follows ``node`` with a constant per-feature ``b``."""
    out = node.outputs[0]
    uses = out.uses()
    if len(uses) != 1 or out.is_graph_output():
        return None
    add = uses[0].node
    if add.op_type != "Add" or add.domain not in _DEFAULT_DOMAINS or add.graph is not node.graph:
        return None
    index = 1 - uses[0].idx
    bias, weight = constant(add.inputs[index]), constant(node.inputs[1])
    if bias is None or weight is None or not bias.can_replace or bias.shape != weight.shape[-1:]:
        return None
    return add, index


def _add_to_input(node: ir.Node, index: int, contrib: np.ndarray, editor: Editor, scale: float = 1.0) -> None:
    """``node.inputs[index] = scale * node.inputs[index] + contrib`` on a constant input (created
    if missing, copied if shared). ``scale`` 0 drops the old values (inf/NaN included)."""
    value = node.inputs[index] if len(node.inputs) > index else None
    if value is None:
        array = contrib.astype(_output_dtype(node))
    else:
        current = constant(value)
        old = current.numpy()
        if scale != 1:
            old = np.zeros_like(old) if scale == 0 else old * old.dtype.type(scale)
        array = (old + contrib).astype(old.dtype)
        if array.shape != old.shape and old.size == 1:
            array = array.reshape(-1)
    if value is not None and _private(value):
        constant(value).replace(array)
        return
    fresh = editor.new_constant(value.name if value is not None else f"{node.name or 'node'}_bias", array)
    if value is None:
        node.resize_inputs(index + 1)
        node.replace_input_with(index, fresh)
    else:
        editor.replace_input(node, index, fresh)


def _output_dtype(node: ir.Node) -> np.dtype:
    """The numpy dtype of a layer's output (its bias must match it): its own, else its weight's."""
    dtype = node.outputs[0].dtype or node.inputs[1].dtype
    return np.dtype(dtype.numpy()) if dtype is not None else np.dtype(np.float32)


def _private(value: ir.Value) -> bool:
    """True when ``value``'s constant storage is read by this one use only (safe to rewrite)."""
    c = constant(value)
    if c is None or not c.can_replace or not c.exclusive or len(value.uses()) != 1:
        return False
    return all(len(v.uses()) == 1 and not v.is_graph_output() for v in c.storage_values)


def _append_bias_add(node: ir.Node, contrib: np.ndarray, editor: Editor) -> None:
    out = node.outputs[0]
    bias = editor.new_constant(f"{node.name or 'matmul'}_bias", contrib.astype(_output_dtype(node)))
    add = ir.node("Add", [out, bias], name=f"{node.name or 'matmul'}_bias_add")
    users = list(out.uses())
    node.graph.insert_after(node, add)
    for use in users:
        use.node.replace_input_with(use.idx, add.outputs[0])
    add.outputs[0].dtype = out.dtype
    add.outputs[0].shape = out.shape


# --------------------------------------------------------------------------- channel groups


_LAYERS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


@dataclasses.dataclass
class GroupPlan:
    """Which slots of a channel group go, and the constants consumers must absorb first."""

    group: channels.ChannelGroup
    removed: np.ndarray  # slot indices
    zero_slots: int  # slots whose channels are constant or unread (removable or not)
    #: (consumer node, input features, their constant values) to fold before slicing
    folds: list[tuple[ir.Node, np.ndarray, np.ndarray]]
    blocked: list[str]  # why some constant or unread channels stay
    #: slots with an all-zero filter in some layer (their constant may not reach the consumers)
    zero_filters: int = 0


def _consumer_features(node: ir.Node, member: channels.Member, known: KnownValues) -> np.ndarray:
    """Known values (NaN = unknown) of every input feature of a consumer along its weight axis."""
    size = member.tensor.shape[member.axis]
    x = node.inputs[0]
    if node.op_type in ("Conv", "ConvTranspose"):
        vec = _channel_vector(known.get(x), known.rank(x), size, axis=1)
    else:
        vec = _feature_vector(known.get(x), size)
    return np.full(size, np.nan, np.float32) if vec is None else vec


def _absorbs_nonzero(node: ir.Node) -> bool:
    """Whether a consumer can take a non-zero constant input feature into its bias exactly."""
    if node.op_type == "Conv":
        return _attr(node, "group", 1) == 1 and not _has_padding(node)
    if node.op_type == "Gemm":
        return not _attr(node, "transA", 0)
    if node.op_type == "MatMul":
        return _matmul_bias(node) is not None or not node.outputs[0].is_graph_output()
    return False


def _zero_filter_slots(group: channels.ChannelGroup, eps: float) -> int:
    """How many slots have an all-zero filter in at least one layer producing them."""
    found = np.zeros(group.size, dtype=bool)
    for member in group.producers:
        if member.role != "weight" or member.node.op_type not in _LAYERS:
            continue
        filters = np.moveaxis(member.tensor.numpy(), member.axis, 0)[member.positions]
        zero = np.all(zero_mask(filters.reshape(len(member.positions), -1), eps), axis=1)
        slot_zero = np.ones(group.size, dtype=bool)
        np.logical_and.at(slot_zero, member.slots, zero)
        found |= slot_zero & np.isin(np.arange(group.size), member.slots)
    return int(found.sum())


def plan_group(
    group: channels.ChannelGroup, known: KnownValues, eps: float, analysis: channels.ChannelAnalysis | None = None
) -> GroupPlan:
    """Slots every consumer either ignores (zero input columns) or can absorb as a constant.

    All of them go only where ``analysis`` says the group can leave whole (its channels reach
    the rest of the graph through Concat inputs alone, which are dropped); otherwise one stays."""
    plan = _plan_group(group, known, eps, analysis)
    plan.zero_filters = _zero_filter_slots(group, eps)
    return plan


def _plan_group(
    group: channels.ChannelGroup, known: KnownValues, eps: float, analysis: channels.ChannelAnalysis | None
) -> GroupPlan:
    ok = np.ones(group.size, dtype=bool)
    any_zero = np.ones(group.size, dtype=bool)
    blocked: list[str] = []
    candidates = []
    contracted = [n for n in group.nodes if n.op_type == "MatMul" and constant(n.inputs[1]) is None]
    if contracted or not group.consumers:
        why = f"channels contracted by {contracted[0].name}" if contracted else "no consumer reads them"
        return GroupPlan(group, np.zeros(0, np.int64), 0, [], [why])
    for member in group.consumers:
        node = member.node
        columns = np.moveaxis(member.tensor.numpy(), member.axis, 0)[member.positions]
        unread = np.all(zero_mask(columns.reshape(len(member.positions), -1), eps), axis=1)
        values = _consumer_features(node, member, known)[member.positions]
        constant_zero = values == 0
        foldable = ~np.isnan(values) & _absorbs_nonzero(node)
        fine = unread | constant_zero | foldable
        slot_ok = np.ones(group.size, dtype=bool)
        np.logical_and.at(slot_ok, member.slots, fine)
        slot_any = np.ones(group.size, dtype=bool)
        np.logical_and.at(slot_any, member.slots, unread | ~np.isnan(values))
        if np.any(slot_any & ~slot_ok):
            blocked.append(f"a constant reaches {node.name} ({node.op_type} with padding or no bias to fold into)")
        ok &= slot_ok
        any_zero &= slot_any
        fold = ~unread & ~constant_zero
        candidates.append((node, member, fold, values))
    if ok.all() and not (analysis is not None and analysis.can_empty([group])):  # keep the first one
        ok[0] = False
        blocked.append("every channel is removable; one is kept")
    removed = np.flatnonzero(ok)
    folds = []
    for node, member, fold, values in candidates:
        take = fold & ok[member.slots]
        if take.any():
            folds.append((node, member.positions[take], values[take]))
    return GroupPlan(group, removed, int(any_zero.sum()), folds, blocked)


def _needs_private_bias(node: ir.Node) -> bool:
    """True when folding into ``node`` needs a bias it does not have as a private [N] vector."""
    if node.op_type == "MatMul":
        found = _matmul_bias(node)
        return found is None or not _private(found[0].inputs[found[1]])
    index = 2
    value = node.inputs[index] if len(node.inputs) > index else None
    if value is None or not _private(value):
        return True
    return len(constant(value).shape) != 1


def prepare_bias(node: ir.Node, editor: Editor) -> None:
    """Give ``node`` a private per-feature bias (zeros where it had none); outputs do not change."""
    editor.prepared = True
    shape = constant(node.inputs[1]).shape
    width = shape[0] if node.op_type == "Conv" or (node.op_type == "Gemm" and _attr(node, "transB", 0)) else shape[1]
    if node.op_type == "MatMul":
        found = _matmul_bias(node)
        if found is None:
            _append_bias_add(node, np.zeros(width, _output_dtype(node)), editor)
        else:
            add, index = found
            editor.replace_input(add, index, editor.new_constant(add.inputs[index].name, constant(add.inputs[index]).numpy()))
        return
    value = node.inputs[2] if len(node.inputs) > 2 else None
    array = np.zeros(width, _output_dtype(node))
    if value is not None:
        old = constant(value).numpy()
        if node.op_type == "Gemm" and old.ndim == 2 and old.shape[0] != 1:
            return  # a per-row bias [M, N] stays as it is; folding adds to it in place
        array = np.broadcast_to(old, (width,)).astype(old.dtype)
    fresh = editor.new_constant(value.name if value is not None else f"{node.name or 'node'}_bias", array)
    if value is None:
        node.resize_inputs(3)
        node.replace_input_with(2, fresh)
    else:
        editor.replace_input(node, 2, fresh)


def remove_channels(
    model: ir.Model, eps: float, editor: Editor, ctx: PassContext, *, dry_run: bool = False
) -> tuple[list[GroupPlan], dict, dict, int]:
    """Remove the removable slots of every channel group.

    Returns the plans of groups holding constant or unread channels, the frozen groups that
    hold some (with the reason), the analysis' MACs/params prediction for the removal, and how
    many nodes left with groups that went whole.
    """
    layers = (n for n in iter_nodes(model) if n.op_type in _LAYERS and len(n.inputs) > 1)
    if not any(constant(n.inputs[1]) is not None for n in layers):
        return [], {}, {}, 0  # nothing creates channels (channels.analyze needs at least one layer)
    for attempt in range(2):
        analysis = channels.analyze(model)
        known = KnownValues(model, eps, value_shapes(model))
        groups = ctx.progress(analysis.groups, "channel groups", total=len(analysis.groups))
        plans = [plan_group(g, known, eps, analysis) for g in groups]
        emptied: list[channels.ChannelGroup] = []  # groups leaving whole must be able to together
        for i, plan in enumerate(plans):
            if len(plan.removed) == plan.group.size:
                if emptied and not analysis.can_empty(emptied + [plan.group]):
                    plans[i] = plan_group(plan.group, known, eps)  # one channel stays
                else:
                    emptied.append(plan.group)
        plans = [p for p in plans if p.zero_slots or p.zero_filters]
        active = [p for p in plans if len(p.removed)]
        unprepared = {id(n): n for p in active for n, _, _ in p.folds if _needs_private_bias(n)}
        if not unprepared or dry_run:
            break
        if attempt == 1:  # preparing did not help: keep those groups whole
            active = [p for p in active if not any(_needs_private_bias(n) for n, _, _ in p.folds)]
            break
        for node in unprepared.values():
            prepare_bias(node, editor)
    frozen_zero = _frozen_with_zeros(analysis, known, eps)
    keep = {p.group: np.setdiff1d(np.arange(p.group.size), p.removed) for p in active}
    if not active:
        return plans, frozen_zero, {}, 0
    predicted = analysis.predict(keep)
    if dry_run:
        return plans, frozen_zero, predicted, 0
    for plan in active:
        for node, features, values in plan.folds:
            absorb_constant_features(node, features, values, editor)
    return plans, frozen_zero, predicted, analysis.apply(keep)["nodes_removed"]


def _frozen_with_zeros(analysis: channels.ChannelAnalysis, known: KnownValues, eps: float) -> dict:
    """Frozen groups whose channels include constant or unread ones, with the freeze reason."""
    found = {}
    for frozen in analysis.frozen:
        plan = plan_group(frozen.group, known, eps)
        if plan.zero_slots or plan.zero_filters:
            found[frozen.group.name] = frozen.reason
    return found


# --------------------------------------------------------------------------- the pass


class Zeros(Pass):
    name = "zeros"
    summary = "remove exactly-zero channels, neurons and branches (lossless: act(bias) is folded into consumers)"
    lossless = True

    class Options(Pass.Options):
        eps: float = option(0.0, "weights with |w| <= eps count as zero (0 keeps the pass exact)")
        branches: bool = option(True, "replace branches whose weights are all zero by constants")
        channels: bool = option(True, "remove zero channels from their channel groups")
        dry_run: bool = option(False, "only report what would be removed (with predicted MACs/params)")

    def validate_options(self) -> None:
        if not (self.options.eps >= 0 and math.isfinite(self.options.eps)):
            raise UsageError(f"zeros:eps must be a finite number >= 0, got {self.options.eps}")
        # eps > 0 also removes weights that are not exactly zero: validate it as a lossy pass.
        self.lossless = self.options.eps == 0

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        eps, dry_run = self.options.eps, self.options.dry_run
        editor = Editor(model)
        details: dict = {"branch_edits": 0, "channels_removed": 0, "groups_changed": 0, "nodes_removed": 0}
        notes: list[str] = []
        bytes_before = weight_bytes(model)
        if self.options.branches:
            known = KnownValues(model, eps, value_shapes(model))
            details["branch_edits"] = fold_branches(model, known, editor, apply=not dry_run)
            details["nodes_removed"] += editor.remove_dead()
        if self.options.channels:
            plans, frozen, predicted, gone = remove_channels(model, eps, editor, ctx, dry_run=dry_run)
            details["nodes_removed"] += gone
            changed = [p for p in plans if len(p.removed)]
            details["channels_removed"] = int(sum(len(p.removed) for p in changed))
            details["groups_changed"] = len(changed)
            details["groups"] = {
                p.group.name: {"kind": p.group.kind, "size": p.group.size, "removed": len(p.removed), "zero": p.zero_slots}
                for p in plans
            }
            if predicted:
                details["predicted"] = predicted  # one sample, from the channel analysis
            for p in plans:
                if p.zero_slots > len(p.removed):
                    kept = p.zero_slots - len(p.removed)
                    notes.append(f"{p.group.name}: {kept} zero channel(s) kept: {'; '.join(dict.fromkeys(p.blocked))}")
                if p.zero_filters > p.zero_slots:
                    untraced = p.zero_filters - p.zero_slots
                    notes.append(
                        f"{p.group.name}: {untraced} zero filter(s) kept: what they emit is no longer constant "
                        "where it is consumed (a padded depthwise conv, a data-dependent gate, an unsupported op)"
                    )
            for name, reason in frozen.items():
                notes.append(f"{name}: zero channels kept, group frozen ({reason})")
            details["nodes_removed"] += editor.remove_dead()
        found = f"{details['channels_removed']} channels from {details['groups_changed']} groups, {details['branch_edits']} zero branches"
        if dry_run:
            return PassResult(False, f"dry run: would remove {found}", details, notes)
        if not (details["branch_edits"] or details["channels_removed"] or editor.prepared):
            return PassResult(False, "no removable zero structure found", details, notes)
        shapes.refresh_shapes(model)
        details["weight_bytes_saved"] = bytes_before - weight_bytes(model)
        return PassResult(True, f"removed {found}, {details['nodes_removed']} nodes", details, notes)
