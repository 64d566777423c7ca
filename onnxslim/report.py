"""What the pipeline did: per-pass rows for people (a table) and for pipelines (JSON)."""

from __future__ import annotations

import dataclasses
import json
import math
import textwrap
from pathlib import Path
from typing import Any

from .stats import ModelStats, human
from .validation import OutputMetrics

APPLIED = "applied"
NO_CHANGE = "no change"
ROLLED_BACK = "rolled back"
SKIPPED = "skipped"
FAILED = "failed"


@dataclasses.dataclass
class PassReport:
    name: str
    lossless: bool
    status: str
    reason: str = ""
    summary: str = ""
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    #: Output comparison against the original model: the drift so far (empty when not validated).
    metrics: list[OutputMetrics] = dataclasses.field(default_factory=list)
    #: Comparison against the model before this pass: what this pass alone changed. A lossless
    #: pass is judged on this.
    step_metrics: list[OutputMetrics] = dataclasses.field(default_factory=list)
    #: Model statistics after this pass (after rollback if rolled back).
    stats: ModelStats | None = None
    seconds: float = 0.0
    validate_seconds: float = 0.0
    #: Branches (If branches, Loop/Scan bodies, at any depth) this pass changed that no
    #: validation sample executes (not compared).
    unvalidated_branches: list[str] = dataclasses.field(default_factory=list)

    @property
    def min_cosine(self) -> float | None:
        return min((m.cosine for m in self.metrics), default=None)

    @property
    def max_abs(self) -> float | None:
        return max((m.max_abs for m in self.metrics), default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "lossless": self.lossless,
            "status": self.status,
            "reason": self.reason,
            "summary": self.summary,
            "options": _jsonable(self.options),
            "details": _jsonable(self.details),
            "notes": list(self.notes),
            "metrics": [m.to_dict() for m in self.metrics],
            "step_metrics": [m.to_dict() for m in self.step_metrics],
            "stats": self.stats.to_dict() if self.stats else None,
            "seconds": round(self.seconds, 4),
            "validate_seconds": round(self.validate_seconds, 4),
            "unvalidated_branches": list(self.unvalidated_branches),
        }


