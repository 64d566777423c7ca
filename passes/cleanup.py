"""``cleanup``: lossless housekeeping, built on onnx-ir's common passes.

Removes unused nodes, initializers and opset imports and Identity chains, merges duplicate
initializers and sorts nodes topologically. It folds nothing, so it never grows the file and
never undoes another pass (a ``sparsify`` decode subgraph has consumers and stays).
"""

from __future__ import annotations

from onnx_ir.passes import common

from onnxslim.constants import all_graphs, model_fingerprint, weight_bytes
from onnxslim.pass_api import Pass, PassContext, PassResult, option


class Cleanup(Pass):
    name = "cleanup"
    summary = "remove unused nodes/initializers/opsets and Identity chains, merge duplicate initializers, sort"
    lossless = True

    class Options(Pass.Options):
        dedupe: bool = option(True, "merge initializers with identical contents")
        identity: bool = option(True, "remove Identity nodes")
        opsets: bool = option(True, "remove opset imports no node uses (the default domain always stays)")

    def run(self, model, ctx: PassContext) -> PassResult:
        nodes_before = _count_nodes(model)
        bytes_before = weight_bytes(model)
        inits_before = _count_initializers(model)
        opsets_before = dict(model.opset_imports)
        steps = []
        if self.options.identity:
            steps.append(_IdentityElimination())
        steps.append(common.RemoveUnusedNodesPass())
        if self.options.dedupe:
            steps.append(common.DeduplicateInitializersPass())
        steps.append(common.RemoveUnusedNodesPass())
        if self.options.opsets:
            steps.append(common.RemoveUnusedOpsetsPass())
        steps.append(common.RemoveUnusedFunctionsPass())
        before = model_fingerprint(model)
        for step in steps:
            step(model)
        # onnx-ir's steps may change the graph and say they did not (RemoveUnusedNodesPass drops
        # BatchNormalization's default training_mode): the fingerprint tells.
        modified = model_fingerprint(model) != before
        if modified:
            common.TopologicalSortPass()(model)
        details = {
            "nodes_removed": nodes_before - _count_nodes(model),
            "initializers_removed": inits_before - _count_initializers(model),
            "weight_bytes_saved": bytes_before - weight_bytes(model),
            "opsets_removed": sorted(set(opsets_before) - set(model.opset_imports)),
        }
        changed = any(v for v in details.values())
        summary = (
            f"{details['nodes_removed']} nodes, {details['initializers_removed']} initializers, "
            f"{details['weight_bytes_saved']} weight bytes removed"
            + (f", unused opsets {', '.join(details['opsets_removed'])} dropped" if details["opsets_removed"] else "")
        )
        if not changed:
            summary = "nothing removed; onnx-ir normalised the graph (e.g. dropped attributes at their defaults)" if modified else "nothing to clean"
        return PassResult(modified, summary, details)


class _IdentityElimination(common.IdentityEliminationPass):
    """onnx-ir's pass, minus the folds that change meaning.

    Folding ``y = Identity(x)`` with ``y`` a graph output renames ``x`` to ``y``. If ``x`` is a
    graph output too, one value then fills two output slots (onnxruntime computes Scan/Loop
    bodies wrongly: onnx backend case test_scan_sum); if ``x`` lives in an enclosing graph (an
    If branch returning an outer value), onnx-ir raises and the whole pass was rolled back.
    Those Identity nodes stay.
    """

    def _try_eliminate_identity_node(self, node) -> bool:
        if node.op_type == "Identity" and node.domain == "" and len(node.inputs) == 1 and len(node.outputs) == 1:
            source, output = node.inputs[0], node.outputs[0]
            if source is not None and output.is_graph_output():
                if source.is_graph_output() or source.graph is not node.graph:
                    return False
        return super()._try_eliminate_identity_node(node)


def _count_nodes(model) -> int:
    return sum(len(g) for g in all_graphs(model))


def _count_initializers(model) -> int:
    return sum(len(g.initializers) for g in all_graphs(model))
