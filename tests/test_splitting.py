"""Splitting DEQs (ADMM, DRS, Chambolle-Pock) and multi-variable states: exact implicit gradients
against unrolled autograd and finite differences, every backward strategy, per-sample statuses,
the Trainer, and the evaluation budget."""

import warnings

import deepinv as dinv
import pytest
import torch

from deepinv_deq import DEQ
from deepinv_deq.splitting import ADMMMap, DRSMap, PDCPMap, SPLITTINGS
from deepinv_deq.state import StatePacker

from models import ContractiveDenoiser

SIZE = 8


def inpainting():
    physics = dinv.physics.Inpainting(img_size=(1, SIZE, SIZE), mask=0.6)
    physics.mask = physics.mask.double()
    return physics


def blur_fft():
    kernel = dinv.physics.blur.gaussian_blur(sigma=1.0).double()
    return dinv.physics.BlurFFT(img_size=(1, SIZE, SIZE), filter=kernel)


def blur_least_squares():
    # a blur with zero padding: deepinv's prox is an iterative least-squares solve
    kernel = dinv.physics.blur.gaussian_blur(sigma=0.8).double()
    return dinv.physics.Blur(filter=kernel, padding="constant", max_iter=60, tol=1e-7)


PHYSICS = {"inpainting": inpainting, "blur_fft": blur_fft, "blur_least_squares": blur_least_squares}


def problem(name):
    torch.manual_seed(0)
    physics = PHYSICS[name]()
    x = torch.rand(2, 1, SIZE, SIZE, dtype=torch.float64)
    return physics, x, physics(x).detach()


def unrolled(fmap, y, physics, n_iter):
    state = fmap.init_state(physics.A_adjoint(y), y, physics)
    for _ in range(n_iter):
        state = fmap.step(state, y, physics)
    return state[0]


def grads(loss_fn, denoiser, y):
    y = y.clone().requires_grad_()
    denoiser.zero_grad()
    loss_fn(y).backward()
    return torch.cat([p.grad.flatten() for p in denoiser.parameters()]), y.grad


@pytest.mark.parametrize("physics_name", list(PHYSICS))
@pytest.mark.parametrize("iteration", list(SPLITTINGS))
def test_implicit_gradient_matches_unrolled_autograd(iteration, physics_name, dtype64):
    physics, x, y = problem(physics_name)
    denoiser = ContractiveDenoiser().double()
    fmap = SPLITTINGS[iteration](denoiser, sigma_denoiser=0.1).double()
    loss = lambda model: lambda y: torch.nn.functional.mse_loss(model(y), x)
    g_ref, gy_ref = grads(loss(lambda y: unrolled(fmap, y, physics, 300)), denoiser, y)
    tol = 1e-9 if physics_name == "blur_least_squares" else 1e-12
    model = DEQ(
        iteration=fmap, max_iter=600, tol=tol, backward_max_iter=600, backward_tol=tol
    ).double()
    g, gy = grads(loss(lambda y: model(y, physics)), denoiser, y)
    assert model.forward_stats.all_converged and model.backward_stats.all_converged
    # closed-form proxes: to rounding; deepinv's CG prox stalls near a relative residual of 1e-5
    # (its eps guard), which bounds the agreement of any two gradients through it (2e-4 measured)
    bound = 1e-3 if physics_name == "blur_least_squares" else 1e-7
    assert (g - g_ref).norm() / g_ref.norm() < bound
    assert (gy - gy_ref).norm() / gy_ref.norm() < bound


@pytest.mark.parametrize("iteration", list(SPLITTINGS))
def test_gradient_matches_finite_differences(iteration, dtype64):
    physics, x, y = problem("blur_fft")
    denoiser = ContractiveDenoiser().double()
    model = DEQ(
        denoiser=denoiser,
        iteration=iteration,
        sigma_denoiser=0.1,
        trainable_params=("stepsize",),
        stepsize=0.8,
        max_iter=600,
        tol=1e-13,
        backward_tol=1e-12,
        backward_max_iter=600,
    ).double()
    torch.nn.functional.mse_loss(model(y, physics), x).backward()
    grad = model.map.stepsize.grad.item()
    h = 1e-5
    values = []
    with torch.no_grad():
        for sign in (1, -1):
            model.map.stepsize.fill_(0.8 + sign * h)
            values.append(torch.nn.functional.mse_loss(model(y, physics), x).item())
    assert grad == pytest.approx((values[0] - values[1]) / (2 * h), rel=1e-5)


