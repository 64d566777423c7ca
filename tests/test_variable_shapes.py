"""Calibration and validation data as users have it: one sample per .npz, in a folder or a list,
each of its own shape (variable-width crops, sentences of different lengths)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import onnxslim
from fixtures import models as fx
from onnxslim import cli, model_io
from onnxslim.calibration import Calibration
from onnxslim.inputs import load_sample_files


@pytest.fixture(scope="module")
def crops_model(tmp_path_factory):
    """The ResNet fixture with a dynamic width: global average pooling takes any crop."""
    proto = fx.resnet()
    proto.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "W"
    path = tmp_path_factory.mktemp("crops") / "resnet_w.onnx"
    onnx.save(proto, path)
    return path


def _crops(folder, widths, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, w in enumerate(widths):
        np.savez(folder / f"crop{i:02d}.npz", input=rng.standard_normal((1, 3, 32, w)).astype(np.float32))
    return folder


def test_folder_and_list_load_every_file_in_name_order(crops_model, tmp_path):
    folder = _crops(tmp_path / "calib", [24, 40, 56])
    model = model_io.load(crops_model)
    samples = load_sample_files(folder, model)
    assert [s["input"].shape[3] for s in samples] == [24, 40, 56]
    files = sorted(folder.iterdir())
    listed = load_sample_files([files[2], files[0]], model)
    assert [s["input"].shape[3] for s in listed] == [56, 24]


@pytest.mark.parametrize("criterion", ["activation", "obs"])
def test_prune_with_calibration_of_different_widths(crops_model, tmp_path, criterion):
    calib = _crops(tmp_path / "calib", [24, 32, 40, 48, 56, 64])
    checks = sorted(_crops(tmp_path / "val", [36, 72], seed=1).iterdir())
    result = onnxslim.optimize(
        crops_model, [{"name": "prune", "ratio": 0.3, "criterion": criterion}], calibration=calib, inputs=checks
    )
    row = result.report.passes[0]
    assert row.status == "applied", row.reason
    rec = row.details["reconstruction"]
    assert sum(e["applied"] for e in rec["layers"]) >= len(rec["layers"]) // 2, rec["summary"]
    assert result.report.samples == 2 and row.min_cosine > 0.5


def test_sentences_of_different_lengths(tmp_path):
    model = fx.bert_block()
    rng = np.random.default_rng(0)
    sentences = []
    for length in (5, 9, 13, 17, 21, 7):
        ids = rng.integers(0, 100, (1, length)).astype(np.int64)
        sentences.append({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    for criterion in ("activation", "obs"):
        result = onnxslim.optimize(model, [{"name": "prune", "ratio": 0.25, "criterion": criterion}], calibration=sentences, inputs=sentences[:2])
        row = result.report.passes[0]
        assert row.status == "applied", (criterion, row.reason)
        assert row.details["reconstruction"]["layers"]


def test_capture_gives_per_sample_arrays_when_shapes_differ(crops_model, tmp_path):
    model = model_io.load(crops_model)
    calib = Calibration(load_sample_files(_crops(tmp_path / "c", [24, 40]), model))
    out = calib.capture(model, [model.graph.inputs[0], model.graph.outputs[0]])
    assert isinstance(out["input"], list) and [a.shape[3] for a in out["input"]] == [24, 40]
    assert out[model.graph.outputs[0].name].shape == (2, 10)  # same shape: still one array


def test_cli_takes_folders_and_lists(crops_model, tmp_path, capsys):
    calib = _crops(tmp_path / "calib", [24, 40, 56])
    val = sorted(_crops(tmp_path / "val", [32, 48], seed=1).iterdir())
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    # the output path after a file list is taken back from it
    args = [crops_model, "--passes", "prune:ratio=0.3", "--calibration", calib, "--inputs", *val, out]
    code = cli.main([str(a) for a in args] + ["--report", str(report), "--quiet"])
    assert code == 0, capsys.readouterr().err
    data = json.loads(report.read_text())
    assert data["samples"] == 2 and data["passes"][0]["status"] == "applied" and out.exists()


def test_empty_folder_is_a_usage_error(crops_model, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = cli.main([str(crops_model), str(tmp_path / "o.onnx"), "--passes", "prune", "--calibration", str(tmp_path / "empty"), "--quiet"])
    assert code == 2 and "holds no .npz files" in capsys.readouterr().err
