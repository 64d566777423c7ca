"""Ridge least squares on calibration rows, for reconstruction (and the OBS Hessian's products).

A layer refit solves ``argmin ‖X·W − Y‖² + λ‖W − W₀‖²`` (see ``reconstruct``) from one of two
forms with the same interface and the same λ:

* :class:`Gram` — the normal equations from the statistics XᵀX, XᵀY and ‖Y‖², accumulated
  over calibration samples (rows ≥ unknowns);
* :class:`Rows` — the rows themselves and the R×R dual system (rows < unknowns).

Both keep the fitted and the held-out rows apart (part 0 and part 1) so that a fit on part 0
can be checked on part 1 before the fit on all rows is written.

Products: float32 over blocks of rows, accumulated in float64 (relative error ~1e-6, far below
the damping). Rows arrive one calibration sample at a time (a few hundred output positions of a
deep layer); they are buffered into blocks of about CHUNK_ROWS rows first, because one D×D
product over few rows is slow and every block adds a D×D float64 accumulation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.linalg

#: Below this many fitted rows per unknown (per output channel) the ridge grows in proportion
#: (measured on MiniLM: 512 rows for 1536 inputs with the plain damping made the drift worse).
MIN_ROWS_PER_UNKNOWN = 2
#: Rows per float32 product block (also: rows unfolded at a time, bounding im2col memory).
CHUNK_ROWS = 2048


def damping(damp: float, diag_mean: float, width: int, rows: int) -> float:
    """The ridge λ: ``damp`` × the mean diagonal of XᵀX, grown when there are fewer than
    MIN_ROWS_PER_UNKNOWN rows per unknown (``width`` unknowns per output)."""
    lam = damp * diag_mean if diag_mean > 0 else 1e-8
    return lam * max(1.0, MIN_ROWS_PER_UNKNOWN * width / max(rows, 1))


def block_rows(width: int) -> int:
    """Rows buffered before one product: CHUNK_ROWS, but at most 2·width so that the float32
    buffer (rows × width) never outgrows the float64 width × width accumulator it feeds."""
    return max(1, min(CHUNK_ROWS, 2 * width))


def kernel(x32: np.ndarray) -> np.ndarray:
    """``X·Xᵀ`` (float64) of float32 rows from a float32 product, like the Gram's blocks."""
    return (x32 @ x32.T).astype(np.float64)


class Gram:
    """XᵀX, XᵀY and ‖Y‖² over the fitted rows and over the held-out rows."""

    def __init__(self, width: int, outputs: int, damp: float):
        self.damp = damp
        self.g = np.zeros((2, width, width))
        self.c = np.zeros((2, width, outputs))
        self.yy = np.zeros(2)
        self.rows = 0
        self.fit_rows = 0
        self._pending: list[list[tuple[np.ndarray, np.ndarray]]] = [[], []]
        self._pending_rows = [0, 0]
        self._block = block_rows(width)

    def add(self, x: np.ndarray, y: np.ndarray, held: np.ndarray) -> None:
        for part, mask in ((0, ~held), (1, held)):
            if not mask.any():
                continue
            xs = np.asarray(x if mask.all() else x[mask], np.float32)
            ys = np.asarray(y if mask.all() else y[mask], np.float32)
            self.yy[part] += float(np.sum(np.square(ys, dtype=np.float64)))
            self._pending[part].append((xs, ys))
            self._pending_rows[part] += len(xs)
            if self._pending_rows[part] >= self._block:
                self._flush(part)
        self.rows += len(x)
        self.fit_rows += int((~held).sum())

    def _flush(self, part: int) -> None:
        pending = self._pending[part]
        if not pending:
            return
        xs = pending[0][0] if len(pending) == 1 else np.concatenate([p[0] for p in pending])
        ys = pending[0][1] if len(pending) == 1 else np.concatenate([p[1] for p in pending])
        self.g[part] += xs.T @ xs
        self.c[part] += xs.T @ ys
        self._pending[part], self._pending_rows[part] = [], 0

    def _settle(self) -> None:
        self._flush(0)
        self._flush(1)

    def error(self, w: np.ndarray, part: int) -> float:
        """‖X·W − Y‖ / ‖Y‖ from the statistics alone."""
        if self.yy[part] <= 0:
            return 0.0
        self._settle()
        sq = np.sum(w * (self.g[part] @ w)) - 2.0 * np.sum(w * self.c[part]) + self.yy[part]
        return float(np.sqrt(max(sq, 0.0) / self.yy[part]))

    def solve(self, parts: Sequence[int], prior: np.ndarray, free: int = 0) -> np.ndarray:
        """Ridge solution over ``parts`` pulled towards ``prior`` (the sliced weights); the last
        ``free`` rows (intercept) are not damped. Fewer rows than MIN_ROWS_PER_UNKNOWN per
        unknown scale the damping up."""
        self._settle()
        g, c = self._damped(parts, prior, free)
        try:
            # Cholesky factor and solve (LAPACK potrf/potrs): the same math as
            # solve(assume_a="pos"), ~1.5× faster in scipy 1.17 for D ~ 1000–2000
            factor = scipy.linalg.cho_factor(g, lower=True, overwrite_a=True, check_finite=False)
            return scipy.linalg.cho_solve(factor, c, overwrite_b=True, check_finite=False)
        except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
            g, c = self._damped(parts, prior, free)  # the factorisation overwrote the first
            return np.linalg.lstsq(g, c, rcond=None)[0]

    def _damped(self, parts: Sequence[int], prior: np.ndarray, free: int) -> tuple[np.ndarray, np.ndarray]:
        """New arrays: the normal equations over ``parts`` with the ridge towards ``prior``."""
        g, c = self._sum(self.g, parts), self._sum(self.c, parts)
        rows = self.fit_rows if list(parts) == [0] else self.rows
        diag = np.diag(g)[: len(g) - free]
        lam = damping(self.damp, float(diag.mean()) if len(diag) else 0.0, len(g), rows)
        idx = np.arange(len(g) - free)
        g[idx, idx] += lam
        c[idx] += lam * prior[idx]
        return g, c

    @staticmethod
    def _sum(stat: np.ndarray, parts: Sequence[int]) -> np.ndarray:
        """A new array: the statistic summed over ``parts``."""
        parts = list(parts)
        return stat[parts[0]] + stat[parts[1]] if len(parts) == 2 else stat[parts[0]].copy()


