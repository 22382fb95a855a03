"""Implicit differentiation: exact gradients against unrolled autograd references."""

import deepinv as dinv
import pytest
import torch

from deepinv_deq import DEQ, ImplicitBackward
from deepinv_deq.maps import PGDMap
from deepinv_deq.solvers import AndersonAcceleration

from models import ContractiveDenoiser, Unrolled


def cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)


def flat_grads(params):
    return torch.cat([p.grad.flatten() for p in params])


def setup_problem(dtype=torch.float64, size=8, batch=2):
    physics = dinv.physics.Inpainting(img_size=(1, size, size), mask=0.6)
    physics.mask = physics.mask.to(dtype)
    x = torch.rand(batch, 1, size, size, dtype=dtype)
    y = physics(x).detach()
    return physics, x, y


def make_deq(denoiser, solver, dtype=torch.float64, backward="implicit", **kw):
    return DEQ(
        denoiser=denoiser,
        iteration="PGD",
        stepsize=1.0,
        sigma_denoiser=0.1,
        max_iter=200,
        tol=1e-13,
        backward=backward,
        **(
            {
                "backward_solver": solver,
                "backward_max_iter": 300,
                "backward_tol": 1e-13,
            }
            if backward == "implicit"
            else {}
        ),
        **kw,
    ).to(dtype)


def reference_grads(denoiser, physics, y, loss_fn, n_iter=120):
    fmap = PGDMap(denoiser, stepsize=1.0, sigma_denoiser=0.1).to(y.dtype)
    model = Unrolled(fmap, n_iter)
    y = y.clone().requires_grad_()
    denoiser.zero_grad()
    loss_fn(model, y).backward()
    return flat_grads(denoiser.parameters()).clone(), y.grad.clone()


def deq_grads(model, denoiser, y, loss_fn):
    y = y.clone().requires_grad_()
    denoiser.zero_grad()
    loss_fn(model, y).backward()
    return flat_grads(denoiser.parameters()).clone(), y.grad.clone()


def supervised_loss(x, physics):
    def loss_fn(model, y):
        return torch.nn.functional.mse_loss(model(y, physics), x)

    return loss_fn


def ei_loss(physics):
    mc = dinv.loss.MCLoss()
    rng = torch.Generator()
    ei = dinv.loss.EILoss(dinv.transform.Rotate(multiples=90, positive=True, rng=rng))

    def loss_fn(model, y):
        rng.manual_seed(123)  # the same group element for the DEQ and its reference
        x_net = model(y, physics)
        return mc(y=y, x_net=x_net, physics=physics) + ei(x_net=x_net, physics=physics, model=model)

    return loss_fn


@pytest.mark.parametrize("solver", ["anderson", "fixed_point", "gmres"])
@pytest.mark.parametrize("loss", ["supervised", "mc+ei"])
def test_implicit_gradient_matches_unrolled_reference(solver, loss, dtype64):
    physics, x, y = setup_problem()
    denoiser = ContractiveDenoiser()
    loss_fn = supervised_loss(x, physics) if loss == "supervised" else ei_loss(physics)
    g_ref, gy_ref = reference_grads(denoiser, physics, y, loss_fn)
    model = make_deq(denoiser, solver)
    g, gy = deq_grads(model, denoiser, y, loss_fn)
    assert model.forward_stats.all_converged and model.backward_stats.all_converged
    assert cosine(g, g_ref) >= 0.99999 and cosine(gy, gy_ref) >= 0.99999
    assert (g - g_ref).norm() / g_ref.norm() <= 1e-4
    assert (gy - gy_ref).norm() / gy_ref.norm() <= 1e-4
    if loss == "mc+ei":
        assert model.backward.n_solves == 2  # one backward solve per DEQ call


def test_jfb_is_measurably_less_accurate(dtype64):
    physics, x, y = setup_problem()
    denoiser = ContractiveDenoiser()
    loss_fn = supervised_loss(x, physics)
    g_ref, _ = reference_grads(denoiser, physics, y, loss_fn)
    g_imp, _ = deq_grads(make_deq(denoiser, "anderson"), denoiser, y, loss_fn)
    g_jfb, _ = deq_grads(make_deq(denoiser, None, backward="jfb"), denoiser, y, loss_fn)
    err_imp = (g_imp - g_ref).norm() / g_ref.norm()
    err_jfb = (g_jfb - g_ref).norm() / g_ref.norm()
    assert err_jfb > 1e-2 > 1e3 * err_imp


