"""The command line: bad input gives one line and an exit code, never a traceback or a file."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from fixtures import models as fx
from onnxslim import cli


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "in.onnx"
    onnx.save(fx.resnet(), path)
    return path


def _cli(args, capsys):
    code = cli.main([str(a) for a in args] + ["--quiet"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _bad_files(tmp_path, model_path):
    data = model_path.read_bytes()
    cases = {}
    (tmp_path / "notonnx.onnx").write_text("hello, this is text\n")
    cases["not onnx"] = (tmp_path / "notonnx.onnx", "not an ONNX model")
    (tmp_path / "trunc.onnx").write_bytes(data[: len(data) // 2])
    cases["truncated"] = (tmp_path / "trunc.onnx", "not an ONNX model")
    (tmp_path / "garbage.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    cases["garbage"] = (tmp_path / "garbage.onnx", "not an ONNX model")
    (tmp_path / "empty.onnx").write_bytes(b"")
    cases["empty"] = (tmp_path / "empty.onnx", "empty file")
    dangling = fx.mlp()
    dangling.graph.node[1].input[0] = "does_not_exist"
    onnx.save(dangling, tmp_path / "dangling.onnx")
    cases["dangling"] = (tmp_path / "dangling.onnx", "dangling input")
    ext = tmp_path / "ext" / "m.onnx"
    ext.parent.mkdir()
    fx.save_with_external_data(fx.resnet(), str(ext))
    for f in ext.parent.iterdir():
        if f.suffix != ".onnx":
            f.unlink()
    cases["missing external data"] = (ext, "is missing")
    return cases


def test_bad_models_exit_1_one_line_no_output(tmp_path, model, capsys):
    for label, (path, message) in _bad_files(tmp_path, model).items():
        out = tmp_path / f"out_{label.replace(' ', '_')}.onnx"
        code, _, err = _cli([path, out], capsys)
        assert code == 1, label
        assert err.count("\n") == 1 and err.startswith("onnxslim: error:") and message in err, (label, err)
        assert "Traceback" not in err
        assert not out.exists(), label
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")]
    assert leftovers == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--passes", "nonexistent"], "unknown pass 'nonexistent'"),
        (["--passes", "cleanup:dedupe=maybe"], "expected true or false"),
        (["--passes", "cleanup:nosuch=1"], "has no option 'nosuch'"),
        (["--passes", "cleanup:dedupe"], "expected key=value"),
        (["--input-shape", "nope=1x3x32x32"], "model has no input 'nope'"),
        (["--input-shape", "input=1x3x40x40"], "fixed dim 32"),
        (["--input-shape", "input=1xAx3"], "bad dimensions"),
        (["--min-cosine", "2"], "--min-cosine"),
        (["--seed", "-1"], "--seed must be a non-negative integer"),
        (["--samples", "0"], "--samples must be at least 1"),
        (["--input-shape", "input=0x3x32x32"], "must be positive integers"),
        (["--atol", "-1"], "atol must be a number >= 0"),
        (["--atol", "nan"], "atol must be a number >= 0"),
        (["--rtol", "-1"], "rtol must be a number >= 0"),
        (["--tolerance", "logits=-1"], "atol must be a number >= 0"),
        (["--tolerance", "logits=1:nan"], "rtol must be a number >= 0"),
        (["--tolerance", "nosuch=1"], "no such output"),
        (["--inputs", "missing.npz"], "no such input data file"),
        (["--recipe", "missing.toml"], "no such recipe"),
        (["--bogus-flag"], "unrecognized arguments"),
    ],
)
def test_usage_errors_exit_2(tmp_path, model, capsys, args, message):
    out = tmp_path / "out.onnx"
    code, _, err = _cli([model, out, *args], capsys)
    assert code == 2, err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--inputs", "--calibration"])
def test_bad_sample_data_is_a_usage_error_for_inputs_and_calibration_alike(tmp_path, model, capsys, flag):
    x = np.zeros((1, 3, 32, 32), np.float32)
    bad = {
        "wrong key": ({"nosuch": x}, "model has no input 'nosuch'"),
        "missing input": ({}, "no data for input 'input'"),
        "wrong shape": ({"input": np.zeros((1, 4, 32, 32), np.float32)}, "size 3 at axis 1"),
        "wrong rank": ({"input": np.zeros((32, 32), np.float32)}, "has rank 2"),
        "wrong dtype": ({"input": x.astype(np.complex64)}, "is complex64, the input is float32"),
        "no samples": ({"input": np.zeros((0, 1, 3, 32, 32), np.float32)}, "no samples"),
    }
    out = tmp_path / "out.onnx"
    passes = ["--passes", "prune:criterion=activation"] if flag == "--calibration" else []
    for label, (arrays, message) in bad.items():
        npz = tmp_path / "data.npz"
        np.savez(npz, **arrays)
        code, _, err = _cli([model, out, flag, npz, *passes], capsys)
        assert code == 2 and message in err and err.count("\n") == 1, (label, err)
        assert not out.exists(), label
    np.savez(npz, input=x.astype(np.float64))  # same kind: cast to the input's dtype
    code, _, err = _cli([model, out, flag, npz, *passes], capsys)
    assert code == 0, err


def test_refuses_to_overwrite_input(model, capsys):
    before = model.read_bytes()
    code, _, err = _cli([model, model], capsys)
    assert code == 2 and "refusing to overwrite" in err
    assert model.read_bytes() == before
    code, _, _ = _cli([model, model, "--in-place"], capsys)
    assert code == 0
    onnx.checker.check_model(onnx.load(model))


def test_main_job_writes_model_and_json_report(tmp_path, model, capsys):
    out, report, plot = tmp_path / "out.onnx", tmp_path / "report.json", tmp_path / "report.svg"
    code = cli.main([str(model), str(out), "--report", str(report), "--plot", str(plot)])
    captured = capsys.readouterr()
    assert code == 0
    assert "simplify" in captured.out and "max |Δ|" in captured.out
    data = json.loads(report.read_text())
    assert data["passes"][0]["name"] == "simplify" and data["output"] == str(out)
    assert data["output_bytes"] == out.stat().st_size
    svg = plot.read_text()
    assert svg.startswith("<svg") and "simplify" in svg and "params ×1.000" in svg
    # Reports are ordinary files like the model (mkstemp alone would leave them 0600).
    assert report.stat().st_mode & 0o777 == plot.stat().st_mode & 0o777 == out.stat().st_mode & 0o777


def test_dry_run_writes_nothing(tmp_path, model, capsys):
    out = tmp_path / "out.onnx"
    code, stdout, _ = _cli([model, out, "--dry-run"], capsys)
    assert code == 0 and not out.exists()


def test_passes_listing(capsys):
    assert cli.main(["passes"]) == 0
    out = capsys.readouterr().out
    assert "cleanup  (lossless)" in out and "dedupe=True  [bool]" in out


def test_third_party_pass_via_entry_point(tmp_path, model):
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "halfslim_plugin.py").write_text(
        textwrap.dedent(
            """
            from onnxslim import Pass, PassResult, option

            class Noop(Pass):
                name = "noop"
                summary = "does nothing, from a plugin"
                lossless = True

                class Options(Pass.Options):
                    level: int = option(1, "how much nothing")

                def run(self, model, ctx):
                    return PassResult(False, f"nothing at level {self.options.level}")
            """
        )
    )
    dist = plugin / "halfslim_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: halfslim-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[onnxslim.passes]\nnoop = halfslim_plugin:Noop\n")
    env_path = f"{plugin}"
    out = tmp_path / "out.onnx"
    listing = subprocess.run(
        [sys.executable, "-m", "onnxslim.cli", "passes"], capture_output=True, text=True, env=_env(env_path)
    )
    assert "noop  (lossless)  does nothing, from a plugin" in listing.stdout
    run = subprocess.run(
        [sys.executable, "-m", "onnxslim.cli", str(model), str(out), "--passes", "noop:level=3", "--quiet", "--report", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
        env=_env(env_path),
    )
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "r.json").read_text())["passes"][0]["summary"] == "nothing at level 3"
    bad = subprocess.run(
        [sys.executable, "-m", "onnxslim.cli", str(model), str(out), "--passes", "noop:level=x"],
        capture_output=True,
        text=True,
        env=_env(env_path),
    )
    assert bad.returncode == 2 and "expected an integer" in bad.stderr and "Traceback" not in bad.stderr


def _env(extra_path):
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra_path, env.get("PYTHONPATH", "")]))
    return env


def test_model_that_cannot_run_at_defaulted_dims_says_how_to_fix_it(tmp_path, capfd):
    """A model that fails in onnxruntime at every default size (64, then 256, 1024, 16000 along
    the dynamic dim): the error must name --input-shape, in one line (capfd: onnxruntime's own C++
    log records would show there too)."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((1, 1, 20000), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "long_kernel",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "samples"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight],
    )
    src = tmp_path / "in.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), src)
    out = tmp_path / "out.onnx"
    code, _, err = _cli([src, out], capfd)
    assert code == 1 and not out.exists()
    assert len(err.strip().splitlines()) == 1 and "--input-shape" in err
    code, _, _ = _cli([src, out, "--input-shape", "x=1x1x20000"], capfd)
    assert code == 0 and out.exists()


