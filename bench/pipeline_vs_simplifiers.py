"""onnxslim's default pipeline (``simplify``) against the ONNX simplifiers, side by side.

    python bench/pipeline_vs_simplifiers.py [model.onnx ...] [--repeat 3]
        [--onnxsim-python /tmp/peer-onnxsim/bin/python] [--onnxslim-python /tmp/peer-onnxslim/bin/python]
        [--baseline DIR] [--tools ours,OnnxSlim,onnxsim]

Per model and tool: nodes after (subgraphs included), CPU seconds of the whole process (user +
system, interpreter start-up and imports included), peak RSS, both as ratios to the faster /
leaner simplifier, peak RSS less 1.5x the model's weight bytes (``RSS-1.5W``, MiB: our target
is a fixed floor, the same for every model; each tool's peak on a one-node model, its
interpreter and libraries, is printed first), and the largest output difference to the input
model (onnxruntime, graph optimizations disabled, the same seeded inputs). Each tool runs in a
fresh subprocess per repeat, interleaved; medians are shown.

The simplifiers are not dependencies and PyPI's OnnxSlim has our import name: install each in its
own virtual environment (``python -m venv /tmp/peer-onnxsim && /tmp/peer-onnxsim/bin/pip install
onnxsim``; the same for ``onnxslim`` in /tmp/peer-onnxslim) and point the flags at them; a tool
whose interpreter is missing is left out. ``--baseline DIR`` adds a row for another source tree of
ours (e.g. ``git archive main | tar -x -C DIR``), run with this interpreter, for before/after
tables; ``--tools`` keeps only the named rows. Default models: the fixtures and, if fetched, the real
models of ../shared/corpus (in ~/.cache/onnxslim-corpus).

The first line says which ml_dtypes and onnx each interpreter has: ml_dtypes 0.7.0 alone adds
~1 s to every tool's start-up (onnxslim's requirements skip it; the peers' do not). To compare the
work itself on equal start-up, point the flags at copies of the peers' venvs with the same
ml_dtypes as ours.

Our source trees are byte-compiled first (``compileall``), as ``pip install`` does for the peers'
packages: with ``PYTHONDONTWRITEBYTECODE`` set, an editable checkout would otherwise compile every
module of ours from source in every run (~0.1 CPU-s), which no installed copy does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path.home() / ".cache" / "onnxslim-corpus"
#: Dynamic dims the model's own export cannot take at our defaults (Silero: 512-sample chunks).
SHAPES = {"silero_vad_op18_ifless.onnx": {"input": [1, 512]}}

RUNNER = r"""
import json, resource, sys
tool, src, dst, shapes = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
if tool == "ours baseline":  # its own passes too (the installed package maps onnxslim.passes to ours)
    import importlib.util, os
    import onnxslim
    where = os.path.join(os.getcwd(), "passes")
    spec = importlib.util.spec_from_file_location("onnxslim.passes", os.path.join(where, "__init__.py"), submodule_search_locations=[where])
    sys.modules["onnxslim.passes"] = module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
if tool.startswith("ours"):
    from onnxslim.cli import main
    args = [src, dst, "--quiet"] + [a for k, v in shapes.items() for a in ("--input-shape", k + "=" + "x".join(map(str, v)))]
    code = main(args + (["--no-validate"] if tool.endswith("no-validate") else []))
elif tool == "OnnxSlim":
    import onnx, onnxslim
    onnx.save(onnxslim.slim(onnx.load(src)), dst); code = 0
elif tool == "onnxsim":
    import onnx, onnxsim
    model, ok = onnxsim.simplify(onnx.load(src)); onnx.save(model, dst); code = 0 if ok else 1
