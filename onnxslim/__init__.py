"""onnxslim: prune, sparsify and slim ONNX models, checked against onnxruntime after every pass.

>>> result = onnxslim.optimize("in.onnx")  # the default pipeline: simplify  # doctest: +SKIP
>>> print(result.report.render()); result.save("out.onnx")   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._lazy import defer_sympy

defer_sympy()  # onnx-ir imports sympy (~0.5 s) only for arithmetic on symbolic dims

from .errors import EXIT_INCOMPLETE, ModelError, OnnxSlimError, PassFailedError, UsageError

if TYPE_CHECKING:
    from .manager import OptimizeResult, optimize
    from .model_io import load, save
    from .pass_api import Pass, PassContext, PassResult, option
    from .validation import Tolerance

# The API loads on first use, so that ``onnxslim.cli`` can start (and take a Ctrl-C) before
# numpy, onnx and onnxruntime are imported.
_LAZY = {
    "OptimizeResult": "manager",
    "optimize": "manager",
    "load": "model_io",
    "save": "model_io",
    "Pass": "pass_api",
    "PassContext": "pass_api",
    "PassResult": "pass_api",
    "option": "pass_api",
    "Tolerance": "validation",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'onnxslim' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value

__version__ = "0.1.0"

__all__ = [
    "EXIT_INCOMPLETE",
    "ModelError",
    "OnnxSlimError",
    "OptimizeResult",
    "Pass",
    "PassContext",
    "PassFailedError",
    "PassResult",
    "Tolerance",
    "UsageError",
    "load",
    "optimize",
    "option",
    "save",
]
