"""Channel rules, one module per op family. A rule is ``rule(walk, node)``: it reads the tracked
channel axes of the node's inputs (``walk.tracked``), registers the constants it slices
(``walk.ref``), couples or freezes atoms, and sets its outputs' axes (``walk.set``). Adding an
op means adding a function with ``@rule("OpType")`` to the module of its family."""

from __future__ import annotations

from collections.abc import Callable

RULES: dict[str, Callable] = {}


def rule(*op_types: str) -> Callable[[Callable], Callable]:
    def register(fn: Callable) -> Callable:
        for op in op_types:
            RULES[op] = fn
        return fn

    return register


from . import concat, control, conv, elementwise, linear, norm, quant, reduce, reshape  # noqa: E402,F401  (registers the rules)
