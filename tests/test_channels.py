"""The channel-group analysis: group structure, frozen reasons, and exact index bookkeeping.

The exactness check: removing channels must give the same outputs as keeping them with every
producer slice of the removed channels zeroed (conv/Gemm/MatMul filters and biases, BN
parameters, per-channel constants), on fixtures where every op between maps 0 to 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from fixtures import models as fx
from onnxslim import channels, model_io, runtime

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "models"
PRUNABLE = ["resnet", "mobilenetv2", "yolo_neck", "bert_block", "mlp", "if_model", "constant_node_convnet", "int8_weights"]
PRUNABLE += ["channel_ops"]


def load_fixture(name: str) -> onnx.ModelProto:
    if name == "digits_cnn":
        return onnx.load(FIXTURES / "digits_cnn.onnx")
    return fx.BUILDERS[name]()


def run(model, feeds):
    with runtime.session(model, "disabled") as sess:
        return runtime.run(sess, feeds)


def strict_infer(model) -> None:
    onnx.shape_inference.infer_shapes(model_io.to_proto(model), check_type=True, strict_mode=True, data_prop=True)


def random_keep(analysis, fraction: float, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {g: np.sort(rng.choice(g.size, max(1, g.size - int(g.size * fraction)), replace=False)) for g in analysis.groups}


def zero_removed(model, keep_by_name: dict[str, np.ndarray]) -> None:
    """Zero every producer slice of the removed slots (divisors and variances set to 1)."""
    analysis = channels.analyze(model)
    for group in analysis.groups:
        gone = np.setdiff1d(np.arange(group.size), keep_by_name[group.name])
        for member in group.producers:
            arr = member.tensor.numpy().copy() if member.tensor.can_replace else member.tensor._parts[0].numpy().copy()
            index = [slice(None)] * arr.ndim
            index[member.axis] = member.positions[np.isin(member.slots, gone)]
            arr[tuple(index)] = 1 if member.role in ("divisor", "bn_var") else 0
            if member.tensor.can_replace:
                member.tensor.replace(arr)
            else:  # INT8 storage: a zero quantized value dequantizes to zero (no zero point here)
                member.tensor._parts[0].write(arr)


# --------------------------------------------------------------------------- structure


def test_resnet_residual_stream_is_one_group_with_all_its_members():
    analysis = channels.analyze(model_io.load(fx.resnet()))
    stem = next(g for g in analysis.groups if g.name == "conv1/Conv")
    weights = {m.tensor.name for m in stem.producers if m.role == "weight"}
    # conv1 and the second conv of both 16-channel blocks add into the same stream
    assert weights == {"conv1.weight", "layer1.0.conv2.weight", "layer1.1.conv2.weight"}
    assert {m.tensor.name for m in stem.producers if m.role == "bn_scale"} == {"bn1.weight", "layer1.0.bn2.weight", "layer1.1.bn2.weight"}
    consumers = {m.tensor.name for m in stem.consumers}
    assert consumers == {"layer1.0.conv1.weight", "layer1.1.conv1.weight", "layer2.0.conv1.weight", "layer2.0.downsample.0.weight"}
    assert stem.size == 16 and stem.kind == "conv"
    assert all(m.mapping == "identity" for m in stem.producers + stem.consumers)


def test_yolo_split_concat_offsets_and_c2f_coupling():
    analysis = channels.analyze(model_io.load(fx.yolo_neck()))
    cv1 = next(g for g in analysis.groups if g.name == "model.3.cv1.conv/Conv")
    assert cv1.size == 64
    # the bottleneck's second conv is added to half1 (slots 32..63 of cv1)
    cv2 = next(m for m in cv1.producers if m.tensor.name == "model.3.m.0.cv2.conv.weight")
    assert np.array_equal(cv2.slots, np.arange(32, 64)) and cv2.mapping == "offset"
    # the C2f output conv reads cv1's 64 channels at offsets 0..63 and the bottleneck again at 64..95
    reader = [m for m in cv1.consumers if m.tensor.name == "model.3.cv2.conv.weight"]
    assert len(reader) == 1
    assert np.array_equal(reader[0].positions, np.arange(96)[np.r_[0:64, 64:96]])
    assert np.array_equal(reader[0].slots, np.r_[np.arange(64), np.arange(32, 64)])
    assert any(e.kind == "split" for e in analysis._edits)


def test_bert_heads_and_ffn_groups():
    analysis = channels.analyze(model_io.load(fx.bert_block()))
    kinds = {g.kind: g for g in analysis.groups}
    heads, ffn = kinds["heads"], kinds["linear"]
    assert heads.size == 4 and heads.slot_width == 16
    q = next(m for m in heads.producers if m.tensor.name.endswith("query.weight"))
    assert q.mapping == "repeat" and np.array_equal(q.slots, np.repeat(np.arange(4), 16))
    out = next(m for m in heads.consumers if m.tensor.name.endswith("output.dense.weight"))
    assert out.axis == 0 and np.array_equal(out.slots, np.repeat(np.arange(4), 16))
    assert ffn.size == 256
    frozen = [f for f in analysis.frozen if f.group.size == 64 and f.group.kind == "residual"]
    assert frozen and any("residual stream" in r for r in frozen[0].reasons)


def test_flatten_into_gemm_repeats_channels():
    proto = fx.if_model()
    analysis = channels.analyze(model_io.load(proto))
    (group,) = analysis.groups
    fc = [m for m in group.consumers if m.tensor.name == "fc.weight"]
    assert fc and fc[0].mapping == "repeat"
    assert np.array_equal(fc[0].slots, np.repeat(np.arange(8), 64))
    # both If branches use the same conv weight: one group, one producer weight
    assert {m.tensor.name for m in group.producers if m.role == "weight"} == {"conv.weight"}


def test_depthwise_conv_is_pass_through_and_group_attribute_rewritten():
    model = model_io.load(fx.constant_node_convnet())
    analysis = channels.analyze(model)
    stem = next(g for g in analysis.groups if g.name == "conv1/Conv")
    assert stem.size == 16
    assert {m.node.name for m in stem.producers if m.role == "weight"} == {"conv1/Conv", "dwconv/Conv"}
    analysis.apply({stem: np.arange(10)})
    dw = next(n for n in model.graph if n.name == "dwconv/Conv")
    assert dw.attributes["group"].as_int() == 10
    strict_infer(model)


# --------------------------------------------------------------------------- frozen reasons


def _tiny(nodes, inits, out_shape, extra_outputs=()):
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape), *extra_outputs],
        initializer=[numpy_helper.from_array(a, n) for n, a in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def _conv_inits(rng, names_shapes):
    return {n: rng.normal(size=s).astype(np.float32) for n, s in names_shapes.items()}


def test_frozen_reasons_name_the_node():
    rng = np.random.default_rng(0)
    inits = _conv_inits(rng, {"w1": (8, 4, 1, 1), "w2": (2, 2, 1, 1)})
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
        helper.make_node("DepthToSpace", ["a"], ["b"], name="d2s", blocksize=2),
        helper.make_node("Conv", ["b", "w2"], ["y"], name="c2"),
    ]
    analysis = channels.analyze(model_io.load(_tiny(nodes, inits, ["N", 2, 16, 16])))
    reasons = {f.group.name: f.reason for f in analysis.frozen}
    assert reasons["c1"] == "unsupported op DepthToSpace at node d2s"
    assert reasons["c2"] == "graph output 'y'"
    assert analysis.groups == []


def test_reshape_with_computed_shape_freezes():
    rng = np.random.default_rng(0)
    inits = _conv_inits(rng, {"w1": (8, 4, 1, 1)})
    inits["w2"] = rng.normal(size=(8 * 64, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
        helper.make_node("Shape", ["x"], ["s"], name="shape", start=0, end=1),
        helper.make_node("Constant", [], ["m1"], name="const", value=numpy_helper.from_array(np.array([512], np.int64))),
        helper.make_node("Neg", ["m1"], ["feat"], name="neg"),
        helper.make_node("Neg", ["feat"], ["feat2"], name="neg2"),
        helper.make_node("Concat", ["s", "feat2"], ["shape_out"], name="cat", axis=0),
        helper.make_node("Reshape", ["a", "shape_out"], ["r"], name="reshape"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc"),
    ]
    analysis = channels.analyze(model_io.load(_tiny(nodes, inits, ["N", 3])))
    reasons = {f.group.name: f.reason for f in analysis.frozen}
    assert reasons["c1"] == "Reshape with computed shape at node reshape"


def test_squeeze_with_computed_axes_freezes_even_at_a_known_shape():
    # Without the axes every size-1 dim would go ([1, 8, 1, 1] -> [8]); computed axes may keep
    # the batch dim, so the channel axis after the Squeeze is unknown.
    rng = np.random.default_rng(0)
    inits = _conv_inits(rng, {"w1": (8, 4, 1, 1), "w2": (8, 3)})
    inits["axes"] = np.array([2, 3], np.int64)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
        helper.make_node("GlobalAveragePool", ["a"], ["g"], name="gap"),
        helper.make_node("Abs", ["axes"], ["ax"], name="computed_axes"),
        helper.make_node("Squeeze", ["g", "ax"], ["s"], name="sq"),
        helper.make_node("MatMul", ["s", "w2"], ["y"], name="fc"),
    ]
    model = _tiny(nodes, inits, [1, 3])
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    analysis = channels.analyze(model_io.load(model))
    reasons = {f.group.name: f.reason for f in analysis.frozen}
    assert reasons["c1"] == "Squeeze with unknown axes (Squeeze at node sq)"


def test_residual_with_graph_input_freezes():
    rng = np.random.default_rng(0)
    inits = _conv_inits(rng, {"w1": (4, 4, 3, 3), "w2": (4, 4, 1, 1)})
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["a", "x"], ["b"], name="add"),
        helper.make_node("Conv", ["b", "w2"], ["y"], name="c2"),
    ]
    analysis = channels.analyze(model_io.load(_tiny(nodes, inits, ["N", 4, 8, 8])))
    reasons = {f.group.name: f.reason for f in analysis.frozen}
    assert "Add at node add combines channels with 'x'" in reasons["c1"]


def test_weight_read_by_an_unsupported_op_freezes():
    rng = np.random.default_rng(0)
    inits = _conv_inits(rng, {"w1": (8, 4, 1, 1), "w2": (3, 8, 1, 1)})
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
        helper.make_node("Conv", ["a", "w2"], ["y"], name="c2"),
        helper.make_node("Transpose", ["w1"], ["w1t"], name="peek", perm=[1, 0, 2, 3]),
    ]
    extra = [helper.make_tensor_value_info("w1t", TensorProto.FLOAT, None)]
    analysis = channels.analyze(model_io.load(_tiny(nodes, inits, ["N", 3, 8, 8], extra)))
    reasons = {f.group.name: f.reasons for f in analysis.frozen}
    assert any("weight 'w1' is also read by Transpose at node peek" in r for r in reasons["c1"])


def test_channel_ops_fixture_has_every_op_inside_a_group():
    """channel_ops (ConvTranspose, Gemm transA, InstanceNormalization, PRelu, Pad, Div/Sub,
    Resize, channel Slice, Expand): nothing freezes but the graph output's Gemm, so the
    exactness test below runs through every one of those ops."""
    analysis = channels.analyze(model_io.load(fx.channel_ops()))
    sizes = {g.name: g.size for g in analysis.groups}
    assert sizes == {"conv1/Conv": 8, "deconv/ConvTranspose": 6, "conv2/Conv": 10, "fc1/Gemm": 12}
    assert [(f.group.name, f.reason) for f in analysis.frozen] == [("fc2/Gemm", "graph output 'logits'")]
    conv1 = next(g for g in analysis.groups if g.name == "conv1/Conv")
    roles = {m.tensor.name: m.role for m in conv1.producers}
    assert roles["norm.scale"] == "bn_scale" and roles["act.slope"] == "slope"
    assert roles["scale.divisor"] == "divisor" and roles["scale.shift"] == "shift"
    fc1 = next(g for g in analysis.groups if g.name == "fc1/Gemm")
    assert [(m.tensor.name, m.axis) for m in fc1.consumers] == [("fc2.weight", 0)]  # transA: rows


def test_expand_shape_constant_follows_the_kept_channels():
    model = model_io.load(fx.channel_ops())
    analysis = channels.analyze(model)
    conv2 = next(g for g in analysis.groups if g.name == "conv2/Conv")
    analysis.apply({conv2: [0, 3, 4, 8]})  # slots 3, 4 and 8 are inside the Slice 2..8
    values = {t.name: numpy_helper.to_array(t) for t in model_io.to_proto(model).graph.initializer}
    assert values["se.shape"].tolist() == [1, 3, 20, 20]
    assert values["slice.starts"].tolist() == [1] and values["slice.ends"].tolist() == [4]
    strict_infer(model)


@pytest.mark.parametrize(
    "shape, frozen",
    [([1, 1, 8, 8], None), ([2, 6, 8, 8], None), ([6, 8, 8], None), ([1, 12, 8, 8], "Expand broadcasting a channel")],
)
def test_expand_passes_a_channel_axis_of_1_or_c(shape, frozen):
    rng = np.random.default_rng(0)
    c = 1 if frozen else 6
    inits = _conv_inits(rng, {"w1": (c, 4, 1, 1), "w2": (2, max(c, shape[-3]), 1, 1)})
    inits["shape"] = np.array(shape, dtype=np.int64)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
        helper.make_node("Expand", ["a", "shape"], ["b"], name="ex"),
        helper.make_node("Conv", ["b", "w2"], ["y"], name="c2"),
    ]
    proto = _tiny(nodes, inits, None)
    analysis = channels.analyze(model_io.load(proto))
    reasons = {f.group.name: f.reason for f in analysis.frozen}
    if frozen:
        assert frozen in reasons["c1"]
        return
    assert "c1" not in reasons
    pruned, zeroed = model_io.load(proto), model_io.load(proto)
    analysis = channels.analyze(pruned)
    keep = {g: np.array([0, 2, 5]) for g in analysis.groups}
    zero_removed(zeroed, {g.name: k for g, k in keep.items()})
    analysis.apply(keep)
    strict_infer(pruned)
    feeds = {"x": rng.normal(size=(2, 4, 8, 8)).astype(np.float32)}
    np.testing.assert_allclose(run(pruned, feeds)["y"], run(zeroed, feeds)["y"], rtol=0, atol=1e-5)


def test_frozen_group_cannot_be_applied():
    analysis = channels.analyze(model_io.load(fx.mlp()))
    with pytest.raises(ValueError, match="frozen"):
        analysis.apply({analysis.frozen[0].group: [0]})
    group = analysis.groups[0]
    with pytest.raises(ValueError, match="slots in range"):
        analysis.apply({group: []})


def test_a_group_feeding_only_a_concat_can_keep_no_slot():
    """Concat([relu(c1), relu(c2)]) -> c3: c2 may lose every slot (the Concat drops its input,
    c2 and its Relu leave with w2), not c1 and c2 together (c3 would read nothing)."""
    rng = np.random.default_rng(0)
    inits = _conv_inits(rng, {"w1": (4, 4, 1, 1), "w2": (3, 4, 1, 1), "w3": (2, 7, 1, 1)})
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
        helper.make_node("Relu", ["a"], ["ar"], name="r1"),
        helper.make_node("Conv", ["x", "w2"], ["b"], name="c2"),
        helper.make_node("Relu", ["b"], ["br"], name="r2"),
        helper.make_node("Concat", ["ar", "br"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["cat", "w3"], ["y"], name="c3"),
    ]
    proto = _tiny(nodes, inits, ["N", 2, 8, 8])
    pruned, zeroed = model_io.load(proto), model_io.load(proto)
    analysis = channels.analyze(pruned)
    groups = {g.name: g for g in analysis.groups}
    assert analysis.can_empty([groups["c2"]]) and not analysis.can_empty([groups["c1"], groups["c2"]])
    with pytest.raises(ValueError, match="slots in range"):
        analysis.apply({groups["c1"]: [], groups["c2"]: []})
    zero_removed(zeroed, {"c1": np.arange(4), "c2": []})
    assert analysis.apply({groups["c2"]: []}) == {"groups": 1, "channels_removed": 3, "nodes_removed": 2}
    strict_infer(pruned)
    assert [n.name for n in pruned.graph] == ["c1", "r1", "cat", "c3"] and "w2" not in pruned.graph.initializers
    assert pruned.graph.initializers["w3"].shape == ir.Shape([2, 4, 1, 1])
    feeds = {"x": rng.normal(size=(2, 4, 8, 8)).astype(np.float32)}
    np.testing.assert_allclose(run(pruned, feeds)["y"], run(zeroed, feeds)["y"], rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("name", PRUNABLE + ["digits_cnn"])
@pytest.mark.parametrize("fraction", [0.3, 0.5])
def test_removal_equals_zeroing(name, fraction):
    proto = load_fixture(name)
    feeds = fx.random_inputs(proto, batch=2)
    pruned = model_io.load(proto)
    analysis = channels.analyze(pruned)
    assert analysis.groups, "every fixture has something prunable"
    keep = random_keep(analysis, fraction)
    keep_by_name = {g.name: k for g, k in keep.items()}
    zeroed = model_io.load(proto)
    zero_removed(zeroed, keep_by_name)
    result = analysis.apply(keep)
    assert result["channels_removed"] == sum(g.size - len(k) for g, k in keep.items())

    onnx.checker.check_model(model_io.to_proto(pruned), full_check=True)
    strict_infer(pruned)
    expected, got = run(zeroed, feeds), run(pruned, feeds)
    for key in expected:
        assert got[key].shape == expected[key].shape
        scale = max(1.0, float(np.abs(expected[key]).max()))
        np.testing.assert_allclose(got[key], expected[key], rtol=0, atol=1e-5 * scale)


def test_prediction_matches_measured_macs_and_params():
    from onnxslim import stats

    proto = fx.resnet()
    model = model_io.load(proto)
    analysis = channels.analyze(model)
    keep = random_keep(analysis, 0.5)
    predicted = analysis.predict(keep, {"input": [1, 3, 32, 32]})
    before = stats.compute(model, {"input": [1, 3, 32, 32]})
    assert predicted["macs_before"] == before.macs and predicted["params_before"] == before.params
    analysis.apply(keep)
    after = stats.compute(model, {"input": [1, 3, 32, 32]})
    assert predicted["macs_after"] == after.macs
    assert predicted["params_after"] == after.params


def test_analysis_leaves_model_bit_identical():
    proto = fx.yolo_neck()
    model = model_io.load(proto)
    before = model_io.to_bytes(model)
    channels.analyze(model).predict()
    assert model_io.to_bytes(model) == before


def test_shared_shape_constant_is_rewritten_once_for_all_heads():
    model = model_io.load(fx.bert_block())
    analysis = channels.analyze(model)
    heads = next(g for g in analysis.groups if g.kind == "heads")
    analysis.apply({heads: [1, 3]})
    shapes = [model_io.to_proto(model).graph.initializer]
    values = {t.name: numpy_helper.to_array(t) for t in shapes[0]}
    assert values["encoder.layer.0.attention.self.heads_shape"].tolist() == [0, 0, 2, 16]
    assert values["encoder.layer.0.attention.self.merge_shape"].tolist() == [0, 0, 32]
    assert not any(name.endswith("_pruned") for name in values)  # no private copies, no orphans


def test_graph_without_weighted_layers_has_no_groups():
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        "plain",
        [helper.make_tensor_value_info("x", 1, [1, 4])],
        [helper.make_tensor_value_info("y", 1, [1, 4])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    analysis = channels.analyze(model_io.load(proto))
    assert analysis.groups == [] and analysis.frozen == []
