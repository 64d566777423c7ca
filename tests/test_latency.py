"""Side-by-side latency measurement (no timing thresholds: only structure and sanity)."""

import numpy as np

from onnxslim import inputs, latency, model_io

MODEL = "fixtures/models/mlp.onnx"


def test_measure_returns_one_timing_per_model_in_order():
    model = model_io.load(MODEL)
    feeds = inputs.random_samples(model, 1, 0)[0]
    timings = latency.measure([model, model, model], feeds, rounds=6, warmup=1)
    assert len(timings) == 3
    for t in timings:
        assert t.calls == 6 and t.median > 0 and t.iqr >= 0
        assert set(t.to_dict()) == {"median_ms", "iqr_ms", "calls"}


def test_budget_stops_early_but_after_five_rounds():
    model = model_io.load(MODEL)
    feeds = inputs.random_samples(model, 1, 0)[0]
    (timing,) = latency.measure([model], feeds, rounds=1000, warmup=0, budget_s=0.0)
    assert timing.calls == 5


def test_speedup_of_a_model_against_itself_is_near_one():
    model = model_io.load(MODEL)
    feeds = inputs.random_samples(model, 1, 0)[0]
    ratio = latency.speedup(model, model, feeds, rounds=10)
    assert np.isfinite(ratio) and 0.2 < ratio < 5
    assert latency.measure([], feeds) == []


def test_low_is_the_tenth_percentile_of_the_calls():
    samples = [0.010, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008, 0.009, 0.100]
    t = latency._timing(samples)
    assert t.low == np.percentile(samples, 10) and t.low < t.median == 0.006
    model = model_io.load(MODEL)
    (measured,) = latency.measure([model], inputs.random_samples(model, 1, 0)[0], rounds=6, warmup=1)
    assert 0 < measured.low <= measured.median
