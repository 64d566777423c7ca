"""Branch coverage of validation at any depth: If branches inside Loop and Scan bodies, Loops
inside If branches, Loop bodies a zero trip count skips, and nested Ifs. A pass that changes a
branch is validated by a sample that reaches it, or the branch is named (status, note, JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxslim
from onnxslim import inputs, model_io, validation
from onnxslim.pass_api import Pass, PassResult, option
from tests.support import ScaleWeight

OPSET = [helper.make_opsetid("", 17)]
F = TensorProto.FLOAT


def _weights():
    rng = np.random.default_rng(0)
    return [
        numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w16"),
        numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w8"),
        numpy_helper.from_array(np.array(16000, np.int64), "k"),
    ]


def _by_rate(x: str, out: str, name: str = "by_rate", then_nodes=None) -> list:
    """``If(sr == 16000)``: ``x @ w16`` (or ``then_nodes``), else ``x @ w8`` — weights from the
    main graph, the condition from the main graph's input ``sr``."""
    then_g = helper.make_graph(
        then_nodes or [helper.make_node("MatMul", [x, "w16"], [f"{name}_t"])], "then", [], [helper.make_tensor_value_info(f"{name}_t", F, [1, 8])]
    )
    else_g = helper.make_graph([helper.make_node("MatMul", [x, "w8"], [f"{name}_e"])], "else", [], [helper.make_tensor_value_info(f"{name}_e", F, [1, 8])])
    return [
        helper.make_node("Equal", ["sr", "k"], [f"{name}_is16"]),
        helper.make_node("If", [f"{name}_is16"], [out], name=name, then_branch=then_g, else_branch=else_g),
    ]


def _loop_body(nodes: list, x_in: str, x_out: str):
    """A Loop body carrying ``x_in`` → ``x_out`` (the condition passes through)."""
    return helper.make_graph(
        [*nodes, helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []), helper.make_tensor_value_info(x_in, F, [1, 8])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info(x_out, F, [1, 8])],
    )


def _save(nodes, inputs_, path, extra=(), check=True):
    graph = helper.make_graph(nodes, "g", inputs_, [helper.make_tensor_value_info("y", F, [1, 8])], [*_weights(), *extra])
    model = helper.make_model(graph, opset_imports=OPSET, ir_version=8)
    if check:
        onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


X = helper.make_tensor_value_info("x", F, [1, 8])
SR = helper.make_tensor_value_info("sr", TensorProto.INT64, [])
N = helper.make_tensor_value_info("n", TensorProto.INT64, [])


def _if_in_loop(path):
    """Loop(n) whose body is ``If(sr == 16000)`` on the carried tensor."""
    body = _loop_body(_by_rate("xc", "xo"), "xc", "xo")
    return _save([helper.make_node("Loop", ["n", "", "x"], ["y"], name="loop", body=body)], [X, SR, N], path)


def _if_in_scan(path):
    """Scan over the rows of ``x`` [1, 8] (one step) whose body is ``If(sr == 16000)``."""
    body = helper.make_graph(
        [helper.make_node("Unsqueeze", ["row", "axis0"], ["row2"]), *_by_rate("row2", "r2"), helper.make_node("Squeeze", ["r2", "axis0"], ["r"])],
        "scan_body",
        [helper.make_tensor_value_info("row", F, [8])],
        [helper.make_tensor_value_info("r", F, [8])],
        [numpy_helper.from_array(np.array([0], np.int64), "axis0")],
    )
    return _save([helper.make_node("Scan", ["x"], ["y"], name="scan", body=body, num_scan_inputs=1)], [X, SR], path)


def _loop_in_if(path):
    """``If(sr == 16000)`` whose then_branch runs Loop(n) of ``x @ w16``."""
    body = _loop_body([helper.make_node("MatMul", ["xc", "w16"], ["xo"])], "xc", "xo")
    loop = helper.make_node("Loop", ["n", "", "x"], ["by_rate_t"], name="loop", body=body)
    return _save(_by_rate("x", "y", then_nodes=[loop]), [X, SR, N], path)


def _data(sr, n=None):
    sample = {"x": np.ones((1, 8), np.float32), "sr": np.array(sr, np.int64)}
    if n is not None:
        sample["n"] = np.array(n, np.int64)
    return sample


def _row(src, weight, data):
    return onnxslim.optimize(src, [ScaleWeight(weight=weight)], inputs=data).report.passes[0]


