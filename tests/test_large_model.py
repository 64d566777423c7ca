"""A model over 2 GB with external data through load, ``cleanup`` with validation, and save.

Built in the test (about 2.2 GB of float32 weights, written layer by layer so they are never all
in memory) and deleted afterwards. Slow: run with ``pytest -m slow tests/test_large_model.py``.
Peak memory of the same job is measured by ``bench/large_model_rss.py``.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnxslim

WIDTH = 4096
DEFAULT_WEIGHT_BYTES = 2_200_000_000


@dataclasses.dataclass
class LargeModel:
    path: Path
    data_path: Path
    weight_bytes: int
    layers: int
    width: int

    def sample(self, seed: int = 0) -> dict[str, np.ndarray]:
        return {"x": np.random.default_rng(seed).standard_normal((2, self.width), dtype=np.float32)}


def write_large_model(directory: Path, weight_bytes: int = DEFAULT_WEIGHT_BYTES, width: int = WIDTH, seed: int = 0) -> LargeModel:
    """A MatMul+Relu stack holding ``weight_bytes`` (rounded to whole layers) of external float32.

    Each layer's weights are generated, appended to ``model.onnx.data`` and dropped before the
    next, and referenced from TensorProtos by offset, so building needs one layer of memory.
    It carries an Identity chain and a dead node, so ``cleanup`` has something to remove.
    """
    layer_bytes = width * width * 4
    layers = max(1, math.ceil(weight_bytes / layer_bytes))
    path = directory / "model.onnx"
    data_path = directory / "model.onnx.data"
    rng = np.random.default_rng(seed)
    scale = np.float32(math.sqrt(2.0 / width))  # keeps activations O(1) through the Relu stack
    initializers, nodes = [], []
    current = "x"
    with open(data_path, "wb") as data:
        for i in range(layers):
            weights = rng.standard_normal((width, width), dtype=np.float32)
            weights *= scale
            offset = data.tell()
            data.write(memoryview(weights).cast("B"))
            del weights
            tensor = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[width, width])
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(layer_bytes))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            initializers.append(tensor)
            nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"mm{i}"]))
            nodes.append(helper.make_node("Relu", [f"mm{i}"], [f"h{i}"]))
            current = f"h{i}"
    nodes += [
        helper.make_node("Identity", [current], ["y_mid"]),
        helper.make_node("Identity", ["y_mid"], ["y"]),
        helper.make_node("Neg", ["x"], ["unused"]),  # dead code
    ]
    graph = helper.make_graph(
        nodes,
        "large_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnxslim-test")
    model.ir_version = 10
    onnx.save(model, path)  # tensors already point at the data file: only the graph is written
    return LargeModel(path, data_path, layers * layer_bytes, layers, width)


def run_ort(path: Path, feeds: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


# Runs in a fresh small interpreter: a child's ru_maxrss starts from the RSS of the process that
# forked it (exec keeps the old mm's high-water mark), so measuring straight from a big pytest
# process would count pytest's own memory. The job's anon/file split is polled from /proc.
_MEASURE = r"""
import json, os, subprocess, sys, threading, time
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
peaks = {"RssAnon": 0, "RssFile": 0}
done = threading.Event()
def poll():
    while not done.is_set():
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                for line in f:
                    key, _, rest = line.partition(":")
                    if key in peaks:
                        peaks[key] = max(peaks[key], int(rest.split()[0]) * 1024)
        except (OSError, ValueError):
            return
        time.sleep(0.01)
start = time.perf_counter()
poller = threading.Thread(target=poll, daemon=True)
poller.start()
stderr = proc.stderr.read().decode(errors="replace")
_, status, usage = os.wait4(proc.pid, 0)
done.set()
poller.join()
print(json.dumps({"rc": os.waitstatus_to_exitcode(status), "seconds": time.perf_counter() - start,
                  "peak": usage.ru_maxrss * 1024, "anon": peaks["RssAnon"], "file": peaks["RssFile"],
                  "stderr": stderr[-4000:]}))
"""


def measure_peak(argv: list[str]) -> dict:
    """Run ``argv``; its exit status, wall seconds, peak RSS (``ru_maxrss``, bytes) and the
    polled peaks of its anonymous (heap) and file-backed (memory-mapped) parts."""
    import json

    out = subprocess.run([sys.executable, "-S", "-c", _MEASURE, *argv], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def large_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("large")
    model = write_large_model(directory)
    yield model
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def out_dir(tmp_path):
    """A directory for outputs of gigabytes, emptied afterwards (pytest keeps old tmp dirs)."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.slow
