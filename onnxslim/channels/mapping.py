"""Index mappings: how an op maps the channel positions of its input to those of its output.

The counterpart of Torch-Pruning's ``index_mapping.py``. Atoms are arrays holding, for every
position of an axis, the atom (future slot) it carries; each mapping below turns one such array
into another (repeat over a flattened run, blocks of a split axis, a channel shuffle, the
groups of a grouped Conv) and says which atoms must go together.
"""

from __future__ import annotations

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


def same_slot_in_every_block(atoms: np.ndarray, n_blocks: int, union: Union) -> np.ndarray:
    """One axis split into ``n_blocks`` × width, pruned by the same positions in every block
    (a grouped Conv's groups, channel-shuffle groups); returns the atoms of one block."""
    blocks = atoms.reshape(n_blocks, -1)
    for row in range(1, n_blocks):
        union(blocks[0], blocks[row])
    return blocks[0]


def align(src: Sequence[Dim], dst: Sequence[Dim]) -> list[tuple[list[int], list[int]]] | None:
    """Pair runs of input axes with runs of output axes of equal total size."""
    segments = []
    i = j = 0
    while i < len(src) and j < len(dst):
        if src[i] == dst[j] and (isinstance(src[i], int) or src[i] is not None):
            segments.append(([i], [j]))
            i, j = i + 1, j + 1
            continue
        if not isinstance(src[i], int) or not isinstance(dst[j], int):
            return None
        a, b = [i], [j]
        pa, pb = src[i], dst[j]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb:
                if i >= len(src) or not isinstance(src[i], int):
                    return None
                pa *= src[i]
                a.append(i)
                i += 1
            else:
                if j >= len(dst) or not isinstance(dst[j], int):
                    return None
                pb *= dst[j]
                b.append(j)
                j += 1
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