def test_if_inside_a_loop_body_is_tracked(tmp_path):
    src = _if_in_loop(tmp_path / "loop_if.onnx")
    loaded = model_io.load(src)
    assert validation.branches_reached(loaded, [_data(16000, 3)]) == {"Loop 'loop' body", "Loop 'loop' body > If 'by_rate' then_branch"}
    assert validation.branches_reached(loaded, [_data(16000, 3), _data(8000, 1)]) == {
        "Loop 'loop' body", "Loop 'loop' body > If 'by_rate' then_branch", "Loop 'loop' body > If 'by_rate' else_branch"
    }
    # The changed branch no sample reaches is named; the one a sample reaches is validated.
    row = _row(src, "w8", [_data(16000, 3)])
    assert row.status == "applied" and row.max_abs == 0
    assert row.unvalidated_branches == ["Loop 'loop' body > If 'by_rate' else_branch"]
    row = _row(src, "w16", [_data(16000, 3)])
    assert row.unvalidated_branches == [] and row.max_abs > 0
    row = _row(src, "w8", [_data(16000, 3), _data(8000, 2)])
    assert row.unvalidated_branches == [] and row.max_abs > 0


def test_loop_body_a_zero_trip_count_skips_is_named(tmp_path):
    src = _if_in_loop(tmp_path / "loop_if.onnx")
    row = _row(src, "w16", [_data(16000, 0)])
    assert row.max_abs == 0 and row.unvalidated_branches == ["Loop 'loop' body"]  # named once, at the outermost
    assert any("Loop 'loop' body" in note for note in row.notes)
    result = onnxslim.optimize(src, [ScaleWeight(weight="w16")], inputs=[_data(16000, 0)])
    assert "applied (1 branch not validated)" in " ".join(result.report.render(200).split())


def test_if_inside_a_scan_body_is_tracked(tmp_path):
    src = _if_in_scan(tmp_path / "scan_if.onnx")
    row = _row(src, "w8", [_data(16000)])
    assert row.max_abs == 0 and row.unvalidated_branches == ["Scan 'scan' body > If 'by_rate' else_branch"]
    row = _row(src, "w8", [_data(16000), _data(8000)])
    assert row.unvalidated_branches == [] and row.max_abs > 0


def test_loop_inside_an_if_branch_is_tracked(tmp_path):
    src = _loop_in_if(tmp_path / "if_loop.onnx")
    # The branch holding the loop is not reached: it is named, not the loop inside it.
    row = _row(src, "w16", [_data(8000, 2)])
    assert row.max_abs == 0 and row.unvalidated_branches == ["If 'by_rate' then_branch"]
    # The branch is reached but the loop never iterates: the loop body is named.
    row = _row(src, "w16", [_data(16000, 0)])
    assert row.max_abs == 0 and row.unvalidated_branches == ["If 'by_rate' then_branch > Loop 'loop' body"]
    row = _row(src, "w16", [_data(16000, 2)])
    assert row.unvalidated_branches == [] and row.max_abs > 0


def test_a_changed_inner_branch_of_a_reached_outer_branch_is_named(tmp_path):
    """The outer then_branch is reached, the inner If inside it always takes its then_branch: a
    pass that changes the inner else_branch (and so the outer branch around it) names the inner
    one — the outer branch being reached does not validate it."""
    inner = _by_rate("x", "by_rate_t", name="inner")
    inner[0] = helper.make_node("Identity", ["yes"], ["inner_is16"])
    yes = numpy_helper.from_array(np.array(True), "yes")
    src = _save(_by_rate("x", "y", then_nodes=inner), [X, SR], tmp_path / "nested.onnx", [yes])
    row = _row(src, "w8", [_data(16000), _data(0)])  # both outer branches
    assert row.max_abs > 0  # the outer else_branch reads w8 too and is validated
    assert row.unvalidated_branches == ["If 'by_rate' then_branch > If 'inner' else_branch"]


def test_unreached_loop_branch_in_report_text_and_json(tmp_path):
    src = _if_in_loop(tmp_path / "loop_if.onnx")
    result = onnxslim.optimize(src, [ScaleWeight(weight="w8")], inputs=[_data(16000, 2)])
    text = " ".join(result.report.render(200).split())
    assert "1 If branch not validated" in text and "Loop 'loop' body > If 'by_rate' else_branch" in text
    data = json.loads(result.report.to_json())["passes"][0]
    assert data["unvalidated_branches"] == ["Loop 'loop' body > If 'by_rate' else_branch"]


