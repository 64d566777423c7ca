"""The pass manager: validation after each pass, rollback, budgets, strict mode, reports."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest

import onnxslim
from fixtures import models as fx
from onnxslim import constants, model_io, registry
from onnxslim.errors import ModelError, PassFailedError, UsageError
from onnxslim.pass_api import Pass, PassContext, PassResult, option


class ScaleFirstWeight(Pass):
    """Deliberately wrong: claims to be lossless but scales a weight."""

    name = "test-scale"
    summary = "scale the first weight (test only)"
    lossless = True

    class Options(Pass.Options):
        factor: float = option(1.01, "scale factor")

    def run(self, model, ctx: PassContext) -> PassResult:
        c = next(c for c in constants.model_constants(model) if len(c.shape) >= 2)
        c.replace(c.numpy() * self.options.factor)
        return PassResult(True, f"scaled {c.name}")


class LossyScale(ScaleFirstWeight):
    name = "test-lossy-scale"
    lossless = False


class Explodes(Pass):
    name = "test-explodes"
    summary = "raises (test only)"
    lossless = True

    def run(self, model, ctx):
        raise RuntimeError("boom")


class BreaksGraph(Pass):
    name = "test-breaks"
    summary = "removes a node others read (test only)"
    lossless = False

    def run(self, model, ctx):
        node = next(iter(model.graph))
        # Detach the first node's output: its consumers now read an undefined value.
        for use in list(node.outputs[0].uses()):
            use.node.replace_input_with(use.idx, onnxslim_undefined())
        return PassResult(True, "broke it")


def onnxslim_undefined():
    import onnx_ir as ir

    return ir.Value(name="undefined_tensor", type=ir.TensorType(ir.DataType.FLOAT))


for cls in (ScaleFirstWeight, LossyScale, Explodes, BreaksGraph):
    registry.register(cls)


@pytest.fixture
def mlp_path(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(fx.mlp(), path)
    return path


def test_wrong_lossless_pass_is_rolled_back_and_named(mlp_path):
    result = onnxslim.optimize(mlp_path, ["test-scale", "cleanup"])
    row, after = result.report.passes
    assert row.name == "test-scale" and row.status == "rolled back"
    assert "lossless pass changed output" in row.reason
    assert row.max_abs > 1e-4
    assert after.status == "no change"  # the pipeline went on, from the rolled-back model
    original = model_io.load(mlp_path)
    assert model_io.to_bytes(result.model) == model_io.to_bytes(original)


def test_tiny_change_within_default_tolerance_passes(mlp_path):
    result = onnxslim.optimize(mlp_path, [ScaleFirstWeight(factor=1 + 1e-7)])
    assert result.report.passes[0].status == "applied"


def test_strict_makes_lossless_failure_fatal(mlp_path):
    with pytest.raises(PassFailedError, match="test-scale"):
        onnxslim.optimize(mlp_path, "test-scale", strict=True)


def test_lossy_pass_reports_drift_and_respects_budget(mlp_path):
    ok = onnxslim.optimize(mlp_path, [LossyScale(factor=1.01)])
    row = ok.report.passes[0]
    assert row.status == "applied" and 0 < row.max_abs and row.min_cosine > 0.99
    over = onnxslim.optimize(mlp_path, [LossyScale(factor=-1.0)], min_cosine=0.99)
    row = over.report.passes[0]
    assert row.status == "rolled back" and "below budget" in row.reason


def test_pass_that_raises_is_reported_and_pipeline_continues(mlp_path):
    result = onnxslim.optimize(mlp_path, ["test-explodes", "cleanup"])
    assert [p.status for p in result.report.passes] == ["failed", "no change"]
    assert "RuntimeError: boom" in result.report.passes[0].reason


def test_pass_that_breaks_the_graph_is_rolled_back(mlp_path):
    result = onnxslim.optimize(mlp_path, ["test-breaks"])
    row = result.report.passes[0]
    assert row.status == "failed" and row.reason.startswith("broken graph")
    assert result.report.final_checks["onnxruntime_default_level"] == "ok"


def test_no_validate_skips_comparison(mlp_path):
    result = onnxslim.optimize(mlp_path, "test-scale", validate=False)
    assert result.report.passes[0].status == "applied"
    assert result.report.passes[0].metrics == []


def test_per_output_tolerance(mlp_path):
    out = fx.mlp().graph.output[0].name
    loose = {out: onnxslim.Tolerance(atol=10.0, rtol=0.0)}
    result = onnxslim.optimize(mlp_path, [ScaleFirstWeight(factor=1.01)], tolerances=loose)
    assert result.report.passes[0].status == "applied"
    # a number is the output's atol (rtol 0), as in the CLI's OUTPUT=ATOL
    result = onnxslim.optimize(mlp_path, [ScaleFirstWeight(factor=1.01)], tolerances={out: 10.0})
    assert result.report.passes[0].status == "applied"
    with pytest.raises(UsageError, match="no such output"):
        onnxslim.optimize(mlp_path, tolerances={"nosuch": 1.0})
    with pytest.raises(UsageError, match="expected a Tolerance or a number, got str"):
        onnxslim.optimize(mlp_path, tolerances={out: "1e-3"})
    for bad in (-1.0, float("nan"), "1"):
        with pytest.raises(UsageError, match="must be a number >= 0"):
            onnxslim.Tolerance(atol=bad)
        with pytest.raises(UsageError, match="must be a number >= 0"):
            onnxslim.Tolerance(rtol=bad)


def test_sample_arguments_are_checked(mlp_path):
    x = fx.random_inputs(fx.mlp())["input"]
    one = onnxslim.optimize(mlp_path, inputs={"input": x})  # a single dict is one sample
    assert one.report.samples == 1
    for bad, message in [
        ([x], "a sample is a dict of arrays keyed by input name, got ndarray"),
        (x, "expected an .npz path or a list of dicts of arrays, got ndarray"),
        ([], "no samples"),
        ([{"input": x}, {"inputz": x}], "inputs (sample 1): model has no input 'inputz'"),
    ]:
        with pytest.raises(UsageError, match=re.escape(message)):
            onnxslim.optimize(mlp_path, inputs=bad)
    with pytest.raises(UsageError, match=re.escape("calibration: no data for input 'input'")):
        onnxslim.optimize(mlp_path, calibration=[{}])


def test_api_arguments_are_usage_errors(mlp_path, tmp_path):
    for kwargs, message in [
        ({"samples": 0}, "samples must be at least 1"),
        ({"samples": -1}, "samples must be at least 1"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"min_cosine": 2.0}, "min_cosine must be in [-1, 1]"),
        ({"input_shapes": {"nope": (1, 16)}}, "input_shapes: model has no input 'nope'"),
        ({"input_shapes": {"input": (-1, 16)}}, "must be positive integers"),
        ({"input_shapes": {"input": (0, 16)}}, "must be positive integers"),
        ({"input_shapes": {"input": 16}}, "must be positive integers"),
    ]:
        with pytest.raises(UsageError, match=re.escape(message)) as info:
            onnxslim.optimize(mlp_path, **kwargs)
        assert "--" not in str(info.value)  # the API's argument names, not the command line's flags
    for model in (None, 123):
        with pytest.raises(UsageError, match="expected a path, bytes, an onnx.ModelProto or an ir.Model"):
            onnxslim.optimize(model)
    result = onnxslim.optimize(mlp_path)
    with pytest.raises(UsageError, match="is a directory"):
        result.save(tmp_path)


def test_report_json_is_complete(mlp_path, tmp_path):
    result = onnxslim.optimize(mlp_path, ["cleanup", LossyScale(factor=1.01)])
    data = json.loads(result.report.to_json())
    assert data["before"]["params"] > 0 and data["before"]["macs"] > 0
    row = data["passes"][1]
    assert set(row) >= {"name", "status", "lossless", "metrics", "stats", "seconds", "options", "details"}
    metric = row["metrics"][0]
    assert set(metric) >= {"max_abs", "max_rel", "cosine", "nan_equal", "top1"}
    assert data["final_checks"] == {"onnx_checker": "ok", "onnxruntime_default_level": "ok"}
    text = result.report.render()
    assert "test-lossy-scale" in text and "applied" in text


def test_user_inputs_and_input_shapes(tmp_path):
    proto = fx.resnet()
    path = tmp_path / "r.onnx"
    onnx.save(proto, path)
    result = onnxslim.optimize(path, input_shapes={"input": (3, 3, 32, 32)}, validate=True)
    assert result.report.input_shapes == {"input": [3, 3, 32, 32]}
    samples = [fx.random_inputs(proto, seed=s, batch=1) for s in range(3)]
    npz = tmp_path / "x.npz"
    np.savez(npz, input=np.stack([s["input"] for s in samples]))
    result = onnxslim.optimize(path, inputs=npz)
    assert result.report.samples == 3
    with pytest.raises(UsageError, match="no input 'nope'"):
        onnxslim.optimize(path, input_shapes={"nope": (1, 3, 8, 8)})


def test_metrics_nan_equal_and_top1():
    from onnxslim.validation import compare

    ref = [{"y": np.array([[np.nan, 1.0, 2.0]], np.float32)}]
    same = compare(ref, [{"y": np.array([[np.nan, 1.0, 2.0]], np.float32)}])[0]
    assert same.nan_equal and same.within_tolerance and same.max_abs == 0 and same.top1 == 1.0
    moved = compare(ref, [{"y": np.array([[0.0, 1.0, 2.0]], np.float32)}])[0]
    assert not moved.nan_equal and not moved.within_tolerance
    flipped = compare([{"y": np.array([[0.0, 3.0]], np.float32)}], [{"y": np.array([[3.0, 0.0]], np.float32)}])[0]
    assert flipped.top1 == 0.0 and flipped.cosine == pytest.approx(0.0)


def test_option_parsing_and_validation():
    cls = registry.get("cleanup")
    p = cls.from_strings({"dedupe": "false"})
    assert p.options.dedupe is False
    with pytest.raises(UsageError, match="expected true or false"):
        cls.from_strings({"dedupe": "maybe"})
    with pytest.raises(UsageError, match="has no option 'bogus'"):
        registry.parse_pipeline("cleanup:bogus=1")
    with pytest.raises(UsageError, match="unknown pass"):
        registry.parse_pipeline("cleanup,nonexistent")
    [scale] = registry.parse_pipeline("test-scale:factor=2")
    assert scale.options.factor == 2.0


def test_recipe(tmp_path):
    recipe = tmp_path / "deploy.toml"
    recipe.write_text('[[pass]]\nname = "test-lossy-scale"\nfactor = 1.5\n\n[[pass]]\nname = "cleanup"\ndedupe = false\n')
    a, b = registry.load_recipe(recipe)
    assert (a.name, a.options.factor, b.name, b.options.dedupe) == ("test-lossy-scale", 1.5, "cleanup", False)
    recipe.write_text('[[pass]]\nname = "cleanup"\ndedupe = "x"\n')
    with pytest.raises(UsageError):
        registry.load_recipe(recipe)
    recipe.write_text("this is = = not toml")
    with pytest.raises(UsageError, match="not a valid TOML"):
        registry.load_recipe(recipe)
    # a string entry may hold several passes: all of them run, none is dropped
    recipe.write_text('pass = ["test-lossy-scale:factor=2,cleanup:dedupe=false", {name = "cleanup"}]\n')
    a, b, c = registry.load_recipe(recipe)
    assert (a.name, a.options.factor, b.name, b.options.dedupe, c.name) == ("test-lossy-scale", 2.0, "cleanup", False, "cleanup")
    with pytest.raises(UsageError, match="cannot read the recipe"):
        registry.load_recipe(tmp_path)


def test_pipeline_list_expands_comma_separated_strings(mlp_path):
    result = onnxslim.optimize(mlp_path, ["test-lossy-scale:factor=1.5,cleanup"], validate=False)
    assert [p.name for p in result.report.passes] == ["test-lossy-scale", "cleanup"]
    with pytest.raises(UsageError, match="expected one"):
        registry.build("cleanup,cleanup")
    with pytest.raises(UsageError, match="a string or a list of passes, got int"):
        onnxslim.optimize(mlp_path, 5)


def test_refuses_to_overwrite_input(mlp_path):
    result = onnxslim.optimize(mlp_path, validate=False)
    with pytest.raises(UsageError, match="refusing to overwrite"):
        result.save(mlp_path)
    result.save(mlp_path, in_place=True)
    onnx.checker.check_model(onnx.load(mlp_path))


class StaleShape(Pass):
    """Leaves a wrong shape on an intermediate value (the onnx-ir pitfall the core must catch)."""

    name = "test-stale-shape"
    summary = "writes a stale shape (test only)"
    lossless = True

    def run(self, model, ctx):
        import onnx_ir as ir

        value = next(iter(model.graph)).outputs[0]
        value.dtype = ir.DataType.FLOAT
        value.shape = ir.Shape([7, 7, 7])
        return PassResult(True, "stale")


registry.register(StaleShape)


def test_stale_shapes_are_detected_and_rolled_back(mlp_path):
    result = onnxslim.optimize(mlp_path, "test-stale-shape")
    row = result.report.passes[0]
    assert row.status == "failed" and "shape inference" in row.reason


def test_named_dims_share_one_size():
    from onnxslim import inputs

    model = model_io.load(fx.bert_block())
    shapes = inputs.resolve_shapes(model, {"input_ids": (2, 16)})
    assert shapes == {"input_ids": (2, 16), "attention_mask": (2, 16)}
    with pytest.warns(UserWarning, match="defaulted"):
        shapes = inputs.resolve_shapes(model, None)
    assert shapes == {"input_ids": (1, inputs.DEFAULT_DIM), "attention_mask": (1, inputs.DEFAULT_DIM)}


def test_lossless_pass_after_lossy_pass_is_judged_on_its_own_step(mlp_path):
    result = onnxslim.optimize(mlp_path, [LossyScale(factor=1.05), ScaleFirstWeight(factor=1.0), "cleanup"])
    lossy, exact, _ = result.report.passes
    assert lossy.status == "applied" and lossy.max_abs > 1e-3
    assert exact.status == "applied", exact.reason
    assert max(m.max_abs for m in exact.step_metrics) == 0.0
    assert exact.max_abs == lossy.max_abs  # the drift vs the original is carried, not blamed
    wrong = onnxslim.optimize(mlp_path, [LossyScale(factor=1.05), ScaleFirstWeight(factor=1.05)])
    assert wrong.report.passes[1].status == "rolled back"


@pytest.mark.parametrize("name", ["mlp", "resnet", "if_model", "constant_node_convnet", "int8_weights", "sparse_initializer_model"])
def test_reported_file_size_is_the_saved_size(name, tmp_path):
    src = tmp_path / "in.onnx"
    onnx.save(fx.BUILDERS[name](), src)
    result = onnxslim.optimize(src, ["cleanup", "unstructured:sparsity=0.8", "sparsify:min_size=16"], validate=False)
    out = tmp_path / "out.onnx"
    result.save(out)
    assert result.report.after.file_bytes == out.stat().st_size
    if not any(row.status == "applied" for row in result.report.passes):
        assert out.read_bytes() == src.read_bytes()  # nothing changed: the input's bytes
        return
    unchanged = tmp_path / "unchanged.onnx"
    model_io.save(model_io.load(src), unchanged)
    assert result.report.before.file_bytes == unchanged.stat().st_size


def test_macs_as_a_polynomial_of_dynamic_dims(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from onnxslim import stats

    w = numpy_helper.from_array(np.ones((16, 32), np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["y"]),  # N·S·16·32
            helper.make_node("Transpose", ["y"], ["yt"], perm=[0, 2, 1]),
            helper.make_node("MatMul", ["y", "yt"], ["scores"]),  # N·S·S·32
        ],
        "attention_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S", 16])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", "S", "S"])],
        [w],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    assert stats.symbolic_macs(model_io.load(proto)) == "32·N·S² + 512·N·S"
    src = tmp_path / "in.onnx"
    onnx.save(proto, src)
    report = onnxslim.optimize(src, input_shapes={"x": [2, 5, 16]}).report
    assert report.before.macs == 2 * 5 * 16 * 32 + 2 * 5 * 5 * 32
    assert report.before.macs_symbolic == "32·N·S² + 512·N·S"
    assert "MACs by dynamic dims: 32·N·S² + 512·N·S" in report.render()
    static = onnx.ModelProto()
    static.CopyFrom(proto)
    for dim, size in zip(static.graph.input[0].type.tensor_type.shape.dim, (2, 5, 16)):
        dim.Clear()
        dim.dim_value = size
    assert stats.symbolic_macs(model_io.load(static)) is None


def test_macs_inside_if_branches_are_measured_on_the_branch_taken():
    """onnxruntime cannot expose values inside an If branch: shapes inference cannot resolve
    (a Reshape to a shape fed at run time) are measured on a clone with the taken branch inlined."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxslim import stats

    def branch(name, width):
        w = numpy_helper.from_array(np.ones((16, width), np.float32), f"{name}_w")
        return helper.make_graph(
            [helper.make_node("Reshape", ["x", "shp"], [f"{name}_r"]), helper.make_node("MatMul", [f"{name}_r", w.name], [f"{name}_y"])],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, None)],
            [w],
        )

    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch("then", 8), else_branch=branch("else", 4))],
        "if_reshape",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64]),
            helper.make_tensor_value_info("shp", TensorProto.INT64, [2]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = model_io.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))
    before = model_io.to_bytes(model)
    shapes = {"x": [1, 64], "shp": [2], "cond": []}
    assert stats.count_macs(model, shapes) == (0, 2)  # inference alone resolves neither branch
    sample = {"x": np.ones((1, 64), np.float32), "shp": np.array([4, 16], np.int64), "cond": np.array(True)}
    assert stats.count_macs(model, shapes, sample) == (4 * 16 * 8, 1)
    sample["cond"] = np.array(False)
    assert stats.count_macs(model, shapes, sample) == (4 * 16 * 4, 1)
    assert model_io.to_bytes(model) == before  # measured on a clone


