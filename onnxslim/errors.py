"""Errors the tool reports as one line and an exit code, never as a traceback.

Exit codes: 0 every requested pass applied (or had nothing to do), 1 model problem or a pass
failed under ``--strict``, 2 usage error, :data:`EXIT_INCOMPLETE` (3) a requested pass was rolled
back, failed or skipped — the model written is the best valid one, but not what was asked for
(``--allow-rollback`` accepts that as success).
"""

from __future__ import annotations

#: Exit status when a requested pass was rolled back, failed or skipped and the run otherwise
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
