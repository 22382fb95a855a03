"""Equivariance error and the invariant-prior test on operators with known answers."""

from __future__ import annotations

import math

import pytest
import torch
import deepinv as dinv

from deepinv_deq import DEQ
from deepinv_deq.diagnostics import (
    equivariance_error,
    invariant_prior_test,
    jacobian_asymmetry,
    operator_equivariance_error,
)

H = 8


def rotations():
    return dinv.transform.Rotate(multiples=90, positive=True, rng=torch.Generator().manual_seed(0))


def symmetric_conv(x):
    # circular convolution with a kernel invariant to 90-degree rotations: equivariant, J = J^T
    k = (
        torch.tensor(
            [[0.0, 1.0, 0.0], [1.0, 4.0, 1.0], [0.0, 1.0, 0.0]], dtype=x.dtype, device=x.device
        )
        / 8
    )
    xp = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="circular")
    return torch.nn.functional.conv2d(xp, k.reshape(1, 1, 3, 3))


def ramp(x):
    # pixel-dependent gain: not equivariant to rotations
    w = torch.linspace(0.2, 1.0, x.shape[-1], dtype=x.dtype, device=x.device)
    return x * w


def test_equivariant_operators_score_zero(device):
    x = torch.rand(3, 1, H, H, device=device)
    for op in (lambda t: 0.5 * t, symmetric_conv):
        assert float(operator_equivariance_error(op, rotations(), x, n_draws=6)) < 1e-12


def test_non_equivariant_operator_matches_closed_form():
    x = torch.rand(3, 1, H, H)
    T = lambda t: torch.rot90(t, 1, dims=(-2, -1))  # a deterministic transformation
    err = operator_equivariance_error(ramp, T, x, n_draws=1)
    per_sample = (ramp(T(x)) - T(ramp(x))).pow(2).sum((1, 2, 3)) / T(ramp(x)).pow(2).sum((1, 2, 3))
    assert torch.allclose(err, per_sample.mean())
    assert err > 1e-2


def test_equivariance_error_of_reconstructors():
    x = torch.rand(2, 1, H, H)
    denoising = dinv.physics.Denoising(dinv.physics.GaussianNoise(0.1))
    equivariant = lambda y, physics: symmetric_conv(y)
    assert float(equivariance_error(equivariant, denoising, rotations(), x)) < 1e-12
    # inpainting with a fixed mask is not equivariant: f(A T x) = M T x but T f(A x) = T M x
    mask = (torch.rand(1, H, H, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    inpainting = dinv.physics.Inpainting(img_size=(1, H, H), mask=mask)
    adjoint = lambda y, physics: physics.A_adjoint(y)
    T = lambda t: torch.rot90(t, 1, dims=(-2, -1))
    err = equivariance_error(adjoint, inpainting, T, x, n_draws=1)
    expected = (
        (mask * T(x) - T(mask * x)).pow(2).sum((1, 2, 3)) / T(mask * x).pow(2).sum((1, 2, 3))
    ).mean()
    assert torch.allclose(err, expected)


def test_dataset_and_dataloader_inputs_agree_with_tensor():
    x = torch.rand(4, 1, H, H)
    T = lambda t: torch.rot90(t, 1, dims=(-2, -1))
    ref = operator_equivariance_error(ramp, T, x, n_draws=1)
    dataset = torch.utils.data.TensorDataset(x)
    loader = torch.utils.data.DataLoader(dataset, batch_size=3)
    assert torch.allclose(operator_equivariance_error(ramp, T, dataset, n_draws=1), ref)
    assert torch.allclose(operator_equivariance_error(ramp, T, loader, n_draws=1), ref)


def test_jacobian_asymmetry_known_answers(device, dtype64):
    torch.manual_seed(0)
    x = torch.rand(2, 1, H, H, device=device)
    assert torch.all(jacobian_asymmetry(symmetric_conv, x) < 1e-12)
    # gradient of a convex function x -> 1/2 ||Kx||^2 + sum softplus(Kx): symmetric Jacobian
    K = torch.randn(H * H, H * H, device=device) / H

    def grad_convex(t):
        z = t.reshape(t.shape[0], -1) @ K.T
        return ((z + torch.sigmoid(z)) @ K).reshape(t.shape)

    assert torch.all(jacobian_asymmetry(grad_convex, x) < 1e-10)
    # a cyclic shift is a permutation with no symmetric pair: ||P - P^T||_F / ||P||_F = sqrt(2)
    shift = lambda t: torch.roll(t, 1, dims=-1)
    est = jacobian_asymmetry(
        shift, x, n_probes=200, generator=torch.Generator(device=device).manual_seed(0)
    )
    assert torch.allclose(est, torch.full_like(est, math.sqrt(2)), rtol=0.05)


def test_invariant_prior_test_on_deq_denoisers():
    x = torch.rand(2, 1, H, H)
    shifts = dinv.transform.Shift(rng=torch.Generator().manual_seed(0))

    def prox_like(t, sigma):  # prox of the shift-invariant prior ||x||^2 / (2 sigma)
        return t / (1 + sigma)

    def shift_denoiser(t, sigma):  # shift-equivariant but not a gradient field
        return 0.5 * torch.roll(t, 1, dims=-1)

    def ramp_denoiser(t, sigma):  # not shift-equivariant, but with a symmetric (diagonal) Jacobian
        return ramp(t)

    scores = {}
    for name, D in (("prox", prox_like), ("shift", shift_denoiser), ("ramp", ramp_denoiser)):
        model = DEQ(denoiser=D, sigma_denoiser=0.1)
        scores[name] = invariant_prior_test(model, shifts, x, n_draws=4, n_probes=64)
    assert (
        scores["prox"]["equivariance_error"] < 1e-12 and scores["prox"]["jacobian_asymmetry"] < 1e-6
    )
    assert scores["shift"]["equivariance_error"] < 1e-12
    assert scores["shift"]["jacobian_asymmetry"] == pytest.approx(math.sqrt(2), rel=0.1)
    assert (
        scores["ramp"]["equivariance_error"] > 1e-2 and scores["ramp"]["jacobian_asymmetry"] < 1e-6
    )


def test_diagnostics_errors():
    x = torch.rand(1, 1, H, H)
    with pytest.raises(ValueError, match="sigma"):
        invariant_prior_test(lambda t, s: t, rotations(), x)
    with pytest.raises(ValueError, match="n_draws"):
        operator_equivariance_error(ramp, rotations(), x, n_draws=0)
    with pytest.raises(ValueError, match="empty"):
        operator_equivariance_error(ramp, rotations(), [])
    with pytest.raises(ValueError, match="shape"):
        jacobian_asymmetry(lambda t: t[..., :4], x)
    with pytest.raises(ValueError, match="transform"):
        operator_equivariance_error(ramp, 3, x)
