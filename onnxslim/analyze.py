"""``onnxslim analyze in.onnx --calibration data.npz``: per-group pruning sensitivity.

Prints a table (groups, layers, channels, MACs share, output drift at 10…90% removal), writes
it as JSON (``--report``) and as a picture (``--plot``, SVG). The result is cached: a following
``onnxslim in.onnx out.onnx --passes prune:target=budget`` with the same model, data and options
reuses it. Like ``prune``, without ``--inputs`` a quarter of the calibration samples is held
out (for prune's validation) and the analysis runs on the rest.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from html import escape
from pathlib import Path

from . import model_io, registry
from .calibration import Calibration
from .errors import UsageError
from .inputs import InputConfig, check_shape_names, check_shapes, parse_shape_arg
from .pass_api import PassContext
from .sensitivity import Sensitivity


def _parser() -> argparse.ArgumentParser:
    from .cli import UsageParser

    p = UsageParser(prog="onnxslim analyze", description="Per-group pruning sensitivity of an ONNX model on your data.")
    p.add_argument("input", help="input .onnx model")
    p.add_argument("--calibration", help=".npz of calibration inputs (recommended; random inputs otherwise)")
    p.add_argument("--inputs", help=".npz of validation inputs (as for prune: then calibration is not split)")
    p.add_argument("--prune", default="prune", metavar="OPTIONS", help="prune options to analyse with, e.g. 'prune:criterion=l2:round_to=8'")
    p.add_argument("--metric-outputs", help="outputs that count, comma-separated (default: all)")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=1x3x224x224", help="fix a dynamic input shape (repeatable)")
    p.add_argument("--samples", type=int, default=2, help="random samples when --calibration is not given")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", help="write the JSON here")
    p.add_argument("--plot", help="write an SVG picture here")
    p.add_argument("--no-cache", action="store_true", help="recompute even when a cached analysis exists")
    p.add_argument("--quiet", action="store_true")
    return p


def run(argv: Sequence[str]) -> int:
    from .cli import _destination
    from .manager import held_out_split

    args = _parser().parse_args(list(argv))
    extras = {flag: _destination(text, flag) for flag, text in (("--report", args.report), ("--plot", args.plot)) if text}
    pipeline = registry.build_all(args.prune)
    if len(pipeline) != 1 or pipeline[0].name != "prune":
        raise UsageError(f"--prune: expected 'prune[:key=value...]', got {args.prune!r}")
    prune = pipeline[0]
    shapes = check_shapes(dict(parse_shape_arg(s) for s in args.input_shape) or None)
    model = model_io.load(args.input)
    check_shape_names(model, shapes)
    outputs = [s for s in (args.metric_outputs or "").split(",") if s] or None
    names = [v.name for v in model.graph.outputs]
    for name in outputs or ():
        if name not in names:
            raise UsageError(f"--metric-outputs: the model has no output {name!r} (outputs: {', '.join(names)})")
    calib = InputConfig(args.calibration, shapes, args.samples, args.seed, "calibration").samples(model) if args.calibration else None
    feeds = InputConfig(args.inputs, shapes, args.samples, args.seed).samples(model) if args.inputs else None
    note = ""
    if calib is not None and feeds is None:
        calib, held = held_out_split(calib)
        note = f"{len(held)} calibration samples held out (prune:target=budget validates on them)"
    if feeds is None:
        feeds = InputConfig(None, shapes, args.samples, args.seed).samples(model) if calib is None else []
    ctx = PassContext(calibration=Calibration(calib) if calib else None, seed=args.seed, validation=feeds)
    if not args.quiet:
        from .manager import _Console

        ctx.progress = _Console(True).progress
    start = time.perf_counter()
    sens, _ = prune.sensitivity(model, ctx, outputs=outputs, use_cache=not args.no_cache)
    seconds = time.perf_counter() - start
    if not args.quiet:
        print(sens.table(), end="")
        where = f"reused from {sens.cache_file}" if sens.cached else f"computed in {sens.seconds:.1f} s" + (f", cached in {sens.cache_file}" if sens.cache_file else "")
        print(f"{len(sens.groups)} groups, {sens.samples} samples; {where}; {seconds:.1f} s in all" + (f"; {note}" if note else ""))
    if "--report" in extras:
        model_io.write_text_atomic(extras["--report"], json.dumps({"source": args.input, "seconds": seconds, **sens.to_dict()}, indent=1))
    if "--plot" in extras:
        model_io.write_text_atomic(extras["--plot"], sensitivity_svg(sens, Path(args.input).name))
    return 0


def _color(value: float, lo: float, hi: float) -> str:
    """Light yellow (insensitive) to dark red (sensitive) on a log scale."""
    if not math.isfinite(value) or value <= 0:
        t = 0.0 if value <= 0 else 1.0
    else:
        t = min(max((math.log10(value) - lo) / (hi - lo), 0.0), 1.0)
    stops = [(255, 255, 204), (254, 217, 118), (253, 141, 60), (227, 26, 28), (128, 0, 38)]
    x = t * (len(stops) - 1)
    i = min(int(x), len(stops) - 2)
    f = x - i
    r, g, b = (round(a + (c - a) * f) for a, c in zip(stops[i], stops[i + 1]))
    return f"#{r:02x}{g:02x}{b:02x}"


def sensitivity_svg(sens: Sensitivity, title: str) -> str:
    """A heat map: one row per group, one column per ratio, colour = log10 nmse (with the value),
    and a bar of the group's MACs share."""
    rows = sens.groups
    cell_w, cell_h, left, top = 58, 20, 260, 70
    bar_w = 120
    width = left + cell_w * len(sens.ratios) + bar_w + 60
    height = top + cell_h * len(rows) + 80
    finite = [math.log10(v) for g in rows for v in g.nmse if math.isfinite(v) and v > 0]
    lo, hi = (math.floor(min(finite)), math.ceil(max(finite))) if finite else (-6, 0)
    hi = max(hi, lo + 1)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="10" y="22" font-size="15" font-weight="bold">{escape(title)}: pruning sensitivity per channel group</text>',
        f'<text x="10" y="42" fill="#444">output drift (nmse on {escape(", ".join(sens.outputs))}) when one group alone loses a fraction of its channels'
        + (" — with reconstruction" if sens.reconstruct else "") + "</text>",
    ]
    for j, r in enumerate(sens.ratios):
        out.append(f'<text x="{left + j * cell_w + cell_w / 2}" y="{top - 8}" text-anchor="middle" font-weight="bold">{r:.0%}</text>')
    out.append(f'<text x="{left + cell_w * len(sens.ratios) + 10}" y="{top - 8}" font-weight="bold">MACs touched</text>')
    max_share = max((g.macs_share for g in rows), default=0) or 1
    for i, g in enumerate(rows):
        y = top + i * cell_h
        label = f"{g.name} ({g.size})"
        if len(label) > 38:
            label = "…" + label[-37:]
        out.append(f'<text x="{left - 8}" y="{y + cell_h * 0.7}" text-anchor="end">{escape(label)}</text>')
        for j, v in enumerate(g.nmse):
            v = float(v)
            fill = _color(v, lo, hi)
            dark = fill in () or (math.isfinite(v) and v > 0 and (math.log10(v) - lo) / (hi - lo) > 0.55) or not math.isfinite(v)
            out.append(f'<rect x="{left + j * cell_w}" y="{y}" width="{cell_w - 1}" height="{cell_h - 1}" fill="{fill}"/>')
            text = "inf" if not math.isfinite(v) else ("0" if v == 0 else f"{v:.0e}")
            out.append(
                f'<text x="{left + j * cell_w + cell_w / 2}" y="{y + cell_h * 0.7}" text-anchor="middle" font-size="10" '
                f'fill="{"white" if dark else "#222"}">{text}</text>'
            )
        bar = bar_w * g.macs_share / max_share
        bx = left + cell_w * len(sens.ratios) + 10
        out.append(f'<rect x="{bx}" y="{y + 3}" width="{bar:.1f}" height="{cell_h - 7}" fill="#4e79a7"/>')
        out.append(f'<text x="{bx + bar + 4:.1f}" y="{y + cell_h * 0.7}" font-size="10">{100 * g.macs_share:.1f}%</text>')
    # colour scale
    y = top + cell_h * len(rows) + 25
    out.append(f'<text x="10" y="{y + 12}">nmse (log scale):</text>')
    steps = hi - lo
    every = max(1, -(-steps // 8))  # at most ~9 labelled swatches
    for k in range(0, steps + 1, every):
        x = left + k * (cell_w * len(sens.ratios) / max(steps, 1))
        out.append(f'<rect x="{x - 12:.1f}" y="{y}" width="24" height="14" fill="{_color(10.0 ** (lo + k), lo, hi)}" stroke="#999"/>')
        out.append(f'<text x="{x:.1f}" y="{y + 30}" text-anchor="middle" font-size="10">1e{lo + k}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from .cli import main as cli_main

    return cli_main(["analyze", *(argv if argv is not None else sys.argv[1:])])
