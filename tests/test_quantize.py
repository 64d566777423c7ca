"""The ``quantize`` pass: each mode through the API and the CLI, accuracy on held-out data,
budgets (rollback and mixed precision), and the other passes on quantized models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnxslim
from onnxslim import cli, model_io
from onnxslim.passes.quantize import Quantize

MODELS = Path(__file__).resolve().parent.parent / "fixtures" / "models"
CNN = MODELS / "digits_cnn.onnx"
MLP = MODELS / "digits_mlp_q.onnx"
MINILM = Path.home() / ".cache" / "onnxslim-corpus" / "paraphrase_minilm_l3_v2.onnx"

DATA = np.load(MODELS / "digits_data.npz")
# Calibration and validation from the training split; accuracy on the test split only.
CALIB = [{"input": DATA["x_train"][i : i + 64]} for i in range(0, 512, 64)]
VAL = [{"input": DATA["x_train"][i : i + 64]} for i in range(1024, 1257, 64)]


def _accuracy(model) -> float:
    data = model_io.to_bytes(model) if not isinstance(model, (str, Path)) else Path(model).read_bytes()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"input": DATA["x_test"]})[0]
    return float((logits.argmax(1) == DATA["y_test"]).mean())


def _ops(model) -> set[str]:
    return {n.op_type for n in model.graph}


@pytest.mark.parametrize("path", [CNN, MLP], ids=["cnn", "mlp"])
@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_int8_accuracy_within_half_a_point_of_float(path, mode):
    result = onnxslim.optimize(path, [Quantize(mode=mode)], inputs=VAL, calibration=CALIB)
    row = result.report.passes[-1]
    assert row.status == "applied", row.reason
    assert row.details["quantized"]
    assert abs(_accuracy(result.model) - _accuracy(path)) <= 0.005
    ops = _ops(result.model)
    assert ("DequantizeLinear" in ops) if mode == "static" else ("MatMulInteger" in ops or "ConvInteger" in ops)
    assert set(result.report.after.macs_by_precision) >= {"int8"}
    if not (mode == "dynamic" and path == CNN):  # there only the classifier (dynamic leaves Conv alone)
        assert result.report.after.file_bytes < 0.5 * result.report.before.file_bytes


def test_dynamic_leaves_conv_in_float_unless_asked():
    result = onnxslim.optimize(CNN, "quantize:mode=dynamic", inputs=VAL)
    details = result.report.passes[-1].details
    assert details["quantized"] == ["/fc/Gemm"]
    assert all("ConvInteger" in why for name, why in details["float"].items() if "conv" in name)
    result = onnxslim.optimize(CNN, "quantize:mode=dynamic:op_types=Conv", inputs=VAL)
    assert "ConvInteger" in _ops(result.model)


def test_static_calibration_methods_and_per_channel_conv():
    for method in ("entropy", "percentile"):
        result = onnxslim.optimize(CNN, f"quantize:mode=static:calibrate={method}", inputs=VAL, calibration=CALIB)
        assert result.report.passes[-1].status == "applied"
        assert abs(_accuracy(result.model) - _accuracy(CNN)) <= 0.01
    result = onnxslim.optimize(CNN, "quantize:mode=static", inputs=VAL, calibration=CALIB)
    scales = [n.inputs[1].const_value.numpy() for n in result.model.graph
              if n.op_type == "DequantizeLinear" and n.inputs[0].const_value is not None and n.inputs[0].const_value.numpy().ndim == 4]
    assert scales and all(s.ndim == 1 and s.size > 1 for s in scales)  # one scale per output channel


def test_prune_then_quantize_within_one_point():
    result = onnxslim.optimize(CNN, "prune:ratio=0.3,quantize:mode=static", inputs=VAL, calibration=CALIB)
    assert [r.status for r in result.report.passes] == ["applied", "applied"]
    assert abs(_accuracy(result.model) - _accuracy(CNN)) <= 0.01


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_budget_prune_then_quantize_within_one_point(mode, tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXSLIM_CACHE_DIR", str(tmp_path))
    calib = [{"input": DATA["x_train"][i : i + 64]} for i in range(0, len(DATA["x_train"]), 64)]
    result = onnxslim.optimize(CNN, f"prune:target=budget,quantize:mode={mode}", calibration=calib, min_agreement=0.99)
    assert [r.status for r in result.report.passes] == ["applied", "applied"]
    assert _accuracy(result.model) >= _accuracy(CNN) - 0.01
    assert result.report.after.macs <= 0.6 * result.report.before.macs
    # integer weights (MatMulInteger/ConvInteger inputs, DequantizeLinear's) still count as parameters
    assert result.report.after.params >= 0.9 * result.report.passes[0].stats.params


def test_weight4_matmulnbits_with_stated_accuracy_level():
    result = onnxslim.optimize(MLP, "quantize:mode=weight4:block_size=16:accuracy_level=4", inputs=VAL)
    row = result.report.passes[-1]
    assert row.status == "applied", row.reason
    assert row.details["accuracy_level"] == 4 and row.details["bits"] == 4 and row.details["block_size"] == 16
    assert "MatMulNBits" in _ops(result.model)
    assert "int4-weights" in result.report.after.macs_by_precision
    assert abs(_accuracy(result.model) - _accuracy(MLP)) <= 0.02


def test_each_mode_through_the_cli(tmp_path):
    np.savez(tmp_path / "calib.npz", input=DATA["x_train"][:256])
    np.savez(tmp_path / "val.npz", input=DATA["x_train"][1000:1064][None])
    for mode, model in (("static", CNN), ("dynamic", MLP), ("weight4", MLP)):
        out, report = tmp_path / f"{mode}.onnx", tmp_path / f"{mode}.json"
        argv = [str(model), str(out), "--passes", f"quantize:mode={mode}", "--inputs", str(tmp_path / "val.npz"),
                "--report", str(report), "--plot", str(tmp_path / f"{mode}.svg"), "--quiet"]
        if mode == "static":
            argv += ["--calibration", str(tmp_path / "calib.npz"), "--measure-latency"]
        assert cli.main(argv) == 0
        data = json.loads(report.read_text())
        assert data["passes"][0]["status"] == "applied"
        assert data["passes"][0]["details"]["mode"] == mode
        assert _accuracy(out) > 0.95
    data = json.loads((tmp_path / "static.json").read_text())
    assert data["latency"]["before"]["median_ms"] > 0 and data["latency"]["speedup"] > 0


def test_static_without_or_with_bad_calibration_data_is_a_usage_error(tmp_path, capsys):
    out = tmp_path / "out.onnx"
    assert cli.main([str(CNN), str(out), "--passes", "quantize:mode=static"]) == 2
    assert "needs --calibration" in capsys.readouterr().err
    np.savez(tmp_path / "bad.npz", image=DATA["x_train"][:8])
    assert cli.main([str(CNN), str(out), "--passes", "quantize:mode=static", "--calibration", str(tmp_path / "bad.npz")]) == 2
    np.savez(tmp_path / "shape.npz", input=np.zeros((8, 3, 8, 8), np.float32))
    assert cli.main([str(CNN), str(out), "--passes", "quantize:mode=static", "--calibration", str(tmp_path / "shape.npz")]) == 2
    assert not out.exists()


def _no_layers_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Add", ["r", "x"], ["y"], name="add")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("mode", ["dynamic", "weight4"])
def test_model_with_nothing_to_quantize_is_no_change(mode):
    result = onnxslim.optimize(_no_layers_model(), f"quantize:mode={mode}")
    row = result.report.passes[-1]
    assert row.status == "no change" and "nothing to quantize" in row.summary


def test_everything_excluded_is_no_change_and_exclude_patterns_name_the_reason():
    result = onnxslim.optimize(MLP, "quantize:mode=dynamic:exclude=fc*", inputs=VAL)
    assert result.report.passes[-1].status == "no change"
    result = onnxslim.optimize(MLP, "quantize:mode=dynamic:exclude=fc1*", inputs=VAL)
    details = result.report.passes[-1].details
    assert [r for k, r in details["float"].items() if k.startswith("fc1")] == ["excluded by pattern"]
    assert len(details["quantized"]) == 2


def test_over_budget_rolls_back_without_mixed_precision():
    result = onnxslim.optimize(MLP, "quantize:mode=dynamic:mixed=false", inputs=VAL, min_cosine=0.99999)
    row = result.report.passes[-1]
    assert row.status == "rolled back" and "below budget" in row.reason
    assert "MatMulInteger" not in _ops(result.model)


def test_mixed_precision_keeps_the_costliest_layers_in_float_within_budget():
    result = onnxslim.optimize(MLP, "quantize:mode=dynamic", inputs=VAL, calibration=CALIB, min_cosine=0.99999)
    row = result.report.passes[-1]
    assert row.status == "applied", row.reason
    kept = row.details["kept_float_for_budget"]
    assert 0 < len(kept) < 3 and row.details["quantized"]
    assert all("budget" in row.details["float"][k] for k in kept)
    assert min(m.cosine for m in row.metrics) >= 0.99999
    assert set(row.details["layer_cost_db"]) >= set(kept)


def test_metadata_and_functions_are_kept(tmp_path):
    proto = onnx.load(MLP)
    onnx.helper.set_model_props(proto, {"author": "me", "labels": "0-9"})
    result = onnxslim.optimize(proto, "quantize:mode=dynamic", inputs=VAL)
    assert result.report.passes[-1].status == "applied"
    result.save(tmp_path / "q.onnx")
    saved = onnx.load(tmp_path / "q.onnx")
    assert {p.key: p.value for p in saved.metadata_props}.items() >= {"author": "me", "labels": "0-9"}.items()
    onnx.checker.check_model(saved)


def test_other_passes_leave_quantized_weights_alone_and_prune_on_qdq_stays_runnable():
    for passes in ("quantize:mode=static,zeros", "quantize:mode=static,unstructured:sparsity=0.5",
                   "quantize:mode=static,sparsify", "quantize:mode=static,prune:ratio=0.3"):
        result = onnxslim.optimize(CNN, passes, inputs=VAL, calibration=CALIB)
        rows = result.report.passes
        assert rows[0].status == "applied"
        # Either exact (no change) or a validated change: never a graph onnxruntime cannot run.
        assert rows[1].status in ("no change", "applied"), (passes, rows[1].status, rows[1].reason)
        assert not result.report.broken_checks
        assert abs(_accuracy(result.model) - _accuracy(CNN)) <= 0.01
        _check_qdq_consistent(result.model)


def _check_qdq_consistent(model) -> None:
    """Every per-axis DequantizeLinear has one scale (and zero point) per slice of its axis."""
    for node in model.graph:
        if node.op_type != "DequantizeLinear" or node.inputs[0].const_value is None:
            continue
        q = node.inputs[0].const_value.numpy()
        params = [v.const_value.numpy() for v in node.inputs[1:] if v is not None and v.const_value is not None]
        axis = node.attributes["axis"].as_int() if "axis" in node.attributes else 1
        for p in params:
            assert p.ndim == 0 or p.size == q.shape[axis], (node.name, q.shape, p.shape)


def test_quantize_after_sparsify():
    # onnxruntime's pre-processing folds the CSR decodes into dense weights, which are quantized;
    # without it the decoded weights are computed values and the order is named.
    result = onnxslim.optimize(MLP, "unstructured:sparsity=0.5,sparsify,quantize:mode=dynamic", inputs=VAL)
    row = result.report.passes[-1]
    assert row.status == "applied" and len(row.details["quantized"]) == 3
    result = onnxslim.optimize(MLP, "unstructured:sparsity=0.5,sparsify,quantize:mode=dynamic:preprocess=false", inputs=VAL)
    row = result.report.passes[-1]
    assert len(row.details.get("quantized", [])) < 3
    assert any("before sparsify" in why for why in row.details["float"].values())


def test_option_checks():
    with pytest.raises(onnxslim.UsageError):
        Quantize(block_size=24)
    with pytest.raises(onnxslim.UsageError):
        Quantize(accuracy_level=7)
    with pytest.raises(onnxslim.UsageError):
        Quantize(mode="int2")


def _minilm_feeds(seed: int, count: int) -> list[dict]:
    """Random token ids of realistic sentence lengths (no tokenizer offline), [CLS] ... [SEP]."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        length = int(rng.integers(8, 48))
        ids = rng.integers(1000, 30000, (1, length))
        ids[0, 0], ids[0, -1] = 101, 102
        feeds.append({"input_ids": ids.astype(np.int64), "attention_mask": np.ones((1, length), np.int64)})
    return feeds