def test_result_failing_a_check_the_input_passes_is_not_written(tmp_path, model, capsys, monkeypatch):
    from onnxslim import manager, registry
    from onnxslim.pass_api import Pass, PassResult

    class MarksBroken(Pass):
        name = "test-marks-broken"
        summary = "tags the model so the fake final check fails it (test only)"
        lossless = True

        def run(self, model, ctx):
            model.metadata_props["broken"] = "yes"
            return PassResult(True, "tagged")

    registry.register(MarksBroken)
    real = manager._final_checks

    def fake(m, *args):
        checks = real(m, *args)
        if "broken" in m.metadata_props:
            checks["onnxruntime_default_level"] = "failed: simulated"
        return checks

    monkeypatch.setattr(manager, "_final_checks", fake)
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    code, _, err = _cli([model, out, "--passes", "test-marks-broken", "--report", report], capsys)
    assert code == 1 and not out.exists()
    assert "fails a check the input model passes" in err and len(err.strip().splitlines()) == 1
    data = json.loads(report.read_text())
    assert data["final_checks"]["onnxruntime_default_level"] == "failed: simulated"
    assert data["input_checks"] == {"onnx_checker": "ok", "onnxruntime_default_level": "ok"}


def test_outputs_never_overwrite_the_inputs_data_files(tmp_path, capsys):
    """The output, or the data file it would write, must not be a file the input is read from."""
    src = tmp_path / "a.onnx"
    data = Path(fx.save_with_external_data(fx.resnet(), src))
    snapshot = {p: p.read_bytes() for p in (src, data)}
    # the output is the input's data file
    code, _, err = _cli([src, data], capsys)
    assert code == 2 and "a file the input model is read from" in err
    # the output's data file is the input's: a.onnx keeps its weights in b.onnx.data
    renamed = tmp_path / "b.onnx.data"
    data.rename(renamed)
    proto = onnx.load(src, load_external_data=False)
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = renamed.name
    onnx.save(proto, src)
    snapshot = {p: p.read_bytes() for p in (src, renamed)}
    code, _, err = _cli([src, tmp_path / "b.onnx", "--external-data"], capsys)
    assert code == 2 and "b.onnx.data" in err and not (tmp_path / "b.onnx").exists()
    assert {p: p.read_bytes() for p in snapshot} == snapshot
    code, _, _ = _cli([src, tmp_path / "b.onnx"], capsys)  # inline: the data file is not touched
    assert code == 0 and {p: p.read_bytes() for p in snapshot} == snapshot


