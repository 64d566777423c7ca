"""onnxslim: prune, sparsify and slim ONNX models, checked against onnxruntime after every pass.

>>> result = onnxslim.optimize("in.onnx")  # the default pipeline: simplify  # doctest: +SKIP
>>> print(result.report.render()); result.save("out.onnx")   # doctest: +SKIP
"""

from __future__ import annotations

from ._lazy import defer_sympy

defer_sympy()  # onnx-ir imports sympy (~0.5 s) only for arithmetic on symbolic dims

from .errors import ModelError, OnnxSlimError, PassFailedError, UsageError
from .manager import OptimizeResult, optimize
from .model_io import load, save
from .pass_api import Pass, PassContext, PassResult, option
from .validation import Tolerance

__version__ = "0.1.0"

__all__ = [
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
