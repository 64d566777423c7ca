"""Calibration data and the capture of intermediate tensors through onnxruntime.

Data-driven passes (activation criteria, Wanda, reconstruction, OBS) need the tensors flowing
into and out of layers. ``Calibration.capture`` exposes the requested values as extra graph
outputs for one session, runs every sample, and returns them concatenated along axis 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from . import model_io, runtime, shapes
from .errors import ModelError
from .inputs import Sample


class Calibration:
    """Calibration samples (feeds keyed by input name) shared by every data-driven pass."""

    def __init__(self, samples: Sequence[Sample]):
        if not samples:
            raise ValueError("calibration needs at least one sample")
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def iter_capture(self, model: ir.Model, values: Sequence[ir.Value]) -> Iterator[dict[str, np.ndarray]]:
        """For each sample, the arrays of ``values`` (keyed by value name)."""
        values = _unique(values)
        feeds_only = {v.name for v in values if v.is_graph_input()}
        computed = [v for v in values if v.name not in feeds_only]
        with typed_for_capture(model, computed), runtime.session(
            model, "basic", extra_outputs=computed, spinning=False
        ) as sess:
            for sample in self.samples:
                out = runtime.run(sess, sample, [v.name for v in computed]) if computed else {}
                for name in feeds_only:
                    out[name] = sample[name]
                yield out

    def staged(self, model: ir.Model) -> StagedCapture:
        """Captures that run only the part of ``model`` since the previous one (see StagedCapture)."""
        return StagedCapture(self, model)

    def capture(self, model: ir.Model, values: Sequence[ir.Value]) -> dict[str, np.ndarray | list[np.ndarray]]:
        """The arrays of ``values`` over all samples, concatenated along axis 0; a value whose
        shape differs between samples beyond axis 0 (samples of different sizes) comes as the
        list of per-sample arrays."""
        collected: dict[str, list[np.ndarray]] = {}
        for out in self.iter_capture(model, values):
            for name, arr in out.items():
                collected.setdefault(name, []).append(arr)
        return {name: _concat(arrs) for name, arrs in collected.items()}


def _concat(arrays: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    if arrays[0].ndim == 0:
        return np.stack(arrays) if all(a.ndim == 0 for a in arrays) else arrays
    if len({(a.ndim, a.shape[1:]) for a in arrays}) > 1:
        return arrays
    return np.concatenate(arrays, axis=0)


def _unique(values: Sequence[ir.Value]) -> list[ir.Value]:
    seen: set[int] = set()
    out = []
    for v in values:
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


@contextlib.contextmanager
def typed_for_capture(model: ir.Model, values: Sequence[ir.Value], dtypes: dict[str, int] | None = None):
    """Captured values become graph outputs, which need an element type; a model without
    value_info has none on intermediate values (and guessing from a node's first input gets
    Reshape and Cast wrong). Untyped ones get onnx inference's type (activations: float), or
    ``dtypes``' (value name → element type) when given, for the block only: the model's own
    annotations are left as they were."""
    untyped = [v for v in values if v.dtype is None]
    if untyped and dtypes is None:
        dtypes = inferred_dtypes(model)
    for value in untyped:
        value.dtype = ir.DataType(dtypes.get(value.name) or ir.DataType.FLOAT)
    try:
        yield
    finally:
        for value in untyped:
            value.type = None


def inferred_dtypes(model: ir.Model) -> dict[str, int]:
    """Element type of every value onnx inference types (value name → TensorProto type)."""
    try:
        proto = shapes.infer(model, strict=False)
    except shapes.ShapeInferenceError:
        return {}
    return {vi.name: vi.type.tensor_type.elem_type for vi in proto.graph.value_info}


# --------------------------------------------------------------------------- staged capture

#: Bytes of cut tensors (all samples) a staged capture may hold; above it, whole-model runs.
FRONTIER_BUDGET_BYTES = 1 << 30
#: A segment's weights above this go through whole-model runs (which share large weights).
SEGMENT_WEIGHT_LIMIT_BYTES = 1 << 30


class StagedCapture:
    """Captures for a model whose weights change front to back between captures (reconstruction
    refits layers wave by wave): each capture runs only the nodes between the last *cut* and
    the values asked for, fed by the tensors that cross the cut (kept per sample from the
    previous capture), instead of the whole model.

    onnxruntime executes every node of a session even when only an early tensor is fetched, so
    one whole-model run per wave made captures grow with depth² (17 waves on ResNet-18, ~50 on
    ResNet-50). ``iter_capture(values, changing)`` names the nodes whose weights may still
    change after it (the layers not refit yet); the cut advances to the first of them, so every
    node before the cut is final and its outputs can be reused. Weights and values computed
    from weights alone (Constant nodes, weight transposes) are never cut: each segment embeds
    them, current. Models with subgraphs (If/Loop), cut tensors over FRONTIER_BUDGET_BYTES or
    segments over SEGMENT_WEIGHT_LIMIT_BYTES of weights fall back to whole-model runs.
    """

    def __init__(self, calibration: Calibration, model: ir.Model):
        self.calibration, self.model = calibration, model
        self.order = list(model.graph)
        self.index = {id(n): i for i, n in enumerate(self.order)}
        self.cut = 0
        self.frontier: list[dict[str, np.ndarray]] = [dict(s) for s in calibration.samples]
        self._dtypes: dict[str, int] | None = None
        inputs = {v.name for v in model.graph.inputs}
        self.static = self._static_values()
        self.staged = (
            not any(_has_subgraph(n) for n in self.order)
            and not any(v.name in inputs for v in model.graph.initializers.values())
            and all(v.name for n in self.order for v in n.outputs if v is not None)
        )

    def _static_values(self) -> set[int]:
        """Values computed from weights alone (initializers, Constant nodes and what follows)."""
        static = {id(v) for v in self.model.graph.initializers.values()}
        for node in self.order:
            if all(v is None or id(v) in static for v in node.inputs):
                static.update(id(v) for v in node.outputs)
        return static

    def iter_capture(self, values: Sequence[ir.Value], changing: Sequence[ir.Node] = ()) -> Iterator[dict[str, np.ndarray]]:
        """For each sample, the arrays of ``values``; ``changing``: nodes that may still change."""
        values = _unique(values)
        if self.staged and list(self.model.graph) == self.order and all(id(n) in self.index for n in changing):
            new_cut = min((self.index[id(n)] for n in changing), default=len(self.order))
            if new_cut >= self.cut:
                segment = self._segment(values, new_cut)
                opened = self._open(segment) if segment is not None else None
                if opened is not None:
                    yield from self._run_segment(values, new_cut, opened, *segment[3:])
                    return
        self.staged = False  # from here on, whole-model runs
        yield from self._whole(values)

    def _segment(self, values: Sequence[ir.Value], new_cut: int):
        """The nodes to run (topological order), their cut inputs and computed outputs."""
        crossing = self._crossing(new_cut)
        wanted = [v for v in list(values) + crossing if not self._in_frontier(v)]
        needed: set[int] = set()
        stack = list(wanted)
        seen: set[int] = set()
        inputs: dict[str, ir.Value] = {}
        while stack:
            value = stack.pop()
            if id(value) in seen:
                continue
            seen.add(id(value))
            node = value.producer()
            if self._in_frontier(value):
                inputs[value.name] = value
                continue
            if node is None:  # an initializer
                continue
            needed.add(id(node))
            stack.extend(v for v in node.inputs if v is not None)
        if any(name not in self.frontier[0] for name in inputs):
            return None  # a value before the cut that was not kept (nothing after the cut used it)
        nodes = [n for n in self.order if id(n) in needed]
        weights = [v for v in self.model.graph.initializers.values() if any(id(u.node) in needed for u in v.uses())]
        if sum(v.const_value.nbytes for v in weights if v.const_value is not None) > SEGMENT_WEIGHT_LIMIT_BYTES:
            return None
        return nodes, weights, list(inputs.values()), wanted, crossing

    def _is_static(self, value: ir.Value) -> bool:
        return id(value) in self.static or value.is_initializer()  # (a refit may add a bias)

    def _in_frontier(self, value: ir.Value) -> bool:
        """Whether the value is taken from the kept cut tensors (not static, produced before the cut)."""
        if self._is_static(value):
            return False
        node = value.producer()
        return node is None or self.index[id(node)] < self.cut

    def _crossing(self, cut: int) -> list[ir.Value]:
        """Non-static values produced before ``cut`` (or graph inputs) and used at or after it."""
        out: dict[int, ir.Value] = {}
        candidates = list(self.model.graph.inputs) + [v for n in self.order[:cut] for v in n.outputs if v is not None]
        for value in candidates:
            if self._is_static(value):
                continue
            if any(self.index.get(id(u.node), -1) >= cut for u in value.uses()):
                out[id(value)] = value
        return list(out.values())

    def _open(self, segment):
        """(an exit stack, the segment's session or None when nothing is computed), or None when
        onnxruntime refuses the sub-model (whole-model runs take over)."""
        nodes, weights, inputs, outputs, _ = segment
        stack = contextlib.ExitStack()
        if not outputs:
            return stack, None
        try:
            sess = stack.enter_context(runtime.session(self._proto(nodes, weights, inputs, outputs), "basic", spinning=False))
        except ModelError:
            stack.close()
            return None
        return stack, sess

    def _run_segment(self, values, new_cut, opened, outputs, crossing) -> Iterator[dict[str, np.ndarray]]:
        frontier_bytes = 0
        names = [v.name for v in outputs]
        stack, sess = opened
        with stack:
            for i, kept in enumerate(self.frontier):
                out = runtime.run(sess, kept, names) if sess is not None else {}
                available = {**kept, **out}
                self.frontier[i] = {v.name: available[v.name] for v in crossing}
                frontier_bytes += sum(np.asarray(a).nbytes for a in self.frontier[i].values())
                yield {v.name: available[v.name] for v in values}
        self.cut = new_cut
        if frontier_bytes > FRONTIER_BUDGET_BYTES:
            self.staged, self.frontier = False, []

    def _proto(self, nodes, weights, inputs, outputs) -> onnx.ModelProto:
        graph = onnx.GraphProto(name="segment")
        graph.node.extend(ir.serde.serialize_node(n) for n in nodes)
        for value in weights:
            data = value.const_value
            if isinstance(data, ir.ExternalTensor):  # (a reference to the file would be read by onnxruntime)
                data = ir.Tensor(data.numpy(), dtype=data.dtype)
            tensor = ir.serde.serialize_tensor(data)
            tensor.name = value.name
            graph.initializer.append(tensor)
        sample = self.frontier[0]
        for value in inputs:
            elem = onnx.helper.np_dtype_to_tensor_dtype(np.asarray(sample[value.name]).dtype)
            graph.input.append(onnx.helper.make_tensor_value_info(value.name, elem, None))
        for value in outputs:
            graph.output.append(onnx.helper.make_tensor_value_info(value.name, self._dtype(value), None))
        model = onnx.helper.make_model(
            graph,
            opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in self.model.opset_imports.items()],
            functions=[ir.serde.serialize_function(f) for f in self.model.functions.values()],
        )
        model.ir_version = min(self.model.ir_version, model_io.MAX_IR_VERSION)
        return model

    def _dtype(self, value: ir.Value) -> int:
        if value.dtype is not None:
            return int(value.dtype)
        if self._dtypes is None:
            self._dtypes = inferred_dtypes(self.model)
        return self._dtypes.get(value.name) or int(ir.DataType.FLOAT)

    def _whole(self, values: Sequence[ir.Value]) -> Iterator[dict[str, np.ndarray]]:
        """Whole-model runs (value types inferred once per staged capture: only weights change)."""
        untyped = [v for v in values if v.dtype is None and not v.is_graph_input()]
        with typed_for_capture(self.model, untyped, {v.name: self._dtype(v) for v in untyped}):
            yield from self.calibration.iter_capture(self.model, values)


def _has_subgraph(node: ir.Node) -> bool:
    return any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values())
