"""Index mappings: how an op maps the channel positions of its input to those of its output.

The counterpart of Torch-Pruning's ``index_mapping.py``. Atoms are arrays holding, for every
position of an axis, the atom (future slot) it carries; each mapping below turns one such array
into another (repeat over a flattened run, blocks of a split axis, a channel shuffle, the
groups of a grouped Conv) and says which atoms must go together.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

Dim = int | str | None
Union = Callable[[np.ndarray, np.ndarray], None]


def merged_atoms(atoms: np.ndarray, pos: int, dims: list[Dim]) -> np.ndarray | None:
    """Atoms of one axis spread over the flattened run ``dims`` (C×H×W → features: repeat)."""
    if len(dims) == 1:
        return atoms
    dims = [len(atoms) if i == pos else d for i, d in enumerate(dims)]
    if not all(isinstance(d, int) for d in dims):
        return None
    bshape = [1] * len(dims)
    bshape[pos] = len(atoms)
    return (np.zeros(dims, dtype=np.int64) + atoms.reshape(bshape)).reshape(-1)


def outer_blocks(atoms: np.ndarray, n_blocks: int, union: Union) -> np.ndarray:
    """One axis split into ``n_blocks`` × rest, pruned by whole blocks (attention heads): the
    atoms of each block go together; returns the atoms of the block axis."""
    blocks = atoms.reshape(n_blocks, -1)
    for col in range(1, blocks.shape[1]):
        union(blocks[:, 0], blocks[:, col])
    return blocks[:, 0]


class Folded(np.ndarray):
    """The atoms of an axis that is a run-time factor × blocks (``[N, batch·heads, head_dim]``:
    heads folded into the batch axis). Position h of the array is block h in every outer
    repeat, so removing it removes that head for every batch row; the axis size is
    ``outer × len(atoms)``."""

    outer: Dim | Product

    def __array_finalize__(self, obj) -> None:
        self.outer = getattr(obj, "outer", None)


def folded(blocks: np.ndarray, outer) -> Folded:
    out = np.asarray(blocks).view(Folded)
    out.outer = outer
    return out


def axis_size(atoms: np.ndarray) -> Dim | Product:
    """The size of an axis from its atoms (a folded axis: outer factor × blocks)."""
    if isinstance(atoms, Folded):
        return Product.of(atoms.outer) * Product(len(atoms))
    return len(atoms)


def same_slot_in_every_block(atoms: np.ndarray, n_blocks: int, union: Union) -> np.ndarray:
    """One axis split into ``n_blocks`` × width, pruned by the same positions in every block
    (a grouped Conv's groups, channel-shuffle groups); returns the atoms of one block."""
    blocks = atoms.reshape(n_blocks, -1)
    for row in range(1, n_blocks):
        union(blocks[0], blocks[row])
    return blocks[0]


@dataclasses.dataclass(frozen=True)
class Product:
    """A dim as coefficient × symbols (``4*batch``): enough to pair merged runs of axes."""

    coef: int
    symbols: tuple[str, ...] = ()

    @classmethod
    def of(cls, dim) -> Product | None:
        if isinstance(dim, Product):
            return dim
        if isinstance(dim, int):
            return cls(dim)
        return cls(1, (dim,)) if isinstance(dim, str) else None

    def __mul__(self, other: Product) -> Product:
        return Product(self.coef * other.coef, tuple(sorted(self.symbols + other.symbols)))

    def divides(self, other: Product) -> bool:
        rest = list(other.symbols)
        for s in self.symbols:
            if s not in rest:
                return False
            rest.remove(s)
        return self.coef != 0 and other.coef % self.coef == 0


def align(src: Sequence[Dim], dst: Sequence[Dim]) -> list[tuple[list[int], list[int]]] | None:
    """Pair runs of input axes with runs of output axes of equal total size (symbolic dims
    pair by name: [batch, 2, 2, 16] → [4*batch, 16])."""
    segments = []
    i = j = 0
    while i < len(src) and j < len(dst):
        pa, pb = Product.of(src[i]), Product.of(dst[j])
        if pa is None or pb is None:
            return None
        a, b = [i], [j]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa.divides(pb) and i < len(src) and Product.of(src[i]) is not None:
                pa = pa * Product.of(src[i])
                a.append(i)
                i += 1
            elif pb.divides(pa) and j < len(dst) and Product.of(dst[j]) is not None:
                pb = pb * Product.of(dst[j])
                b.append(j)
                j += 1
            elif j == len(dst) or i == len(src):
                # one side has no axis left: the rest of the other must multiply to this run
                # (the element counts are equal and every earlier run matched exactly)
                a += list(range(i, len(src)))
                b += list(range(j, len(dst)))
                i, j = len(src), len(dst)
                break
            else:
                return None
        segments.append((a, b))
    while i < len(src) and src[i] == 1:
        segments.append(([i], []))
        i += 1
    while j < len(dst) and dst[j] == 1:
        segments.append(([], [j]))
        j += 1
    if i != len(src) or j != len(dst):
        return None
    return segments
