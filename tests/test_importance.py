"""Data-driven importance (onnxslim.importance) and reconstruction (onnxslim.reconstruct).

The numbers are checked against independent computations: im2col against onnxruntime's Conv,
activation scores against tensors fetched with a plain session, OBS saliency against the
least-squares residual of refitting without each slot, reconstruction against an exactly
recoverable pruning (a duplicated filter).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fixtures import models as fx
from onnxslim import channels, importance, model_io, reconstruct, runtime
from onnxslim.calibration import Calibration
from onnxslim.errors import UsageError
from onnxslim.pass_api import PassContext
from onnxslim.passes.prune import Prune

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "models"


def build(nodes, inits, x_shape, out_name="y", opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def run(model, feeds, extra=()):
    with runtime.session(model, "disabled", extra_outputs=list(extra)) as sess:
        return runtime.run(sess, feeds)


def calibration(shape, n, seed=0) -> Calibration:
    rng = np.random.default_rng(seed)
    return Calibration([{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)])


def value(model, name):
    return next(o for node in model.graph for o in node.outputs if o.name == name)


# --------------------------------------------------------------------------- im2col


CONV_CASES = [
    ({"pads": [1, 1, 1, 1]}, (3, 3)),
    ({"strides": [2, 2], "pads": [0, 1, 2, 1]}, (3, 3)),
    ({"dilations": [2, 2], "pads": [2, 2, 2, 2]}, (3, 3)),
    ({"strides": [2, 1], "dilations": [1, 2]}, (2, 3)),
    ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (3, 3)),
    ({"auto_pad": "SAME_LOWER", "strides": [2, 2]}, (4, 4)),
    ({"auto_pad": "VALID"}, (1, 1)),
]


@pytest.mark.parametrize("attrs,kernel", CONV_CASES, ids=[str(c[0]) for c in CONV_CASES])
def test_unfold_matches_onnxruntime_conv(attrs, kernel):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 3, *kernel)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", **attrs)
    proto = build([conv], {"w": w, "b": b}, [2, 3, 9, 8])
    model = model_io.load(proto)
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    y = run(model, {"x": x})["y"]
    layer = reconstruct.linear_layer(next(iter(model.graph)), model)
    assert layer.n_rows(x.shape) == layer.n_out_rows(y.shape)
    rows = np.arange(layer.n_rows(x.shape))
    got = layer.unfold(x, rows) @ layer.matrix(w) + b
    np.testing.assert_allclose(got, layer.out_rows(y, rows), rtol=1e-4, atol=1e-4)
    some = rows[::7]
    np.testing.assert_allclose(layer.unfold(x, some), layer.unfold(x, rows)[some])


def test_conv1d_unfold_and_gemm_layout():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 2, 3)).astype(np.float32)
    proto = build([helper.make_node("Conv", ["x", "w"], ["y"], strides=[2], pads=[1, 0])], {"w": w}, [1, 2, 11])
    model = model_io.load(proto)
    x = rng.standard_normal((1, 2, 11)).astype(np.float32)
    y = run(model, {"x": x})["y"]
    layer = reconstruct.linear_layer(next(iter(model.graph)), model)
    rows = np.arange(layer.n_rows(x.shape))
    np.testing.assert_allclose(layer.unfold(x, rows) @ layer.matrix(w), layer.out_rows(y, rows), rtol=1e-4, atol=1e-4)

    wg = rng.standard_normal((6, 4)).astype(np.float32)  # transB: [N, K]
    gemm = model_io.load(build([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1, alpha=0.5)], {"w": wg}, [3, 4]))
    layer = reconstruct.linear_layer(next(iter(gemm.graph)), gemm)
    xg = rng.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(xg @ layer.matrix(wg), run(gemm, {"x": xg})["y"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.weight_from_matrix(layer.matrix(wg), wg.shape), wg, rtol=1e-6)


def test_layers_that_are_not_refit_say_why():
    w = np.ones((4, 1, 3, 3), np.float32)
    proto = build([helper.make_node("Conv", ["x", "w"], ["y"], group=4)], {"w": w}, [1, 4, 6, 6])
    model = model_io.load(proto)
    assert "depthwise" in reconstruct.linear_layer(next(iter(model.graph)), model)
    proto = build([helper.make_node("Gemm", ["x", "w"], ["y"], transA=1)], {"w": np.ones((3, 2))}, [3, 4])
    model = model_io.load(proto)
    assert "transA" in reconstruct.linear_layer(next(iter(model.graph)), model)


# --------------------------------------------------------------------------- criteria


def mlp_chain(hidden=16, seed=0) -> onnx.ModelProto:
    """x[N,8] → MatMul(8→hidden) → Relu → MatMul(hidden→6) + bias → y."""
    rng = np.random.default_rng(seed)
    inits = {
        "w1": rng.standard_normal((8, hidden)),
        "w2": rng.standard_normal((hidden, 6)),
        "b2": rng.standard_normal(6),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["a"], name="act"),
        helper.make_node("MatMul", ["a", "w2"], ["z"], name="fc2"),
        helper.make_node("Add", ["z", "b2"], ["y"], name="fc2_bias"),
    ]
    return build(nodes, inits, ["N", 8])


def conv_chain(seed=0, **conv2_attrs) -> onnx.ModelProto:
    """x[N,2,10,10] → Conv(2→6, 3×3) → Relu → Conv(6→4, 3×3, attrs) → y."""
    rng = np.random.default_rng(seed)
    inits = {
        "w1": rng.standard_normal((6, 2, 3, 3)),
        "b1": rng.standard_normal(6) * 0.1,
        "w2": rng.standard_normal((4, 6, 3, 3)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["a"], name="act"),
        helper.make_node("Conv", ["a", "w2"], ["y"], name="conv2", **(conv2_attrs or {"pads": [1, 1, 1, 1]})),
    ]
    return build(nodes, inits, ["N", 2, 10, 10])


def only_group(model):
    groups = channels.analyze(model).groups
    assert len(groups) == 1
    return groups[0]


@pytest.mark.parametrize("name,stat", [("activation", "abs"), ("activation_l2", "rms")])
def test_activation_scores_are_channel_statistics_of_the_consumer_input(name, stat):
    model = model_io.load(mlp_chain())
    calib = calibration((5, 8), 4)
    group = only_group(model)
    scores = getattr(importance, name)(group, PassContext(calibration=calib), model)
    a = np.concatenate([run(model, s, [value(model, "a")])["a"] for s in calib.samples])
    expected = np.abs(a).mean(axis=0) if stat == "abs" else np.sqrt(np.square(a).mean(axis=0))
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


def test_activation_sums_flattened_positions_into_their_channel():
    """digits: conv3's channels reach the Gemm through GlobalAveragePool+Flatten (one slot each)."""
    model = model_io.load(FIXTURES / "digits_cnn.onnx")
    data = np.load(FIXTURES / "digits_data.npz")
    calib = Calibration([{"input": data["x_train"][i : i + 50]} for i in range(0, 150, 50)])
    group = next(g for g in channels.analyze(model).groups if g.name == "/conv3/Conv")
    scores = importance.activation(group, PassContext(calibration=calib), model)
    flat = value(model, "/flatten/Flatten_output_0")
    x = np.concatenate([run(model, s, [flat])[flat.name] for s in calib.samples])
    np.testing.assert_allclose(scores, np.abs(x).mean(axis=0), rtol=1e-6)


