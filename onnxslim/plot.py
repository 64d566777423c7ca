"""A picture of the report, a self-contained SVG (no plotting dependency). Per pass: parameters,
MACs and file size as a ratio to the input model (the one baseline, as in the table), the weight
sparsity, and the drift of the outputs from the input model's (1 − cosine on a log scale, with
the cosine and max |Δ| written out)."""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

from .report import APPLIED, NO_CHANGE, SPARSITY_COUNTS, Report, _fmt_err

_BARS = (("params", "#4e79a7"), ("MACs", "#f28e2b"), ("file size", "#59a14f"), ("sparsity", "#b07aa1"))
_DRIFT = "#e15759"
#: Drift axis: 1 − cosine from 1e-8 (left edge) to 1 (right edge).
_DRIFT_DECADES = 8


def _low_precision_share(stats) -> str | None:
    """``"MACs int8 97%"`` when part of the MACs run in other than float32."""
    parts = getattr(stats, "macs_by_precision", None) or {}
    total = sum(parts.values())
    low = {k: v for k, v in parts.items() if not k.startswith("float")}
    if not total or not low:
        return None
    return "MACs " + ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(low.items(), key=lambda kv: -kv[1]))


def report_svg(report: Report) -> str:
    before = report.before
    rows = [("input", "", before, None, None)]
    stats = before
    for p in report.passes:
        stats = p.stats or stats
        rows.append((p.name, report.status_text(p), stats, p.min_cosine, p.max_abs))
    bar_h, gap = 11, 16
    left, ratio_w, drift_x, drift_w = 190, 330, 190 + 330 + 120, 240
    group_h = len(_BARS) * bar_h + gap
    top = 92
    height = top + group_h * len(rows) + 34
    total_w = drift_x + drift_w + 30
    title = escape(_short(Path(report.source).name if report.source else "model", 60))
    title += " — dry run, nothing written" if report.dry_run else ""
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{height}" font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f"<title>{escape(report.source or 'model')}</title>",
        f'<text x="10" y="20" font-size="15" font-weight="bold">{title}</text>',
        '<text x="10" y="38" fill="#444">after each pass; params, MACs and file size as × the input model (1 = unchanged)</text>',
        f'<text x="10" y="54" fill="#444">sparsity: {escape(SPARSITY_COUNTS)}</text>',
        f'<text x="{left}" y="{top - 12}" font-weight="bold">× input · sparsity</text>',
        f'<text x="{drift_x}" y="{top - 12}" font-weight="bold">drift vs input: 1 − cosine (log)</text>',
    ]
    # legend
    x = left + 150
    for key, color in _BARS:
        out.append(f'<rect x="{x}" y="{top - 22}" width="10" height="10" fill="{color}"/>')
        out.append(f'<text x="{x + 13}" y="{top - 13}" font-size="11">{key}</text>')
        x += 13 + 7 * len(key) + 12
    axis_bottom = height - 30
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        gx = left + ratio_w * frac / 1.2
        out.append(f'<line x1="{gx:.1f}" y1="{top - 4}" x2="{gx:.1f}" y2="{axis_bottom}" stroke="{"#999" if frac == 1 else "#e3e3e3"}"/>')
        out.append(f'<text x="{gx:.1f}" y="{axis_bottom + 15}" text-anchor="middle" fill="#666" font-size="11">{frac:g}</text>')
    for exp in range(-_DRIFT_DECADES, 1, 2):
        gx = drift_x + drift_w * (exp + _DRIFT_DECADES) / _DRIFT_DECADES
        out.append(f'<line x1="{gx:.1f}" y1="{top - 4}" x2="{gx:.1f}" y2="{axis_bottom}" stroke="#e3e3e3"/>')
        out.append(f'<text x="{gx:.1f}" y="{axis_bottom + 15}" text-anchor="middle" fill="#666" font-size="11">{"1" if exp == 0 else f"1e{exp}"}</text>')
    y = top
    for index, (name, status, stats, cosine, max_abs) in enumerate(rows):
        if index:
            out.append(f'<line x1="10" y1="{y - gap / 2:.1f}" x2="{total_w - 10}" y2="{y - gap / 2:.1f}" stroke="#f0f0f0"/>')
        mid = y + len(_BARS) * bar_h / 2
        out.append(f'<text x="10" y="{mid:.1f}" font-weight="bold">{escape(_short(name, 22))}</text>')
        if status:
            color = "#2a7" if status.startswith(APPLIED) else "#777"
            out.append(f'<text x="10" y="{mid + 14:.1f}" font-size="11" fill="{color}">{escape(status)}</text>')
        values = {
            "params": _frac(stats.params if stats else None, before.params if before else None),
            "MACs": _frac(stats.macs if stats else None, before.macs if before else None),
            "file size": _frac(stats.file_bytes if stats else None, before.file_bytes if before else None),
            "sparsity": stats.sparsity if stats else None,
        }
        for i, (key, color) in enumerate(_BARS):
            value = values[key]
            if value is None:
                continue
            bar = ratio_w * min(value, 1.2) / 1.2
            yy = y + i * bar_h
            label = f"{100 * value:.1f}%" if key == "sparsity" else f"×{value:.3f}"
            out.append(f'<rect x="{left}" y="{yy}" width="{bar:.1f}" height="{bar_h - 2}" fill="{color}"/>')
            out.append(f'<text x="{left + bar + 4:.1f}" y="{yy + bar_h - 2}" font-size="10" fill="#333">{key} {label}</text>')
        if cosine is not None:
            drift = max(1.0 - cosine, 0.0)
            exp = math.log10(drift) if drift > 0 else -_DRIFT_DECADES
            bar = drift_w * (min(max(exp, -_DRIFT_DECADES), 0) + _DRIFT_DECADES) / _DRIFT_DECADES
            out.append(f'<rect x="{drift_x}" y="{y + bar_h / 2:.1f}" width="{bar:.1f}" height="{bar_h * 1.5:.1f}" fill="{_DRIFT}"/>')
            text = f"cosine {cosine:.6f} · max |Δ| {_fmt_err(max_abs)}"
            out.append(f'<text x="{drift_x}" y="{y + bar_h * 3.4:.1f}" font-size="11" fill="#333">{escape(text)}</text>')
        elif index:
            why = "model unchanged: drift as above" if status == NO_CHANGE else "not validated"
            out.append(f'<text x="{drift_x}" y="{mid:.1f}" font-size="11" fill="#999">{why}</text>')
        low = _low_precision_share(stats)
        if low:
            out.append(f'<text x="10" y="{mid + 27:.1f}" font-size="10" fill="#333">{escape(low)}</text>')
        y += group_h
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _short(text: str, limit: int) -> str:
    """At most ``limit`` characters, so a label stays out of the bars beside it."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _frac(now: float | None, base: float | None) -> float | None:
    return None if now is None or not base else now / base
