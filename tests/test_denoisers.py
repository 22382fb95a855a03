"""ContractiveDenoiser: (1 - eps) I at initialisation, a contractive PGD map, validated options."""

import pytest
import torch
import deepinv as dinv

from deepinv_deq import ContractiveDenoiser, DEQ, spectral_radius
from deepinv_deq.denoisers import residual_cnn


def test_identity_scaled_at_init_and_trainable():
    D = ContractiveDenoiser(epsilon=0.25, depth=3, width=4, in_channels=2)
    x = torch.randn(3, 2, 8, 8)
    assert torch.allclose(D(x, 0.1), 0.75 * x)
    D(x).square().sum().backward()
    last = D.residual[-1]
    assert last.weight.grad is not None and last.weight.grad.abs().sum() > 0


def test_custom_residual_with_sigma_and_zero_init_off():
    class R(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Conv2d(1, 1, 1)

        def forward(self, x, sigma):
            return self.lin(x) * sigma

    r = R()
    torch.nn.init.constant_(r.lin.weight, 2.0)
    torch.nn.init.zeros_(r.lin.bias)
    D = ContractiveDenoiser(r, epsilon=0.5, zero_init=False)
    x = torch.ones(1, 1, 2, 2)
    assert torch.allclose(D(x, 0.5), 0.5 * x + 1.0 * x)


def test_pgd_map_is_contractive_at_init_on_ct():
    torch.manual_seed(0)
    physics = dinv.physics.Tomography(angles=6, img_width=16, normalize=True)
    model = DEQ(
        denoiser=ContractiveDenoiser(epsilon=0.1, depth=3, width=4),
        stepsize=1.0,
        max_iter=200,
        tol=1e-5,
    )
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        x_hat = model(physics(x), physics)
    assert model.forward_stats.all_converged
    rho = spectral_radius(model, physics(x), physics, x_star=x_hat, n_iter=200, tol=1e-6)
    # J_F = 0.9 (I - A^T A): the null space of A gives exactly 0.9
    assert torch.allclose(rho, torch.full_like(rho, 0.9), atol=5e-3)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(epsilon=0.0),
        dict(epsilon=1.5),
        dict(residual="net"),
        dict(depth=1),
        dict(residual=torch.nn.ReLU()),
    ],
)
def test_bad_options_raise(kwargs):
    with pytest.raises(ValueError):
        ContractiveDenoiser(**kwargs)


def test_residual_cnn_shape():
    assert residual_cnn(in_channels=2, depth=2, width=3)(torch.rand(1, 2, 5, 5)).shape == (
        1,
        2,
        5,
        5,
    )


def test_spectral_normalisation_of_hidden_layers_keeps_the_contractive_start():
    from deepinv_deq import spectral_normalize

    D = ContractiveDenoiser(depth=3, width=4)
    spectral_normalize(D.residual[:-1])  # the hidden layers; the zeroed last layer stays as is
    x = torch.rand(2, 1, 8, 8)
    for _ in range(20):
        out = D(x)
    assert torch.allclose(out, 0.9 * x)
    hidden = D.residual[0]
    s = torch.linalg.matrix_norm(hidden.weight.detach().reshape(hidden.weight.shape[0], -1), ord=2)
    assert abs(float(s) - 1) < 1e-2


@pytest.mark.parametrize("api", ["parametrizations", "legacy"])
def test_zero_init_refuses_a_spectrally_normalised_last_layer(api):
    # W / sigma(W) is undefined at W = 0; the old code zeroed a temporary and silently kept R != 0
    net = residual_cnn(depth=2, width=4)
    if api == "parametrizations":
        torch.nn.utils.parametrizations.spectral_norm(net[-1])
    else:
        torch.nn.utils.spectral_norm(net[-1])
    with pytest.raises(ValueError, match="spectrally normalised"):
        ContractiveDenoiser(net)
