"""Command line: ``onnxslim in.onnx out.onnx --passes prune,sparsify`` and ``onnxslim passes``."""

from __future__ import annotations

import argparse
import errno
import gc
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

try:  # Ctrl-C while numpy, onnx and onnxruntime import (the first second) is no traceback either
    from . import __version__, registry
    from .errors import ModelError, OnnxSlimError, UsageError, command_line, did_you_mean
    from .inputs import parse_shape_arg
    from .validation import Tolerance
except KeyboardInterrupt:
    print("onnxslim: interrupted", file=sys.stderr)
    raise SystemExit(130) from None

EPILOG = """\
commands: onnxslim passes [NAME...]   the installed passes (or the named ones) with their options.
          onnxslim analyze in.onnx --calibration data.npz [--report a.json] [--plot a.svg]   pruning sensitivity.
passes: name[:key=value[:key=value]][,name...]   e.g. --passes "prune:ratio=0.3:criterion=l2,sparsify"
        list values are separated by '|', maps as 'k=v|k=v'; `onnxslim passes` lists passes and options.
exit codes: 0 ok, 1 model problem or a pass failed under --strict, 2 usage error,
            3 a requested pass was rolled back or failed (the best valid model is still
              written; --allow-rollback makes this 0).
"""


class UsageParser(argparse.ArgumentParser):
    """The parser of every onnxslim command: errors are one line (exit 2) and an unknown flag
    gets the closest known one (``--inptus``: did you mean '--inputs'?)."""

    def error(self, message: str) -> None:
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            flags = [s for s in self._option_string_actions if s.startswith("--")]
            unknown = [w for w in message[len(prefix) :].split() if w.startswith("-")]
            message += "".join(did_you_mean(w.partition("=")[0], flags) for w in unknown[:1])
        raise UsageError(message)


def _version() -> str:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    deps = ", ".join(f"{d} {version(d)}" for d in ("onnx", "onnxruntime", "onnx-ir"))
    return f"onnxslim {__version__} ({deps}; python {sys.version.split()[0]})"


def _parser() -> argparse.ArgumentParser:
    p = UsageParser(
        prog="onnxslim",
        description="Prune, sparsify and slim an ONNX model; every pass is checked against onnxruntime.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", help="input .onnx model (or a command: 'passes' lists the available passes)")
    p.add_argument("output", nargs="?", help="output .onnx path (omit with --dry-run)")
    p.add_argument("--passes", help="pipeline, e.g. 'zeros,prune:ratio=0.3,sparsify' (default: simplify)")
    p.add_argument("--recipe", help="TOML recipe listing [[pass]] tables in order")
    p.add_argument("--inputs", nargs="+", metavar="NPZ|DIR", help="validation inputs: .npz files keyed by input name (several samples each) or folders of them")
    p.add_argument("--calibration", nargs="+", metavar="NPZ|DIR", help="calibration inputs for data-driven passes: .npz files or folders (samples may differ in shape)")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=1x3x224x224", help="fix a dynamic input shape (repeatable)")
    p.add_argument(
        "--input-shapes",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME:1,3,224,224",
        help="the same, several in one flag, as onnxsim/OnnxSlim/Polygraphy write it",
    )
    p.add_argument("--samples", type=int, default=2, help="random validation samples when --inputs is not given (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed for random inputs and random criteria")
    p.add_argument("--no-validate", action="store_true", help="skip the onnxruntime comparison after each pass")
    p.add_argument("--strict", action="store_true", help="a lossless pass outside tolerance (or a failing pass) is fatal")
    p.add_argument("--allow-rollback", action="store_true", help="exit 0, not 3, when a pass is rolled back or fails")
    p.add_argument("--min-cosine", type=float, help="roll back a lossy pass whose output cosine falls below this")
    p.add_argument("--min-agreement", type=float, help="budget: top-1 agreement of classification outputs with the original")
    p.add_argument("--max-error", type=float, help="budget: largest absolute output difference")
    p.add_argument("--metric-outputs", metavar="NAME[,NAME]", help="outputs the budget counts (default: all)")
    p.add_argument("--atol", type=float, default=Tolerance.atol, help="lossless tolerance: absolute part")
    p.add_argument("--rtol", type=float, default=Tolerance.rtol, help="lossless tolerance: relative to max |reference|")
    p.add_argument("--tolerance", action="append", default=[], metavar="OUTPUT=ATOL[:RTOL]", help="per-output tolerance")
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument("--plot", help="write an SVG picture of the report here (params, MACs, size, sparsity, drift per pass)")
    p.add_argument("--measure-latency", action="store_true", help="time the input and the result side by side in onnxruntime (CPU, medians)")
    p.add_argument("--external-data", action="store_true", help="store weights in <output>.data (automatic above 2 GB)")
    p.add_argument("--in-place", action="store_true", help="allow the output to overwrite the input")
    p.add_argument("--dry-run", action="store_true", help="run the passes on a copy in memory and report what each would do; write no model")
    p.add_argument("--quiet", action="store_true", help="no progress and no table")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=_version())
    return p


