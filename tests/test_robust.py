"""Models that must work with no options, If-branch coverage, and the crash and error cases
closed by issue 14 — each on a small generated model."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxslim
from onnxslim import cli, inputs, model_io, validation
from tests.support import ScaleWeight

OPSET = [helper.make_opsetid("", 17)]
CORPUS = Path.home() / ".cache" / "onnxslim-corpus"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "models"


def _save(graph, path, opset=OPSET):
    onnx.save(helper.make_model(graph, opset_imports=opset, ir_version=8), path)
    return path


def _cli(args, capfd, quiet=True):
    code = cli.main([str(a) for a in args] + (["--quiet"] if quiet else []))
    captured = capfd.readouterr()
    return code, captured.out, captured.err


def _conv_model(path, shape, out_shape=None):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [w],
    )
    return _save(graph, path)


# -- models that must work with no options ---------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [[], ["--no-validate"], ["--input-shape", "x=1x3x48x192"], ["--inputs", "DATA"], ["--passes", "zeros,prune:ratio=0.5,unstructured,sparsify"]],
)
def test_negative_dims_are_dynamic_and_kept_as_declared(tmp_path, capfd, extra):
    """Paddle writes dynamic dims as ``dim_value: -1``: every path treats them as dynamic and the
    written model declares them as the input did."""
    src = _conv_model(tmp_path / "in.onnx", [-1, 3, None, None], [-1, 4, None, None])
    data = tmp_path / "data.npz"
    np.savez(data, x=np.random.default_rng(1).standard_normal((2, 3, 48, 192)).astype(np.float32))
    out = tmp_path / "out.onnx"
    code, _, err = _cli([src, out, *[str(data) if a == "DATA" else a for a in extra]], capfd)
    assert code == 0, err
    written = onnx.load(out)
    assert written.graph.input[0].type.tensor_type.shape.dim[0].dim_value == -1
    assert written.graph.output[0].type.tensor_type.shape.dim[0].dim_value == -1


def test_negative_dims_in_the_api(tmp_path):
    src = _conv_model(tmp_path / "in.onnx", [-1, 3, -1, -1], [-1, 4, -1, -1])
    result = onnxslim.optimize(src, "cleanup")
    assert result.report.input_shapes == {"x": [1, 3, 64, 64]}
    assert result.report.before.macs == 4 * 27 * 64 * 64
    shape = model_io.to_proto(result.model).graph.input[0].type.tensor_type.shape
    assert [d.dim_value for d in shape.dim] == [-1, 3, -1, -1]


def _long_kernel_model(path, kernel):
    weight = numpy_helper.from_array(np.full((1, 1, kernel), 0.01, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "long_kernel",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, "samples"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight],
    )
    return _save(graph, path)


def test_defaulted_dims_are_retried_larger_and_the_shape_used_is_named(tmp_path):
    """A Conv whose kernel needs 100 samples fails at the default 64: 256 is tried next."""
    src = _long_kernel_model(tmp_path / "in.onnx", 100)
    result = onnxslim.optimize(src, "cleanup")
    assert result.report.input_shapes == {"x": [1, 1, 256]}
    text = " ".join(result.report.warnings)
    assert "does not run at the default size 64" in text and "validating at 256" in text
    assert "x[2]=256" in text and "x[2]=64" not in text


def test_given_shapes_are_not_retried(tmp_path):
    src = _long_kernel_model(tmp_path / "in.onnx", 100)
    with pytest.raises(onnxslim.ModelError, match="use validate=False"):
        onnxslim.optimize(src, "cleanup", input_shapes={"x": (1, 1, 50)})


def _branch_model(path, opset=OPSET):
    """``sr`` (int64 scalar) selects a branch with Equal(sr, 16000) → If, like Silero VAD; each
    branch multiplies x by its own weight from the outer graph."""
    rng = np.random.default_rng(0)
    w16 = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w16")
    w8 = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w8")
    k = numpy_helper.from_array(np.array(16000, np.int64), "k")
    then_g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w16"], ["t"])], "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 8])]
    )
    else_g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w8"], ["e"])], "else", [], [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 8])]
    )
    graph = helper.make_graph(
        [
            helper.make_node("Equal", ["sr", "k"], ["is16"]),
            helper.make_node("If", ["is16"], ["y"], name="by_rate", then_branch=then_g, else_branch=else_g),
        ],
        "vad_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]), helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [w16, w8, k],
    )
    return _save(graph, path, opset)


def test_integer_inputs_take_the_values_the_graph_compares_them_with(tmp_path):
    src = _branch_model(tmp_path / "in.onnx")
    model = model_io.load(src)
    assert inputs.derived_values(model.graph.inputs[1])[0] == [16000, 0]
    with pytest.warns(inputs.DerivedValuesWarning, match="16000, 0"):
        samples = inputs.random_samples(model, 1)
    assert [int(s["sr"]) for s in samples] == [16000, 0]  # one sample per value, whatever the count
    result = onnxslim.optimize(src, "cleanup")
    assert result.report.samples == 2


def test_derived_values_for_ordered_comparisons_gather_range_and_slice(tmp_path):
    table = numpy_helper.from_array(np.arange(15, dtype=np.float32).reshape(5, 3), "table")
    limit = numpy_helper.from_array(np.array(3, np.int64), "limit")
    zero = numpy_helper.from_array(np.array([0], np.int64), "zero")
    big = numpy_helper.from_array(np.array([100], np.int64), "big")
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["g"]),
            helper.make_node("Greater", ["n", "limit"], ["gt"]),
            helper.make_node("Cast", ["gt"], ["gtf"], to=TensorProto.FLOAT),
            helper.make_node("Range", ["start", "limit", "delta"], ["r"]),
            helper.make_node("Slice", ["g", "zero", "big", "axes", "steps"], ["s"]),
        ],
        "uses",
        [
            helper.make_tensor_value_info(n, TensorProto.INT64, s)
            for n, s in (("ids", [4]), ("n", []), ("start", []), ("delta", []), ("axes", [1]), ("steps", [1]))
        ],
        [
            helper.make_tensor_value_info("s", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("gtf", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("r", TensorProto.INT64, None),
        ],
        [table, limit, zero, big],
    )
    src = _save(graph, tmp_path / "uses.onnx")
    model = model_io.load(src)
    by_name = {v.name: v for v in model.graph.inputs}
    assert inputs.derived_values(by_name["n"])[0] == [2, 4]
    assert inputs.derived_values(by_name["delta"])[0] == [1]
    assert inputs.derived_values(by_name["steps"])[0] == [1]
    assert inputs.derived_values(by_name["axes"])[0] == [0]
    assert inputs.derived_values(by_name["ids"]) is None
    with pytest.warns(inputs.DerivedValuesWarning):
        samples = inputs.random_samples(model, 2)
    assert sorted(int(s["n"]) for s in samples) == [2, 4]
    assert all(s["ids"].max() < 5 and s["delta"] == 1 for s in samples)
    assert onnxslim.optimize(src, "cleanup").report.samples == 2  # validation runs on them


def test_a_changed_branch_no_sample_reaches_is_named(tmp_path):
    src = _branch_model(tmp_path / "in.onnx")
    data = {"x": np.ones((1, 8), np.float32), "sr": np.array(16000, np.int64)}
    result = onnxslim.optimize(src, [ScaleWeight(weight="w8")], inputs=[data])
    row = result.report.passes[0]
    assert row.status == "applied" and row.max_abs == 0  # the only sample takes the other branch
    assert row.unvalidated_branches == ["If 'by_rate' else_branch"]
    assert any("If 'by_rate' else_branch" in n for n in row.notes)
    text = " ".join(result.report.render(200).split())
    assert "If 'by_rate' else_branch" in text and "1 If branch not validated" in text
    assert json.loads(result.report.to_json())["passes"][0]["unvalidated_branches"] == ["If 'by_rate' else_branch"]
    # The branch the sample reaches is validated, so nothing is named.
    result = onnxslim.optimize(src, [ScaleWeight(weight="w16")], inputs=[data])
    assert result.report.passes[0].unvalidated_branches == [] and result.report.passes[0].max_abs > 0


def test_derived_values_reach_every_branch(tmp_path):
    src = _branch_model(tmp_path / "in.onnx")
    for weight in ("w16", "w8"):
        row = onnxslim.optimize(src, [ScaleWeight(weight=weight)]).report.passes[0]
        assert row.unvalidated_branches == [] and row.max_abs > 0


def test_nested_branches_are_tracked(tmp_path):
    """An If inside a branch: the inner branch the samples take is reached, the other is named."""
    src = _branch_model(tmp_path / "in.onnx")
    model = onnx.load(src)
    branches = {a.name: a.g for a in model.graph.node[1].attribute}
    outer_then = helper.make_graph(
        [helper.make_node("Identity", ["one"], ["c"]), helper.make_node("If", ["c"], ["o"], name="inner", then_branch=branches["then_branch"], else_branch=branches["else_branch"])],
        "outer_then",
        [],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, [1, 8])],
    )
    branches["then_branch"].CopyFrom(outer_then)
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "one"))
    onnx.save(model, src)
    loaded = model_io.load(src)
    with pytest.warns(inputs.DerivedValuesWarning):
        reached = validation.branches_reached(loaded, inputs.random_samples(loaded, 2))
    assert reached == {"If 'by_rate' then_branch", "If 'by_rate' else_branch", "If 'by_rate' then_branch > If 'inner' then_branch"}


# -- crashes and unclear errors --------------------------------------------------------------------


def test_huge_declared_dim_is_refused_before_allocating(tmp_path, capfd):
    src = tmp_path / "huge.onnx"
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "huge",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1_000_000_000, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1_000_000_000, 8])],
    )
    _save(graph, src)
    out = tmp_path / "out.onnx"
    code, _, err = _cli([src, out], capfd)
    assert code == 2 and not out.exists()
    assert len(err.strip().splitlines()) == 1 and "'x'" in err and "--inputs" in err and "GiB" in err
    start = time.perf_counter()
    code, _, err = _cli([src, out, "--no-validate"], capfd)  # builds no samples at all
    assert code == 0 and out.exists(), err
    assert time.perf_counter() - start < 30


def test_samples_count_is_bounded(tmp_path, capfd):
    src = _conv_model(tmp_path / "in.onnx", [1, 3, 8, 8], [1, 4, 8, 8])
    code, _, err = _cli([src, tmp_path / "out.onnx", "--samples", "1000000000"], capfd)
    assert code == 2 and "--samples" in err and "--inputs" in err
    big = tmp_path / "big.onnx"
    _conv_model(big, [1, 3, 512, 512], [1, 4, 512, 512])  # 3 MiB a sample: 5000 of them exceed the limit
    code, _, err = _cli([big, tmp_path / "out.onnx", "--samples", "5000"], capfd)
    assert code == 2 and "limit" in err and "'x'" in err


@pytest.mark.parametrize("module", ["numpy", "onnx_ir", "onnx", "onnxruntime", "onnxslim.manager"])
def test_ctrl_c_while_importing_prints_no_traceback(tmp_path, module):
    """Ctrl-C while the command starts: a KeyboardInterrupt raised by one of its imports (a real
    SIGINT lands at an unpredictable import; this puts it at each heavy one in turn)."""
    src = _conv_model(tmp_path / "in.onnx", [1, 3, 8, 8], [1, 4, 8, 8])
    code = textwrap.dedent(
        f"""
        import builtins, sys
        real = builtins.__import__
        def interrupting(name, globals=None, locals=None, fromlist=(), level=0):
            full = (globals or {{}}).get("__package__", "") + "." + name if level else name
            if {module!r} in (name, full.rstrip(".")) or (level and name == {module!r}.rsplit(".", 1)[-1]):
                raise KeyboardInterrupt
            return real(name, globals, locals, fromlist, level)
        builtins.__import__ = interrupting
        from onnxslim.cli import main
        sys.exit(main([{str(src)!r}, {str(tmp_path / "out.onnx")!r}]))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == "onnxslim: interrupted"
    assert not (tmp_path / "out.onnx").exists()


