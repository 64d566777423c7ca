"""Command-line conventions of the field (onnxsim, OnnxSlim, Polygraphy) beside ours: --version,
python -m onnxslim, --input-shapes name:1,3,224,224, `onnxslim passes NAME`, did-you-mean, error
wording per caller (flags from the CLI, argument names from the API), exit codes of missing files."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxslim
from fixtures import models as fx
from onnxslim import cli
from onnxslim.errors import UsageError
from onnxslim.inputs import parse_shape_arg


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "in.onnx"
    onnx.save(fx.resnet(), path)
    return path


@pytest.fixture
def dynamic(tmp_path):
    """Two inputs with dynamic dims: x[N, 16] and y[N, 16] (y's name holds a ':' like TF's)."""
    import numpy as np

    w = numpy_helper.from_array(np.ones((16, 4), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "y:0"], ["s"]), helper.make_node("MatMul", ["s", "w"], ["out"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16]), helper.make_tensor_value_info("y:0", TensorProto.FLOAT, ["M", 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [w],
    )
    path = tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


def _cli(args, capsys):
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _python_m(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "onnxslim", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_version_and_python_m(model, tmp_path):
    run = _python_m("--version")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"onnxslim {onnxslim.__version__} (onnx ")
    assert onnxslim.__version__ == metadata.version("onnxslim-pruner")  # one version: pyproject's
    out = tmp_path / "out.onnx"
    run = _python_m(model, out, "--quiet")
    assert run.returncode == 0 and out.exists(), run.stderr
    run = _python_m("passes", "cleanup")
    assert run.returncode == 0 and run.stdout.startswith("cleanup  (lossless)")


@pytest.mark.parametrize(
    "text, want",
    [
        ("x=4x16", ("x", (4, 16))),  # ours
        ("x:4,16", ("x", (4, 16))),  # onnxsim / OnnxSlim
        ("x:[4,16]", ("x", (4, 16))),  # Polygraphy
        ("y:0:4,16", ("y:0", (4, 16))),  # a name holding ':'
        ("y:0=4x16", ("y:0", (4, 16))),
        ("s=", ("s", ())),
    ],
)
def test_input_shape_forms(text, want):
    assert parse_shape_arg(text) == want


@pytest.mark.parametrize("text", ["x", "x:4,a", ":4,16"])
def test_bad_input_shape_forms(text):
    with pytest.raises(UsageError, match="input shape"):
        parse_shape_arg(text)


def test_input_shapes_several_in_one_flag_beside_input_shape(tmp_path, dynamic, capsys):
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    # the other tools' form: several in one flag, even before the output path
    code, _, err = _cli([dynamic, "--input-shapes", "x:3,16", "y:0:[3,16]", out, "--quiet", "--report", report], capsys)
    assert code == 0, err
    assert out.exists() and json.loads(report.read_text())["input_shapes"] == {"x": [3, 16], "y:0": [3, 16]}
    # ours, mixed with theirs
    code, _, err = _cli([dynamic, out, "--input-shape", "x=5x16", "--input-shapes", "y:0:5,16", "--quiet", "--report", report], capsys)
    assert code == 0, err
    assert json.loads(report.read_text())["input_shapes"] == {"x": [5, 16], "y:0": [5, 16]}
    code, _, err = _cli([dynamic, out, "--input-shape", "x=5x16", "--input-shapes", "x:6,16", "--quiet"], capsys)
    assert code == 2 and "'x' given twice" in err
    code, _, err = _cli([dynamic, out, "--input-shapes", "z:5,16", "--quiet"], capsys)
    assert code == 2 and "model has no input 'z'" in err


def test_passes_command_shows_one_pass(capsys):
    code, out, _ = _cli(["passes", "prune"], capsys)
    assert code == 0 and out.startswith("prune  (lossy)") and "ratio=0.3  [float]" in out
    assert "cleanup" not in out
    code, out, _ = _cli(["passes"], capsys)
    assert code == 0 and "cleanup  (lossless)" in out and "prune  (lossy)" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["passes", "prnue"], "unknown pass 'prnue' (did you mean 'prune'?)"),
        (["{model}", "{out}", "--passes", "cleanup,prnue"], "unknown pass 'prnue' (did you mean 'prune'?)"),
        (["{model}", "{out}", "--passes", "prune:ratoi=0.3"], "has no option 'ratoi' (did you mean 'ratio'?)"),
        (["{model}", "{out}", "--passes", "prune:criterion=activaton"], "got 'activaton' (did you mean 'activation'"),
        (["{model}", "{out}", "--inptus", "x.npz"], "unrecognized arguments: --inptus x.npz (did you mean '--inputs'"),
        (["{model}", "{out}", "--dryrun"], "(did you mean '--dry-run'?)"),
        (["pases"], "pases: no such file or command (did you mean 'passes'?)"),
        (["{tmp}/in.onxx", "{out}"], "no such file (did you mean 'in.onnx'?)"),
    ],
)
def test_did_you_mean(tmp_path, model, capsys, args, message):
    fill = {"model": model, "out": tmp_path / "out.onnx", "tmp": tmp_path}
    code, _, err = _cli([a.format(**fill) for a in args], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_did_you_mean_covers_new_flags_and_commands(monkeypatch, capsys):
    parser = cli.UsageParser(prog="onnxslim x")
    parser.add_argument("--latency-budget")
    with pytest.raises(UsageError, match="did you mean '--latency-budget'"):
        parser.parse_args(["--latency-budgte", "3"])
    calls = []
    monkeypatch.setitem(cli.COMMANDS, "analyze", lambda argv: calls.append(list(argv)) or 0)
    assert cli.main(["analyze", "m.onnx"]) == 0 and calls == [["m.onnx"]]
    code, _, err = _cli(["analyse"], capsys)
    assert code == 2 and "did you mean 'analyze'?" in err


def test_errors_name_api_arguments_from_the_api_and_flags_from_the_cli(model, capsys):
    result = onnxslim.optimize(model, validate=False)
    with pytest.raises(UsageError) as info:
        result.save(model)
    assert "in_place=True" in str(info.value) and "--" not in str(info.value)
    with pytest.raises(UsageError) as info:
        onnxslim.optimize(model, "prune:criterion=activation", validate=False)
    assert "calibration='data.npz'" in str(info.value) and "--" not in str(info.value)
    code, _, err = _cli([model, model, "--quiet"], capsys)
    assert code == 2 and "--in-place" in err and "in_place" not in err
    code, _, err = _cli([model, model.with_name("o.onnx"), "--passes", "prune:criterion=activation", "--quiet"], capsys)
    assert code == 2 and "--calibration data.npz" in err


def test_missing_files_share_one_exit_code(tmp_path, model, capsys):
    out = tmp_path / "out.onnx"
    codes = {}
    for label, args in {
        "model": [tmp_path / "nope.onnx", out],
        "recipe": [model, out, "--recipe", tmp_path / "nope.toml"],
        "inputs": [model, out, "--inputs", tmp_path / "nope.npz"],
    }.items():
        code, _, err = _cli([*args, "--quiet"], capsys)
        assert "no such" in err and err.count("\n") == 1, err
        codes[label] = code
    assert set(codes.values()) == {2}, codes
    with pytest.raises(UsageError, match="no such file"):
        onnxslim.optimize(tmp_path / "nope.onnx")


def test_did_you_mean_for_names_in_the_model_and_the_recipe(tmp_path, model, capsys):
    out = tmp_path / "out.onnx"
    code, _, err = _cli([model, out, "--input-shape", "inptu=1x3x32x32"], capsys)
    assert code == 2 and "model has no input 'inptu' (did you mean 'input'?)" in err
    code, _, err = _cli([model, out, "--tolerance", "logit=1e-4"], capsys)
    assert code == 2 and "(did you mean 'logits'?)" in err
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[passes]]\nname = "cleanup"\n')
    code, _, err = _cli([model, out, "--recipe", recipe], capsys)
    assert code == 2 and "found [[passes]]: did you mean [[pass]]?" in err
    recipe.write_text('[[pass]]\nname = "prune"\nratoi = 0.3\n')
    code, _, err = _cli([model, out, "--recipe", recipe], capsys)
    assert code == 2 and "has no option 'ratoi' (did you mean 'ratio'?)" in err


def test_the_command_exits_without_walking_the_heap_again(monkeypatch, capsys):
    """`onnxslim` and `python -m onnxslim` run cli.console: main's exit code, with what is still
    alive frozen for the interpreter's shutdown (its collections would walk every module again);
    main alone leaves the collector as it found it."""
    import gc

    from onnxslim import cli

    monkeypatch.setattr(sys, "argv", ["onnxslim", "passes", "simplify"])
    assert gc.get_freeze_count() == 0
    assert cli.main() == 0
    assert gc.get_freeze_count() == 0
    try:
        assert cli.console() == 0
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
    assert "simplify" in capsys.readouterr().out