def _tolerances(items: Sequence[str]) -> dict[str, Tolerance]:
    result = {}
    for item in items:
        name, sep, spec = item.rpartition("=")
        try:
            if not sep or not name:
                raise ValueError
            atol, _, rtol = spec.partition(":")
            result[name] = Tolerance(float(atol), float(rtol) if rtol else 0.0)
        except ValueError:
            raise UsageError(f"--tolerance: expected OUTPUT=ATOL[:RTOL], got {item!r}") from None
    return result


def _destination(text: str, what: str) -> Path:
    """A file the run will write, checked before anything runs: not a directory, in a directory
    that exists and takes new files."""
    path = Path(text)
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UsageError(f"{what} {text}: a symbolic link loop") from None
    if not text or text.endswith(("/", os.sep)) or path.is_dir():
        raise UsageError(f"{what} {text!r}: not a file path")
    directory = path.parent
    if not directory.is_dir():
        raise UsageError(f"{what} {text}: directory {directory} does not exist")
    try:
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as exc:
        raise ModelError(f"{what} {text}: cannot write in {directory} ({exc.strerror})") from None
    return path


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _check_destinations(source: Path, output: Path | None, extras: dict[str, Path]) -> None:
    """A report or plot must not replace the input model, the output (or its data file) or the
    other one."""
    from .model_io import output_files

    models = [source, *(output_files(output, external_data=True) if output is not None else [])]
    seen: list[Path] = []
    for flag, path in extras.items():
        if any(_same_path(path, m) for m in models):
            raise UsageError(f"{flag} {path}: refusing to overwrite a model file")
        if any(_same_path(path, s) for s in seen):
            raise UsageError(f"{flag} {path}: --report and --plot must be different files")
        seen.append(path)


def list_passes(names: Sequence[str] = ()) -> str:
    """Every installed pass (or the named ones) with its options, defaults and types."""
    passes = {name: registry.get(name) for name in names} if names else registry.available()
    lines = []
    for name, cls in passes.items():
        kind = "lossless" if cls.lossless else "lossy"
        lines.append(f"{name}  ({kind})  {cls.summary}")
        for spec in cls.option_specs():
            lines.append(f"    {spec.name}={spec.default!r}  [{spec.type}]  {spec.help}")
    return "\n".join(lines)


def _passes_command(argv: Sequence[str]) -> int:
    p = UsageParser(prog="onnxslim passes", description="The installed passes with their options and defaults.")
    p.add_argument("names", nargs="*", metavar="NAME", help="show only these passes")
    print(list_passes(p.parse_args(argv).names))
    return 0


#: ``onnxslim COMMAND ...``: each takes the rest of the command line. A first argument that is a
#: command's name runs the command (unless a file of that name is there).
def _analyze_command(argv: Sequence[str]) -> int:
    from . import analyze

    return analyze.run(argv)


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {"passes": _passes_command, "analyze": _analyze_command}


def _command(argv: Sequence[str]) -> Callable[[Sequence[str]], int] | None:
    if argv and argv[0] in COMMANDS and not Path(argv[0]).is_file():
        return COMMANDS[argv[0]]
    return None


def _shape_args(args: argparse.Namespace) -> dict[str, tuple[int, ...]]:
    """``--input-shape`` and ``--input-shapes`` together; a name given twice is refused."""
    shapes: dict[str, tuple[int, ...]] = {}
    for text in [*args.input_shape, *args.input_shapes]:
        name, shape = parse_shape_arg(text)
        if name in shapes and shapes[name] != shape:
            raise UsageError(f"input shape: {name!r} given twice ({'x'.join(map(str, shapes[name]))} and {'x'.join(map(str, shape))})")
        shapes[name] = shape
    return shapes


def _take_back_output(args: argparse.Namespace) -> None:
    """``in.onnx --input-shapes x:1,3 out.onnx``: the list swallowed the output path (a shape
    always holds ':' or '='; a model path ends in .onnx)."""
    values = args.input_shapes
    if args.output is None and values and (values[-1].endswith(".onnx") or not any(c in values[-1] for c in ":=")):
        args.output = values.pop()


def _take_output_back(args: argparse.Namespace) -> None:
    """``in.onnx --inputs a.npz out.onnx``: the file list swallowed the output path; a model is
    never a sample file, so a trailing ``.onnx`` there is the output."""
    for flag in ("calibration", "inputs"):
        files = getattr(args, flag)
        if args.output is None and files and len(files) > 1 and files[-1].endswith(".onnx"):
            args.output = files.pop()


def _data_arg(files: list[str] | None) -> str | list[str] | None:
    return files[0] if files and len(files) == 1 else files