def test_derived_values_reach_branches_inside_loops(tmp_path):
    """With no data, ``sr`` takes the values the Loop body compares it with, so both branches
    inside the loop are reached and validated."""
    src = _if_in_loop(tmp_path / "loop_if.onnx")
    for weight in ("w16", "w8"):
        report = onnxslim.optimize(src, [ScaleWeight(weight=weight)]).report
        assert any("'sr' takes 16000, 0" in w for w in report.warnings)
        row = report.passes[0]
        assert row.unvalidated_branches == [] and row.max_abs > 0


def test_branches_without_executed_nodes_are_tracked(tmp_path):
    """A branch whose nodes never run as kernels still counts as reached when taken: one of only
    Constant nodes (onnxruntime turns them into initializers), a Loop body of no node at all."""
    then_g = helper.make_graph([helper.make_node("MatMul", ["x", "w16"], ["t"])], "then", [], [helper.make_tensor_value_info("t", F, [1, 8])])
    else_g = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.zeros((1, 8), np.float32)))],
        "else", [], [helper.make_tensor_value_info("c", F, [1, 8])],
    )
    body = helper.make_graph(
        [], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []), helper.make_tensor_value_info("xc", F, [1, 8])],
        [helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []), helper.make_tensor_value_info("xc", F, [1, 8])],
    )
    nodes = [
        helper.make_node("Equal", ["sr", "k"], ["is16"]),
        helper.make_node("If", ["is16"], ["p"], name="pick", then_branch=then_g, else_branch=else_g),
        helper.make_node("Loop", ["n", "", "p"], ["y"], name="idle", body=body),
    ]
    src = _save(nodes, [X, SR, N], tmp_path / "no_kernels.onnx")
    loaded = model_io.load(src)
    before = model_io.to_bytes(loaded)
    assert validation.branches_reached(loaded, [_data(16000, 0)]) == {"If 'pick' then_branch"}
    assert validation.branches_reached(loaded, [_data(0, 2)]) == {"If 'pick' else_branch", "Loop 'idle' body"}
    assert model_io.to_bytes(loaded) == before  # the model itself is not touched


# -- the real VAD and a VAD-like model whose If sits inside a Loop ----------------------------------

CORPUS = Path.home() / ".cache" / "onnxslim-corpus"


def test_silero_prune_with_no_data_validates_both_rates_and_names_the_untaken_one(tmp_path):
    src = CORPUS / "silero_vad_op18_ifless.onnx"
    if not src.exists():
        pytest.skip(f"{src} absent (bash ../shared/corpus/fetch.sh)")
    result = onnxslim.optimize(src, "prune:ratio=0.3")
    row = result.report.passes[0]
    assert row.status == "applied" and result.report.samples == 2  # sr takes 16000 and 0
    assert row.unvalidated_branches == [] and not any("not validated" in n for n in row.notes)
    assert "not validated" not in result.report.render(200)
    data = {"input": np.zeros((1, 512), np.float32), "sr": np.array(16000, np.int64), "state": np.zeros((2, 1, 128), np.float32)}
    row = onnxslim.optimize(src, "prune:ratio=0.3", inputs=[data]).report.passes[0]
    assert row.status == "applied" and row.unvalidated_branches == ["If 'node_cond__1' else_branch"]