@pytest.mark.skipif(not MINILM.exists(), reason="MiniLM corpus model not downloaded")
def test_minilm_dynamic_sentence_embedding_cosine():
    result = onnxslim.optimize(MINILM, "quantize:mode=dynamic", inputs=_minilm_feeds(7, 2))
    assert result.report.passes[-1].status == "applied"
    held_out = _minilm_feeds(123, 12)
    ref = ort.InferenceSession(str(MINILM), providers=["CPUExecutionProvider"])
    new = ort.InferenceSession(model_io.to_bytes(result.model), providers=["CPUExecutionProvider"])
    names = [o.name for o in ref.get_outputs()]
    emb = names.index("461")  # the pooled sentence embedding [batch, 384]
    for feed in held_out:
        a, b = ref.run(None, feed)[emb][0], new.run(None, feed)[emb][0]
        assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) >= 0.99


@pytest.mark.parametrize("mode", ["dynamic", "static", "weight4"])
def test_large_model_path_through_external_data(monkeypatch, mode):
    """Above the inline limit the temporary files carry external data; the result is the same."""
    import onnxslim.passes.quantize as quantize

    small = onnxslim.optimize(MLP, f"quantize:mode={mode}", inputs=VAL, calibration=CALIB)
    monkeypatch.setattr(quantize, "_INLINE_LIMIT", 0)
    large = onnxslim.optimize(MLP, f"quantize:mode={mode}", inputs=VAL, calibration=CALIB)
    assert large.report.passes[-1].status == "applied", large.report.passes[-1].reason
    assert large.report.passes[-1].metrics[0].max_abs == small.report.passes[-1].metrics[0].max_abs