@dataclasses.dataclass
class Report:
    source: str | None
    before: ModelStats | None
    passes: list[PassReport] = dataclasses.field(default_factory=list)
    input_shapes: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    samples: int = 0
    validated: bool = True
    final_checks: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: The same checks on the input model, run only when a final check fails.
    input_checks: dict[str, Any] = dataclasses.field(default_factory=dict)
    output: str | None = None
    output_bytes: int | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    #: The passes ran on the copy in memory and nothing was written (``--dry-run``).
    dry_run: bool = False
    #: Wall time of the whole run: loading, reference outputs, passes, final checks, saving.
    seconds: float = 0.0
    #: ``--measure-latency``: onnxruntime CPU latency of the input and the result, timed side by
    #: side at the validation shapes (``{"before": Timing.to_dict(), "after": ..., "speedup": x}``).
    latency: dict[str, Any] | None = None

    @property
    def broken_checks(self) -> list[str]:
        """Final checks the result fails although the input model passes them (or is unknown)."""
        return [k for k, v in self.final_checks.items() if v != "ok" and self.input_checks.get(k, "ok") == "ok"]

    @property
    def incomplete(self) -> list[PassReport]:
        """Requested passes that were rolled back or failed (a pass skipped because onnx-ir
        cannot represent the model is not counted: the model is written unchanged, as asked)."""
        return [row for row in self.passes if row.status in (ROLLED_BACK, FAILED)]

    @property
    def after(self) -> ModelStats | None:
        for row in reversed(self.passes):
            if row.stats is not None:
                return row.stats
        return self.before

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "output": self.output,
            "output_bytes": self.output_bytes,
            "validated": self.validated,
            "samples": self.samples,
            "input_shapes": self.input_shapes,
            "before": self.before.to_dict() if self.before else None,
            "after": self.after.to_dict() if self.after else None,
            "passes": [p.to_dict() for p in self.passes],
            "final_checks": _jsonable(self.final_checks),
            "input_checks": _jsonable(self.input_checks),
            "warnings": list(self.warnings),
            "dry_run": self.dry_run,
            "wall_seconds": round(self.seconds, 4),
            "latency": _jsonable(self.latency),
            "incomplete": [row.name for row in self.incomplete],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def write_json(self, path: str | Path) -> None:
        from .model_io import write_text_atomic

        write_text_atomic(Path(path), self.to_json() + "\n")

    def status_text(self, row: PassReport) -> str:
        """The row's status as the table shows it: a dry run's passes say so, and so does a pass
        that changed branches (If branches, Loop/Scan bodies) no validation sample reaches (named
        in a note below)."""
        status = f"{row.status} (dry run)" if self.dry_run and row.status == APPLIED else row.status
        n = len(row.unvalidated_branches)
        # The innermost part of a label says what it is: "... > If 'x' else_branch", "Loop 'y' body".
        kind = "If branch" if all(b.rsplit(" > ", 1)[-1].startswith("If ") for b in row.unvalidated_branches) else "branch"
        return status + (f" ({n} {kind}{'es' if n > 1 else ''} not validated)" if n else "")

    def table(self, width: int = 80) -> Any:
        """A rich Table that fits ``width`` columns: one row for the input model, one per pass;
        numbers after each pass, each ratio (×) against the input model. When one line per pass
        is too wide, ratios and tags take a second line and the per-pass time (in the JSON) goes."""
        from rich.console import Console
        from rich.measure import Measurement

        wide = self._table(narrow=False)
        console = Console(width=10_000, file=_Null())
        if Measurement.get(console, console.options, wide).maximum <= width:
            return wide
        return self._table(narrow=True)

    def _table(self, narrow: bool) -> Any:
        from rich import box
        from rich.table import Table

        columns = [
            ("pass", "left"),
            ("status", "left"),
            ("nodes", "right"),
            ("params", "right"),
            ("MACs", "right"),
            ("size", "right"),
            ("sparsity", "right"),
            ("max |Δ|", "right"),
            ("cosine", "right"),
            ("time", "right"),
        ]
        if narrow:
            columns = columns[:-1]
        # Narrow: ratios and the lossless/lossy tag go on a second line, the status wraps.
        sep = "\n" if narrow else " "
        title = "onnxslim" + (" — DRY RUN, nothing written" if self.dry_run else "") + ": × is the ratio to the input"
        table = Table(
            title=title,
            title_justify="left",
            box=box.SIMPLE_HEAD,
            show_edge=False,
            pad_edge=False,
            padding=(0, 1 if not narrow else 0),  # narrow: one space (the divider) between columns
            collapse_padding=True,
        )
        longest = max((len(row.name) for row in self.passes), default=0)
        for col, justify in columns:
            table.add_column(
                col,
                justify=justify,
                no_wrap=col in ("nodes", "sparsity", "max |Δ|", "cosine", "time"),
                min_width=max(longest, len("(lossless)")) if col == "pass" else None,
                max_width=len("(dry run)") if narrow and col == "status" else None,
            )
        rows = [["(input)", "", *_stat_cells(self.before, None, sep), "", "", ""]] if self.before else []
        for row in self.passes:
            style = {APPLIED: "green", ROLLED_BACK: "yellow", FAILED: "red"}.get(row.status, "dim")
            cells = _stat_cells(row.stats, self.before, sep) if row.stats else ["", "", "", "", ""]
            tag = "lossless" if row.lossless else "lossy"
            rows.append(
                [
                    f"{row.name}{sep}[dim]({tag})[/dim]",
                    f"[{style}]{self.status_text(row)}[/{style}]",
                    *cells,
                    _fmt_err(row.max_abs, 1 if narrow else 2),
                    "" if row.min_cosine is None else f"{row.min_cosine:.6f}",
                    f"{row.seconds + row.validate_seconds:.2f}s",
                ]
            )
        for cells in rows:
            table.add_row(*cells[: len(columns)])
        return table

    def render(self, width: int | None = None) -> str:
        """The table and what it needs said below it, at ``width`` columns (default: the
        terminal's, 80 when not a terminal)."""
        import shutil

        from rich.console import Console

        width = width or shutil.get_terminal_size((80, 24)).columns
        console = Console(width=width, record=True, file=_Null())
        console.print(self.table(width))

        def say(text: str) -> None:  # a line under the table; continuation lines indented
            wrapped = textwrap.fill(text, width=width, initial_indent="  ", subsequent_indent="      ", break_on_hyphens=False)
            console.print(wrapped, markup=False, highlight=False, soft_wrap=True)

        before, after = self.before, self.after
        if before is not None:
            say(f"sparsity: {SPARSITY_COUNTS}.")
        if before is not None and before.macs_symbolic:
            shapes = ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in self.input_shapes.items())
            line = f"MACs by dynamic dims: {before.macs_symbolic}"
            if after is not None and after is not before and after.macs_symbolic:
                line += f" → {after.macs_symbolic}"
            say(line + (f" (the table counts at {shapes})" if shapes else ""))
        line = _precision_line(before, after)
        if line:
            say(line)
        if self.latency and "error" in self.latency:
            say(f"latency not measured: {self.latency['error']}")
        elif self.latency:
            b, a = self.latency["before"], self.latency["after"]
            say(
                f"latency (onnxruntime CPU, median of {a['calls']} interleaved calls): "
                f"{b['median_ms']:.3f} ms → {a['median_ms']:.3f} ms ({self.latency['speedup']:.2f}×)"
            )
        for row in self.passes:
            if row.reason:
                say(f"{row.name}: {row.status}: {row.reason}")
            for note in row.notes[:20]:
                say(f"{row.name}: {note}")
            if len(row.notes) > 20:
                say(f"{row.name}: ... {len(row.notes) - 20} more notes in the JSON report")
        if self.seconds:
            say(f"total {self.seconds:.2f}s wall (per pass and in all: in the JSON report)")
        return console.export_text()