def test_obs_saliency_is_the_refit_residual_of_dropping_each_unit(monkeypatch):
    """Linear layer: w_jᵀw_j/[H⁻¹]_jj equals the least-squares error of refitting without input j."""
    monkeypatch.setattr(importance, "DAMP", 0.0)
    model = model_io.load(mlp_chain())
    calib = calibration((64, 8), 4)
    group = only_group(model)
    scores = importance.obs(group, PassContext(calibration=calib), model)
    a = np.concatenate([run(model, s, [value(model, "a")])["a"] for s in calib.samples]).astype(np.float64)
    w2 = numpy_helper.to_array(mlp_chain().graph.initializer[1]).astype(np.float64)
    target = a @ w2
    expected = []
    for j in range(a.shape[1]):
        rest = np.delete(a, j, axis=1)
        fit = np.linalg.lstsq(rest, target, rcond=None)[0]
        expected.append(np.sum((rest @ fit - target) ** 2) / len(a))
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-9)


def test_obs_conv_removes_a_channel_block_of_all_its_taps(monkeypatch):
    monkeypatch.setattr(importance, "DAMP", 0.0)
    proto = conv_chain()
    model = model_io.load(proto)
    calib = calibration((2, 2, 10, 10), 3)
    group = only_group(model)
    scores = importance.obs(group, PassContext(calibration=calib), model)
    layer = reconstruct.linear_layer(next(n for n in model.graph if n.name == "conv2"), model)
    xs = [run(model, s, [value(model, "a")])["a"] for s in calib.samples]
    cols = np.concatenate([layer.unfold(x, np.arange(layer.n_rows(x.shape))) for x in xs]).astype(np.float64)
    w = layer.matrix(layer.weight.numpy().astype(np.float64))
    target = cols @ w
    expected = []
    for c in range(6):
        rest = np.delete(cols, np.arange(c * 9, c * 9 + 9), axis=1)
        fit = np.linalg.lstsq(rest, target, rcond=None)[0]
        expected.append(np.sum((rest @ fit - target) ** 2) / len(cols))
    np.testing.assert_allclose(scores, expected, rtol=1e-4)


