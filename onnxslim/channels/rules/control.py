"""Control flow: If branches are walked; their outputs couple."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..walk import Walk, label
from . import rule


@rule("If")
def if_(w: Walk, node: ir.Node) -> None:
    w.freeze_value(node.inputs[0], f"channels used as a condition at {label(node)}")
    branches = [node.attributes[k].as_graph() for k in ("then_branch", "else_branch") if k in node.attributes]
    for graph in branches:
        w.walk(graph)
    for i, out in enumerate(node.outputs):
        maps = [w.tracked(g.outputs[i]) for g in branches]
        merged: dict[int, np.ndarray] = {}
        for a in set().union(*maps):
            present = [m[a] for m in maps if a in m]
            if len(present) < len(maps):
                for atoms in present:
                    w.freeze(atoms, f"If output {out.name!r}: only one branch carries channels")
                continue
            for atoms in present[1:]:
                w.union(present[0], atoms)
            merged[a] = present[0]
        w.set(out, merged, node)
