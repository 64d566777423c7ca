"""``simplify``: lossless graph simplification, built on onnxscript's optimizer.

Constant folding (shape computations included, at the model's declared shapes: a dynamic dim is
never baked in), BatchNormalization and constant bias ``Add`` folded into the preceding
Conv/ConvTranspose/Gemm, no-op elimination (Identity, Dropout, Cast to the same type, Reshape to
the same shape, Pad of zeros, ...), common-subexpression elimination, Constant nodes lifted to
initializers, dead-code removal — then ``cleanup``'s housekeeping.

Guards around the library (each checked, see :func:`_Guard`): ``sparsify``'s CSR decodes are
never folded or rewritten; functions are not inlined; metadata, the model's opset versions, IR
version and the graph's signature (input/output names, types and declared shapes) stay as they
were; folded constants are limited in size so a big model's memory does not grow.

A library step that raises on one node (onnxscript's SplitToSequence folder on a scalar split
input given at run time, for one) leaves that node as it is: the rest of the model is still
simplified, and a note names what was skipped.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common

from onnxslim.constants import all_graphs, model_fingerprint, weight_bytes
from onnxslim.pass_api import Pass, PassContext, PassResult, option
from onnxslim.sparse_codec import ROLE_KEY

from .cleanup import Cleanup


class Simplify(Pass):
    name = "simplify"
    summary = "fold constants and shapes, fuse BatchNorm/bias into Conv/Gemm, drop no-ops, merge duplicates, then cleanup"
    lossless = True

    class Options(Pass.Options):
        fold: bool = option(True, "fold constant subgraphs (shape computations at the declared shapes included)")
        fuse: bool = option(True, "fold BatchNormalization and constant bias Add into the preceding Conv/ConvTranspose/Gemm")
        cse: bool = option(True, "merge nodes computing the same thing (common-subexpression elimination)")
        fold_limit: int = option(
            1 << 18, "largest folded tensor, in elements (larger results stay computed, so the file and memory do not grow)"
        )
        grow: bool = option(
            False, "fold constants that are larger than what they are computed from (e.g. INT8 weights dequantized by Cast→Mul)"
        )
        iterations: int = option(3, "rounds of folding and rewriting (stops early when a round changes nothing)")

    def run(self, model, ctx: PassContext) -> PassResult:
        nodes_before = sum(len(g) for g in all_graphs(model))
        bytes_before = weight_bytes(model)
        before = model_fingerprint(model)
        guard = _Guard(model)
        skipped: dict[str, str] = {}
        with _quiet_onnxscript():
            _simplify(model, self.options, skipped, ctx.inferred)
        guard.check(model)
        Cleanup().run(model, ctx)
        modified = model_fingerprint(model) != before
        nodes_after = sum(len(g) for g in all_graphs(model))
        details = {
            "nodes_removed": nodes_before - nodes_after,
            "weight_bytes_saved": bytes_before - weight_bytes(model),
        }
        notes = [f"skipped {where}: onnxscript raised {why} (left as it is)" for where, why in skipped.items()]
        if skipped:
            details["steps_skipped"] = len(skipped)
        if not modified:
            return PassResult(False, "already simple", details, notes)
        summary = f"{nodes_before} → {nodes_after} nodes"
        saved = details["weight_bytes_saved"]
        if saved:
            summary += f", weights {abs(saved):,} bytes {'smaller' if saved > 0 else 'larger'}"
        return PassResult(True, summary, details, notes)


def _simplify(model: ir.Model, options: Simplify.Options, skipped: dict[str, str], inferred=None) -> None:
    """Simplify in place; a folder or rule that raises on a node is recorded in ``skipped``
    (where → why) and that node left alone."""
    from onnxslim._lazy import defer_package, defer_submodule

    defer_package("onnxscript")  # its optimizer and rewriter, not its script converter
    defer_package("onnx.reference")  # the folder imports its op implementations ...
    defer_submodule("onnx.reference.ops")  # ... and uses them only for some ops
    from onnxscript import rewriter
    from onnxscript.optimizer import _constant_folding

    protected = _protected_nodes(model)

    def should_fold(node: ir.Node) -> bool | None:
        if node in protected:
            return False
        if not options.grow and _grows(node):
            return False
        if node.op_type == "ConstantOfShape":  # onnxscript keeps them all; a small one folds
            size = _output_bytes(node)
            return size is not None and size <= _SMALL_BYTES
        return None

    from onnxscript.rewriter.rules.common import flatten_to_reshape_rule

    from ._simplify_rules import ShapeChainPass, ShapeCSEPass, extra_rules

    # Flatten → Reshape adds a shape constant and simplifies nothing.
    rules = [_Protected(r, protected, skipped) for r in rewriter._DEFAULT_REWRITE_RULES if r is not flatten_to_reshape_rule]
    rules += [_Protected(r, protected, skipped) for r in extra_rules()]
    if not options.fuse:
        rules = [r for r in rules if "BatchNorm" not in (r.name or "") and "BiasAdd" not in (r.name or "")]
    # Constant nodes first become initializers: BatchNorm fusion and the rewrite rules look for
    # initializers (Paddle exports keep every weight in a Constant node).
    steps: list[ir.passes.PassBase] = [common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)]
    # One whole-model inference in onnx's C++ (data propagation on) instead of onnxscript's
    # per-node inference (a third of the pass's time); per node only where that fails.
    per_node = not _infer_once(model, inferred)
    loop = []
    if options.fold:
        loop.append(
            _fold_pass(_constant_folding.FoldConstantsPass, skipped)(
                shape_inference=per_node,
                input_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
                output_size_limit=options.fold_limit,
                should_fold=should_fold,
            )
        )
    loop += [
        rewriter.RewritePass(rules),
        common.RemoveUnusedNodesPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.DeduplicateInitializersPass(),
    ]
    if options.cse:
        loop += [ShapeCSEPass(), ShapeChainPass(), common.CommonSubexpressionEliminationPass(), common.RemoveUnusedNodesPass()]
    steps.append(ir.passes.PassManager(loop, steps=max(1, options.iterations), early_stop=True))
    steps += [
        common.LiftSubgraphInitializersToMainGraphPass(),
        common.DeduplicateInitializersPass(),
        common.RemoveUnusedNodesPass(),
    ]
    ir.passes.Sequential(*steps)(model)


def _fold_pass(base: type, skipped: dict[str, str]) -> type:
    """onnxscript's FoldConstantsPass, except that a node whose folding raises is left as it is
    (recorded in ``skipped``) instead of failing the whole pass."""

    class IsolatingFoldConstantsPass(base):
        def process_node(self, node: ir.Node, is_function: bool):
            try:
                return super().process_node(node, is_function)
            except Exception as exc:  # a library bug on one node must not cost the whole model
                skipped[f"folding {_describe(node)}"] = _cause(exc)
                return None

    return IsolatingFoldConstantsPass


def _describe(node: ir.Node) -> str:
    return f"{node.op_type} {node.name!r}" if node.name else node.op_type


def _cause(exc: BaseException) -> str:
    """The innermost exception's type and first line (onnxscript wraps the original)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:120]}" if lines else type(exc).__name__