class Rows:
    """The fitted and held-out rows themselves, for layers with fewer rows than unknowns.

    There the D×D normal equations cost D³/3 per solve and R·D² to build (D up to 4608 for a
    3×3 Conv of 512 channels, R a few hundred output positions of a deep layer); the same ridge
    solution comes from the R×R dual system (Woodbury), ``W = W₀ + X_cᵀ(X_cX_cᵀ + λI)⁻¹(Y_c −
    X_cW₀)``, where the undamped intercept is eliminated by centering (``_c``: minus the column
    means over the rows used). Same interface and same λ as :class:`Gram` (``width`` and
    ``outputs`` are read off the rows).
    """

    def __init__(self, width: int, outputs: int, damp: float):
        self.damp = damp
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.rows = 0
        self.fit_rows = 0
        self._x32 = self._y = self._kernel = None
        self._fit = 0
        self.yy = np.zeros(2)

    def add(self, x: np.ndarray, y: np.ndarray, held: np.ndarray) -> None:
        self.parts.append((np.asarray(x, np.float32), np.asarray(y, np.float32), held))
        self.rows += len(x)
        self.fit_rows += int((~held).sum())
        for part, mask in ((0, ~held), (1, held)):
            self.yy[part] += float(np.sum(np.square(y[mask], dtype=np.float64)))

    def _stack(self) -> None:
        if self._x32 is None:
            held = np.concatenate([p[2] for p in self.parts])
            order = np.argsort(held, kind="stable")  # fitted rows first: each part is a slice
            self._x32 = np.concatenate([p[0] for p in self.parts])[order]
            self._y = np.concatenate([p[1] for p in self.parts]).astype(np.float64)[order]
            self._fit = int((~held).sum())
            self.parts = []
            self._kernel = kernel(self._x32)  # uncentered, all rows: each solve takes its block

    def _mask(self, parts: Sequence[int]) -> slice:
        self._stack()
        if list(parts) == [0, 1]:
            return slice(None)
        return slice(self._fit, None) if list(parts) == [1] else slice(0, self._fit)

    def error(self, w: np.ndarray, part: int) -> float:
        """‖X·W − Y‖ / ‖Y‖ over the part's rows."""
        if self.yy[part] <= 0:
            return 0.0
        mask = self._mask([part])
        # float32 product: a relative error of ~1e-6 only decides whether a refit is written
        residual = self._x32[mask] @ w.astype(np.float32) - self._y[mask]
        return float(np.sqrt(np.sum(residual * residual, dtype=np.float64) / self.yy[part]))

    def solve(self, parts: Sequence[int], prior: np.ndarray, free: int = 0) -> np.ndarray:
        mask = self._mask(parts)
        x, y = self._x32[mask], self._y[mask]
        k = self._kernel[mask, mask].copy()
        d = x.shape[1] - free
        # Σ x² over the damped columns: the kernel's trace less the intercept column's ones
        lam = damping(self.damp, (float(np.trace(k)) - free * len(x)) / max(d, 1), x.shape[1], len(x))
        xc, yc = x[:, :d], y
        if free:  # the intercept column (ones) is free: center rows and eliminate it
            x_mean, y_mean = xc.mean(axis=0, dtype=np.float64), y.mean(axis=0)
            m = (xc @ x_mean.astype(np.float32)).astype(np.float64)
            # the kernel of the damped columns only, centered: (x−x̄)(x−x̄)ᵀ
            k -= m[:, None]
            k -= m[None, :]
            k += float(x_mean @ x_mean) - free
            xc, yc = xc - x_mean.astype(np.float32), y - y_mean
        k[np.diag_indices_from(k)] += lam
        # float32 products of the (float32) rows, as the Gram form's; the R×R solve in float64
        rhs = yc - xc @ prior[:d].astype(np.float32)
        try:
            factor = scipy.linalg.cho_factor(k, lower=True, overwrite_a=True, check_finite=False)
            alpha = scipy.linalg.cho_solve(factor, rhs, check_finite=False)
        except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
            alpha = np.linalg.lstsq(k, rhs, rcond=None)[0]
        w = prior[:d] + xc.T @ alpha.astype(np.float32)
        if not free:
            return w
        return np.concatenate([w, (y_mean - x_mean @ w)[None, :]])
