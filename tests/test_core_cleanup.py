"""Round trips through cleanup (the default pipeline's housekeeping): outputs identical, everything else kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxslim
from fixtures import models as fx
from onnxslim import model_io

ROUND_TRIP = ["resnet", "mlp", "bert_block", "if_model", "constant_node_convnet", "int8_weights", "mobilenetv2", "yolo_neck"]


def _run(path_or_bytes, feeds):
    sess = ort.InferenceSession(path_or_bytes, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_cleanup_round_trip_identical(name, tmp_path):
    proto = fx.BUILDERS[name]()
    proto = fx.with_metadata(proto, {"labels": "a,b,c"}) if name == "mlp" else proto
    src = tmp_path / "in.onnx"
    onnx.save(proto, src)
    result = onnxslim.optimize(src, "cleanup")
    row = result.report.passes[0]
    assert row.name == "cleanup" and row.status in ("applied", "no change")
    out = tmp_path / "out.onnx"
    result.save(out)
    feeds = fx.random_inputs(proto, seed=1)
    for a, b in zip(_run(str(src), feeds), _run(str(out), feeds)):
        np.testing.assert_array_equal(a, b)
    saved = onnx.load(out)
    onnx.checker.check_model(saved, full_check=True)
    assert {p.key: p.value for p in saved.metadata_props} == {p.key: p.value for p in proto.metadata_props}
    assert saved.doc_string == proto.doc_string
    assert saved.producer_name == proto.producer_name
    assert saved.ir_version == proto.ir_version
    default = {o.version for o in saved.opset_import if o.domain in ("", "ai.onnx")}
    assert default == {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")}
    assert [i.name for i in saved.graph.input] == [i.name for i in proto.graph.input]
    assert [o.name for o in saved.graph.output] == [o.name for o in proto.graph.output]
    assert result.report.final_checks == {"onnx_checker": "ok", "onnxruntime_default_level": "ok"}


def test_cleanup_removes_dead_code_and_identity(tmp_path):
    proto = fx.mlp()
    g = proto.graph
    g.initializer.append(onnx.numpy_helper.from_array(np.ones((64, 64), np.float32), "orphan"))
    g.node.append(onnx.helper.make_node("Relu", [g.output[0].name], ["dead_out"], name="dead"))
    first = g.node[0]
    first_out = first.output[0]
    first.output[0] = first_out + "_pre"
    g.node.insert(1, onnx.helper.make_node("Identity", [first_out + "_pre"], [first_out], name="ident"))
    src = tmp_path / "in.onnx"
    onnx.save(proto, src)
    result = onnxslim.optimize(src, "cleanup")
    row = result.report.passes[0]
    assert row.status == "applied"
    assert row.details["nodes_removed"] == 2
    assert row.details["initializers_removed"] == 1
    assert row.details["weight_bytes_saved"] == 64 * 64 * 4
    assert row.max_abs == 0.0
    ops = [n.op_type for n in result.model.graph]
    assert "Identity" not in ops


def test_cleanup_no_change_is_bit_identical(tmp_path):
    proto = fx.mlp()
    src = tmp_path / "in.onnx"
    onnx.save(proto, src)
    result = onnxslim.optimize(src, "cleanup")
    assert result.report.passes[0].status == "no change"
    assert model_io.to_bytes(result.model) == model_io.to_bytes(model_io.load(src))


def test_cleanup_never_grows_the_file(tmp_path):
    proto = fx.resnet()
    # Two identical weights: dedupe merges them; nothing may grow.
    w = next(t for t in proto.graph.initializer if len(t.dims) == 4)
    dup = onnx.TensorProto()
    dup.CopyFrom(w)
    dup.name = w.name + "_copy"
    proto.graph.initializer.append(dup)
    user = next(n for n in proto.graph.node if w.name in n.input)
    user.input[list(user.input).index(w.name)] = dup.name
    src = tmp_path / "in.onnx"
    onnx.save(proto, src)
    result = onnxslim.optimize(src, "cleanup")
    out = tmp_path / "out.onnx"
    result.save(out)
    assert out.stat().st_size < src.stat().st_size


def test_external_data_round_trip(tmp_path):
    proto = fx.resnet()
    src = tmp_path / "ext.onnx"
    fx.save_with_external_data(proto, str(src))
    result = onnxslim.optimize(src, "cleanup")
    out = tmp_path / "sub" / "out.onnx"
    out.parent.mkdir()
    result.save(out)  # small: inline, no stale relative data paths
    saved = onnx.load(out, load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in saved.graph.initializer)
    feeds = fx.random_inputs(proto)
    for a, b in zip(_run(str(src), feeds), _run(str(out), feeds)):
        np.testing.assert_array_equal(a, b)
    files = result.save(tmp_path / "sub" / "out_ext.onnx", external_data=True)
    assert [f.name for f in files] == ["out_ext.onnx", "out_ext.onnx.data"]
    for a, b in zip(_run(str(src), feeds), _run(str(files[0]), feeds)):
        np.testing.assert_array_equal(a, b)


def test_sparse_initializers_are_kept(tmp_path):
    proto = fx.sparse_initializer_model()
    src = tmp_path / "in.onnx"
    onnx.save(proto, src)
    result = onnxslim.optimize(src, "cleanup")
    out = tmp_path / "out.onnx"
    result.save(out)
    saved = onnx.load(out)
    assert [s.values.name for s in saved.graph.sparse_initializer] == [s.values.name for s in proto.graph.sparse_initializer]
    feeds = fx.random_inputs(proto)
    for a, b in zip(_run(str(src), feeds), _run(str(out), feeds)):
        np.testing.assert_array_equal(a, b)


def test_zipmap_model_goes_through_unchanged(tmp_path):
    proto = fx.zipmap_classifier()
    src = tmp_path / "in.onnx"
    onnx.save(proto, src)
    result = onnxslim.optimize(src, passes="cleanup")
    assert result.model is None
    assert result.report.passes[0].status == "skipped"
    assert "Map types" in result.report.passes[0].reason
    out = tmp_path / "out.onnx"
    result.save(out)
    assert onnx.load(out).SerializeToString() == proto.SerializeToString()


def test_load_from_bytes_and_proto():
    proto = fx.mlp()
    a = onnxslim.optimize(proto.SerializeToString(), "cleanup", validate=False)
    b = onnxslim.optimize(proto, "cleanup", validate=False)
    assert model_io.to_bytes(a.model) == model_io.to_bytes(b.model)
    assert len(proto.graph.node) == len(fx.mlp().graph.node)  # caller's proto untouched


def test_ir_version_pinned(tmp_path):
    proto = fx.mlp()
    proto.ir_version = 14
    src = tmp_path / "in.onnx"
    onnx.save(proto, src)
    result = onnxslim.optimize(src, "cleanup", validate=False)
    out = tmp_path / "out.onnx"
    result.save(out)
    assert onnx.load(out).ir_version == model_io.MAX_IR_VERSION
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])


def test_inline_weights_load_lazily_and_in_place_save_stays_valid(tmp_path, monkeypatch):
    """Large inline weights are read from the file on demand (no copy at load); saving over the
    input keeps the model in memory valid."""
    import onnx_ir as ir

    monkeypatch.setattr(model_io, "LAZY_PARSE_ABOVE_BYTES", 0)  # as a file above it is read

    proto = fx.resnet(width=64) if "width" in fx.resnet.__code__.co_varnames else fx.resnet()
    src = tmp_path / "m.onnx"
    onnx.save(proto, src)
    model = model_io.load(src)
    lazy = [v for v in model.graph.initializers.values() if isinstance(v.const_value, ir.ExternalTensor)]
    assert lazy, "expected large initializers to stay in the file"
    for value in lazy:
        expected = onnx.numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == value.name))
        np.testing.assert_array_equal(value.const_value.numpy(), expected)
    model_io.save(model, src, external_data=True)  # in place, and the layout changes completely
    model_io.save(model, tmp_path / "again.onnx")
    feeds = fx.random_inputs(proto)
    for a, b in zip(_run(proto.SerializeToString(), feeds), _run(str(tmp_path / "again.onnx"), feeds)):
        np.testing.assert_array_equal(a, b)


def test_functions_value_info_and_doc_strings_are_kept(tmp_path):
    """Model-local functions (a custom domain), value_info and doc strings survive the pipeline,
    also through passes that rewrite weights."""
    from onnx import TensorProto, helper

    proto = fx.mlp()
    g = proto.graph
    fn = helper.make_function(
        "local.fx",
        "ScaledRelu",
        ["x"],
        ["y"],
        [
            helper.make_node("Constant", [], ["two"], value=helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])),
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Mul", ["r", "two"], ["y"]),
        ],
        [helper.make_opsetid("", 17)],
        doc_string="relu times two",
    )
    proto.functions.append(fn)
    proto.opset_import.append(helper.make_opsetid("local.fx", 1))
    out_name = g.output[0].name
    g.node[-1].output[0] = out_name + "_pre"
    g.node.append(helper.make_node("ScaledRelu", [out_name + "_pre"], [out_name], domain="local.fx", name="scaled"))
    g.node[0].doc_string = "first layer"
    g.value_info.append(helper.make_tensor_value_info(out_name + "_pre", TensorProto.FLOAT, ["N", 10]))
    g.doc_string = "graph doc"
    onnx.checker.check_model(proto)
    src = tmp_path / "in.onnx"
    onnx.save(proto, src)
    for passes in ("cleanup", "prune:ratio=0.3,cleanup"):
        result = onnxslim.optimize(src, passes)
        assert all(r.status in ("applied", "no change") for r in result.report.passes), result.report.render()
        out = tmp_path / "out.onnx"
        result.save(out)
        saved = onnx.load(out)
        assert [f.SerializeToString() for f in saved.functions] == [fn.SerializeToString()]
        assert ("local.fx", 1) in {(o.domain, o.version) for o in saved.opset_import}
        assert saved.graph.doc_string == "graph doc"
        assert next(n for n in saved.graph.node if n.name == g.node[0].name).doc_string == "first layer"
        assert any(vi.name == out_name + "_pre" for vi in saved.graph.value_info)
        assert result.report.final_checks == {"onnx_checker": "ok", "onnxruntime_default_level": "ok"}
    feeds = fx.random_inputs(proto, seed=1)
    result = onnxslim.optimize(src, "cleanup")
    result.save(out)
    for a, b in zip(_run(str(src), feeds), _run(str(out), feeds)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", [*ROUND_TRIP, "digits_cnn"])
def test_cleanup_says_no_change_only_when_nothing_changed(name, tmp_path):
    """onnx-ir's steps can change a graph while saying they did not (the digits CNN's
    BatchNormalization loses its default training_mode); cleanup must not report "no change" then."""
    src = tmp_path / "in.onnx"
    if name == "digits_cnn":
        src = Path(__file__).resolve().parent.parent / "fixtures" / "models" / "digits_cnn.onnx"
    else:
        onnx.save(fx.BUILDERS[name](), src)
    result = onnxslim.optimize(src, "cleanup")
    row = result.report.passes[0]
    unchanged = model_io.to_bytes(result.model) == model_io.to_bytes(model_io.load(src))
    assert (row.status == "no change") == unchanged, (row.status, row.summary)
    assert not any("reported no change" in n for n in row.notes)