def test_report_and_plot_never_overwrite_a_model_or_each_other(tmp_path, model, capsys):
    out = tmp_path / "out.onnx"
    before = model.read_bytes()
    cases = [
        ["--report", model],
        ["--plot", model],
        ["--dry-run", "--report", model],
        ["--plot", out],
        ["--report", f"{out}.data"],
        ["--report", tmp_path / "r.json", "--plot", tmp_path / "r.json"],
    ]
    for extra in cases:
        code, _, err = _cli([model, out, *extra], capsys)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (extra, err)
        assert model.read_bytes() == before and not out.exists(), extra
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(
    "output, extra, code, message",
    [
        ("", [], 2, "not a file path"),
        ("newdir/", [], 2, "not a file path"),
        ("adir", [], 2, "not a file path"),
        ("nodir/out.onnx", [], 2, "does not exist"),
        ("out.onnx", ["--report", "nodir/r.json"], 2, "does not exist"),
        ("out.onnx", ["--plot", "adir"], 2, "not a file path"),
        ("/proc/out.onnx", [], 1, "cannot write in /proc"),
    ],
)
def test_destinations_are_checked_before_anything_is_written(tmp_path, model, capsys, monkeypatch, output, extra, code, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adir").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    got, _, err = _cli([model, output, *extra], capsys)
    assert got == code and message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def _hf_snapshot(tmp_path, external):
    """The Hugging Face cache layout: snapshots/<rev>/model.onnx -> ../../blobs/<sha> (and the
    data file likewise)."""
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshots" / "abc"
    blobs.mkdir()
    snap.mkdir(parents=True)
    if external:
        data = Path(fx.save_with_external_data(fx.resnet(), blobs / "model.onnx"))
        data.rename(blobs / "sha2")
        (snap / "model.onnx.data").symlink_to("../../blobs/sha2")
    else:
        onnx.save(fx.resnet(), blobs / "model.onnx")
    (blobs / "model.onnx").rename(blobs / "sha1")
    (snap / "model.onnx").symlink_to("../../blobs/sha1")
    return snap / "model.onnx"


@pytest.mark.parametrize("external", [False, True])
def test_symlinked_model_loads_as_onnxruntime_loads_it(tmp_path, capsys, external):
    import onnxruntime as ort

    src = _hf_snapshot(tmp_path, external)
    ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    out = tmp_path / "out.onnx"
    code, _, err = _cli([src, out], capsys)
    assert code == 0, err
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])


