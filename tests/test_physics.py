"""SparseMatrixPhysics: the same operator as the physics it stores, exact gradients, clear errors."""

import copy

import deepinv as dinv
import pytest
import torch

from deepinv_deq import DEQ
from deepinv_deq.experiments.configs import ExperimentConfig
from deepinv_deq.experiments.tasks import build_physics, pseudo_inverse
from deepinv_deq.maps import PGDMap
from deepinv_deq.physics import SparseMatrixPhysics

from models import ContractiveDenoiser, Unrolled


def tomography(dtype=torch.float32, size=16, views=8, seed=None, **kwargs):
    noise = dinv.physics.GaussianNoise(
        0.01, rng=None if seed is None else torch.Generator().manual_seed(seed)
    )
    return dinv.physics.Tomography(
        angles=views,
        img_width=size,
        circle=False,
        normalize=True,
        noise_model=noise,
        dtype=dtype,
        **kwargs,
    )


def test_same_operator_and_same_noise_as_tomography():
    ct, fast = tomography(seed=3), SparseMatrixPhysics(tomography(seed=3))
    x = torch.rand(3, 1, 16, 16)
    y = ct.A(x)
    assert (fast.A(x) - y).abs().max() <= 1e-6 * y.abs().max()
    aty = ct.A_adjoint(y)
    assert (fast.A_adjoint(y) - aty).abs().max() <= 1e-6 * aty.abs().max()
    # the noise model is the physics' own and draws in the same memory order: same measurements
    noisy, fast_noisy = ct(x), fast(x)
    assert fast_noisy.stride() == noisy.stride()
    assert (fast_noisy - noisy).abs().max() <= 1e-5
    # the pseudo-inverse is the stored physics' (filtered back-projection)
    fbp = ct.A_dagger(noisy, fbp=True)
    assert (fast.A_dagger(noisy, fbp=True) - fbp).abs().max() <= 1e-4 * fbp.abs().max()


def test_adjoint_and_gradients_are_exact_in_float64(dtype64):
    fast = SparseMatrixPhysics(tomography(torch.float64))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64, generator=g)
    y = torch.randn(fast.A(x).shape, dtype=torch.float64, generator=g)
    lhs, rhs = (fast.A(x) * y).sum(), (x * fast.A_adjoint(y)).sum()
    assert abs(float(lhs - rhs)) <= 1e-12 * abs(float(lhs))
    x1 = x[:1].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda z: fast.A_adjoint(fast.A(z) - 1.0), (x1,))
    assert torch.autograd.gradgradcheck(lambda z: fast.A(z), (x1,))


def test_deq_gradient_matches_unrolled_reference(dtype64):
    # the implicit gradient of a DEQ on the sparse physics against unrolled autograd, and the
    # same reconstruction and gradient as on deepinv's Tomography
    ct = tomography(torch.float64)
    fast = SparseMatrixPhysics(ct)
    x = torch.rand(2, 1, 16, 16)
    y = ct.A(x)
    denoiser = ContractiveDenoiser()
    fmap = PGDMap(denoiser, stepsize=1.0, sigma_denoiser=0.1)

    def grads(model, physics):
        denoiser.zero_grad()
        out = model(y, physics)
        torch.nn.functional.mse_loss(out, x).backward()
        return out.detach(), torch.cat([p.grad.flatten() for p in denoiser.parameters()])

    deq = DEQ(
        denoiser=denoiser,
        stepsize=1.0,
        sigma_denoiser=0.1,
        max_iter=300,
        tol=1e-12,
        backward_max_iter=300,
        backward_tol=1e-12,
    )
    out_ref, g_ref = grads(Unrolled(fmap, 300), fast)
    out, g = grads(deq, fast)
    assert (out - out_ref).abs().max() <= 1e-9
    assert (g - g_ref).norm() <= 1e-8 * g_ref.norm()
    out_ct, g_ct = grads(deq, ct)
    assert (out - out_ct).abs().max() <= 1e-9
    assert (g - g_ct).norm() <= 1e-8 * g_ct.norm()


def test_copy_and_device(device):
    fast = SparseMatrixPhysics(tomography())
    x = torch.rand(2, 1, 16, 16)
    y = fast.A(x)  # makes the CSR copies, which torch cannot deep-copy
    assert torch.equal(copy.deepcopy(fast).A(x), y)
    # the matrices follow the input's device
    assert torch.allclose(fast.A(x.to(device)).cpu(), y, atol=1e-6)
    assert fast.A_adjoint(y.to(device)).device.type == device.type


def test_any_real_linear_physics_and_follows_dtype():
    mask = (torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    physics = dinv.physics.Inpainting(img_size=(1, 8, 8), mask=mask)
    fast = SparseMatrixPhysics(physics)
    assert fast.nnz == int(mask.sum())
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    assert fast.A(x).dtype == torch.float64
    assert torch.allclose(fast.A(x), physics.A(x.float()).double())
    assert torch.allclose(fast.A_adjoint(fast.A(x)), x * mask)


def test_matrix_is_built_once_per_operator():
    calls = []

    def A(x, **kwargs):
        calls.append(x.shape[0])
        return 2.0 * x

    def make():
        return dinv.physics.LinearPhysics(A=A, A_adjoint=lambda y, **k: 2.0 * y, img_size=(1, 4, 4))

    SparseMatrixPhysics(make(), chunk_size=4)
    assert sum(c for c in calls if c == 4) == 16  # the 16 basis images, 4 at a time
    calls.clear()
    fast = SparseMatrixPhysics(make(), chunk_size=4)  # same operator: not probed again
    assert 4 not in calls
    assert torch.equal(fast.A(torch.ones(1, 1, 4, 4)), torch.full((1, 1, 4, 4), 2.0))


def test_errors():
    with pytest.raises(ValueError, match="LinearPhysics"):
        SparseMatrixPhysics(torch.nn.Identity())
    with pytest.raises(ValueError, match="not the adjoint"):
        SparseMatrixPhysics(tomography(adjoint_via_backprop=False))
    with pytest.raises(ValueError, match="chunk_size"):
        SparseMatrixPhysics(tomography(), chunk_size=0)
    with pytest.raises(ValueError, match="image size"):
        SparseMatrixPhysics(dinv.physics.LinearPhysics(A=lambda x, **k: x))
    fast = SparseMatrixPhysics(tomography())
    with pytest.raises(ValueError, match="images of shape"):
        fast.A(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="measurements of shape"):
        fast.A_adjoint(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="real floating-point"):
        fast.A(torch.rand(1, 1, 16, 16, dtype=torch.complex64))


def test_experiments_ct_operator():
    sparse = ExperimentConfig.from_preset("tiny")
    plain = ExperimentConfig.from_preset("tiny", ct_operator="deepinv")
    assert sparse.ct_operator == "sparse"
    assert sparse.training_key() == plain.training_key()  # how A is applied, not what
    a, b = build_physics("ct", sparse), build_physics("ct", plain)
    assert isinstance(a, SparseMatrixPhysics) and isinstance(b, dinv.physics.Tomography)
    x = torch.rand(2, 1, sparse.img_size, sparse.img_size)
    fbp_a, fbp_b = pseudo_inverse("ct")(a.A(x), a), pseudo_inverse("ct")(b.A(x), b)
    assert (fbp_a - fbp_b).abs().max() <= 1e-4 * fbp_b.abs().max()
    with pytest.raises(ValueError, match="ct_operator"):
        ExperimentConfig.from_preset("tiny", ct_operator="dense")
