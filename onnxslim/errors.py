"""Errors the tool reports as one line and an exit code, never as a traceback.

Exit codes: 0 every requested pass applied (or had nothing to do), 1 model problem or a pass
failed under ``--strict``, 2 usage error, :data:`EXIT_INCOMPLETE` (3) a requested pass was rolled
back or failed — the model written is the best valid one, but not what was asked for
(``--allow-rollback`` accepts that as success).
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
from collections.abc import Iterable, Iterator

#: Exit status when a requested pass was rolled back or failed and the run otherwise
#: succeeded (the written model is the last valid one). ``--allow-rollback`` turns it into 0.
EXIT_INCOMPLETE = 3


class OnnxSlimError(Exception):
    """Base class: a problem the user can act on. ``exit_code`` is what the CLI returns."""

    exit_code = 1


class UsageError(OnnxSlimError):
    """Bad command line, unknown pass, bad option value, bad input-shape name (exit 2)."""

    exit_code = 2


class ModelError(OnnxSlimError):
    """The model (or its external data) cannot be read or is malformed (exit 1)."""

    exit_code = 1


class PassFailedError(OnnxSlimError):
    """A pass failed validation under ``--strict``, or broke the model beyond repair (exit 1)."""

    exit_code = 1


# ---- wording shared by every error message ---------------------------------------------------

_ON_COMMAND_LINE = contextvars.ContextVar("onnxslim_on_command_line", default=False)

#: Command-line flags whose name is not the API argument's with dashes.
_FLAGS = {"input_shapes": "--input-shape", "validate": "--no-validate", "tolerances": "--tolerance"}


@contextlib.contextmanager
def command_line() -> Iterator[None]:
    """Errors raised inside name command-line flags (``--in-place``), not API arguments."""
    token = _ON_COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _ON_COMMAND_LINE.reset(token)


def arg(name: str, value: object = None) -> str:
    """An argument as the caller wrote it: ``arg("in_place", True)`` is ``--in-place`` on the
    command line and ``in_place=True`` from Python; ``arg("calibration", "data.npz")`` is
    ``--calibration data.npz`` or ``calibration='data.npz'``."""
    if _ON_COMMAND_LINE.get():
        flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
        if value is None or value is True or (value is False and flag.startswith("--no-")):
            return flag
        return f"{flag} {value}"
    return name if value is None else f"{name}={value!r}"


def did_you_mean(word: str, choices: Iterable[str], n: int = 2) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` (at most ``n``), or ``""`` when
    none is close."""
    close = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)"
