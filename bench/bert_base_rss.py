"""Peak memory of onnxslim on a BERT-base-shaped model (110M parameters, random weights).

    python bench/bert_base_rss.py [--dir /tmp] [--keep] [--passes "unstructured:sparsity=0.9,sparsify" ...]

Builds the model with onnx.helper (12 layers, hidden 768, FFN 3072, vocabulary 30,522: the
shapes of bert-base-uncased; single-head attention, which changes no weight shape), then runs
each pipeline in a fresh process (``tests.test_large_model.measure_peak``: ru_maxrss from wait4 of
a small wrapper) and prints its peak RSS against the weights' bytes. Needs ~1.5 GB of disk and,
per job, a few GB of memory: do not run it beside other memory-hungry jobs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_large_model import measure_peak  # noqa: E402

HIDDEN, FFN, LAYERS, VOCAB, POSITIONS = 768, 3072, 12, 30522, 512


def build(path: Path, seed: int = 0) -> int:
    """Write the model (weights inline, < 2 GB); return its weight bytes."""
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def weight(name: str, *shape: int) -> str:
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * 0.02).astype(np.float32), name))
        return name

    def const(name: str, array) -> str:
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(op: str, inputs: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def linear(x: str, name: str, k: int, n: int) -> str:
        return node("Add", [node("MatMul", [x, weight(f"{name}.weight", k, n)], f"{name}/mm"), weight(f"{name}.bias", n)], f"{name}/out")

    def layer_norm(x: str, name: str) -> str:
        return node("LayerNormalization", [x, const(f"{name}.gamma", np.ones(HIDDEN, np.float32)), const(f"{name}.beta", np.zeros(HIDDEN, np.float32))], f"{name}/out", axis=-1)

    x = node("Gather", [weight("embeddings.word", VOCAB, HIDDEN), "input_ids"], "emb/word")
    x = node("Add", [x, weight("embeddings.position", 1, 128, HIDDEN)], "emb/pos")
    x = layer_norm(x, "emb/ln")
    scale = const("attn.scale", np.array(1 / np.sqrt(HIDDEN), np.float32))
    for i in range(LAYERS):
        p = f"layer{i}"
        q, k, v = (linear(x, f"{p}.{n}", HIDDEN, HIDDEN) for n in ("query", "key", "value"))
        scores = node("Mul", [node("MatMul", [q, node("Transpose", [k], f"{p}/kT", perm=[0, 2, 1])], f"{p}/qk"), scale], f"{p}/scores")
        ctx = node("MatMul", [node("Softmax", [scores], f"{p}/probs", axis=-1), v], f"{p}/ctx")
        x = layer_norm(node("Add", [x, linear(ctx, f"{p}.attn_out", HIDDEN, HIDDEN)], f"{p}/res1"), f"{p}/ln1")
        h = node("Relu", [linear(x, f"{p}.ffn_in", HIDDEN, FFN)], f"{p}/act")
        x = layer_norm(node("Add", [x, linear(h, f"{p}.ffn_out", FFN, HIDDEN)], f"{p}/res2"), f"{p}/ln2")
    graph = helper.make_graph(
        nodes,
        "bert_base_shaped",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 128])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 128, HIDDEN])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, path)
    return sum(t.raw_data.__len__() for t in inits)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--passes", action="append", help="pipelines to measure (repeatable; extra flags after a space)")
    args = parser.parse_args()
    pipelines = args.passes or ["unstructured:sparsity=0.9,sparsify", "simplify"]
    work = Path(tempfile.mkdtemp(prefix="bert_base_rss.", dir=args.dir))
    try:
        model = work / "bert_base.onnx"
        weights = build(model)
        print(f"model: {model.stat().st_size / 1e6:.0f} MB file, {weights / 1e6:.0f} MB weights ({weights // 4 / 1e6:.0f}M parameters)")
        print(f"{'pipeline':<42} {'peak RSS MB':>12} {'× weights':>10} {'heap MB':>9} {'wall s':>8}")
        for passes in pipelines:
            out = work / "out.onnx"
            spec, *flags = passes.split()
            peak = measure_peak([sys.executable, "-m", "onnxslim.cli", str(model), str(out), "--quiet", "--passes", spec, *flags])
            print(
                f"{passes:<42} {peak['peak'] / 1e6:12.0f} {peak['peak'] / weights:9.2f}× "
                f"{peak.get('anon', 0) / 1e6:9.0f} {peak['seconds']:8.1f}"
                + ("" if peak['rc'] == 0 else f"  (exit {peak['rc']}: {peak['stderr'].strip().splitlines()[-1:]})")
            )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