u = resource.getrusage(resource.RUSAGE_SELF)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forking parent.
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"code": code, "cpu": u.ru_utime + u.ru_stime, "rss": hwm * 1024}))
"""


def count_nodes(graph) -> int:
    import onnx

    n = 0
    for node in graph.node:
        n += 1
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                n += count_nodes(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                n += sum(count_nodes(g) for g in a.graphs)
    return n


def max_difference(src: Path, out: Path) -> tuple[float, float]:
    """Largest |Δ| over the outputs, absolute and relative to the output's largest |reference|
    (onnxruntime, no graph optimizations, seeded inputs at the bench's shapes)."""
    from onnxslim import model_io, validation
    from onnxslim.inputs import InputConfig

    model = model_io.load_document(src).model
    if model is None:
        return float("nan"), float("nan")
    feeds = InputConfig(None, SHAPES.get(src.name), 1, 0).samples(model)
    ref = validation.run_model(model, feeds)
    new = validation.run_model(model_io.load_document(out).model, feeds)
    worst = worst_abs = 0.0
    for sample_ref, sample_new in zip(ref, new):
        if list(sample_ref) != list(sample_new):
            return float("inf"), float("inf")
        for name in sample_ref:
            a, b = np.asarray(sample_ref[name]), np.asarray(sample_new[name])
            if a.shape != b.shape:
                return float("inf"), float("inf")
            if a.dtype.kind in "fc":
                delta = float(np.max(np.abs(a - b))) if a.size else 0.0
                scale = max(float(np.max(np.abs(a))) if a.size else 0.0, 1e-12)
                worst, worst_abs = max(worst, delta / scale), max(worst_abs, delta)
            elif not np.array_equal(a, b):
                return float("inf"), float("inf")
    return worst_abs, worst


def default_models() -> list[Path]:
    fixtures = sorted((ROOT / "fixtures/models").glob("*.onnx"))
    return fixtures + sorted(CORPUS.glob("*.onnx"))


def weight_bytes(model: Path) -> int:
    from onnxslim import constants, model_io

    loaded = model_io.load_document(model).model
    return constants.weight_bytes(loaded) if loaded is not None else model.stat().st_size


def floor_model(directory: Path) -> Path:
    """A one-node model: a tool's peak RSS on it is its fixed floor (interpreter, libraries)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "floor",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    path = directory / "floor.onnx"
    onnx.save(model, path)
    return path


def measure(python: str, tool: str, model: Path, out: Path, baseline: Path | None = None) -> dict:
    shapes = json.dumps(SHAPES.get(model.name, {}))
    # ``python -c`` puts the working directory first on sys.path: it picks which tree of ours runs.
    cwd = (baseline if tool == "ours baseline" else ROOT) if tool.startswith("ours") else tempfile.gettempdir()
    proc = subprocess.run([python, "-c", RUNNER, tool, str(model), str(out), shapes], capture_output=True, text=True, cwd=cwd)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"code": proc.returncode or 1, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--onnxsim-python", default="/tmp/peer-onnxsim/bin/python")
    parser.add_argument("--onnxslim-python", default="/tmp/peer-onnxslim/bin/python")
    parser.add_argument("--baseline", type=Path, help="another source tree of ours, shown as 'ours baseline'")
    parser.add_argument("--tools", help="comma-separated subset: ours, 'ours --no-validate', 'ours baseline', OnnxSlim, onnxsim")
    args = parser.parse_args()
    import onnx

    tools = {"ours": sys.executable, "ours --no-validate": sys.executable}
    if args.baseline:
        tools["ours baseline"] = sys.executable
    for name, python in (("OnnxSlim", args.onnxslim_python), ("onnxsim", args.onnxsim_python)):
        if Path(python).exists():
            tools[name] = python
        else:
            print(f"({name} left out: {python} not found)")
    if args.tools:
        keep = [t.strip() for t in args.tools.split(",")]
        tools = {t: p for t, p in tools.items() if t in keep}
    peers = [t for t in tools if not t.startswith("ours")]
    for tree in {ROOT if t != "ours baseline" else args.baseline for t in tools if t.startswith("ours")}:
        folders = [str(tree / d) for d in ("onnxslim", "passes") if (tree / d).is_dir()]
        subprocess.run([sys.executable, "-m", "compileall", "-q", *folders], check=True, capture_output=True)
    # Start-up depends on the environment as much as on the tool (ml_dtypes 0.7.0, which onnx
    # imports, takes ~1 s to import; 0.6.0 ~0.1 s): say what each interpreter has.
    versions = {}
    for python in dict.fromkeys(tools.values()):
        probe = "import importlib.metadata as m; print(m.version('ml_dtypes'), m.version('onnx'))"
        versions[python] = subprocess.run([python, "-c", probe], capture_output=True, text=True).stdout.split()
    print("environments: " + "; ".join(
        f"{t}: ml_dtypes {v[0]}, onnx {v[1]}" if len(v) == 2 else f"{t}: ?"
        for t, v in ((t, versions[p]) for t, p in tools.items() if t != "ours --no-validate")
    ))
    print(
        f"{'model':<30} {'tool':<20} {'nodes':>11} {'CPU s':>7} {'CPU/best':>8} {'RSS MiB':>8} "
        f"{'RSS/best':>8} {'RSS-1.5W':>8} {'max |Δ|':>9} {'rel':>8}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tiny = floor_model(Path(tmp))
        floors = {}
        for tool, python in tools.items():
            runs = [measure(python, tool, tiny, Path(tmp) / "floor_out.onnx") for _ in range(args.repeat)]
            floors[tool] = statistics.median(r.get("rss", float("nan")) for r in runs)
        print("floor (peak RSS on a one-node model): " + ", ".join(f"{t} {f / 2**20:.0f} MiB" for t, f in floors.items()))
        for model in [m.resolve() for m in args.models] or default_models():
            nodes_in = count_nodes(onnx.load(model, load_external_data=False).graph)
            runs: dict[str, list[dict]] = {t: [] for t in tools}
            for _ in range(args.repeat):
                for tool, python in tools.items():  # interleaved
                    runs[tool].append(measure(python, tool, model, Path(tmp) / f"{tool.replace(' ', '_')}.onnx", args.baseline))
            results = {}
            for tool, rs in runs.items():
                ok = [r for r in rs if r.get("code") == 0]
                if not ok:
                    results[tool] = None
                    print(f"{model.name[:30]:<30} {tool:<20} failed: {rs[0].get('error')}")
                    continue
                out = Path(tmp) / f"{tool.replace(' ', '_')}.onnx"
                results[tool] = {
                    "cpu": statistics.median(r["cpu"] for r in ok),
                    "rss": statistics.median(r["rss"] for r in ok),
                    "nodes": count_nodes(onnx.load(out, load_external_data=False).graph),
                    "diff": max_difference(model, out),
                }
            best_cpu = min((results[t]["cpu"] for t in peers if results.get(t)), default=float("nan"))
            best_rss = min((results[t]["rss"] for t in peers if results.get(t)), default=float("nan"))
            weights = weight_bytes(model)
            for tool, r in results.items():
                if r is None:
                    continue
                nodes = f"{nodes_in}→{r['nodes']}"
                print(
                    f"{model.name[:30]:<30} {tool:<20} {nodes:>11} {r['cpu']:7.2f} "
                    f"{r['cpu'] / best_cpu:7.2f}× {r['rss'] / 2**20:8.0f} {r['rss'] / best_rss:7.2f}× "
                    f"{(r['rss'] - 1.5 * weights) / 2**20:8.0f} {r['diff'][0]:9.2e} {r['diff'][1]:8.1e}"
                )
            print()


if __name__ == "__main__":
    main()
