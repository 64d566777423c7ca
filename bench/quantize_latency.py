"""onnxruntime CPU latency and file size: float vs INT8 static (QDQ) vs INT8 dynamic vs pruned+INT8.

Models: the ResNet-18-shaped graph of ``bench/prune_latency.py`` at 224² (batch 1 and 8), a
BERT-style block (the builder of ``fixtures/models/bert_block.onnx`` at BERT-base width: 768,
12 heads, FFN 3072, one layer) at sequence length 128, and the MiniLM corpus model when it is
downloaded (batch 1 and 8). All variants of one model are timed side by side
in one run (:func:`onnxslim.latency.measure`: interleaved rounds, medians, default optimisation
level). Also prints which INT8 instructions this CPU has (VNNI decides how much INT8 gains).

Run: ``python bench/quantize_latency.py [--rounds 10] [--threads 1] [--models resnet,bert,minilm]``.
Not a unit test.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import onnxslim  # noqa: E402
from onnxslim import latency, model_io  # noqa: E402
from fixtures.models import bert_block  # noqa: E402
from prune_latency import resnet18  # noqa: E402

MINILM = Path.home() / ".cache" / "onnxslim-corpus" / "paraphrase_minilm_l3_v2.onnx"


def cpu_int8_features() -> str:
    try:
        flags = set(re.search(r"^flags\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M).group(1).split())
    except (OSError, AttributeError):
        return "unknown (no /proc/cpuinfo)"
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile"]
    return ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in wanted)


def image_feeds(batch: int, size: int, seed: int) -> dict:
    return {"input": np.random.default_rng(seed).normal(size=(batch, 3, size, size)).astype(np.float32)}


def token_feeds(batch: int, seq: int, seed: int, vocab: int = 1000) -> dict:
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(1, vocab, (batch, seq)).astype(np.int64), "attention_mask": np.ones((batch, seq), np.int64)}


def vocab_size(model) -> int:
    """Rows of the embedding table the input ids index."""
    for node in model.graph:
        if node.op_type == "Gather" and node.inputs[1].name == "input_ids" and node.inputs[0].const_value is not None:
            return node.inputs[0].const_value.shape[0]
    return 1000


def variants(model, calib: list[dict], prune: str, shapes: dict) -> dict:
    """float, INT8 static, INT8 dynamic, pruned+INT8 (the pruned model quantized the way that
    suits it: static for CNNs, dynamic for transformers)."""
    out = {"float": model_io.load(model)}
    for name, passes in (("int8 static", "quantize:mode=static"), ("int8 dynamic", "quantize:mode=dynamic")):
        t0 = time.perf_counter()
        result = onnxslim.optimize(model, passes, calibration=calib, input_shapes=shapes, validate=False, final_check=False)
        assert result.report.passes[-1].status == "applied", result.report.passes[-1].reason
        out[name] = result.model
        print(f"  {name}: {result.report.passes[-1].summary} ({time.perf_counter() - t0:.1f} s)")
    pruned = onnxslim.optimize(model, prune, input_shapes=shapes, validate=False, final_check=False)
    mode = "static" if "input" in calib[0] else "dynamic"
    both = onnxslim.optimize(pruned.model, f"quantize:mode={mode}", calibration=calib, input_shapes=shapes, validate=False, final_check=False)
    out[f"pruned+int8 {mode}"] = both.model
    print(f"  pruned+int8: {pruned.report.passes[-1].summary}; {both.report.passes[-1].summary}")
    return out


def table(title: str, models: dict, feeds_by_label: dict, rounds: int, threads: int) -> None:
    names = list(models)
    sizes = {n: len(model_io.to_bytes(m)) for n, m in models.items()}
    timings = {}
    for label, feeds in feeds_by_label.items():
        timings[label] = latency.measure([models[n] for n in names], feeds, rounds=rounds, threads=threads)
    print(f"\n{title} (onnxruntime CPU, {threads} thread(s), median of {rounds} interleaved rounds)")
    head = f"{'variant':<22}{'file bytes':>12}{'size':>7}" + "".join(f"{label + ' ms':>16}{'speed-up':>10}" for label in feeds_by_label)
    print(head)
    print("-" * len(head))
    for i, n in enumerate(names):
        row = f"{n:<22}{sizes[n]:>12,}{sizes[n] / sizes[names[0]]:>7.3f}"
        for label in feeds_by_label:
            t, base = timings[label][i], timings[label][0]
            row += f"{t.median * 1e3:>16.2f}{base.median / t.median:>9.2f}x"
        print(row)


def bench_resnet(args) -> None:
    size = args.image_size
    resnet = resnet18(image_size=size)
    calib = [image_feeds(1, size, seed) for seed in range(8)]
    print(f"ResNet-18-shaped, {size}²: quantizing")
    models = variants(resnet, calib, "prune:ratio=0.3:round_to=8", {"input": [1, 3, size, size]})
    table(f"ResNet-18-shaped {size}²", models, {"batch 1": image_feeds(1, size, 99), "batch 8": image_feeds(8, size, 98)},
          args.rounds, args.threads)


def bench_bert(args) -> None:
    shapes = {"input_ids": [1, 128], "attention_mask": [1, 128]}
    # The BERT block fixture's builder at BERT-base width (one layer) with 128 positions.
    bert = model_io.load(bert_block(vocab_size=1000, hidden=768, heads=12, ffn=3072, max_positions=128))
    vocab = vocab_size(bert)
    calib = [token_feeds(1, 128, seed, vocab) for seed in range(8)]
    print("\nBERT-style block, seq 128: quantizing")
    models = variants(bert, calib, "prune:ratio=0.3:round_to=8", shapes)
    table("BERT-style block, seq 128", models, {"batch 1": token_feeds(1, 128, 99, vocab), "batch 8": token_feeds(8, 128, 98, vocab)}, args.rounds, args.threads)


def bench_minilm(args) -> None:
    shapes = {"input_ids": [1, 128], "attention_mask": [1, 128]}
    calib = [token_feeds(1, 128, seed, vocab=30000) for seed in range(8)]
    print("\nMiniLM-L3 (corpus), seq 128: quantizing")
    models = variants(model_io.load(MINILM), calib, "prune:ratio=0.3:round_to=8", shapes)
    table("MiniLM-L3, seq 128", models, {"batch 1": token_feeds(1, 128, 99, 30000), "batch 8": token_feeds(8, 128, 98, 30000)}, args.rounds, args.threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--models", default="resnet,bert,minilm", help="which of resnet,bert,minilm to run")
    args = parser.parse_args()
    which = set(args.models.split(","))
    print(f"CPU INT8 features: {cpu_int8_features()}")
    if "resnet" in which:
        bench_resnet(args)
    if "bert" in which:
        bench_bert(args)
    if "minilm" in which and MINILM.exists():
        bench_minilm(args)


if __name__ == "__main__":
    main()