def _zipmap_with_external_data(path):
    proto = fx.zipmap_classifier()
    g = proto.graph
    g.initializer.append(onnx.numpy_helper.from_array(np.eye(4, dtype=np.float32).repeat(64, 1)[:, :4] * 2, "W"))
    g.initializer.append(onnx.numpy_helper.from_array(np.ones((64, 64), np.float32), "big"))  # kept external
    old = g.input[0].name
    for node in g.node:
        node.input[:] = ["xw" if name == old else name for name in node.input]
    g.node.insert(0, onnx.helper.make_node("MatMul", [old, "W"], ["xw"]))
    onnx.save(proto, path, save_as_external_data=True, location=f"{path.name}.data", size_threshold=0)


@pytest.mark.parametrize("external", [False, True])
def test_unrepresentable_model_with_external_data_is_written_whole(tmp_path, capsys, external):
    import onnxruntime as ort

    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    src, out = tmp_path / "src" / "zip.onnx", tmp_path / "dst" / "out.onnx"
    _zipmap_with_external_data(src)
    code, _, err = _cli([src, out, *(["--external-data"] if external else [])], capsys)
    assert code == 0, err
    assert (tmp_path / "dst" / "out.onnx.data").exists() == external
    feeds = {"input": np.ones((2, 4), np.float32)}
    want = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_array_equal(want[0], got[0])


