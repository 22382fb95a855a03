"""Solver numerics (issue 16): one meaning of the linear tolerance, scale-free GMRES, complex
states, dtype-following default tolerances, integral options and statistics dtypes."""

import warnings

import numpy as np
import pytest
import torch

from deepinv_deq import DEQ
from deepinv_deq.backward import ImplicitDifferentiation
from deepinv_deq.solvers import GMRES, AndersonAcceleration, get_solver

LINEAR = ["fixed_point", "anderson", "gmres"]


def near_singular(n=40, rho=0.995, dtype=torch.float64, seed=0):
    # J symmetric with eigenvalues in [0, rho]: M = I - J^T has condition number 1 / (1 - rho)
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    J = Q @ torch.diag(torch.linspace(0, rho, n, dtype=torch.float64)) @ Q.T
    return J.to(dtype)


@pytest.mark.parametrize("name", LINEAR)
def test_linear_tolerance_is_relative_to_the_right_hand_side(name):
    # near a singular I - J, ||u|| ~ ||b|| / (1 - rho): a residual relative to ||u|| stops the
    # solve (1 - rho)^-1 times too early (on 0.2: fixed_point and anderson stopped at 3e-3)
    J = near_singular()
    M = lambda u: u - u @ J  # (I - J^T) u for row vectors
    b = torch.randn(3, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    b[:, :] += 5.0 * torch.linalg.eigh(J).eigenvectors[:, -1]  # weight on the slowest mode
    solver = get_solver(name, max_iter=6000, tol=1e-4)
    result = solver.solve(M, b)
    true = (b - M(result.x)).norm(dim=1) / b.norm(dim=1)
    assert result.stats.all_converged
    assert (true <= 1e-4 * 1.01).all(), true
    # the statistics report the same ratio (of the returned iterate or of the one before it)
    assert (result.stats.residual <= 1e-4 * 1.01).all()
    exact = torch.linalg.solve((torch.eye(40, dtype=torch.float64) - J.T), b.T).T
    err = (result.x - exact).norm(dim=1) / exact.norm(dim=1)
    assert (err <= 1e-4 / (1 - 0.995)).all()


@pytest.mark.parametrize("name", LINEAR)
@pytest.mark.parametrize("scale", [1.0, 2.0**10, 2.0**20, 2.0**24])
def test_linear_solvers_are_scale_free(name, scale):
    # a loss scaled by a grown GradScaler: the answer is the same, scaled (on 0.2 GMRES returned
    # x0 from ||b|| ~ 1e7 on, 89 % off)
    J = near_singular(n=64, rho=0.9, dtype=torch.float32)
    M = lambda u: u - u @ J
    b = torch.randn(2, 64, generator=torch.Generator().manual_seed(2))
    solver = get_solver(name, max_iter=400, tol=1e-5)
    base = solver.solve(M, b).x
    scaled = solver.solve(M, b * scale)
    assert scaled.stats.all_converged
    assert ((scaled.x / scale - base).norm(dim=1) / base.norm(dim=1) < 1e-4).all()


def test_implicit_gradient_is_scale_free_in_float32():
    theta = torch.tensor(0.3, requires_grad=True)
    J = near_singular(n=32, rho=0.9, dtype=torch.float32)
    c = torch.randn(2, 32, generator=torch.Generator().manual_seed(3))
    f = lambda x: x @ J.T + theta * c
    with torch.no_grad():
        x_star = torch.linalg.solve(torch.eye(32) - J, (theta * c).T).T
    grads = []
    for scale in (1.0, 2.0**24):
        theta.grad = None
        ib = ImplicitDifferentiation(solver="gmres", tol=1e-6, max_iter=100)
        (scale * ib(f, x_star).pow(2).sum()).backward()
        assert ib.last_stats.all_converged
        grads.append(theta.grad / scale)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4)


def complex_map(seed=0, n=12, rho=0.95):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, dtype=torch.complex128, generator=g)
    A = rho * A / torch.linalg.eigvals(A).abs().max()
    c = torch.randn(2, n, dtype=torch.complex128, generator=g)
    return A, c


