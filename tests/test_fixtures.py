"""Tests of the shared fixture models in ``fixtures/`` (builders, build script, digits CNN)."""

from __future__ import annotations

import os
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fixtures import build as fixture_build
from fixtures import models as fm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS_DIR = os.path.join(ROOT, "fixtures", "models")
NAMES = sorted(fm.BUILDERS)


@pytest.fixture(scope="module")
def built() -> dict[str, onnx.ModelProto]:
    return {name: fm.BUILDERS[name]() for name in NAMES}


def _session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    data = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            for g in attr.graphs:
                yield from _all_nodes(g)


# --------------------------------------------------------------------------- builders


@pytest.mark.parametrize("name", NAMES)
def test_checker(built, name):
    model = built[name]
    full = name not in fm.PARTIAL_CHECK
    onnx.checker.check_model(model, full_check=full)


@pytest.mark.parametrize("name", NAMES)
def test_conventions(built, name):
    model = built[name]
    assert model.ir_version == 10
    opsets = {o.domain: o.version for o in model.opset_import}
    assert opsets[""] == 17
    assert model.ByteSize() < 2 * 1024 * 1024
    nodes = list(_all_nodes(model.graph))
    assert all(n.name for n in nodes), "every node is named"
    assert len({n.name for n in nodes}) == len(nodes), "node names are unique"
    assert all(t.name for t in model.graph.initializer)
    assert model.graph.input, "has graph inputs"
    for vi in model.graph.input:
        assert vi.type.tensor_type.shape.dim[0].dim_param == "N", vi.name
    for vi in model.graph.output:
        if vi.type.HasField("tensor_type"):
            assert vi.type.tensor_type.shape.dim[0].dim_param == "N", vi.name


def _expected_shape(vi: onnx.ValueInfoProto, named: dict[str, int]) -> list[int | None]:
    out = []
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(d.dim_value)
        else:
            out.append(named.get(d.dim_param))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_runs_in_onnxruntime(built, name):
    model = built[name]
    feeds = fm.random_inputs(model, seed=1, batch=3, seq=5)
    assert set(feeds) == {vi.name for vi in model.graph.input}
    sess = _session(model)
    outputs = sess.run(None, feeds)
    assert len(outputs) == len(model.graph.output)
    for vi, value in zip(model.graph.output, outputs):
        if not vi.type.HasField("tensor_type"):
            continue
        expected = _expected_shape(vi, {"N": 3, "S": 5})
        assert len(value.shape) == len(expected), vi.name
        for got, want in zip(value.shape, expected):
            assert want is None or got == want, (vi.name, value.shape, expected)
        if np.issubdtype(value.dtype, np.floating):
            assert np.isfinite(value).all()
            assert value.std() > 0, "output is not constant"


@pytest.mark.parametrize("name", NAMES)
def test_deterministic(name):
    builder = fm.BUILDERS[name]
    first = builder().SerializeToString()
    assert builder().SerializeToString() == first
    assert builder(seed=0).SerializeToString() == first
    assert builder(seed=1).SerializeToString() != first


def test_random_inputs_are_valid():
    bert = fm.bert_block()
    feeds = fm.random_inputs(bert, batch=4, seq=7)
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    assert ids.dtype == np.int64 and ids.shape == (4, 7)
    assert ids.min() >= 0 and ids.max() < 100
    assert mask.dtype == np.int64 and set(np.unique(mask)) <= {0, 1}
    assert (mask[:, 0] == 1).all()
    assert fm.random_inputs(bert, seed=3)["input_ids"].tolist() == fm.random_inputs(bert, seed=3)["input_ids"].tolist()
    conv = fm.random_inputs(fm.constant_node_convnet(), dims={"H": 10, "W": 14})
    assert conv["image"].shape == (2, 3, 10, 14)


def test_resnet_structure_and_metadata(built):
    model = built["resnet"]
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("BatchNormalization") >= 5
    assert ops[-3:] == ["GlobalAveragePool", "Flatten", "Gemm"]
    props = {p.key: p.value for p in model.metadata_props}
    assert props["labels"] == "cat,dog"
    assert model.doc_string
    assert any(o.domain == "com.onnxslim.fixtures" for o in model.opset_import)
    conv_inputs = [len(n.input) for n in model.graph.node if n.op_type == "Conv"]
    assert 2 in conv_inputs and 3 in conv_inputs, "convs with and without bias"
    plain = fm.resnet(metadata=False)
    assert not plain.metadata_props
    again = fm.with_metadata(plain, {"labels": "a,b"}, doc_string="doc")
    assert {p.key: p.value for p in again.metadata_props} == {"labels": "a,b"}
    assert not plain.metadata_props, "with_metadata does not modify its argument"


