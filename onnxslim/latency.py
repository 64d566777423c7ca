"""Side-by-side onnxruntime latency: several models timed in interleaved rounds, medians.

Machines are noisy; timing models one after the other lets a burst of load land on one of them.
Interleaving (one call of each model per round, in a rotating order) makes the noise hit all of
them alike, and the median per model discards the outliers. Sessions run at onnxruntime's
default optimisation level: that is what a deployment runs, and what a speed-up must be seen in.

On a machine shared with other jobs even interleaved wall-clock medians move by 2× (a 2 ms call
is preempted or not); with one thread onnxruntime computes on the calling thread, so
``clock="cpu"`` times that thread's CPU time instead, which load barely moves (measured: a conv
chain's wall medians 2.3–6.4 ms over three runs at load average 8 on 2 cores, its CPU-time
medians 2.18–2.31 ms). Only wall time can time more threads.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from . import runtime


@dataclass(frozen=True)
class Timing:
    """Median and spread (interquartile range) of one model's call times, in seconds; ``low`` is
    their 10th percentile (benchmarks on a shared machine: load only ever slows a call down, so
    the fast calls are the ones it left alone)."""

    median: float
    iqr: float
    calls: int
    low: float | None = None

    def to_dict(self) -> dict:
        return {"median_ms": self.median * 1e3, "iqr_ms": self.iqr * 1e3, "calls": self.calls}


def measure(
    models: Sequence[ir.Model | onnx.ModelProto],
    feeds: Mapping[str, np.ndarray],
    *,
    rounds: int = 20,
    warmup: int = 2,
    threads: int = 1,
    level: str = "default",
    budget_s: float | None = None,
    clock: str = "wall",
    spinning: bool = True,
) -> list[Timing]:
    """Time ``models`` side by side on ``feeds``; one :class:`Timing` per model, in order.

    ``rounds`` interleaved rounds after ``warmup`` untimed ones; ``budget_s`` stops early (after
    at least 5 rounds) once that much wall time was spent, for callers that time inside a search.
    ``clock="cpu"`` times the calling thread's CPU time (``threads=1`` only; see the module docstring).
    ``spinning=False`` lets idle intra-op threads sleep instead of spin-waiting (onnxruntime's
    default): on an oversubscribed machine spinning threads burn the time slices the working
    ones need, and a short model loses more to that than a long one.
    """
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    if clock == "cpu" and threads != 1:
        raise ValueError("clock='cpu' times the calling thread only: use it with threads=1")
    tick = time.thread_time if clock == "cpu" else time.perf_counter
    if not models:
        return []
    times: list[list[float]] = [[] for _ in models]
    with contextlib.ExitStack() as stack:
        sessions = [stack.enter_context(runtime.session(m, level=level, threads=threads, spinning=spinning)) for m in models]
        for sess in sessions:
            for _ in range(warmup):
                runtime.run(sess, feeds)
        start = time.perf_counter()
        for r in range(rounds):
            order = range(len(sessions))
            order = list(order)[r % len(sessions):] + list(order)[: r % len(sessions)]
            for i in order:
                t0 = tick()
                runtime.run(sessions[i], feeds)
                times[i].append(tick() - t0)
            if budget_s is not None and r >= 4 and time.perf_counter() - start > budget_s:
                break
    return [_timing(t) for t in times]


def speedup(original: ir.Model | onnx.ModelProto, candidate: ir.Model | onnx.ModelProto, feeds: Mapping[str, np.ndarray], **kwargs) -> float:
    """Measured latency ratio original / candidate (> 1: the candidate is faster)."""
    base, new = measure([original, candidate], feeds, **kwargs)
    return base.median / new.median


def _timing(samples: list[float]) -> Timing:
    q = np.percentile(samples, [10, 25, 75])
    return Timing(median=statistics.median(samples), iqr=float(q[2] - q[1]), calls=len(samples), low=float(q[0]))