@pytest.mark.parametrize("name", LINEAR)
def test_complex_implicit_gradient_matches_unrolled_autograd(name):
    A, c = complex_map()
    theta = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    f = lambda x: x @ A.T + theta * c
    loss = lambda x: (x.abs() ** 2).sum() + (x.real * x.imag).sum()
    x = torch.zeros_like(c)  # the reference: 2000 unrolled iterations
    for _ in range(2000):
        x = f(x)
    (g_ref,) = torch.autograd.grad(loss(x), theta)
    with torch.no_grad():
        x_star = AndersonAcceleration(max_iter=500, tol=1e-14)(f, torch.zeros_like(c)).x
    ib = ImplicitDifferentiation(solver=name, tol=1e-12, max_iter=3000)
    (g,) = torch.autograd.grad(loss(ib(f, x_star)), theta)
    assert ib.last_stats.all_converged
    assert torch.allclose(g, g_ref, rtol=1e-9)


def test_complex_forward_solvers_converge_at_their_rate():
    # Anderson with the Hermitian Gram matrix: 201 evaluations here; 395 with G G^T (0.2)
    A, c = complex_map(n=80, rho=0.995)
    f = lambda x: x @ A.T + c
    anderson = AndersonAcceleration(max_iter=3000, tol=1e-10)(f, torch.zeros_like(c))
    assert anderson.stats.all_converged and anderson.stats.nfe < 300
    exact = torch.linalg.solve(torch.eye(80, dtype=A.dtype) - A, c.T).T
    assert torch.allclose(anderson.fx, exact, atol=1e-7)


def test_complex_statistics_keep_their_precision():
    A, c = complex_map()
    stats = AndersonAcceleration(tol=1e-6)(lambda x: x @ A.T + c, torch.zeros_like(c)).stats
    assert stats.residual.dtype == torch.float64 and stats.trace.dtype == torch.float64
    gm = GMRES(tol=1e-8).solve(lambda u: u - u @ A, c)
    assert gm.stats.residual.dtype == torch.float64 and gm.stats.all_converged
    c64 = c.to(torch.complex64)
    A64 = A.to(torch.complex64)
    stats = AndersonAcceleration(tol=1e-4)(lambda x: x @ A64.T + c64, torch.zeros_like(c64)).stats
    assert stats.residual.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cast_model_default_tolerances_follow_its_dtype(dtype):
    # a model cast to bf16/fp16 (not autocast): the default tolerances are its unit roundoff, so
    # the solves converge instead of running to max_iter and warning (as on 0.2)
    W = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    W = (0.5 * W / torch.linalg.matrix_norm(W, 2)).to(dtype)
    theta = torch.nn.Parameter(torch.tensor(1.0, dtype=dtype))
    y = torch.randn(2, 64, generator=torch.Generator().manual_seed(1)).to(dtype)
    model = DEQ(
        iteration=lambda x, y, physics: theta * (x @ W) + y,
        init=lambda y, physics: torch.zeros_like(y),
        max_iter=100,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out = model(y, None)
        out.float().pow(2).sum().backward()
    assert model.forward_stats.all_converged and model.backward_stats.all_converged
    assert theta.grad is not None and torch.isfinite(theta.grad)


def test_integral_options_of_any_integer_type():
    assert AndersonAcceleration(max_iter=np.int64(7), history_size=np.int32(3)).max_iter == 7
    model = DEQ(iteration=lambda x, y, p: 0.5 * x + y, max_iter=np.int64(50), tol=np.float32(1e-4))
    assert model.solver.max_iter == 50 and isinstance(model.solver.max_iter, int)
    with pytest.raises(ValueError, match="max_iter"):
        AndersonAcceleration(max_iter=True)
    with pytest.raises(ValueError, match="max_iter"):
        AndersonAcceleration(max_iter=np.float64(5.0))


def test_fractional_budgets_are_refused_not_truncated():
    with pytest.raises(ValueError, match="max_iter"):
        ImplicitDifferentiation(max_iter=2.5)
    with pytest.raises(ValueError, match="backward_max_iter|max_iter"):
        DEQ(iteration=lambda x, y, p: 0.5 * x + y, backward_max_iter=2.5)
