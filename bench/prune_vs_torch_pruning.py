"""Torch-Pruning vs onnxslim ``prune`` on the trained digits CNN, without fine-tuning.

The PyTorch model (fixtures/digits.py, state dict fixtures/models/digits_cnn.pt) is pruned with
Torch-Pruning's MagnitudePruner (L2 magnitude importance, DepGraph coupling, the classifier
left whole) at 30% and 50%; its ONNX export (fixtures/models/digits_cnn.onnx) is pruned with
onnxslim to the SAME kept channel counts per group (``layer_ratios`` taken from the pruned
torch model, since the two tools round a ratio differently), with ``l2`` alone and with the
data-driven criteria + reconstruction on 512 training images. Test accuracy on the 540 held-out
images, parameters and MACs side by side.

    python bench/prune_vs_torch_pruning.py [--ratios 0.3 0.5] [--calibration-images 512]

Needs torch and torch-pruning (``pip install torch-pruning --no-deps`` keeps the installed
torch); without them it says so and exits with status 2. Not a unit test.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures" / "models"
#: onnxslim methods: label -> prune options
ONNX_METHODS = {
    "l2": {"criterion": "l2", "reconstruct": False},
    "l2 + refit": {"criterion": "l2", "reconstruct": True},
    "activation + refit": {"criterion": "activation", "reconstruct": True},
    "obs + refit": {"criterion": "obs", "reconstruct": True},
}
#: ONNX group name (its first producer) -> the torch module whose output channels it is
GROUPS = {"/conv1/Conv": "conv1", "/block_conv1/Conv": "block_conv1", "/conv2/Conv": "conv2", "/conv3/Conv": "conv3"}


def _require_torch():
    try:
        import torch
        import torch_pruning
    except ImportError as exc:
        print(
            f"this benchmark needs torch and torch-pruning ({exc.name} is missing): "
            "pip install torch-pruning --no-deps (with torch installed)",
            file=sys.stderr,
        )
        sys.exit(2)
    return torch, torch_pruning


def torch_accuracy(torch, model, x, y) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def onnx_accuracy(model, x, y) -> float:
    from onnxslim import runtime

    with runtime.session(model, "disabled") as sess:
        logits = runtime.run(sess, {"input": x})["logits"]
    return float((logits.argmax(1) == y).mean())


def torch_prune(torch, tp, base, ratio: float):
    model = copy.deepcopy(base).eval()
    example = torch.zeros(1, 1, 8, 8)
    pruner = tp.pruner.MagnitudePruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=[model.fc],
    )
    start = time.perf_counter()
    pruner.step()
    seconds = time.perf_counter() - start
    macs, params = tp.utils.count_ops_and_params(model, example)
    return model, seconds, int(macs), int(params)


def onnx_stats(model) -> tuple[int, int]:
    """(MACs of one image in Conv/Gemm/MatMul, parameters)."""
    from onnxslim import stats

    s = stats.compute(model, {"input": [1, 1, 8, 8]}, None)
    return int(s.macs or 0), int(s.params)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--calibration-images", type=int, default=512)
    args = parser.parse_args(argv)
    torch, tp = _require_torch()
    sys.path.insert(0, str(ROOT))
    from fixtures.digits import DigitsCNN
    from onnxslim import model_io, optimize

    torch.set_num_threads(1)
    data = np.load(FIXTURES / "digits_data.npz")
    x_test, y_test = data["x_test"], data["y_test"]
    calib = data["x_train"][: args.calibration_images]
    calibration = [{"input": calib[i : i + 64]} for i in range(0, len(calib), 64)]
    base = DigitsCNN()
    base.load_state_dict(torch.load(FIXTURES / "digits_cnn.pt", weights_only=True))
    base.eval()
    onnx_base = model_io.load(FIXTURES / "digits_cnn.onnx")
    t_macs, t_params = (int(n) for n in tp.utils.count_ops_and_params(base, torch.zeros(1, 1, 8, 8)))
    o_macs, o_params = onnx_stats(onnx_base)
    full = "16/16/32/32"
    rows = [("-", "original (torch)", "torch", full, torch_accuracy(torch, base, x_test, y_test), t_params, t_macs, None)]
    rows.append(("-", "original (onnx)", "onnx", full, onnx_accuracy(onnx_base, x_test, y_test), o_params, o_macs, None))
    for ratio in args.ratios:
        pruned, seconds, macs, params = torch_prune(torch, tp, base, ratio)
        kept = {name: getattr(pruned, module).out_channels for name, module in GROUPS.items()}
        channels = "/".join(str(kept[n]) for n in GROUPS)
        acc = torch_accuracy(torch, pruned, x_test, y_test)
        rows.append((f"{ratio:.0%}", "Torch-Pruning L2", "torch", channels, acc, params, macs, seconds))
        sizes = {name: getattr(base, module).out_channels for name, module in GROUPS.items()}
        layer_ratios = {name: (sizes[name] - kept[name]) / sizes[name] for name in GROUPS}
        for label, options in ONNX_METHODS.items():
            start = time.perf_counter()
            result = optimize(
                FIXTURES / "digits_cnn.onnx",
                [{"name": "prune", "ratio": ratio, "layer_ratios": layer_ratios, **options}],
                calibration=calibration,
                validate=False,
            )
            seconds = time.perf_counter() - start
            details = result.report.passes[0].details
            got = {p["group"]: p["after"] for p in details["pruned"]}
            if got != kept:
                raise SystemExit(f"onnxslim kept {got}, Torch-Pruning {kept}")
            macs, params = onnx_stats(result.model)
            acc = onnx_accuracy(result.model, x_test, y_test)
            rows.append((f"{ratio:.0%}", f"onnxslim {label}", "onnx", channels, acc, params, macs, seconds))
    print(f"digits CNN, {len(x_test)} test images, no fine-tuning; onnxslim calibration: {len(calib)} training images")
    print("MACs: Torch-Pruning's counter (all layers) for torch rows, Conv/Gemm/MatMul for onnx rows; compare ratios")
    header = f"{'ratio':>5}  {'method':<29} {'channels kept':<13} {'accuracy':>8}  {'params':>13}  {'MACs':>15}"
    print(f"{header}  {'time':>6}")
    base_of = {"torch": (t_params, t_macs), "onnx": (o_params, o_macs)}
    for ratio, method, kind, channels, acc, params, macs, seconds in rows:
        bp, bm = base_of[kind]
        print(
            f"{ratio:>5}  {method:<29} {channels:<13} {acc:>8.2%}  {params:>6} ({params / bp:.2f}×)"
            f"  {macs:>7} ({macs / bm:.2f}×)  {f'{seconds:.2f}s' if seconds is not None else '-':>6}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
