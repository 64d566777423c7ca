"""Errors the tool reports as one line and an exit code, never as a traceback."""

from __future__ import annotations


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
