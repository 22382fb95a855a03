"""The Fourier preconditioner of the implicit backward: exact gradients, fewer products, safe gating."""

import copy

import deepinv as dinv
import pytest
import torch

import deepinv_deq
from deepinv_deq import DEQ, ImplicitBackward
from deepinv_deq.backward import ImplicitDifferentiation
from deepinv_deq.maps import PGDMap
from deepinv_deq.preconditioners import FourierPreconditioner

from models import ContractiveDenoiser, Unrolled


def blur_problem(dtype=torch.float64, size=16, batch=2):
    kernel = dinv.physics.blur.gaussian_blur(sigma=1.5).to(dtype)
    physics = dinv.physics.BlurFFT(img_size=(1, size, size), filter=kernel)
    x = torch.rand(batch, 1, size, size, dtype=dtype)
    return physics, x, physics(x).detach()


def ct_problem(dtype=torch.float64, size=32, batch=2):
    physics = dinv.physics.Tomography(angles=12, img_width=size, normalize=True, dtype=dtype)
    x = torch.rand(batch, 1, size, size, dtype=dtype)
    return physics, x, physics(x).detach()


def inpainting_problem(dtype=torch.float64, size=16, batch=2):
    physics = dinv.physics.Inpainting(img_size=(1, size, size), mask=0.5)
    physics.mask = physics.mask.to(dtype)
    x = torch.rand(batch, 1, size, size, dtype=dtype)
    return physics, x, physics(x).detach()


PROBLEMS = {"blur": blur_problem, "ct": ct_problem, "inpainting": inpainting_problem}


def grads(model, denoiser, x, y, physics):
    denoiser.zero_grad()
    torch.nn.functional.mse_loss(model(y, physics), x).backward()
    return torch.cat([p.grad.flatten() for p in denoiser.parameters()])


def make_deq(denoiser, solver, preconditioner, tol=1e-12):
    return DEQ(
        denoiser=denoiser,
        stepsize=1.0,
        sigma_denoiser=0.1,
        max_iter=300,
        tol=1e-13,
        backward_solver=solver,
        backward_max_iter=300,
        backward_tol=tol,
        backward_options={"preconditioner": preconditioner},
    ).to(torch.float64)


@pytest.mark.parametrize("problem", ["blur", "ct"])
@pytest.mark.parametrize("solver", ["gmres", "anderson", "fixed_point"])
def test_preconditioned_gradient_matches_unrolled_reference(problem, solver, dtype64):
    physics, x, y = PROBLEMS[problem]()
    denoiser = ContractiveDenoiser().to(torch.float64)
    fmap = PGDMap(denoiser, stepsize=1.0, sigma_denoiser=0.1).to(torch.float64)
    g_ref = grads(Unrolled(fmap, 400), denoiser, x, y, physics)
    model = make_deq(denoiser, solver, "fourier")
    g = grads(model, denoiser, x, y, physics)
    stats = model.backward_stats
    assert stats.all_converged and stats.extra["preconditioned"]
    assert (g - g_ref).norm() / g_ref.norm() <= 1e-8


@pytest.mark.parametrize("problem", ["blur", "ct"])
def test_preconditioner_saves_products(problem, dtype64):
    # the same solves, to the same tolerance, with and without the preconditioner: counted
    # over several solves so that the one-time probes are amortised as in training; the
    # library's denoiser at initialisation, rho(J) = 0.9
    physics, x, y = PROBLEMS[problem]()
    torch.manual_seed(0)
    denoiser = deepinv_deq.ContractiveDenoiser().to(torch.float64)
    counts = {}
    for pre in (None, "fourier"):
        model = make_deq(copy.deepcopy(denoiser), "gmres", pre, tol=1e-6)
        total = 0
        for _ in range(4):
            grads(model, model.map.denoiser, x, y, physics)
            total += model.backward_stats.nfe
        counts[pre] = total
    # measured: blur 32 -> 10 products, CT 32x32 with 12 views 56 -> 46 (the gain grows with the
    # image size: 12 -> 7 per solve at 64x64, see benchmarks/README.md)
    assert counts["fourier"] < {"blur": 0.5, "ct": 0.9}[problem] * counts[None]


def test_preconditioner_tried_and_dropped_where_it_does_not_pay(dtype64):
    # inpainting: a pixel mask is not a convolution (fit error 0.43, between max_fit_error and
    # trial_fit_error): a trial of 8 solves (on, off, off, on, twice) finds it costs products, and
    # every gradient is the exact one throughout
    physics, x, y = inpainting_problem()
    denoiser = ContractiveDenoiser().to(torch.float64)
    plain = grads(make_deq(denoiser, "gmres", None), denoiser, x, y, physics)
    model = make_deq(denoiser, "gmres", "fourier")
    pre = model.backward.preconditioner
    used = []
    for _ in range(8):
        g = grads(model, denoiser, x, y, physics)
        assert (g - plain).norm() / plain.norm() <= 1e-9
        used.append(model.backward_stats.extra["preconditioned"])
    assert pre.max_fit_error < pre.fit_error <= pre.trial_fit_error
    assert used == [True, False, False, True] * 2
    assert pre.trial_products[0] > pre.trial_products[1]
    assert pre.enabled is False and not pre.tried
    grads(model, denoiser, x, y, physics)  # decided: no probe, no preconditioner
    assert model.backward_stats.extra == {"preconditioned": False, "preconditioner_probes": 0}