#: Folded results up to this size may be larger than their inputs (shape tensors, small tables).
_SMALL_BYTES = 4096


def _output_bytes(node: ir.Node) -> int | None:
    total = 0
    for value in node.outputs:
        if value.shape is None or value.dtype is None or not value.shape.is_static():
            return None
        total += value.dtype.itemsize * int(np.prod(value.shape.numpy(), dtype=np.int64))
    return total


def _grows(node: ir.Node) -> bool:
    """Would folding ``node`` store more bytes than the constants it reads (known shapes only)?"""
    out_bytes = _output_bytes(node)
    if out_bytes is None:
        return False
    in_bytes = sum(v.const_value.nbytes for v in node.inputs if v is not None and v.const_value is not None)
    return out_bytes > max(in_bytes, _SMALL_BYTES)


def _infer_once(model: ir.Model, inferred=None) -> bool:
    """``inferred``: the manager's strict inference of the model as handed to the pass (the
    same result non-strict inference gives when strict succeeds), else inferred here."""
    from onnxslim import shapes

    try:
        shapes.merge_shapes(model, inferred if inferred is not None else shapes.infer(model, strict=False))
    except shapes.ShapeInferenceError:
        return False
    return True


def _protected_nodes(model: ir.Model) -> set[ir.Node]:
    """Nodes no rule may touch: ``sparsify``'s CSR decodes (folding one back would undo it)."""
    return {n for g in all_graphs(model) for n in g if ROLE_KEY in n.metadata_props}


