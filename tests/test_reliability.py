"""Reliability on bad input: clear errors or flagged statuses, never a silent NaN.

Covers measurements with NaN/Inf; measurements or initial iterates of the wrong shape, dtype or
device; non-contractive maps (divergence) and maps producing NaN; singular Anderson systems;
invalid budgets and tolerances; unknown option names.
"""

from __future__ import annotations

import warnings

import deepinv as dinv
import pytest
import torch

from deepinv_deq import DEQ, ImplicitBackward
from deepinv_deq.solvers import (
    AndersonAcceleration,
    GMRES,
    FixedPointIteration,
    get_solver,
)


class TinyDenoiser(torch.nn.Module):
    r"""A contraction :math:`D(x) = x/2 + \tanh(w * x)` with :math:`\|w\|_1 = 0.3`."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.mul_(0.3 / self.conv.weight.abs().sum())

    def forward(self, x, sigma=None):
        return 0.5 * x + torch.tanh(self.conv(x))


@pytest.fixture
def problem():
    physics = dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.5)
    x = torch.rand(2, 1, 8, 8)
    return physics, x, physics(x)


def make_deq(**kw):
    opts = dict(denoiser=TinyDenoiser(), stepsize=1.0, max_iter=50, tol=1e-5)
    opts.update(kw)
    return DEQ(**opts)


# --------------------------------------------------------------------------------------------
# measurements and initial iterates
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_measurements_raise(problem, bad):
    physics, _, y = problem
    y = y.clone()
    y[1, 0, 3, 3] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        make_deq()(y, physics)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_init_raises(problem, bad):
    physics, x, y = problem
    init = torch.zeros_like(x)
    init[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match="init"):
        make_deq()(y, physics, init=init)


@pytest.mark.parametrize("solver", [FixedPointIteration(), AndersonAcceleration()])
def test_nonfinite_initial_iterate_raises_in_solver(solver):
    x0 = torch.zeros(2, 3)
    x0[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        solver(lambda x: 0.5 * x, x0)


@pytest.mark.parametrize(
    "shape",
    [(2, 1, 8, 9), (3, 1, 8, 8), (2, 2, 8, 8), (2, 8, 8)],
    ids=["width", "batch", "channels", "ndim"],
)
def test_init_of_wrong_shape_raises(problem, shape):
    physics, _, y = problem
    with pytest.raises(ValueError, match="shape"):
        make_deq()(y, physics, init=torch.zeros(shape))


def test_init_of_integer_dtype_raises(problem):
    physics, x, y = problem
    with pytest.raises(ValueError, match="floating"):
        make_deq()(y, physics, init=torch.zeros(x.shape, dtype=torch.int64))


def test_init_on_another_device_raises(problem):
    # the "meta" device stands in for a GPU so that the check runs on every machine
    physics, x, y = problem
    with pytest.raises(ValueError, match="device|meta"):
        make_deq()(y, physics, init=torch.zeros(x.shape, device="meta"))


def test_measurements_not_a_tensor_raise(problem):
    physics, _, y = problem
    with pytest.raises(ValueError, match="tensor"):
        make_deq()([y], physics)


@pytest.mark.parametrize(
    "shape", [(2, 1, 8, 9), (2, 2, 8, 8), (2, 8, 8)], ids=["width", "channels", "ndim"]
)
def test_measurements_of_wrong_shape_raise_clear_error(problem, shape):
    # a mismatch the physics proves is a ValueError; one only the denoiser sees keeps its type
    physics, _, _ = problem
    with pytest.raises((ValueError, RuntimeError), match=r"y (of|has) shape"):
        make_deq()(torch.rand(shape), physics)


def test_measurements_of_integer_dtype_raise(problem):
    physics, _, y = problem
    with pytest.raises(ValueError, match="dtype|floating"):
        make_deq()((y * 10).to(torch.int64), physics)


def test_measurements_of_other_float_dtype_than_model_raise_clear_error(problem):
    physics, _, y = problem
    with pytest.raises(ValueError, match="dtype|float64"):
        make_deq()(y.double(), physics)


def test_init_of_other_float_dtype_than_measurements_raises_clear_error(problem):
    physics, x, y = problem
    with pytest.raises(ValueError, match="dtype|float64"):
        make_deq()(y, physics, init=torch.zeros(x.shape, dtype=torch.float64))


def test_measurements_on_another_device_than_model_raise_clear_error(problem):
    physics, _, y = problem
    with pytest.raises(ValueError, match="device|meta"):
        make_deq()(y.to("meta"), physics)


# --------------------------------------------------------------------------------------------
# divergence and non-finite maps: flagged, best iterate, finite
# --------------------------------------------------------------------------------------------
def _check_best_iterate(stats, f, x_ret, x0):
    # the returned residuals are those of the returned iterate, whose absolute residual is no
    # larger than the initial iterate's
    fx = f(x_ret)
    diff = (fx - x_ret).flatten(1).norm(dim=1)
    rel = diff / x_ret.flatten(1).norm(dim=1)
    assert torch.allclose(rel, stats.residual.to(rel.dtype), rtol=1e-4)
    assert torch.allclose(
        diff / x_ret[0].numel() ** 0.5, stats.abs_residual.to(rel.dtype), rtol=1e-4
    )
    abs0 = (f(x0) - x0).flatten(1).norm(dim=1) / x0[0].numel() ** 0.5
    assert (stats.abs_residual <= abs0 * (1 + 1e-6)).all()


@pytest.mark.parametrize(
    "fmap",
    [lambda x: 2.0 * x + 1.0, lambda x: x + 1.0 + x**2],
    ids=["linear-expanding", "no-fixed-point"],
)
def test_fixed_point_iteration_flags_divergence(fmap):
    x0 = torch.full((3, 4), 0.5)
    res = FixedPointIteration(max_iter=200, tol=1e-6)(fmap, x0)
    assert res.stats.status_names() == ["DIVERGED"] * 3
    assert res.stats.nfe < 200  # stopped early, not at max_iter
    assert torch.isfinite(res.x).all() and torch.isfinite(res.fx).all()
    _check_best_iterate(res.stats, fmap, res.x, x0)


def test_diverging_map_returns_its_least_exploded_iterate():
    # F(x) = 2x + 1 from x0 = 0.5: |F(x) - x| = |x + 1| grows with every step, so the iterate
    # with the smallest residual is x0; the relative residual |x + 1| / |x| instead decreases
    # towards 1 and picks the last (~2.5e4) iterate
    x0 = torch.full((2, 3), 0.5)
    res = FixedPointIteration(max_iter=200, tol=1e-6)(lambda x: 2.0 * x + 1.0, x0)
    assert res.stats.status_names() == ["DIVERGED", "DIVERGED"]
    assert torch.allclose(res.x, x0)
    assert torch.allclose(res.stats.abs_residual, torch.full((2,), 1.5))


def test_divergence_is_per_sample():
    # sample 0 contracts, sample 1 expands: only sample 1 is flagged
    scale = torch.tensor([[0.5], [2.0]])
    f = lambda x: scale * x + 1.0
    res = FixedPointIteration(max_iter=200, tol=1e-6)(f, torch.zeros(2, 3))
    assert res.stats.status_names() == ["CONVERGED", "DIVERGED"]
    assert torch.allclose(res.fx[0], torch.full((3,), 2.0), atol=1e-5)
    assert torch.isfinite(res.fx).all()


def test_deq_flags_divergence_and_returns_finite(problem):
    physics, _, y = problem
    model = DEQ(
        iteration=lambda x, y, p: 2.0 * x + p.A_adjoint(y),
        solver="fixed_point",
        max_iter=100,
        tol=1e-6,
    )
    with torch.no_grad():
        out = model(y, physics)
    assert model.forward_stats.status_names() == ["DIVERGED", "DIVERGED"]
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("solver", ["fixed_point", "anderson"])
def test_map_producing_nan_is_flagged_and_best_iterate_is_kept(solver):
    # the map turns NaN once the iterate is large: x0 = 0 -> 1 -> NaN
    def f(x):
        return torch.where(
            x.abs().amax(dim=1, keepdim=True) > 0.5, torch.full_like(x, float("nan")), x + 1.0
        )

    res = get_solver(solver, max_iter=20, tol=1e-6)(f, torch.zeros(2, 3))
    assert res.stats.status_names() == ["NONFINITE", "NONFINITE"]
    assert res.stats.nfe < 20
    assert torch.isfinite(res.x).all() and torch.isfinite(res.fx).all()


def test_nonfinite_sample_does_not_contaminate_others():
    def f(x):
        out = 0.5 * x + 1.0
        return torch.cat([out[:1], out[1:] * float("nan")])

    res = AndersonAcceleration(max_iter=50, tol=1e-8)(f, torch.zeros(2, 3))
    assert res.stats.status_names() == ["CONVERGED", "NONFINITE"]
    assert torch.allclose(res.fx[0], torch.full((3,), 2.0), atol=1e-5)
    assert torch.isfinite(res.x).all()


def test_backward_after_divergence_warns_instead_of_silent_gradient():
    # forward diverges (fixed-point iteration on an expanding map) and so does the adjoint solve:
    # the gradient is flagged by a RuntimeWarning, never silently returned
    w = torch.nn.Parameter(torch.tensor(2.0))
    model = DEQ(
        iteration=lambda x, y, p: w * x + y,
        solver="fixed_point",
        backward_solver="fixed_point",
        max_iter=50,
        backward_max_iter=50,
        tol=1e-6,
        init=lambda y, p: torch.zeros_like(y),
    )
    with pytest.warns(RuntimeWarning, match="did not converge"):
        model(torch.ones(2, 3), None).sum().backward()
    assert model.forward_stats.status_names() == ["DIVERGED", "DIVERGED"]
    assert set(model.backward_stats.status_names()) <= {"DIVERGED", "MAX_ITER", "NONFINITE"}


def test_backward_failure_can_raise():
    w = torch.nn.Parameter(torch.tensor(2.0))
    ib = ImplicitBackward(solver="fixed_point", max_iter=20, on_failure="raise")
    x_star = torch.zeros(1, 3)  # not a fixed point of an expanding map: the adjoint series diverges
    z = ib(lambda x: w * x + 1.0, x_star)
    with pytest.raises(RuntimeError, match="did not converge"):
        z.sum().backward()


# --------------------------------------------------------------------------------------------
# singular Anderson systems
# --------------------------------------------------------------------------------------------
def test_anderson_collinear_residuals_fall_back_without_nan():
    # a translation: every residual is the same vector, so G G^T is rank one (singular w/o ridge)
    res = AndersonAcceleration(max_iter=20, tol=1e-12, ridge=0.0)(
        lambda x: x + 1.0, torch.zeros(2, 4)
    )
    assert int(res.stats.extra["fallbacks"].min()) > 0
    assert torch.isfinite(res.x).all() and torch.isfinite(res.stats.trace).all()
    # the fallback is the plain step, so the iterate after k steps is k (best iterate = last)
    assert torch.allclose(res.x, torch.full((2, 4), float(res.stats.nfe - 1)))


@pytest.mark.parametrize("ridge", [0.0, 1e-4])
def test_anderson_one_dimensional_iterates_still_converge(ridge):
    # iterates of an affine map started at 0 stay on the line through b: rank-one history
    b = torch.randn(2, 5)
    res = AndersonAcceleration(max_iter=40, tol=0.0, ridge=ridge)(
        lambda x: 0.5 * x + b, torch.zeros(2, 5)
    )
    assert torch.isfinite(res.x).all()
    assert torch.allclose(res.fx, 2 * b, atol=1e-5)


def test_anderson_zero_residual_sample_next_to_a_moving_one():
    # sample 0 starts at its fixed point (zero residual, all-zero history), sample 1 does not;
    # with tol=0 nobody stops, so the zero history is solved repeatedly
    b = torch.randn(2, 5)
    x0 = torch.stack([2 * b[0], torch.zeros(5)])
    res = AndersonAcceleration(max_iter=15, tol=0.0, ridge=0.0)(lambda x: 0.5 * x + b, x0)
    assert torch.isfinite(res.x).all() and torch.isfinite(res.fx).all()
    assert torch.allclose(res.fx, 2 * b, atol=1e-5)


def test_anderson_constant_map():
    c = torch.randn(3, 2)
    res = AndersonAcceleration(max_iter=10, tol=1e-8, ridge=0.0)(
        lambda x: c.clone(), torch.zeros(3, 2)
    )
    assert res.stats.status_names() == ["CONVERGED"] * 3
    assert torch.equal(res.fx, c)


def test_anderson_under_huge_and_tiny_scales():
    # the ridge is relative to the scale of G G^T, so 1e-20 or 1e20 images behave alike
    for scale in (1e-20, 1e20):
        b = scale * torch.randn(2, 6, dtype=torch.float64)
        res = AndersonAcceleration(max_iter=40, tol=1e-10)(
            lambda x: 0.5 * x + b, torch.zeros_like(b)
        )
        assert res.stats.status_names() == ["CONVERGED", "CONVERGED"]
        assert torch.allclose(res.fx, 2 * b, rtol=1e-8, atol=0)


# --------------------------------------------------------------------------------------------
# budgets, tolerances and unknown options
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"max_iter": 0}, "max_iter"),
        ({"max_iter": -3}, "max_iter"),
        ({"max_iter": 2.5}, "max_iter"),
        ({"tol": -1e-3}, "tol"),
        ({"tol": float("nan")}, "tol"),
        ({"backward_max_iter": 0}, "max_iter"),
        ({"backward_tol": -1e-3}, "tol"),
    ],
)
def test_deq_invalid_budget_or_tolerance(kwargs, name):
    with pytest.raises(ValueError, match=name):
        make_deq(**kwargs)


@pytest.mark.parametrize("cls", [FixedPointIteration, AndersonAcceleration, GMRES])
@pytest.mark.parametrize("kwargs, name", [({"max_iter": 0}, "max_iter"), ({"tol": -1.0}, "tol")])
def test_solver_invalid_budget_or_tolerance(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls(**kwargs)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"max_iter": 0}, "max_iter"),
        ({"tol": -1.0}, "tol"),
        ({"phantom_steps": 0}, "phantom_steps"),
    ],
)
def test_implicit_backward_invalid_budget_or_tolerance(kwargs, name):
    mode = "phantom" if "phantom_steps" in kwargs else "implicit"
    with pytest.raises(ValueError, match=name):
        ImplicitBackward(mode=mode, **kwargs)


@pytest.mark.parametrize(
    "build",
    [
        lambda: make_deq(max_iterations=10),
        lambda: make_deq(solver_options={"histroy_size": 3}),
        lambda: make_deq(backward_options={"histroy_size": 3}),
        lambda: ImplicitBackward(histroy_size=3),
        lambda: ImplicitBackward(mode="jfb", histroy_size=3),
        lambda: get_solver("anderson", histroy_size=3),
        lambda: get_solver("fixed_point", histroy_size=3),
    ],
    ids=[
        "DEQ",
        "DEQ-solver_options",
        "DEQ-backward_options",
        "ImplicitBackward",
        "ImplicitBackward-jfb",
        "get_solver-anderson",
        "get_solver-fixed_point",
    ],
)
def test_unknown_option_is_named(build):
    with pytest.raises(ValueError) as err:
        build()
    msg = str(err.value)
    assert ("max_iterations" in msg) or ("histroy_size" in msg)


@pytest.mark.parametrize("cls", [FixedPointIteration, AndersonAcceleration, GMRES])
def test_solver_constructor_unknown_option_is_a_value_error(cls):
    with pytest.raises(ValueError, match="histroy_size"):
        cls(histroy_size=3)


def test_unknown_forward_keyword_is_named(problem):
    physics, _, y = problem
    with pytest.raises(ValueError, match="x_init"):
        make_deq()(y, physics, x_init=y)


def test_unknown_choice_is_named():
    with pytest.raises(ValueError, match="solver"):
        make_deq(solver="broyden")
    with pytest.raises(ValueError, match="mode"):
        ImplicitBackward(mode="neumann")
    with pytest.raises(ValueError, match="iteration"):
        make_deq(iteration="FISTA")


def test_valid_input_still_works_after_errors(problem):
    # sanity: the same model reconstructs and converges on good input
    physics, _, y = problem
    model = make_deq()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = model(y, physics)
        out.square().sum().backward()
    assert model.forward_stats.all_converged and model.backward_stats.all_converged
