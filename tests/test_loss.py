"""DEQ-aware EI / MO-EI / SURE losses and the Jacobian-norm regulariser."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import deepinv as dinv

from deepinv_deq import DEQ, DEQEILoss, DEQMOEILoss, DEQSureGaussianLoss, JacobianNormLoss
from deepinv_deq.loss import is_deq

N = 12


class Denoiser(torch.nn.Module):
    r"""Contractive, shift-equivariant denoiser :math:`a x + b \tanh(W_2 * \tanh(W_1 * x))`."""

    def __init__(self, features=4, scale=0.6):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.3))
        self.b = torch.nn.Parameter(torch.tensor(0.4))
        self.conv1 = torch.nn.Conv2d(1, features, 3, padding=1, padding_mode="circular")
        self.conv2 = torch.nn.Conv2d(features, 1, 3, padding=1, padding_mode="circular")
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                conv.weight.mul_(scale / conv.weight.abs().sum(dim=(1, 2, 3), keepdim=True))

    def forward(self, x, sigma=None):
        return self.a * x + self.b * torch.tanh(self.conv2(torch.tanh(self.conv1(x))))


class Unrolled(torch.nn.Module):
    """``n_iter`` iterations of the DEQ's map from the same initial point, with plain autograd."""

    def __init__(self, deq, n_iter):
        super().__init__()
        self.deq = deq
        self.n_iter = n_iter

    def forward(self, y, physics, **kwargs):
        x = physics.A_adjoint(y)
        for _ in range(self.n_iter):
            x = self.deq.map(x, y, physics)
        return x