def test_optimize_never_modifies_the_callers_ir_model(mlp_path):
    import onnx_ir as ir

    model = ir.load(mlp_path)
    before = onnx.printer.to_text(ir.serde.serialize_model(model).graph)
    shapes = {v.name: v.const_value.shape for v in model.graph.initializers.values()}
    result = onnxslim.optimize(model, passes="prune:ratio=0.5", min_cosine=0.9999)
    assert result.report.passes[0].status == "rolled back"
    onnxslim.optimize(model, passes="prune:ratio=0.5", validate=False)  # applied to the copy
    assert {v.name: v.const_value.shape for v in model.graph.initializers.values()} == shapes
    assert onnx.printer.to_text(ir.serde.serialize_model(model).graph) == before


def test_a_failed_rename_never_leaves_a_model_without_its_data(tmp_path, monkeypatch):
    import os

    model = model_io.load(fx.resnet())
    out = tmp_path / "out.onnx"
    real = os.replace

    def data_rename_fails(src, dst):
        if os.fspath(dst) == os.fspath(tmp_path / "out.onnx.data"):
            raise OSError("simulated")
        real(src, dst)

    monkeypatch.setattr(model_io.os, "replace", data_rename_fails)
    with pytest.raises(ModelError, match="simulated"):
        model_io.save(model, out, external_data=True)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


class SaysNoChange(ScaleFirstWeight):
    """Deliberately wrong: changes a weight and reports no change."""

    name = "test-says-no-change"

    def run(self, model, ctx):
        super().run(model, ctx)
        return PassResult(False, "nothing to do")


registry.register(SaysNoChange)


def test_a_pass_that_hides_a_change_is_still_validated(mlp_path):
    row = onnxslim.optimize(mlp_path, ["test-says-no-change"]).report.passes[0]
    assert row.status == "rolled back" and "lossless pass changed output" in row.reason
    assert any("reported no change but changed the model" in n for n in row.notes)
    clean = onnxslim.optimize(mlp_path, ["cleanup", "cleanup"]).report.passes[1]
    assert clean.status == "no change" and not clean.notes
