"""Regression tests of the core: exact gradients and visible failures in every case.

Physics-parameter gradients through deepinv's least-squares prox, NaN samples in training,
higher-order gradients, non-finite upstream gradients, GMRES's small least-squares problem, one
failure policy for forward and backward, construction-time checks, a shared backward, deepinv's
Reconstructor contract, a sweep over ``backward``, and the errors a new user meets."""

from __future__ import annotations

import gc
import inspect
import warnings
import weakref

import deepinv as dinv
import pytest
import torch

from deepinv_deq import DEQ, ContractiveDenoiser, ImplicitBackward
from deepinv_deq.solvers import GMRES
from test_amp import SmallDenoiser as SmallDenoiserAMP

BACKWARD_SOLVERS = ["fixed_point", "anderson", "gmres"]


class SmallDenoiser(torch.nn.Module):
    r"""A contraction with parameters: :math:`D(x) = x/2 + 0.3 \tanh(w * x)`."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.mul_(0.5 / self.conv.weight.abs().sum())

    def forward(self, x, sigma=None):
        return 0.5 * x + 0.3 * torch.tanh(self.conv(x))


@pytest.fixture(scope="module")
def blur_reference():
    r"""HQS on a blur with a learnable kernel (float64) and the kernel's gradient by autograd
    through 100 unrolled iterations (the map contracts by <= 0.65: converged to rounding)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        x = torch.rand(2, 1, 8, 8)
        filt = dinv.physics.blur.gaussian_blur(sigma=1.0).to(torch.float64)
        # deepinv's CG (which prox_l2 uses) stalls near 1e-5 (its eps=1e-8 guard): a fixed budget
        physics = dinv.physics.Blur(filter=filt, padding="circular", max_iter=40, tol=1e-7)
        y = physics(x)
        physics.filter.requires_grad_()  # a learnable blur kernel
        denoiser = SmallDenoiser()
        model = DEQ(denoiser=denoiser, iteration="HQS", stepsize=0.5)
        z = physics.A_adjoint(y).detach()
        for _ in range(100):
            z = model.map(z, y, physics)
        ((z - x) ** 2).sum().backward()
        reference = physics.filter.grad.clone()
    finally:
        torch.set_default_dtype(previous)
    return physics, x, y, denoiser, reference


# --- item 1 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", BACKWARD_SOLVERS)
def test_physics_parameter_gradient_through_least_squares_prox_is_exact(
    dtype64, blur_reference, solver
):
    # deepinv's least-squares prox adds the physics parameters' gradients to .grad as a side effect
    # of every vector-Jacobian product: the backward solve used to add one copy per product
    # (measured: |dL/dfilter| 6.07 by 100 unrolled steps; before the fix 131-283 with fixed_point,
    # 150 with anderson, 29 with gmres; now 6.07, relative error 1e-5, the accuracy of the CG prox)
    physics, x, y, denoiser, reference = blur_reference
    model = DEQ(
        denoiser=denoiser,
        iteration="HQS",
        stepsize=0.5,
        max_iter=200,
        tol=1e-13,
        backward_solver=solver,
        backward_max_iter=200,
        backward_tol=1e-12,
    )
    physics.filter.grad = None
    out = model(y, physics)
    ((out - x) ** 2).sum().backward()
    assert model.forward_stats.all_converged and model.backward_stats.all_converged
    assert model.backward_stats.nfe > 5  # many products, each of which used to add a copy
    err = (physics.filter.grad - reference).norm() / reference.norm()
    assert err < 1e-4, f"relative error {err:.2e}"


# --- item 2 ----------------------------------------------------------------------------------
def test_sample_without_finite_map_value_returns_its_initial_iterate_in_training():
    theta = torch.tensor(0.5, requires_grad=True)
    bad = torch.tensor([False, True]).reshape(2, 1)

    def F(x, y, physics):  # sample 1 is NaN whatever x
        return torch.where(bad, torch.full_like(x, float("nan")), theta * x + y)

    y = torch.ones(2, 3)
    model = DEQ(iteration=F, init=_zeros, max_iter=100, tol=1e-10)
    with pytest.warns(RuntimeWarning, match="NONFINITE"):
        out = model(y, None)
    assert torch.isfinite(out).all() and torch.equal(out[1].detach(), torch.zeros(3))
    loss = out.sum()
    assert torch.isfinite(loss)
    loss.backward()
    # sample 0 alone: x* = y / (1 - theta), sum over 3 entries of d x*/d theta = 3 * 1 / 0.25
    assert torch.isclose(theta.grad, torch.tensor(12.0), rtol=1e-4)


