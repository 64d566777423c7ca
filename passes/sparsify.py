"""``sparsify``: store mostly-zero float constants sparsely, bit-exactly (lossless).

``csr`` keeps the file checker-valid and runnable everywhere: values, narrow column indices and
row pointers as ordinary initializers plus a decode subgraph of standard ops
(:mod:`onnxslim.sparse_codec`) that onnxruntime folds at session creation. ``coo`` marks the
initializer so the file holds a standard ONNX ``sparse_initializer`` (int64 indices). ``auto``
takes the smaller per tensor. No tensor is ever stored larger than dense.

``csr`` is the default: ``onnx.checker`` with ``full_check=True`` rejects a COO initializer
feeding Conv/MatMul/Gemm (its strict shape inference sees a ``sparse_tensor`` type), although
onnxruntime loads it; ``auto`` and ``coo`` files pass the ordinary check only.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import onnx_ir as ir

from onnxslim import sparse_codec
from onnxslim.constants import SPARSE_FORMAT_KEY, all_graphs, set_tensor
from onnxslim.errors import UsageError
from onnxslim.pass_api import Pass, PassContext, PassResult, option


class _Candidate:
    """A dense float constant: an initializer, or the output of a Constant node."""

    def __init__(self, graph: ir.Graph, value: ir.Value, node: ir.Node | None):
        self.graph, self.value, self.node = graph, value, node

    @property
    def origin(self) -> str:
        return "initializer" if self.node is None else "constant_node"

    def numpy(self) -> np.ndarray:
        if self.node is None:
            return self.value.const_value.numpy()
        return self.node.attributes["value"].as_tensor().numpy()


class Sparsify(Pass):
    name = "sparsify"
    summary = "store mostly-zero float weights as CSR (decoded by standard ops) or ONNX COO sparse initializers"
    lossless = True

    class Options(Pass.Options):
        format: Literal["csr", "coo", "auto"] = option(
            "csr", "csr (passes onnx full_check), coo (standard sparse_initializer), or auto (the smaller per tensor)"
        )
        min_sparsity: float = option(0.5, "convert tensors with at least this fraction of zeros")
        min_size: int = option(1024, "skip tensors with fewer elements")

    def validate_options(self) -> None:
        if not 0.0 <= self.options.min_sparsity <= 1.0:
            raise UsageError(f"sparsify:min_sparsity must be in [0, 1], got {self.options.min_sparsity}")
        if self.options.min_size < 1:
            raise UsageError(f"sparsify:min_size must be at least 1, got {self.options.min_size}")

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        opts = self.options
        notes: list[str] = []
        opset = sparse_codec.default_opset(model)
        csr_ok = opset is not None and opset >= sparse_codec.MIN_OPSET
        if not csr_ok and opts.format != "coo":
            notes.append(
                f"CSR needs default-domain opset >= {sparse_codec.MIN_OPSET} (model imports {opset}); "
                + ("nothing converted, use format=coo" if opts.format == "csr" else "using COO only")
            )
            if opts.format == "csr":
                return PassResult(False, "nothing converted (opset too old for CSR)", {}, notes)
        converted: list[dict] = []
        grew = negative_zero = 0
        candidates = _candidates(model)
        for cand in ctx.progress(candidates, "tensors", total=len(candidates)):
            name = cand.value.name
            array = cand.numpy()
            if array.size < opts.min_size:
                continue
            mask = sparse_codec.nonzero_mask(array)
            nnz = int(np.count_nonzero(mask))
            sparsity = 1.0 - nnz / array.size
            if sparsity < opts.min_sparsity:
                continue
            choice = self._choose(array, nnz, csr_ok, name)
            if choice is None:
                grew += 1
                continue
            fmt, parts, size_after = choice
            if fmt == "coo" and nnz != np.count_nonzero(array):
                negative_zero += 1  # the COO writer drops -0.0 (value-based indices): not bit-exact
                if parts is None:
                    continue
                fmt, size_after = "csr", sparse_codec.csr_file_bytes(parts, name)
                if size_after >= array.nbytes:
                    grew += 1
                    continue
            if fmt == "csr":
                _store_csr(cand, parts)
            else:
                _store_coo(cand, array)
            converted.append(
                {
                    "name": name,
                    "format": fmt,
                    "shape": list(array.shape),
                    "dtype": str(array.dtype),
                    "sparsity": round(sparsity, 6),
                    "bytes_before": int(array.nbytes),
                    "bytes_after": int(size_after),
                }
            )
        if grew:
            notes.append(f"{grew} sparse enough tensor(s) left dense: no format would make them smaller")
        if negative_zero:
            notes.append(f"{negative_zero} tensor(s) hold -0.0, which COO cannot keep bit-exactly; CSR or dense used")
        before = sum(c["bytes_before"] for c in converted)
        after = sum(c["bytes_after"] for c in converted)
        details = {"tensors": converted, "bytes_before": before, "bytes_after": after, "converted": len(converted)}
        if not converted:
            return PassResult(False, "no tensor qualifies", details, notes)
        formats = sorted({c["format"] for c in converted})
        summary = (
            f"{len(converted)} tensor(s) to {'/'.join(formats)}: {before} -> {after} bytes ({after / before:.3f}x)"
        )
        return PassResult(True, summary, details, notes)

    def _choose(self, array: np.ndarray, nnz: int, csr_ok: bool, name: str):
        """(format, csr parts or None, estimated file bytes), or None if nothing is smaller than dense."""
        fmt = self.options.format
        options = []
        parts = None
        if csr_ok and fmt in ("csr", "auto") and array.dtype in sparse_codec.SUPPORTED_DTYPES and array.ndim >= 1:
            parts = sparse_codec.encode(array)
            options.append(("csr", sparse_codec.csr_file_bytes(parts, name)))
        if fmt in ("coo", "auto"):
            options.append(("coo", sparse_codec.coo_file_bytes(nnz, array.dtype.itemsize)))
        options = [o for o in options if o[1] < array.nbytes]
        if not options:
            return None
        best, size = min(options, key=lambda o: o[1])
        return best, parts, size


def _candidates(model: ir.Model) -> list[_Candidate]:
    """Dense float constants that consumers read, outside existing decodes and sparse marks."""
    decode_inputs = {id(v) for d in sparse_codec.find_decodes(model) for v in d.inputs()}
    found = []
    for graph in all_graphs(model):
        for value in graph.initializers.values():
            if (
                value.const_value is not None
                and value.dtype is not None
                and value.dtype.is_floating_point()
                and value.meta.get(SPARSE_FORMAT_KEY) is None
                and not value.is_graph_input()
                and not value.is_graph_output()
                and value.uses()
                and id(value) not in decode_inputs
            ):
                found.append(_Candidate(graph, value, None))
        for node in graph:
            if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or list(node.attributes) != ["value"]:
                continue
            out = node.outputs[0]
            if (
                node.attributes["value"].type == ir.AttributeType.TENSOR
                and node.attributes["value"].as_tensor().dtype.is_floating_point()
                and out.uses()
                and not out.is_graph_output()
                and id(out) not in decode_inputs
            ):
                found.append(_Candidate(graph, out, node))
    return found


def _store_csr(cand: _Candidate, parts: sparse_codec.CsrParts) -> None:
    graph, old, name = cand.graph, cand.value, cand.value.name
    if cand.node is None:
        graph.initializers.pop(name)
    old.name = f"{name}.dense_replaced"  # about to be detached; the decode output takes the name
    nodes, dense = sparse_codec.build_decode(
        graph, name, parts, cand.origin, cand.node.name if cand.node is not None else None
    )
    dense.dtype, dense.shape = ir.DataType.from_numpy(parts.values.dtype), ir.Shape(parts.shape)
    anchor = cand.node if cand.node is not None else next(iter(graph), None)
    if anchor is None:
        graph.extend(nodes)
    else:
        graph.insert_before(anchor, nodes)
    old.replace_all_uses_with(dense)
    if cand.node is not None:
        graph.remove(cand.node, safe=True)


def _store_coo(cand: _Candidate, array: np.ndarray) -> None:
    if cand.node is None:
        cand.value.meta[SPARSE_FORMAT_KEY] = "coo"
        return
    # A Constant node cannot be a sparse_initializer: it becomes an initializer first.
    graph, old, name = cand.graph, cand.value, cand.value.name
    old.name = f"{name}.dense_replaced"
    value = ir.Value(name=name)
    set_tensor(value, array)
    value.meta[SPARSE_FORMAT_KEY] = "coo"
    graph.register_initializer(value)
    old.replace_all_uses_with(value)
    graph.remove(cand.node, safe=True)
