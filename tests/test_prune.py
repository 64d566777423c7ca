"""The ``prune`` pass: every fixture at 30% and 50%, MACs checked independently, options, CLI."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from fixtures import models as fx
from onnxslim import model_io, optimize, runtime
from onnxslim.errors import UsageError
from onnxslim.pass_api import PassContext
from onnxslim.passes.prune import Prune, fast_step

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "models"
CORPUS = Path(os.path.expanduser("~/.cache/onnxslim-corpus"))
NAMES = ["resnet", "mobilenetv2", "yolo_neck", "bert_block", "mlp", "constant_node_convnet", "if_model", "int8_weights", "digits_cnn"]


def load_proto(name: str) -> onnx.ModelProto:
    if name == "digits_cnn":
        return onnx.load(FIXTURES / "digits_cnn.onnx")
    return fx.BUILDERS[name]()


def concrete(proto: onnx.ModelProto, feeds) -> onnx.ModelProto:
    """The model with its inputs fixed to the feeds' shapes, shapes inferred (for MAC counting)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for vi in copy.graph.input:
        if vi.name in feeds:
            for dim, size in zip(vi.type.tensor_type.shape.dim, feeds[vi.name].shape):
                dim.Clear()
                dim.dim_value = size
    return onnx.shape_inference.infer_shapes(copy, data_prop=True)


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)


def independent_macs(proto: onnx.ModelProto, feeds) -> int:
    """MACs of Conv/ConvTranspose/Gemm/MatMul (If branches each counted) from weight and
    input/output shapes; written here, not shared with the pass."""
    inferred = concrete(proto, feeds)
    shape = {}
    graphs = list(_graphs(inferred.graph))
    for graph in graphs:
        for vi in list(graph.value_info) + list(graph.output) + list(graph.input):
            shape[vi.name] = [d.dim_value or 1 for d in vi.type.tensor_type.shape.dim]
        shape.update({t.name: list(t.dims) for t in graph.initializer})
        for node in graph.node:
            if node.op_type == "Constant":
                shape[node.output[0]] = list(node.attribute[0].t.dims)
    total = 0
    for node in (n for g in graphs for n in g.node):
        if node.op_type == "Conv":
            total += int(np.prod(shape[node.output[0]])) * int(np.prod(shape[node.input[1]][1:]))
        elif node.op_type == "ConvTranspose":  # every input element feeds Cout/group·k·k outputs
            total += int(np.prod(shape[node.input[0]])) * int(np.prod(shape[node.input[1]][1:]))
        elif node.op_type == "Gemm":
            trans_a = any(a.name == "transA" and a.i for a in node.attribute)
            a = shape[node.input[0]]
            total += int(np.prod(shape[node.output[0]])) * (a[0] if trans_a else a[1])
        elif node.op_type == "MatMul":
            total += int(np.prod(shape[node.output[0]])) * shape[node.input[0]][-1]
    return total


def run(model, feeds):
    with runtime.session(model, "disabled") as sess:
        return runtime.run(sess, feeds)