def test_disk_full_is_a_model_error_naming_the_path(tmp_path, capfd, monkeypatch):
    src = _conv_model(tmp_path / "in.onnx", [1, 3, 8, 8], [1, 4, 8, 8])
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def full(model, path):
        path.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full_copy(source, path):  # a run that changes nothing copies the input's bytes
        full(None, Path(path))

    monkeypatch.setattr(model_io, "_write_inline_streaming", full)
    monkeypatch.setattr(model_io.shutil, "copyfile", full_copy)
    code, _, err = _cli([src, out_dir / "out.onnx"], capfd)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert str(out_dir / "out.onnx") in err and "No space left on device" in err and "internal error" not in err
    assert list(out_dir.iterdir()) == []


def test_symlink_loop_output_is_a_usage_error(tmp_path, capfd):
    src = _conv_model(tmp_path / "in.onnx", [1, 3, 8, 8], [1, 4, 8, 8])
    loop = tmp_path / "loop.onnx"
    loop.symlink_to(loop)
    code, _, err = _cli([src, loop], capfd)
    assert code == 2 and "symbolic link loop" in err and len(err.strip().splitlines()) == 1


def test_empty_graph_says_it_has_no_outputs(tmp_path, capfd):
    src = _save(helper.make_graph([], "empty", [], []), tmp_path / "empty.onnx")
    code, _, err = _cli([src, tmp_path / "out.onnx"], capfd)
    assert code == 1 and err.strip() == f"onnxslim: error: {src}: the graph has no outputs"


