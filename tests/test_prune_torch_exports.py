"""``prune`` on architectures exported by ``torch.onnx.export`` (fixtures/torch_models.py):
attention heads behind computed shapes, grouped convs, dense concatenation, channel shuffle,
LayerScale, and a BERT-base-shaped encoder from ``transformers`` (12 layers, 12 heads).

Exactness: the pruned model must give what the original gives with the removed channels'
producer slices zeroed (filters, biases, BN parameters, per-channel constants), to 1e-5."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxslim import channels, model_io, runtime, stats
from onnxslim.pass_api import PassContext
from onnxslim.passes.prune import Prune

TORCH = Path(__file__).resolve().parent.parent / "fixtures" / "models" / "torch"
#: the dimensions fixtures/torch_models.py builds the BERT fixture with (tests never import torch)
BERT = {"layers": 12, "heads": 12, "hidden": 48, "intermediate": 192}

#: name -> (groups pruned at ratio 0.3, frozen groups and the reason each stays whole)
EXPECTED = {
    # heads and FFN of both blocks; residual stream (LayerNorm) and the graph output stay
    "vit_heads": ({"heads": 2, "linear": 2}, {"residual stream", "graph output"}),
    # nn.MultiheadAttention's export folds heads into the batch axis ([N, B*heads, head_dim]):
    # followed as batch × heads (mapping.Folded), whole heads go; the out-projection's
    # [N*B, C] → [N, B, C] Reshape is the residual width, frozen anyway
    "vit_mha": ({"heads": 2, "linear": 2}, {"residual stream", "graph output", "Reshape that cannot be aligned"}),
    # the window-reverse Reshape ([4·batch, 16, C] → [batch, 2, 2, 4, 4, C]) is not followed, so
    # the attention projection's output (the residual width, frozen anyway) stays whole
    "swin": ({"heads": 2, "linear": 2}, {"residual stream", "graph output", "Reshape that cannot be aligned"}),
    "resnext": ({"conv": 9}, {"graph output"}),
    "regnet": ({"conv": 8}, {"graph output"}),
    "densenet": ({"conv": 18}, {"graph output"}),
    "shufflenet": ({"conv": 6}, {"graph output"}),
    "convnext": ({"linear": 2}, {"residual stream", "graph output"}),
    "bert": ({"heads": 12, "linear": 12}, {"graph output"}),
}


def feeds_for(proto: onnx.ModelProto, batch: int = 2, seq: int = 11, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in proto.graph.input:
        dims = [d.dim_value or (batch if i == 0 else seq) for i, d in enumerate(vi.type.tensor_type.shape.dim)]
        if vi.type.tensor_type.elem_type == onnx.TensorProto.INT64:
            feeds[vi.name] = rng.integers(0, 500, dims) if vi.name == "input_ids" else np.ones(dims, np.int64)
            if vi.name == "attention_mask":
                feeds[vi.name][:, -3:] = 0  # padding: the mask path must survive pruning
        else:
            feeds[vi.name] = rng.normal(size=dims).astype(np.float32)
    return feeds


def run(model, feeds, level: str = "disabled"):
    with runtime.session(model, level) as sess:
        return runtime.run(sess, feeds)


def zeroed(proto: onnx.ModelProto, removed: dict[str, list[int]]) -> onnx.ModelProto:
    """The original with every producer slice of the removed slots zeroed (divisors and
    variances set to 1), found by analysing it again."""
    model = model_io.load(proto)
    analysis = channels.analyze(model)
    seen = set()
    for group in analysis.groups:
        if group.name not in removed:
            continue
        seen.add(group.name)
        for member in group.producers:
            arr = member.tensor.numpy().copy()
            index = [slice(None)] * arr.ndim
            index[member.axis] = member.positions[np.isin(member.slots, removed[group.name])]
            arr[tuple(index)] = 1 if member.role in ("divisor", "bn_var") else 0
            member.tensor.replace(arr)
            if member.tensor.value.dtype is None:  # an untyped Identity view: no shape to write
                member.tensor.value.shape = None
    assert seen == set(removed)
    return model_io.to_proto(model)


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def pruned(request):
    name = request.param
    proto = onnx.load(TORCH / f"{name}.onnx")
    model = model_io.load(proto)
    result = Prune(ratio=0.3, criterion="l2").run(model, PassContext())
    return name, proto, model, result


def test_every_block_prunes_and_frozen_groups_say_why(pruned):
    name, _, _, result = pruned
    kinds, reasons = EXPECTED[name]
    got: dict[str, int] = {}
    for entry in result.details["pruned"]:
        got[entry["kind"]] = got.get(entry["kind"], 0) + 1
        assert entry["after"] < entry["before"]
    assert got == kinds
    # every frozen group is frozen for an expected reason (its first one may be another)
    analysis = channels.analyze(model_io.load(onnx.load(TORCH / f"{name}.onnx")))
    for frozen in analysis.frozen:
        assert any(key in r for r in frozen.reasons for key in reasons), frozen.reasons
    assert all(any(key in r for f in analysis.frozen for r in f.reasons) for key in reasons)


def test_pruned_model_is_exact_checked_and_loads_at_every_level(pruned):
    name, proto, model, result = pruned
    out = model_io.to_proto(model)
    onnx.checker.check_model(out, full_check=True)
    for init in out.graph.initializer:
        assert 0 not in init.dims, f"{init.name} lost every channel"
    feeds = feeds_for(proto)
    removed = {e["group"]: e["removed"] for e in result.details["pruned"]}
    reference = run(zeroed(proto, removed), feeds)
    got = run(out, feeds)
    for key in reference:
        assert got[key].shape == reference[key].shape
        np.testing.assert_allclose(got[key], reference[key], atol=1e-5, rtol=0)
    data = out.SerializeToString()
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = level
        sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        outputs = sess.run(None, feeds)
        np.testing.assert_allclose(outputs[0], got[proto.graph.output[0].name], atol=1e-4, rtol=1e-4)


def _bert_macs(layers: int, hidden: int, heads: int, head_dim: int, ffn: list[int], kept_heads: list[int], seq: int) -> int:
    """MACs of the BERT encoder at batch 1 from its dimensions (not from the graph)."""
    total = hidden * hidden  # pooler
    for layer in range(layers):
        inner = kept_heads[layer] * head_dim
        total += 3 * seq * hidden * inner  # q, k, v
        total += 2 * kept_heads[layer] * seq * seq * head_dim  # scores and weighted values
        total += seq * inner * hidden  # attention output
        total += 2 * seq * hidden * ffn[layer]  # FFN in and out
    return total


def test_bert_prunes_every_layer_and_macs_fall_as_computed():
    proto = onnx.load(TORCH / "bert.onnx")
    model = model_io.load(proto)
    shapes = {"input_ids": [1, 128], "attention_mask": [1, 128]}
    result = Prune(ratio=0.3, criterion="l2").run(model, PassContext(input_shapes=shapes))
    pruned = result.details["pruned"]
    heads = [e for e in pruned if e["kind"] == "heads"]
    ffn = [e for e in pruned if e["kind"] == "linear"]
    assert len(heads) == 12 and len(ffn) == 12
    layers = sorted({e["group"].split("/")[3] for e in heads}) == sorted({f"layer.{i}" for i in range(12)})
    assert layers
    assert all(e["before"] == 12 and e["after"] == 9 for e in heads)
    assert all(e["before"] == 192 and e["after"] == 135 for e in ffn)
    head_dim = BERT["hidden"] // BERT["heads"]
    before = _bert_macs(12, BERT["hidden"], 12, head_dim, [192] * 12, [12] * 12, 128)
    after = _bert_macs(12, BERT["hidden"], 12, head_dim, [135] * 12, [9] * 12, 128)
    predicted = result.details["predicted"]
    assert predicted["macs_unresolved"] == 0
    assert (predicted["macs_before"], predicted["macs_after"]) == (before, after)
    feeds = {k: np.ones(v, np.int64) for k, v in shapes.items()}
    measured_before = stats.compute(model_io.load(proto), shapes, feeds)
    measured_after = stats.compute(model, shapes, feeds)
    assert (measured_before.macs, measured_after.macs) == (before, after)
    assert measured_before.macs_unresolved == measured_after.macs_unresolved == 0


def test_exporter_deduplicated_zero_biases_do_not_couple_layers():
    """The export shares one zero bias among layers (read through Identity); each layer's
    FFN is still its own group, and after pruning every reader has its own slice."""
    proto = onnx.load(TORCH / "bert.onnx")
    identities = [n for n in proto.graph.node if n.op_type == "Identity"]
    assert len(identities) > 12  # the de-duplication is there, as in a real export
    analysis = channels.analyze(model_io.load(proto))
    ffn = [g for g in analysis.groups if g.kind == "linear"]
    assert len(ffn) == 12 and len({g.name for g in ffn}) == 12


def test_truly_shared_weights_still_couple():
    """A non-uniform weight read by two layers (tied) keeps them in one group."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(8, 16)).astype(np.float32), "w")
    zero = numpy_helper.from_array(np.zeros(16, np.float32), "zero")
    w2 = numpy_helper.from_array(rng.normal(size=(16, 4)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"], name="fc_a"),
        helper.make_node("Add", ["a", "zero"], ["a1"], name="bias_a"),
        helper.make_node("Relu", ["a1"], ["a2"], name="relu_a"),
        helper.make_node("MatMul", ["y", "w"], ["b"], name="fc_b"),
        helper.make_node("Add", ["b", "zero"], ["b1"], name="bias_b"),
        helper.make_node("Relu", ["b1"], ["b2"], name="relu_b"),
        helper.make_node("MatMul", ["a2", "w2"], ["oa"], name="out_a"),
        helper.make_node("MatMul", ["b2", "w2b"], ["ob"], name="out_b"),
    ]
    w2b = numpy_helper.from_array(rng.normal(size=(16, 4)).astype(np.float32), "w2b")
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["N", 8]) for n in ("x", "y")],
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["N", 4]) for n in ("oa", "ob")],
        [w, zero, w2, w2b],
    )  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    groups = channels.analyze(model_io.load(proto)).groups
    assert len(groups) == 1  # the tied weight couples both branches; the zero bias alone would not
    # with untied weights the shared zero bias no longer couples them
    w_b = numpy_helper.from_array(rng.normal(size=(8, 16)).astype(np.float32), "w_b")
    proto.graph.initializer.append(w_b)
    proto.graph.node[3].input[1] = "w_b"
    model = model_io.load(proto)
    analysis = channels.analyze(model)
    assert len(analysis.groups) == 2
    feeds = {"x": rng.normal(size=(3, 8)).astype(np.float32), "y": rng.normal(size=(3, 8)).astype(np.float32)}
    before = run(proto, feeds)
    keep = {g: np.arange(g.size) for g in analysis.groups}
    keep[analysis.groups[0]] = np.arange(10)  # one branch loses 6 channels, the other none
    analysis.apply(keep)
    after = run(model, feeds)
    out = model_io.to_proto(model)
    sizes = sorted(tuple(i.dims) for i in out.graph.initializer if i.name.startswith("zero"))
    assert sizes == [(10,), (16,)]
    np.testing.assert_allclose(after["ob"], before["ob"], atol=1e-6)