# --------------------------------------------------------------------------- fixtures


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_fixture_prunes_and_stays_valid(name, ratio):
    proto = load_proto(name)
    feeds = fx.random_inputs(proto, batch=2, seq=8, dims={"H": 64, "W": 64})  # the prediction's free size
    model = model_io.load(proto)
    result = Prune(ratio=ratio).run(model, PassContext())
    assert result.modified
    pruned = model_io.to_proto(model)
    onnx.checker.check_model(pruned, full_check=True)
    onnx.shape_inference.infer_shapes(pruned, check_type=True, strict_mode=True, data_prop=True)
    before, after = run(proto, feeds), run(model, feeds)
    assert {k: v.shape for k, v in after.items()} == {k: v.shape for k, v in before.items()}
    assert [(o.name, o.type) for o in pruned.graph.output] == [(o.name, o.type) for o in proto.graph.output]

    details = result.details
    # per group: floor(size * ratio) channels go, rounded up to a fast width (round_to=8, at
    # most a quarter of the group), heads not rounded
    for entry in details["pruned"]:
        keep = entry["before"] - int(np.floor(entry["before"] * ratio + 1e-9))
        step = 1 if entry["kind"] == "heads" else fast_step(entry["before"], 8)
        assert entry["after"] == min(entry["before"], -(-keep // step) * step)
        assert entry["after"] % step == 0 or entry["after"] == entry["before"]
    # the MACs the test counts from the pruned weights match the pass's prediction (one sample)
    macs_before = independent_macs(proto, {k: v[:1] for k, v in feeds.items()})
    macs_after = independent_macs(pruned, {k: v[:1] for k, v in feeds.items()})
    assert macs_after < macs_before
    if name != "bert_block":  # the prediction uses S=64 for BERT's free sequence length
        assert details["predicted"]["macs_before"] == macs_before
        assert details["predicted"]["macs_after"] == macs_after
    tensors = [t for g in _graphs(pruned.graph) for t in g.initializer]
    tensors += [n.attribute[0].t for g in _graphs(pruned.graph) for n in g.node if n.op_type == "Constant"]
    params_after = sum(int(np.prod(t.dims)) for t in tensors if t.data_type == onnx.TensorProto.FLOAT)
    if name != "int8_weights":  # INT8 storage is counted as its dequantized view by the pass
        assert params_after == details["predicted"]["params_after"]


def test_declared_output_dims_are_kept_symbolic():
    """Real exports declare outputs with symbolic dims (MiniLM: [Concat461_dim_0, Concat461_dim_1]);
    pruning other groups must not turn them into numbers."""
    proto = fx.bert_block()
    for out in proto.graph.output:
        out.type.tensor_type.shape.dim[-1].Clear()
        out.type.tensor_type.shape.dim[-1].dim_param = "hidden"
    model = model_io.load(proto)
    assert Prune(ratio=0.3).run(model, PassContext()).modified
    pruned = model_io.to_proto(model)
    assert [(o.name, o.type) for o in pruned.graph.output] == [(o.name, o.type) for o in proto.graph.output]


def test_bert_macs_prediction_at_its_sequence_length():
    proto = fx.bert_block()
    feeds = fx.random_inputs(proto, batch=1, seq=64)
    model = model_io.load(proto)
    result = Prune(ratio=0.5).run(model, PassContext())
    pred = result.details["predicted"]
    assert pred["macs_before"] == independent_macs(proto, feeds)
    assert pred["macs_after"] == independent_macs(model_io.to_proto(model), feeds)
    heads = next(e for e in result.details["pruned"] if e["kind"] == "heads")
    assert (heads["before"], heads["after"]) == (4, 2)


@pytest.mark.parametrize(
    "name, dims",
    [("bert_block", {"N": 2, "S": 16}), ("constant_node_convnet", {"N": 1, "H": 40, "W": 24}),
     ("channel_ops", {"N": 3})],
)
def test_macs_predicted_at_the_validation_input_shapes(name, dims):
    """PassContext.input_shapes (the shapes the manager validates at) drive the prediction,
    not the defaults (batch 1, other dims 64)."""
    proto = load_proto(name)
    feeds = fx.random_inputs(proto, batch=dims["N"], seq=dims.get("S", 8), dims=dims)
    model = model_io.load(proto)
    result = Prune(ratio=0.3).run(model, PassContext(input_shapes={k: list(v.shape) for k, v in feeds.items()}))
    pred = result.details["predicted"]
    assert pred["macs_before"] == independent_macs(proto, feeds)
    assert pred["macs_after"] == independent_macs(model_io.to_proto(model), feeds)
    assert pred["macs_unresolved"] == 0


def test_macs_target_is_reached_at_the_validation_sequence_length():
    """Attention grows as S², the linear layers as S: the fraction kept depends on S (bisected
    at the default S=64, this target ends at 0.86 of the MACs at S=256)."""
    proto = fx.bert_block()
    feeds = fx.random_inputs(proto, batch=1, seq=256)
    model = model_io.load(proto)
    ctx = PassContext(input_shapes={k: list(v.shape) for k, v in feeds.items()})
    result = Prune(target="macs", macs=0.8).run(model, ctx)
    kept = independent_macs(model_io.to_proto(model), feeds) / independent_macs(proto, feeds)
    assert kept <= 0.8
    assert result.details["predicted"]["macs_after"] / result.details["predicted"]["macs_before"] == pytest.approx(kept)


def test_layers_at_unresolved_shapes_are_named_not_counted():
    """A Conv after a Pad with computed pads has no static output size: its MACs are not
    guessed (with each unknown dim as 1) but reported as not counted."""
    rng = np.random.default_rng(0)
    init = [
        onnx.numpy_helper.from_array(rng.normal(size=(8, 4, 3, 3)).astype(np.float32), "w1"),
        onnx.numpy_helper.from_array(rng.normal(size=(2, 8, 1, 1)).astype(np.float32), "w2"),
    ]
    nodes = [
        onnx.helper.make_node("Pad", ["x", "pads"], ["p"], name="pad"),
        onnx.helper.make_node("Conv", ["p", "w1"], ["a"], name="c1"),
        onnx.helper.make_node("Relu", ["a"], ["r"], name="relu"),
        onnx.helper.make_node("Conv", ["r", "w2"], ["y"], name="c2"),
    ]
    graph = onnx.helper.make_graph(
        nodes,
        "padded",
        [
            onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4, 8, 8]),
            onnx.helper.make_tensor_value_info("pads", onnx.TensorProto.INT64, [8]),
        ],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        initializer=init,
    )
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=10)
    result = Prune(ratio=0.5).run(model_io.load(proto), PassContext(input_shapes={"x": [1, 4, 8, 8], "pads": [8]}))
    assert result.details["predicted"]["macs_unresolved"] == 2
    assert result.details["predicted"]["macs_before"] == 0
    assert "MACs unknown (+2 layers at shapes inference cannot resolve" in result.summary
    with pytest.raises(UsageError, match="target=macs"):
        Prune(target="macs").run(model_io.load(proto), PassContext(input_shapes={"x": [1, 4, 8, 8], "pads": [8]}))