def test_stale_temporaries_of_a_killed_save_are_removed(tmp_path):
    """A save killed with SIGKILL leaves its temporary directory; the next save removes it (and
    leaves a live process's temporaries and other hidden files alone)."""
    src = _conv_model(tmp_path / "in.onnx", [1, 3, 8, 8], [1, 4, 8, 8])
    out = tmp_path / "out.onnx"
    ready = tmp_path / "ready"
    code = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from onnxslim import model_io
        def slow(model, path):
            path.write_bytes(b"partial")
            Path({str(ready)!r}).touch()
            time.sleep(60)
        model_io._write_inline_streaming = slow
        model_io.save(model_io.load({str(src)!r}), {str(out)!r})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 60
    while not ready.exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    stale = [p for p in tmp_path.iterdir() if p.name.startswith(".out.onnx")]
    assert len(stale) == 1 and stale[0].is_dir() and not out.exists()
    live = tmp_path / f".out.onnx.onnxslim-{os.getppid()}-keep"
    live.mkdir()
    other = tmp_path / ".out.onnx.someone-elses"
    other.mkdir()
    model_io.save(model_io.load(src), out)
    assert out.exists() and not stale[0].exists() and live.exists() and other.exists()


def test_non_finite_data_warns(tmp_path):
    src = _conv_model(tmp_path / "in.onnx", [1, 3, 8, 8], [1, 4, 8, 8])
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    x[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    data = tmp_path / "data.npz"
    np.savez(data, x=x)
    result = onnxslim.optimize(src, "cleanup", inputs=data, calibration=data)
    text = [w for w in result.report.warnings if "NaN or inf" in w]
    assert len(text) == 2 and "'x' (3 values)" in text[0]


def test_repeated_option_key_is_refused(tmp_path, capfd):
    src = _conv_model(tmp_path / "in.onnx", [1, 3, 8, 8], [1, 4, 8, 8])
    code, _, err = _cli([src, tmp_path / "out.onnx", "--passes", "prune:ratio=0.3:ratio=0.5"], capfd)
    assert code == 2 and "'ratio' given twice" in err


def test_misspelled_npz_key_is_named(tmp_path, capfd):
    src = _conv_model(tmp_path / "in.onnx", [1, 3, 8, 8], [1, 4, 8, 8])
    data = tmp_path / "data.npz"
    np.savez(data, x=np.zeros((6, 1, 3, 8, 8), np.float32), xx=np.zeros((1, 3, 8, 8), np.float32))
    code, _, err = _cli([src, tmp_path / "out.onnx", "--inputs", data], capfd)
    assert code == 2 and "no input 'xx'" in err and "different numbers" not in err


def _dedup_log_model(path):
    """Two equal initializers, one of them also a graph output: onnx-ir's deduplication logs
    "Skipped deduplication of initializer ..." for it."""
    a = numpy_helper.from_array(np.ones(4, np.float32), "a")
    b = numpy_helper.from_array(np.ones(4, np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "a"], ["y"])],
        "dedup",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4]), helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])],
        [a, b],
    )
    return _save(graph, path)