# --- item 3 ----------------------------------------------------------------------------------
def _linear_fixed_point():
    theta = torch.tensor(0.5, requires_grad=True)
    f = lambda x: theta * x + 1.0
    z = ImplicitBackward(tol=1e-12)(f, torch.full((1, 1), 2.0))
    return theta, z


def test_gradient_with_respect_to_the_output_itself_is_not_the_adjoint():
    _, z = _linear_fixed_point()
    (g,) = torch.autograd.grad((3 * z).sum(), z)
    assert torch.equal(g, torch.full((1, 1), 3.0))  # was 6: the adjoint replaced it


def test_second_order_gradient_is_refused_with_a_clear_error():
    theta, z = _linear_fixed_point()
    with pytest.raises(RuntimeError, match="second-order"):
        torch.autograd.grad((z**2).sum(), theta, create_graph=True)


# --- item 4 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", BACKWARD_SOLVERS)
def test_nonfinite_upstream_gradient_passes_through(solver):
    theta = torch.tensor([[0.5], [0.5]], requires_grad=True)
    f = lambda x: theta * x + 1.0
    ib = ImplicitBackward(solver=solver, tol=1e-10, on_failure="raise")
    z = ib(f, torch.full((2, 1), 2.0))
    weights = torch.tensor([[1.0], [float("inf")]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not a failure of the solve: no warning, no error
        (z * weights).sum().backward()
    assert torch.isclose(theta.grad[0, 0], torch.tensor(4.0), rtol=1e-6)
    assert not torch.isfinite(theta.grad[1, 0])  # a gradient scaler sees it and skips the step
    assert ib.last_stats.status_names() == ["CONVERGED", "NONFINITE"]


# --- item 6 ----------------------------------------------------------------------------------
def test_gmres_nan_product_marks_only_that_sample_nonfinite():
    M = torch.tensor([[2.0, 1.0], [0.0, 3.0]], dtype=torch.float64)

    def matvec(u):
        out = u @ M.T
        return torch.cat([out[:1], torch.full_like(out[1:], float("nan"))])

    b = torch.ones(2, 2, dtype=torch.float64)
    res = GMRES(max_iter=20, tol=1e-12).solve(matvec, b)
    assert res.stats.status_names() == ["CONVERGED", "NONFINITE"]
    assert torch.allclose(res.x[0] @ M.T, b[0], atol=1e-10)
    assert torch.isfinite(res.x).all()  # the failed sample keeps its last finite iterate


def test_gmres_zero_right_hand_side_and_rank_loss_give_finite_solutions():
    # sample 0: b = 0; sample 1: b in a 1-dimensional invariant subspace (Krylov space stops growing)
    M = torch.diag(torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64))
    b = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    res = GMRES(max_iter=30, tol=1e-12, restart=3).solve(lambda u: u @ M.T, b)
    assert res.stats.status_names() == ["CONVERGED", "CONVERGED"]
    assert torch.allclose(
        res.x, torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0]], dtype=torch.float64)
    )


def test_implicit_gradient_with_zero_upstream_gradient_is_zero_and_finite():
    theta = torch.tensor([[0.5], [0.5]], requires_grad=True)
    ib = ImplicitBackward(solver="gmres", tol=1e-10, on_failure="raise")
    z = ib(lambda x: theta * x + 1.0, torch.full((2, 1), 2.0))
    (z * torch.tensor([[1.0], [0.0]])).sum().backward()
    assert torch.allclose(theta.grad, torch.tensor([[4.0], [0.0]]))


# --- item 8 ----------------------------------------------------------------------------------
def _slow_map(x, y, physics):
    return 0.99 * x + y


def _zeros(y, physics):
    return torch.zeros_like(y)


def test_forward_stopped_by_max_iter_warns_at_the_callers_line():
    model = DEQ(iteration=_slow_map, solver="fixed_point", max_iter=3, init=_zeros)
    with pytest.warns(RuntimeWarning, match="forward solve did not converge.*MAX_ITER") as record:
        model(torch.ones(2, 3), None)
    assert record[0].filename == __file__


def test_on_failure_raise_covers_the_forward_solve():
    model = DEQ(
        iteration=_slow_map, solver="fixed_point", max_iter=3, on_failure="raise", init=_zeros
    )
    with pytest.raises(RuntimeError, match="MAX_ITER"):
        model(torch.ones(2, 3), None)


