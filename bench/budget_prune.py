"""``prune:target=budget`` / ``target=latency`` on trained models with real data, side by side.

Digits CNN and MLP (calibration: the training split, a quarter of it held out by onnxslim for
the budget check; accuracy on the test split, which the search never sees), the MobileNetV3-style
digits classifier against uniform ``ratio`` pruning at the same MACs, MiniLM with
``--metric-outputs`` on the sentence embedding, and a latency target on the ResNet-style fixture.

    python bench/budget_prune.py [cnn mlp mobilenet minilm latency]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from onnxslim import model_io, optimize, runtime

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "fixtures" / "models"
CORPUS = Path.home() / ".cache" / "onnxslim-corpus"


def digits(flat: bool = False):
    d = dict(np.load(MODELS / "digits_data.npz"))
    if flat:
        d = {k: (v.reshape(len(v), 64) if k.startswith("x") else v) for k, v in d.items()}
    return d


def accuracy(model, x, y) -> float:
    with runtime.session(model, "disabled") as sess:
        logits = runtime.run(sess, {"input": x})["logits"]
    return float((logits.argmax(1) == y).mean())


def calibration(x, batch=64):
    return [{"input": x[i : i + batch]} for i in range(0, len(x) - batch + 1, batch)]


def show(row) -> None:
    for note in row.notes:
        if note.startswith(("sensitivity:", "chosen", "sensitivity of", "allocation candidates")):
            print(note)


def budget_digits(name: str, file: str, flat: bool, agreement: float = 0.99) -> dict:
    d = digits(flat)
    original = model_io.load(MODELS / file)
    t0 = time.perf_counter()
    res = optimize(MODELS / file, "prune:target=budget", calibration=calibration(d["x_train"]), min_agreement=agreement)
    seconds = time.perf_counter() - t0
    row = res.report.passes[0]
    print(f"\n== {name}: prune:target=budget --min-agreement {agreement} ({row.status}, {seconds:.1f} s)")
    show(row)
    before, after = res.report.before, row.stats
    out = {
        "model": name,
        "acc_before": accuracy(original, d["x_test"], d["y_test"]),
        "acc_after": accuracy(res.model, d["x_test"], d["y_test"]),
        "macs_removed": 1 - after.macs / before.macs,
        "params_removed": 1 - after.params / before.params,
        "seconds": seconds,
    }
    print(
        f"{name}: test accuracy {out['acc_before']:.4f} → {out['acc_after']:.4f} "
        f"({100 * (out['acc_after'] - out['acc_before']):+.2f} points); MACs removed {out['macs_removed']:.1%}, "
        f"weights removed {out['params_removed']:.1%}"
    )
    return out


def test_scores(model, reference, x, y) -> tuple[float, float, float]:
    """Test accuracy, top-1 agreement with the original and mean softmax KL from it (the last
    two are less noisy than accuracy on 540 images: they count every changed decision)."""
    from onnxslim.sensitivity import softmax_kl

    with runtime.session(model, "disabled") as sess:
        logits = runtime.run(sess, {"input": x})["logits"]
    return float((logits.argmax(1) == y).mean()), float((logits.argmax(1) == reference.argmax(1)).mean()), softmax_kl([reference], [logits])


def uniform_bracket(file, calib, keep: float) -> list[float]:
    """The uniform ratios whose MACs bracket ``keep`` (fraction of MACs kept): the last one
    keeping more and the first keeping at most as much (widths are rounded, so MACs move in steps)."""
    def kept(ratio):
        p = optimize(file, f"prune:ratio={ratio:.4f}:dry_run=true", calibration=calib, validate=False).report.passes[0].details["predicted"]
        return p["macs_after"] / p["macs_before"]

    lo, hi = 0.0, 0.9
    for _ in range(10):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kept(mid) > keep + 1e-9 else (lo, mid)
    return [lo, hi] if lo > 0 else [hi]


def mobilenet(agreements=(0.99, 0.98, 0.97)) -> None:
    """Budget allocation against uniform ``ratio`` at the same MACs: same calibration data, same
    criterion (the default) and the same reconstruction; judged on the test split."""
    d = digits()
    file = MODELS / "mobilenetv3_digits.onnx"
    original = model_io.load(file)
    x, y = d["x_test"], d["y_test"]
    with runtime.session(original, "disabled") as sess:
        reference = runtime.run(sess, {"input": x})["logits"]
    calib = calibration(d["x_train"])
    rows = [("original", *test_scores(original, reference, x, y), 1.0, 0.0)]
    for agreement in agreements:
        t0 = time.perf_counter()
        res = optimize(file, "prune:target=budget", calibration=calib, min_agreement=agreement)
        row = res.report.passes[0]
        show(row)
        keep = row.stats.macs / res.report.before.macs
        chosen = row.details["allocation"]["path"]
        rows.append((f"budget {agreement} ({chosen} path)", *test_scores(res.model, reference, x, y), keep, time.perf_counter() - t0))
        for ratio in uniform_bracket(file, calib, keep):
            t0 = time.perf_counter()
            u = optimize(file, f"prune:ratio={ratio:.4f}", calibration=calib, validate=False)
            ukeep = u.report.passes[0].stats.macs / u.report.before.macs
            rows.append((f"  uniform ratio={ratio:.3f}", *test_scores(u.model, reference, x, y), ukeep, time.perf_counter() - t0))
    print("\n== MobileNetV3-style digits: budget allocation vs uniform ratio at the same MACs (test split, 540 images)")
    print(f"{'method':<32} {'test acc':>9} {'agree':>7} {'KL':>8} {'MACs kept':>10} {'time s':>7}")
    for name, acc, agree, kl, keep, s in rows:
        print(f"{name:<32} {acc:>9.4f} {agree:>7.4f} {kl:>8.4f} {keep:>10.3f} {s:>7.1f}")


def minilm() -> None:
    path = CORPUS / "paraphrase_minilm_l3_v2.onnx"
    if not path.exists():
        print("MiniLM not in the corpus; skipped")
        return
    rng = np.random.default_rng(0)

    def sentences(n):  # random token ids of realistic lengths (no tokenizer offline)
        out = []
        for _ in range(n):
            length = int(rng.integers(8, 33))
            ids = np.concatenate([[101], rng.integers(1000, 30000, length - 2), [102]]).astype(np.int64)[None]
            out.append({"input_ids": ids, "attention_mask": np.ones_like(ids)})
        return out

    calib, held = sentences(48), sentences(24)
    t0 = time.perf_counter()
    res = optimize(path, "prune:target=budget", calibration=calib, inputs=held, min_cosine=0.99, metric_outputs=["461"])
    row = res.report.passes[0]
    print(f"\n== MiniLM: prune:target=budget --min-cosine 0.99 --metric-outputs 461 ({row.status}, {time.perf_counter() - t0:.1f} s)")
    show(row)
    cos = next(m.cosine for m in row.metrics if m.name == "461")
    print(f"MiniLM: held-out embedding cosine {cos:.4f}; MACs removed {1 - row.stats.macs / res.report.before.macs:.1%}, "
          f"weights removed {1 - row.stats.params / res.report.before.params:.1%}")


def latency_target() -> None:
    from onnxslim import latency

    file = MODELS / "resnet.onnx"
    t0 = time.perf_counter()
    res = optimize(file, "prune:target=latency:speedup=1.5:round_to=8", samples=2)
    row = res.report.passes[0]
    original = model_io.load(file)
    feeds = {i.name: np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32) for i in original.graph.inputs}
    measured = latency.speedup(original, res.model, feeds, rounds=40)
    print(f"\n== ResNet-style: prune:target=latency:speedup=1.5:round_to=8 ({row.status}, {time.perf_counter() - t0:.1f} s)")
    print(f"search's last probes: {[round(p.get('speedup', 0), 2) for p in row.details['allocation']['probes']]}")
    print(f"re-measured speed-up {measured:.2f}x (40 interleaved rounds, medians); MACs kept {row.stats.macs / res.report.before.macs:.3f}; "
          f"cosine {row.min_cosine:.4f}")


def main(argv) -> int:
    which = set(argv) or {"cnn", "mlp", "mobilenet", "minilm", "latency"}
    results = []
    if "cnn" in which:
        results.append(budget_digits("digits CNN", "digits_cnn.onnx", False))
    if "mlp" in which:
        results.append(budget_digits("digits MLP 64-256-128-10", "digits_mlp.onnx", True))
    if results:
        print(f"\n{'model':<26} {'acc before':>10} {'acc after':>10} {'Δ points':>9} {'MACs removed':>13} {'weights removed':>16} {'time s':>7}")
        for r in results:
            print(f"{r['model']:<26} {r['acc_before']:>10.4f} {r['acc_after']:>10.4f} {100 * (r['acc_after'] - r['acc_before']):>+9.2f} "
                  f"{r['macs_removed']:>13.1%} {r['params_removed']:>16.1%} {r['seconds']:>7.1f}")
    if "mobilenet" in which:
        mobilenet()
    if "minilm" in which:
        minilm()
    if "latency" in which:
        latency_target()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
