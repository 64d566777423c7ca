"""The report a person reads: an 80-column table, one baseline for every ratio, sparsity that says
what it counts, MACs that agree everywhere, total wall time, a dry run that shows each pass, and a
plot with sparsity and drift."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import onnx
import pytest

import onnxslim
from fixtures import models as fx
from onnxslim import cli
from onnxslim.report import SPARSITY_COUNTS
from onnxslim.stats import human

PIPELINE = "zeros,prune:ratio=0.3,unstructured:sparsity=0.7,prune:ratio=0.5,sparsify"


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "in.onnx"
    onnx.save(fx.resnet(), path)
    # the second prune goes over the budget: a rolled-back row with a long reason
    return onnxslim.optimize(path, PIPELINE, min_cosine=0.8)


def _rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.split() and line.split()[0] in ("(input)", "zeros", "prune", "unstructured", "sparsify")]


def test_table_fits_80_columns_and_keeps_every_pass(result):
    text = result.report.render(80)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text  # nothing truncated: wrapped
    assert [r.split()[0] for r in _rows(text)] == ["(input)", *[p.name for p in result.report.passes]]
    assert "rolled back: cosine" in text  # the reason, below the table
    wide = result.report.render(200)
    assert all(len(_rows(wide)[i].split()) > 2 for i in (2, 3))  # one line per pass, ratios inline
    assert "time" in wide.splitlines()[1] and "time" not in text.splitlines()[1]


def test_every_ratio_is_against_the_input(result, tmp_path):
    report = result.report
    text = report.render(200)
    assert "× is the ratio to the input" in text
    before = report.before
    for row in report.passes:
        if row.stats is None or row.stats.params == before.params:
            continue
        line = next(line for line in _rows(text) if line.startswith(f"{row.name} (") and human(row.stats.params) in line)
        assert f"×{row.stats.params / before.params:.2f}" in line
    # unstructured and sparsify keep prune's params: their ratio is prune's, not ×1.00 of the row before
    prune, unstructured = report.passes[1], report.passes[2]
    assert unstructured.stats.params == prune.stats.params < before.params
    from onnxslim.plot import report_svg

    svg = report_svg(report)
    ratio = f"params ×{prune.stats.params / before.params:.3f}"
    assert svg.count(ratio) == 4  # prune, unstructured, the rolled-back prune (as before it), sparsify
    assert "× the input model" in svg


def test_sparsity_says_what_it_counts(result):
    from onnxslim.plot import report_svg

    assert "sparsity: " + SPARSITY_COUNTS in result.report.render(200)
    assert "all float weights" in SPARSITY_COUNTS
    assert "sparsity: " + SPARSITY_COUNTS in report_svg(result.report)


def test_macs_agree_in_table_pass_summary_and_json(result):
    data = json.loads(result.report.to_json())
    prune = data["passes"][1]
    after = prune["stats"]["macs"]
    assert prune["details"]["predicted"]["macs_after"] == after  # the prediction is what the model then has
    assert f"MACs {human(data['before']['macs'])} → {human(after)}" in prune["summary"]
    assert human(after) in next(line for line in _rows(result.report.render(200)) if line.startswith("prune ("))


def test_total_wall_time_in_json(tmp_path, capsys):
    src, out, report = tmp_path / "in.onnx", tmp_path / "out.onnx", tmp_path / "r.json"
    onnx.save(fx.resnet(), src)
    assert cli.main([str(src), str(out), "--report", str(report), "--quiet"]) == 0
    data = json.loads(report.read_text())
    passes = sum(p["seconds"] + p["validate_seconds"] for p in data["passes"])
    assert data["wall_seconds"] > passes > 0


def test_dry_run_applies_each_pass_after_the_previous_ones(tmp_path, capsys):
    src, out, report, plot = tmp_path / "in.onnx", tmp_path / "out.onnx", tmp_path / "r.json", tmp_path / "p.svg"
    onnx.save(fx.resnet(), src)
    before = src.read_bytes()
    code = cli.main([str(src), str(out), "--dry-run", "--passes", "prune:ratio=0.3,unstructured:sparsity=0.7", "--report", str(report), "--plot", str(plot)])
    text = capsys.readouterr().out
    assert code == 0 and not out.exists() and src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "p.svg", "r.json"]
    data = json.loads(report.read_text())
    assert data["dry_run"] is True and data["output"] is None
    prune, unstructured = data["passes"]
    assert prune["status"] == unstructured["status"] == "applied"
    assert prune["stats"]["params"] < data["before"]["params"]  # really pruned, on the copy
    assert unstructured["stats"]["params"] == prune["stats"]["params"]  # after prune
    assert unstructured["stats"]["sparsity"] > 0.5
    assert "DRY RUN" in text and text.count("(dry run)") == 2 and "no change" not in text
    assert "dry run" in plot.read_text()


def test_plot_shows_sparsity_and_drift_and_stays_inside(result):
    from onnxslim.plot import report_svg

    svg = report_svg(result.report)
    root = ET.fromstring(svg)
    width = float(root.get("width"))
    ns = "{http://www.w3.org/2000/svg}"
    texts = [t.text or "" for t in root.iter(f"{ns}text")]
    assert any(t.startswith("sparsity 65.") or t.startswith("sparsity 6") for t in texts)
    unstructured = result.report.passes[2]
    assert any(t.startswith(f"cosine {unstructured.min_cosine:.6f}") and "max |Δ|" in t for t in texts)
    assert any("1 − cosine" in t for t in texts)
    for rect in root.iter(f"{ns}rect"):
        if rect.get("width") != "100%":
            assert float(rect.get("x")) + float(rect.get("width")) <= width
    # a row per pass plus the input, each with its drift (or why there is none)
    assert sum(bool(re.match(r"cosine \d", t)) for t in texts) == sum(p.min_cosine is not None for p in result.report.passes)


def test_macs_agree_where_inference_needs_a_measurement():
    """Silero VAD: MAC layers inside If branches are measured on the sample for the table; the
    prediction in prune's summary counts them the same way (was 262.4K → 223.5K against 660K)."""
    from pathlib import Path

    path = Path.home() / ".cache/onnxslim-corpus/silero_vad_op18_ifless.onnx"
    if not path.exists():
        pytest.skip("shared corpus not fetched")
    result = onnxslim.optimize(path, "prune:ratio=0.3", input_shapes={"input": (1, 512)})
    row = result.report.passes[0]
    predicted = row.details["predicted"]
    assert predicted["macs_before"] == result.report.before.macs
    assert predicted["macs_after"] == row.stats.macs
    assert f"MACs {human(result.report.before.macs)} → {human(row.stats.macs)}" in row.summary
