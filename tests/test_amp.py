"""Mixed precision (issue 7, item 2): DEQ forward and backward under :func:`torch.autocast`.

bfloat16 on CPU, float16 on CUDA (when present). The gradients must be finite and close to the
float32 ones, and the solvers must iterate in float32 even when the map computes in low precision.
A map evaluated in bfloat16 carries ~3 significant digits, so its fixed-point residual cannot drop
much below 1e-2; the tolerances under autocast are set accordingly.
"""

from __future__ import annotations

import warnings

import deepinv as dinv
import pytest
import torch

from deepinv_deq import DEQ, DEQEILoss, DEQSureGaussianLoss, ImplicitBackward
from deepinv_deq.solvers import AndersonAcceleration


def amp_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cpu" else torch.float16


class SmallDenoiser(torch.nn.Module):
    r"""Contractive two-layer conv denoiser; with ``skip`` it returns ``x/2 + net(x)`` (float32
    output under autocast, as DnCNN's residual connection), without it ``net(x)`` (low-precision
    output under autocast)."""

    def __init__(self, skip: bool):
        super().__init__()
        self.skip = skip
        self.c1 = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = torch.nn.Conv2d(4, 1, 3, padding=1)
        with torch.no_grad():
            for c in (self.c1, self.c2):
                c.weight.mul_(0.6 / c.weight.abs().sum(dim=(1, 2, 3), keepdim=True))

    def forward(self, x, sigma=None):
        out = self.c2(torch.tanh(self.c1(x)))
        return 0.5 * x + 0.5 * out if self.skip else out