@pytest.mark.parametrize("path", [CNN, MLP], ids=["cnn", "mlp"])
@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_prune_on_a_quantized_model_runs_correctly_or_freezes_with_a_reason(path, mode):
    result = onnxslim.optimize(path, f"quantize:mode={mode},prune:ratio=0.3", inputs=VAL, calibration=CALIB)
    quantize_row, prune_row = result.report.passes
    assert quantize_row.status == "applied"
    assert prune_row.status in ("applied", "no change"), (prune_row.status, prune_row.reason)
    if prune_row.status == "applied":  # validated by the manager; scales sliced with their weights
        _check_qdq_consistent(result.model)
    else:
        assert prune_row.summary
    assert not result.report.broken_checks
    assert _accuracy(result.model) > 0.9


def test_budget_object_of_the_core_is_used_when_there_is_one():
    """``ctx.budget`` may be the core's Budget (``check`` returning a verdict) or the
    ``--min-cosine`` number; mixed precision works against either."""
    from types import SimpleNamespace

    from onnxslim.pass_api import PassContext
    from onnxslim.passes.quantize import budget_verdict
    from onnxslim import validation

    reference = validation.run_model(model_io.load(MLP), VAL)
    seen = []

    class Strict:
        active = True

        def check(self, ref, outputs):
            seen.append(len(outputs))
            worst = min(m.max_abs for m in validation.compare(ref, outputs))
            return SimpleNamespace(ok=worst == 0.0, reason=f"max |Δ| {worst}")

    ctx = PassContext(validation=VAL, reference=reference, budget=Strict())
    assert budget_verdict(ctx, reference) == (True, "max |Δ| 0.0")
    ctx = PassContext(validation=VAL, reference=reference, budget=0.5)
    assert budget_verdict(ctx, reference) == (True, None)
    model = model_io.load(MLP)
    ctx = PassContext(validation=VAL, reference=reference, budget=Strict())
    result = Quantize(mode="dynamic").run(model, ctx)
    assert not result.modified and seen  # bit-exact budget: every layer stays float


def test_mixed_precision_under_the_core_budget_flags():
    """--max-error and --metric-outputs (the core Budget) steer mixed precision like --min-cosine."""
    loose = onnxslim.optimize(MLP, "quantize:mode=dynamic", inputs=VAL, max_error=0.5, metric_outputs=["logits"])
    row = loose.report.passes[-1]
    assert row.status == "applied" and len(row.details["quantized"]) == 3
    assert max(m.max_abs for m in row.metrics) <= 0.5
    tight = onnxslim.optimize(MLP, "quantize:mode=dynamic", inputs=VAL, max_error=0.05, metric_outputs=["logits"])
    row = tight.report.passes[-1]
    assert row.status == "no change" and "every layer kept in float for the budget" in row.summary
    assert "MatMulInteger" not in _ops(tight.model)
