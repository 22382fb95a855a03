"""Spectral radius / norm of the map's Jacobian at the fixed point, and spectral normalisation."""

from __future__ import annotations

import pytest
import torch
import deepinv as dinv
from torch.nn.utils import parametrize

from deepinv_deq import DEQ
from deepinv_deq.stabilisers import spectral_normalize, spectral_radius

n = 16  # flattened 1 x 4 x 4 images


class LinearMap(torch.nn.Module):
    """F(x) = W x + y on flattened images."""

    def __init__(self, W):
        super().__init__()
        self.register_buffer("W", W)

    def forward(self, x, y, physics):
        return (x.reshape(x.shape[0], -1) @ self.W.T).reshape(x.shape) + y


def identity_physics():
    return dinv.physics.Denoising(dinv.physics.ZeroNoise())


def deq_of(W):
    return DEQ(iteration=LinearMap(W), max_iter=200, tol=1e-10)


def test_symmetric_linear_map_radius_equals_norm_equals_largest_eigenvalue(device, dtype64):
    torch.manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(n, n))
    eig = torch.linspace(-0.3, 0.7, n)
    eig[3] = -0.8  # dominant eigenvalue negative: |lambda| matters
    W = (Q * eig) @ Q.T
    model = deq_of(W).to(device)
    y = torch.rand(2, 1, 4, 4, device=device)
    for mode in ("radius", "norm"):
        est = spectral_radius(model, y, identity_physics(), n_iter=500, tol=1e-12, mode=mode)
        assert est.shape == (2,) and est.device.type == device.type
        assert torch.allclose(est, torch.full_like(est, 0.8), atol=1e-6), (mode, est)


def test_non_normal_map_radius_below_norm(dtype64):
    torch.manual_seed(0)
    eig = torch.linspace(0.1, 0.6, n)
    S = torch.eye(n) + 2.0 * torch.triu(torch.randn(n, n), diagonal=1) / n**0.5
    W = S @ torch.diag(eig) @ torch.linalg.inv(S)
    x = torch.rand(1, 1, 4, 4)
    F = LinearMap(W)
    rho = spectral_radius(F, y=x, physics=None, x_star=x, n_iter=2000, tol=1e-12)
    norm = spectral_radius(F, y=x, physics=None, x_star=x, n_iter=2000, tol=1e-12, mode="norm")
    assert torch.allclose(rho, torch.tensor([0.6]), atol=1e-5)
    assert torch.allclose(norm, torch.linalg.matrix_norm(W, ord=2).reshape(1), rtol=1e-6)
    assert norm > rho + 0.05


def test_pgd_map_with_linear_denoiser_known_radius():
    # F(x) = c (x - eta M (x - y)) with an inpainting mask M: J = c (I - eta M), radius c.
    physics = dinv.physics.Inpainting(img_size=(1, 6, 6), mask=0.5)
    c, eta = 0.8, 0.5
    model = DEQ(denoiser=lambda x, sigma: c * x, stepsize=eta, max_iter=100, tol=1e-8)
    y = physics(torch.rand(2, 1, 6, 6))
    rho = spectral_radius(model, y, physics, n_iter=300, tol=1e-10)
    assert torch.allclose(rho, torch.full((2,), c), atol=1e-4)


def test_spectral_radius_errors():
    x = torch.rand(1, 1, 4, 4)
    F = LinearMap(0.5 * torch.eye(n))
    with pytest.raises(ValueError, match="x_star"):
        spectral_radius(F, y=x, physics=None)
    with pytest.raises(ValueError, match="mode"):
        spectral_radius(F, y=x, physics=None, x_star=x, mode="trace")
    with pytest.raises(ValueError, match="n_iter"):
        spectral_radius(F, y=x, physics=None, x_star=x, n_iter=0)
    with pytest.raises(ValueError, match="model_or_map"):
        spectral_radius(3.0, y=x, physics=None, x_star=x)


