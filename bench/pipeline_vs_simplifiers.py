"""Wall time and peak RSS of onnxslim against the common ONNX simplifiers, side by side.

    python bench/pipeline_vs_simplifiers.py [model.onnx ...] [--repeat 3]

Each tool runs in a fresh subprocess per repeat (interleaved, so machine noise hits all alike);
the table shows the median wall time, peak RSS, and ratios to onnxslim's default pipeline
(``cleanup``, with validation in onnxruntime after the pass). onnxsim and onnxoptimizer are
measured only if installed (they are not dependencies). Default models: the fixtures and, if
fetched, the real models from ../shared/corpus.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path.home() / ".cache" / "onnxslim-corpus"

RUNNER = r"""
import json, resource, sys, time
tool, src, dst = sys.argv[1:4]
t0 = time.perf_counter()
if tool == "onnxslim cleanup":
    from onnxslim.cli import main
    code = main([src, dst, "--quiet"])
elif tool == "onnxslim cleanup --no-validate":
    from onnxslim.cli import main
    code = main([src, dst, "--quiet", "--no-validate"])
elif tool == "onnxoptimizer":
    import onnx, onnxoptimizer
    onnx.save(onnxoptimizer.optimize(onnx.load(src)), dst); code = 0
elif tool == "onnxsim":
    import onnx, onnxsim
    model, ok = onnxsim.simplify(onnx.load(src)); onnx.save(model, dst); code = 0 if ok else 1
elif tool == "onnx load+save":
    import onnx
    onnx.save(onnx.load(src), dst); code = 0
wall = time.perf_counter() - t0
print(json.dumps({"code": code, "wall": wall, "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def available_tools() -> list[str]:
    tools = ["onnxslim cleanup", "onnxslim cleanup --no-validate", "onnx load+save"]
    for module, name in (("onnxoptimizer", "onnxoptimizer"), ("onnxsim", "onnxsim")):
        if subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0:
            tools.append(name)
    return tools


def default_models() -> list[Path]:
    models = [ROOT / "fixtures/models/resnet.onnx", ROOT / "fixtures/models/bert_block.onnx"]
    models += [p for p in (CORPUS / "rapidocr_ppocrv4_det.onnx", CORPUS / "paraphrase_minilm_l3_v2.onnx") if p.exists()]
    return models


def measure(tool: str, model: Path, tmp: Path) -> dict:
    out = tmp / "out.onnx"
    proc = subprocess.run([sys.executable, "-c", RUNNER, tool, str(model), str(out)], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0 or not proc.stdout.strip():
        return {"code": proc.returncode, "wall": float("nan"), "rss": float("nan"), "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    tools = available_tools()
    models = args.models or default_models()
    print(f"{'model':<28} {'tool':<32} {'wall s':>8} {'peak RSS MiB':>13} {'time ratio':>11} {'RSS ratio':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            runs: dict[str, list[dict]] = {t: [] for t in tools}
            for _ in range(args.repeat):
                for tool in tools:  # interleaved
                    runs[tool].append(measure(tool, model, Path(tmp)))
            med = {t: (statistics.median(r["wall"] for r in rs), statistics.median(r["rss"] for r in rs)) for t, rs in runs.items()}
            base_wall, base_rss = med["onnxslim cleanup"]
            size = model.stat().st_size / 2**20
            for tool in tools:
                wall, rss = med[tool]
                print(
                    f"{model.name[:20] + f' {size:.0f}MiB':<28} {tool:<32} {wall:8.3f} {rss / 2**20:13.1f} "
                    f"{wall / base_wall:10.2f}x {rss / base_rss:9.2f}x"
                )
            print()


if __name__ == "__main__":
    main()
