"""onnxslim: prune, sparsify and slim ONNX models, checked against onnxruntime after every pass."""

from __future__ import annotations

__version__ = "0.1.0"