def test_resnet_half_channels_cut_macs_about_four_times_inside():
    model = model_io.load(fx.resnet())
    result = Prune(ratio=0.5).run(model, PassContext())
    pred = result.details["predicted"]
    # every conv loses half its inputs and outputs except the stem (3 inputs) and fc (10 outputs)
    assert 3.5 < pred["macs_before"] / pred["macs_after"] < 4.0


# --------------------------------------------------------------------------- no change


def test_dry_run_changes_nothing_and_reports():
    model = model_io.load(fx.resnet())
    before = model_io.to_bytes(model)
    result = Prune(ratio=0.5, dry_run=True).run(model, PassContext())
    assert not result.modified
    assert model_io.to_bytes(model) == before
    assert result.summary.startswith("would remove 72 of 144 channels")
    assert result.details["pruned"][0]["removed"]
    assert result.details["predicted"]["macs_after"] < result.details["predicted"]["macs_before"]


def test_dry_run_through_cli_writes_nothing(tmp_path):
    from onnxslim.cli import main

    src = tmp_path / "in.onnx"
    onnx.save(fx.mlp(), src)
    out = tmp_path / "out.onnx"
    code = main([str(src), str(out), "--passes", "prune:ratio=0.5:dry_run=true", "--dry-run"])
    assert code == 0
    assert not out.exists()


def test_nothing_prunable_is_no_change_and_bit_identical():
    # a single Gemm whose output is the graph output: its only group is frozen
    proto = fx.mlp()
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Gemm", ["input", "fc1.weight", "fc1.bias"], ["logits"], name="fc", transB=1)],
        "one",
        [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 64])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 128])],
        initializer=[t for t in proto.graph.initializer if t.name in ("fc1.weight", "fc1.bias")],
    )
    single = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    single.ir_version = 10
    model = model_io.load(single)
    before = model_io.to_bytes(model)
    result = Prune(ratio=0.5).run(model, PassContext())
    assert not result.modified and model_io.to_bytes(model) == before
    assert "no channels" in result.summary
    assert result.details["frozen"][0]["reason"] == "graph output 'logits'"


def test_ratio_zero_and_excluded_everything_is_no_change():
    model = model_io.load(fx.mlp())
    before = model_io.to_bytes(model)
    assert not Prune(ratio=0.0).run(model, PassContext()).modified
    result = Prune(ratio=0.5, exclude=["fc*"]).run(model, PassContext())
    assert not result.modified and model_io.to_bytes(model) == before
    assert {s["reason"] for s in result.details["skipped"]} == {"excluded by pattern"}


