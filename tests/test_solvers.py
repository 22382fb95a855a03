"""Forward solvers: solutions against linear algebra, per-sample stopping, statuses, safeguards."""

import pytest
import torch

from deepinv_deq.solvers import (
    AndersonAcceleration,
    FixedPointIteration,
    SolverStatus,
    get_solver,
)


def affine_problem(B=3, n=6, rho=0.8, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(1)
    M = torch.randn(B, n, n, generator=g, dtype=dtype)
    M = rho * M / torch.linalg.matrix_norm(M, ord=2)[:, None, None]
    c = torch.randn(B, n, generator=g, dtype=dtype)
    M, c = M.to(device), c.to(device)
    x_true = torch.linalg.solve(torch.eye(n, dtype=dtype, device=device) - M, c)
    f = lambda x: torch.einsum("bij,bj->bi", M, x) + c
    return f, x_true


@pytest.mark.parametrize(
    "solver",
    [FixedPointIteration(max_iter=300, tol=1e-10), AndersonAcceleration(max_iter=100, tol=1e-10)],
)
def test_solution_matches_linear_solve(solver, device):
    f, x_true = affine_problem(device=device)
    res = solver(f, torch.zeros_like(x_true))
    assert torch.allclose(res.x, x_true, atol=1e-8)
    assert torch.allclose(res.fx, x_true, atol=1e-8)
    assert res.stats.status.tolist() == [SolverStatus.CONVERGED] * 3
    assert res.stats.trace.shape == (res.stats.nfe, 3)
    assert res.x.device == x_true.device and res.x.dtype == x_true.dtype


def test_anderson_needs_far_fewer_evaluations():
    # symmetric map with eigenvalues spread in [0, 0.95]: slow for the plain iteration
    Q, _ = torch.linalg.qr(torch.randn(20, 20, dtype=torch.float64))
    M = Q @ torch.diag(torch.linspace(0, 0.95, 20, dtype=torch.float64)) @ Q.T
    c = torch.randn(3, 20, dtype=torch.float64)
    f = lambda x: x @ M.T + c
    x_true = torch.linalg.solve(torch.eye(20, dtype=torch.float64) - M, c.T).T
    fp = FixedPointIteration(max_iter=1000, tol=1e-8)(f, torch.zeros_like(x_true))
    aa = AndersonAcceleration(max_iter=1000, tol=1e-8, history_size=5)(f, torch.zeros_like(x_true))
    assert fp.stats.all_converged and aa.stats.all_converged
    assert aa.stats.nfe * 3 < fp.stats.nfe
    assert torch.allclose(aa.fx, x_true, atol=1e-6)


def test_per_sample_stopping_and_best_iterate():
    # sample 0 converges fast (rho small), sample 1 cannot converge (rho = 1.2: diverges)
    scale = torch.tensor([0.1, 1.2])[:, None]
    f = lambda x: scale * x + 1.0
    res = FixedPointIteration(max_iter=200, tol=1e-6)(f, torch.zeros(2, 4))
    assert res.stats.status.tolist() == [SolverStatus.CONVERGED, SolverStatus.DIVERGED]
    assert torch.allclose(res.fx[0], torch.full((4,), 1 / 0.9), atol=1e-5)
    # the diverged sample keeps its best iterate, the one with the smallest absolute residual: x0,
    # since |f(x) - x| = |0.2 x + 1| grows along the iterates
    assert torch.isfinite(res.x).all() and torch.isfinite(res.fx).all()
    assert torch.equal(res.x[1], torch.zeros(4)) and torch.allclose(
        res.stats.abs_residual[1], torch.tensor(1.0)
    )
    # the converged sample's residual is below tolerance
    assert res.stats.residual[0] <= 1e-6


def test_stops_when_all_samples_converge():
    # an oscillating non-expansive map: relative residual stays 2, the budget runs out
    res = FixedPointIteration(max_iter=40, tol=1e-3)(lambda x: -x, torch.ones(3, 5))
    assert res.stats.status.tolist() == [SolverStatus.MAX_ITER] * 3 and res.stats.nfe == 40
    # relative residual of 0.5 x stays 0.5, but the absolute tolerance is met
    f = lambda x: 0.5 * x
    res = FixedPointIteration(max_iter=500, tol=1e-3, atol=1e-6)(f, torch.ones(3, 5))
    assert res.stats.all_converged and res.stats.nfe < 30


def test_nonfinite_sample_is_frozen_and_flagged():
    def f(x):
        out = 0.5 * x + 1.0
        out[1] = out[1] / 0.0 * (x[1].sum() > 1.5)  # sample 1 becomes inf after a few steps
        return out.nan_to_num(nan=float("inf"))

    res = AndersonAcceleration(max_iter=50, tol=1e-8)(f, torch.zeros(2, 3))
    assert res.stats.status_names() == ["CONVERGED", "NONFINITE"]
    assert torch.isfinite(res.x).all() and torch.isfinite(res.fx).all()


def test_anderson_singular_system_falls_back():
    # f(x) = c - x: residuals -2x + c of the iterates 0, c, 0, ... are collinear, so without ridge
    # the Gram matrix is singular at every step: the plain step is taken, no crash, no NaN
    c = torch.randn(2, 5)
    f = lambda x: c - x
    res = AndersonAcceleration(max_iter=10, tol=1e-10, ridge=0.0, history_size=3)(
        f, torch.zeros(2, 5)
    )
    assert (res.stats.extra["fallbacks"] > 0).all()
    assert torch.isfinite(res.x).all() and torch.isfinite(res.fx).all()
    assert res.stats.status_names() == ["MAX_ITER", "MAX_ITER"]
    # with the (default) relative ridge the same history is solvable: the fixed point c / 2 is found
    res = AndersonAcceleration(max_iter=10, tol=1e-6, history_size=3)(f, torch.zeros(2, 5))
    assert res.stats.all_converged and torch.allclose(res.fx, c / 2, atol=1e-5)


def test_anderson_least_squares_in_float32_under_autocast():
    f, x_true = affine_problem(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = AndersonAcceleration(max_iter=100, tol=1e-2)(f, torch.zeros_like(x_true))
    assert res.x.dtype == torch.float32 and res.fx.dtype == torch.float32
    # the map itself runs in bfloat16, so its fixed point is only bfloat16-accurate
    assert torch.allclose(res.fx, x_true, atol=5e-2)
    assert res.stats.all_converged


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_iter": 0}, "max_iter"),
        ({"tol": -1.0}, "tol"),
        ({"history_size": 0}, "history_size"),
        ({"mixing": 0.0}, "mixing"),
        ({"ridge": float("nan")}, "ridge"),
    ],
)
def test_invalid_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AndersonAcceleration(**kwargs)


