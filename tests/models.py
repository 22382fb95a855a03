"""Small, contractive models shared by the core tests."""

from __future__ import annotations

import torch


class ContractiveDenoiser(torch.nn.Module):
    r"""A tiny learned denoiser :math:`D(x) = a x + b\,\tanh(W_2 * \tanh(W_1 * x))` that is a
    contraction (Lipschitz constant well below one) for the default weight scale."""

    def __init__(self, channels: int = 1, features: int = 4, a: float = 0.5, scale: float = 0.1):
        super().__init__()
        self.a = a
        self.conv1 = torch.nn.Conv2d(channels, features, 3, padding=1, padding_mode="circular")
        self.conv2 = torch.nn.Conv2d(features, channels, 3, padding=1, padding_mode="circular")
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                conv.weight.mul_(scale / conv.weight.abs().sum(dim=(1, 2, 3), keepdim=True))
        self.sigma_scale = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, x, sigma):
        h = torch.tanh(self.conv1(x))
        return (
            self.a * x
            + self.sigma_scale * sigma * torch.tanh(self.conv2(h))
            + 0.1 * torch.tanh(self.conv2(h))
        )


class Unrolled(torch.nn.Module):
    """K iterations of a fixed-point map with ordinary autograd: the gradient reference."""

    def __init__(self, fmap, n_iter: int):
        super().__init__()
        self.map = fmap
        self.n_iter = n_iter

    def forward(self, y, physics, **kwargs):
        x = physics.A_adjoint(y)
        for _ in range(self.n_iter):
            x = self.map(x, y, physics)
        return x