@pytest.mark.parametrize("per_channel", [True, False])
def test_qdq_quantized_export_prunes_weight_scale_and_zero_point_together(tmp_path, per_channel):
    """onnxruntime's quantize_static (QDQ, INT8 weights per channel or per tensor): the INT8
    weights, their scales and zero points are sliced together; activations' Q/DQ pass through."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    src = TORCH / "vit_heads.onnx"
    feeds = feeds_for(onnx.load(src), batch=1)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.samples = iter([feeds_for(onnx.load(src), batch=1, seed=s) for s in range(3)])

        def get_next(self):
            return next(self.samples, None)

    path = tmp_path / "q.onnx"
    quantize_static(str(src), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, op_types_to_quantize=["MatMul", "Gemm"])
    proto = onnx.load(path)
    model = model_io.load(proto)
    result = Prune(ratio=0.3, criterion="l2").run(model, PassContext())
    kinds = sorted(e["kind"] for e in result.details["pruned"])
    assert kinds == ["heads", "heads", "linear", "linear"]
    out = model_io.to_proto(model)
    onnx.checker.check_model(out)

    def int8_weights(p):
        return {i.name: int(np.prod(i.dims)) for i in p.graph.initializer if i.data_type == onnx.TensorProto.INT8}

    before, after = int8_weights(proto), int8_weights(out)
    assert sum(after.values()) < 0.8 * sum(before.values())  # the file stays INT8, smaller
    # reference: the removed channels' INT8 filters (zero point 0) and biases zeroed
    ref = model_io.load(proto)
    analysis = channels.analyze(ref)
    removed = {e["group"]: e["removed"] for e in result.details["pruned"]}
    for group in analysis.groups:
        for member in group.producers if group.name in removed else ():
            if member.role in ("q_scale", "q_zero_point"):
                continue
            stored = member.tensor._parts[0]  # the INT8 tensor for dequantized storage
            arr = stored.numpy().copy()
            index = [slice(None)] * arr.ndim
            index[member.axis] = member.positions[np.isin(member.slots, removed[group.name])]
            arr[tuple(index)] = 0
            stored.write(arr)
    np.testing.assert_allclose(run(out, feeds)["logits"], run(ref, feeds)["logits"], atol=1e-5, rtol=0)


def _joined_convs(extra_reader: bool) -> onnx.ModelProto:
    """convs a and b (4 channels each) concatenated and added to conv c (8): one group of 8
    slots made by three layers; with ``extra_reader`` conv e also reads a's output."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    w = {n: rng.normal(size=s).astype(np.float32) for n, s in
         {"wa": (4, 3, 1, 1), "wb": (4, 3, 1, 1), "wc": (8, 3, 1, 1), "wd": (5, 8, 1, 1), "we": (5, 4, 1, 1)}.items()}
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="a"),
        helper.make_node("Conv", ["x", "wb"], ["b"], name="b"),
        helper.make_node("Conv", ["x", "wc"], ["c"], name="c"),
        helper.make_node("Concat", ["a", "b"], ["ab"], name="cat", axis=1),
        helper.make_node("Add", ["ab", "c"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "wd"], ["y"], name="d"),
    ]
    outputs = [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 5, 4, 4])]
    if extra_reader:
        nodes.append(helper.make_node("Conv", ["a", "we"], ["z"], name="e"))
        outputs.append(helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, ["N", 5, 4, 4]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 4, 4])], outputs,
                              [numpy_helper.from_array(v, k) for k, v in w.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


@pytest.mark.parametrize("extra_reader", [False, True])
def test_a_layer_emptied_inside_a_group_leaves_or_keeps_one_channel(extra_reader):
    proto = _joined_convs(extra_reader)
    model = model_io.load(proto)
    analysis = channels.analyze(model)
    group = next(g for g in analysis.groups if g.size == 8)
    a_slots = next(m for m in group.producers if m.node.name == "a" and m.role == "weight").slots
    keep = np.setdiff1d(np.arange(8), a_slots)  # every channel conv a makes
    result = analysis.apply({group: keep})
    out = model_io.to_proto(model)
    onnx.checker.check_model(out, full_check=True)
    assert all(0 not in i.dims for i in out.graph.initializer)
    names = {n.name for n in out.graph.node}
    if extra_reader:  # a is still read by e: it keeps one channel
        assert "a" in names and result["channels_removed"] == 3
        assert next(i for i in out.graph.initializer if i.name == "wa").dims[0] == 1
    else:  # a reaches the graph through the Concat alone: it leaves
        assert "a" not in names and result["channels_removed"] == 4 and result["nodes_removed"] == 1
        assert len(next(n for n in out.graph.node if n.name == "cat").input) == 1
    feeds = {"x": np.random.default_rng(1).normal(size=(2, 3, 4, 4)).astype(np.float32)}
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = level
        ort.InferenceSession(out.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def test_grouped_conv_loses_the_same_slots_in_every_group():
    proto = onnx.load(TORCH / "resnext.onnx")
    model = model_io.load(proto)
    analysis = channels.analyze(model)
    conv2 = next(g for g in analysis.groups if g.name == "/blocks/blocks.0/conv2/conv2.0/Conv")
    assert conv2.size == 4  # 32 channels in 8 groups: slot i is channel i of every group
    weight = next(m for m in conv2.producers if m.role == "weight")
    assert weight.mapping == "repeat" and np.array_equal(weight.slots, np.tile(np.arange(4), 8))
    Prune(ratio=0.3, criterion="l2").run(model, PassContext())
    out = model_io.to_proto(model)
    node = next(n for n in out.graph.node if n.name == "/blocks/blocks.0/conv2/conv2.0/Conv")
    assert next(a.i for a in node.attribute if a.name == "group") == 8
    w = next(i for i in out.graph.initializer if i.name == node.input[1])
    assert list(w.dims[:2]) == [24, 3]  # 8 groups × 3 kept, each reading 3 of its group's inputs


def test_channel_shuffle_keeps_its_groups_and_prunes_through():
    proto = onnx.load(TORCH / "shufflenet.onnx")
    model = model_io.load(proto)
    result = Prune(ratio=0.3, criterion="l2").run(model, PassContext())
    assert result.details["groups_pruned"] == 6
    out = model_io.to_proto(model)
    # the shuffle's Reshape still splits into 2 groups of the kept width
    inferred = onnx.shape_inference.infer_shapes(out, data_prop=True)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred.graph.value_info}
    shuffle = next(n for n in out.graph.node if n.name == "/units/units.1/Reshape")
    assert shapes[shuffle.output[0]][1] == 2 and 0 < shapes[shuffle.output[0]][2] < 24


def test_pad_with_computed_spatial_pads_passes_channels():
    """Pads built at run time (zeros for N and C, a size read from the input for H): the
    channels pass through; a computed pad on the channel axis freezes."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n) for n, s in (("w1", (6, 3, 1, 1)), ("w2", (4, 6, 3, 3)))]
    inits += [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("zeros2", [0, 0]), ("zero1", [0]), ("one", [1]), ("idx", 2))]

    def model(channel_pad: bool) -> onnx.ModelProto:
        # begins [N, C, H, W] then ends: the run-time entry pads H, or C
        order = ["zeros2", "h1", "one"] if not channel_pad else ["zero1", "h1", "one", "one"]
        nodes = [
            helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Gather", ["s", "idx"], ["h"]),
            helper.make_node("Div", ["h", "h"], ["h0"]),
            helper.make_node("Unsqueeze", ["h0", "zero_axis"], ["h1"]),
            helper.make_node("Concat", order + ["zeros2", "one", "one"], ["pads"], axis=0),
            helper.make_node("Pad", ["a", "pads"], ["p"], name="pad"),
            helper.make_node("Conv", ["p", "w2"], ["y"], name="c2"),
        ]
        zero_axis = numpy_helper.from_array(np.array([0], np.int64), "zero_axis")
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
                                  [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits + [zero_axis])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)

    analysis = channels.analyze(model_io.load(model(False)))
    assert [g.name for g in analysis.groups] == ["c1"]
    analysis = channels.analyze(model_io.load(model(True)))
    assert "c1" in {f.group.name for f in analysis.frozen}
    assert any("Pad" in f.reason for f in analysis.frozen if f.group.name == "c1")


def test_heads_folded_into_batch_prune_exactly_at_every_batch():
    """nn.MultiheadAttention's [N, batch·heads, head_dim]: whole heads go, in every batch row."""
    proto = onnx.load(TORCH / "vit_mha.onnx")
    model = model_io.load(proto)
    result = Prune(ratio=0.3, criterion="l2").run(model, PassContext())
    heads = [e for e in result.details["pruned"] if e["kind"] == "heads"]
    assert [(e["before"], e["after"]) for e in heads] == [(4, 3), (4, 3)]
    out = model_io.to_proto(model)
    removed = {e["group"]: e["removed"] for e in result.details["pruned"]}
    reference = zeroed(proto, removed)
    for batch in (1, 3):
        feeds = feeds_for(proto, batch=batch, seed=batch)
        np.testing.assert_allclose(run(out, feeds)["logits"], run(reference, feeds)["logits"], atol=1e-5, rtol=0)
    # the batch × heads products now hold the kept head count
    muls = [n for n in out.graph.node if n.op_type == "Mul" and n.name.endswith("/attn/Mul")]
    assert len(muls) == 2
    consts = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in out.graph.node if n.op_type == "Constant"}
    consts.update({i.name: onnx.numpy_helper.to_array(i) for i in out.graph.initializer})
    assert all(consts[m.input[1]].shape == () and int(consts[m.input[1]]) == 3 for m in muls)


