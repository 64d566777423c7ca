"""Latency-aware widths: measured onnxruntime speed-up divided by the MACs speed-up (``eff``) for
the ways ``prune`` can choose kept widths, side by side.

Three full-width graphs (random weights: latency does not depend on their values):
ResNet-18 (basic blocks, BN), MobileNetV2 (inverted residuals: 1×1 expand, depthwise 3×3,
1×1 project, ReLU6) and a YOLOv8s-style detector (Conv+SiLU, C2f blocks with Split/Concat,
SPPF, a top-down neck with Resize+Concat, three detection heads), at the input sizes they are
used at (224², 224², 320²; ``--size yolo=640``). Each is pruned with
``prune:ratio=R:criterion=l2:round_to=V`` at R = 0.3 and 0.5 for every ``--variants`` V
(``1``: widths as they fall, ``8``: the default, ``block``: onnxruntime's NCHWc channel block,
``measure``: per-group widths timed on the group's layers). For every batch size and thread
count the original and all pruned models are timed in interleaved rounds
(``onnxslim.latency``), medians. The issue's goal: eff = latency speed-up / MACs speed-up ≥ 0.85.

Clock (``--clock auto``): with one thread the calling thread's CPU time (onnxruntime computes on
it; a shared machine's load moves wall-clock medians by 2×, CPU time by a few percent), with two
threads wall time with idle threads sleeping (``--spin off``, the default here; ``--spin on`` is
onnxruntime's default): on a 2-core machine shared by ~20 runnable processes, spinning threads
burn the slices the working thread needs, which costs a short (pruned) model relatively more —
measured on ResNet-18@224 batch 8 at ratio 0.5, eff 0.64 spinning vs 0.83 sleeping, with the
threads' CPU time at 0.90. On such a machine even interleaved wall medians of two identical models
differ by up to 0.35 in eff; ``--wall-stat p10`` compares the 10th percentiles instead (the calls
the load left alone): ResNet-18's three identical models at ratio 0.5 then agreed within 0.02,
MobileNetV2's two identical ones (``block`` and ``measure`` at 0.5) still differed by up to 0.14. ``--profile`` prints, per model, the share of onnxruntime's node time in
dense convs, depthwise convs, layout reorders and the rest (from onnxruntime's profiler).

Run: ``python bench/prune_widths.py [--rounds 15] [--models resnet18,mobilenetv2,yolo]
[--variants 8,block,measure] [--size yolo=640] [--wall-stat p10] [--profile]``. Not a unit test.
"""

from __future__ import annotations

import argparse
import math
import os
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


def mobilenetv2(image_size: int = 160, width: float = 1.0) -> onnx.ModelProto:
    """MobileNetV2; ``width`` < 1 builds the architecture *designed* at that width multiplier
    (every width scaled, rounded to a multiple of 8 as in the paper, the last conv included)."""
    g = _G(1)
    scaled = (lambda c: c) if width == 1.0 else (lambda c: max(8, int(c * width / 8 + 0.5) * 8))
    x = g.conv("input", 3, scaled(32), 3, 2, act="relu6")
    cin = scaled(32)
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        c = scaled(c)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = g.conv(x, cin, hidden, 1, act="relu6") if t != 1 else x
            y = g.conv(y, hidden, hidden, 3, stride, group=hidden, act="relu6")
            y = g.conv(y, hidden, c, 1, act=None)
            x = g.node("Add", [x, y]) if stride == 1 and cin == c else y
            cin = c
    last = scaled(1280)
    x = g.conv(x, cin, last, 1, act="relu6")
    x = g.node("Flatten", [g.node("GlobalAveragePool", [x])])
    x = g.node("Gemm", [x, g.t("fc", g.rng.normal(0, 0.03, (1000, last))), g.t("fcb", np.zeros(1000))], transB=1)
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


MODELS = {"resnet18": lambda size: resnet18(image_size=size), "mobilenetv2": mobilenetv2, "yolo": yolo}
SIZES = {"resnet18": 224, "mobilenetv2": 224, "yolo": 320}
RATIOS = (0.3, 0.5)


def _round_to(text: str):
    return int(text) if text.isdigit() else text


def pruned(original: onnx.ModelProto, ratio: float, round_to, shape: dict) -> tuple[onnx.ModelProto, float, list]:
    """The model pruned at ``ratio`` with ``round_to``, its MACs speed-up and prune's width details."""
    model = model_io.load(original)
    base = stats.compute(model, shape).macs
    result = Prune(ratio=ratio, round_to=round_to, criterion="l2").run(model, PassContext(input_shapes=shape))
    return model_io.to_proto(model), base / stats.compute(model, shape).macs, result.details.get("widths", [])