def test_data_path_that_is_a_directory_is_refused_before_writing(tmp_path, model, capsys):
    out = tmp_path / "out.onnx"
    (tmp_path / "out.onnx.data").mkdir()
    code, _, err = _cli([model, out, "--external-data"], capsys)
    assert code in (1, 2) and "is a directory" in err and err.count("\n") == 1 and "internal error" not in err
    assert not out.exists()


def test_sigterm_during_save_removes_the_temporary_directory(tmp_path, model):
    out = tmp_path / "out.onnx"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from onnxslim import cli, model_io

        real = model_io._write

        def write_then_terminated(*args):
            files = real(*args)
            os.kill(os.getpid(), signal.SIGTERM)
            return files

        model_io._write = write_then_terminated
        sys.exit(cli.main([{str(model)!r}, {str(out)!r}, "--quiet", "--no-validate"]))
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode in (130, 143), run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert list(tmp_path.iterdir()) == [model]


def _matmul_model(n, weight):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("n", [64, 8])  # read lazily (>= 4 KiB) and inline
def test_raw_data_shorter_than_its_shape_is_a_model_error(tmp_path, capsys, n):
    weight = onnx.numpy_helper.from_array(np.ones((n, n), np.float32), "W")
    weight.raw_data = weight.raw_data[:-4]
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(_matmul_model(n, weight), src)
    code, _, err = _cli([src, out], capsys)
    assert code == 1 and "'W'" in err and "its shape needs" in err and err.count("\n") == 1, err
    assert not out.exists()


def _with_external_entry(tmp_path, key, value):
    d = tmp_path / "d"
    d.mkdir()
    src = d / "m.onnx"
    data = Path(fx.save_with_external_data(_matmul_model(64, onnx.numpy_helper.from_array(np.ones((64, 64), np.float32), "W")), src))
    (tmp_path / "w.bin").write_bytes(data.read_bytes())
    proto = onnx.load(src, load_external_data=False)
    tensor = proto.graph.initializer[0]
    entries = {e.key: e.value for e in tensor.external_data}
    entries[key] = value
    del tensor.external_data[:]
    for k, v in entries.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = k, v
    onnx.save(proto, src)
    return src


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("location", "../w.bin", "outside the model's directory"),
        ("location", "ABSOLUTE", "outside the model's directory"),
        ("offset", "-4", "negative external data offset"),
    ],
)
def test_bad_external_data_references_are_model_errors(tmp_path, capsys, key, value, message):
    src = _with_external_entry(tmp_path, key, str(tmp_path / "w.bin") if value == "ABSOLUTE" else value)
    out = tmp_path / "out.onnx"
    code, _, err = _cli([src, out], capsys)
    assert code == 1 and message in err and err.startswith("onnxslim: error:") and err.count("\n") == 1, err
    assert not out.exists()


def test_non_utf8_names_are_a_model_error(tmp_path, capsys):
    proto = _matmul_model(8, onnx.numpy_helper.from_array(np.ones((8, 8), np.float32), "W"))
    proto.graph.node[0].name = "mm"
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    src.write_bytes(proto.SerializeToString().replace(b"\x02mm", b"\x02\xff\xfe"))
    code, _, err = _cli([src, out], capsys)
    assert code == 1 and "not valid UTF-8" in err and err.count("\n") == 1, err
    assert not out.exists()


def test_input_shape_names_are_checked_with_user_data_too(tmp_path, model, capsys):
    feeds = tmp_path / "feeds.npz"
    np.savez(feeds, input=np.zeros((1, 3, 32, 32), np.float32))
    for extra in (["--inputs", feeds], ["--no-validate"]):
        code, _, err = _cli([model, tmp_path / "out.onnx", "--input-shape", "nope=1x3x32x32", *extra], capsys)
        assert code == 2 and "model has no input 'nope'" in err