def _vad_in_loop(path):
    """Conv → Loop(2 steps, body: If(sr == 16000) Conv-Relu-Conv with the 16 kHz weights, else
    with the 8 kHz ones) → Conv, on ``x[1, 4, samples]``."""
    rng = np.random.default_rng(0)

    def w(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    inits = [w("w_in", 8, 4, 3), w("w_out", 2, 8, 1), numpy_helper.from_array(np.array(16000, np.int64), "k"), numpy_helper.from_array(np.array(2, np.int64), "trips")]

    def branch(tag):
        inits.extend([w(f"{tag}_a", 16, 8, 3), w(f"{tag}_b", 8, 16, 3)])
        nodes = [
            helper.make_node("Conv", ["hc", f"{tag}_a"], [f"{tag}_h"], pads=[1, 1]),
            helper.make_node("Relu", [f"{tag}_h"], [f"{tag}_r"]),
            helper.make_node("Conv", [f"{tag}_r", f"{tag}_b"], [f"{tag}_o"], pads=[1, 1]),
        ]
        return helper.make_graph(nodes, tag, [], [helper.make_tensor_value_info(f"{tag}_o", F, [1, 8, None])])

    body = helper.make_graph(
        [
            helper.make_node("Equal", ["sr", "k"], ["is16"]),
            helper.make_node("If", ["is16"], ["ho"], name="by_rate", then_branch=branch("b16"), else_branch=branch("b8")),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []), helper.make_tensor_value_info("hc", F, [1, 8, None])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("ho", F, [1, 8, None])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w_in"], ["h"], pads=[1, 1]),
            helper.make_node("Loop", ["trips", "", "h"], ["hl"], name="steps", body=body),
            helper.make_node("Conv", ["hl", "w_out"], ["y"]),
        ],
        "vad_in_loop",
        [helper.make_tensor_value_info("x", F, [1, 4, "samples"]), SR],
        [helper.make_tensor_value_info("y", F, [1, 2, "samples"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=OPSET, ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def test_vad_like_if_inside_a_loop_behaves_like_silero(tmp_path):
    src = _vad_in_loop(tmp_path / "vad_loop.onnx")
    passes = "unstructured:sparsity=0.5:min_size=0"
    result = onnxslim.optimize(src, passes)  # no data: sr takes 16000 and 0, both branches run
    row = result.report.passes[0]
    assert row.status == "applied" and result.report.samples == 2 and row.unvalidated_branches == []
    data = {"x": np.ones((1, 4, 50), np.float32), "sr": np.array(16000, np.int64)}
    row = onnxslim.optimize(src, passes, inputs=[data]).report.passes[0]
    assert row.status == "applied" and row.unvalidated_branches == ["Loop 'steps' body > If 'by_rate' else_branch"]
    # prune leaves channels that go through a Loop alone: nothing changes, nothing is named.
    row = onnxslim.optimize(src, "prune:ratio=0.3").report.passes[0]
    assert row.status == "no change" and row.unvalidated_branches == []


# -- value_info of subgraph outputs ---------------------------------------------------------------


def _subgraph_value_info_model(path):
    """An If, a Loop and a Scan whose subgraphs declare value_info for their own outputs (beside
    the output's declaration, e.g. a symbolic dim), plus one for an intermediate."""
    vi = helper.make_tensor_value_info
    then_g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["tr"]), helper.make_node("Sigmoid", ["tr"], ["t"])], "then", [], [vi("t", F, [1, 8])],
        value_info=[vi("tr", F, [1, 8]), vi("t", F, [1, "n"])],
    )
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [vi("e", F, [1, 8])], value_info=[vi("e", F, ["a", "b"])])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["xc", "xc"], ["xo"])],
        "body",
        [vi("i", TensorProto.INT64, []), vi("cond_in", TensorProto.BOOL, []), vi("xc", F, [1, 8])],
        [vi("cond_out", TensorProto.BOOL, []), vi("xo", F, [1, 8])],
        value_info=[vi("xo", F, [1, "m"])],
    )
    scan_body = helper.make_graph(
        [helper.make_node("Abs", ["row"], ["r"])], "scan_body", [vi("row", F, [8])], [vi("r", F, [8])], value_info=[vi("r", F, ["k"])]
    )
    nodes = [
        helper.make_node("Equal", ["sr", "k"], ["is16"]),
        helper.make_node("If", ["is16"], ["p"], name="pick", then_branch=then_g, else_branch=else_g),
        helper.make_node("Loop", ["n", "", "p"], ["l"], name="loop", body=body),
        helper.make_node("Scan", ["l"], ["s"], name="scan", body=scan_body, num_scan_inputs=1),
        helper.make_node("Identity", ["s"], ["y"]),
    ]
    return _save(nodes, [X, SR, N], path)


def _subgraph_value_info(proto) -> dict[str, list[bytes]]:
    """Each subgraph's value_info entries for its outputs, by graph name."""
    found = {}

    def visit(graph):
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    outputs = {o.name for o in attr.g.output}
                    found[attr.g.name] = sorted(v.SerializeToString() for v in attr.g.value_info if v.name in outputs)
                    visit(attr.g)

    visit(proto.graph)
    return found