def test_structures(built):
    def ops(name):
        return [n.op_type for n in _all_nodes(built[name].graph)]

    mb = built["mobilenetv2"]
    dw = [n for n in mb.graph.node if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert len(dw) >= 3
    assert "Add" in ops("mobilenetv2") and "Clip" in ops("mobilenetv2") and "Reshape" in ops("mobilenetv2")
    for op in ("Split", "Concat", "Resize", "Sigmoid", "Mul"):
        assert op in ops("yolo_neck")
    assert len(built["yolo_neck"].graph.output) == 2
    for op in ("Gather", "LayerNormalization", "Softmax", "Erf", "Tanh", "Transpose", "Reshape"):
        assert op in ops("bert_block")
    assert ops("mlp").count("Gemm") == 2 and ops("mlp").count("MatMul") == 2

    cn = built["constant_node_convnet"]
    assert len(cn.graph.initializer) == 0
    assert {"Constant", "HardSigmoid", "Resize", "Relu"} <= set(ops("constant_node_convnet"))

    q = built["int8_weights"]
    int8 = [t for t in q.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8) == 4  # two Cast-dequantized weights, one DequantizeLinear weight + zero point
    assert "DequantizeLinear" in ops("int8_weights")


def test_if_model_uses_outer_weights_and_both_branches(built):
    model = built["if_model"]
    if_node = next(n for n in model.graph.node if n.op_type == "If")
    outer = {t.name for t in model.graph.initializer}
    for attr in if_node.attribute:
        used = {i for n in attr.g.node for i in n.input}
        assert {"conv.weight", "fc.weight"} <= used & outer
        assert not attr.g.initializer
    sess = _session(model)
    x = np.abs(np.random.default_rng(0).standard_normal((2, 1, 8, 8))).astype(np.float32)
    pos, neg = sess.run(None, {"input": x})[0], sess.run(None, {"input": -x})[0]
    np.testing.assert_allclose(pos.sum(axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(pos, neg)


def test_sparse_initializer(built):
    model = built["sparse_initializer_model"]
    assert len(model.graph.sparse_initializer) == 1
    sp = model.graph.sparse_initializer[0]
    idx = onnx.numpy_helper.to_array(sp.indices)
    assert idx.dtype == np.int64 and idx.ndim == 1
    assert (np.diff(idx) > 0).all()
    density = len(idx) / np.prod(sp.dims)
    assert 0.1 < density < 0.3
    assert any(t.name == "fc.bias" for t in model.graph.initializer)


def test_zipmap_outputs(built):
    model = built["zipmap_classifier"]
    assert {o.domain: o.version for o in model.opset_import}["ai.onnx.ml"] >= 1
    x = fm.random_inputs(model, batch=5)["input"]
    label, probs = _session(model).run(None, {"input": x})
    assert label.dtype == np.int64 and label.shape == (5,)
    assert isinstance(probs, list) and len(probs) == 5
    for lab, p in zip(label, probs):
        assert sorted(p) == [0, 1, 2]
        assert abs(sum(p.values()) - 1.0) < 1e-5
        assert max(p, key=p.get) == lab


def test_save_with_external_data(tmp_path):
    model = fm.resnet()
    before = model.SerializeToString()
    path = tmp_path / "m.onnx"
    for _ in range(2):  # saving twice must not append to the data file
        data_path = fm.save_with_external_data(model, path)
        assert os.path.basename(data_path) == "m.onnx.data"
        size = os.path.getsize(data_path)
    assert model.SerializeToString() == before
    stub = onnx.load(str(path), load_external_data=False)
    external = [t for t in stub.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and all(len(t.raw_data) == 0 for t in external)
    assert size >= sum(int(np.prod(t.dims)) * 4 for t in external)
    assert all(np.prod(t.dims) * 4 < 1024 for t in stub.graph.initializer if t not in external)
    loaded = onnx.load(str(path))
    onnx.checker.check_model(loaded, full_check=True)
    feeds = fm.random_inputs(model)
    np.testing.assert_allclose(
        _session(str(path)).run(None, feeds)[0], _session(model).run(None, feeds)[0], rtol=1e-6, atol=1e-6
    )


# --------------------------------------------------------------------------- committed files


def test_committed_fixtures_match_build(tmp_path):
    written = fixture_build.build(tmp_path)
    assert len(written) == len(fm.BUILDERS) + len(fixture_build.EXTERNAL_FILES)
    for rel in written:
        committed = os.path.join(MODELS_DIR, rel)
        assert os.path.exists(committed), f"{rel} missing: run python fixtures/build.py"
        with open(committed, "rb") as a, open(tmp_path / rel, "rb") as b:
            assert a.read() == b.read(), f"{rel} is stale: run python fixtures/build.py"


def _stated_digits_accuracy() -> float:
    with open(os.path.join(ROOT, "fixtures", "digits.py"), encoding="utf-8") as f:
        match = re.search(r"^# TEST_ACCURACY = ([0-9.]+)", f.read(), re.MULTILINE)
    assert match, "digits.py states its accuracy"
    return float(match.group(1))


def test_digits_model_accuracy():
    stated = _stated_digits_accuracy()
    assert stated >= 0.95
    path = os.path.join(MODELS_DIR, "digits_cnn.onnx")
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert sum(n.op_type == "BatchNormalization" for n in model.graph.node) == 5
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    data = np.load(os.path.join(MODELS_DIR, "digits_data.npz"))
    x_train, y_train, x_test, y_test = (data[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    assert x_test.dtype == np.float32 and y_test.dtype == np.int64
    assert x_train.shape == (1257, 1, 8, 8) and x_test.shape == (540, 1, 8, 8)
    assert len(y_train) == 1257 and 0.0 <= x_test.min() and x_test.max() <= 1.0
    logits = _session(path).run(None, {"input": x_test})[0]
    accuracy = float((logits.argmax(axis=1) == y_test).mean())
    assert accuracy >= stated - 1e-9, (accuracy, stated)
    assert os.path.getsize(os.path.join(MODELS_DIR, "digits_cnn.pt")) > 0
