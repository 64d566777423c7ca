"""onnxruntime latency before/after the ``zeros`` pass on a ResNet-style model with 50% zero channels.

Not a test: run ``python bench/zeros_latency.py [--width 64] [--size 56] [--repeat 30]``.
The model (stem + four basic blocks, BN kept, global pool, Gemm) has half the channels of
every group zeroed the way sparsity training leaves them: zero filters whose BatchNormalization
has gamma = beta = 0, so each such channel emits exactly 0. Both models run in one process,
timings interleaved (original, slimmed, original, ...) at onnxruntime's default optimisation
level, and the latency ratio is printed next to the MACs ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxslim import model_io, runtime, stats
from onnxslim.pass_api import PassContext
from onnxslim.passes.zeros import Zeros


def build(width: int, size: int, blocks: int, seed: int = 0) -> onnx.ModelProto:
    """ResNet-style net; half of every channel group is zero (filters and BN gamma/beta)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    dead_outer = rng.permutation(width)[: width // 2]  # the residual stream's zero channels

    def tensor(name, array):
        inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv_bn(x, cin, cout, name, dead, relu=True):
        w = rng.normal(0, np.sqrt(2 / (cin * 9)), (cout, cin, 3, 3))
        gamma, beta = rng.uniform(0.5, 1.5, cout), rng.normal(0, 0.1, cout)
        w[dead], gamma[dead], beta[dead] = 0, 0, 0
        mean, var = rng.normal(0, 0.1, cout), rng.uniform(0.5, 1.5, cout)
        nodes.append(helper.make_node("Conv", [x, tensor(f"{name}.w", w)], [f"{name}.c"], pads=[1] * 4, name=f"{name}/Conv"))
        bn = [f"{name}.c"] + [tensor(f"{name}.{k}", v) for k, v in zip("gbmv", (gamma, beta, mean, var))]
        nodes.append(helper.make_node("BatchNormalization", bn, [f"{name}.bn"], name=f"{name}/BN"))
        if not relu:
            return f"{name}.bn"
        nodes.append(helper.make_node("Relu", [f"{name}.bn"], [f"{name}.r"], name=f"{name}/Relu"))
        return f"{name}.r"

    x = conv_bn("input", 3, width, "stem", dead_outer)
    for b in range(blocks):
        inner = rng.permutation(width)[: width // 2]
        y = conv_bn(x, width, width, f"block{b}.conv1", inner)
        y = conv_bn(y, width, width, f"block{b}.conv2", dead_outer, relu=False)
        nodes.append(helper.make_node("Add", [x, y], [f"block{b}.add"], name=f"block{b}/Add"))
        nodes.append(helper.make_node("Relu", [f"block{b}.add"], [f"block{b}.out"], name=f"block{b}/Relu"))
        x = f"block{b}.out"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"))
    fc = [tensor("fc.w", rng.normal(0, np.sqrt(1 / width), (10, width))), tensor("fc.b", rng.normal(0, 0.1, 10))]
    nodes.append(helper.make_node("Gemm", ["flat", *fc], ["logits"], transB=1, name="fc"))
    graph = helper.make_graph(
        nodes,
        "zero_resnet",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def latency(sessions, feeds, repeat: int) -> list[float]:
    """Median milliseconds per session, runs interleaved so drift hits both alike."""
    times = [[] for _ in sessions]
    for sess in sessions:  # warm-up
        for _ in range(3):
            runtime.run(sess, feeds)
    for _ in range(repeat):
        for i, sess in enumerate(sessions):
            start = time.perf_counter()
            runtime.run(sess, feeds)
            times[i].append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--size", type=int, default=56)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--batches", default="1,32")
    args = parser.parse_args()

    original = build(args.width, args.size, args.blocks)
    model = model_io.load(original)
    result = Zeros().run(model, PassContext())
    slim = model_io.to_proto(model)
    print(f"zeros: {result.summary}")
    with runtime.session(original, "default") as sess_a, runtime.session(slim, "default") as sess_b:
        for batch in (int(b) for b in args.batches.split(",")):
            shape = {"input": (batch, 3, args.size, args.size)}
            feeds = {"input": np.random.default_rng(1).standard_normal(shape["input"]).astype(np.float32)}
            ref, got = runtime.run(sess_a, feeds)["logits"], runtime.run(sess_b, feeds)["logits"]
            macs_a = stats.count_macs(model_io.load(original), shape)[0]
            macs_b = stats.count_macs(model_io.load(slim), shape)[0]
            t_a, t_b = latency([sess_a, sess_b], feeds, args.repeat)
            print(
                f"batch {batch:3d}: MACs {macs_a / 1e6:9.1f}M -> {macs_b / 1e6:9.1f}M  (ratio {macs_a / macs_b:4.2f}x)   "
                f"latency {t_a:8.2f} ms -> {t_b:8.2f} ms  (ratio {t_a / t_b:4.2f}x)   "
                f"max |diff| {float(np.max(np.abs(ref - got))):.2e}"
            )


if __name__ == "__main__":
    main()
