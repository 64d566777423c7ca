"""Latency-aware widths: measured onnxruntime speed-up divided by the MACs speed-up, for pruned
widths as they fall (``round_to=1``) and for the default (``round_to=8``), side by side.

Three full-width graphs (random weights: latency does not depend on their values):
ResNet-18 (basic blocks, BN), MobileNetV2 (inverted residuals: 1×1 expand, depthwise 3×3,
1×1 project, ReLU6) and a YOLOv8s-style detector (Conv+SiLU, C2f blocks with Split/Concat,
SPPF, a top-down neck with Resize+Concat, three detection heads). Each is pruned with
``prune:ratio=R:criterion=l2`` at R = 0.3 and 0.5; for every batch size and thread count the
original and the four pruned models are timed in interleaved rounds (``onnxslim.latency``),
medians. The issue's goal: latency speed-up ≥ 0.85 × MACs speed-up.

Run: ``python bench/prune_widths.py [--rounds 15] [--models resnet18,mobilenetv2,yolo]``.
Not a unit test.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from onnxslim import latency, model_io, stats  # noqa: E402
from onnxslim.pass_api import PassContext  # noqa: E402
from onnxslim.passes.prune import Prune  # noqa: E402
from prune_latency import resnet18  # noqa: E402


class _G:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: list = []
        self.n = 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def t(self, base: str, arr) -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
        return name

    def node(self, op: str, ins: list[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, ins, [out], name=out + "/" + op, **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int = 1, s: int = 1, group: int = 1, act: str | None = "relu", bn: bool = True) -> str:
        w = self.rng.normal(0, math.sqrt(2.0 / (cin // group * k * k)), (cout, cin // group, k, k))
        y = self.node("Conv", [x, self.t("w", w)], kernel_shape=[k, k], strides=[s, s], pads=[k // 2] * 4, group=group)
        if bn:
            p = [self.t("g", self.rng.uniform(0.5, 1.5, cout)), self.t("b", self.rng.normal(0, 0.1, cout)),
                 self.t("m", self.rng.normal(0, 0.1, cout)), self.t("v", self.rng.uniform(0.5, 1.5, cout))]
            y = self.node("BatchNormalization", [y, *p])
        if act == "relu":
            y = self.node("Relu", [y])
        elif act == "relu6":
            y = self.node("Clip", [y, self.t("lo", np.array(0.0)), self.t("hi", np.array(6.0))])
        elif act == "silu":
            y = self.node("Mul", [y, self.node("Sigmoid", [y])])
        return y

    def model(self, x_shape: list, out: str, out_name: str) -> onnx.ModelProto:
        self.nodes.append(helper.make_node("Identity", [out], [out_name], name="output"))
        graph = helper.make_graph(self.nodes, "bench", [helper.make_tensor_value_info("input", TensorProto.FLOAT, x_shape)],
                                  [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, None)], initializer=self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 10
        return m


def mobilenetv2(image_size: int = 160) -> onnx.ModelProto:
    g = _G(1)
    x = g.conv("input", 3, 32, 3, 2, act="relu6")
    cin = 32
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = g.conv(x, cin, hidden, 1, act="relu6") if t != 1 else x
            y = g.conv(y, hidden, hidden, 3, stride, group=hidden, act="relu6")
            y = g.conv(y, hidden, c, 1, act=None)
            x = g.node("Add", [x, y]) if stride == 1 and cin == c else y
            cin = c
    x = g.conv(x, cin, 1280, 1, act="relu6")
    x = g.node("Flatten", [g.node("GlobalAveragePool", [x])])
    x = g.node("Gemm", [x, g.t("fc", g.rng.normal(0, 0.03, (1000, 1280))), g.t("fcb", np.zeros(1000))], transB=1)
    return g.model(["N", 3, image_size, image_size], x, "logits")


def yolo(image_size: int = 320, w: int = 32) -> onnx.ModelProto:
    """YOLOv8s-style: widths w·(1, 2, 4, 8, 16); C2f = 1×1 conv, Split in two, bottlenecks on
    the second half, Concat of all, 1×1 conv."""
    g = _G(2)

    def c2f(x, cin, cout, n, shortcut=True):
        y = g.conv(x, cin, cout, 1, act="silu")
        a, b = g.name("split_a"), g.name("split_b")
        g.nodes.append(helper.make_node("Split", [y, g.t("sp", np.array([cout // 2, cout // 2])).replace("sp", "sp")], [a, b], name=a + "/Split", axis=1))
        g.inits[-1] = numpy_helper.from_array(np.array([cout // 2, cout // 2], np.int64), g.inits[-1].name)
        parts, h = [a, b], b
        for _ in range(n):
            z = g.conv(g.conv(h, cout // 2, cout // 2, 3, act="silu"), cout // 2, cout // 2, 3, act="silu")
            h = g.node("Add", [h, z]) if shortcut else z
            parts.append(h)
        return g.conv(g.node("Concat", parts, axis=1), (2 + n) * cout // 2, cout, 1, act="silu")

    def sppf(x, c):
        y = g.conv(x, c, c // 2, 1, act="silu")
        pools = [y]
        for _ in range(3):
            pools.append(g.node("MaxPool", [pools[-1]], kernel_shape=[5, 5], pads=[2] * 4))
        return g.conv(g.node("Concat", pools, axis=1), 2 * c, c, 1, act="silu")

    def up(x):
        return g.node("Resize", [x, "", g.t("scales", np.array([1, 1, 2, 2]))], mode="nearest")

    x = g.conv("input", 3, w, 3, 2, act="silu")
    x = g.conv(x, w, 2 * w, 3, 2, act="silu")
    x = c2f(x, 2 * w, 2 * w, 1)
    x = g.conv(x, 2 * w, 4 * w, 3, 2, act="silu")
    p3 = c2f(x, 4 * w, 4 * w, 2)
    x = g.conv(p3, 4 * w, 8 * w, 3, 2, act="silu")
    p4 = c2f(x, 8 * w, 8 * w, 2)
    x = g.conv(p4, 8 * w, 16 * w, 3, 2, act="silu")
    p5 = sppf(c2f(x, 16 * w, 16 * w, 1), 16 * w)
    n4 = c2f(g.node("Concat", [up(p5), p4], axis=1), 24 * w, 8 * w, 1, shortcut=False)
    n3 = c2f(g.node("Concat", [up(n4), p3], axis=1), 12 * w, 4 * w, 1, shortcut=False)
    heads = []
    for feat, c in ((n3, 4 * w), (n4, 8 * w), (p5, 16 * w)):
        h = g.conv(g.conv(feat, c, 4 * w, 3, act="silu"), 4 * w, 4 * w, 3, act="silu")
        h = g.conv(h, 4 * w, 144, 1, act=None, bn=False)
        heads.append(g.node("Reshape", [h, g.t("shape", np.array([0, 144, -1]))]))
        g.inits[-1] = numpy_helper.from_array(np.array([0, 144, -1], np.int64), g.inits[-1].name)
    return g.model(["N", 3, image_size, image_size], g.node("Concat", heads, axis=2), "detections")


MODELS = {"resnet18": (lambda: resnet18(image_size=160), 160), "mobilenetv2": (lambda: mobilenetv2(160), 160), "yolo": (lambda: yolo(320), 320)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    print(f"onnxruntime {ort.__version__} CPU; interleaved rounds ({args.rounds}), medians; "
          "speed-up = original median / pruned median; eff = latency speed-up / MACs speed-up")
    print(f"{'model':<12} {'ratio':>5} {'batch':>5} {'thr':>3} │ {'MACs×':>6} {'lat× r1':>8} {'eff r1':>7} │ {'MACs×':>6} {'lat× r8':>8} {'eff r8':>7}")
    for name in args.models.split(","):
        build, size = MODELS[name]
        original = build()
        shape = {"input": [1, 3, size, size]}
        base_macs = stats.compute(model_io.load(original), shape).macs
        variants, macs = [], []
        for ratio in (0.3, 0.5):
            for round_to in (1, 8):
                model = model_io.load(original)
                Prune(ratio=ratio, round_to=round_to, criterion="l2").run(model, PassContext())
                variants.append(model_io.to_proto(model))
                macs.append(base_macs / stats.compute(model, shape).macs)
        for batch in (int(b) for b in args.batches.split(",")):
            feed = {"input": np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)}
            for threads in (int(t) for t in args.threads.split(",")):
                times = latency.measure([original, *variants], feed, rounds=args.rounds, threads=threads)
                base = times[0].median
                for k, ratio in enumerate((0.3, 0.5)):
                    cells = []
                    for j in (0, 1):
                        i = 2 * k + j
                        lat = base / times[1 + i].median
                        cells.append(f"{macs[i]:>6.2f} {lat:>8.2f} {lat / macs[i]:>7.2f}")
                    print(f"{name:<12} {ratio:>5.1f} {batch:>5} {threads:>3} │ {cells[0]} │ {cells[1]}", flush=True)


if __name__ == "__main__":
    main()