class LinearRecon(torch.nn.Module):
    """A non-DEQ reconstructor: a convolution of the adjoint."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, y, physics, **kwargs):
        return self.conv(physics.A_adjoint(y))


def tomography(dtype=torch.float32, sigma=0.0):
    noise = dinv.physics.GaussianNoise(sigma) if sigma else dinv.physics.ZeroNoise()
    return dinv.physics.Tomography(
        angles=6, img_width=N, normalize=True, dtype=dtype, noise_model=noise
    )


def tight_deq(**kw):
    opts = dict(stepsize=0.9, max_iter=200, tol=1e-12, backward_max_iter=200, backward_tol=1e-12)
    opts.update(kw)
    return DEQ(denoiser=Denoiser(), **opts)


def images(dtype=None, batch=2):
    x = torch.rand(batch, 1, N // 3, N // 3, dtype=dtype)
    return torch.nn.functional.interpolate(x, size=(N, N), mode="bilinear", align_corners=False)


def grads(module):
    return torch.cat([p.grad.reshape(-1) for p in module.parameters() if p.grad is not None])


def rot90(x):
    return torch.rot90(x, 1, dims=(-2, -1))


def loss_and_grad(model, params_of, losses, y, physics, seed=0):
    for p in params_of.parameters():
        p.grad = None
    torch.manual_seed(seed)
    x_net = model(y, physics)
    total = sum(l(x_net=x_net, x=None, y=y, physics=physics, model=model).mean() for l in losses)
    total.backward()
    return total.detach(), grads(params_of)


def test_two_call_ei_gradient_matches_unrolled_reference(dtype64):
    # MC + EI with a fixed transformation: the implicit gradient through both DEQ calls equals the
    # gradient of a long unrolled run of the same contractive map.
    torch.manual_seed(0)
    physics = tomography(torch.float64)
    x = images(torch.float64)
    y = physics(x)
    deq = tight_deq()
    losses = [dinv.loss.MCLoss(), dinv.loss.EILoss(transform=rot90, apply_noise=False)]
    loss_deq, g_deq = loss_and_grad(deq, deq, losses, y, physics)
    assert deq.backward.n_solves == 2
    loss_ref, g_ref = loss_and_grad(Unrolled(deq, 80), deq, losses, y, physics)
    assert torch.allclose(loss_deq, loss_ref, rtol=1e-10)
    cos = torch.nn.functional.cosine_similarity(g_deq, g_ref, dim=0)
    assert cos >= 0.99999
    assert torch.linalg.vector_norm(g_deq - g_ref) <= 1e-6 * torch.linalg.vector_norm(g_ref)


def test_two_call_ei_gradient_with_deq_adapter_matches_unrolled_reference(dtype64):
    torch.manual_seed(0)
    physics = tomography(torch.float64)
    y = physics(images(torch.float64))
    deq = tight_deq()
    losses = [dinv.loss.MCLoss(), DEQEILoss(rot90, apply_noise=False, warm_start=True)]
    _, g_deq = loss_and_grad(deq, deq, losses, y, physics)
    ref_losses = [dinv.loss.MCLoss(), dinv.loss.EILoss(rot90, apply_noise=False)]
    _, g_ref = loss_and_grad(Unrolled(deq, 80), deq, ref_losses, y, physics)
    assert torch.nn.functional.cosine_similarity(g_deq, g_ref, dim=0) >= 0.99999


class RecordingDEQ(DEQ):
    """A DEQ that records the ``init`` of every call."""

    def forward(self, y, physics, init=None, **kwargs):
        self.inits = getattr(self, "inits", []) + [init]
        return super().forward(y, physics, init=init, **kwargs)


def _pairs(physics, warm_start=True):
    # every loss gets its own generators, seeded alike, so both members of a pair draw the same g
    w = dict(warm_start=warm_start)

    def rot():
        return dinv.transform.Rotate(
            multiples=90, positive=True, rng=torch.Generator().manual_seed(0)
        )

    def shift():
        return dinv.transform.Shift(rng=torch.Generator().manual_seed(0))

    def gen():
        return torch.Generator().manual_seed(1)

    return {
        "ei": (dinv.loss.EILoss(rot()), DEQEILoss(rot(), **w)),
        "ei_shift_no_grad": (
            dinv.loss.EILoss(shift(), no_grad=True, weight=0.5),
            DEQEILoss(shift(), no_grad=True, weight=0.5, **w),
        ),
        "moei": (
            dinv.loss.MOEILoss(rot(), physics=[physics, physics], rng=gen()),
            DEQMOEILoss(rot(), physics=[physics, physics], rng=gen(), **w),
        ),
        "sure": (
            dinv.loss.SureGaussianLoss(sigma=0.05, tau=1e-2, rng=torch.Generator().manual_seed(2)),
            DEQSureGaussianLoss(sigma=0.05, tau=1e-2, rng=torch.Generator().manual_seed(2), **w),
        ),
    }


@pytest.mark.parametrize("warm_start", [False, True])
@pytest.mark.parametrize("name", ["ei", "ei_shift_no_grad", "moei", "sure"])
def test_adapters_are_deepinv_losses_for_non_deq_models(name, warm_start):
    physics = tomography(sigma=0.05)
    y = physics(images())
    model = LinearRecon()
    assert not is_deq(model)
    plain, ours = _pairs(physics, warm_start)[name]
    assert isinstance(ours, type(plain))
    v_plain, g_plain = loss_and_grad(model, model, [plain], y, physics, seed=3)
    v_ours, g_ours = loss_and_grad(model, model, [ours], y, physics, seed=3)
    assert torch.equal(v_plain, v_ours)
    assert torch.equal(g_plain, g_ours)


@pytest.mark.parametrize("name", ["ei", "ei_shift_no_grad", "moei", "sure"])
def test_adapters_default_to_deepinv_losses_for_deq(name):
    """Cold start by default: the value and gradient of deepinv's loss, bit for bit, and no init."""
    physics = tomography(sigma=0.05)
    y = physics(images())
    model = RecordingDEQ(denoiser=Denoiser(), stepsize=0.9, max_iter=100, tol=1e-5)
    plain, ours = _pairs(physics, warm_start=False)[name]
    assert ours.warm_start is False
    v_plain, g_plain = loss_and_grad(model, model, [plain], y, physics, seed=3)
    v_ours, g_ours = loss_and_grad(model, model, [ours], y, physics, seed=3)
    assert torch.equal(v_plain, v_ours)
    assert torch.equal(g_plain, g_ours)
    assert all(init is None for init in model.inits)


