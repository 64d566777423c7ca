"""``prune`` defaults with calibration data: held-out accuracy and cost of each criterion.

1. Accuracy on the digits test split (540 images) of the trained digits CNN (and the digits MLP
   when ``fixtures/models/digits_mlp.onnx`` exists) after ``prune:ratio=R``: ``l2`` without
   calibration, ``activation`` + reconstruction, ``obs`` + reconstruction and ``auto`` (the
   default with calibration), calibrated on the first C training images (one sample each).
2. Cost: CPU seconds (all threads) and wall seconds of one ``optimize`` run with validation, for
   plain ``prune`` (l2, no calibration) and for the calibrated criteria, on a ResNet-18-shaped
   graph at 112×112 with 16 calibration images.

Run ``python bench/prune_defaults.py [--skip-cost]``; run it with ``PYTHONPATH`` pointing at
another checkout's package to compare versions side by side. Not a unit test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import onnxslim  # noqa: E402
from onnxslim import model_io, runtime  # noqa: E402

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "models"
METHODS = {
    "l2 (no calibration)": ({"criterion": "l2"}, False),
    "activation+refit": ({"criterion": "activation"}, True),
    "obs+refit": ({"criterion": "obs", "reconstruct": True}, True),
    "auto with calibration": ({"criterion": "auto"}, True),
}


def accuracy(model, x, y) -> float:
    with runtime.session(model, "disabled") as sess:
        name = sess.get_inputs()[0].name
        logits = sess.run(None, {name: x})[0]
    return float((logits.argmax(axis=1) == y).mean())


def accuracy_table(ratios=(0.3, 0.5), calib_sizes=(100, 512), mlp: Path | None = None) -> None:
    data = dict(np.load(FIXTURES / "digits_data.npz"))
    models = {"digits CNN": (FIXTURES / "digits_cnn.onnx", (1, 8, 8))}
    mlp = mlp or FIXTURES / "digits_mlp.onnx"
    if mlp.exists():
        models["digits MLP"] = (mlp, (64,))
    print(f"onnxslim from {Path(onnxslim.__file__).parent}")
    print(f"{'model':<11} {'calib':>5} {'ratio':>5}  " + "  ".join(f"{m:>22}" for m in METHODS) + "   (test accuracy, 540 images)")
    for label, (file, shape) in models.items():
        x_test = data["x_test"].reshape(-1, *shape)
        base = accuracy(model_io.load(file), x_test, data["y_test"])
        print(f"{label:<11} {'':>5} {'0':>5}  original {base:.3f}")
        for n in calib_sizes:
            calib = [{"input": data["x_train"][i : i + 1].reshape(1, *shape)} for i in range(n)]
            for ratio in ratios:
                cells = []
                for options, calibrated in METHODS.values():
                    if not calibrated and n != calib_sizes[0]:
                        cells.append(f"{'(same)':>22}")
                        continue
                    res = onnxslim.optimize(file, [{"name": "prune", "ratio": ratio, **options}],
                                            calibration=calib if calibrated else None, validate=False)
                    row = res.report.passes[0]
                    rec = row.details.get("reconstruction")
                    refit = f" {sum(e['applied'] for e in rec['layers'])}/{len(rec['layers'])}" if rec else ""
                    cells.append(f"{accuracy(res.model, x_test, data['y_test']):>11.3f} {row.details['criterion'][:4]:>4}{refit:>6}")
                print(f"{label:<11} {n:>5} {ratio:>5}  " + "  ".join(cells), flush=True)


def cost_table(image_size: int = 112, n_calib: int = 16) -> None:
    from prune_latency import resnet18

    proto = resnet18(image_size=image_size)
    rng = np.random.default_rng(0)
    calib = [{"input": rng.standard_normal((1, 3, image_size, image_size), dtype=np.float32)} for _ in range(n_calib)]
    print(f"\nResNet-18 graph {image_size}x{image_size}, prune:ratio=0.3, {n_calib} calibration images, validation on 2 samples")
    print(f"{'criterion':<24} {'CPU s':>7} {'wall s':>7} {'× plain (CPU)':>14}")
    plain = None
    for name, (options, calibrated) in METHODS.items():
        cpu, wall = time.process_time(), time.perf_counter()
        onnxslim.optimize(proto, [{"name": "prune", "ratio": 0.3, **options}], calibration=calib if calibrated else None)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        plain = plain or cpu
        print(f"{name:<24} {cpu:>7.1f} {wall:>7.1f} {cpu / plain:>13.1f}×", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--mlp", type=Path, help="digits MLP model (default: fixtures/models/digits_mlp.onnx if present)")
    args = parser.parse_args()
    if not args.skip_accuracy:
        accuracy_table(mlp=args.mlp)
    if not args.skip_cost:
        cost_table()


if __name__ == "__main__":
    main()