def test_preconditioner_stays_off_far_from_a_convolution(dtype64):
    # with trials off (trial_fit_error <= max_fit_error), the two probes are the only cost
    physics, x, y = inpainting_problem()
    denoiser = ContractiveDenoiser().to(torch.float64)
    model = make_deq(denoiser, "gmres", FourierPreconditioner(trial_fit_error=0.0))
    grads(model, denoiser, x, y, physics)
    pre = model.backward.preconditioner
    assert pre.enabled is False and pre.fit_error > pre.max_fit_error
    assert model.backward_stats.extra == {"preconditioned": False, "preconditioner_probes": 2}
    grads(model, denoiser, x, y, physics)  # no probe once decided
    assert model.backward_stats.extra["preconditioner_probes"] == 0


def weighted_convolution(n=16, weight=1.0):
    # a convolution followed by a smooth spatial weight: fit error 0.45, and the circulant model
    # still cuts GMRES from 75 to 18 products (measured)
    k = torch.zeros(1, 1, n, n)
    k[..., 0, 0], k[..., 0, 1], k[..., 1, 0] = 1.0, -0.45, -0.45
    K = torch.fft.fft2(k)
    w = 1 + weight * torch.linspace(-1, 1, n).view(1, 1, 1, n) ** 2
    return lambda z: w * torch.fft.ifft2(torch.fft.fft2(z) * K).real


def run_trial(pre, M, solves, like):
    from deepinv_deq.solvers.krylov import GMRES

    solver, used = GMRES(max_iter=300, tol=1e-6), []
    gen = torch.Generator().manual_seed(0)
    for _ in range(solves):
        b = torch.randn(like.shape, generator=gen)
        apply_inverse = pre.prepare(M, b)
        op = M if apply_inverse is None else (lambda t: M(apply_inverse(t)))
        result = solver.solve(op, b, None, tol=1e-6)
        u = result.x if apply_inverse is None else apply_inverse(result.x)
        assert (b - M(u)).norm() / b.norm() <= 1e-5  # the same system, solved either way
        pre.observe(result.stats.nfe)
        used.append(apply_inverse is not None)
    return used


def test_trial_keeps_a_preconditioner_that_pays():
    pre = FourierPreconditioner()
    used = run_trial(pre, weighted_convolution(), 10, torch.zeros(2, 1, 16, 16))
    assert pre.max_fit_error < pre.fit_error <= pre.trial_fit_error
    assert used == [True, False, False, True] * 2 + [True, True]
    on, off = pre.trial_products
    assert on < 0.5 * off and pre.tried and pre.enabled


def test_trial_resumes_from_the_state_dict():
    M, like = weighted_convolution(), torch.zeros(2, 1, 16, 16)
    pre = FourierPreconditioner()
    run_trial(pre, M, 3, like)
    clone = FourierPreconditioner()
    clone.set_extra_state(copy.deepcopy(pre.get_extra_state()))
    assert (
        run_trial(pre, M, 6, like)
        == run_trial(clone, M, 6, like)
        == [True] * 2 + [False] * 2 + [True] * 2
    )
    assert clone.trial_products == pre.trial_products and clone.enabled


