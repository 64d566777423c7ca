"""What keeps peak memory near the weights' size (bench/bert_base_rss.py measures it): weights
mapped range by range and unmapped between phases, no graph keeping replaced weights alive, the
default-level final check of CSR models in bounded groups, weights written from their buffers."""

from __future__ import annotations

import gc
import weakref

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper

from fixtures import models as fx
from onnxslim import constants, model_io, optimize, runtime, shapes, sparse_codec
from onnxslim.errors import ModelError
from onnxslim.passes.sparsify import Sparsify
from onnxslim.pass_api import PassContext


def _matmul_chain(sizes=(96, 80, 64), seed=0) -> onnx.ModelProto:
    """x[1,96] -> MatMul -> MatMul: weights of 30 KB and 20 KB (external data above 1 KB)."""
    rng = np.random.default_rng(seed)
    inits, nodes, x = [], [], "x"
    for i, (k, n) in enumerate(zip(sizes, sizes[1:])):
        inits.append(numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"y{i}"], name=f"mm{i}"))
        x = f"y{i}"
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, sizes[0]])],
        [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, [1, sizes[-1]])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def _external(tmp_path, proto: onnx.ModelProto):
    path = tmp_path / "m.onnx"
    data = fx.save_with_external_data(proto, path)
    return path, data


def test_external_weights_map_only_their_own_bytes_and_read_like_onnx(tmp_path):
    proto = _matmul_chain()
    path, data = _external(tmp_path, proto)
    model = model_io.load(path)
    expected = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    size = (tmp_path / data).stat().st_size
    for name, array in expected.items():
        tensor = model.graph.initializers[name].const_value
        assert isinstance(tensor, ir.ExternalTensor)
        np.testing.assert_array_equal(tensor.numpy(), array)
        assert array.nbytes <= len(tensor.raw) < size  # its own range (page-aligned), not the file


def test_inline_file_weights_are_lazy_ranges_too(tmp_path, monkeypatch):
    monkeypatch.setattr(model_io, "LAZY_PARSE_ABOVE_BYTES", 0)  # as a file above it is read
    proto = _matmul_chain()
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    model = model_io.load(path)
    tensor = model.graph.initializers["w0"].const_value
    assert isinstance(tensor, ir.ExternalTensor)
    np.testing.assert_array_equal(tensor.numpy(), numpy_helper.to_array(proto.graph.initializer[0]))
    assert len(tensor.raw) < path.stat().st_size


def test_release_memory_unmaps_weights_that_read_again_and_spares_live_views(tmp_path, monkeypatch):
    monkeypatch.setattr(model_io, "RELEASE_ABOVE_BYTES", 0)
    path, _ = _external(tmp_path, _matmul_chain())
    model = model_io.load(path)
    w0, w1 = (model.graph.initializers[n].const_value for n in ("w0", "w1"))
    first = w0.numpy().copy()
    view = w1.numpy()  # a live view: its mapping must stay
    model_io.release_memory(model)
    assert w0.raw is None and w1.raw is not None
    np.testing.assert_array_equal(w0.numpy(), first)  # mapped again on demand
    assert np.isfinite(view).all()


def test_replacing_a_weight_unmaps_the_old_one_which_stays_readable_for_rollback(tmp_path):
    path, _ = _external(tmp_path, _matmul_chain())
    model = model_io.load(path)
    snapshot = model.clone()
    old = model.graph.initializers["w0"].const_value
    before = old.numpy().copy()
    constants.set_tensor(model.graph.initializers["w0"], np.zeros_like(before))
    assert old.raw is None  # unmapped by the replacement
    np.testing.assert_array_equal(snapshot.graph.initializers["w0"].const_value.numpy(), before)


def test_small_files_are_parsed_whole(tmp_path, monkeypatch):
    """Below LAZY_PARSE_ABOVE_BYTES the file is parsed in one go (weights in memory, nothing
    mapped), above it the weights stay in the file: the same model either way."""
    proto = _matmul_chain()
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    whole = model_io.load(path)
    assert not any(isinstance(v.const_value, ir.ExternalTensor) for v in whole.graph.initializers.values())
    monkeypatch.setattr(model_io, "LAZY_PARSE_ABOVE_BYTES", path.stat().st_size - 1)
    lazy = model_io.load(path)
    assert any(isinstance(v.const_value, ir.ExternalTensor) for v in lazy.graph.initializers.values())
    for name, value in whole.graph.initializers.items():
        np.testing.assert_array_equal(value.const_value.numpy(), lazy.graph.initializers[name].const_value.numpy())


def test_release_memory_leaves_small_models_alone(tmp_path):
    path, _ = _external(tmp_path, _matmul_chain())
    model = model_io.load(path)
    tensor = model.graph.initializers["w0"].const_value
    tensor.numpy()
    model_io.release_memory(model)  # the fixed floor dominates: no collection, no unmapping
    assert tensor.raw is not None


def test_unstructured_rolled_back_after_unmapping_restores_the_original_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(model_io, "RELEASE_ABOVE_BYTES", 0)
    proto = _matmul_chain()
    path, _ = _external(tmp_path, proto)
    result = optimize(path, "unstructured:sparsity=0.9", min_cosine=0.9999)
    assert result.report.passes[0].status == "rolled back"
    for t in proto.graph.initializer:
        np.testing.assert_array_equal(result.model.graph.initializers[t.name].const_value.numpy(), numpy_helper.to_array(t))