def profile_shares(model: onnx.ModelProto, feed: dict, threads: int, runs: int = 5) -> dict[str, float]:
    """Share of onnxruntime's node time by kind (dense conv, depthwise conv, reorder, other), from
    its profiler (``runs`` calls after a warm-up)."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "p")
        opts.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        opts.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        sess.run(None, feed)
        for _ in range(runs):
            sess.run(None, feed)
        events = json.load(open(sess.end_profiling()))
        optimized = onnx.load(opts.optimized_model_filepath)
    # onnxruntime fuses BN, activations and residual Adds into its (NCHWc) convs: a node's kind
    # is read from the optimized graph the profiler names
    grouped = {n.name for n in optimized.graph.node if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)}
    shares: dict[str, float] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        op, name = e["args"].get("op_name", ""), e["name"][: -len("_kernel_time")]
        if op in ("ReorderInput", "ReorderOutput"):
            kind = "reorder"
        elif op in ("Conv", "FusedConv", "NchwcConv"):
            kind = "depthwise conv" if name in grouped else "dense conv"
        elif op in ("Gemm", "MatMul"):
            kind = "dense conv"
        else:
            kind = "other (elementwise, pools, concat, resize)"
        shares[kind] = shares.get(kind, 0.0) + e["dur"]
    total = sum(shares.values()) or 1.0
    return {k: v / total for k, v in sorted(shares.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--variants", default="8,block,measure", help="round_to values, comma-separated")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--ratios", default=",".join(map(str, RATIOS)))
    parser.add_argument("--size", action="append", default=[], metavar="MODEL=N", help="input size override, e.g. yolo=640")
    parser.add_argument("--clock", choices=("auto", "wall"), default="auto", help="auto: CPU time with 1 thread, wall with more")
    parser.add_argument("--spin", choices=("on", "off"), default="off",
                        help="onnxruntime's idle intra-op threads spin (its default) or sleep (default here: see the docstring)")
    parser.add_argument("--wall-stat", choices=("median", "p10"), default="median",
                        help="statistic of wall-clock cells (2 threads): p10 = 10th percentile, the calls the machine's load left alone")
    parser.add_argument("--designed", action="store_true",
                        help="MobileNetV2: also time the architecture designed at width ×(1−ratio) (the paper's width multiplier), "
                             "a reference for what that width can reach at all")
    parser.add_argument("--profile", action="store_true", help="print where onnxruntime's time goes (original and pruned)")
    args = parser.parse_args()
    variants = [_round_to(v) for v in args.variants.split(",")]
    ratios = [float(r) for r in args.ratios.split(",")]
    sizes = {**SIZES, **{k: int(v) for k, v in (s.split("=") for s in args.size)}}
    print(f"onnxruntime {ort.__version__} CPU; interleaved rounds ({args.rounds}), medians (wall cells: {args.wall_stat}); spinning {args.spin}; "
          "speed-up = original median / pruned median; eff = latency speed-up / MACs speed-up")
    head = " │ ".join(f"{'MACs×':>6} {'lat×':>6} {'eff':>5}" for _ in variants)
    names = " │ ".join(f"{'round_to=' + str(v):^19}" for v in variants)
    print(f"{'':<16} {'':>5} {'':>5} {'':>3} {'':>5} │ {names}")
    print(f"{'model':<16} {'ratio':>5} {'batch':>5} {'thr':>3} {'clock':>5} │ {head}")
    for name in args.models.split(","):
        size = sizes[name]
        original = MODELS[name](size)
        shape = {"input": [1, 3, size, size]}
        models = {(r, v): pruned(original, r, v, shape) for r in ratios for v in variants}
        if args.designed and name == "mobilenetv2":
            base_macs = stats.compute(model_io.load(original), shape).macs
            for r in ratios:
                designed = mobilenetv2(size, width=1 - r)
                models[(r, "designed")] = (designed, base_macs / stats.compute(model_io.load(designed), shape).macs, [])
        keys = list(models)
        for batch in (int(b) for b in args.batches.split(",")):
            feed = {"input": np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)}
            for threads in (int(t) for t in args.threads.split(",")):
                clock = "cpu" if args.clock == "auto" and threads == 1 else "wall"
                times = latency.measure([original, *(models[k][0] for k in keys)], feed, rounds=args.rounds, threads=threads, clock=clock,
                                       spinning=args.spin == "on")
                stat = (lambda t: t.low) if clock == "wall" and args.wall_stat == "p10" else (lambda t: t.median)
                base = stat(times[0])
                for r in ratios:
                    cells = []
                    for v in variants:
                        i = keys.index((r, v))
                        lat, macs = base / stat(times[1 + i]), models[(r, v)][1]
                        cells.append(f"{macs:>6.2f} {lat:>6.2f} {lat / macs:>5.2f}")
                    if (r, "designed") in models:
                        i = keys.index((r, "designed"))
                        lat, macs = base / stat(times[1 + i]), models[(r, "designed")][1]
                        cells.append(f"designed ×{1 - r:.1f}: {macs:>5.2f} {lat:>5.2f} {lat / macs:>5.2f}")
                    label = clock if clock == "cpu" or args.wall_stat == "median" else "p10"
                    print(f"{name + '@' + str(size):<16} {r:>5.1f} {batch:>5} {threads:>3} {label:>5} │ {' │ '.join(cells)}  load {os.getloadavg()[0]:.1f}",
                          flush=True)
        if args.profile:
            feed = {"input": np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)}
            for label, model in [("original", original)] + [(f"r{r} round_to={v}", models[(r, v)][0]) for r in ratios for v in variants]:
                shares = profile_shares(model, feed, threads=1)
                print(f"  profile {name} {label:<22} " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items()), flush=True)


if __name__ == "__main__":
    main()
