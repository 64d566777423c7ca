"""ResNet-shaped graphs with random weights for the benchmarks (no side effects on import)."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def resnet(depth: int = 50, image_size: int = 160, seed: int = 0) -> onnx.ModelProto:
    """ResNet-18/34 (basic blocks) or -50 (bottlenecks) layout with BN, random weights."""
    blocks, bottleneck = {18: ([2, 2, 2, 2], False), 34: ([3, 4, 6, 3], False), 50: ([3, 4, 6, 3], True)}[depth]
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def tensor(name, array):
        inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv_bn(x, cin, cout, k, stride, name, relu=True):
        w = rng.normal(0, math.sqrt(2.0 / (cin * k * k)), (cout, cin, k, k))
        nodes.append(helper.make_node("Conv", [x, tensor(f"{name}.w", w)], [f"{name}.c"], name=f"{name}/Conv",
                                      kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4))
        bn = [tensor(f"{name}.{p}", v) for p, v in (("g", rng.uniform(0.5, 1.5, cout)), ("b", rng.normal(0, 0.1, cout)),
                                                    ("m", rng.normal(0, 0.1, cout)), ("v", rng.uniform(0.5, 1.5, cout)))]
        nodes.append(helper.make_node("BatchNormalization", [f"{name}.c", *bn], [f"{name}.bn"], name=f"{name}/BN"))
        if not relu:
            return f"{name}.bn"
        nodes.append(helper.make_node("Relu", [f"{name}.bn"], [f"{name}.r"], name=f"{name}/Relu"))
        return f"{name}.r"

    x = conv_bn("input", 3, 64, 7, 2, "stem")
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], name="pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4))
    x, cin = "pool", 64
    expansion = 4 if bottleneck else 1
    for stage, width in enumerate([64, 128, 256, 512]):
        for block in range(blocks[stage]):
            stride = 2 if stage > 0 and block == 0 else 1
            name, cout = f"layer{stage + 1}.{block}", width * expansion
            if bottleneck:
                y = conv_bn(x, cin, width, 1, 1, f"{name}.conv1")
                y = conv_bn(y, width, width, 3, stride, f"{name}.conv2")
                y = conv_bn(y, width, cout, 1, 1, f"{name}.conv3", relu=False)
            else:
                y = conv_bn(x, cin, width, 3, stride, f"{name}.conv1")
                y = conv_bn(y, width, cout, 3, 1, f"{name}.conv2", relu=False)
            short = conv_bn(x, cin, cout, 1, stride, f"{name}.down", relu=False) if stride != 1 or cin != cout else x
            nodes.append(helper.make_node("Add", [y, short], [f"{name}.add"], name=f"{name}/Add"))
            nodes.append(helper.make_node("Relu", [f"{name}.add"], [f"{name}.out"], name=f"{name}/Relu"))
            x, cin = f"{name}.out", cout
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"))
    fc_w = tensor("fc.w", rng.normal(0, math.sqrt(1.0 / cin), (1000, cin)))
    fc_b = tensor("fc.b", np.zeros(1000))
    nodes.append(helper.make_node("Gemm", ["flat", fc_w, fc_b], ["logits"], name="fc/Gemm", transB=1))
    graph = helper.make_graph(nodes, f"resnet{depth}",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, image_size, image_size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model