def _jfb_fallback(**options):
    # x = theta x + 1 per sample: theta = 0.5 converges in 40 steps to 1e-8, theta = 0.99 does not
    theta = torch.tensor([[0.5], [0.99]], requires_grad=True)
    model = DEQ(
        iteration=lambda x, y, p: theta * x + y,
        solver="fixed_point",
        max_iter=40,
        tol=1e-8,
        on_failure="jfb",
        init=_zeros,
        **options,
    )
    with pytest.warns(RuntimeWarning, match="falls back to JFB"):
        out = model(torch.ones(2, 1), None)
    assert model.forward_stats.status_names() == ["CONVERGED", "MAX_ITER"]
    out.sum().backward()
    return theta, model, out


def test_on_failure_jfb_gives_the_jfb_gradient_to_samples_whose_forward_failed():
    theta, _, out = _jfb_fallback()
    # sample 0 implicit: x* / (1 - theta) = 4; sample 1 JFB: d(theta x + y)/d theta = x, the last
    # iterate, x = (f(x) - y) / theta
    assert torch.isclose(theta.grad[0, 0], torch.tensor(4.0), rtol=1e-5)
    assert torch.isclose(theta.grad[1, 0], (out[1, 0].detach() - 1.0) / 0.99, rtol=1e-6)


def test_backward_residual_not_below_one_is_a_failure_warned_at_the_backward_line():
    theta = torch.tensor(1.0, requires_grad=True)  # I - J singular: no adjoint solution
    ib = ImplicitBackward(solver="fixed_point", max_iter=10)
    z = ib(lambda x: theta * x + 1.0, torch.full((1, 1), 2.0))
    with pytest.warns(RuntimeWarning, match="DIVERGED.*unreliable") as record:
        z.sum().backward()
    assert record[0].filename == __file__
    assert ib.last_stats.status_names() == ["DIVERGED"]


def test_on_failure_jfb_with_phantom_gradients_gives_the_jfb_gradient_to_failed_samples():
    # the warning says the failed samples fall back to JFB: the phantom strategy used to ignore it
    theta, model, out = _jfb_fallback(
        backward="phantom", backward_options={"phantom_steps": 3, "phantom_damping": 1.0}
    )
    # sample 0, three steps from x* = 2: d(theta^3 x* + theta^2 + theta + 1)/d theta = 3.5;
    # sample 1, JFB at its last iterate x: d(theta x + 1)/d theta = x = (f(x) - 1) / theta
    assert torch.isclose(theta.grad[0, 0], torch.tensor(3.5), rtol=1e-6)
    assert torch.isclose(theta.grad[1, 0], (out[1, 0].detach() - 1.0) / 0.99, rtol=1e-6)
    with torch.no_grad(), pytest.warns(RuntimeWarning):
        assert torch.allclose(model(torch.ones(2, 1), None), out)  # same value as without autograd


# --- item 9 ----------------------------------------------------------------------------------
def test_gmres_as_forward_solver_is_refused_at_construction():
    with pytest.raises(ValueError, match="GMRES"):
        DEQ(denoiser=ContractiveDenoiser(), solver=GMRES())


# --- item 10 ---------------------------------------------------------------------------------
def test_shared_backward_keeps_models_apart_and_frees_them(dtype64):
    shared = ImplicitBackward(tol=1e-10)
    theta = torch.tensor(0.5, requires_grad=True)
    a = DEQ(iteration=lambda x, y, p: theta * x + y, backward=shared, tol=1e-10, init=_zeros)
    b = DEQ(iteration=lambda x, y, p: theta * x + 2 * y, backward=shared, tol=1e-10, init=_zeros)
    seen_a = []
    a.register_stats_hook(lambda kind, stats: seen_a.append(kind))
    b(torch.ones(1, 2), None).sum().backward()
    assert seen_a == [] and a.backward_stats is None and b.backward_stats is not None
    a(torch.ones(1, 2), None).sum().backward()
    assert seen_a == ["forward", "backward"]
    ref = weakref.ref(b)
    del b
    gc.collect()
    assert ref() is None


# --- item 11 ---------------------------------------------------------------------------------
def test_device_argument_is_accepted():
    model = DEQ(denoiser=ContractiveDenoiser(), device="cpu")
    assert next(model.parameters()).device.type == "cpu"


def test_tensorlist_measurements_of_stacked_physics():
    physics = dinv.physics.StackedLinearPhysics(
        [dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.5), dinv.physics.Denoising()]
    )
    x = torch.rand(2, 1, 8, 8)
    y = physics(x)
    model = DEQ(denoiser=ContractiveDenoiser(), stepsize=0.5, max_iter=60, tol=1e-5)
    out = model(y, physics)
    assert out.shape == x.shape and model.forward_stats.all_converged
    out.sum().backward()
    assert model.backward_stats.all_converged