def test_every_backward_strategy_runs_on_a_splitting_state(dtype64):
    physics, x, y = problem("inpainting")
    out = {}
    for backward in ("implicit", "jfb", "phantom"):
        denoiser = ContractiveDenoiser().double()
        model = DEQ(
            denoiser=denoiser, iteration="ADMM", backward=backward, tol=1e-10, max_iter=400
        ).double()
        torch.nn.functional.mse_loss(model(y, physics), x).backward()
        out[backward] = torch.cat([p.grad.flatten() for p in denoiser.parameters()])
        assert torch.isfinite(out[backward]).all()
    # JFB is an approximation: measurably off the implicit gradient
    assert (out["jfb"] - out["implicit"]).norm() / out["implicit"].norm() > 1e-3


def test_per_sample_statuses_on_the_packed_state():
    physics = dinv.physics.Inpainting(img_size=(1, SIZE, SIZE), mask=0.6)
    y = physics(torch.rand(3, 1, SIZE, SIZE))
    model = DEQ(denoiser=ContractiveDenoiser(), iteration="DRS", max_iter=3, tol=1e-12)
    with pytest.warns(RuntimeWarning, match="MAX_ITER"):
        model(y, physics)
    assert model.forward_stats.status_names() == ["MAX_ITER"] * 3
    model = DEQ(denoiser=ContractiveDenoiser(), iteration="DRS", max_iter=300, tol=1e-6)
    out = model(y, physics)
    assert out.shape == y.shape and model.forward_stats.all_converged


def test_user_multi_variable_map_through_init_tuple(dtype64):
    # a heavy-ball-like map on (x, v): the user writes the tuple, nobody flattens by hand
    theta = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)

    def F(state, y, physics):
        x, v = state
        x_new = 0.4 * x + theta * torch.tanh(v) + y
        return (x_new, 0.5 * (x_new - x) + 0.2 * v)

    init = lambda y, physics: (torch.zeros_like(y), torch.zeros_like(y))
    y = torch.rand(2, 5, dtype=torch.float64)
    model = DEQ(
        iteration=F, init=init, max_iter=300, tol=1e-13, backward_tol=1e-12, backward_max_iter=300
    )
    (g,) = torch.autograd.grad(model(y, None).pow(2).sum(), theta)
    state = init(y, None)
    for _ in range(400):
        state = F(state, y, None)
    (g_ref,) = torch.autograd.grad(state[0].pow(2).sum(), theta)
    assert model.forward_stats.all_converged
    assert g.item() == pytest.approx(g_ref.item(), rel=1e-9)
    # a TensorList works the same
    tl = lambda y, physics: dinv.utils.TensorList([torch.zeros_like(y), torch.zeros_like(y)])
    model = DEQ(iteration=F, init=tl, max_iter=300, tol=1e-10)
    assert model(y, None).shape == y.shape


def test_trainer_trains_a_splitting_deq_with_ei():
    torch.manual_seed(0)
    physics = dinv.physics.Inpainting(img_size=(1, SIZE, SIZE), mask=0.6)
    images = torch.rand(4, 1, SIZE, SIZE)
    data = [{"x": image} for image in images]  # deepinv's dataset format
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    from deepinv_deq import ContractiveDenoiser as LibraryDenoiser

    model = DEQ(
        denoiser=LibraryDenoiser(depth=2, width=4),
        iteration="ADMM",
        tol=1e-4,
        max_iter=100,
        backward_tol=1e-4,
        backward_max_iter=100,
    )
    before = [p.detach().clone() for p in model.parameters()]
    losses = [dinv.loss.MCLoss(), dinv.loss.EILoss(transform=dinv.transform.Rotate())]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("error", RuntimeWarning)  # every solve converges
        trainer = dinv.Trainer(
            model=model,
            physics=physics,
            train_dataloader=loader,
            epochs=1,
            losses=losses,
            optimizer=torch.optim.Adam(model.parameters(), 1e-3),
            online_measurements=True,
            save_path=None,
            device="cpu",
            show_progress_bar=False,
            verbose=False,
            metrics=[],
        )
        trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert model.backward_stats is not None and model.backward_stats.all_converged


