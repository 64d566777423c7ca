"""``simplify`` applies what it safely can when onnxscript raises on one node (the node is left
as it is and named in a note; the run completes, exit 0), and lossless validation of float16
outputs allows one float16 rounding."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxslim
from onnxslim import cli, errors, model_io, validation
from onnxslim.validation import Tolerance

F = TensorProto.FLOAT


def _split_to_sequence_model() -> onnx.ModelProto:
    """``SplitToSequence(x, split)`` with ``split`` a scalar graph input (onnxscript's folder
    raises on it: AttributeError on the unknown split value), after a foldable constant chain
    and an Identity chain that simplify removes."""
    nodes = [
        helper.make_node("Add", ["one", "one"], ["two"]),
        helper.make_node("Mul", ["x", "two"], ["x2"]),
        helper.make_node("Identity", ["x2"], ["x3"]),
        helper.make_node("SplitToSequence", ["x3", "split"], ["seq"], axis=1),
        helper.make_node("ConcatFromSequence", ["seq"], ["y"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "sts",
        [helper.make_tensor_value_info("x", F, [3, 6]), helper.make_tensor_value_info("split", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", F, [3, 6])],
        [numpy_helper.from_array(np.array(1.0, np.float32), "one")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(proto, feeds):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def test_a_node_onnxscript_cannot_fold_is_left_and_the_rest_simplified():
    model = _split_to_sequence_model()
    feeds = {"x": np.arange(18, dtype=np.float32).reshape(3, 6), "split": np.array(2, np.int64)}
    result = onnxslim.optimize(model, inputs=[feeds])
    row = result.report.passes[0]
    assert row.name == "simplify" and row.status == "applied", (row.status, row.reason)
    assert result.complete and result.exit_code() == 0
    assert any("skipped folding SplitToSequence" in n and "AttributeError" in n for n in row.notes)
    proto = model_io.to_proto(result.model)
    ops = [n.op_type for n in proto.graph.node]
    assert "Add" not in ops and "Identity" not in ops and "SplitToSequence" in ops  # the rest folded
    assert all(m.max_abs == 0 for m in row.metrics)
    np.testing.assert_array_equal(_run(proto, feeds)[0], _run(model, feeds)[0])


def test_split_to_sequence_with_no_options_exits_0(tmp_path, capfd):
    """No data: ``split`` takes 1 (from the graph: 0 is invalid), and simplify completes."""
    src = tmp_path / "in.onnx"
    onnx.save(_split_to_sequence_model(), src)
    code = cli.main([str(src), str(tmp_path / "out.onnx"), "--quiet", "--report", str(tmp_path / "r.json")])
    assert code == 0, capfd.readouterr().err
    assert (tmp_path / "out.onnx").exists()


class _RaisingRule:
    """A rewrite rule that raises on every node it is tried on."""

    name = "AlwaysRaises"
    remove_nodes = True
    graph_pre_visitor = graph_post_visitor = None

    def try_rewrite(self, *args, **kwargs):
        raise ValueError("broken rule")


def test_a_rule_that_raises_is_skipped_where_it_raises(monkeypatch):
    from onnxslim.passes import _simplify_rules

    real = _simplify_rules.extra_rules
    monkeypatch.setattr(_simplify_rules, "extra_rules", lambda: [*real(), _RaisingRule()])
    model = _split_to_sequence_model()
    feeds = {"x": np.ones((3, 6), np.float32), "split": np.array(3, np.int64)}
    result = onnxslim.optimize(model, inputs=[feeds])
    row = result.report.passes[0]
    assert row.status == "applied" and result.exit_code() == 0
    assert any("rule AlwaysRaises at" in n and "ValueError: broken rule" in n for n in row.notes)
    assert row.details["steps_skipped"] >= 2  # the folder's node and the rule's


def test_float16_outputs_allow_one_float16_rounding():
    ref = [{"y": np.array([0.7, 1.3, -1.9], np.float16)}]
    one_step = [{"y": ref[0]["y"] + np.array([np.float16(2**-11), 0, 0], np.float16)}]
    assert validation.compare(ref, one_step)[0].within_tolerance
    far = [{"y": ref[0]["y"] + np.array([np.float16(0.01), 0, 0], np.float16)}]
    assert not validation.compare(ref, far)[0].within_tolerance
    # rtol=0 asks for the absolute part only, and float32 outputs keep 1e-5.
    assert not validation.compare(ref, one_step, default=Tolerance(1e-5, 0.0))[0].within_tolerance
    ref32 = [{"y": np.array([0.7, 1.3, -1.9], np.float32)}]
    assert not validation.compare(ref32, [{"y": ref32[0]["y"] + np.float32(1e-4)}])[0].within_tolerance


def test_empty_optional_outputs_agree():
    """An empty optional output is None; None on both sides is equal (a lossless pass on a model
    whose If returns an empty optional was reported as a changed shape)."""
    seq = [np.arange(5, dtype=np.float32)]
    ref = [{"o": None}, {"o": seq}]
    (same,) = validation.compare(ref, [{"o": None}, {"o": [seq[0].copy()]}])
    assert same.within_tolerance and same.shape_equal and same.max_abs == 0
    (only_empty,) = validation.compare([{"o": None}], [{"o": None}])
    assert only_empty.within_tolerance
    for cand in ([{"o": seq}, {"o": seq}], [{"o": None}, {"o": None}]):
        (differs,) = validation.compare(ref, cand)
        assert not differs.within_tolerance and not differs.shape_equal


def test_no_validate_hint_on_the_command_line():
    token = errors._ON_COMMAND_LINE.set(True)
    try:
        assert errors.arg("validate", False) == "--no-validate"
        assert errors.arg("in_place", True) == "--in-place"
    finally:
        errors._ON_COMMAND_LINE.reset(token)
    assert errors.arg("validate", False) == "validate=False"


@pytest.mark.parametrize(
    "name",
    ["test_split_to_sequence_1", "test_attention_4d_fp16_expanded", "test_attention_4d_causal_fp16_expanded", "test_attention_4d_gqa_with_past_and_present_fp16_expanded", "test_if_opt"],
)
@pytest.mark.parametrize("own_inputs", [True, False], ids=["case-inputs", "no-data"])
def test_backend_cases_that_rolled_back_simplify_now_complete(name, own_inputs):
    from tests import test_backend_nodes as sweep

    case = next(c for c in sweep.all_cases() if c.name == name)
    outcome = sweep.check_simplify(case, own_inputs)
    assert outcome.status == sweep.PASS and outcome.detail.split(":")[0] in ("applied", "no change"), outcome