@pytest.mark.parametrize("name", ["ei", "moei", "sure"])
def test_adapters_gradient_equals_unadapted_loss_for_deq(name, dtype64):
    physics = tomography(torch.float64, sigma=0.05)
    torch.manual_seed(0)
    y = physics(images(torch.float64))
    model = tight_deq()
    plain, ours = _pairs(physics)[name]
    v_plain, g_plain = loss_and_grad(model, model, [plain], y, physics, seed=3)
    v_ours, g_ours = loss_and_grad(model, model, [ours], y, physics, seed=3)
    assert torch.allclose(v_plain, v_ours, rtol=1e-9, atol=1e-12)
    assert torch.linalg.vector_norm(g_plain - g_ours) <= 1e-7 * torch.linalg.vector_norm(g_plain)


def test_ei_extra_solve_is_initialised_at_detached_transformed_reconstruction():
    physics = tomography()
    model = RecordingDEQ(denoiser=Denoiser(), stepsize=0.9, max_iter=30, tol=1e-4)
    y = physics(images())
    x_net = model(y, physics)
    DEQEILoss(rot90, warm_start=True)(x_net=x_net, physics=physics, model=model)
    assert model.inits[0] is None and len(model.inits) == 2
    assert torch.equal(model.inits[1], rot90(x_net)) and not model.inits[1].requires_grad


def test_ei_warm_start_solves_at_once_for_an_equivariant_consistent_model():
    # A = I and D = projection onto zero-mean images: f(y) = D y is idempotent and shift-equivariant,
    # so T_g x_hat is exactly the solution of the EI solve; a cold start (zeros) needs many iterations.
    physics = dinv.physics.Denoising(dinv.physics.ZeroNoise())
    project = lambda x, sigma: x - x.mean(dim=(-2, -1), keepdim=True)
    zeros = lambda y, physics: torch.zeros_like(y)
    model = DEQ(
        denoiser=project, stepsize=0.5, max_iter=100, tol=1e-6, solver="fixed_point", init=zeros
    )
    y = images()
    x_net = model(y, physics)
    nfe = {}
    for name, cls in (("cold", dinv.loss.EILoss), ("warm", partial(DEQEILoss, warm_start=True))):
        loss = cls(dinv.transform.Shift(rng=torch.Generator().manual_seed(0)))
        value = loss(x_net=x_net, physics=physics, model=model)
        nfe[name] = model.forward_stats.nfe
        assert model.forward_stats.all_converged and float(value.detach()) < 1e-10
    assert nfe["warm"] == 1 < nfe["cold"]


def test_sure_perturbed_solve_starts_at_reconstruction():
    physics = tomography(sigma=0.05)
    y = physics(images())
    model = DEQ(denoiser=Denoiser(), stepsize=0.9, max_iter=100, tol=1e-5, solver="fixed_point")
    x_net = model(y, physics)
    nfe = {}
    for name, cls in (
        ("cold", dinv.loss.SureGaussianLoss),
        ("warm", partial(DEQSureGaussianLoss, warm_start=True)),
    ):
        loss = cls(sigma=0.05, tau=1e-3, rng=torch.Generator().manual_seed(0))
        loss(y=y, x_net=x_net, physics=physics, model=model)
        nfe[name] = model.forward_stats.nfe
    assert nfe["warm"] < nfe["cold"]