def test_evaluation_budget():
    physics = dinv.physics.Inpainting(img_size=(1, SIZE, SIZE), mask=0.6)
    y = physics(torch.rand(2, 1, SIZE, SIZE))
    model = DEQ(
        denoiser=ContractiveDenoiser(), max_iter=100, tol=1e-3, eval_max_iter=200, eval_tol=1e-7
    )
    model(y, physics)
    train_nfe = model.forward_stats.nfe
    model.eval()
    with torch.no_grad():
        model(y, physics)
    assert model.forward_stats.all_converged and model.forward_stats.nfe > train_nfe
    assert model.forward_stats.residual.max() <= 1e-7
    with pytest.raises(ValueError, match="eval_max_iter"):
        DEQ(denoiser=ContractiveDenoiser(), eval_max_iter=0)
    with pytest.raises(ValueError, match="eval_tol"):
        DEQ(denoiser=ContractiveDenoiser(), eval_tol=-1.0)


def test_state_packer_and_map_errors():
    packer = StatePacker((torch.zeros(2, 3), torch.ones(2, 1, 2)))
    with pytest.raises(ValueError, match="changed the shapes"):
        packer.pack((torch.zeros(2, 3), torch.ones(2, 5)))
    with pytest.raises(ValueError, match="batch dimension"):
        StatePacker((torch.zeros(2, 3), torch.ones(3, 3)))
    fmap = ADMMMap(ContractiveDenoiser())
    with pytest.raises(ValueError, match="tuple"):
        fmap(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), None)
    with pytest.raises(ValueError, match="beta"):
        DRSMap(ContractiveDenoiser(), beta=2.5)
    with pytest.raises(ValueError, match="stepsize_dual"):
        PDCPMap(ContractiveDenoiser(), stepsize_dual=0.0)
    with pytest.raises(ValueError, match="iteration"):
        DEQ(denoiser=ContractiveDenoiser(), iteration="FISTA")


def test_command_line_trains_a_splitting_deq(tmp_path):
    import json

    from deepinv_deq.experiments import cli

    args = ["train", "--task", "ct", "--method", "deq", "--regime", "ei", "--size", "tiny"]
    assert (
        cli.main([*args, "--iteration", "DRS", "--threads", "1", "-q", "--out", str(tmp_path)]) == 0
    )
    result = json.loads((tmp_path / "ct" / "deq-ei" / "result.json").read_text())
    config = json.loads((tmp_path / "ct" / "deq-ei" / "config.json").read_text())
    assert config["iteration"] == "DRS" and result["fwd_converged"] == 1.0


@pytest.mark.parametrize("adapter", ["DEQEILoss", "DEQMOEILoss", "DEQSureGaussianLoss"])
def test_every_loss_adapter_with_a_splitting_deq(adapter):
    # the adapters' warm starts pass a primal image as `init`: the splitting map builds its state
    import deepinv_deq

    torch.manual_seed(0)
    noise = dinv.physics.GaussianNoise(0.01)
    physics = dinv.physics.Inpainting(img_size=(1, SIZE, SIZE), mask=0.6, noise_model=noise)
    x = torch.rand(2, 1, SIZE, SIZE)
    y = physics(x)
    model = DEQ(denoiser=ContractiveDenoiser(), iteration="DRS", tol=1e-6, max_iter=300)
    if adapter == "DEQSureGaussianLoss":
        loss = deepinv_deq.DEQSureGaussianLoss(sigma=0.01, warm_start=True)
    elif adapter == "DEQMOEILoss":
        other = dinv.physics.Inpainting(img_size=(1, SIZE, SIZE), mask=0.5)
        loss = deepinv_deq.DEQMOEILoss(
            transform=dinv.transform.Rotate(), physics=[physics, other], warm_start=True
        )
    else:
        loss = deepinv_deq.DEQEILoss(transform=dinv.transform.Rotate(), warm_start=True)
    model = loss.adapt_model(model)
    solves = []
    model.register_stats_hook(lambda kind, stats: solves.append(stats.all_converged))
    x_net = model(y, physics)
    value = loss(x_net=x_net, y=y, physics=physics, model=model).mean()
    value.backward()
    assert torch.isfinite(value) and len(solves) >= 3 and all(solves)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