def test_quiet_silences_library_log_lines(tmp_path):
    src = _dedup_log_model(tmp_path / "in.onnx")
    script = str(Path(sys.executable).parent / "onnxslim")  # a process of its own: pytest captures logging
    proc = subprocess.run([script, str(src), str(tmp_path / "out.onnx")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Skipped deduplication" in proc.stderr  # the case is real
    proc = subprocess.run([script, str(src), str(tmp_path / "out.onnx"), "--quiet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "" and proc.stdout == ""


def test_value_info_of_graph_outputs_is_kept(tmp_path, capfd):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sigmoid", ["r"], ["y"])],
        "vi",
        [x],
        [y],
        value_info=[helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 4]), helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "n"])],
    )
    src = _save(graph, tmp_path / "in.onnx")
    for passes in ("cleanup", "zeros,sparsify"):
        out = tmp_path / "out.onnx"
        code, _, err = _cli([src, out, "--passes", passes], capfd)
        assert code == 0, err
        kept = {vi.name: vi for vi in onnx.load(out).graph.value_info}
        assert kept["y"] == onnx.load(src).graph.value_info[1]


# -- real models and fixtures with no options ------------------------------------------------------


@pytest.mark.parametrize("name", ["rapidocr_ppocrv4_det.onnx", "silero_vad_op18_ifless.onnx", "paraphrase_minilm_l3_v2.onnx"])
def test_corpus_models_run_with_no_options(tmp_path, name):
    src = CORPUS / name
    if not src.exists():
        pytest.skip(f"{src} absent (bash ../shared/corpus/fetch.sh)")
    out = tmp_path / "out.onnx"
    proc = subprocess.run([str(Path(sys.executable).parent / "onnxslim"), str(src), str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert out.exists()


def test_silero_validates_both_sample_rates(tmp_path):
    src = CORPUS / "silero_vad_op18_ifless.onnx"
    if not src.exists():
        pytest.skip(f"{src} absent")
    result = onnxslim.optimize(src, "cleanup")
    assert result.report.input_shapes["input"] == [1, 256]
    assert result.report.samples == 2
    reached = validation.branches_reached(model_io.load(src), [{"input": np.zeros((1, 256), np.float32), "sr": np.array(s), "state": np.zeros((2, 1, 128), np.float32)} for s in (16000, 0)])
    assert len(reached) == 2


@pytest.mark.parametrize("path", sorted(p.name for p in FIXTURES.glob("*.onnx")))
def test_fixtures_run_with_no_options(tmp_path, capfd, path):
    out = tmp_path / "out.onnx"
    code, _, err = _cli([FIXTURES / path, out], capfd)
    assert code == 0 and out.exists(), err
