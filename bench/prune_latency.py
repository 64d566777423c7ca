"""onnxruntime latency of a ResNet-18-shaped graph, original vs ``prune`` at 30% and 50%.

All models are measured side by side in one run: for every repeat each model runs once in turn
(interleaved, so machine noise hits them alike) and the median is reported, next to the ratio of
MACs. Run: ``python bench/prune_latency.py [--repeats 30] [--threads 0]``. Not a unit test.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from onnxslim import model_io, stats  # noqa: E402
from onnxslim.pass_api import PassContext  # noqa: E402
from onnxslim.passes.prune import Prune  # noqa: E402


def resnet18(seed: int = 0, image_size: int = 224) -> onnx.ModelProto:
    """ResNet-18 layout (64-128-256-512, two basic blocks per stage, BN kept, 1x1 downsample)."""
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
    for stage, cout in enumerate([64, 128, 256, 512]):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            name = f"layer{stage + 1}.{block}"
            y = conv_bn(x, cin, cout, 3, stride, f"{name}.conv1")
            y = conv_bn(y, cout, cout, 3, 1, f"{name}.conv2", relu=False)
            short = conv_bn(x, cin, cout, 1, stride, f"{name}.down", relu=False) if stride != 1 or cin != cout else x
            nodes.append(helper.make_node("Add", [y, short], [f"{name}.add"], name=f"{name}/Add"))
            nodes.append(helper.make_node("Relu", [f"{name}.add"], [f"{name}.out"], name=f"{name}/Relu"))
            x, cin = f"{name}.out", cout
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"))
    fc_w = tensor("fc.w", rng.normal(0, math.sqrt(1.0 / 512), (1000, 512)))
    fc_b = tensor("fc.b", np.zeros(1000))
    nodes.append(helper.make_node("Gemm", ["flat", fc_w, fc_b], ["logits"], name="fc/Gemm", transB=1))
    graph = helper.make_graph(nodes, "resnet18", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, image_size, image_size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def session(proto: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's default)")
    parser.add_argument("--batches", default="1,32")
    args = parser.parse_args()

    original = resnet18(image_size=args.image_size)
    variants = {"original": original}
    for ratio, round_to in ((0.3, 1), (0.3, 8), (0.5, 1)):
        model = model_io.load(original)
        Prune(ratio=ratio, round_to=round_to).run(model, PassContext())
        variants[f"prune {ratio:.0%}" + (f" r{round_to}" if round_to > 1 else "")] = model_io.to_proto(model)
    shape = [1, 3, args.image_size, args.image_size]
    macs = {k: stats.compute(model_io.load(v), {"input": shape}).macs for k, v in variants.items()}
    sessions = {k: session(v, args.threads) for k, v in variants.items()}

    print(f"ResNet-18-shaped graph {args.image_size}x{args.image_size}, onnxruntime {ort.__version__} CPU, "
          f"{args.repeats} interleaved repeats, median")
    print(f"{'model':<14} {'batch':>5} {'GMACs':>8} {'ms':>10} {'latency ratio':>14} {'MACs ratio':>11}")
    rng = np.random.default_rng(0)
    for batch in (int(b) for b in args.batches.split(",")):
        feed = {"input": rng.standard_normal((batch, *shape[1:]), dtype=np.float32)}
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for sess in sessions.values():  # warm-up
            sess.run(None, feed)
        for _ in range(args.repeats):
            for name, sess in sessions.items():
                start = time.perf_counter()
                sess.run(None, feed)
                times[name].append(time.perf_counter() - start)
        base = statistics.median(times["original"])
        for name in sessions:
            med = statistics.median(times[name])
            print(f"{name:<14} {batch:>5} {macs[name] * batch / 1e9:>8.3f} {med * 1e3:>10.2f} "
                  f"{base / med:>13.2f}x {macs['original'] / macs[name]:>10.2f}x")


if __name__ == "__main__":
    main()