@pytest.mark.parametrize("passes", ["cleanup", "simplify", "zeros,sparsify", "unstructured:min_size=0"])
def test_value_info_of_subgraph_outputs_is_kept(tmp_path, passes):
    src = _subgraph_value_info_model(tmp_path / "in.onnx")
    declared = _subgraph_value_info(onnx.load(src))
    assert all(declared.values()) and len(declared) == 4
    data = [_data(16000, 2), _data(0, 1)]
    result = onnxslim.optimize(src, passes, inputs=data)
    assert result.report.passes[-1].status in ("applied", "no change")
    result.save(tmp_path / "out.onnx")
    assert _subgraph_value_info(onnx.load(tmp_path / "out.onnx")) == declared  # bit-identical
    assert _subgraph_value_info(model_io.to_proto(result.model)) == declared  # serialised in memory too


class RedeclareBranchOutput(Pass):
    """Test pass: changes the then_branch's output declaration (rank 2 → unknown shape) and
    replaces the else_branch's node (its output declaration kept)."""

    name = "test-redeclare-branch-output"
    summary = "change a branch output's declaration (test only)"
    lossless = True

    def run(self, model, ctx):
        import onnx_ir as ir

        node = next(n for n in model.graph if n.op_type == "If")
        node.attributes["then_branch"].as_graph().outputs[0].shape = None
        else_branch = node.attributes["else_branch"].as_graph()
        neg = else_branch.node(0)
        mul = ir.node("Mul", [neg.inputs[0], ir.val("minus_one", const_value=ir.tensor(np.float32(-1)))], name="neg_as_mul")
        mul.outputs[0].type, mul.outputs[0].shape = neg.outputs[0].type, neg.outputs[0].shape
        else_branch.insert_before(neg, mul)
        else_branch.register_initializer(mul.inputs[1])
        else_branch.outputs[0] = mul.outputs[0]
        else_branch.remove(neg)
        mul.outputs[0].name = "e"  # the same output, computed another way
        return PassResult(True, "redeclared")


def test_value_info_of_a_changed_subgraph_output_is_dropped_or_kept_as_still_valid(tmp_path):
    src = _subgraph_value_info_model(tmp_path / "in.onnx")
    declared = _subgraph_value_info(onnx.load(src))
    result = onnxslim.optimize(src, [RedeclareBranchOutput()], inputs=[_data(16000, 2), _data(0, 1)])
    assert result.report.passes[0].status == "applied"
    kept = _subgraph_value_info(model_io.to_proto(result.model))
    assert kept["then"] == []  # the declaration it was written beside changed: no longer known valid
    assert kept["body"] == declared["body"] and kept["scan_body"] == declared["scan_body"]
    # The else_branch's output is computed another way, declared as before: still valid.
    assert kept["else"] == declared["else"]


# -- random samples that all take one side of a data-dependent If ---------------------------------


def _sign_branch_model(path):
    """``If(ReduceSum(x) > 0)``: ``x @ w16`` else ``x @ w8`` — which side random samples take
    depends on the data, not on an integer input."""
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    nodes = _by_rate("x", "y")
    nodes[0] = helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0)
    nodes.insert(1, helper.make_node("Greater", ["total", "zero"], ["by_rate_is16"]))
    return _save(nodes, [X], path, [zero])


def test_random_samples_are_mirrored_to_reach_a_data_dependent_branch(tmp_path):
    src = _sign_branch_model(tmp_path / "sign.onnx")
    # Seed 0's one sample sums > 0: only then_branch; its mirror (x negated) takes else_branch.
    report = onnxslim.optimize(src, [ScaleWeight(weight="w8")], samples=1).report
    row = report.passes[0]
    assert report.samples == 2 and any("mirrored" in w and "else_branch" in w for w in report.warnings)
    assert row.unvalidated_branches == [] and row.max_abs > 0
    # Given data is never extended: the branch it misses is named.
    row = _row(src, "w8", [{"x": np.ones((1, 8), np.float32)}])
    assert row.max_abs == 0 and row.unvalidated_branches == ["If 'by_rate' else_branch"]
    # A model without branches, or whose samples reach every branch, gets no extra sample.
    report = onnxslim.optimize(_if_in_loop(tmp_path / "loop_if.onnx"), [ScaleWeight(weight="w8")]).report
    assert not any("mirrored" in w for w in report.warnings)
