"""A picture of the report: per pass, parameters, MACs and file size relative to the input,
and the output cosine similarity — a self-contained SVG (no plotting dependency)."""

from __future__ import annotations

from html import escape

from .report import Report

_COLORS = {"params": "#4e79a7", "MACs": "#f28e2b", "file size": "#59a14f"}


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
    rows = [("input", before, None, "")]
    prev = before
    for p in report.passes:
        stats = p.stats or prev
        rows.append((p.name, stats, p.min_cosine, p.status))
        prev = stats
    bar_h, gap, left, width = 10, 14, 170, 420
    group_h = 3 * bar_h + gap
    height = 60 + group_h * len(rows) + 30
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 190}" height="{height}" font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="10" y="20" font-size="15" font-weight="bold">{escape(report.source or "model")}</text>',
        '<text x="10" y="38" fill="#555">relative to the input model (1.0 = unchanged); cosine = worst output vs original</text>',
    ]
    for x_frac in (0.25, 0.5, 0.75, 1.0):
        x = left + width * x_frac
        out.append(f'<line x1="{x}" y1="48" x2="{x}" y2="{height - 30}" stroke="#ddd"/>')
        out.append(f'<text x="{x}" y="{height - 14}" text-anchor="middle" fill="#777">{x_frac:g}</text>')
    y = 55
    for name, stats, cosine, status in rows:
        label = name if not status else f"{name} ({status})"
        out.append(f'<text x="10" y="{y + bar_h * 1.8}">{escape(label)}</text>')
        for i, (key, now, ref) in enumerate(
            [
                ("params", stats.params if stats else None, before.params if before else None),
                ("MACs", stats.macs if stats else None, before.macs if before else None),
                ("file size", stats.file_bytes if stats else None, before.file_bytes if before else None),
            ]
        ):
            if now is None or not ref:
                continue
            frac = now / ref
            bar = width * min(frac, 1.2)
            yy = y + i * bar_h
            out.append(f'<rect x="{left}" y="{yy}" width="{bar:.1f}" height="{bar_h - 2}" fill="{_COLORS[key]}"/>')
            out.append(f'<text x="{left + bar + 4:.1f}" y="{yy + bar_h - 2}" font-size="10" fill="#333">{key} {frac:.3f}</text>')
        if cosine is not None:
            out.append(f'<text x="{left + width + 110}" y="{y + bar_h * 1.8}" fill="#333">cos {cosine:.5f}</text>')
        low = _low_precision_share(stats)
        if low:
            out.append(f'<text x="{left + width + 110}" y="{y + bar_h * 2.9}" font-size="10" fill="#333">{escape(low)}</text>')
        y += group_h
    out.append("</svg>")
    return "\n".join(out) + "\n"
