"""CPU cost of ``prune`` with calibration data (the default: obs + reconstruction) against plain ``prune``.

Issue 11 asks the calibrated default to cost at most 5× the CPU time of plain ``prune`` (l2,
no calibration). For each model, one ``optimize`` run (with validation, as a user runs it) per
criterion, each in a fresh subprocess, timed as that process's CPU seconds (user + sys, all
threads: the machine is shared, so wall time says little) minus the same process's import and
model-loading time. Models: the ResNet fixture (32×32), a ResNet-18-shaped graph (112×112) and
a ResNet-50-shaped graph (bottleneck blocks, 160×160 by default) and, when the shared corpus is
present, the PP-OCR v4 text detector (real weights, 320×320); 16 random calibration images.

Run ``python bench/prune_cost.py [--models resnet,resnet18,resnet50,ppocr] [--repeats 1]``; run it
from another checkout's venv to compare versions side by side. Not a unit test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx

from _resnet import resnet

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "models"
PPOCR = Path.home() / ".cache" / "onnxslim-corpus" / "rapidocr_ppocrv4_det.onnx"
METHODS = {
    "plain (l2, no calibration)": ({"criterion": "l2"}, False),
    "obs+refit (default with calibration)": ({"criterion": "auto", "reconstruct": True}, True),
}


def _model(name: str, sizes: dict[str, int]) -> tuple[onnx.ModelProto, int]:
    if name == "resnet":
        return onnx.load(FIXTURES / "resnet.onnx"), 32
    if name == "ppocr":  # real weights (Paddle OCR detector), random images
        return onnx.load(PPOCR), sizes["ppocr"]
    depth = int(name.removeprefix("resnet"))
    return resnet(depth, sizes[name]), sizes[name]


def one_run(model_name: str, method: str, n_calib: int, sizes: dict[str, int], ratio: float) -> dict:
    """In a child process: import, build, then time one optimize run; CPU s of the run only."""
    import time

    import onnxslim

    proto, size = _model(model_name, sizes)
    options, calibrated = METHODS[method]
    rng = np.random.default_rng(0)
    feed = proto.graph.input[0].name
    calib = [{feed: rng.standard_normal((1, 3, size, size), dtype=np.float32)} for _ in range(n_calib)]
    cpu, wall = time.process_time(), time.perf_counter()
    res = onnxslim.optimize(proto, [{"name": "prune", "ratio": ratio, **options}], calibration=calib if calibrated else None)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    row = res.report.passes[0]
    rec = row.details.get("reconstruction") or {}
    return {"cpu": cpu, "wall": wall, "criterion": row.details.get("criterion"), "waves": rec.get("waves"),
            "refit": f"{sum(e['applied'] for e in rec.get('layers', []))}/{len(rec.get('layers', []))}" if rec else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet,resnet18,resnet50,ppocr", help="ppocr: the PP-OCR v4 detector from "
                        "~/.cache/onnxslim-corpus (skipped when absent)")
    parser.add_argument("--calibration", type=int, default=16)
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--resnet18-size", type=int, default=112)
    parser.add_argument("--resnet50-size", type=int, default=160)
    parser.add_argument("--ppocr-size", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=1, help="runs per cell, interleaved (the median is shown)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = {"resnet18": args.resnet18_size, "resnet34": args.resnet18_size, "resnet50": args.resnet50_size, "ppocr": args.ppocr_size}
    if args.child:
        model_name, method = json.loads(args.child)
        print(json.dumps(one_run(model_name, method, args.calibration, sizes, args.ratio)))
        return
    import onnxslim

    print(f"onnxslim from {Path(onnxslim.__file__).parent}; prune:ratio={args.ratio}, {args.calibration} calibration "
          f"images; CPU s = user+sys of the optimize call (median of {args.repeats}, criteria interleaved); "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}; load average {os.getloadavg()[0]:.1f}")
    print(f"{'model':<16} {'criterion':<38} {'CPU s':>7} {'wall s':>7} {'× plain':>8} {'waves':>6} {'refit':>7}")
    for model_name in args.models.split(","):
        if model_name == "ppocr" and not PPOCR.exists():
            print(f"{model_name}: {PPOCR} not found; skipped")
            continue
        runs: dict[str, list[dict]] = {method: [] for method in METHODS}
        for _ in range(args.repeats):  # interleaved: a load change hits both criteria alike
            for method in METHODS:
                cmd = [sys.executable, __file__, "--child", json.dumps([model_name, method]), "--calibration", str(args.calibration),
                       "--ratio", str(args.ratio), "--resnet18-size", str(args.resnet18_size), "--resnet50-size", str(args.resnet50_size),
                       "--ppocr-size", str(args.ppocr_size)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                runs[method].append(json.loads(out.strip().splitlines()[-1]))
        plain = None
        for method, done in runs.items():
            cpu, wall = float(np.median([r["cpu"] for r in done])), float(np.median([r["wall"] for r in done]))
            plain = plain or cpu
            size = 32 if model_name == "resnet" else sizes[model_name]
            print(f"{model_name + f' {size}²':<16} {method:<38} {cpu:>7.1f} {wall:>7.1f} "
                  f"{cpu / plain:>7.1f}× {done[0]['waves'] or '':>6} {done[0]['refit']:>7}", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