# --------------------------------------------------------------------------- options


def test_layer_ratios_exclude_round_to_min_channels():
    model = model_io.load(fx.mlp())
    result = Prune(ratio=0.5, layer_ratios={"fc2*": 0.25}, exclude=["fc3/*"], round_to=8, min_channels=40).run(model, PassContext())
    pruned = {e["group"]: (e["before"], e["after"]) for e in result.details["pruned"]}
    assert pruned["fc1/Gemm"] == (128, 64)
    assert pruned["fc2/Gemm"] == (64, 48)
    assert "fc3/MatMul" not in pruned
    model = model_io.load(fx.mlp())
    result = Prune(ratio=0.9, round_to=8, min_channels=20).run(model, PassContext())
    for entry in result.details["pruned"]:
        assert entry["after"] % 8 == 0 and entry["after"] >= 20


def test_heads_and_ffn_switches():
    model = model_io.load(fx.bert_block())
    result = Prune(ratio=0.5, heads=False).run(model, PassContext())
    assert [e["kind"] for e in result.details["pruned"]] == ["linear"]
    model = model_io.load(fx.bert_block())
    result = Prune(ratio=0.5, ffn=False).run(model, PassContext())
    assert [e["kind"] for e in result.details["pruned"]] == ["heads"]


def test_residual_option_lifts_the_residual_freeze():
    model = model_io.load(fx.bert_block())
    frozen = Prune(ratio=0.3, dry_run=True).run(model, PassContext()).details["frozen"]
    assert any("residual stream" in f["reason"] or f["size"] == 64 for f in frozen)
    notes = Prune(ratio=0.3, dry_run=True, residual=True).run(model, PassContext()).notes
    assert not any("residual stream" in n for n in notes)


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn", "random"])
def test_every_criterion_prunes(criterion):
    model = model_io.load(fx.resnet())
    result = Prune(ratio=0.3, criterion=criterion).run(model, PassContext(seed=1))
    assert result.modified and result.details["criterion"] == criterion
    assert result.details["channels_after"] < result.details["channels_before"]


def test_l2_keeps_the_strongest_filters():
    model = model_io.load(fx.mlp())
    fc1 = next(t for t in model.graph.initializers.values() if t.name == "fc1.weight").const_value.numpy()
    fc2 = next(t for t in model.graph.initializers.values() if t.name == "fc2.weight").const_value.numpy()
    score = np.sqrt((fc1**2).sum(axis=1) + (fc2**2).sum(axis=1))  # fc1 rows (transB=1) + fc2 rows (transB=0)
    result = Prune(ratio=0.5, criterion="l2").run(model, PassContext())
    removed = next(e for e in result.details["pruned"] if e["group"] == "fc1/Gemm")["removed"]
    assert sorted(removed) == sorted(np.argsort(score)[:64].tolist())


def _removed(result, group: str) -> list[int]:
    return sorted(next(e for e in result.details["pruned"] if e["group"] == group)["removed"])


def _weights(proto) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}


def test_bn_keeps_the_channels_with_the_largest_gamma():
    """The stem group holds bn1 and both layer1 blocks' bn2: slots ranked by Σ|γ| over them."""
    proto = fx.resnet()
    w = _weights(proto)
    gamma = sum(np.abs(w[n]) for n in ("bn1.weight", "layer1.0.bn2.weight", "layer1.1.bn2.weight"))
    result = Prune(ratio=0.5, criterion="bn").run(model_io.load(proto), PassContext())
    assert _removed(result, "conv1/Conv") == sorted(np.argsort(gamma)[:8].tolist())
    l2 = Prune(ratio=0.5, criterion="l2").run(model_io.load(proto), PassContext())
    assert _removed(l2, "conv1/Conv") != _removed(result, "conv1/Conv")


