"""``densify``: the inverse of ``sparsify`` (lossless).

Every CSR decode subgraph this project wrote becomes the dense tensor again (an initializer, or
a Constant node where the weight was one), its nodes and now-unused component initializers
removed; every standard ``sparse_initializer`` (loaded as a dense initializer marked ``coo``)
is written dense. ``densify(sparsify(m))`` has initializers byte-identical to ``m``.
"""

from __future__ import annotations

import onnx_ir as ir

from onnxslim import sparse_codec
from onnxslim.constants import SPARSE_FORMAT_KEY, all_graphs
from onnxslim.pass_api import Pass, PassContext, PassResult


class Densify(Pass):
    name = "densify"
    summary = "turn CSR decode subgraphs and COO sparse initializers back into dense tensors"
    lossless = True

    class Options(Pass.Options):
        pass

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        restored: list[dict] = []
        notes: list[str] = []
        decodes = list(sparse_codec.find_decodes(model))
        for decode in ctx.progress(decodes, "tensors", total=len(decodes)):
            try:
                parts = decode.parts()
            except (ValueError, KeyError) as exc:  # edited by hand or by another tool: leave it
                notes.append(f"CSR decode {decode.output.name!r} left as is: {exc}")
                continue
            graph, main, name = decode.graph, decode.graph is model.graph, decode.output.name
            before = sparse_codec.file_bytes(graph, main, decode.own_inputs(), decode.nodes)
            value, node = sparse_codec.replace_with_dense(decode, sparse_codec.decode(parts))
            after = sparse_codec.file_bytes(graph, main, [value] if node is None else (), [node] if node else ())
            restored.append({"name": name, "format": "csr", "bytes_before": before, "bytes_after": after})
        for graph in all_graphs(model):
            for value in graph.initializers.values():
                if value.meta.get(SPARSE_FORMAT_KEY) is not None and value.const_value is not None:
                    before = sparse_codec.file_bytes(graph, graph is model.graph, [value])
                    del value.meta[SPARSE_FORMAT_KEY]
                    after = sparse_codec.file_bytes(graph, graph is model.graph, [value])
                    restored.append({"name": value.name, "format": "coo", "bytes_before": before, "bytes_after": after})
        before = sum(r["bytes_before"] for r in restored)
        after = sum(r["bytes_after"] for r in restored)
        details = {"tensors": restored, "bytes_before": before, "bytes_after": after, "restored": len(restored)}
        if not restored:
            return PassResult(False, "no sparse tensor found", details, notes)
        return PassResult(True, f"{len(restored)} tensor(s) dense again: {before} -> {after} bytes", details, notes)
