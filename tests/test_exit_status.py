"""A run whose requested pass was rolled back or failed exits 3 (EXIT_INCOMPLETE), still
writing the best valid model; ``--allow-rollback`` (API: ``result.exit_code(allow_rollback=True)``)
accepts it."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import onnxslim
from fixtures import models as fx
from onnxslim import cli, model_io, runtime
from onnxslim.errors import EXIT_INCOMPLETE


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "in.onnx"
    onnx.save(fx.resnet(), path)
    return path


def _outputs(path, feed):
    with runtime.session(model_io.load(path), "disabled") as sess:
        return runtime.run(sess, feed)


def test_rolled_back_pass_exits_3_and_writes_the_unpruned_model(model, tmp_path, capsys):
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    args = [str(model), str(out), "--passes", "cleanup,prune:ratio=0.5:criterion=l2", "--min-cosine", "0.99999"]
    code = cli.main(args + ["--report", str(report), "--quiet"])
    err = capsys.readouterr().err
    assert code == EXIT_INCOMPLETE == 3
    assert "prune rolled back" in err and "exit 3" in err and "\n" == err[-1] and err.count("\n") == 1
    data = json.loads(report.read_text())
    assert data["incomplete"] == ["prune"] and data["passes"][1]["status"] == "rolled back"
    feed = {"input": np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    np.testing.assert_allclose(_outputs(out, feed)["logits"], _outputs(model, feed)["logits"], rtol=1e-4, atol=1e-5)


def test_allow_rollback_accepts_it(model, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    args = [str(model), str(out), "--passes", "prune:ratio=0.5:criterion=l2", "--min-cosine", "0.99999", "--allow-rollback"]
    assert cli.main(args + ["--quiet"]) == 0
    assert "accepted by --allow-rollback" in capsys.readouterr().err
    assert out.exists()


def test_applied_passes_exit_0(model, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    assert cli.main([str(model), str(out), "--passes", "prune:ratio=0.3:criterion=l2", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_api_result_says_whether_the_run_is_complete(model):
    bad = onnxslim.optimize(model, "prune:ratio=0.5:criterion=l2", min_cosine=0.99999)
    assert not bad.complete and [r.name for r in bad.report.incomplete] == ["prune"]
    assert bad.exit_code() == 3 and bad.exit_code(allow_rollback=True) == 0
    good = onnxslim.optimize(model, "prune:ratio=0.3:criterion=l2")
    assert good.complete and good.exit_code() == 0


def test_failed_pass_exits_3_without_strict_and_1_with_it(model, tmp_path, capsys, monkeypatch):
    from onnxslim.passes import prune

    def explode(self, model, ctx):
        raise RuntimeError("boom")

    monkeypatch.setattr(prune.Prune, "run", explode)
    out = tmp_path / "out.onnx"
    assert cli.main([str(model), str(out), "--passes", "prune", "--quiet"]) == 3
    assert "prune failed: RuntimeError: boom" in capsys.readouterr().err and out.exists()
    assert cli.main([str(model), str(tmp_path / "o2.onnx"), "--passes", "prune", "--strict", "--quiet"]) == 1
