"""Channel dependency groups: which weight slices must be removed together, and removing them.

This is the ONNX counterpart of Torch-Pruning's DepGraph. Every output channel a layer creates
(a Conv filter, a Gemm/MatMul column, an embedding feature) is an *atom*. The analysis walks the
graph once in order and records, for every tensor axis that carries channels, which atom each
position holds. Ops relate atoms, each op family by its own rule (:mod:`.rules`):

* pass-through ops (BatchNormalization, activations, pools, Resize, Cast, ...) keep them;
* element-wise ops on two computed tensors (residual Add/Mul/Sub) *couple* them (union);
* Concat/Split/Slice offset them; Expand keeps them (its shape constant rewritten);
  Flatten/Reshape repeat them (C×H×W → features); a Reshape that splits features into
  [heads, head_dim] couples each head's atoms, so heads go whole; a channel shuffle permutes
  them; a grouped Conv removes the same slots in every group (:mod:`.mapping`);
* consumers (Conv/Gemm/MatMul input channels, depthwise Conv, LSTM inputs) read them.

Atoms that must go together form a *component* (one channel "slot"); all components created by
one layer form a :class:`ChannelGroup`. Each member of a group is a weight axis with, for each of
its positions that belongs to the group, the group slot it maps to (identity, offset, repeat or
per-head mapping all reduce to that one index array). Anything not understood *freezes* the groups
it touches with a reason naming the node; graph outputs freeze their groups. A uniform constant
(a zero bias, a ones scale) that the exporter de-duplicated across layers counts as one copy per
reader, so it does not couple them; a truly shared weight still does.

``ChannelAnalysis.apply({group: keep_slots})`` slices every member, rewrites ``group``
attributes, Reshape/Expand/Split/Slice constants and value shapes. A group may keep no slot where
its channels reach the rest of the graph through Concat inputs alone (``can_empty``): the Concats
drop those inputs and the nodes left without uses go, with the weights only they read. The
analysis is then stale: analyse again before another change.

Layout: :mod:`.atoms` (union-find), :mod:`.walk` (the walk and the rules' API), :mod:`.rules`
(one module per op family), :mod:`.mapping` (index mappings), :mod:`.analysis` (groups),
:mod:`.apply` (the edit step), :mod:`.macs` (MACs and parameter predictions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from .analysis import ChannelAnalysis
from .groups import Activation, ChannelGroup, FrozenGroup, Member


def analyze(model: ir.Model, *, freeze_residual_stream: bool = True) -> ChannelAnalysis:
    """The channel groups of ``model`` (see the module docstring). The model is not changed."""
    return ChannelAnalysis(model, freeze_residual_stream=freeze_residual_stream)


def remove_channels(analysis: ChannelAnalysis, keep: Mapping[ChannelGroup, np.ndarray | Sequence[int]]) -> dict[str, int]:
    """Remove every slot not kept in each group (see :meth:`ChannelAnalysis.apply`)."""
    return analysis.apply(keep)


__all__ = ["Activation", "ChannelAnalysis", "ChannelGroup", "FrozenGroup", "Member", "analyze", "remove_channels"]
