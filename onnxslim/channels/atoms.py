"""Atoms and their union-find: the bookkeeping every channel rule writes to.

Every output channel a layer creates is an *atom*; the atoms one layer creates together form a
*batch*. Rules union atoms that must go together and freeze atoms with a reason. At the end,
connected atoms form *components* (one channel slot each) and the components linked by a batch
form a *group*.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


class AtomTable:
    def __init__(self) -> None:
        self.count = 0
        self.batches: list[np.ndarray] = []
        self.unions: list[tuple[np.ndarray, np.ndarray]] = []
        self.frozen: list[tuple[np.ndarray, str]] = []

    def new(self, n: int) -> np.ndarray:
        atoms = np.arange(self.count, self.count + n, dtype=np.int64)
        self.count += n
        self.batches.append(atoms)
        return atoms

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        if a is not b:
            self.unions.append((a, b))

    def freeze(self, atoms: np.ndarray, reason: str) -> None:
        self.frozen.append((atoms, reason))

    def resolve(self) -> tuple[np.ndarray, np.ndarray]:
        """(component of each atom, group of each component), both numbered by first appearance."""
        comp = components(self.count, self.unions)
        n_comp = int(comp.max()) + 1 if self.count else 0
        batch_edges = [(comp[b[:-1]], comp[b[1:]]) for b in self.batches if len(b) > 1]
        return comp, components(n_comp, batch_edges)


def components(n: int, edges: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if edges:
        rows = np.concatenate([np.asarray(a, dtype=np.int64).reshape(-1) for a, _ in edges])
        cols = np.concatenate([np.asarray(b, dtype=np.int64).reshape(-1) for _, b in edges])
    else:
        rows = cols = np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    # renumber in order of first appearance so component ids follow atom creation
    _, first = np.unique(labels, return_index=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(np.argsort(first))] = np.arange(len(first))
    return rank[labels]
