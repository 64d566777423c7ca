"""File size, session creation and latency of sparse storage (``sparsify``) against dense.

Not a test: run ``python bench/sparse_storage.py [--repeat 30] [--threads 1]``.
For one 1024x1024 float32 MatMul weight and for a whole model (the BERT-block fixture scaled
to hidden 512 / FFN 2048) at 50/70/90% magnitude sparsity (``unstructured``, per layer), it
prints side by side: dense file bytes, file bytes with ``sparsify`` csr / coo / auto, the dense
file compressed with zlib (level 9), and the entropy bound (every initializer stored as its
zero-mask entropy plus its raw non-zero values). Then onnxruntime session-creation time and
inference latency of the csr and coo files against the dense one at the disabled, basic and
default levels, timings interleaved in one process, with the largest output difference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnxslim.passes.sparsify import Sparsify
from onnxslim.passes.unstructured import Unstructured

from fixtures import models as fx
from onnxslim import model_io
from onnxslim.pass_api import PassContext

SPARSITIES = (0.5, 0.7, 0.9)
LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "default": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def single_weight(size: int = 1024, seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((size, size)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "weight"], ["y"], name="matmul")],
        "single_weight",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", size])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", size])],
        [numpy_helper.from_array(w, "weight")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 10
    return proto, {"x": rng.standard_normal((16, size)).astype(np.float32)}


def whole_model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    proto = fx.bert_block(vocab_size=1000, hidden=512, heads=8, ffn=2048, max_positions=128)
    return proto, fx.random_inputs(proto, seed=0, batch=4, seq=64)


def prune(proto: onnx.ModelProto, sparsity: float) -> onnx.ModelProto:
    model = model_io.load(proto)
    Unstructured(sparsity=sparsity).run(model, PassContext())
    return model_io.to_proto(model)


def sparsify(proto: onnx.ModelProto, fmt: str) -> bytes:
    model = model_io.load(proto)
    Sparsify(format=fmt, min_sparsity=0.0).run(model, PassContext())
    return model_io.to_bytes(model)


def entropy_bound(proto: onnx.ModelProto) -> int:
    """Bytes if every initializer cost its mask entropy plus its raw non-zero values."""
    weights = sum(t.ByteSize() for t in proto.graph.initializer)
    bound = proto.ByteSize() - weights
    for t in proto.graph.initializer:
        a = numpy_helper.to_array(t)
        p = np.count_nonzero(a) / max(a.size, 1)
        h = 0.0 if p in (0.0, 1.0) else -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
        bound += a.size * h / 8 + np.count_nonzero(a) * a.dtype.itemsize
    return int(bound)


def session(data: bytes, level: str, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = LEVELS[level]
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def timings(
    files: dict[str, bytes], feeds, level: str, repeat: int, threads: int
) -> dict[str, tuple[float, float, dict]]:
    """Per file: median session creation ms, median latency ms, outputs; interleaved."""
    create = {k: [] for k in files}
    for _ in range(max(3, repeat // 5)):
        for name, data in files.items():
            t0 = time.perf_counter()
            session(data, level, threads)
            create[name].append((time.perf_counter() - t0) * 1e3)
    sessions = {k: session(v, level, threads) for k, v in files.items()}
    outputs = {k: s.run(None, feeds) for k, s in sessions.items()}  # also warms up
    latency = {k: [] for k in files}
    for _ in range(repeat):
        for name, sess in sessions.items():
            t0 = time.perf_counter()
            sess.run(None, feeds)
            latency[name].append((time.perf_counter() - t0) * 1e3)
    return {k: (statistics.median(create[k]), statistics.median(latency[k]), outputs[k]) for k in files}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30, help="inference runs per file and level")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    args = parser.parse_args(argv)

    cases = {"1024x1024 weight": single_weight(), "bert 512/2048": whole_model()}
    storage_rows, runtime_rows, checks = [], [], []
    for case, (proto, feeds) in cases.items():
        for sparsity in SPARSITIES:
            dense_proto = prune(proto, sparsity)
            dense = dense_proto.SerializeToString()
            files = {"dense": dense, "csr": sparsify(dense_proto, "csr"), "coo": sparsify(dense_proto, "coo")}
            auto = sparsify(dense_proto, "auto")
            sizes = {
                "csr": len(files["csr"]),
                "coo": len(files["coo"]),
                "auto": len(auto),
                "zlib": len(zlib.compress(dense, 9)),
                "entropy": entropy_bound(dense_proto),
            }
            storage_rows.append((case, sparsity, len(dense), sizes))
            checks.append((case, sparsity, len(dense), sizes))
            for level in LEVELS:
                result = timings(files, feeds, level, args.repeat, args.threads)
                ref = result["dense"][2]
                for fmt in ("csr", "coo"):
                    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(ref, result[fmt][2]))
                    runtime_rows.append((case, sparsity, level, fmt, result["dense"][:2], result[fmt][:2], diff))

    print("\nFile bytes (ratio to the dense file)")
    print(
        f"{'case':18} {'zeros':>5} {'dense':>10} {'csr':>17} {'coo':>17} {'auto':>17} {'zlib -9':>17} {'entropy bound':>17}"
    )
    for case, sparsity, dense, sizes in storage_rows:
        cells = " ".join(f"{sizes[k]:>10} {sizes[k] / dense:5.3f}x" for k in ("csr", "coo", "auto", "zlib", "entropy"))
        print(f"{case:18} {sparsity:5.0%} {dense:>10} {cells}")

    print(f"\nonnxruntime {ort.__version__} CPU, {args.threads} thread(s): session creation and latency (median ms)")
    print(
        f"{'case':18} {'zeros':>5} {'level':8} {'fmt':4} {'create dense':>12} {'create sparse':>13} {'run dense':>10} {'run sparse':>10} {'run ratio':>9} {'max|Δ|':>8}"
    )
    for case, sparsity, level, fmt, (cd, rd), (cs, rs), diff in runtime_rows:
        print(
            f"{case:18} {sparsity:5.0%} {level:8} {fmt:4} {cd:12.2f} {cs:13.2f} {rd:10.3f} {rs:10.3f} {rs / rd:8.2f}x {diff:8.1e}"
        )

    print("\nTargets")
    ok = True
    for case, sparsity, dense, sizes in checks:
        never_larger = all(sizes[k] <= dense for k in ("csr", "auto"))
        ok &= never_larger
        line = f"{case} {sparsity:.0%}: csr/auto never larger than dense: {'yes' if never_larger else 'NO'}"
        if case.startswith("1024") and sparsity == 0.9:
            met = sizes["csr"] / dense <= 0.16
            ok &= met
            line += f"; csr {sizes['csr'] / dense:.3f}x <= 0.16x: {'yes' if met else 'NO'}"
        print(line)
    exact = all(diff == 0 for *_, level, _fmt, _d, _s, diff in runtime_rows if level != "disabled")
    print(f"outputs identical to dense at basic/default: {'yes' if exact else 'NO'}")
    return 0 if ok and exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
