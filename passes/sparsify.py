"""``sparsify``: store mostly-zero float constants sparsely, bit-exactly (lossless).

``csr`` keeps the file checker-valid and runnable everywhere: values, narrow column indices and
row pointers as ordinary initializers plus a decode subgraph of standard ops
(:mod:`onnxslim.sparse_codec`) that onnxruntime folds at session creation. ``coo`` marks the
initializer so the file holds a standard ONNX ``sparse_initializer`` (int64 indices). ``auto``
takes the smaller per tensor. Sizes are exact (:func:`onnxslim.sparse_codec.file_bytes`: the
bytes of every entry a tensor and its replacement put in the inline file, names, decode nodes,
attributes and metadata included) and a tensor stays dense unless its replacement is smaller,
by more than the few bytes the main graph's length prefix can grow: the file never grows.

``csr`` is the default: ``onnx.checker`` with ``full_check=True`` rejects a COO initializer
feeding Conv/MatMul/Gemm (its strict shape inference sees a ``sparse_tensor`` type), although
onnxruntime loads it; ``auto`` and ``coo`` files pass the ordinary check only.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import onnx_ir as ir

from onnxslim import sparse_codec
from onnxslim.constants import SPARSE_FORMAT_KEY, all_graphs, release_mapping, set_tensor
from onnxslim.errors import UsageError
from onnxslim.pass_api import Pass, PassContext, PassResult, option


class _Candidate:
    """A dense float constant: an initializer, or the output of a Constant node."""

    def __init__(self, graph: ir.Graph, main: bool, value: ir.Value, node: ir.Node | None):
        self.graph, self.main, self.value, self.node = graph, main, value, node

    @property
    def origin(self) -> str:
        return "initializer" if self.node is None else "constant_node"

    def numpy(self) -> np.ndarray:
        if self.node is None:
            return self.value.const_value.numpy()
        return self.node.attributes["value"].as_tensor().numpy()

    def file_bytes(self) -> int:
        if self.node is None:
            return sparse_codec.file_bytes(self.graph, self.main, values=[self.value])
        return sparse_codec.file_bytes(self.graph, self.main, nodes=[self.node])

    def coo_value(self, array: np.ndarray) -> ir.Value:
        """The COO-marked initializer that would replace this constant (not registered)."""
        value = ir.Value(name=self.value.name)
        set_tensor(value, self.value.const_value if self.node is None else array)
        value.meta[SPARSE_FORMAT_KEY] = "coo"
        return value


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
        grew = 0
        csr_dtypes: list[str] = []  # of tensors CSR cannot hold
        candidates = _candidates(model)
        looked_at = None
        for cand in ctx.progress(candidates, "tensors", total=len(candidates)):
            name, array = cand.value.name, cand.numpy()
            if looked_at is not None:  # the previous weight's view is gone: unmap it (not read again)
                release_mapping(looked_at)
            looked_at = cand.value.const_value if cand.node is None and isinstance(cand.value.const_value, ir.ExternalTensor) else None
            if array.size < opts.min_size:
                continue
            nnz = int(np.count_nonzero(sparse_codec.nonzero_mask(array)))
            sparsity = 1.0 - nnz / array.size
            if sparsity < opts.min_sparsity:
                continue
            csr_dtype = array.dtype in sparse_codec.SUPPORTED_DTYPES
            if opts.format == "csr" and not csr_dtype:
                csr_dtypes.append(str(array.dtype))
                continue
            before = cand.file_bytes()
            forms = {}  # format -> exact file bytes
            if csr_ok and opts.format != "coo" and csr_dtype and array.ndim >= 1:
                origin_name = (cand.node.name or "") if cand.node is not None else None
                nodes, dense = sparse_codec.build_decode(
                    cand.graph, name, sparse_codec.encode(array), cand.origin, origin_name
                )
                dense.type, dense.shape = cand.value.type, cand.value.shape  # the constant's value_info, if any
                forms["csr"] = sparse_codec.file_bytes(cand.graph, cand.main, sparse_codec.decode_inputs(nodes), nodes)
            if opts.format != "csr":
                coo = cand.coo_value(array)
                forms["coo"] = sparse_codec.file_bytes(cand.graph, cand.main, values=[coo])
            fmt = min(forms, key=forms.get, default=None)  # csr first: it wins a tie
            if fmt is not None and forms[fmt] + sparse_codec.LENGTH_PREFIX_SLACK >= before:
                fmt, grew = None, grew + 1
            if "csr" in forms and fmt != "csr":
                sparse_codec.discard_decode(cand.graph, nodes)
            if fmt is None:
                continue
            if fmt == "csr":
                _store_csr(cand, nodes, dense)
            else:
                _store_coo(cand, coo)
            converted.append(
                {
                    "name": name,
                    "format": fmt,
                    "shape": list(array.shape),
                    "dtype": str(array.dtype),
                    "sparsity": round(sparsity, 6),
                    "bytes_before": before,
                    "bytes_after": forms[fmt],
                }
            )
        if grew:
            notes.append(f"{grew} sparse enough tensor(s) left dense: no format would make them smaller")
        if csr_dtypes:
            notes.append(
                f"{len(csr_dtypes)} sparse enough {'/'.join(sorted(set(csr_dtypes)))} tensor(s) left dense: CSR is "
                "written for float16/32/64 only (the decode's ConstantOfShape takes bfloat16 from opset 20 on); "
                "format=coo or auto stores them as COO"
            )
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


def _candidates(model: ir.Model) -> list[_Candidate]:
    """Dense float constants that consumers read, outside existing decodes and sparse marks."""
    decode_inputs = {id(v) for d in sparse_codec.find_decodes(model) for v in d.inputs()}
    found = []
    for graph in all_graphs(model):
        main = graph is model.graph
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
                found.append(_Candidate(graph, main, value, None))
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
                found.append(_Candidate(graph, main, out, node))
    return found


def _store_csr(cand: _Candidate, nodes: list[ir.Node], dense: ir.Value) -> None:
    graph, old = cand.graph, cand.value
    if cand.node is None:
        sparse_codec.move_initializers(graph, sparse_codec.decode_inputs(nodes), before=old.name)
        graph.initializers.pop(old.name)
    old.name = f"{old.name}.dense_replaced"  # about to be detached; the decode output takes the name
    anchor = cand.node if cand.node is not None else next(iter(graph), None)
    if anchor is None:
        graph.extend(nodes)
    else:
        graph.insert_before(anchor, nodes)
    old.replace_all_uses_with(dense)
    if cand.node is not None:
        graph.remove(cand.node, safe=True)


def _store_coo(cand: _Candidate, coo: ir.Value) -> None:
    if cand.node is None:
        cand.value.meta[SPARSE_FORMAT_KEY] = "coo"
        return
    # A Constant node cannot be a sparse_initializer: it becomes an initializer first.
    graph, old = cand.graph, cand.value
    old.name = f"{old.name}.dense_replaced"
    graph.register_initializer(coo)
    old.replace_all_uses_with(coo)
    graph.remove(cand.node, safe=True)