#: What the sparsity column counts (the JSON's ``zero_params`` / ``params``).
SPARSITY_COUNTS = "zeros among all float weights (initializers and Constant tensors: weights, biases, norms; CSR as dense)"


def _precision_line(before: ModelStats | None, after: ModelStats | None) -> str | None:
    """MACs by precision when any layer runs in other than float32 (before or after)."""

    def split(stats: ModelStats | None) -> str | None:
        parts = (stats.macs_by_precision or {}) if stats is not None else {}
        if not parts or set(parts) == {"float32"}:
            return None
        return ", ".join(f"{k} {human(v)}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]))

    now = split(after)
    if now is None and split(before) is None:
        return None
    was = split(before) or (f"float32 {human(before.macs)}" if before is not None and before.macs else "?")
    return f"MACs by precision: {was} → {now or (f'float32 {human(after.macs)}' if after and after.macs else '?')}"


class _Null:
    def write(self, _: str) -> int:
        return 0

    def flush(self) -> None:
        pass


def _escape(text: str) -> str:
    """Text for a rich markup string (a '[' would open a tag)."""
    return text.replace("[", r"\[")


def _fmt_err(value: float | None, digits: int = 2) -> str:
    if value is None:
        return ""
    if not math.isfinite(value):
        return "inf"
    return f"{value:.{digits}e}" if value else "0"


def _ratio(now: float | None, before: float | None, sep: str = " ") -> str:
    """`` ×0.54``: against the input model (the one baseline of the table and the plot)."""
    if now is None or not before or now == before:
        return ""
    return f"{sep}×{now / before:.2f}"


def _stat_cells(stats: ModelStats, base: ModelStats | None, sep: str = " ") -> list[str]:
    """nodes, params, MACs, size and sparsity; ratios against ``base`` (the input model)."""
    macs = "?" if stats.macs is None else human(stats.macs) + ("+?" if stats.macs_unresolved else "")
    return [
        f"{stats.nodes}",
        human(stats.params) + _ratio(stats.params, base.params if base else None, sep),
        macs + _ratio(stats.macs, base.macs if base else None, sep),
        human(stats.file_bytes) + "B" + _ratio(stats.file_bytes, base.file_bytes if base else None, sep),
        f"{100 * stats.sparsity:.1f}%",
    ]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if hasattr(value, "item"):  # numpy scalars
        return _jsonable(value.item())
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    if dataclasses.is_dataclass(value):
        return _jsonable(dataclasses.asdict(value))
    return str(value)
