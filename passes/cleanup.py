"""``cleanup``: lossless housekeeping, built on onnx-ir's common passes.

Removes unused nodes, initializers and opset imports and Identity chains, merges duplicate
initializers and sorts nodes topologically. It folds nothing, so it never grows the file and
never undoes another pass (a ``sparsify`` decode subgraph has consumers and stays).
"""

from __future__ import annotations

from onnx_ir.passes import common

from onnxslim.constants import weight_bytes
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
            steps.append(common.IdentityEliminationPass())
        steps.append(common.RemoveUnusedNodesPass())
        if self.options.dedupe:
            steps.append(common.DeduplicateInitializersPass())
        steps.append(common.RemoveUnusedNodesPass())
        if self.options.opsets:
            steps.append(common.RemoveUnusedOpsetsPass())
        steps.append(common.RemoveUnusedFunctionsPass())
        modified = False
        for step in steps:
            modified |= bool(step(model).modified)
        if modified:
            modified |= bool(common.TopologicalSortPass()(model).modified)
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
        return PassResult(modified, summary if changed else "nothing to clean", details)


def _count_nodes(model) -> int:
    return sum(len(g) for g in model.graphs())


def _count_initializers(model) -> int:
    return sum(len(g.initializers) for g in model.graphs())