def test_phantom_gradient_approaches_implicit(dtype64):
    physics, x, y = setup_problem()
    denoiser = ContractiveDenoiser()
    loss_fn = supervised_loss(x, physics)
    g_ref, _ = reference_grads(denoiser, physics, y, loss_fn)
    errors = []
    for k in (1, 5, 40):
        model = make_deq(
            denoiser,
            None,
            backward=ImplicitBackward(mode="phantom", phantom_steps=k, phantom_damping=1.0),
        )
        g, _ = deq_grads(model, denoiser, y, loss_fn)
        errors.append(float((g - g_ref).norm() / g_ref.norm()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-6


def test_gradcheck_small_map(dtype64):
    # x* = f(x*; theta, y) for a small contractive nonlinear map; gradcheck w.r.t. theta and y
    W = 0.3 * torch.randn(4, 4) / 4

    def solve(theta, y):
        f = lambda x: torch.tanh(x @ (theta * W).T + y)
        x_star = AndersonAcceleration(max_iter=200, tol=1e-14)(f, torch.zeros_like(y)).fx
        return ImplicitBackward(tol=1e-14, max_iter=200)(f, x_star)

    theta = torch.tensor(1.5, requires_grad=True)
    y = torch.randn(3, 4, requires_grad=True)
    assert torch.autograd.gradcheck(solve, (theta, y), eps=1e-6, atol=1e-6)


def test_gradient_reaches_tensors_inside_physics(dtype64):
    # a mask that requires grad: the implicit gradient w.r.t. it matches the unrolled one
    physics, x, y = setup_problem()
    denoiser = ContractiveDenoiser()
    mask = physics.mask.clone().requires_grad_()
    physics.mask = mask

    def loss_fn(model, y):
        return torch.nn.functional.mse_loss(model(y, physics), x)

    fmap = PGDMap(denoiser, stepsize=1.0, sigma_denoiser=0.1)
    loss_fn(Unrolled(fmap, 120), y).backward()
    g_ref = mask.grad.clone()
    mask.grad = None
    loss_fn(make_deq(denoiser, "anderson"), y).backward()
    assert cosine(mask.grad, g_ref) >= 0.99999


def test_no_grad_costs_one_evaluation():
    calls = []

    def f(x):
        calls.append(1)
        return 0.5 * x

    with torch.no_grad():
        z = ImplicitBackward()(f, torch.ones(2, 3))
    assert len(calls) == 1 and torch.equal(z, 0.5 * torch.ones(2, 3)) and not z.requires_grad


def test_many_calls_before_one_backward_do_not_interfere():
    # regression: a single shared hook made two calls before one backward recurse forever
    theta = torch.tensor(0.5, requires_grad=True)
    f1 = lambda x: theta * x + 1.0  # x* = 2, dx*/dtheta = 4
    f2 = lambda x: theta * x + 2.0  # x* = 4, dx*/dtheta = 8
    ib = ImplicitBackward(tol=1e-12)
    z1 = ib(f1, torch.full((1, 1), 2.0))
    z2 = ib(f2, torch.full((1, 1), 4.0))
    z3 = ib(f1, torch.full((1, 1), 2.0))
    (z1 + z2 + 2 * z3).sum().backward()
    assert ib.n_solves == 3
    assert torch.isclose(theta.grad, torch.tensor(4.0 + 8.0 + 8.0), atol=1e-4)


def test_backward_non_convergence_is_flagged():
    theta = torch.tensor(0.999, requires_grad=True)
    f = lambda x: theta * x + 1.0
    ib = ImplicitBackward(solver="fixed_point", max_iter=3, tol=1e-12)
    z = ib(f, torch.full((2, 1), 1000.0))
    with pytest.warns(RuntimeWarning, match="did not converge"):
        z.sum().backward()
    assert ib.last_stats.status_names() == ["MAX_ITER", "MAX_ITER"]
    strict = ImplicitBackward(solver="fixed_point", max_iter=3, tol=1e-12, on_failure="raise")
    with pytest.raises(RuntimeError, match="did not converge"):
        strict(f, torch.full((2, 1), 1000.0)).sum().backward()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "exact"}, "mode"),
        ({"mode": "jfb", "tol": 1e-3}, "only apply to mode='implicit'"),
        ({"mode": "implicit", "phantom_steps": 3}, "only apply to mode='phantom'"),
        ({"solver": "broyden"}, "solver"),
        ({"solver": "anderson", "history_sise": 3}, "did you mean 'history_size'"),
        ({"preconditioner": "jacobi"}, "preconditioner"),
        ({"solver": "fixed_point", "history_size": 3}, "history_size"),
        ({"max_iter": 0}, "max_iter"),
        ({"on_failure": "ignore"}, "on_failure"),
    ],
)
def test_invalid_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ImplicitBackward(**kwargs)


def test_failed_backward_falls_back_to_jfb_per_sample():
    # sample 0: contraction 0.5 (backward converges); sample 1: slope 1, I - J singular
    theta = torch.tensor([[0.5], [1.0]], requires_grad=True)
    f = lambda x: theta * x + 1.0
    ib = ImplicitBackward(solver="fixed_point", max_iter=30, tol=1e-8, on_failure="jfb")
    z = ib(f, torch.tensor([[2.0], [5.0]]))
    with pytest.warns(RuntimeWarning, match="falls back to JFB"):
        z.sum().backward()
    # sample 1's residual never drops below ||v||: no better than u = 0, a failure (DIVERGED)
    assert ib.last_stats.status_names() == ["CONVERGED", "DIVERGED"]
    # implicit for sample 0: dx*/dtheta = x* / (1 - theta) = 4; JFB for sample 1: dz/dtheta = x = 5
    assert torch.allclose(theta.grad, torch.tensor([[4.0], [5.0]]), atol=1e-5)
