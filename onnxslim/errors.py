"""Errors the tool reports as one line and an exit code, never as a traceback."""

from __future__ import annotations

import contextlib
import contextvars
import difflib
from collections.abc import Iterable, Iterator


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
        return flag if value is None or value is True else f"{flag} {value}"
    return name if value is None else f"{name}={value!r}"


def did_you_mean(word: str, choices: Iterable[str], n: int = 2) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` (at most ``n``), or ``""`` when
    none is close."""
    close = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)"