def test_spectral_normalize_constrains_every_layer():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.ConvTranspose2d(6, 4, 3, padding=1),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 8 * 8, 5),
    )
    with torch.no_grad():
        for m in net:
            if hasattr(m, "weight"):
                m.weight.mul_(10)
    assert spectral_normalize(net) is net
    for _ in range(60):  # power iterations run in training-mode forward passes
        net(torch.rand(2, 1, 8, 8))
    conv, convt, lin = net[0], net[2], net[4]
    for m in (conv, convt, lin):
        assert parametrize.is_parametrized(m, "weight")
    assert abs(torch.linalg.matrix_norm(conv.weight.reshape(6, -1), ord=2) - 1) < 1e-3
    # transposed convolution: the output-channel dimension is 1
    assert (
        abs(torch.linalg.matrix_norm(convt.weight.transpose(0, 1).reshape(4, -1), ord=2) - 1) < 1e-3
    )
    assert abs(torch.linalg.matrix_norm(lin.weight, ord=2) - 1) < 1e-3
    # idempotent: a second call does not stack a second normalisation
    spectral_normalize(net)
    assert len(conv.parametrizations.weight) == 1


def test_spectral_normalize_errors():
    with pytest.raises(ValueError, match="denoiser"):
        spectral_normalize(lambda x: x)
    with pytest.raises(ValueError, match="n_power_iterations"):
        spectral_normalize(torch.nn.Linear(2, 2), n_power_iterations=0)


def test_norm_mode_through_a_least_squares_prox_matches_the_closed_form(dtype64):
    """HQS on Blur: the prox is deepinv's once-differentiable CG solver, so J v cannot come from
    differentiating a VJP through it (it used to come out as 0, silently). The map's own
    differentiable VJP gives the same ||J_F||_2 as the same operator with a closed-form prox."""
    from deepinv_deq import ContractiveDenoiser

    t = torch.arange(-2.0, 3.0)
    g = torch.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / 2)
    kernel = (g / g.sum()).reshape(1, 1, 5, 5)
    cg = dinv.physics.Blur(filter=kernel, padding="circular", max_iter=100, tol=1e-8)
    closed = dinv.physics.BlurFFT(img_size=(1, 8, 8), filter=kernel)
    torch.manual_seed(0)
    den = ContractiveDenoiser(depth=2, width=4)
    torch.nn.init.normal_(den.residual[-1].weight, std=0.1)
    model = DEQ(denoiser=den, iteration="HQS", stepsize=1.0)
    x = torch.rand(2, 1, 8, 8)
    y = closed(x)
    est = {
        name: spectral_radius(
            model,
            y,
            p,
            x_star=x,
            mode="norm",
            n_iter=20,
            tol=0.0,
            generator=torch.Generator().manual_seed(0),
        )
        for name, p in (("cg", cg), ("closed", closed))
    }
    assert (est["closed"] > 0.5).all()
    assert torch.allclose(est["cg"], est["closed"], rtol=1e-6)  # same iterates, same estimate
    # a plain function through the same solver: a clear error, not a zero
    with pytest.raises(RuntimeError, match="not differentiable"):
        spectral_radius(
            lambda x_, y_, p_: model.map(x_, y_, p_), y, cg, x_star=x, mode="norm", n_iter=3
        )


def test_vjp_and_jvp_refuses_a_once_differentiable_function():
    from torch.autograd.function import once_differentiable

    from deepinv_deq._autodiff import vjp_and_jvp

    class Double(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return 2 * x

        @staticmethod
        @once_differentiable
        def backward(ctx, g):
            return 2 * g

    x = torch.rand(3, requires_grad=True)
    vjp, jvp = vjp_and_jvp(Double.apply(x), x)
    assert torch.equal(vjp(torch.ones(3)), torch.full((3,), 2.0))
    with pytest.raises(RuntimeError, match="not differentiable"):
        jvp(torch.ones(3))
    # a function that does not depend on x has J = 0
    z = torch.rand(3, requires_grad=True)
    _, jvp0 = vjp_and_jvp(z * 1.0, x)
    assert torch.equal(jvp0(torch.ones(3)), torch.zeros(3))
