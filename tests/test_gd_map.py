"""The GD iteration: gradient descent with any differentiable deepinv prior as a fixed-point map."""

import deepinv as dinv
import pytest
import torch

from deepinv_deq import DEQ, ContractiveDenoiser


def test_gd_iteration_with_a_differentiable_prior(dtype64):
    # Tikhonov: F(x) = x - eta (A^T(Ax - y) + lam x); fixed point (A^T A + lam I)^{-1} A^T y
    physics = dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.6)
    physics.mask = physics.mask.double()
    y = physics(torch.rand(2, 1, 8, 8, dtype=torch.float64))
    lam = 0.5
    model = DEQ(
        iteration="GD",
        prior=dinv.optim.prior.Tikhonov(),
        stepsize=0.5,
        lambda_reg=lam,
        tol=1e-12,
        max_iter=300,
        backward_tol=1e-12,
        backward_max_iter=300,
        trainable_params=("lambda_reg",),
    ).double()
    out = model(y, physics)
    expected = physics.A_adjoint(y) / (physics.mask + lam)
    assert model.forward_stats.all_converged
    assert torch.allclose(out, expected, atol=1e-9)
    # d x*/d lam = -x* / (mask + lam), summed: the implicit gradient of the fixed point
    (g,) = torch.autograd.grad(out.sum(), [model.map.lambda_reg])
    assert torch.allclose(g, -(expected / (physics.mask + lam)).sum(), rtol=1e-8)


def test_gd_with_a_red_prior_converges():
    physics = dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.6)
    y = physics(torch.rand(2, 1, 8, 8))
    prior = dinv.optim.prior.RED(ContractiveDenoiser(depth=2, width=4))
    model = DEQ(
        iteration="GD", prior=prior, stepsize=0.5, lambda_reg=1.0, sigma_denoiser=0.05, max_iter=200
    )
    out = model(y, physics)
    out.sum().backward()
    assert model.forward_stats.all_converged and model.backward_stats.all_converged
    assert all(p.grad is not None for p in prior.parameters())


def test_gd_arguments_are_checked():
    with pytest.raises(ValueError, match="GD"):
        DEQ(ContractiveDenoiser(), iteration="GD")  # a denoiser, no prior
    with pytest.raises(ValueError, match="GD"):
        DEQ(iteration="GD")
    with pytest.raises(ValueError, match="sigma_denoiser"):
        DEQ(iteration="GD", prior=dinv.optim.prior.Tikhonov(), sigma_denoiser=-0.1)
    with pytest.raises(ValueError, match="not a deepinv prior"):
        DEQ(denoiser=ContractiveDenoiser(), prior=dinv.optim.prior.Tikhonov())
