"""Normalisation layers: per-channel parameters are sliced with the channels they scale."""

from __future__ import annotations

import onnx_ir as ir

from ..walk import Walk, attr_int, label
from . import rule


@rule("BatchNormalization")
def batchnormalization(w: Walk, node: ir.Node) -> None:
    axes = w.tracked(node.inputs[0])
    if not axes:
        return
    if len([o for o in node.outputs if o is not None]) > 1 or any(a != 1 for a in axes):
        w.freeze_inputs(node, "training-mode BatchNormalization")
        return
    _channel_params(w, node, ("bn_scale", "bn_bias", "bn_mean", "bn_var"), axes[1], lambda role: f"BatchNormalization with computed {role} at node {node.name}")
    w.set(node.outputs[0], axes, node)

@rule("InstanceNormalization")
def instancenormalization(w: Walk, node: ir.Node) -> None:
    axes = w.tracked(node.inputs[0])
    if not axes:
        return
    if any(a != 1 for a in axes):
        w.freeze_inputs(node, "normalization over channels")
        return
    _channel_params(w, node, ("bn_scale", "bn_bias"), axes[1], lambda role: f"computed {role} at {label(node)}")
    w.set(node.outputs[0], axes, node)

@rule("LayerNormalization")
def layernormalization(w: Walk, node: ir.Node) -> None:
    axes = w.tracked(node.inputs[0])
    if not axes:
        return
    rank = w.rank(node.inputs[0])
    axis = attr_int(node, "axis", -1)
    if rank is None:
        w.freeze_inputs(node, "unknown rank")
        return
    axis %= rank
    normalized = [a for a in axes if a >= axis]
    if normalized and (axis != rank - 1 or len(node.outputs) > 1 and any(o.uses() for o in node.outputs[1:])):
        w.freeze_inputs(node, "normalization over several axes")
        return
    if normalized:
        atoms = axes[rank - 1]
        for inp, role in zip(node.inputs[1:3], ("ln_scale", "ln_bias")):
            if inp is not None and w.ref(inp, -1, atoms, node, role, "producer") is None:
                w.freeze(atoms, f"computed {role} at {label(node)}")
        w.ln_atoms.append((atoms, node))
    w.set(node.outputs[0], axes, node)


def _channel_params(w: Walk, node: ir.Node, roles: tuple[str, ...], atoms, reason) -> None:
    """Inputs 1.. of ``node`` are per-channel vectors sliced with ``atoms`` (one role each); a
    computed one freezes them with ``reason(role)``."""
    for inp, role in zip(node.inputs[1 : 1 + len(roles)], roles):
        if w.ref(inp, 0, atoms, node, role, "producer") is None:
            w.freeze(atoms, reason(role))
