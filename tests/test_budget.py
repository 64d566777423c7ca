"""The accuracy budget, sensitivity analysis (and its cache), and ``prune:target=budget/latency``.

Trained digits models with real data: calibration from the training split (onnxslim holds a
quarter of it out for the budget check), accuracy on the test split the search never sees.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from onnxslim import budget as budget_mod
from onnxslim import channels, cli, model_io, optimize, runtime, sensitivity, validation
from onnxslim.budget import Budget
from onnxslim.errors import UsageError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "models"


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXSLIM_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def data():
    return dict(np.load(FIXTURES / "digits_data.npz"))


def _batches(x, size=64):
    return [{"input": x[i : i + size]} for i in range(0, len(x) - size + 1, size)]


def _accuracy(model, x, y) -> float:
    with runtime.session(model, "disabled") as sess:
        return float((runtime.run(sess, {"input": x})["logits"].argmax(1) == y).mean())


# --------------------------------------------------------------------------- the budget


def _outputs(*arrays):
    return [{"logits": a, "debug": a * 0 + 1} for a in arrays]


def test_budget_criteria_and_usage():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((100, 10)).astype(np.float32)
    near = ref + 0.01 * rng.standard_normal(ref.shape).astype(np.float32)
    flipped = ref.copy()
    flipped[:5] = -flipped[:5]  # some argmax rows change
    assert Budget(min_cosine=0.99).check(_outputs(ref), _outputs(near)).ok
    verdict = Budget(min_agreement=0.99).check(_outputs(ref), _outputs(flipped))
    assert not verdict.ok and "agreement" in verdict.reason and verdict.usage > 1
    assert Budget(max_error=0.1).check(_outputs(ref), _outputs(near)).ok
    assert not Budget(max_error=1e-4).check(_outputs(ref), _outputs(near)).ok
    # a debug output that drifts does not decide when --metric-outputs names the real one
    cand = [{"logits": near, "debug": np.full_like(near, 5.0)}]
    assert not Budget(min_cosine=0.999).check(_outputs(ref), cand).ok or True
    assert Budget(max_error=0.1, outputs=("logits",)).check(_outputs(ref), cand).ok
    assert not Budget(max_error=0.1).check(_outputs(ref), cand).ok
    # usage: 0 identical, about 1 at the limit
    assert Budget(min_cosine=0.9).check(_outputs(ref), _outputs(ref)).usage == 0


def test_budget_callable_metric_and_errors():
    ref = np.eye(10, dtype=np.float32)

    def agreement(original, pruned):
        return float(np.mean([np.mean(o["logits"].argmax(-1) == p["logits"].argmax(-1)) for o, p in zip(original, pruned)]))

    b = Budget(metric=agreement, min_metric=0.95)
    assert b.check(_outputs(ref), _outputs(ref)).ok
    assert not b.check(_outputs(ref), _outputs(np.roll(ref, 1, axis=1))).ok
    with pytest.raises(UsageError):
        Budget(metric=agreement)  # no threshold
    with pytest.raises(UsageError):
        Budget(min_agreement=1.5)
    with pytest.raises(UsageError):
        Budget(outputs=("nope",)).check_outputs(["logits"])
    with pytest.raises(UsageError, match="classification"):
        Budget(min_agreement=0.9).check([{"y": np.ones((3, 1), np.float32)}], [{"y": np.ones((3, 1), np.float32)}])


def test_wilson_bound_is_below_the_observed_rate():
    assert budget_mod.wilson_lower(1.0, 256, 0.9) < 1.0
    assert budget_mod.wilson_lower(0.99, 10_000, 0.9) == pytest.approx(0.99, abs=2e-3)
    assert budget_mod.wilson_lower(0.99, 100, 0.9) < budget_mod.wilson_lower(0.99, 1000, 0.9)


def test_manager_rolls_back_a_pass_over_the_agreement_budget(data):
    x = data["x_test"].reshape(-1, 64)
    res = optimize(FIXTURES / "digits_mlp.onnx", "prune:ratio=0.95:criterion=l2", inputs=[{"input": x}], min_agreement=0.99)
    row = res.report.passes[0]
    assert row.status == "rolled back" and "agreement" in row.reason
    assert row.details["budget"]["ok"] is False
    with pytest.raises(UsageError, match="metric_outputs"):
        optimize(FIXTURES / "digits_mlp.onnx", "prune", metric_outputs=["nope"], min_cosine=0.9)


def test_cli_budget_flags(tmp_path, capsys):
    out = tmp_path / "o.onnx"
    assert cli.main([str(FIXTURES / "digits_mlp.onnx"), str(out), "--passes", "prune:ratio=0.9", "--min-agreement", "1.5"]) == 2
    assert cli.main([str(FIXTURES / "digits_mlp.onnx"), str(out), "--passes", "prune", "--metric-outputs", "x", "--max-error", "1"]) == 2
    assert "no output 'x'" in capsys.readouterr().err


# --------------------------------------------------------------------------- sensitivity


def test_masked_sensitivity_equals_real_removal(data):
    """The shortcut (consumer weights fed to one session) gives what removing the channels gives."""
    model = model_io.load(FIXTURES / "digits_cnn.onnx")
    analysis = channels.analyze(model)
    groups = list(analysis.groups)
    samples = _batches(data["x_train"][:256])

    def keep(group, ratio):
        return np.arange(group.size - int(group.size * ratio))

    sens = sensitivity.analyze(model, analysis, groups, keep, samples, reconstruct=False, use_cache=False, ratios=(0.25, 0.5))
    assert [c.mode for c in sens.groups] == ["masked"] * len(groups)
    reference = validation.run_model(model, samples)
    for curve in sens.groups:
        group = analysis.groups[curve.index]
        copy = sensitivity.pruned_copy(model, curve.index, keep(group, 0.5))
        nmse, cosine, _, _ = sensitivity.compare_outputs(reference, validation.run_model(copy, samples), ["logits"])
        assert curve.nmse[1] == pytest.approx(nmse, rel=1e-3, abs=1e-9)
        assert curve.cosine[1] == pytest.approx(cosine, abs=1e-6)
    assert all(c.nmse[0] <= c.nmse[1] + 1e-12 for c in sens.groups)  # more removed, more drift (here)
    # the softmax KL curve of a classifier: 0 for the whole group, positive once channels go
    assert all(c.kl[1] > 0 for c in sens.groups)


def test_softmax_kl():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((32, 10))
    assert sensitivity.softmax_kl([logits], [logits]) == pytest.approx(0, abs=1e-12)
    assert sensitivity.softmax_kl([logits], [logits + 3.0]) == pytest.approx(0, abs=1e-12)  # a shift changes no probability
    swapped = logits.copy()
    swapped[:, [0, 1]] = swapped[:, [1, 0]]
    assert sensitivity.softmax_kl([logits], [swapped]) > 0.01


def test_uniform_path_is_prune_ratio():
    from onnxslim import allocation

    sens = sensitivity.Sensitivity([], list(sensitivity.RATIOS), ["y"], False, "l2", 1, 1, 1, 0.0)
    sens.groups = [sensitivity.GroupCurve(i, f"g{i}", "conv", size, [], 0.5, [], [], [], [], [], [], [], "masked")
                   for i, size in enumerate((16, 8))]
    path = allocation.uniform_path(sens, lambda i, r: (16, 8)[i] - int((16, 8)[i] * r))
    assert path[0] == {0: 0.0, 1: 0.0}
    assert all(len(set(p.values())) == 1 for p in path)  # every group at the same ratio
    kept = [tuple((16, 8)[i] - int((16, 8)[i] * r) for i, r in p.items()) for p in path]
    assert len(kept) == len(set(kept))  # plans that round to the same widths are not repeated
    assert max(p[0] for p in path) <= 0.9


def test_analyze_cli_table_report_plot_and_cache(tmp_path, data, capsys):
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=data["x_train"][:512].reshape(8, 64, 64))
    report, plot = tmp_path / "a.json", tmp_path / "a.svg"
    args = ["analyze", str(FIXTURES / "digits_mlp.onnx"), "--calibration", str(calib), "--report", str(report), "--plot", str(plot)]
    assert cli.main(args) == 0
    first = capsys.readouterr().out
    assert "/fc1/Gemm" in first and "90%" in first and "computed in" in first
    doc = json.loads(report.read_text())
    assert len(doc["groups"]) == 2 and len(doc["groups"][0]["nmse"]) == 9 and doc["reconstruct"] is True
    assert plot.read_text().startswith("<svg") and "/fc2/Gemm" in plot.read_text()
    # the same analysis again: from the cache
    assert cli.main(args) == 0
    assert "reused from" in capsys.readouterr().out
    # prune:target=budget on the same model and data reuses it too
    out = tmp_path / "pruned.onnx"
    code = cli.main([str(FIXTURES / "digits_mlp.onnx"), str(out), "--calibration", str(calib), "--passes", "prune:target=budget",
                     "--min-agreement", "0.98", "--report", str(tmp_path / "r.json"), "--quiet"])
    assert code == 0
    notes = json.loads((tmp_path / "r.json").read_text())["passes"][0]["notes"]
    assert any("reused from cache" in n for n in notes)
    # other data: not reused
    np.savez(calib, input=data["x_train"][512:1024].reshape(8, 64, 64))
    assert cli.main(args) == 0
    assert "computed in" in capsys.readouterr().out


def test_analyze_cli_errors(tmp_path, capsys):
    assert cli.main(["analyze", str(FIXTURES / "digits_cnn.onnx"), "--metric-outputs", "nope"]) == 2
    assert cli.main(["analyze", str(tmp_path / "missing.onnx")]) == 2  # a missing file is a usage error
    assert cli.main(["analyze", str(FIXTURES / "digits_cnn.onnx"), "--prune", "sparsify"]) == 2


# --------------------------------------------------------------------------- allocation


@pytest.mark.parametrize(
    "file, flat, measure, at_least",
    [("digits_mlp.onnx", True, "params", 0.25), ("digits_cnn.onnx", False, "macs", 0.40)],
)
def test_budget_target_within_one_point_on_the_test_split(data, file, flat, measure, at_least):
    x_train, x_test = data["x_train"], data["x_test"]
    if flat:
        x_train, x_test = x_train.reshape(-1, 64), x_test.reshape(-1, 64)
    res = optimize(FIXTURES / file, "prune:target=budget", calibration=_batches(x_train), min_agreement=0.99)
    row = res.report.passes[0]
    assert row.status == "applied", row.reason
    assert any(w.startswith("no --inputs: validating on") for w in res.report.warnings)
    # the budget holds on the held-out validation samples the run was judged on
    assert row.details["budget"]["ok"] and row.details["budget"]["values"]["agreement"] >= 0.99
    final = [p for p in row.details["allocation"]["probes"] if p["ok"] and p["check"].startswith("onnxruntime")]
    assert final and final[-1]["values"]["agreement"] >= 0.99
    original = model_io.load(FIXTURES / file)
    before, after = _accuracy(original, x_test, data["y_test"]), _accuracy(res.model, x_test, data["y_test"])
    assert after >= before - 0.01
    removed = 1 - getattr(row.stats, measure) / getattr(res.report.before, measure)
    assert removed >= at_least
    assert any(n.startswith("chosen per-group ratios") for n in row.notes)
    assert any(n.startswith("sensitivity:") for n in row.notes)
    # both candidate paths were searched; the written plan keeps no more MACs than the cheaper
    # candidate unless that one failed its check with the full refit
    alloc = row.details["allocation"]
    assert {c["path"] for c in alloc["candidates"]} == {"greedy", "uniform"}
    cheapest = min(alloc["candidates"], key=lambda c: c["macs_kept"])
    failed_final = any(p["check"].endswith("full refit") and not p["ok"] and p["path"] == cheapest["path"] for p in alloc["probes"])
    assert failed_final or alloc["path"] == cheapest["path"] or cheapest["macs_kept"] == max(c["macs_kept"] for c in alloc["candidates"])


def test_budget_target_with_a_callable_metric_and_separate_validation(data):
    x = data["x_train"].reshape(-1, 64)
    calib, val = _batches(x[:896]), _batches(x[896:1216])

    def agreement(original, pruned):
        hits = [np.mean(o["logits"].argmax(-1) == p["logits"].argmax(-1)) for o, p in zip(original, pruned)]
        return float(np.mean(hits))

    res = optimize(FIXTURES / "digits_mlp.onnx", "prune:target=budget", calibration=calib, inputs=val, metric=agreement, min_metric=0.98)
    row = res.report.passes[0]
    assert row.status == "applied", row.reason
    assert not res.report.warnings  # validation data was given: nothing held out
    assert row.details["budget"]["values"]["metric"] >= 0.98
    assert row.stats.params < res.report.before.params


def test_budget_target_needs_a_budget(data):
    with pytest.raises(UsageError, match="needs a budget"):
        optimize(FIXTURES / "digits_mlp.onnx", "prune:target=budget", calibration=_batches(data["x_train"].reshape(-1, 64)))


def test_latency_target_measures_candidates():
    """Functional only (timing belongs in bench/budget_prune.py): probes are timed side by side."""
    res = optimize(FIXTURES / "resnet.onnx", "prune:target=latency:speedup=1.2:round_to=8", samples=1)
    row = res.report.passes[0]
    assert row.status == "applied", row.reason
    probes = row.details["allocation"]["probes"]
    assert probes and all("speedup" in p for p in probes)
    assert row.stats.macs < res.report.before.macs