def test_off_decision_is_revisited():
    mask = (torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    pre = FourierPreconditioner(revisit_every=3)
    probes = []
    for _ in range(7):
        assert pre.prepare(lambda z: z * (0.1 + mask), torch.zeros(2, 1, 8, 8)) is None
        probes.append(pre.last_probes)
    assert probes == [2, 0, 0, 2, 0, 0, 2] and pre.fit_error > pre.trial_fit_error
    never = FourierPreconditioner(revisit_every=0)
    for _ in range(5):
        never.prepare(lambda z: z * (0.1 + mask), torch.zeros(2, 1, 8, 8))
    assert never.last_probes == 0 and never.enabled is False


def test_circular_operator_is_inverted_exactly():
    # MRI's A^T A is a Fourier multiplier on complex images (2 real channels): the 2x2 model fits
    mask = torch.zeros(16, 16)
    mask[:, ::3] = 1.0
    physics = dinv.physics.MRI(mask=mask, img_size=(2, 16, 16))
    M = lambda z: z + 0.5 * physics.A_adjoint(physics.A(z))
    pre = FourierPreconditioner()
    apply_inverse = pre.prepare(M, torch.zeros(3, 2, 16, 16))
    assert pre.enabled and pre.pad == (0, 0) and pre.fit_error < 1e-5
    t = torch.randn(3, 2, 16, 16)
    assert (M(apply_inverse(t)) - t).norm() / t.norm() < 1e-5


def test_refresh_schedule_and_recycling():
    k = torch.zeros(1, 1, 8, 8)
    k[..., 0, 0], k[..., 1, 0] = 1.0, 0.3
    M = lambda z: torch.fft.ifft2(torch.fft.fft2(z) * torch.fft.fft2(k)).real
    pre = FourierPreconditioner(refresh_every=3)
    probes = []
    for _ in range(7):
        pre.prepare(M, torch.zeros(2, 1, 8, 8))
        probes.append(pre.last_probes)
    assert probes == [2, 0, 0, 1, 0, 0, 1]
    pre.prepare(lambda z: 2 * z, torch.zeros(2, 1, 8, 12))  # a new shape starts afresh
    assert pre.last_probes == 2


def test_operator_drift_discards_the_estimate():
    k = torch.zeros(1, 1, 8, 8)
    k[..., 0, 0], k[..., 1, 0] = 1.0, 0.3
    M = lambda z: torch.fft.ifft2(torch.fft.fft2(z) * torch.fft.fft2(k)).real
    pre = FourierPreconditioner(refresh_every=1)
    pre.prepare(M, torch.zeros(2, 1, 8, 8))
    mask = (torch.rand(1, 1, 8, 8) > 0.5).double()
    assert pre.prepare(lambda z: z * (0.1 + mask), torch.zeros(2, 1, 8, 8)) is None
    assert pre.enabled is None and pre.fit_error > pre.max_fit_error  # re-decided next time


def test_probes_leave_the_global_rng_alone_and_resume_exactly():
    physics, x, y = blur_problem(dtype=torch.float32)
    denoiser = ContractiveDenoiser()
    model = make_deq(denoiser, "gmres", "fourier", tol=1e-5).float()
    state = torch.get_rng_state()
    grads(model, denoiser, x, y, physics)
    assert torch.equal(state, torch.get_rng_state())
    # a model rebuilt from the state dict continues with the same estimate and probes
    clone = make_deq(copy.deepcopy(denoiser), "gmres", "fourier", tol=1e-5).float()
    clone.load_state_dict(model.state_dict())
    for _ in range(10):
        g1 = grads(model, model.map.denoiser, x, y, physics)
        g2 = grads(clone, clone.map.denoiser, x, y, physics)
        assert torch.equal(g1, g2)
        assert model.backward_stats.extra == clone.backward_stats.extra


def test_non_finite_products_are_left_out_of_the_estimate():
    def M(z):
        out = 2.0 * z
        out[0] = float("nan")  # the first sample's map is broken
        return out

    pre = FourierPreconditioner()
    apply_inverse = pre.prepare(M, torch.zeros(2, 1, 8, 8))
    t = torch.randn(2, 1, 8, 8)
    assert torch.allclose(apply_inverse(t), t / 2, atol=1e-5)
    assert FourierPreconditioner().prepare(lambda z: z * float("nan"), t) is None


def test_non_image_states_are_not_preconditioned():
    pre = FourierPreconditioner()
    assert pre.prepare(lambda z: 2 * z, torch.zeros(3, 10)) is None and pre.last_probes == 0
    assert pre.prepare(lambda z: 2 * z, torch.zeros(3, 1, 2, 2)) is None


def test_dtype_follows_the_input():
    pre = FourierPreconditioner()
    apply_inverse = pre.prepare(lambda z: 3 * z, torch.zeros(2, 1, 8, 8, dtype=torch.float64))
    assert apply_inverse(torch.ones(2, 1, 8, 8, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"refresh_every": -1}, "refresh_every"),
        ({"forgetting": 1.0}, "forgetting"),
        ({"pad_fraction": -0.1}, "pad_fraction"),
        ({"max_fit_error": -1}, "max_fit_error"),
        ({"trial_fit_error": -0.5}, "trial_fit_error"),
        ({"trial_rounds": 0}, "trial_rounds"),
        ({"revisit_every": -1}, "revisit_every"),
    ],
)
def test_invalid_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FourierPreconditioner(**kwargs)


def test_preconditioner_option_through_the_public_api():
    with pytest.raises(ValueError, match="preconditioner"):
        ImplicitBackward(preconditioner="jacobi")
    assert ImplicitBackward(preconditioner=None).strategy.preconditioner is None
    assert isinstance(ImplicitDifferentiation().preconditioner, FourierPreconditioner)
    with pytest.raises(ValueError, match="preconditioner"):
        DEQ(denoiser=ContractiveDenoiser(), backward_options={"preconditioner": 3})
