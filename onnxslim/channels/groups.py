"""The public objects of the channel analysis: groups, their members and activations."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from ..constants import ConstantTensor


@dataclasses.dataclass(eq=False)
class Member:
    """A weight axis (or part of one) whose positions belong to a group.

    ``positions[i]`` is an index along ``axis`` of ``tensor``; ``slots[i]`` the group channel it
    carries. ``role`` says what the slice is: "weight", "bias", "bn_scale", "bn_bias",
    "bn_mean", "bn_var", "scale" (per-channel Mul), "shift" (Add/Sub), "divisor" (Div),
    "slope" (PRelu), "ln_scale", "ln_bias", "q_scale", "q_zero_point" (per-channel quantization of
    an activation), "param" (other element-wise constants).
    """

    tensor: ConstantTensor
    axis: int
    positions: np.ndarray
    slots: np.ndarray
    node: ir.Node
    role: str

    @property
    def mapping(self) -> str:
        """How the member's positions map to slots: identity, offset or repeat."""
        return mapping_kind(self.positions, self.slots, self.tensor.shape[self.axis])

    def __repr__(self) -> str:
        return f"Member({self.tensor.name!r}, axis={self.axis}, role={self.role}, {self.mapping}, n={len(self.positions)})"


@dataclasses.dataclass(eq=False)
class Activation:
    """A tensor that carries the group's channels along ``axis`` (for data-driven criteria).

    ``role``: "output" (a producer's output), "input" (read by a consumer), or "internal".
    """

    value: ir.Value
    axis: int
    positions: np.ndarray
    slots: np.ndarray
    role: str


@dataclasses.dataclass(eq=False)
class ChannelGroup:
    """Channels that are removed together. ``size`` slots; slot i is channel i of ``name``'s layer."""

    id: int
    size: int
    kind: str  # "conv", "linear", "heads" or "residual"
    name: str  # the first producer node's name
    producers: list[Member]
    consumers: list[Member]
    activations: list[Activation]
    nodes: list[ir.Node]  # every node whose tensors carry the group's channels
    #: Width of one slot in the producers' outputs (head_dim for heads, 1 otherwise).
    slot_width: int = 1

    def __repr__(self) -> str:
        return f"ChannelGroup({self.id}, {self.name!r}, kind={self.kind}, size={self.size})"

    def __hash__(self) -> int:
        return id(self)


@dataclasses.dataclass(eq=False)
class FrozenGroup:
    group: ChannelGroup
    reason: str  # the first reason found
    reasons: list[str]

    def __repr__(self) -> str:
        return f"FrozenGroup({self.group.name!r}, {self.reason!r})"


def mapping_kind(positions: np.ndarray, slots: np.ndarray, length: int) -> str:
    if len(np.unique(slots)) < len(slots):
        return "repeat"
    if np.array_equal(slots, np.arange(len(slots))):
        return "identity" if len(positions) == length and np.array_equal(positions, slots) else "offset"
    return "offset"