@pytest.mark.parametrize("criterion, removed", [("l1", [1]), ("l2", [0])])
def test_l1_and_l2_rank_spread_and_peaked_filters_differently(criterion, removed):
    """Filter 0 is spread ([1,1,1,1]: L1 4, L2 2), filter 1 peaked ([3,0,0,0]: L1 3, L2 3)."""
    h = onnx.helper
    w1 = np.array([[1, 1, 1, 1], [3, 0, 0, 0], [5, 5, 5, 5]], dtype=np.float32)
    init = [onnx.numpy_helper.from_array(w1, "w1"), onnx.numpy_helper.from_array(np.full((3, 2), 1e-3, np.float32), "w2")]
    nodes = [
        h.make_node("Gemm", ["x", "w1"], ["a"], name="fc1", transB=1),
        h.make_node("Relu", ["a"], ["r"], name="relu"),
        h.make_node("Gemm", ["r", "w2"], ["y"], name="fc2"),
    ]
    graph = h.make_graph(
        nodes,
        "tiny",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 2])],
        initializer=init,
    )
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=10)
    result = Prune(ratio=0.34, criterion=criterion).run(model_io.load(proto), PassContext())
    assert _removed(result, "fc1") == removed


def test_random_depends_on_the_seed_and_is_reproducible():
    def removed(seed):
        result = Prune(ratio=0.5, criterion="random").run(model_io.load(fx.resnet()), PassContext(seed=seed))
        return [e["removed"] for e in result.details["pruned"]]

    assert removed(1) == removed(1)
    assert removed(1) != removed(2)


def test_activation_keeps_the_channels_with_the_largest_mean_abs_on_calibration_data():
    from onnxslim.calibration import Calibration

    proto = fx.mlp()
    samples = [fx.random_inputs(proto, seed=i, batch=16) for i in range(3)]
    w = _weights(proto)
    x = np.concatenate([s["input"] for s in samples]).astype(np.float64)
    mean_abs = np.abs(np.maximum(x @ w["fc1.weight"].T + w["fc1.bias"], 0)).mean(axis=0)  # what fc2 reads
    ctx = PassContext(calibration=Calibration(samples))
    result = Prune(ratio=0.5, criterion="activation", reconstruct=False).run(model_io.load(proto), ctx)
    assert _removed(result, "fc1/Gemm") == sorted(np.argsort(mean_abs)[:64].tolist())
    assert _removed(result, "fc1/Gemm") != _removed(Prune(ratio=0.5).run(model_io.load(proto), PassContext()), "fc1/Gemm")


def test_global_target_removes_the_overall_fraction():
    model = model_io.load(fx.resnet())
    result = Prune(ratio=0.4, target="global", round_to=1).run(model, PassContext())
    d = result.details
    assert d["channels_before"] - d["channels_after"] == int(0.4 * d["channels_before"])


@pytest.mark.parametrize("target", ["global", "macs"])
def test_layer_ratios_hold_under_global_and_macs_targets(target):
    """Overridden groups take their fixed ratio; the ranking (or MACs bisection) covers the rest."""
    overrides = {"layer2.0.conv1*": 0.75, "layer1.0.conv1*": 0.0}
    model = model_io.load(fx.resnet())
    result = Prune(target=target, ratio=0.4, macs=0.6, layer_ratios=overrides, round_to=1).run(model, PassContext())
    d = result.details
    pruned = {e["group"]: (e["before"], e["after"]) for e in d["pruned"]}
    assert pruned["layer2.0.conv1/Conv"] == (32, 8)
    assert "layer1.0.conv1/Conv" not in pruned
    assert {s["group"]: s["reason"] for s in d["skipped"]}["layer1.0.conv1/Conv"] == "ratio 0"
    others = [e for e in d["pruned"] if e["group"] != "layer2.0.conv1/Conv"]
    if target == "global":  # 40% of the other groups' channels, ranked together
        before = d["channels_before"] - 32
        assert sum(e["before"] - e["after"] for e in others) == int(0.4 * before)
    else:
        assert d["predicted"]["macs_after"] <= 0.6 * d["predicted"]["macs_before"]
        assert d["predicted"]["macs_after"] >= 0.5 * d["predicted"]["macs_before"]


def test_macs_target_is_reached():
    model = model_io.load(fx.resnet())
    result = Prune(target="macs", macs=0.5).run(model, PassContext())
    pred = result.details["predicted"]
    assert pred["macs_after"] <= 0.5 * pred["macs_before"]
    assert pred["macs_after"] >= 0.4 * pred["macs_before"]  # not far beyond the target


