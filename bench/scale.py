"""Time per 1,000 nodes of a default run (``simplify`` with validation) at 1k, 10k and 100k nodes.

    python bench/scale.py [--sizes 1000,10000,100000] [--shapes chain,wide] [--repeat 1] [--profile N]
        [--passes cleanup]

Shapes: ``chain`` — x → (Add a constant, Relu) repeated (one small initializer per Add);
``wide`` — x multiplied by N/2 different initializers side by side, summed by a balanced tree of
Adds (N/2 initializers). Each row is one fresh process per model (imports excluded) timing
load, optimize (reference run, the pass, validation, statistics, final checks) and save, in wall
and CPU seconds (user+sys of the process, imports excluded: steadier than wall time on a shared
machine); the "per 1k" column divides the CPU seconds by the node count, and the last column is
that against the smallest size: a cost linear in nodes stays near 1.00×. ``--profile N`` prints the top cProfile
entries of one run at N nodes instead.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]

JOB = """
import json, sys, time
sys.path.insert(0, {root!r})
import onnxslim
from onnxslim import model_io
t0, c0 = time.perf_counter(), time.process_time()
result = onnxslim.optimize(sys.argv[1], sys.argv[3] if len(sys.argv) > 3 else None)
t1 = time.perf_counter()
result.save(sys.argv[2])
t2, c2 = time.perf_counter(), time.process_time()
row = result.report.passes[0]
print(json.dumps({{"optimize": t1 - t0, "save": t2 - t1, "pass": row.seconds, "validate": row.validate_seconds,
                  "status": row.status, "cpu": c2 - c0}}))
"""


def chain(n: int) -> onnx.ModelProto:
    """``n`` nodes: Add(x, c_i) then Relu, alternating; one [4] initializer per Add."""
    nodes, inits = [], []
    prev = "x"
    for i in range(n):
        out = f"v{i}"
        if i % 2 == 0:
            inits.append(numpy_helper.from_array(np.full(4, 0.001 * (i % 97), np.float32), f"c{i}"))
            nodes.append(helper.make_node("Add", [prev, f"c{i}"], [out], name=f"add{i}"))
        else:
            nodes.append(helper.make_node("Relu", [prev], [out], name=f"relu{i}"))
        prev = out
    nodes.append(helper.make_node("Identity", [prev], ["y"], name="out"))
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def wide(n: int) -> onnx.ModelProto:
    """About ``n`` nodes: ``n/2`` Mul nodes side by side, each with its own initializer, summed by a
    balanced tree of Adds. (Not one Concat of all: onnxruntime's Concat with N inputs costs
    quadratic time itself — 0.44 s at 5k inputs, 107 s at 20k — which would hide ours.)"""
    nodes, inits = [], []
    names = []
    for i in range(max(1, n // 2)):
        inits.append(numpy_helper.from_array(np.full(4, 1.0 + 0.001 * (i % 89), np.float32), f"w{i}"))
        nodes.append(helper.make_node("Mul", ["x", f"w{i}"], [f"m{i}"], name=f"mul{i}"))
        names.append(f"m{i}")
    k = 0
    while len(names) > 1:
        paired = []
        for i in range(0, len(names) - 1, 2):
            nodes.append(helper.make_node("Add", [names[i], names[i + 1]], [f"t{k}"], name=f"add{k}"))
            paired.append(f"t{k}")
            k += 1
        names = paired + names[len(names) - len(names) % 2:]
    nodes.append(helper.make_node("Identity", [names[0]], ["y"], name="out"))
    graph = helper.make_graph(
        nodes, "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


SHAPES = {"chain": chain, "wide": wide}


def run_one(model_path: Path, out_path: Path, passes: str | None = None) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", JOB.format(root=str(ROOT)), str(model_path), str(out_path), *([passes] if passes else [])],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"run failed on {model_path}: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--shapes", default="chain,wide")
    ap.add_argument("--repeat", type=int, default=1, help="runs per model (the fastest is kept)")
    ap.add_argument("--profile", type=int, help="profile one run of the first shape at this many nodes")
    ap.add_argument("--sort", default="cumulative", help="cProfile sort key for --profile (e.g. tottime)")
    ap.add_argument("--passes", help="pipeline to run (default: the default pipeline, as `onnxslim in out`)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="onnxslim-scale-") as tmp:
        tmp = Path(tmp)
        if args.profile:
            path = tmp / "m.onnx"
            onnx.save(SHAPES[args.shapes.split(",")[0]](args.profile), path)
            import cProfile
            import pstats

            sys.path.insert(0, str(ROOT))
            import onnxslim

            prof = cProfile.Profile()
            prof.enable()
            onnxslim.optimize(path, args.passes).save(tmp / "out.onnx")
            prof.disable()
            pstats.Stats(prof).sort_stats(args.sort).print_stats(35)
            return
        print(f"| shape | nodes | optimize s | (pass s) | (validate s) | save s | total s | CPU s | CPU per 1k nodes s | vs {sizes[0]:,} |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for shape in args.shapes.split(","):
            base = None
            for n in sizes:
                path = tmp / f"{shape}{n}.onnx"
                onnx.save(SHAPES[shape](n), path)
                runs = [run_one(path, tmp / "out.onnx", args.passes) for _ in range(args.repeat)]
                best = min(runs, key=lambda r: r["cpu"])
                total = best["optimize"] + best["save"]
                per_k = best["cpu"] / n * 1000
                base = base or per_k
                print(
                    f"| {shape} | {n:,} | {best['optimize']:.2f} | {best['pass']:.2f} | {best['validate']:.2f} | "
                    f"{best['save']:.2f} | {total:.2f} | {best['cpu']:.2f} | {per_k:.3f} | {per_k / base:.2f}× |",
                    flush=True,
                )
                path.unlink()


if __name__ == "__main__":
    main()