def test_runtime_error_inside_the_map_keeps_its_type_and_message():
    class Broken(torch.nn.Module):
        def forward(self, x, sigma=None):
            raise RuntimeError("boom in the denoiser")

    physics = dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.5)
    y = physics(torch.rand(2, 1, 8, 8))
    with pytest.raises(RuntimeError, match="boom in the denoiser"):
        DEQ(denoiser=Broken())(y, physics)


# --- item 12 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("backward", ["implicit", "jfb", "phantom"])
def test_sweep_over_backward_with_fixed_options_constructs(backward):
    model = DEQ(
        denoiser=ContractiveDenoiser(), backward=backward, backward_max_iter=30, backward_tol=1e-6
    )
    assert model.backward.mode == backward
    if backward == "implicit":
        assert model.backward.solver.max_iter == 30 and model.backward.solver.tol == 1e-6


def test_budget_in_the_options_dict_is_used_or_named_when_given_twice():
    model = DEQ(denoiser=ContractiveDenoiser(), solver_options={"tol": 1e-6, "max_iter": 7})
    assert model.solver.tol == 1e-6 and model.solver.max_iter == 7  # was a TypeError
    with pytest.raises(ValueError, match=r"'tol' given twice \(tol and solver_options\)"):
        DEQ(denoiser=ContractiveDenoiser(), tol=1e-3, solver_options={"tol": 1e-6})
    with pytest.raises(
        ValueError, match=r"'max_iter' given twice \(backward_max_iter and backward_options\)"
    ):
        DEQ(denoiser=ContractiveDenoiser(), backward_max_iter=3, backward_options={"max_iter": 7})


def test_phantom_option_with_the_implicit_backward_is_named_as_passed():
    with pytest.raises(ValueError, match="'phantom_steps'"):  # was named 'steps'
        DEQ(
            denoiser=ContractiveDenoiser(),
            backward="implicit",
            backward_options={"phantom_steps": 3},
        )


# --- item 13 ---------------------------------------------------------------------------------
def test_deq_without_denoiser_says_what_is_needed():
    with pytest.raises(ValueError, match="needs a denoiser"):
        DEQ()


def test_deepinv_prior_hints_at_denoiser():
    prior = dinv.optim.PnP(denoiser=ContractiveDenoiser())
    with pytest.raises(ValueError, match=r"denoiser=prior\.denoiser"):
        DEQ(prior=prior)


def test_measurements_the_physics_rejects_are_named():
    physics = dinv.physics.Tomography(img_width=8, angles=6)
    y = physics(torch.rand(2, 1, 8, 8))
    with pytest.raises(
        ValueError, match=r"y of shape \[\(2, 1, 12, 5\)\] does not fit the physics"
    ):
        DEQ(denoiser=ContractiveDenoiser())(y[..., :5], physics)


def test_signature_shows_the_defaults():
    params = inspect.signature(DEQ).parameters
    assert params["stepsize"].default == 1.0 and params["max_iter"].default == 50
    assert params["tol"].default == 1e-4 and params["backward_tol"].default == 1e-5
    params = inspect.signature(ImplicitBackward).parameters
    assert params["max_iter"].default == 50 and params["phantom_steps"].default == 5


def _autocast_step(model, physics, x, y):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(y, physics)
        loss = torch.nn.functional.mse_loss(out.float(), x)
    loss.backward()


def test_default_tolerances_fit_the_autocast_dtype():
    # a map whose output stays in bfloat16 stalls near 4e-4, above the default tol 1e-4
    physics = dinv.physics.Inpainting(img_size=(1, 16, 16), mask=0.6)
    x = torch.rand(4, 1, 16, 16)
    y = physics(x)
    model = DEQ(denoiser=SmallDenoiserAMP(skip=False), max_iter=60, backward_max_iter=60)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _autocast_step(model, physics, x, y)
    eps = torch.finfo(torch.bfloat16).eps
    assert model.forward_stats.all_converged and model.backward_stats.all_converged
    assert float(model.forward_stats.residual.max()) <= eps
    # an explicit tolerance is kept, and the low-precision map cannot reach it
    strict = DEQ(denoiser=SmallDenoiserAMP(skip=False), max_iter=60, tol=1e-6)
    with pytest.warns(RuntimeWarning, match="forward solve did not converge"):
        _autocast_step(strict, physics, x, y)
