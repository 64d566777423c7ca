"""The ridge solves of reconstruction (onnxslim.ridge) and the OBS inverse blocks, against
dense float64 computations: blocked float32 products, the dual (rows < unknowns) forms."""

from __future__ import annotations

import numpy as np
import pytest

from onnxslim import importance, ridge

DAMP = 1e-2


def correlated_rows(rows: int, width: int, seed: int = 0) -> np.ndarray:
    """Rows with strongly correlated columns (a few shared factors plus noise, like a smooth
    feature map's taps), where a damped inverse has entries of very different sizes."""
    rng = np.random.default_rng(seed)
    factors = rng.standard_normal((rows, 6)) * np.array([30, 10, 5, 2, 1, 0.5])
    mix = rng.standard_normal((6, width))
    return (factors @ mix + 0.1 * rng.standard_normal((rows, width)) + 0.5).astype(np.float32)


def ridge_reference(x, y, prior, parts_mask, free):
    """The ridge solution from dense float64 normal equations (intercept undamped)."""
    x, y = x[parts_mask].astype(np.float64), y[parts_mask].astype(np.float64)
    g, c = x.T @ x, x.T @ y
    d = len(g) - free
    lam = ridge.damping(DAMP, float(np.diag(g)[:d].mean()), len(g), len(x))
    g[np.arange(d), np.arange(d)] += lam
    c[:d] += lam * prior[:d]
    return np.linalg.solve(g, c)


def feed(stat, x, y, held, chunk):
    for start in range(0, len(x), chunk):
        stat.add(x[start : start + chunk], y[start : start + chunk], held[start : start + chunk])


@pytest.mark.parametrize("chunk", [7, 300, 5000])
def test_gram_products_over_blocks_of_rows_equal_the_dense_statistics(chunk):
    rng = np.random.default_rng(1)
    x = correlated_rows(3000, 40)
    y = rng.standard_normal((3000, 5)).astype(np.float32)
    held = (np.arange(3000) // 100) % 5 == 4
    gram = ridge.Gram(40, 5, DAMP)
    feed(gram, x, y, held, chunk)
    assert gram.rows == 3000 and gram.fit_rows == int((~held).sum())
    prior = rng.standard_normal((40, 5))
    for parts, mask in (([0], ~held), ([0, 1], np.ones(3000, bool))):
        want = ridge_reference(x, y, prior, mask, free=0)
        # float32 products: close to the float64 solution as a whole (these columns are
        # nearly collinear, so single small entries move more)
        assert np.linalg.norm(gram.solve(parts, prior) - want) < 1e-3 * np.linalg.norm(want)
    residual = x[held].astype(np.float64) @ prior - y[held]
    want = np.sqrt(np.sum(residual**2) / np.sum(y[held].astype(np.float64) ** 2))
    assert gram.error(prior, 1) == pytest.approx(want, rel=1e-5)


def test_gram_buffer_stays_below_its_accumulator():
    """Rows wait for a block, but never more than 2·width of them (the float32 buffer is at most
    the size of the float64 width² accumulator)."""
    gram = ridge.Gram(8, 2, DAMP)
    x = np.ones((5, 8), np.float32)
    for _ in range(6):
        gram.add(x, np.ones((5, 2), np.float32), np.zeros(5, bool))
        assert gram._pending_rows[0] < 2 * 8
    assert gram.g[0, 0, 0] > 0  # flushed on the way


@pytest.mark.parametrize("free", [0, 1])
def test_rows_dual_solution_equals_the_normal_equations(free):
    """Fewer rows than unknowns: the R×R dual (float32 kernel) gives the Gram form's solution."""
    rng = np.random.default_rng(2)
    x = correlated_rows(150, 300, seed=3)
    if free:
        x = np.concatenate([x, np.ones((150, 1), np.float32)], axis=1)
    y = rng.standard_normal((150, 4)).astype(np.float32)
    held = np.arange(150) % 5 == 4
    rows, gram = ridge.Rows(x.shape[1], 4, DAMP), ridge.Gram(x.shape[1], 4, DAMP)
    feed(rows, x, y, held, 40)
    feed(gram, x, y, held, 40)
    prior = rng.standard_normal((x.shape[1], 4)) * 0.1
    if free:
        prior[-1] = 0
    for parts in ([0], [0, 1]):
        a, b = rows.solve(parts, prior, free), gram.solve(parts, prior, free)
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4 * np.abs(b).max())
    assert rows.error(prior, 1) == pytest.approx(gram.error(prior, 1), rel=1e-5)


def dense_blocks(x, blocks):
    h = x.astype(np.float64).T @ x.astype(np.float64) / len(x)
    h[np.diag_indices_from(h)] += DAMP * float(np.diag(h).mean())
    inv = np.linalg.inv(h)
    return inv[blocks[:, :, None], blocks[:, None, :]], h


@pytest.mark.parametrize("rows", [500, 120])  # Gram form (rows ≥ units) and dual form
def test_obs_inverse_blocks_equal_the_dense_inverse(rows):
    width, q = 180, 9
    x = correlated_rows(rows, width, seed=4)
    blocks = np.arange(width).reshape(-1, q)
    want, h = dense_blocks(x, blocks)
    if rows >= width:
        inverse = importance._InverseBlocks.of(h)
    else:
        inverse = importance._InverseBlocks.dual(x)
        assert inverse.lam is not None
    got = inverse.blocks(blocks)
    # what the saliency reads: w_Qᵀ [H⁻¹]_QQ⁻¹ w_Q — the float32 parts must not move it
    w = np.random.default_rng(5).standard_normal((width, 3))[blocks]
    sal = lambda sub: np.einsum("sqf,sqf->s", w, np.linalg.solve(sub, w))  # noqa: E731
    np.testing.assert_allclose(sal(got), sal(want), rtol=1e-3)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-6 * np.abs(want).max())
