"""Property-based tests of the forward solvers, with hypothesis.

Random batched affine maps :math:`F_i(x) = M_i x + b_i`, one per sample, over random image
shapes, batch sizes, dtypes (float32/float64) and tolerances. For a contraction
(:math:`\\|M_i\\|_2 = \\rho_i < 1`) the error of an iterate with relative residual :math:`r` obeys

.. math::

    \\|x - x^\\star\\| \\le \\frac{\\|F(x) - x\\|}{1 - \\rho} = \\frac{r\\,\\|x\\|}{1 - \\rho},

so a converged sample must be within that bound of ``torch.linalg.solve(I - M_i, b_i)``.
Samples that expand (:math:`\\rho_i > 1`, only with fixed-point iteration, which cannot converge
on them) must be flagged without disturbing the others.
"""

from __future__ import annotations

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from deepinv_deq.solvers import AndersonAcceleration, FixedPointIteration, SolverStatus  # noqa: E402

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


def affine_maps(seed: int, batch: int, shape: tuple, rhos, dtype):
    r"""Per-sample maps :math:`x \mapsto M_i x + b_i` with :math:`\|M_i\|_2 = \rho_i`, and their
    exact fixed points. An expanding sample (:math:`\rho_i > 1`) gets :math:`M_i = \rho_i Q_i`
    with :math:`Q_i` orthogonal, so that every eigenvalue has modulus :math:`\rho_i` (a random
    matrix of norm :math:`\rho_i > 1` may still have spectral radius below one)."""
    g = torch.Generator().manual_seed(seed)
    n = 1
    for s in shape:
        n *= s
    M = torch.randn(batch, n, n, generator=g, dtype=torch.float64)
    M = M / torch.linalg.matrix_norm(M, ord=2)[:, None, None]
    Q = torch.linalg.qr(M).Q
    expand = torch.tensor([r > 1 for r in rhos])[:, None, None]
    M = torch.where(expand, Q, M) * torch.tensor(rhos, dtype=torch.float64)[:, None, None]
    b = torch.randn(batch, n, generator=g, dtype=torch.float64)
    x_star = torch.linalg.solve(torch.eye(n, dtype=torch.float64) - M, b)
    Mc, bc = M.to(dtype), b.to(dtype)

    def f(x):
        flat = x.reshape(batch, n)
        return (torch.einsum("bij,bj->bi", Mc, flat) + bc).reshape(x.shape)

    return f, x_star.reshape(batch, *shape)


shapes = (
    st.lists(st.integers(1, 4), min_size=1, max_size=3)
    .map(tuple)
    .filter(lambda s: 2 <= torch.Size(s).numel() <= 24)
)


@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 4),
    shape=shapes,
    dtype=st.sampled_from([torch.float32, torch.float64]),
    log_tol=st.floats(-7.0, -2.0),
    rho=st.floats(0.05, 0.9),
    solver=st.sampled_from(["fixed_point", "anderson"]),
)
def test_contractive_affine_maps_solved_within_the_error_bound(
    seed, batch, shape, dtype, log_tol, rho, solver
):
    tol = 10.0**log_tol
    if dtype == torch.float32:
        tol = max(tol, 1e-5)  # below float32 resolution the tolerance is not reachable
    rhos = [rho * (0.5 + 0.5 * (i + 1) / batch) for i in range(batch)]  # different per sample
    f, x_star = affine_maps(seed, batch, shape, rhos, dtype)
    cls = FixedPointIteration if solver == "fixed_point" else AndersonAcceleration
    res = cls(max_iter=1000, tol=tol)(f, torch.zeros(batch, *shape, dtype=dtype))

    assert res.x.shape == res.fx.shape == x_star.shape
    assert res.x.dtype == res.fx.dtype == dtype
    assert res.stats.status.shape == (batch,)
    assert res.stats.status_names() == ["CONVERGED"] * batch
    assert bool((res.stats.residual <= tol).all())
    # error bound from the residual and the contraction factor, per sample
    x = res.x.double().reshape(batch, -1)
    err = (x - x_star.reshape(batch, -1)).norm(dim=1)
    bound = (
        res.stats.residual.double() * x.norm(dim=1) / (1 - torch.tensor(rhos, dtype=torch.float64))
    )
    slack = (
        50 * torch.finfo(dtype).eps * (1 + x_star.reshape(batch, -1).norm(dim=1)) / (1 - max(rhos))
    )
    assert bool((err <= bound * (1 + 1e-3) + slack).all()), (err, bound)
    # f(x) is returned with x: it is one more contraction step towards x*
    fx_err = (res.fx.double().reshape(batch, -1) - x_star.reshape(batch, -1)).norm(dim=1)
    assert bool((fx_err <= err * max(rhos) * (1 + 1e-3) + slack).all())
    # the statistics agree with each other
    assert res.stats.trace.shape == (res.stats.nfe, batch)
    assert 1 <= res.stats.nfe <= 1000


@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(2, 5),
    shape=shapes,
    dtype=st.sampled_from([torch.float32, torch.float64]),
    expanding=st.data(),
)
def test_per_sample_statuses_with_expanding_samples(seed, batch, shape, dtype, expanding):
    # some samples expand (rho = 1.5): fixed-point iteration flags them; the others converge
    mask = expanding.draw(
        st.lists(st.booleans(), min_size=batch, max_size=batch).filter(lambda m: 0 < sum(m) < batch)
    )
    rhos = [1.5 if m else 0.5 for m in mask]
    f, x_star = affine_maps(seed, batch, shape, rhos, dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-8
    res = FixedPointIteration(max_iter=300, tol=tol)(f, torch.zeros(batch, *shape, dtype=dtype))
    status = res.stats.status.tolist()
    for i, m in enumerate(mask):
        if m:
            assert status[i] in (SolverStatus.DIVERGED, SolverStatus.MAX_ITER)
        else:
            assert status[i] == SolverStatus.CONVERGED
            err = (res.x[i].double() - x_star[i]).norm() / x_star[i].norm()
            assert err <= 2 * tol * (1 + res.x[i].double().norm() / x_star[i].norm()) + 1e-5
    assert torch.isfinite(res.x).all() and torch.isfinite(res.fx).all()


@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 4),
    shape=shapes,
    history=st.integers(1, 6),
    rho=st.floats(0.05, 0.95),
)
def test_anderson_agrees_with_fixed_point_for_any_history_size(seed, batch, shape, history, rho):
    f, x_star = affine_maps(seed, batch, shape, [rho] * batch, torch.float64)
    x0 = torch.zeros(batch, *shape, dtype=torch.float64)
    fp = FixedPointIteration(max_iter=2000, tol=1e-9)(f, x0)
    aa = AndersonAcceleration(max_iter=2000, tol=1e-9, history_size=history)(f, x0)
    assert fp.stats.all_converged and aa.stats.all_converged
    scale = x_star.reshape(batch, -1).norm(dim=1).max()
    assert torch.allclose(aa.fx, fp.fx, atol=1e-7 * float(scale) / (1 - rho))