@pytest.mark.parametrize(
    "options, message",
    [({"ratio": 1.0}, "ratio"), ({"macs": 0.0}, "macs"), ({"round_to": 0}, "round_to"), ({"layer_ratios": {"a": 2.0}}, "layer_ratios")],
)
def test_bad_options_are_usage_errors(options, message):
    with pytest.raises(UsageError, match=message):
        Prune(**options)


def test_data_criterion_without_calibration_is_a_usage_error():
    from onnxslim.passes import prune

    if prune.criterion("activation") is None:
        with pytest.raises(UsageError, match="not available"):
            Prune(criterion="activation").run(model_io.load(fx.mlp()), PassContext())
    else:
        with pytest.raises(UsageError, match="calibration"):
            Prune(criterion="activation").run(model_io.load(fx.mlp()), PassContext())


def test_auto_criterion_says_it_uses_l2_without_calibration():
    result = Prune(ratio=0.3).run(model_io.load(fx.mlp()), PassContext())
    assert result.details["criterion"] == "l2"
    assert any("criterion auto: using l2" in n for n in result.notes)


# --------------------------------------------------------------------------- pipeline, CLI, data


def test_through_optimize_with_validation_report():
    result = optimize(fx.resnet(), passes="prune:ratio=0.3")
    row = result.report.passes[0]
    assert row.status == "applied"
    assert row.metrics and row.metrics[0].shape_equal
    assert 0.0 < row.metrics[0].cosine < 1.0  # lossy, and measured


def test_cli_prunes_and_writes(tmp_path):
    from onnxslim.cli import main

    src, out, report = tmp_path / "in.onnx", tmp_path / "out.onnx", tmp_path / "r.json"
    onnx.save(fx.yolo_neck(), src)
    code = main([str(src), str(out), "--passes", "prune:ratio=0.5:criterion=l1:round_to=4", "--report", str(report)])
    assert code == 0 and out.exists()
    pruned = onnx.load(out)
    onnx.checker.check_model(pruned, full_check=True)
    assert out.stat().st_size < 0.5 * src.stat().st_size
    assert '"prune"' in report.read_text()


def test_digits_accuracy_drops_gracefully_at_small_ratio():
    data = np.load(FIXTURES / "digits_data.npz")

    def accuracy(model) -> float:
        logits = run(model, {"input": data["x_test"]})["logits"]
        return float((logits.argmax(axis=1) == data["y_test"]).mean())

    original = accuracy(model_io.load(FIXTURES / "digits_cnn.onnx"))
    model = model_io.load(FIXTURES / "digits_cnn.onnx")
    Prune(ratio=0.07).run(model, PassContext())  # one or two channels per group
    assert original > 0.98
    assert accuracy(model) > 0.8


@pytest.mark.skipif(not (CORPUS / "rapidocr_ppocrv4_det.onnx").exists(), reason="corpus model not downloaded")
def test_paddle_ocr_detector_prunes_with_shapes_kept():
    model = model_io.load(CORPUS / "rapidocr_ppocrv4_det.onnx")
    result = Prune(ratio=0.3).run(model, PassContext())
    assert result.details["groups_pruned"] > 20
    feeds = {"x": np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)}
    before = run(model_io.load(CORPUS / "rapidocr_ppocrv4_det.onnx"), feeds)
    after = run(model, feeds)
    assert {k: v.shape for k, v in after.items()} == {k: v.shape for k, v in before.items()}


def test_default_widths_are_fast_multiples():
    """round_to=8 by default, at most a quarter of a small group; round_to=1 keeps the exact ratio."""
    assert [fast_step(n, 8) for n in (3, 8, 16, 24, 32, 45, 512)] == [1, 2, 4, 4, 8, 8, 8]
    assert fast_step(512, 1) == 1 and fast_step(512, 16) == 16
    model = model_io.load(fx.resnet())
    widths = {e["before"]: e["after"] for e in Prune(ratio=0.3).run(model, PassContext()).details["pruned"]}
    assert widths == {16: 12, 32: 24}
    model = model_io.load(fx.resnet())
    widths = {e["before"]: e["after"] for e in Prune(ratio=0.3, round_to=1).run(model, PassContext()).details["pruned"]}
    assert widths == {16: 12, 32: 23}
