"""Symbolic shape vectors: where each entry of a Reshape/Expand/Pad shape input comes from.

Exporters compute shapes at run time: ``Concat(Unsqueeze(Gather(Shape(x), 0)), [-1], [64])``
(batch × heads × head_dim), ``Shape(x)[2] // 7`` (windows). Each entry is resolved to a
literal in a constant (rewritable when channels go), a dim of some value (which follows that
value at run time), 0 / -1 (copy / infer), a fixed number, or unknown.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from ..constants import constant
from .mapping import Product

if TYPE_CHECKING:
    from .walk import Walk

Dim = int | str | Product | None


@dataclasses.dataclass(frozen=True, eq=False)
class Entry:
    kind: str  # "literal", "fixed", "dim", "unknown"
    number: int | None = None  # literal / fixed value
    value: ir.Value | None = None  # literal: the constant that holds it ...
    index: int | None = None  # ... at this flat index ...
    reader: ir.Node | None = None  # ... read by this node
    source: ir.Value | None = None  # dim: Shape(source)[axis] * scale + offset
    axis: int | None = None
    scale: Fraction = Fraction(1)
    offset: Fraction = Fraction(0)
    piece: tuple[ir.Node, int] | None = None  # a one-entry input of a Concat: (Concat, input index)
    factor: Entry | None = None  # dim: the literal its run-time dim was multiplied by (batch × heads)
    times: tuple[tuple[ir.Value, int], ...] = ()  # dim: further run-time dims multiplied in (N × batch)

    @property
    def is_copy(self) -> bool:
        return self.kind in ("literal", "fixed") and self.number == 0

    @property
    def is_infer(self) -> bool:
        return self.kind in ("literal", "fixed") and self.number == -1


_UNKNOWN = Entry("unknown")


def entries(w: Walk, value: ir.Value | None, reader: ir.Node, depth: int = 0) -> list[Entry] | None:
    """The entries of the 1-D (or scalar) integer tensor ``value`` read by ``reader``; None
    when not even its length is known."""
    if value is None:
        return None
    c = constant(value)
    if c is not None:
        arr = c.numpy().reshape(-1)
        if arr.dtype.kind not in "iu":
            return None
        return [Entry("literal", int(v), value, i, reader) for i, v in enumerate(arr)]
    node = value.producer()
    found = _from_node(w, node, depth) if node is not None and depth < 12 else None
    if found is not None:
        return found
    shape = w.shape(value)
    if shape is None or len(shape) > 1 or (shape and not isinstance(shape[0], int)):
        return None
    return [_UNKNOWN] * (shape[0] if shape else 1)


def _from_node(w: Walk, node: ir.Node, depth: int) -> list[Entry] | None:
    op = node.op_type
    sub = lambda i: entries(w, node.inputs[i] if len(node.inputs) > i else None, node, depth + 1)  # noqa: E731
    if op == "Shape":
        shape = w.shape(node.inputs[0])
        if shape is None:
            return None
        rank = len(shape)
        start, end = _attr(node, "start", 0), _attr(node, "end", rank)
        lo, hi, _ = slice(start, end).indices(rank)
        return [Entry("dim", source=node.inputs[0], axis=k) for k in range(lo, hi)]
    if op in ("Unsqueeze", "Squeeze", "Cast", "Identity", "Reshape", "Flatten"):
        return sub(0)
    if op == "Concat":
        parts = [entries(w, v, node, depth + 1) for v in node.inputs]
        if any(p is None for p in parts):
            return None
        return [dataclasses.replace(p[0], piece=(node, i)) if len(p) == 1 else e for i, p in enumerate(parts) for e in p]
    if op == "Gather" and _attr(node, "axis", 0) == 0:
        data, idx = sub(0), constant(node.inputs[1])
        if data is None or idx is None:
            return None
        return [_fixed(data[int(i)]) for i in idx.numpy().reshape(-1)]
    if op == "Slice":
        data = sub(0)
        bounds = [_number(sub(i)) if len(node.inputs) > i and node.inputs[i] is not None else None for i in range(1, 5)]
        if data is None or bounds[0] is None or bounds[1] is None or (bounds[2] or 0) != 0:
            return None
        return [_fixed(e) for e in data[slice(bounds[0], bounds[1], bounds[3] or 1)]]
    if op in ("Mul", "Div", "Add", "Sub", "Mod") and len(node.inputs) == 2:
        a, b = sub(0), sub(1)
        if a is None or b is None:
            return None
        n = max(len(a), len(b))
        if len(a) not in (1, n) or len(b) not in (1, n):
            return None
        return [_arith(op, a[i % len(a)], b[i % len(b)]) for i in range(n)]
    return None


def _number(found: list[Entry] | None) -> int | None:
    """The value of a one-entry constant (a Slice bound computed from constants)."""
    if found is None or len(found) != 1 or found[0].kind not in ("literal", "fixed"):
        return None
    return found[0].number


def _fixed(entry: Entry) -> Entry:
    """An entry moved away from the constant that holds it cannot be rewritten there."""
    return Entry("fixed", entry.number) if entry.kind == "literal" else entry


def _arith(op: str, a: Entry, b: Entry) -> Entry:
    """Integer arithmetic on entries; a dim stays a dim under an affine map. A Div's floor is
    dropped when the offset it leaves is below 1 (``(C + 1) // 2`` of an even C): the
    channel-count constraints then require exact division (see ``Walk.same_count``)."""
    nums = [e.number if e.kind in ("literal", "fixed") else None for e in (a, b)]
    if None not in nums:
        x, y = nums
        value = {"Mul": x * y, "Div": x // y if y else 0, "Add": x + y, "Sub": x - y, "Mod": x % y if y else 0}[op]
        return Entry("fixed", value)
    if op in ("Mul", "Add") and a.kind != "dim":
        a, b, nums = b, a, nums[::-1]
    if op == "Mul" and a.kind == b.kind == "dim" and _plain(a) and _plain(b) and not b.times:
        return dataclasses.replace(a, piece=None, times=a.times + ((b.source, b.axis),))
    if a.kind != "dim" or nums[1] is None or op == "Mod" or a.times:
        return _UNKNOWN
    c = nums[1]
    scale, offset = a.scale, a.offset
    factor = None
    if op == "Mul":
        scale, offset = scale * c, offset * c
        # a run-time dim times a literal (batch × heads): the literal is what follows the blocks
        factor = b if b.kind == "literal" and _plain(a) else None
    elif op == "Add":
        offset += c
    elif op == "Sub":
        offset -= c
    elif c:
        scale, offset = scale / c, offset / c
        if 0 <= offset < 1:
            offset = Fraction(0)
    else:
        return _UNKNOWN
    return Entry("dim", source=a.source, axis=a.axis, scale=scale, offset=offset, factor=factor)


def _plain(entry: Entry) -> bool:
    return entry.scale == 1 and entry.offset == 0 and entry.factor is None


def _attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return attr.as_int() if attr is not None else default


def resolved(w: Walk, entry: Entry) -> Dim:
    """The entry's size where it is known (an int, or a symbolic dim name), else None."""
    if entry.kind in ("literal", "fixed"):
        return entry.number
    if entry.kind == "dim":
        dim = _dim_of(w, entry.source, entry.axis)
        if entry.times:
            dims = [Product.of(dim)] + [Product.of(_dim_of(w, v, k)) for v, k in entry.times]
            if any(d is None for d in dims):
                return None
            total = dims[0]
            for d in dims[1:]:
                total = total * d
            return total.coef if not total.symbols else total
        if isinstance(dim, int):
            value = dim * entry.scale + entry.offset
            return int(value) if value.denominator == 1 else None
        if isinstance(dim, str) and entry.offset == 0 and entry.scale.denominator == 1:
            return dim if entry.scale == 1 else Product(int(entry.scale), (dim,))
    return None


def _dim_of(w: Walk, value: ir.Value, axis: int) -> Dim:
    shape = w.shape(value)
    return shape[axis] if shape is not None and axis < len(shape) else None


def target_shape(w: Walk, found: list[Entry], src: list[Dim], inferred: list[Dim] | None) -> list[Dim]:
    """A Reshape's output shape: inference's dims where known, else the entries' (0 copies the
    input dim, one -1 takes what is left of the input's size, symbols included)."""
    dst: list[Dim] = []
    for j, entry in enumerate(found):
        known = inferred[j] if inferred is not None and j < len(inferred) else None
        if isinstance(known, int):
            dst.append(known)
        elif entry.is_copy:
            dst.append(src[j] if j < len(src) else None)
        elif entry.is_infer:
            dst.append(-1)
        else:
            dst.append(resolved(w, entry) or known)
    if dst.count(-1) == 1:
        j = dst.index(-1)
        dst[j] = _rest(src, dst[:j] + dst[j + 1 :])
    return [None if d == -1 else d for d in dst]


def _rest(src: list[Dim], others: list[Dim]) -> Dim:
    if any(d is None for d in src + others):
        return None
    symbols = [d for d in src if isinstance(d, str)]
    for d in others:
        if isinstance(d, str):
            if d not in symbols:
                return None
            symbols.remove(d)
    num = int(np.prod([d for d in src if isinstance(d, int)]))
    den = int(np.prod([d for d in others if isinstance(d, int)]))
    if den == 0 or num % den:
        return None
    if not symbols:
        return num // den
    return symbols[0] if len(symbols) == 1 and num == den else Product(num // den, tuple(sorted(symbols)))