def test_warm_and_cold_ei_differ_when_the_fixed_point_is_not_unique():
    """Identity denoiser on inpainting: every x with Ax = y is a fixed point of the PGD map. Started
    at T_g x_hat, the warm solve returns T_g x_hat and the EI term vanishes; the cold solve (the
    default, deepinv's objective) returns A^T A T_g x_hat and the EI term does not."""
    physics = dinv.physics.Inpainting(img_size=(1, N, N), mask=0.5)
    model = DEQ(denoiser=lambda x, sigma: x, stepsize=1.0, max_iter=50, tol=1e-6)
    y = physics(images())
    x_net = model(y, physics)
    assert model.forward_stats.all_converged
    values = {}
    for name, loss in (
        ("deepinv", dinv.loss.EILoss(rot90, apply_noise=False)),
        ("cold", DEQEILoss(rot90, apply_noise=False)),
        ("warm", DEQEILoss(rot90, apply_noise=False, warm_start=True)),
    ):
        values[name] = float(loss(x_net=x_net, physics=physics, model=model).detach())
        assert model.forward_stats.all_converged
    t = rot90(x_net.detach())
    expected = float(torch.nn.functional.mse_loss(physics.A_adjoint(physics.A(t)), t))
    assert values["deepinv"] == values["cold"] == pytest.approx(expected, rel=1e-5)
    assert expected > 1e-2
    assert values["warm"] < 1e-10


@pytest.mark.parametrize("cls", [DEQEILoss, DEQMOEILoss, DEQSureGaussianLoss])
def test_warm_start_option_is_validated(cls):
    args = {
        DEQEILoss: (rot90,),
        DEQMOEILoss: (rot90, [dinv.physics.Denoising()]),
        DEQSureGaussianLoss: (0.1,),
    }
    with pytest.raises(ValueError, match="warm_start"):
        cls(*args[cls], warm_start="yes")


class LinearMap(torch.nn.Module):
    """F(x) = W x + y on flattened images, with a learnable W."""

    def __init__(self, W):
        super().__init__()
        self.W = torch.nn.Parameter(W)

    def forward(self, x, y, physics):
        B = x.shape[0]
        return (x.reshape(B, -1) @ self.W.T).reshape(x.shape) + y


def test_jacobian_norm_exact_with_rademacher_probes_on_diagonal_map():
    n = 16
    w = torch.linspace(-0.9, 0.9, n)
    model = DEQ(iteration=LinearMap(torch.diag(w)), init=lambda y, physics: torch.zeros_like(y))
    physics = dinv.physics.Denoising(dinv.physics.ZeroNoise())
    y = torch.rand(3, 1, 4, 4)
    x_net = model(y, physics)
    reg = JacobianNormLoss(n_probes=1, probe="rademacher", weight=2.0)
    value = reg(x_net=x_net, y=y, physics=physics, model=model)
    assert value.shape == (3,)
    # for a diagonal Jacobian ||J^T v||^2 = sum_i w_i^2 for every sign vector v
    assert torch.allclose(value, torch.full((3,), 2.0 * float(w.pow(2).sum()) / n))
    value.sum().backward()
    # d/dW ||W^T v||^2 = 2 v v^T W, whose diagonal is 2 w_i for sign vectors (three samples, weight 2)
    expected = 3 * 2.0 * 2 * w / n
    assert torch.allclose(torch.diagonal(model.map.fn.W.grad), expected, atol=1e-6)


def test_jacobian_norm_gaussian_estimate_of_dense_map():
    torch.manual_seed(0)
    n = 16
    W = 0.5 * torch.randn(n, n) / n**0.5
    model = DEQ(iteration=LinearMap(W), init=lambda y, physics: torch.zeros_like(y))
    physics = dinv.physics.Denoising(dinv.physics.ZeroNoise())
    y = torch.rand(2, 1, 4, 4)
    x_net = model(y, physics)
    reg = JacobianNormLoss(n_probes=4000, normalize=False, rng=torch.Generator().manual_seed(0))
    value = reg(x_net=x_net, y=y, physics=physics, model=model)
    exact = float(W.pow(2).sum())
    assert torch.allclose(value, torch.full((2,), exact), rtol=0.05)


