"""Calibration.staged: captures that run only the graph since the previous cut.

Checked against whole-model captures: the same arrays, also after weights behind the cut
change (as reconstruction refits them), also for weights held in Constant nodes; fewer nodes
per run; whole-model fallback for models with subgraphs; and reconstruction through staged
captures writes the same weights as through whole-model runs.
"""

from __future__ import annotations

import numpy as np
import pytest

from fixtures import models as fx
from onnxslim import calibration as calibration_module
from onnxslim import model_io, runtime
from onnxslim.calibration import Calibration
from onnxslim.constants import constant
from onnxslim.pass_api import PassContext
from onnxslim.passes.prune import Prune


def whole(model, samples, values):
    out = []
    with runtime.session(model, "basic", extra_outputs=values) as sess:
        for s in samples:
            out.append(runtime.run(sess, s, [v.name for v in values]))
    return out


def convs(model):
    return [n for n in model.graph if n.op_type == "Conv"]


def spy_nodes(monkeypatch):
    counts = []
    original = calibration_module.StagedCapture._proto

    def counting(self, nodes, *args):
        counts.append(len(nodes))
        return original(self, nodes, *args)

    monkeypatch.setattr(calibration_module.StagedCapture, "_proto", counting)
    return counts


@pytest.mark.parametrize("builder", [fx.resnet, fx.constant_node_convnet])
def test_staged_captures_equal_whole_model_runs_after_weights_change(monkeypatch, builder):
    proto = builder()
    model = model_io.load(proto)
    samples = [fx.random_inputs(proto, seed=i) for i in range(3)]
    staged = Calibration(samples).staged(model)
    counts = spy_nodes(monkeypatch)
    layers = convs(model)
    total = len(list(model.graph))
    for k, layer in enumerate(layers):
        wanted = [layer.inputs[0]]
        got = list(staged.iter_capture(wanted, changing=layers[k:]))
        expected = whole(model, samples, [v for v in wanted if not v.is_graph_input()])
        for g, e, s in zip(got, expected, samples):
            name = wanted[0].name
            np.testing.assert_allclose(g[name], e.get(name, s.get(name)), rtol=1e-5, atol=1e-6)
        weight = constant(layer.inputs[1])  # this layer changes after its capture, like a refit
        weight.replace((weight.numpy() * 0.5).astype(weight.numpy().dtype))
    assert staged.staged and len(counts) >= len(layers) - 1  # (the first conv may read the graph input)
    assert sum(counts) < len(counts) * total / 2  # each run covers only its part of the graph


def test_models_with_subgraphs_use_whole_model_runs(monkeypatch):
    proto = fx.if_model()
    model = model_io.load(proto)
    samples = [fx.random_inputs(proto, seed=i) for i in range(2)]
    staged = Calibration(samples).staged(model)
    counts = spy_nodes(monkeypatch)
    value = next(n for n in model.graph if n.op_type == "If").outputs[0]
    got = list(staged.iter_capture([value]))
    expected = whole(model, samples, [value])
    assert not staged.staged and counts == []
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g[value.name], e[value.name])


@pytest.mark.parametrize("builder", [fx.resnet, fx.constant_node_convnet])
def test_reconstruction_through_staged_captures_matches_whole_model_runs(monkeypatch, builder):
    proto = builder()
    calib = Calibration([fx.random_inputs(proto, seed=i, batch=2) for i in range(10)])
    results = []
    for staged in (True, False):
        if not staged:
            monkeypatch.setattr(calibration_module.StagedCapture, "_segment", lambda *a, **k: None)
        model = model_io.load(proto)
        result = Prune(ratio=0.3, criterion="l2", reconstruct=True).run(model, PassContext(calibration=calib))
        assert result.details["reconstruction"]["waves"] >= 2
        results.append({v.name: v.const_value.numpy() for v in model.graph.initializers.values()} | {
            n.outputs[0].name: constant(n.outputs[0]).numpy() for n in model.graph if n.op_type == "Constant"})
    assert results[0].keys() == results[1].keys()
    for name in results[0]:
        np.testing.assert_allclose(results[0][name], results[1][name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_weights_in_external_data_are_embedded_in_segments(tmp_path):
    """A model loaded lazily from external data: segments carry the weights' values (a reference to the
    data file would be refused by onnxruntime, and the capture would fall back to whole-model runs)."""
    proto = fx.resnet()
    fx.save_with_external_data(proto, tmp_path / "m.onnx")
    model = model_io.load(tmp_path / "m.onnx")
    samples = [fx.random_inputs(proto, seed=i) for i in range(2)]
    staged = Calibration(samples).staged(model)
    layer = convs(model)[-1]
    got = list(staged.iter_capture([layer.inputs[0]], changing=[layer]))
    assert staged.staged
    for g, e in zip(got, whole(model, samples, [layer.inputs[0]])):
        np.testing.assert_allclose(g[layer.inputs[0].name], e[layer.inputs[0].name], rtol=1e-5, atol=1e-6)


def test_a_segment_onnxruntime_refuses_falls_back_to_whole_model_runs(monkeypatch):
    proto = fx.resnet()
    model = model_io.load(proto)
    samples = [fx.random_inputs(proto, seed=i) for i in range(2)]
    original = runtime.session

    def refusing(source, *args, **kwargs):
        if getattr(getattr(source, "graph", None), "name", None) == "segment":
            raise runtime.ModelError("refused")
        return original(source, *args, **kwargs)

    monkeypatch.setattr(runtime, "session", refusing)
    staged = Calibration(samples).staged(model)
    layer = convs(model)[3]
    got = list(staged.iter_capture([layer.inputs[0]], changing=[layer]))
    assert not staged.staged
    for g, e in zip(got, whole(model, samples, [layer.inputs[0]])):
        np.testing.assert_allclose(g[layer.inputs[0].name], e[layer.inputs[0].name])


def test_capture_types_untyped_values_by_inference_and_leaves_annotations_alone():
    """A value without a type is captured with the type onnx inference gives it (a Cast to
    int64 after a float input: guessing from the producer's input would say float and
    onnxruntime would refuse the session), and the model's annotations stay as they were."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Cast", ["r"], ["c"], to=TensorProto.INT64),
            helper.make_node("Cast", ["c"], ["y"], to=TensorProto.FLOAT),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    model = model_io.load(proto)
    values = {v.name: v for n in model.graph for v in n.outputs}
    assert values["c"].dtype is None and values["r"].dtype is None
    samples = [{"x": np.array([[-1.5, 0.2, 2.7, 3.0]], dtype=np.float32)}]
    wanted = [values["c"], values["r"]]
    for captured in (list(Calibration(samples).iter_capture(model, wanted)), list(Calibration(samples).staged(model).iter_capture(wanted))):
        assert captured[0]["c"].dtype == np.int64 and captured[0]["c"].tolist() == [[0, 0, 2, 3]]
        assert captured[0]["r"].dtype == np.float32
        assert values["c"].dtype is None and values["r"].dtype is None