@pytest.mark.parametrize("criterion", ["activation", "obs"])
def test_one_calibration_run_scores_every_group(monkeypatch, criterion):
    calls = []
    original = Calibration.iter_capture

    def counting(self, model, values):
        calls.append(len(values))
        return original(self, model, values)

    monkeypatch.setattr(Calibration, "iter_capture", counting)
    model = model_io.load(fx.resnet())
    calib = Calibration([fx.random_inputs(fx.resnet(), seed=i) for i in range(2)])
    result = Prune(ratio=0.3, criterion=criterion, reconstruct=False).run(model, PassContext(calibration=calib))
    assert result.details["groups_pruned"] >= 3
    assert len(calls) == 1 and calls[0] > 1


# --------------------------------------------------------------------------- reconstruction


def duplicate_filter(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Make conv1's filter 5 (and bias) a copy of filter 0: its channel is exactly recoverable."""
    for init in proto.graph.initializer:
        arr = numpy_helper.to_array(init).copy()
        if init.name in ("w1", "b1"):
            arr[5] = arr[0]
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    return proto


@pytest.mark.parametrize(
    "attrs",
    [{"pads": [1, 1, 1, 1]}, {"strides": [2, 2], "dilations": [2, 2], "pads": [2, 1, 2, 1]}],
    ids=["same", "strided"],
)
def test_reconstruction_recovers_a_removed_duplicate_channel(monkeypatch, attrs):
    monkeypatch.setattr(reconstruct, "DAMP", 1e-9)
    proto = duplicate_filter(conv_chain(**attrs))
    original = model_io.load(proto)
    model = model_io.load(proto)
    calib = calibration((4, 2, 10, 10), 10)
    ctx = PassContext(calibration=calib)
    analysis = channels.analyze(model)
    group = analysis.groups[0]
    names_before = [n.inputs[0].name for n in model.graph]
    plan = {group: np.arange(5)}  # drop slot 5, the copy of slot 0
    refit = reconstruct.Reconstructor()
    state = refit.capture(model, plan, ctx)
    channels.remove_channels(analysis, plan)
    assert [n.inputs[0].name for n in model.graph] == names_before  # captures line up by name
    report = refit.refit(model, state, ctx)
    (entry,) = report["layers"]
    assert entry["applied"] and entry["error_before"] > 0.05 and entry["error_after"] < 1e-3
    test = calibration((3, 2, 10, 10), 1, seed=9).samples[0]
    np.testing.assert_allclose(run(model, test)["y"], run(original, test)["y"], rtol=1e-3, atol=1e-3)
    onnx.checker.check_model(model_io.to_proto(model), full_check=True)


def _drift_without_and_with_refit(proto, calib, test):
    """Relative logits drift on ``test`` of l2 prune at 0.3 without and with reconstruction
    ({False: ..., True: ...}), and the reconstructing run's result."""
    ref = run(model_io.load(proto), test)["logits"]
    drift = {}
    for rec in (False, True):
        model = model_io.load(proto)
        result = Prune(ratio=0.3, criterion="l2", reconstruct=rec).run(model, PassContext(calibration=calib))
        drift[rec] = np.linalg.norm(run(model, test)["logits"] - ref) / np.linalg.norm(ref)
    return drift, result


def test_reconstruction_lowers_drift_through_gemm_and_matmul_bias():
    """mlp fixture: Gemm (transB and not), MatMul followed by an Add bias."""
    proto = fx.mlp()
    calib = Calibration([fx.random_inputs(proto, seed=i, batch=16) for i in range(24)])
    drift, result = _drift_without_and_with_refit(proto, calib, fx.random_inputs(proto, seed=100, batch=32))
    layers = result.details["reconstruction"]["layers"]
    assert {e["layer"] for e in layers} == {"fc2/Gemm", "fc3/MatMul", "fc4/MatMul"}
    assert all(e["applied"] and e["error_after"] < e["error_before"] for e in layers)
    assert drift[True] < 0.7 * drift[False]
    assert "reconstruction: refit 3 of 3 layers" in " ".join(result.notes)


def test_without_held_out_rows_the_weights_stay_alone():
    proto = fx.mlp()
    calib = Calibration([fx.random_inputs(proto, seed=i, batch=1) for i in range(3)])  # 3 rows: none held out
    models = []
    for rec in (False, True):
        model = model_io.load(proto)
        result = Prune(ratio=0.3, criterion="l2", reconstruct=rec).run(model, PassContext(calibration=calib))
        models.append(model_io.to_proto(model).SerializeToString())
    assert not any(e["applied"] for e in result.details["reconstruction"]["layers"])
    assert "no held-out calibration rows" in result.details["reconstruction"]["layers"][0]["reason"]
    assert models[0] == models[1]


def test_fewer_rows_than_unknowns_still_refit_towards_the_original_weights():
    """40 rows (32 fitted) for 91 unknowns per output in fc2: the ridge towards the sliced weights refits every
    layer and lowers the drift on unseen inputs (it used to skip them: "too few rows")."""
    proto = fx.mlp()
    calib = Calibration([fx.random_inputs(proto, seed=i, batch=8) for i in range(5)])  # 40 rows
    drift, result = _drift_without_and_with_refit(proto, calib, fx.random_inputs(proto, seed=100, batch=64))
    layers = result.details["reconstruction"]["layers"]
    assert layers[0]["inputs"] > 40 and layers[0]["applied"]
    assert any(e["applied"] for e in layers), result.details["reconstruction"]["summary"]
    assert drift[True] < drift[False]


@pytest.mark.parametrize("fixture,reason", [("int8_weights", "INT8"), ("if_model", "inside a subgraph")])
def test_layers_that_cannot_be_refit_are_reported(fixture, reason):
    proto = fx.BUILDERS[fixture]()
    model = model_io.load(proto)
    calib = Calibration([fx.random_inputs(proto, seed=i, batch=8) for i in range(4)])
    result = Prune(ratio=0.3, criterion="l2", reconstruct=True).run(model, PassContext(calibration=calib))
    skipped = result.details["reconstruction"]["skipped"]
    assert skipped and all(reason in s["reason"] for s in skipped)
    run(model, fx.random_inputs(proto, seed=5))


# --------------------------------------------------------------------------- wiring in prune


def test_prune_auto_uses_obs_and_reconstruction_with_calibration():
    proto = fx.resnet()
    calib = Calibration([fx.random_inputs(proto, seed=i) for i in range(2)])
    model = model_io.load(proto)
    result = Prune(ratio=0.3).run(model, PassContext(calibration=calib))
    assert result.details["criterion"] == "obs"
    assert result.details["reconstruction"]["layers"]
    model = model_io.load(proto)
    result = Prune(ratio=0.3, reconstruct=False).run(model, PassContext(calibration=calib))
    assert "reconstruction" not in result.details
    result = Prune(ratio=0.3).run(model_io.load(proto), PassContext())
    assert result.details["criterion"] == "l2" and "reconstruction" not in result.details


@pytest.mark.parametrize("criterion", ["activation", "activation_l2", "obs"])
def test_data_criteria_need_calibration(criterion):
    with pytest.raises(UsageError, match="calibration"):
        Prune(criterion=criterion).run(model_io.load(fx.resnet()), PassContext())
    with pytest.raises(UsageError, match="calibration"):
        Prune(reconstruct=True).run(model_io.load(fx.resnet()), PassContext())


def test_calibration_runs_on_conv_models_above_the_weight_sharing_limit():
    """Capture uses an optimised session; above runtime's in-memory limit ORT's Conv+BN fusion
    cannot read shared weights, so such sessions fall back to a temporary file."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((512, 8, 3, 3)) * 0.1
    w2 = rng.standard_normal((1024, 512, 3, 3)) * 0.01  # 18.9 MB of float32
    bn = {f"bn_{k}": v for k, v in zip("sbmv", (np.ones(512), np.zeros(512), np.zeros(512), np.ones(512)))}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", *bn], ["h"]),
        helper.make_node("Relu", ["h"], ["a"]),
        helper.make_node("Conv", ["a", "w2"], ["y"]),
    ]
    model = model_io.load(build(nodes, {"w1": w1, "w2": w2, **bn}, ["N", 8, 6, 6]))
    assert runtime.weight_bytes(model) > runtime._IN_MEMORY_LIMIT_BYTES
    calib = calibration((1, 8, 6, 6), 2)
    captured = calib.capture(model, [value(model, "a")])
    expected = np.maximum(run(model, calib.samples[1], [value(model, "h")])["h"], 0)
    np.testing.assert_allclose(captured["a"][1:], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("criterion", ["activation", "obs"])
def test_groups_inside_subgraphs_fall_back_to_weight_l2(criterion):
    """if_model: the pruned layers live in If branches, whose tensors cannot be captured."""
    proto = fx.if_model()
    calib = Calibration([fx.random_inputs(proto, seed=i) for i in range(2)])
    chosen = {}
    for name in (criterion, "l2"):
        model = model_io.load(proto)
        result = Prune(ratio=0.3, criterion=name, reconstruct=False).run(model, PassContext(calibration=calib))
        chosen[name] = {p["group"]: p["removed"] for p in result.details["pruned"]}
    assert chosen[criterion] and chosen[criterion] == chosen["l2"]


def test_obs_splits_calibration_runs_by_hessian_budget(monkeypatch):
    proto = fx.resnet()
    calib = Calibration([fx.random_inputs(proto, seed=i) for i in range(2)])
    calls = []
    original = Calibration.iter_capture

    def counting(self, model, values):
        calls.append(len(values))
        return original(self, model, values)

    monkeypatch.setattr(Calibration, "iter_capture", counting)
    scores = []
    for budget in (importance.HESSIAN_BUDGET_BYTES, 200_000):
        monkeypatch.setattr(importance, "HESSIAN_BUDGET_BYTES", budget)
        model = model_io.load(proto)
        groups = channels.analyze(model).groups
        importance.prepare_obs(groups, PassContext(calibration=calib), model)
        scores.append([importance.obs(g, PassContext(calibration=calib), model) for g in groups])
    assert calls[0] > 1 and len(calls) > 2  # one run, then several smaller ones
    assert sum(calls[1:]) == calls[0]
    for a, b in zip(*scores):
        np.testing.assert_allclose(a, b)


@pytest.mark.parametrize("criterion", ["activation", "activation_l2", "obs"])
def test_groups_scored_by_the_weight_l2_fallback_are_reported(criterion):
    """if_model's layers sit in If branches, which calibration cannot capture: the report must
    not claim the data-driven criterion for them."""
    proto = fx.if_model()
    calib = Calibration([fx.random_inputs(proto, seed=i, batch=8) for i in range(2)])
    result = Prune(ratio=0.3, criterion=criterion, reconstruct=False).run(model_io.load(proto), PassContext(calibration=calib))
    fallback = result.details["fallback"]
    assert {f["group"] for f in fallback} == {e["group"] for e in result.details["pruned"]} != set()
    assert all("subgraph" in f["reason"] for f in fallback)
    assert f"({criterion}; {len(fallback)} groups scored by weight l2, see notes)" in result.summary
    assert any(n.startswith(f"criterion {criterion}: {len(fallback)} groups scored by weight l2 instead") for n in result.notes)
    # a model calibration can measure reports no fallback
    proto = fx.resnet()
    calib = Calibration([fx.random_inputs(proto, seed=i) for i in range(2)])
    result = Prune(ratio=0.3, criterion=criterion, reconstruct=False).run(model_io.load(proto), PassContext(calibration=calib))
    assert result.details["fallback"] == [] and "weight l2" not in result.summary


# --------------------------------------------------------------------------- one pass over the original model


def _counting_runs(monkeypatch) -> list:
    """Record every whole-model calibration run (the staged refit runs are not counted)."""
    calls = []
    original = Calibration.iter_capture

    def counting(self, model, values):
        calls.append([v.name for v in values])
        return original(self, model, values)

    monkeypatch.setattr(Calibration, "iter_capture", counting)
    return calls


@pytest.mark.parametrize("criterion", ["obs", "activation"])
def test_reconstruction_records_the_original_outputs_in_the_criterions_run(monkeypatch, criterion):
    """The criterion's calibration run over the unchanged model also records the outputs the
    refit needs: one run over the original model, not two, and the same refit as a capture of
    its own (the record holds exactly what that capture would hold)."""
    proto = fx.resnet()
    calib = Calibration([fx.random_inputs(proto, seed=i) for i in range(6)])
    calls = _counting_runs(monkeypatch)
    model = model_io.load(proto)
    shared = Prune(ratio=0.3, criterion=criterion, reconstruct=True).run(model, PassContext(calibration=calib))
    assert len(calls) == 1  # the criterion's run; capture needed none
    # the same pass with a capture of its own (no riders) gives the same refit
    monkeypatch.setattr(Prune, "_recorder", lambda *args: None)
    calls.clear()
    alone = model_io.load(proto)
    separate = Prune(ratio=0.3, criterion=criterion, reconstruct=True).run(alone, PassContext(calibration=calib))
    assert len(calls) == 2
    assert shared.details["reconstruction"]["layers"] == separate.details["reconstruction"]["layers"]
    test = fx.random_inputs(proto, seed=99)
    for got, want in zip(run(model, test).values(), run(alone, test).values(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_recorded_outputs_match_a_capture_of_their_own():
    proto = fx.resnet()
    calib = Calibration([fx.random_inputs(proto, seed=i) for i in range(3)])
    ctx = PassContext(calibration=calib)
    model = model_io.load(proto)
    analysis = channels.analyze(model)
    plan = {g: np.arange(g.size - 2) for g in analysis.groups if g.size > 4}
    refit = reconstruct.Reconstructor()
    recorder = refit.recorder(model, list(plan), ctx)
    importance.prepare_obs(list(plan), ctx, model, riders=[recorder])
    recorded = refit.capture(model, plan, ctx, recorded=recorder)
    own = refit.capture(model, plan, ctx)
    assert len(recorded.targets) == len(own.targets) > 3
    for a, b in zip(recorded.targets, own.targets):
        assert a.layer.name == b.layer.name
        for ra, rb, ya, yb in zip(a.rows, b.rows, a.y, b.y, strict=True):
            np.testing.assert_array_equal(ra, rb)
            np.testing.assert_allclose(ya, yb, rtol=1e-6, atol=1e-6)
    # a record is used once, and only for the data it was made on
    assert all(recorder.take(t.layer, ctx) is None for t in own.targets)
    other = PassContext(calibration=Calibration(calib.samples[:2]))
    fresh = refit.recorder(model, list(plan), ctx)
    importance.prepare_obs(list(plan), ctx, model, riders=[fresh])
    assert fresh.take(own.targets[0].layer, other) is None


def test_refit_rows_do_not_depend_on_the_plan():
    """The rows are chosen before the plan exists (so the criterion's run can record them)."""
    proto = fx.resnet()
    calib = Calibration([fx.random_inputs(proto, seed=i) for i in range(3)])
    ctx = PassContext(calibration=calib)
    model = model_io.load(proto)
    groups = [g for g in channels.analyze(model).groups if g.size > 4]
    refit = reconstruct.Reconstructor()
    a = refit.capture(model, {g: np.arange(g.size - 1) for g in groups}, ctx)
    b = refit.capture(model, {g: np.arange(g.size // 2) for g in groups}, ctx)
    for ta, tb in zip(a.targets, b.targets, strict=True):
        for ra, rb in zip(ta.rows, tb.rows, strict=True):
            np.testing.assert_array_equal(ra, rb)