class RecordingAnderson(AndersonAcceleration):
    """Anderson acceleration that records the dtype of every iterate it mixes."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.dtypes = []

    def _next(self, state, k, x, fx):
        self.dtypes.append((x.dtype, fx.dtype))
        return super()._next(state, k, x, fx)


def _problem(device):
    physics = dinv.physics.Inpainting(img_size=(1, 16, 16), mask=0.6, device=device)
    x = torch.rand(2, 1, 16, 16, device=device)
    return physics, x, physics(x)


def _grads(denoiser, physics, x, y, amp, device, fwd_tol, bwd_tol):
    model = DEQ(
        denoiser=denoiser,
        stepsize=1.0,
        solver=RecordingAnderson(max_iter=60, tol=fwd_tol),
        backward=ImplicitBackward(
            solver=RecordingAnderson(max_iter=60, tol=bwd_tol), preconditioner=None
        ),
    )
    denoiser.zero_grad()
    with torch.autocast(device.type, dtype=amp_dtype(device), enabled=amp):
        out = model(y, physics)
        loss = torch.nn.functional.mse_loss(out.float(), x)
    loss.backward()
    g = torch.cat([p.grad.flatten() for p in denoiser.parameters()])
    return g, model


@pytest.mark.parametrize("skip", [True, False], ids=["float32-output", "lowp-output"])
def test_autocast_gradients_close_to_float32(device, skip):
    physics, x, y = _problem(device)
    den = SmallDenoiser(skip).to(device)
    g32, m32 = _grads(den, physics, x, y, False, device, 1e-6, 1e-6)
    assert m32.forward_stats.all_converged and m32.backward_stats.all_converged
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a low-precision adjoint may stall
        g16, m16 = _grads(den, physics, x, y, True, device, 1e-2, 1e-2)
    assert m16.forward_stats.all_converged
    assert torch.isfinite(g16).all()
    cos = torch.nn.functional.cosine_similarity(g16.double(), g32.double(), dim=0)
    assert cos > 0.999
    assert (g16 - g32).norm() / g32.norm() < 5e-2
    # and not trivially equal: autocast did change the computation
    assert not torch.equal(g16, g32)


@pytest.mark.parametrize("skip", [True, False], ids=["float32-output", "lowp-output"])
def test_forward_solver_iterates_in_float32_under_autocast(device, skip):
    physics, x, y = _problem(device)
    den = SmallDenoiser(skip).to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _, model = _grads(den, physics, x, y, True, device, 1e-2, 1e-2)
    dtypes = model.solver.dtypes
    assert dtypes, "the forward solver never mixed iterates"
    assert all(xd == torch.float32 and fd == torch.float32 for xd, fd in dtypes)
    assert model.forward_stats.residual.dtype == torch.float32


@pytest.mark.parametrize(
    "skip",
    [True, False],
    ids=["float32-output", "lowp-output"],
)
def test_backward_solver_iterates_in_float32_under_autocast(device, skip):
    physics, x, y = _problem(device)
    den = SmallDenoiser(skip).to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _, model = _grads(den, physics, x, y, True, device, 1e-2, 1e-2)
    dtypes = model.backward.solver.dtypes
    assert dtypes, "the backward solver never mixed iterates"
    assert all(xd == torch.float32 for xd, _ in dtypes)


def test_anderson_least_squares_stays_finite_for_low_precision_iterates(device):
    # iterates in low precision: the small least-squares system is still solved in float32
    dtype = amp_dtype(device)
    b = torch.randn(3, 64, device=device).to(dtype)
    res = AndersonAcceleration(max_iter=30, tol=1e-2)(
        lambda x: (0.5 * x + b).to(dtype), torch.zeros_like(b)
    )
    assert res.x.dtype == dtype
    assert res.stats.status_names() == ["CONVERGED"] * 3
    assert torch.isfinite(res.fx.float()).all()
    assert torch.allclose(res.fx.float(), 2 * b.float(), rtol=5e-2, atol=5e-2)


def _loss_pairs(warm_start):
    # deepinv's loss and our adapter, with generators seeded alike (same g, same SURE probe)
    def shift():
        return dinv.transform.Shift(rng=torch.Generator().manual_seed(0))

    def gen():
        return torch.Generator().manual_seed(1)

    return {
        "ei": (
            dinv.loss.EILoss(shift(), apply_noise=False),
            DEQEILoss(shift(), apply_noise=False, warm_start=warm_start),
        ),
        "sure": (
            dinv.loss.SureGaussianLoss(sigma=0.05, tau=1e-2, rng=gen()),
            DEQSureGaussianLoss(sigma=0.05, tau=1e-2, rng=gen(), warm_start=warm_start),
        ),
    }


@pytest.mark.parametrize("warm_start", [False, True], ids=["cold", "warm"])
@pytest.mark.parametrize("name", ["ei", "sure"])
def test_adapters_work_under_autocast_as_deepinv_losses(device, name, warm_start):
    """A denoiser whose output is in low precision makes the reconstruction low precision while the
    measurements stay float32: the adapters' warm starts follow y's dtype, and the loss and gradient
    agree with deepinv's own loss under autocast."""
    physics = dinv.physics.Inpainting(
        img_size=(1, 16, 16), mask=0.6, device=device, noise_model=dinv.physics.GaussianNoise(0.05)
    )
    x = torch.rand(2, 1, 16, 16, device=device)
    y = physics(x)
    den = SmallDenoiser(skip=False).to(device)
    model = DEQ(
        denoiser=den, stepsize=1.0, max_iter=60, tol=1e-2, backward_max_iter=60, backward_tol=1e-2
    )
    results = []
    for loss in _loss_pairs(warm_start)[name]:
        den.zero_grad()
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a low-precision adjoint may stall
            with torch.autocast(device.type, dtype=amp_dtype(device)):
                x_net = model(y, physics)
                assert x_net.dtype == amp_dtype(device)  # the case that used to raise
                value = loss(x_net=x_net, y=y, physics=physics, model=model).mean()
            value.backward()
        g = torch.cat([p.grad.flatten() for p in den.parameters()])
        assert torch.isfinite(value) and torch.isfinite(g).all()
        results.append((value.detach().float(), g))
    (v_ref, g_ref), (v, g) = results
    # cold: the same computation; warm: the same fixed point up to the low-precision tolerance
    rtol = 1e-6 if not warm_start else 5e-2
    assert torch.allclose(v, v_ref, rtol=rtol, atol=1e-6)
    assert (g - g_ref).norm() <= 5 * rtol * g_ref.norm() + 1e-6
