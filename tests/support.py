"""Test-only passes shared by several test modules (not collected: no ``test_`` prefix)."""

from __future__ import annotations

from onnxslim.pass_api import Pass, PassResult, option


class ScaleWeight(Pass):
    """Lossy test pass: halves one named main-graph weight (e.g. the weight one If branch reads)."""

    name = "test-scale-weight"
    summary = "scale a named weight (test only)"
    lossless = False

    class Options(Pass.Options):
        weight: str = option("w8", "initializer to scale")

    def run(self, model, ctx):
        import onnx_ir as ir

        value = model.graph.initializers[self.options.weight]
        value.const_value = ir.Tensor(value.const_value.numpy() * 0.5, name=value.name)
        return PassResult(True, f"scaled {self.options.weight}")