def test_a_weight_lent_to_the_skeleton_is_not_kept_alive_by_the_graph():
    model = model_io.load(fx.bert_block())
    with shapes.skeleton(model):
        pass
    old = max(model.graph.initializers.values(), key=lambda v: v.const_value.nbytes)
    new = ir.Value(name=f"{old.name}.new")
    constants.set_tensor(new, np.zeros(old.const_value.shape.numpy(), np.float32))
    model.graph.register_initializer(new)
    old.replace_all_uses_with(new)
    model.graph.initializers.pop(old.name)
    gone = weakref.ref(old)
    del old
    gc.collect()
    assert gone() is None


def _sparse_bert() -> ir.Model:
    model = model_io.load(fx.bert_block())
    for c in constants.model_constants(model):
        if c.can_replace and int(np.prod(c.shape)) >= 1024:
            a = c.numpy()
            c.replace(np.where(np.abs(a) < np.quantile(np.abs(a), 0.9), np.zeros((), a.dtype), a))
    assert Sparsify(min_size=1024).run(model, PassContext()).modified
    return model


def test_final_check_of_a_large_csr_model_folds_the_decodes_in_groups(monkeypatch):
    model = _sparse_bert()
    decodes = [d for d in sparse_codec.find_decodes(model) if d.graph is model.graph]
    assert len(decodes) > 3
    monkeypatch.setattr(runtime, "_IN_MEMORY_LIMIT_BYTES", 0)
    monkeypatch.setattr(runtime, "_DECODE_GROUP_BYTES", 64 * 1024)
    groups = []
    folded = runtime._folded

    def spy(m, names, level):
        groups.append(list(names))
        arrays = folded(m, names, level)
        for name in names:  # what onnxruntime folds each decode to is the codec's dense tensor
            parts = next(d for d in decodes if d.output.name == name).parts()
            assert arrays[name].tobytes() == sparse_codec.decode(parts).tobytes()
        return arrays

    monkeypatch.setattr(runtime, "_folded", spy)
    before = model_io.to_bytes(model)
    runtime.check_loads(model, "default")
    assert 1 < len(groups) < len(decodes) + 1
    assert sorted(n for g in groups for n in g) == sorted(d.output.name for d in decodes)
    assert model_io.to_bytes(model) == before  # the model keeps its decodes


@pytest.mark.parametrize("large", [False, True])
def test_final_check_still_fails_a_model_onnxruntime_cannot_load(monkeypatch, large):
    model = _sparse_bert()
    if large:
        monkeypatch.setattr(runtime, "_IN_MEMORY_LIMIT_BYTES", 0)
    out = model.graph.outputs[0]
    bad = ir.Node("", "NoSuchOp", [out], name="bad")
    model.graph.append(bad)
    model.graph.outputs.append(bad.outputs[0])
    bad.outputs[0].name = "bad_out"
    with pytest.raises(ModelError):
        runtime.check_loads(model, "default")


def test_optimize_reports_the_final_check_of_a_large_csr_model(monkeypatch):
    monkeypatch.setattr(runtime, "_IN_MEMORY_LIMIT_BYTES", 0)
    folded, groups = runtime._folded, []
    monkeypatch.setattr(runtime, "_folded", lambda *a: groups.append(a[1]) or folded(*a))
    proto = model_io.to_proto(_sparse_bert())
    result = optimize(proto, "cleanup")
    assert result.report.final_checks == {"onnx_checker": "ok", "onnxruntime_default_level": "ok"}
    assert groups  # the final check of a large model folds its decodes in groups, never all at once


def test_inline_save_writes_weights_from_their_buffers_byte_for_byte(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "f16": rng.standard_normal((40, 40)).astype(np.float16),
        "i8": rng.integers(-128, 127, (64, 64), dtype=np.int8),
        "b": rng.random((70, 70)) > 0.5,
        "f64": rng.standard_normal((30, 30)),
        "bf16": rng.standard_normal((40, 40)).astype(ml_dtypes.bfloat16),  # serialised, not viewed
    }
    graph = ir.Graph([], [], nodes=[], name="g", opset_imports={"": 17})
    for name, array in arrays.items():
        value = ir.Value(name=name)
        constants.set_tensor(value, array)
        graph.register_initializer(value)
        identity = ir.Node("", "Identity", [value], name=f"id_{name}")
        graph.append(identity)
        identity.outputs[0].name = f"out_{name}"
        graph.outputs.append(identity.outputs[0])
    path = tmp_path / "w.onnx"
    model_io.save(ir.Model(graph, ir_version=10), path)
    # and once more from the mapped file (external tensors written straight from their mapping)
    again = tmp_path / "again.onnx"
    model_io.save(model_io.load(path), again)
    for file in (path, again):
        loaded = {t.name: t for t in onnx.load(file).graph.initializer}
        for name, array in arrays.items():
            got = numpy_helper.to_array(loaded[name])
            assert got.tobytes() == array.tobytes(), (file.name, name)


def test_final_check_loads_a_model_whole_when_a_decode_reads_more_than_constants(monkeypatch):
    model = _sparse_bert()
    decode = next(d for d in sparse_codec.find_decodes(model) if d.graph is model.graph)
    scatter = next(n for n in decode.nodes if n.metadata_props[sparse_codec.ROLE_KEY] == "scatter")
    values = scatter.inputs[2]
    fed = ir.Value(name="fed_values", type=values.type, shape=ir.Shape(values.const_value.shape))
    model.graph.inputs.append(fed)
    scatter.replace_input_with(2, fed)
    monkeypatch.setattr(runtime, "_IN_MEMORY_LIMIT_BYTES", 0)
    monkeypatch.setattr(runtime, "_folded", lambda *a: pytest.fail("grouped path taken"))
    runtime.check_loads(model, "default")