def test_large_model_cleanup_round_trip(large_model, out_dir):
    assert large_model.weight_bytes > 2**31  # over protobuf's 2 GiB limit
    feeds = large_model.sample()
    result = onnxslim.optimize(large_model.path, passes="cleanup", inputs=[feeds])
    row = result.report.passes[0]
    assert row.status == "applied", row.reason
    assert row.details["nodes_removed"] == 3
    assert all(m.max_abs == 0.0 for m in row.metrics)
    assert result.report.final_checks == {"onnx_checker": "ok", "onnxruntime_default_level": "ok"}
    out = out_dir / "out.onnx"
    files = result.save(out)
    assert sorted(f.name for f in files) == ["out.onnx", "out.onnx.data"]  # external data chosen automatically
    assert out.stat().st_size < 1_000_000
    assert (out_dir / "out.onnx.data").stat().st_size >= large_model.weight_bytes
    del result
    expected = run_ort(large_model.path, feeds)
    got = run_ort(out, feeds)
    np.testing.assert_array_equal(got[0], expected[0])
    assert np.isfinite(got[0]).all() and np.abs(got[0]).max() > 0


@pytest.mark.slow
def test_large_model_cli_peak_rss(large_model, out_dir):
    """The CLI job (load, cleanup, validation, save) peaks well under 2x the weight bytes."""
    out = out_dir / "out.onnx"
    argv = [sys.executable, "-m", "onnxslim.cli", str(large_model.path), str(out), "--passes", "cleanup", "--quiet"]
    job = measure_peak(argv)
    assert job["rc"] == 0, job["stderr"]
    assert out.exists() and (out_dir / "out.onnx.data").exists()
    ratio = job["peak"] / large_model.weight_bytes
    assert ratio < 1.5, f"peak RSS {job['peak'] / 1e9:.2f} GB for {large_model.weight_bytes / 1e9:.2f} GB of weights"
    # Heap copies of the weights (not memory-mapped pages the kernel can drop) stay small.
    assert job["anon"] < 0.25 * large_model.weight_bytes, f"anonymous RSS {job['anon'] / 1e9:.2f} GB"


def _reference_session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def medium_model(tmp_path_factory):
    """32 MiB of weights: above the in-memory session limit, so sessions share the weights."""
    return write_large_model(tmp_path_factory.mktemp("medium"), 32 * 2**20, width=1024)


def test_session_shares_weights_and_matches(medium_model):
    from onnxslim import model_io, runtime

    model = model_io.load(medium_model.path)
    feeds = medium_model.sample()
    expected = _reference_session(medium_model.path).run(None, feeds)[0]
    hidden = model.graph.node(1).outputs[0]  # the first Relu's output
    for level in ("disabled", "default"):
        with runtime.session(model, level, extra_outputs=[hidden]) as sess:
            assert [i.name for i in sess.get_inputs()] == ["x"]  # weights are initializers, not inputs
            assert len(sess._onnxslim_shared_weights[0]) == medium_model.layers
            got = runtime.run(sess, feeds)
        if level == "disabled":
            np.testing.assert_array_equal(got["y"], expected)
        else:  # onnxruntime's fusions may sum in another order
            np.testing.assert_allclose(got["y"], expected, rtol=1e-4, atol=1e-5)
        assert got[hidden.name].shape == (2, medium_model.width)
    assert [v.name for v in model.graph.outputs] == ["y"]
    assert all(not v.is_graph_input() for v in model.graph.initializers.values())


def test_session_falls_back_when_a_weight_cannot_be_shared(medium_model):
    """A large initializer that is also a graph input (an overridable default) goes the file way."""
    from onnxslim import model_io, runtime

    proto = onnx.load(medium_model.path, load_external_data=False)
    proto.graph.input.append(helper.make_tensor_value_info("w0", TensorProto.FLOAT, [medium_model.width] * 2))
    path = medium_model.path.parent / "overridable.onnx"  # beside the data file it references
    onnx.save(proto, path)
    model = model_io.load(path)
    feeds = medium_model.sample()
    with runtime.session(model, "disabled") as sess:
        assert not hasattr(sess, "_onnxslim_shared_weights")
        got = runtime.run(sess, feeds)
    np.testing.assert_array_equal(got["y"], _reference_session(medium_model.path).run(None, feeds)[0])
