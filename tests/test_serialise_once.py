"""One serialisation and one shape inference per model state: what the manager reuses (the
session proto, the strict inference after a pass, the checker's verdict) gives the same
statistics, file sizes and final checks as computing each afresh."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxslim
from onnxslim import constants, manager, model_io, shapes, stats

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = sorted((ROOT / "fixtures/models").rglob("*.onnx"))
CORPUS = sorted((Path.home() / ".cache/onnxslim-corpus").glob("*.onnx"))


def _load(path: Path) -> ir.Model | None:
    return model_io.load_document(path).model


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_inline_size_from_the_session_proto_matches_the_layout(path):
    model = _load(path)
    if model is None:
        pytest.skip("onnx-ir cannot represent it")
    assert model_io.inline_size(model, model_io.to_proto(model)) == model_io.inline_size(model)


def test_inline_size_from_the_proto_with_sparse_and_subgraph_initializers():
    path = ROOT / "fixtures/models/sparse_initializer_model.onnx"
    model = _load(path)
    assert model_io._sparse_marked(model)  # the case the proto arithmetic must cover
    assert model_io.inline_size(model, model_io.to_proto(model)) == model_io.inline_size(model)


def _dynamic_matmul() -> ir.Model:
    w = numpy_helper.from_array(np.ones((8, 4), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w],
    )
    return model_io.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))


@pytest.mark.parametrize("path", [p for p in FIXTURES if p.parent.name == "models"] + CORPUS, ids=lambda p: p.name)
def test_statistics_with_reused_inference_and_proto_equal_fresh_ones(path):
    model = _load(path)
    if model is None:
        pytest.skip("onnx-ir cannot represent it")
    try:
        inferred = shapes.infer(model, strict=True)
    except shapes.ShapeInferenceError:
        pytest.skip("strict inference fails: the manager does not reuse it")
    input_shapes = {
        v.name: [d if isinstance(d, int) else 3 for d in v.shape] for v in model.graph.inputs if v.shape is not None
    }
    fresh = stats.compute(model, input_shapes)
    reused = stats.compute(model, input_shapes, inferred=inferred, proto=model_io.to_proto(model))
    assert reused == fresh


def test_declared_shapes_decide_whether_the_declared_inference_serves():
    model = _dynamic_matmul()
    assert not shapes.declares(model, {"x": [2, 8]})  # N is open: inferred afresh at N=2
    assert shapes.declares(model, {})
    inferred = shapes.infer(model, strict=True)
    assert stats.count_macs(model, {"x": [2, 8]}, inferred=inferred) == (2 * 8 * 4, 0)
    assert stats.symbolic_macs(model, inferred=inferred) == "32·N"


def test_a_default_run_serialises_and_infers_a_bounded_number_of_times(monkeypatch):
    """Serialisations: the input's session proto and skeleton (checker + strict inference, which
    ``simplify`` reuses), the result's skeleton (checker + strict inference) and session proto
    (validation, final check, file size), and the statistics' inference at the sample shapes
    (dynamic batch) before and after: 6; inferences: 4 (the fixture's batch dim is dynamic).
    Before reuse it was 13 and 7."""
    counts = {"serialise": 0, "infer": 0}
    serialise, infer = ir.serde.serialize_model, onnx.shape_inference.infer_shapes

    def counting_serialise(*args, **kwargs):
        counts["serialise"] += 1
        return serialise(*args, **kwargs)

    def counting_infer(*args, **kwargs):
        counts["infer"] += 1
        return infer(*args, **kwargs)

    monkeypatch.setattr(ir.serde, "serialize_model", counting_serialise)
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", counting_infer)
    result = onnxslim.optimize(ROOT / "fixtures/models/constant_node_convnet.onnx")
    assert result.report.passes[0].status == "applied"
    assert result.report.final_checks == {"onnx_checker": "ok", "onnxruntime_default_level": "ok"}
    assert counts["serialise"] <= 6 and counts["infer"] <= 4, counts


def test_final_checks_reuse_what_the_last_pass_established(tmp_path):
    """A checker verdict known for the final state is reported as it is (not recomputed), and
    its session proto is what the default-level session loads."""
    model = _load(ROOT / "fixtures/models/mlp.onnx")
    known = manager._State("failed: stated", model_io.to_proto(model), None)
    assert manager._final_checks(model, known) == {"onnx_checker": "failed: stated", "onnxruntime_default_level": "ok"}
    assert manager._final_checks(model) == {"onnx_checker": "ok", "onnxruntime_default_level": "ok"}
