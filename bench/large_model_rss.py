"""Peak memory of slimming a model over 2 GB (external data) against its weight bytes.

    python bench/large_model_rss.py [--gb 2.2] [--dir /tmp] [--keep]

Builds a MatMul+Relu stack with ``--gb`` GB of float32 weights (written layer by layer), then
runs each job in a fresh process (started from a small wrapper interpreter, so no parent's
memory is counted) and reads its peak RSS from ``wait4`` (``ru_maxrss``). Polling
``/proc/PID/status`` splits the peak into anonymous memory (heap: copies of weights) and
file-backed pages (memory-mapped weight files, which the kernel can drop under pressure).
Jobs: ``onnxslim in out --passes cleanup`` with and without validation, plain ``onnx.load`` +
``onnx.save``, and ``onnxsim``/``onnxoptimizer`` when they happen to be installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_large_model import measure_peak, write_large_model  # noqa: E402

ONNX_ROUND_TRIP = """
import sys, onnx
model = onnx.load(sys.argv[1])
onnx.save(model, sys.argv[2], save_as_external_data=True, location="out.onnx.data")
"""

ONNXOPTIMIZER = """
import sys, onnx, onnxoptimizer
model = onnx.load(sys.argv[1])
model = onnxoptimizer.optimize(model)
onnx.save(model, sys.argv[2], save_as_external_data=True, location="out.onnx.data")
"""


def jobs(model: Path, out: Path) -> list[tuple[str, list[str]]]:
    python = sys.executable
    result = [
        ("onnxslim --passes cleanup", [python, "-m", "onnxslim.cli", str(model), str(out), "--passes", "cleanup", "--quiet"]),
        (
            "onnxslim --passes cleanup --no-validate",
            [python, "-m", "onnxslim.cli", str(model), str(out), "--passes", "cleanup", "--no-validate", "--quiet"],
        ),
        ("onnx.load + onnx.save", [python, "-c", ONNX_ROUND_TRIP, str(model), str(out)]),
    ]
    if importlib.util.find_spec("onnxsim") is not None:
        result.append(("onnxsim (installed)", [python, "-m", "onnxsim", str(model), str(out), "--save-as-external-data"]))
    if importlib.util.find_spec("onnxoptimizer") is not None:
        result.append(("onnxoptimizer.optimize (installed)", [python, "-c", ONNXOPTIMIZER, str(model), str(out)]))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.2, help="weight size in GB (10^9 bytes; default 2.2)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where to build the model (needs ~3x --gb of disk)")
    parser.add_argument("--keep", action="store_true", help="keep the built model")
    parser.add_argument("--only", help="run only jobs whose name contains this")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="onnxslim-rss-", dir=args.dir))
    try:
        free = shutil.disk_usage(work).free
        if free < 3.2 * args.gb * 1e9:
            print(f"not enough disk in {work.parent}: {free / 1e9:.1f} GB free, need ~{3.2 * args.gb:.1f}", file=sys.stderr)
            return 1
        src_dir, out_dir = work / "in", work / "out"
        src_dir.mkdir()
        out_dir.mkdir()
        t0 = time.perf_counter()
        model = write_large_model(src_dir, int(args.gb * 1e9))
        print(f"built {model.layers} x MatMul[{model.width}x{model.width}] float32: {model.weight_bytes / 1e9:.3f} GB "
              f"of weights in {time.perf_counter() - t0:.0f} s")
        weights = model.weight_bytes
        header = f"{'job':42s} {'wall s':>7s} {'peak RSS GB':>12s} {'x weights':>10s} {'anon GB':>8s} {'x weights':>10s} {'file GB':>8s}"
        print(header)
        print("-" * len(header))
        for name, argv in jobs(model.path, out_dir / "out.onnx"):
            if args.only and args.only not in name:
                continue
            r = measure_peak(argv)
            for leftover in out_dir.iterdir():
                leftover.unlink() if leftover.is_file() else shutil.rmtree(leftover)
            line = (f"{name:42s} {r['seconds']:7.1f} {r['peak'] / 1e9:12.2f} {r['peak'] / weights:10.2f} "
                    f"{r['anon'] / 1e9:8.2f} {r['anon'] / weights:10.2f} {r['file'] / 1e9:8.2f}")
            error = r["stderr"].strip().splitlines()[-1][:120] if r["rc"] and r["stderr"].strip() else ""
            print(line + (f"  FAILED (exit {r['rc']}): {error}" if r["rc"] else ""), flush=True)
        print("peak RSS: ru_maxrss (exact); anon/file: polled every 10 ms (heap copies vs. mapped weight files)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
