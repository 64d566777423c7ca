"""``simplify``: each rewrite, what it must keep (dynamic dims, CSR decodes, metadata, opsets),
lossless on the fixtures and (when fetched) the real corpus, a no-op on simple models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxslim
from fixtures import models as fx
from onnxslim import model_io, registry, sparse_codec

CORPUS = Path.home() / ".cache" / "onnxslim-corpus"
F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def _arr(name, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _simplify(model: onnx.ModelProto, feeds=None):
    result = onnxslim.optimize(model, "simplify", inputs=[feeds] if feeds else None)
    row = result.report.passes[0]
    assert row.status in ("applied", "no change"), (row.status, row.reason)
    proto = model_io.to_proto(result.model)
    return proto, row


def _ops(proto) -> list[str]:
    return [n.op_type for n in proto.graph.node]


def _run(proto, feeds):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def test_default_pipeline_is_simplify_and_cleanup_stays():
    assert registry.DEFAULT_PIPELINE == ("simplify",)
    assert [p.name for p in registry.build_all(None)] == ["simplify"]
    assert registry.get("cleanup").lossless and registry.get("simplify").lossless


def test_batchnorm_and_bias_add_fold_into_conv():
    rng = np.random.default_rng(0)
    c = 4
    model = _model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Add", ["c", "b"], ["a"]),
            helper.make_node("BatchNormalization", ["a", "g", "beta", "m", "v"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", F, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", F, ["N", c, 8, 8])],
        [
            _arr("w", rng.normal(size=(c, 3, 3, 3)).astype(np.float32)),
            _arr("b", rng.normal(size=(1, c, 1, 1)).astype(np.float32)),
            _arr("g", rng.uniform(0.5, 2, c).astype(np.float32)),
            _arr("beta", rng.normal(size=c).astype(np.float32)),
            _arr("m", rng.normal(size=c).astype(np.float32)),
            _arr("v", rng.uniform(0.5, 2, c).astype(np.float32)),
        ],
    )
    proto, row = _simplify(model)
    assert _ops(proto) == ["Conv"] and row.details["nodes_removed"] == 2
    x = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(proto, {"x": x})[0], _run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_no_ops_removed():
    """Identity, Dropout, Cast to the same type, Reshape to the same shape, Pad of zeros,
    Transpose with the identity permutation."""
    model = _model(
        [
            helper.make_node("Identity", ["x"], ["i"]),
            helper.make_node("Dropout", ["i"], ["d"]),
            helper.make_node("Cast", ["d"], ["c"], to=F),
            helper.make_node("Reshape", ["c", "shape"], ["r"]),
            helper.make_node("Pad", ["r", "pads"], ["p"]),
            helper.make_node("Transpose", ["p"], ["t"], perm=[0, 1]),
            helper.make_node("Relu", ["t"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", F, [2, 3])],
        [helper.make_tensor_value_info("y", F, [2, 3])],
        [_arr("shape", np.array([2, 3], np.int64)), _arr("pads", np.zeros(4, np.int64))],
    )
    proto, _ = _simplify(model)
    assert _ops(proto) == ["Relu"]
    assert not proto.graph.initializer


def test_constants_lifted_cse_and_dead_code():
    model = _model(
        [
            helper.make_node("Constant", [], ["k"], value=_arr("k", np.full((3,), 2.0, np.float32))),
            helper.make_node("Mul", ["x", "k"], ["m1"]),
            helper.make_node("Mul", ["x", "k"], ["m2"]),
            helper.make_node("Add", ["m1", "m2"], ["y"]),
            helper.make_node("Neg", ["x"], ["dead"]),
        ],
        [helper.make_tensor_value_info("x", F, ["N", 3])],
        [helper.make_tensor_value_info("y", F, ["N", 3])],
    )
    proto, _ = _simplify(model)
    assert sorted(_ops(proto)) == ["Add", "Mul"]
    assert [i.name for i in proto.graph.initializer] == ["k"]


def _shape_model() -> onnx.ModelProto:
    """``Reshape(x, [Shape(x)[0], 12])``: dim 0 is dynamic, dims 1..3 declared."""
    return _model(
        [
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
            helper.make_node("Gather", ["s", "i1"], ["c"], axis=0),
            helper.make_node("Mul", ["c", "four"], ["c4"]),
            helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
            helper.make_node("Unsqueeze", ["c4", "ax"], ["c1"]),
            helper.make_node("Concat", ["n1", "c1"], ["shape"], axis=0),
            helper.make_node("Reshape", ["x", "shape"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", F, ["N", 3, 2, 2])],
        [helper.make_tensor_value_info("y", F, ["N", 12])],
        [
            _arr("i0", np.array(0, np.int64)),
            _arr("i1", np.array(1, np.int64)),
            _arr("four", np.array(4, np.int64)),
            _arr("ax", np.array([0], np.int64)),
        ],
    )


def test_static_shape_computation_folds_dynamic_dim_stays():
    model = _shape_model()
    proto, _ = _simplify(model)
    ops = _ops(proto)
    # The channel count (3·4) folds; the batch dim stays free (-1, or read from the input).
    assert "Mul" not in ops and ops[-1] == "Reshape"
    shape = next(numpy_helper.to_array(i) for i in proto.graph.initializer if i.name == proto.graph.node[-1].input[1]) if "Shape" not in ops else None
    assert shape is None or list(shape) in ([-1, 12], [0, 12])
    assert [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim][:1] == ["N"]
    for batch in (1, 5):
        x = np.random.default_rng(batch).normal(size=(batch, 3, 2, 2)).astype(np.float32)
        np.testing.assert_array_equal(_run(proto, {"x": x})[0], x.reshape(batch, 12))


def test_static_model_shapes_fold_completely():
    model = _shape_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    proto, _ = _simplify(model)
    assert _ops(proto) == ["Reshape"]


def test_gemm_transpose_fused():
    rng = np.random.default_rng(1)
    model = _model(
        [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0]), helper.make_node("Gemm", ["t", "w"], ["y"], transA=1)],
        [helper.make_tensor_value_info("x", F, ["N", 4])],
        [helper.make_tensor_value_info("y", F, ["N", 3])],
        [_arr("w", rng.normal(size=(4, 3)).astype(np.float32))],
    )
    proto, _ = _simplify(model)
    assert _ops(proto) == ["Gemm"]
    x = rng.normal(size=(2, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(proto, {"x": x})[0], _run(model, {"x": x})[0], rtol=1e-6)


def test_int8_weights_stay_int8_unless_asked():
    """Folding a Cast→Mul dequantization would store the weights 4× larger."""
    model = fx.int8_weights()
    result = onnxslim.optimize(model, "simplify")
    assert result.report.passes[0].status == "no change"
    grown = onnxslim.optimize(model, "simplify:grow=true")
    assert grown.report.passes[0].status == "applied"
    assert grown.report.passes[-1].stats.nodes < result.report.before.nodes


def test_csr_decode_survives(tmp_path):
    sparse = onnxslim.optimize(fx.mlp(), "unstructured:sparsity=0.9,sparsify", validate=False).model
    decodes = len(list(sparse_codec.find_decodes(sparse)))
    assert decodes > 0
    result = onnxslim.optimize(sparse, "simplify")
    assert result.report.passes[0].status in ("applied", "no change")
    assert len(list(sparse_codec.find_decodes(result.model))) == decodes


def test_metadata_opsets_ir_version_and_signature_kept():
    proto = fx.with_metadata(fx.mobilenetv2(), {"labels": "a,b,c"})
    out, row = _simplify(proto)
    assert row.status == "applied"
    assert {p.key: p.value for p in out.metadata_props} == {"labels": "a,b,c"}
    assert out.ir_version == proto.ir_version
    assert {o.domain: o.version for o in out.opset_import if o.domain in ("", "ai.onnx")} == {"": 17}
    for a, b in ((out.graph.input, proto.graph.input), (out.graph.output, proto.graph.output)):
        assert [(v.name, v.type) for v in a] == [(v.name, v.type) for v in b]


def test_model_local_functions_not_inlined():
    fn = helper.make_function("local", "twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])], [helper.make_opsetid("", 17)])
    model = _model(
        [helper.make_node("twice", ["x"], ["t"], domain="local"), helper.make_node("Identity", ["t"], ["y"])],
        [helper.make_tensor_value_info("x", F, [2])],
        [helper.make_tensor_value_info("y", F, [2])],
    )
    model.opset_import.append(helper.make_opsetid("local", 1))
    model.functions.append(fn)
    proto, _ = _simplify(model)
    assert [f.name for f in proto.functions] == ["twice"] and _ops(proto) == ["twice"]


@pytest.mark.parametrize("name", ["mlp", "yolo_neck"])
def test_no_op_on_simple_models(name):
    result = onnxslim.optimize(fx.BUILDERS[name](), "simplify")
    assert result.report.passes[0].status == "no change"


@pytest.mark.parametrize("name", sorted(set(fx.BUILDERS) - {"zipmap_classifier"}))
def test_lossless_on_fixtures(name):
    proto = fx.BUILDERS[name]()
    result = onnxslim.optimize(proto, "simplify")
    row = result.report.passes[0]
    assert row.status in ("applied", "no change"), row.reason
    assert all(m.within_tolerance for m in row.metrics)
    assert result.report.final_checks == {"onnx_checker": "ok", "onnxruntime_default_level": "ok"}


#: name → (nodes at most after simplify: the smaller of OnnxSlim 0.1.98's and onnxsim 0.8.1's, input shapes)
CORPUS_MODELS = {
    "rapidocr_ppocrv4_det.onnx": (326, None),
    "paraphrase_minilm_l3_v2.onnx": (210, None),  # ours: 169
    "silero_vad_op18_ifless.onnx": (90, {"input": [1, 512]}),
}


@pytest.mark.parametrize("name", sorted(CORPUS_MODELS))
def test_corpus_models_lossless_and_at_most_the_simplifiers_nodes(name):
    path = CORPUS / name
    if not path.exists():
        pytest.skip(f"{path} not fetched (bash ../shared/corpus/fetch.sh)")
    limit, shapes = CORPUS_MODELS[name]
    result = onnxslim.optimize(path, input_shapes=shapes)
    row = result.report.passes[0]
    assert row.name == "simplify" and row.status == "applied", row.reason
    assert all(m.within_tolerance for m in row.metrics)
    assert row.stats.nodes <= limit
    assert dict(result.model.metadata_props) == dict(model_io.load_document(path).model.metadata_props)


@pytest.mark.parametrize("passes", ["zeros", "simplify", "cleanup"])
def test_no_change_run_writes_the_input_bytes(tmp_path, passes):
    """A run that changes nothing writes the input file as it was (zeros once added 187 bytes)."""
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(fx.mlp(), src)
    result = onnxslim.optimize(src, passes)
    assert result.report.passes[0].status == "no change"
    result.save(out)
    assert out.read_bytes() == src.read_bytes()


def test_changed_run_is_written_fresh(tmp_path):
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(fx.mobilenetv2(), src)
    result = onnxslim.optimize(src)
    assert result.report.passes[0].status == "applied"
    result.save(out)
    assert out.read_bytes() != src.read_bytes() and len(onnx.load(out).graph.node) < len(onnx.load(src).graph.node)


def test_shape_inference_sees_csr_decodes_as_dense_inputs():
    """Data propagation through a decode carried every element as a shape proto (GBs on BERT):
    inference now treats each decode output as an input of its dense shape."""
    from onnxslim import shapes

    sparse = onnxslim.optimize(fx.mlp(), "unstructured:sparsity=0.9,sparsify", validate=False).model
    decodes = list(sparse_codec.find_decodes(sparse))
    inferred = shapes.infer(sparse, strict=True)
    inputs = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in inferred.graph.input}
    for decode in decodes:
        assert inputs[decode.output.name] == list(decode.parts().shape)
    assert not any(n.name in {m.name for d in decodes for m in d.nodes} for n in inferred.graph.node)
    # The model itself keeps its decodes.
    assert len(list(sparse_codec.find_decodes(sparse))) == len(decodes)


def test_corpus_encoder_keeps_its_dynamic_dims(tmp_path):
    """Folding at the declared shapes never bakes in the validation shape: the simplified MiniLM
    runs at other batch sizes and sequence lengths to the original's outputs."""
    path = CORPUS / "paraphrase_minilm_l3_v2.onnx"
    if not path.exists():
        pytest.skip(f"{path} not fetched")
    result = onnxslim.optimize(path)
    assert result.report.passes[0].status == "applied"
    out = tmp_path / "out.onnx"
    result.save(out)
    rng = np.random.default_rng(0)
    for batch, length in ((1, 5), (3, 17)):
        feeds = {"input_ids": rng.integers(0, 1000, (batch, length)), "attention_mask": np.ones((batch, length), np.int64)}
        for a, b in zip(_run(onnx.load(path), feeds), _run(onnx.load(out), feeds)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_sympy_is_imported_on_first_use():
    """onnx-ir imports sympy at import time; onnxslim defers it (start-up) without breaking it."""
    import subprocess
    import sys

    code = (
        "import sys, onnxslim.cli; assert 'sympy.core' not in sys.modules;"
        "import onnx_ir as ir; assert str(ir.SymbolicDim('N') * 2) == '2*N';"
        "import sympy.core; from sympy import Symbol; assert str(Symbol('a') + 1) == 'a + 1'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
