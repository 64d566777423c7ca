"""onnxruntime latency of a ResNet-18-shaped graph, original vs ``prune`` at 30% and 50%.

All models are measured side by side in one run: for every repeat each model runs once in turn
(interleaved, so machine noise hits them alike) and the median is reported, next to the ratio of
MACs. Run: ``python bench/prune_latency.py [--repeats 30] [--threads 0]``. Not a unit test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _resnet import resnet  # noqa: E402
from onnxslim import model_io, stats  # noqa: E402
from onnxslim.pass_api import PassContext  # noqa: E402
from onnxslim.passes.prune import Prune  # noqa: E402


def resnet18(seed: int = 0, image_size: int = 224) -> onnx.ModelProto:
    return resnet(18, image_size, seed)


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