class _Protected:
    """A rewrite rule that declines matches involving a protected node. It also skips nodes
    whose op cannot be the pattern's root (onnxscript tries every rule on every node: 80% of
    the pass's time on the OCR detector)."""

    def __init__(self, rule, protected: set[ir.Node], skipped: dict[str, str]):
        self._rule = rule
        self._protected = protected
        self._skipped = skipped
        self._root = None
        pattern = getattr(rule, "_target_pattern", None)
        if pattern is not None and pattern.output_nodes:
            # The node a match starts from is matched against the (first) output node.
            root = pattern.output_nodes[0]
            ident = root.op_identifier() if root is not None and hasattr(root, "op_identifier") else None
            if ident is not None and isinstance(ident[0], str) and isinstance(ident[1], str):
                self._root = (_domain(ident[0]), ident[1])

    def __getattr__(self, name):
        return getattr(self._rule, name)

    def try_rewrite(self, model, graph_or_function, node, **kwargs):
        if self._root is not None and (node.op_type != self._root[1] or _domain(node.domain) != self._root[0]):
            return None
        if node in self._protected:
            return None
        try:
            delta = self._rule.try_rewrite(model, graph_or_function, node, **kwargs)
        except Exception as exc:  # a rule that raises on one node is not applied there
            self._skipped[f"rule {self._rule.name or type(self._rule).__name__} at {_describe(node)}"] = _cause(exc)
            return None
        if delta is not None and any(n in self._protected for n in delta.match.nodes):
            return None
        return delta


def _domain(domain: str | None) -> str:
    return "" if domain in (None, "", "ai.onnx") else domain


class SimplifyGuardError(RuntimeError):
    """onnxscript changed something a lossless simplification must keep."""


class _Guard:
    """What the library must leave as it was, captured before and compared after."""

    def __init__(self, model: ir.Model):
        self.ir_version = model.ir_version
        self.opsets = dict(model.opset_imports)
        self.metadata = dict(model.metadata_props)
        self.graph_metadata = dict(model.graph.metadata_props)
        self.signature = _signature(model.graph)
        self.declared = [[(v.type, v.shape) for v in vs] for vs in (model.graph.inputs, model.graph.outputs)]
        self.functions = set(model.functions)
        # Inference annotates intermediate values; only the annotations the model had are kept
        # (the file is not padded with value_info it did not ask for).
        self.annotated = {id(v) for g in all_graphs(model) for n in g for v in n.outputs if v.type is not None or v.shape is not None}
        self.decodes = sum(1 for g in all_graphs(model) for n in g if n.metadata_props.get(ROLE_KEY) == "output")

    def check(self, model: ir.Model) -> None:
        # Metadata and the IR version are restored outright; anything else is an error (the
        # manager rolls the pass back as failed).
        model.ir_version = self.ir_version
        model.metadata_props.clear()
        model.metadata_props.update(self.metadata)
        model.graph.metadata_props.clear()
        model.graph.metadata_props.update(self.graph_metadata)
        for domain, version in list(model.opset_imports.items()):
            if domain in self.opsets and self.opsets[domain] != version:
                raise SimplifyGuardError(f"opset {domain or 'ai.onnx'} changed {self.opsets[domain]} → {version}")
        # Folding refines value shapes from inference; the graph's declared signature stays.
        for g in all_graphs(model):
            for n in g:
                for v in n.outputs:
                    if id(v) not in self.annotated and not v.is_graph_output():
                        v.type = v.shape = None
        for values, declared in zip((model.graph.inputs, model.graph.outputs), self.declared):
            for value, (type_, shape) in zip(values, declared):
                value.type, value.shape = type_, shape
        if _signature(model.graph) != self.signature:
            raise SimplifyGuardError("the graph's signature changed")
        decodes = sum(1 for g in all_graphs(model) for n in g if n.metadata_props.get(ROLE_KEY) == "output")
        if decodes != self.decodes:
            raise SimplifyGuardError(f"CSR decodes changed ({self.decodes} → {decodes})")


def _signature(graph: ir.Graph) -> tuple:
    def describe(v: ir.Value) -> tuple:
        return (v.name, str(v.type), None if v.shape is None else tuple(str(d) for d in v.shape))

    return tuple(describe(v) for v in graph.inputs), tuple(describe(v) for v in graph.outputs)


@contextlib.contextmanager
def _quiet_onnxscript():
    """onnxscript logs every skipped fold at INFO/WARNING; the report says what happened."""
    logger = logging.getLogger("onnxscript")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
