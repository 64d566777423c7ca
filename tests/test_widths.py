"""Latency-aware widths (``prune:round_to=measure|block``): the window, the choice on a measured
staircase, the layer models that are timed, the cache, and the pass end to end. Timings are
replaced by synthetic ones where a decision is checked (no timing thresholds in unit tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from fixtures import models as fx
from onnxslim import channels, inputs, latency, model_io, runtime, widths
from onnxslim.errors import UsageError
from onnxslim.latency import Timing
from onnxslim.pass_api import PassContext
from onnxslim.passes.prune import Prune


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXSLIM_CACHE_DIR", str(tmp_path / "cache"))


def test_window_never_removes_more_than_a_step_beyond_the_request():
    assert widths.window(64, 45, 16, 16) == [32, 36, 40, 44, 48]
    assert widths.window(512, 359, 16, 16) == [344, 348, 352, 356, 360, 364, 368]
    # a small group: the step is capped (fast_step), the top is the NCHWc block it is padded to
    assert widths.window(16, 8, 4, 16) == [4, 8, 12, 16]
    assert widths.window(24, 12, 4, 16) == [8, 12, 16]
    # never above the group, never below min_channels; a step of 1 still ends at the request
    assert widths.window(20, 19, 16, 16) == [4, 8, 12, 16, 20]
    assert widths.window(8, 2, 2, 16, min_channels=2) == [2, 4, 6, 8]
    assert widths.window(100, 50, 1, 1) == [49, 50]
    for size, keep, step in [(64, 45, 16), (96, 68, 16), (1280, 896, 16), (32, 23, 8)]:
        found = widths.window(size, keep, step, 16)
        assert min(found) >= keep - step and max(found) <= size


def test_blocked_windows_time_only_whole_blocks_from_one_block_up():
    # conv layers run in NCHWc blocks: 140 of 192 is padded to 144 and costs what 144 costs
    assert widths.window(192, 135, 16, 16, blocked=True) == [128, 144]
    assert widths.window(144, 101, 16, 16, blocked=True) == [96, 112]
    assert widths.window(32, 23, 8, 16, blocked=True) == [16, 32]
    assert widths.window(24, 12, 4, 16, blocked=True) == [8, 12, 16]  # below a block: other kernels, timed
    assert widths.window(20, 19, 16, 16, blocked=True) == [4, 8, 12, 16, 20]  # the group's size stays a candidate
    assert widths.window(192, 135, 16, 16) == [120, 124, 128, 132, 136, 140, 144]
    assert widths.window(192, 135, 16, 1, blocked=True) == [120, 124, 128, 132, 136, 140, 144]  # no blocks, no blocking


def test_measured_conv_widths_are_whole_blocks_whatever_the_noise(monkeypatch):
    block = 16
    monkeypatch.setattr(widths, "channel_block", lambda: block)
    monkeypatch.setattr(widths, "nchwc_block", lambda: block)

    def record(models, feeds, **kwargs):  # every candidate but the widest "measured" faster: noise
        return [Timing(1.0 if i < len(models) - 1 else 2.0, 0.0, 5) for i in range(len(models))]

    monkeypatch.setattr(widths.latency, "measure", record)
    model = model_io.load(fx.mobilenetv2(image_size=32))
    analysis = channels.analyze(model)
    kinds = {g.name: widths._all_convs(g) for g in analysis.groups}
    assert any(kinds.values()) and not all(kinds.values())  # the group feeding the Gemm is not blocked
    result = Prune(ratio=0.3, round_to="measure", criterion="l2").run(model, PassContext())
    entries = [e for e in result.details["widths"] if e["times_ms"]]
    assert entries
    for e in entries:
        candidates = [int(w) for w in e["times_ms"]]
        if kinds[e["group"]]:
            assert all(w < block or w % block == 0 or w == e["size"] for w in candidates), e
            assert e["chosen"] < block or e["chosen"] % block == 0 or e["chosen"] == e["size"]


def test_choose_keeps_the_staircase_width_nearest_the_request():
    stairs = {48: 6.0, 52: 11.0, 56: 11.0, 60: 11.1, 64: 11.0}  # measured shape: NCHWc blocks of 16
    assert widths.choose(stairs, 52) == 48  # 48 is 4 away, 64 is 12 away
    assert widths.choose(stairs, 58) == 64  # 60 and 56 are no faster than 64: they are not steps
    assert widths.choose({8: 1.0, 12: 1.0, 16: 1.0}, 8) == 16  # padded widths: keep the whole block
    assert widths.choose({40: 1.0, 44: 0.98, 48: 1.0}, 44) == 48  # within tolerance is noise
    assert widths.choose({40: 1.0, 44: 2.0, 48: 3.0}, 44) == 44  # proportional cost: the request
    assert widths.choose({40: 1.0, 44: 2.0, 48: 3.0}, 46) == 48  # a tie goes to the wider


def test_nchwc_block_is_read_from_onnxruntime():
    block = widths.nchwc_block()
    assert block in (1, 4, 8, 16)
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if " avx512f " in flags:
        assert block == 16
    elif " avx2 " in flags:
        assert block == 8


def test_cpu_clock_needs_one_thread():
    model = model_io.load(fx.mlp())
    feeds = inputs.random_samples(model, 1, 0)[0]
    (t,) = latency.measure([model], feeds, rounds=5, warmup=1, clock="cpu")
    assert t.median > 0 and t.calls == 5
    with pytest.raises(ValueError, match="threads=1"):
        latency.measure([model], feeds, threads=2, clock="cpu")
    with pytest.raises(ValueError, match="clock"):
        latency.measure([model], feeds, clock="gpu")


def _fake_measure(calls: list):
    """Synthetic timings: the narrowest candidate is twice as fast, the others are equal."""

    def measure(models, feeds, **kwargs):
        calls.append(len(models))
        return [Timing(1.0 if i == 0 else 2.0, 0.0, 5) for i in range(len(models))]

    return measure


def _widths_after(model) -> dict[str, int]:
    return {n.name: n.inputs[1].const_value.shape[0] for n in model.graph if n.op_type == "Conv"}


def test_measure_prunes_to_the_measured_widths_and_caches_them(monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(widths.latency, "measure", _fake_measure(calls))
    proto = fx.mobilenetv2()
    model = model_io.load(proto)
    result = Prune(ratio=0.3, round_to="measure", criterion="l2").run(model, PassContext())
    entries = result.details["widths"]
    timed = [e for e in entries if e["times_ms"]]
    assert timed and len(calls) == len(timed)
    for e in timed:
        candidates = sorted(int(w) for w in e["times_ms"])
        narrowest, widest = candidates[0], candidates[-1]
        # staircase {narrowest, widest}: the one nearer the request, the wider on a tie
        expected = narrowest if e["requested"] - narrowest < widest - e["requested"] else widest
        assert e["chosen"] == expected
        assert e["requested"] - e["chosen"] <= 16 and e["chosen"] <= e["size"]
    after = {p["group"]: p["after"] for p in result.details["pruned"]}
    for e in entries:
        assert after.get(e["group"], e["size"]) == e["chosen"]
    assert any("round_to=measure" in n for n in result.notes)
    # the pruned model runs and keeps its output shapes
    feeds = inputs.random_samples(model, 1, 0)[0]
    with runtime.session(proto) as a, runtime.session(model) as b:
        assert {k: v.shape for k, v in runtime.run(a, feeds).items()} == {k: v.shape for k, v in runtime.run(b, feeds).items()}
    # a second run times nothing: every window comes from the cache, and gives the same widths
    calls.clear()
    again = model_io.load(proto)
    second = Prune(ratio=0.3, round_to="measure", criterion="l2").run(again, PassContext())
    assert calls == [] and all(e["cached"] for e in second.details["widths"] if e["times_ms"])
    assert _widths_after(again) == _widths_after(model)


def test_layer_models_are_the_groups_layers_at_each_width():
    proto = fx.resnet(image_size=32)
    model = model_io.load(proto)
    analysis = channels.analyze(model)
    group = max(analysis.groups, key=lambda g: g.size)
    node_index = {id(n): i for i, n in enumerate(model.graph)}
    known = widths._float_shapes(model, widths._input_dims(model, None))
    proto = model_io.to_proto(model)
    layer, feeds = widths._layer_model(proto, *widths._layer_nodes(proto.graph, group, node_index), known)
    names = {m.node.name for m in group.producers + group.consumers}
    assert names <= {n.name for n in layer.graph.node}
    cands = widths._candidates(layer, group.name, [group.size - 8, group.size])
    for width, candidate in cands:
        sub = model_io.load(candidate)
        (found,) = [g for g in channels.analyze(sub, freeze_residual_stream=False).groups if g.name == group.name]
        assert found.size == width
        with runtime.session(candidate) as sess:
            runtime.run(sess, feeds)


def test_groups_that_cannot_be_cut_out_keep_the_top_of_their_window(monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(widths.latency, "measure", _fake_measure(calls))
    model = model_io.load(fx.if_model())
    result = Prune(ratio=0.5, round_to="measure", criterion="l2").run(model, PassContext())
    for e in result.details.get("widths", []):
        if e.get("reason"):
            assert not e["times_ms"] and e["chosen"] >= e["requested"]


def test_block_rounds_to_the_nchwc_block():
    model = model_io.load(fx.mobilenetv2())
    result = Prune(ratio=0.3, round_to="block", criterion="l2").run(model, PassContext())
    block = widths.channel_block()
    assert result.details["pruned"]
    for p in result.details["pruned"]:
        # a group of at least one block keeps whole blocks (a narrower width is padded back to
        # one, and below one onnxruntime leaves its NCHWc kernels); smaller groups keep the cap
        step = block if p["before"] >= block else min(block, 1 << max(int(p["before"] // 4).bit_length() - 1, 0))
        assert p["after"] % step == 0 or p["after"] == p["before"]
    model = model_io.load(fx.mobilenetv2())
    sizes = {g.name: g.size for g in channels.analyze(model).groups}
    result = Prune(ratio=0.5, round_to="block", criterion="l2").run(model, PassContext())
    kept = {p["group"]: p["after"] for p in result.details["pruned"]}
    for name, size in sizes.items():
        if size >= block:  # 16 channels at ratio 0.5: 8 would be padded to 16 anyway; stays whole
            assert kept.get(name, size) == min(size, -(-(size - size // 2) // block) * block)


@pytest.mark.parametrize("options", [{"round_to": "fastest"}, {"round_to": "measure", "threads": 0}])
def test_bad_width_options_are_usage_errors(options):
    with pytest.raises(UsageError):
        Prune(**options)


def test_cli_takes_block_and_measure(tmp_path, monkeypatch):
    from onnxslim.cli import main

    monkeypatch.setattr(widths.latency, "measure", _fake_measure([]))
    src = tmp_path / "in.onnx"
    onnx.save(fx.resnet(), src)
    for value in ("block", "measure", "16"):
        out = tmp_path / f"out_{value}.onnx"
        assert main([str(src), str(out), "--passes", f"prune:ratio=0.3:round_to={value}", "--quiet"]) == 0
        assert out.exists()


def test_sessions_can_let_idle_threads_sleep():
    model = model_io.load(fx.mlp())
    feeds = inputs.random_samples(model, 1, 0)[0]
    (t,) = latency.measure([model], feeds, rounds=5, warmup=1, threads=2, spinning=False)
    assert t.median > 0
    with runtime.session(model, threads=2, spinning=False) as sess:
        assert runtime.run(sess, feeds)