def test_jacobian_norm_with_hqs_on_least_squares_prox(dtype64):
    """Blur's prox is deepinv's conjugate-gradient solver inside a once_differentiable function:
    differentiating a VJP through it used to raise. The HQS map's own VJP gives the value and the
    gradient (denoiser and step size) of plain double autograd on the same operator with a
    closed-form prox (BlurFFT: the same circular convolution): exactly on the closed-form prox,
    and up to the accuracy of deepinv's CG (~1e-7 relative on one prox here) on Blur."""
    from deepinv_deq.maps import autograd_vjp

    t = torch.arange(-2.0, 3.0)
    g = torch.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / 2)
    kernel = (g / g.sum()).reshape(1, 1, 5, 5)
    physics = {
        "cg": dinv.physics.Blur(filter=kernel, padding="circular", max_iter=200, tol=1e-10),
        "closed_form": dinv.physics.BlurFFT(img_size=(1, N, N), filter=kernel),
    }
    torch.manual_seed(0)
    x = images(batch=2)
    assert torch.allclose(physics["cg"].A(x), physics["closed_form"].A(x), rtol=1e-12)
    y = physics["closed_form"](x)
    torch.manual_seed(1)
    model = DEQ(
        denoiser=Denoiser(),
        iteration="HQS",
        stepsize=0.5,
        trainable_params=("stepsize",),
        max_iter=100,
        tol=1e-10,
    )
    x_net = model(y, physics["closed_form"])
    assert model.forward_stats.all_converged

    def value_and_grad(name, generic=False):
        model.zero_grad()
        if generic:  # plain autograd through one evaluation of the map
            model.map.differentiable_vjp = lambda x_, y_, p_: autograd_vjp(model.map, x_, y_, p_)
        try:
            reg = JacobianNormLoss(n_probes=2, rng=torch.Generator().manual_seed(0))
            value = reg(x_net=x_net, y=y, physics=physics[name], model=model)
            value.sum().backward()
        finally:
            if generic:
                del model.map.differentiable_vjp
        return value.detach(), grads(model)

    v_ref, g_ref = value_and_grad("closed_form", generic=True)
    v_cg, g_cg = value_and_grad("cg")
    v_map, g_map = value_and_grad("closed_form")  # the map's VJP on the closed-form prox too
    assert model.map.stepsize.grad.abs() > 0 and g_ref.abs().max() > 0
    assert torch.allclose(v_map, v_ref, rtol=1e-12) and torch.allclose(v_cg, v_ref, rtol=1e-5)
    assert torch.linalg.vector_norm(g_map - g_ref) <= 1e-10 * torch.linalg.vector_norm(g_ref)
    assert torch.linalg.vector_norm(g_cg - g_ref) <= 1e-3 * torch.linalg.vector_norm(g_ref)
    # the old path (autograd through the once-differentiable solver) raises
    with pytest.raises(RuntimeError, match="once_differentiable"):
        value_and_grad("cg", generic=True)


def test_jacobian_norm_errors():
    physics = dinv.physics.Denoising(dinv.physics.ZeroNoise())
    y = torch.rand(1, 1, 4, 4)
    with pytest.raises(ValueError, match="must be a deepinv_deq.DEQ"):
        JacobianNormLoss()(x_net=y, y=y, physics=physics, model=LinearRecon())
    with pytest.raises(ValueError, match="n_probe"):
        JacobianNormLoss(n_probe=3)
    with pytest.raises(ValueError, match="n_probes"):
        JacobianNormLoss(n_probes=0)
    with pytest.raises(ValueError, match="probe"):
        JacobianNormLoss(probe="uniform")
    with pytest.raises(ValueError, match="weight"):
        JacobianNormLoss(weight=-1.0)