def test_batch_times_heads_read_elsewhere_freezes_those_heads():
    """If the batch·heads product also feeds something that is not one of the Reshapes that
    fold the heads, rewriting it would change that reader: those heads stay whole."""
    from onnx import helper

    proto = onnx.load(TORCH / "vit_mha.onnx")
    proto.graph.node.append(helper.make_node("Identity", ["/blocks.0/attn/Mul_output_0"], ["batch_heads"], name="peek"))
    proto.graph.output.append(helper.make_tensor_value_info("batch_heads", onnx.TensorProto.INT64, []))
    analysis = channels.analyze(model_io.load(proto))
    assert [g.name for g in analysis.groups if g.kind == "heads"] == ["/blocks.1/attn/MatMul"]
    frozen = [f for f in analysis.frozen if f.group.name == "/blocks.0/attn/MatMul"]
    assert frozen and any("batch × heads product" in r for r in frozen[0].reasons)


def test_align_pairs_what_is_left_when_one_side_has_a_single_axis():
    from onnxslim.channels.mapping import Product, align

    # [N, batch, heads, head_dim?] → [N·batch, C]: the unknown head_dim is what remains
    assert align([17, "b", 4, "u"], [Product(17, ("b",)), 32]) == [([0, 1], [0]), ([2, 3], [1])]
    assert align(["b", 32], [Product(4, ("b",)), 8]) == [([0, 1], [0, 1])]
    assert align([4, "u", 3], [2, "v", 5]) is None  # both sides have axes left: not guessed