def test_get_solver_rejects_unknown_option_and_name():
    with pytest.raises(ValueError, match="history_sise.*did you mean 'history_size'"):
        get_solver("anderson", history_sise=3)
    with pytest.raises(ValueError, match="'damping'"):
        get_solver("anderson", damping=0.5)  # a fixed-point option, not Anderson's
    with pytest.raises(ValueError, match="solver"):
        get_solver("broyden")
    assert isinstance(get_solver("fixed_point", damping=0.5), FixedPointIteration)


def test_nan_initial_iterate_raises():
    with pytest.raises(ValueError, match="NaN"):
        FixedPointIteration()(lambda x: x, torch.tensor([[float("nan")]]))


def test_map_changing_shape_raises():
    with pytest.raises(ValueError, match="shape"):
        FixedPointIteration()(lambda x: x[:, :1], torch.zeros(2, 3))


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_gmres_nonsymmetric_reaches_tolerance(dtype, tol, device):
    from deepinv_deq.solvers import GMRES

    g = torch.Generator().manual_seed(0)
    M = (
        torch.eye(30, dtype=torch.float64)
        + 0.4 * torch.randn(30, 30, generator=g, dtype=torch.float64) / 30**0.5
    )
    b = 1e-6 * torch.randn(3, 30, generator=g, dtype=torch.float64)  # tiny right-hand side
    expected = torch.linalg.solve(M, b.T).T
    M, b = M.to(dtype).to(device), b.to(dtype).to(device)
    res = GMRES(max_iter=100, tol=tol, restart=10).solve(lambda u: u @ M.T, b)
    assert res.stats.all_converged, res.stats
    assert torch.allclose(
        res.x.double().cpu(),
        expected,
        rtol=0,
        atol=1e-6 * float(expected.abs().max()) * (1e3 if dtype == torch.float32 else 1),
    )
    # residual history is non-increasing within a restart cycle
    tr = res.stats.trace[:, 0]
    assert (tr[1:10] <= tr[:9] * (1 + 1e-6)).all()


def test_gmres_respects_its_budget():
    from deepinv_deq.solvers import GMRES

    M = (
        torch.eye(30, dtype=torch.float64)
        + 0.9 * torch.randn(30, 30, dtype=torch.float64) / 30**0.5
    )
    b = torch.randn(2, 30, dtype=torch.float64)
    for max_iter in (1, 2, 7, 25):
        res = GMRES(max_iter=max_iter, tol=1e-14, restart=5).solve(
            lambda u: u @ M.T, b, torch.zeros_like(b)
        )
        assert res.stats.nfe <= max_iter


def test_full_gmres_by_default_where_restarted_gmres_stagnates():
    from deepinv_deq.solvers import GMRES

    # M a rotation by 90 degrees: M r is orthogonal to r, so GMRES(1) never moves (a textbook
    # stagnation); full GMRES, the default, solves it in two products
    M = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    stalled = GMRES(max_iter=20, tol=1e-10, restart=1).solve(lambda u: u @ M.T, b)
    assert stalled.stats.status_names() == ["MAX_ITER"]
    full = GMRES(max_iter=20, tol=1e-10).solve(lambda u: u @ M.T, b)
    assert GMRES().restart is None
    assert full.stats.status_names() == ["CONVERGED"] and full.stats.nfe <= 3
    assert torch.allclose(full.x @ M.T, b, atol=1e-10)