def run(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command(argv)
    if command is not None:
        return command(argv[1:])
    started = time.perf_counter()
    args = _parser().parse_args(argv)
    if args.quiet:  # libraries' log records (onnx-ir's "Skipped deduplication ...") too
        logging.disable(logging.WARNING)
    _take_back_output(args)
    if not Path(args.input).exists() and did_you_mean(args.input, COMMANDS):
        raise UsageError(f"{args.input}: no such file or command{did_you_mean(args.input, COMMANDS)}")
    from .manager import optimize

    _take_output_back(args)
    if args.output is None and not args.dry_run:
        raise UsageError("missing output path (or use --dry-run)")
    if args.passes and args.recipe:
        raise UsageError("give --passes or --recipe, not both")
    source = Path(args.input)
    output = _destination(args.output, "output") if args.output is not None and not args.dry_run else None
    extras = {flag: _destination(text, flag) for flag, text in (("--report", args.report), ("--plot", args.plot)) if text is not None}
    _check_destinations(source, output, extras)
    if output is not None and not args.in_place and source.exists() and output.exists() and _same_path(output, source):
        raise UsageError(f"{output}: refusing to overwrite the input model (use --in-place)")
    pipeline = registry.load_recipe(args.recipe) if args.recipe else registry.build_all(args.passes)
    shapes = _shape_args(args)
    result = optimize(
        source,
        pipeline,
        inputs=_data_arg(args.inputs),
        input_shapes=shapes or None,
        calibration=_data_arg(args.calibration),
        validate=not args.no_validate,
        strict=args.strict,
        min_cosine=args.min_cosine,
        min_agreement=args.min_agreement,
        max_error=args.max_error,
        metric_outputs=[s for s in args.metric_outputs.split(",") if s] if args.metric_outputs else None,
        tolerances=_tolerances(args.tolerance),
        default_tolerance=Tolerance(args.atol, args.rtol),
        samples=args.samples,
        seed=args.seed,
        progress=not args.quiet,
        measure_latency=args.measure_latency,
    )
    result.report.dry_run = args.dry_run
    try:
        if output is not None and not args.dry_run:
            result.save(output, external_data=True if args.external_data else None, in_place=args.in_place)
    finally:  # a pipeline reads the report also when the result was refused
        result.report.seconds = time.perf_counter() - started
        if "--report" in extras:
            result.report.write_json(extras["--report"])
        if "--plot" in extras:
            from .model_io import write_text_atomic
            from .plot import report_svg

            write_text_atomic(extras["--plot"], report_svg(result.report))
    if not args.quiet:
        print(result.report.render(), end="")
        if result.report.output:
            print(f"wrote {result.report.output} ({result.report.output_bytes} bytes)")
    failed = [c for c, v in result.report.final_checks.items() if v != "ok"]
    if failed:
        print(f"onnxslim: warning: final check failed (the input model fails it too): {', '.join(failed)}", file=sys.stderr)
    code = result.exit_code(args.allow_rollback)
    if result.report.incomplete:
        what = "; ".join(f"{row.name} {row.status}: {row.reason}" for row in result.report.incomplete)
        kept = "the last valid model was written" if result.report.output else "no model written"
        verdict = f"exit {code}" if code else "accepted by --allow-rollback"
        print(f"onnxslim: not every pass took effect ({what}); {kept}; {verdict}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    warnings.simplefilter("ignore" if not debug else "default")

    def terminated(signum, frame):  # SIGTERM unwinds like Ctrl-C: finally blocks remove temporary files
        raise KeyboardInterrupt("terminated")

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminated) if in_main_thread else None
    logging_disabled = logging.root.manager.disable  # --quiet silences library logs for this run only
    # Everything alive now (imported modules, mostly) outlives the run: the garbage collector's
    # full collections need not walk it again (they did, twice per run: ~5% of a default run's
    # CPU on a small model). Unfrozen afterwards, so a caller's garbage is collected as usual.
    gc.freeze()
    try:
        with command_line():  # errors name flags (--in-place), not API arguments (in_place=True)
            return run(argv)
    except OnnxSlimError as exc:
        if debug:
            raise
        print(f"onnxslim: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `onnxslim passes | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt as exc:
        if exc.args == ("terminated",):
            print("onnxslim: terminated", file=sys.stderr)
            return 143
        print("onnxslim: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line unless --debug
        if debug:
            raise
        print(f"onnxslim: internal error: {type(exc).__name__}: {exc} (rerun with --debug)", file=sys.stderr)
        return 1
    finally:
        gc.unfreeze()
        logging.disable(logging_disabled)
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def console() -> int:
    """The ``onnxslim`` command and ``python -m onnxslim``: :func:`main`, after which the process
    exits. What is still alive is frozen first: CPython's collections at shutdown would walk
    every imported module's objects once more (~0.1 CPU-s of a run on a small model)."""
    code = main()
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(console())
