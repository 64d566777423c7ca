"""Shape inference helpers: failures raise, declared output dims survive a refresh."""

from __future__ import annotations

import pytest

from fixtures import models as fx
from onnxslim import model_io, shapes


def test_refresh_keeps_declared_output_dims():
    model = model_io.load(fx.resnet())
    before = [v.shape for v in model.graph.outputs]
    shapes.refresh_shapes(model)
    assert [v.shape for v in model.graph.outputs] == before
    assert str(model.graph.outputs[0].shape[0]) == "N"


def test_refresh_raises_on_inconsistent_graph():
    model = model_io.load(fx.mlp())
    weight = next(v for v in model.graph.initializers.values() if len(v.shape) == 2)
    import numpy as np

    from onnxslim.constants import set_tensor

    set_tensor(weight, np.zeros((3, 5), np.float32))  # no longer matches its layer
    with pytest.raises(shapes.ShapeInferenceError):
        shapes.refresh_shapes(model)


def test_skeleton_restores_the_model():
    model = model_io.load(fx.bert_block())
    before = model_io.to_bytes(model)
    with shapes.skeleton(model) as proto:
        assert sum(t.ByteSize() for t in proto.graph.initializer) < 64 * 1024
    assert model_io.to_bytes(model) == before
