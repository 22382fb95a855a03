"""Fixed-point maps: the data-fidelity gradient costs one A and one A^T, with exact gradients."""

from __future__ import annotations

import warnings

import deepinv as dinv
import pytest
import torch

from deepinv_deq.maps import HQSMap, PGDMap, REDMap


class MatrixPhysics(dinv.physics.LinearPhysics):
    """y = M x on flattened images, counting the calls to A and A^T."""

    def __init__(self, M: torch.Tensor, img_shape):
        super().__init__()
        self.M = M
        self.img_shape = tuple(img_shape)
        self.n_A = 0
        self.n_At = 0

    def A(self, x, **kwargs):
        self.n_A += 1
        return (x.reshape(x.shape[0], -1) @ self.M.T).reshape(x.shape[0], 1, -1)

    def A_adjoint(self, y, **kwargs):
        self.n_At += 1
        return (y.reshape(y.shape[0], -1) @ self.M).reshape((y.shape[0],) + self.img_shape)


class Tanh(torch.nn.Module):
    """A non-linear denoiser with a learnable weight: D(x) = tanh(w x) / w."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.7))

    def forward(self, x, sigma):
        return torch.tanh(self.w * x) / self.w


def counting(physics):
    """Count A and A^T calls of a deepinv physics by wrapping its bound methods."""
    counts = {"A": 0, "A_adjoint": 0}
    for name in counts:
        method = getattr(physics, name)

        def wrapped(*args, _method=method, _name=name, **kwargs):
            counts[_name] += 1
            return _method(*args, **kwargs)

        setattr(physics, name, wrapped)
    return counts


def problem(dtype=torch.float64, m=10, shape=(1, 4, 4), batch=2):
    n = int(torch.tensor(shape).prod())
    M = torch.randn(m, n, dtype=dtype) / n**0.5
    physics = MatrixPhysics(M, shape)
    x = torch.randn((batch,) + shape, dtype=dtype)
    y = physics.A(torch.randn_like(x))
    physics.n_A = physics.n_At = 0
    return physics, x, y


def reference_map(kind, x, y, M, eta, lam, D):
    """The maps written with dense matrices: A^T (A x - y) = M^T (M x - y)."""
    flat = x.reshape(x.shape[0], -1)
    grad = ((flat @ M.T - y.reshape(y.shape[0], -1)) @ M).reshape(x.shape)
    if kind == "PGD":
        return D(x - eta * grad, None)
    return x - eta * (grad + lam * (x - D(x, None)))


def build(kind, D, eta=0.8, lam=0.6, **kw):
    if kind == "PGD":
        return PGDMap(D, stepsize=eta, **kw)
    return REDMap(D, stepsize=eta, lambda_reg=lam, **kw)


@pytest.mark.parametrize("kind", ["PGD", "RED"])
def test_one_forward_and_one_adjoint_per_evaluation(kind, dtype64):
    physics, x, y = problem()
    F = build(kind, Tanh())
    F(x, y, physics)
    assert (physics.n_A, physics.n_At) == (1, 1)
    # deepinv's L2.grad computes A^T A x - A^T y: one A and two A^T
    physics.n_A = physics.n_At = 0
    dinv.optim.L2().grad(x, y, physics)
    assert (physics.n_A, physics.n_At) == (1, 2)


def test_one_forward_and_one_adjoint_on_tomography():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        physics = dinv.physics.Tomography(angles=6, img_width=16, circle=False, normalize=True)
    x = torch.rand(2, 1, 16, 16)
    y = physics.A(x)
    physics.A_adjoint(
        y
    )  # deepinv builds its exact adjoint (with one A) on the first call per shape
    counts = counting(physics)
    F = PGDMap(dinv.models.MedianFilter(), stepsize=1.0)
    out = F(x, y, physics)
    assert counts == {"A": 1, "A_adjoint": 1}
    old = F.denoiser(x - dinv.optim.L2().grad(x, y, physics), F.sigma_denoiser)
    assert counts == {"A": 2, "A_adjoint": 3}
    torch.testing.assert_close(out, old, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["PGD", "RED"])
@pytest.mark.parametrize("sigma", [1.0, 0.5])
def test_values_equal_old_formula(kind, sigma, dtype64):
    physics, x, y = problem()
    D = Tanh()
    fidelity = dinv.optim.L2(sigma=sigma)
    F = build(kind, D, data_fidelity=fidelity)
    grad = fidelity.grad(x, y, physics)  # deepinv's formula, A^T A x - A^T y
    if kind == "PGD":
        old = D(x - 0.8 * grad, None)
    else:
        old = x - 0.8 * (grad + 0.6 * (x - D(x, None)))
    torch.testing.assert_close(F(x, y, physics), old, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["PGD", "RED"])
def test_gradients_exact(kind, dtype64):
    """Gradients with respect to y, x, the step size and the denoiser's weight: finite differences
    (gradcheck) and a dense-matrix reference."""
    physics, x, y = problem()
    D = Tanh()
    F = build(kind, D, trainable_params=("stepsize",))
    x = x.requires_grad_()
    y = y.requires_grad_()
    assert torch.autograd.gradcheck(lambda x_, y_: F(x_, y_, physics), (x, y))
    w = torch.randn_like(x)
    params = [x, y, F.stepsize, D.w]
    got = torch.autograd.grad((F(x, y, physics) * w).sum(), params)
    ref_out = reference_map(kind, x, y, physics.M, F.stepsize, 0.6, D)
    want = torch.autograd.grad((ref_out * w).sum(), params)
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


def test_gradient_with_respect_to_physics_parameters(dtype64):
    """A learnable operator (deepinv Blur with a filter that requires grad) gets the exact gradient."""
    t = torch.arange(-2.0, 3.0)
    g = torch.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / 2)
    filt = (g / g.sum()).reshape(1, 1, 5, 5).requires_grad_()
    physics = dinv.physics.Blur(filter=filt, padding="circular")
    x = torch.rand(1, 1, 8, 8)
    y = physics.A(x).detach() + 0.01
    F = PGDMap(Tanh(), stepsize=0.5)

    def old(x_, y_):
        return F.denoiser(x_ - 0.5 * dinv.optim.L2().grad(x_, y_, physics), None)

    w = torch.randn_like(x)
    (g_new,) = torch.autograd.grad((F(x, y, physics) * w).sum(), physics.filter)
    (g_old,) = torch.autograd.grad((old(x, y) * w).sum(), physics.filter)
    torch.testing.assert_close(g_new, g_old, rtol=1e-10, atol=1e-12)


def test_fallback_for_other_fidelities_and_nonlinear_physics(dtype64):
    physics, x, y = problem()
    calls = []

    class MyL2(dinv.optim.L2):
        def grad(self, x, y, physics, *args, **kwargs):
            calls.append(1)
            return super().grad(x, y, physics, *args, **kwargs)

    F = PGDMap(Tanh(), data_fidelity=MyL2(), stepsize=0.5)
    F(x, y, physics)
    assert calls == [1]  # a redefined grad is respected

    # non-linear physics: the chain rule of DataFidelity.grad (A_vjp), value checked
    nonlinear = dinv.physics.Physics(A=lambda t: t**2)
    x = torch.rand(2, 1, 4, 4) + 0.5
    y = torch.rand(2, 1, 4, 4)
    F = PGDMap(Tanh(), stepsize=0.1)
    want = F.denoiser(x - 0.1 * 2 * x * (x**2 - y), None)
    torch.testing.assert_close(F(x, y, nonlinear), want)


def test_hqs_unchanged(dtype64):
    """HQS uses the fidelity's prox, not its gradient."""
    physics = dinv.physics.Inpainting(img_size=(1, 4, 4), mask=0.5)
    x = torch.rand(1, 1, 4, 4)
    y = physics(x)
    F = HQSMap(Tanh(), stepsize=0.7)
    want = F.denoiser(dinv.optim.L2().prox(x, y, physics, gamma=0.7), None)
    torch.testing.assert_close(F(x, y, physics), want)
