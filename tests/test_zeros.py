"""The ``zeros`` pass: zero channels, neurons and branches leave the graph, outputs do not change."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from fixtures import models as fx
from onnxslim import model_io, runtime, stats
from onnxslim.pass_api import PassContext
from onnxslim.passes.zeros import Zeros

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "models"
CORPUS = Path(os.path.expanduser("~/.cache/onnxslim-corpus"))


# --------------------------------------------------------------------------- helpers


def edit_weights(proto: onnx.ModelProto, edits: dict[str, Callable[[np.ndarray], None]]) -> onnx.ModelProto:
    """A copy of ``proto`` with each named initializer changed by its editing function."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    found = set()
    for tensor in out.graph.initializer:
        if tensor.name in edits:
            array = numpy_helper.to_array(tensor).copy()
            edits[tensor.name](array)
            tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
            found.add(tensor.name)
    assert found == set(edits), f"unknown initializers {set(edits) - found}"
    return out


def zero_rows(*indices: int, axis: int = 0) -> Callable[[np.ndarray], None]:
    def edit(array: np.ndarray) -> None:
        index = [slice(None)] * array.ndim
        index[axis] = list(indices)
        array[tuple(index)] = 0

    return edit


def fill(value: float, *indices: int) -> Callable[[np.ndarray], None]:
    def edit(array: np.ndarray) -> None:
        if indices:
            array[list(indices)] = value
        else:
            array.fill(value)

    return edit


def apply(proto: onnx.ModelProto, **options):
    model = model_io.load(proto)
    result = Zeros(**options).run(model, PassContext())
    return model_io.to_proto(model), result


def outputs(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with runtime.session(proto, "disabled") as sess:
        return runtime.run(sess, feeds)


def assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    ref, got = outputs(before, feeds), outputs(after, feeds)
    for name in ref:
        assert got[name].shape == ref[name].shape, name
        scale = float(np.max(np.abs(ref[name]))) or 1.0
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-5 * scale, err_msg=name)


def assert_well_formed(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    """Checker, strict shape inference, same graph signature, and no orphan initializers."""
    onnx.checker.check_model(after)
    onnx.shape_inference.infer_shapes(after, check_type=True, strict_mode=True)
    assert _signature(after.graph.input) == _signature(before.graph.input)
    assert _signature(after.graph.output) == _signature(before.graph.output)
    used = {name for node in after.graph.node for name in node.input}
    used |= {o.name for o in after.graph.output}
    orphans = [t.name for t in after.graph.initializer if t.name not in used]
    assert not orphans, f"orphan initializers: {orphans}"


def _signature(values) -> list:
    return [(v.name, v.type.tensor_type.elem_type, [(d.dim_value, d.dim_param) for d in v.type.tensor_type.shape.dim]) for v in values]


def param_count(proto: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)


def op_count(proto: onnx.ModelProto, op_type: str) -> int:
    return sum(1 for n in proto.graph.node if n.op_type == op_type)


def macs(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> int:
    model = model_io.load(proto)
    total, unresolved = stats.count_macs(model, {k: v.shape for k, v in feeds.items()})
    assert unresolved == 0
    return total


# --------------------------------------------------------------------------- no zero structure


NO_ZEROS = ["resnet", "mobilenetv2", "yolo_neck", "bert_block", "mlp", "if_model", "constant_node_convnet", "int8_weights"]


@pytest.mark.parametrize("name", NO_ZEROS + ["digits_cnn"])
def test_no_zero_structure_leaves_model_bit_identical(name):
    source = FIXTURES / f"{name}.onnx" if name == "digits_cnn" else fx.BUILDERS[name]()
    model = model_io.load(source)
    before = model_io.to_bytes(model)
    result = Zeros().run(model, PassContext())
    assert result.modified is False
    assert model_io.to_bytes(model) == before


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.onnx")) if CORPUS.exists() else [], ids=lambda p: p.name)
def test_corpus_models_without_zero_structure_stay_identical(path):
    model = model_io.load(path)
    before = model_io.to_bytes(model)
    assert Zeros().run(model, PassContext()).modified is False
    assert model_io.to_bytes(model) == before


def test_eps_must_be_non_negative():
    from onnxslim.errors import UsageError

    with pytest.raises(UsageError, match="eps"):
        Zeros(eps=-1.0)


# --------------------------------------------------------------------------- whole branches


def test_all_zero_residual_branch_becomes_a_constant():
    """layer1.1's conv2 is all zero: the branch emits BN(conv2 bias), a per-channel constant,
    so conv1 -> bn1 -> relu -> conv2 -> bn2 all leave and the Add takes the constant."""
    proto = fx.resnet()
    zeroed = edit_weights(proto, {"layer1.1.conv2.weight": fill(0.0)})
    out, result = apply(zeroed)
    assert result.modified
    feeds = fx.random_inputs(proto, seed=3)
    assert_same_outputs(zeroed, out, feeds)
    assert_well_formed(zeroed, out)
    assert op_count(out, "Conv") == op_count(proto, "Conv") - 2
    assert op_count(out, "BatchNormalization") == op_count(proto, "BatchNormalization") - 2
    assert op_count(out, "Relu") == op_count(proto, "Relu") - 1
    removed = 2 * (16 * 16 * 9 + 16 + 4 * 16)  # two convs (weight, bias) and two BNs
    assert param_count(zeroed) - param_count(out) == removed - 16  # plus the 16-value constant
    assert macs(zeroed, feeds) - macs(out, feeds) == 2 * 16 * 16 * 9 * 32 * 32 * 2  # batch 2


def _mul_by_zero_model() -> onnx.ModelProto:
    """y = x + Relu(Conv(x)) * 0 ; z = y * (Conv(x) * 0 + 1)"""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 4, 3, 3)).astype(np.float32), "w")
    zero = numpy_helper.from_array(np.zeros((4, 1, 1), np.float32), "zero")
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Mul", ["r", "zero"], ["m"], name="mul_zero"),
        helper.make_node("Add", ["x", "m"], ["y"], name="add"),
        helper.make_node("Mul", ["c", "zero"], ["m2"], name="mul_zero2"),
        helper.make_node("Add", ["m2", "one"], ["gate"], name="add_one"),
        helper.make_node("Mul", ["y", "gate"], ["z"], name="mul_gate"),
    ]
    graph = helper.make_graph(
        nodes,
        "mul_by_zero",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4, 8, 8])],
        [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, ["N", 4, 8, 8])],
        [w, zero, one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def test_mul_by_zero_branches_disappear():
    proto = _mul_by_zero_model()
    out, result = apply(proto)
    assert result.modified
    assert_same_outputs(proto, out, fx.random_inputs(proto, seed=0))
    assert_well_formed(proto, out)
    assert len(out.graph.node) == 0 or [n.op_type for n in out.graph.node] == ["Identity"]
