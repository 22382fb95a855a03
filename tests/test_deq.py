"""The DEQ reconstructor: options, warm starts, metrics, statistics, iterations, Trainer."""

import deepinv as dinv
import pytest
import torch

from deepinv_deq import DEQ, ImplicitBackward
from deepinv_deq.maps import CallableMap, HQSMap, PGDMap, REDMap
from deepinv_deq.solvers import FixedPointIteration, SolverStatus

from models import ContractiveDenoiser


def inpainting(device, size=8, batch=2):
    physics = dinv.physics.Inpainting(img_size=(1, size, size), mask=0.6, device=device)
    x = torch.rand(batch, 1, size, size, device=device)
    return physics, x, physics(x)


def test_reconstruction_is_a_fixed_point(device):
    physics, x, y = inpainting(device)
    model = DEQ(denoiser=ContractiveDenoiser().to(device), max_iter=100, tol=1e-6)
    with torch.no_grad():
        x_hat = model(y, physics)
    assert x_hat.device == y.device
    assert model.forward_stats.all_converged
    F = model.map(x_hat, y, physics)
    rel = (F - x_hat).flatten(1).norm(dim=1) / x_hat.flatten(1).norm(dim=1)
    assert (rel < 1e-5).all()


def test_no_grad_forward_adds_no_map_evaluation():
    physics, x, y = inpainting("cpu")
    den = ContractiveDenoiser()
    calls = []
    den.register_forward_hook(lambda *a: calls.append(1))
    model = DEQ(denoiser=den, max_iter=100, tol=1e-6)
    with torch.no_grad():
        model(y, physics)
    assert len(calls) == model.forward_stats.nfe
    calls.clear()
    model(y, physics)  # with autograd: exactly one differentiable evaluation more
    assert len(calls) == model.forward_stats.nfe + 1


def test_warm_start_saves_iterations():
    physics, x, y = inpainting("cpu")
    model = DEQ(denoiser=ContractiveDenoiser(), max_iter=100, tol=1e-6)
    with torch.no_grad():
        x_hat = model(y, physics)
        cold = model.forward_stats.nfe
        x_warm = model(y, physics, init=x_hat)
        warm = model.forward_stats.nfe
    assert warm < cold / 2
    assert torch.allclose(x_warm, x_hat, atol=1e-5)


def test_compute_metrics_in_trainer_format():
    physics, x, y = inpainting("cpu", batch=3)
    model = DEQ(denoiser=ContractiveDenoiser(), max_iter=30, tol=1e-6, solver="fixed_point")
    with torch.no_grad():
        x_hat, metrics = model(y, physics, x_gt=x, compute_metrics=True)
    assert set(metrics) == {"residual", "psnr"}
    assert len(metrics["residual"]) == 3 and len(metrics["residual"][0]) == model.forward_stats.nfe
    trace = model.forward_stats.trace
    assert torch.allclose(torch.tensor(metrics["residual"]).T, trace.float().cpu(), rtol=1e-4)
    expected = dinv.metric.PSNR()(x_hat, x)
    assert torch.allclose(torch.tensor([m[-1] for m in metrics["psnr"]]), expected, atol=1e-3)
    dinv.utils.plot_curves(metrics, show=False)  # the Trainer's plotting accepts it


@pytest.mark.parametrize("iteration, cls", [("PGD", PGDMap), ("HQS", HQSMap), ("RED", REDMap)])
def test_iterations_converge_and_differentiate(iteration, cls):
    physics, x, y = inpainting("cpu")
    kwargs = {"lambda_reg": 0.5, "stepsize": 0.5} if iteration == "RED" else {}
    model = DEQ(
        denoiser=ContractiveDenoiser(), iteration=iteration, max_iter=200, tol=1e-6, **kwargs
    )
    assert isinstance(model.map, cls)
    x_hat = model(y, physics)
    assert model.forward_stats.all_converged
    torch.nn.functional.mse_loss(x_hat, x).backward()
    assert model.backward_stats.all_converged
    assert model.map.denoiser.conv1.weight.grad.abs().sum() > 0


def test_callable_iteration_and_trainable_params():
    physics, x, y = inpainting("cpu")
    w = torch.tensor(0.3, requires_grad=True)
    # float32: a relative residual near 1e-8 is rounding, out of reach; 1e-6 is met
    model = DEQ(
        iteration=lambda x, y, physics: w * x + physics.A_adjoint(y), tol=1e-6, max_iter=100
    )
    assert isinstance(model.map, CallableMap)
    out = model(y, physics)
    assert model.forward_stats.all_converged
    assert torch.allclose(out, physics.A_adjoint(y) / 0.7, atol=1e-5)
    out.sum().backward()
    assert model.backward_stats.all_converged
    # d/dw of A^T y / (1 - w) summed = sum(A^T y) / (1 - w)^2
    assert torch.isclose(w.grad, physics.A_adjoint(y).sum() / 0.49, rtol=1e-4)

    model = DEQ(denoiser=ContractiveDenoiser(), trainable_params=("stepsize", "sigma_denoiser"))
    names = {n for n, _ in model.named_parameters()}
    assert {"map.stepsize", "map.sigma_denoiser"} <= names
    model(y, physics).sum().backward()
    assert model.map.stepsize.grad is not None and model.map.sigma_denoiser.grad is not None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_iters": 3}, "did you mean 'max_iter'"),
        ({"iteration": "FISTA"}, "iteration"),
        ({"solver": "gmres"}, "solver"),  # a linear solver, not a forward solver
        ({"backward": "exact"}, "backward"),
        ({"backward": "jfb", "backward_tol": -1e-3}, "tol"),  # validated even where unused
        ({"backward": ImplicitBackward(), "backward_max_iter": 3}, "ImplicitBackward instance"),
        ({"solver_options": {"history_sise": 2}}, "did you mean 'history_size'"),
        ({"solver": "fixed_point", "solver_options": {"history_size": 2}}, "history_size"),
        ({"trainable_params": ("lambda_reg",)}, "trainable_params"),
        ({"lambda_reg": 0.1}, "RED"),
        ({"stepsize": -1.0}, "stepsize"),
        ({"max_iter": 0}, "max_iter"),
        ({"tol": -1e-3}, "tol"),
        ({"init": "zeros"}, "init"),
    ],
)
def test_invalid_options(kwargs, match):
    kwargs = {"denoiser": ContractiveDenoiser(), **kwargs}
    with pytest.raises(ValueError, match=match):
        DEQ(**kwargs)


def test_callable_iteration_rejects_map_options():
    with pytest.raises(ValueError, match="callable 'iteration'"):
        DEQ(iteration=lambda x, y, p: x, stepsize=0.1)


def test_bad_inputs():
    physics, x, y = inpainting("cpu")
    model = DEQ(denoiser=ContractiveDenoiser())
    y_nan = y.clone()
    y_nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        model(y_nan, physics)
    with pytest.raises(ValueError, match="shape"):
        model(y, physics, init=torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="unknown option"):
        model(y, physics, max_iter=3)
    bad = torch.zeros_like(y)
    bad[0] = float("inf")
    with pytest.raises(ValueError, match="init"):
        model(y, physics, init=bad)


def test_diverging_map_is_flagged_with_finite_output():
    physics, x, y = inpainting("cpu")
    model = DEQ(
        iteration=lambda x, y, p: 1.5 * x + 1.0, solver=FixedPointIteration(max_iter=200, tol=1e-6)
    )
    with torch.no_grad():
        out = model(y, physics)
    assert (model.forward_stats.status == SolverStatus.DIVERGED).all()
    assert torch.isfinite(out).all()


def test_trainer_one_epoch_on_tiny_tomography(tmp_path):
    img = 16
    physics = dinv.physics.Tomography(img_width=img, angles=8, normalize=True)
    x = torch.rand(4, 1, img, img)

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return x[i]

    dataset = Images()
    loader = torch.utils.data.DataLoader(dataset, batch_size=2)
    model = DEQ(denoiser=ContractiveDenoiser(), stepsize=0.5, max_iter=40, tol=1e-4)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = dinv.Trainer(
        model=model,
        physics=physics,
        train_dataloader=loader,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        losses=dinv.loss.SupLoss(),
        epochs=1,
        online_measurements=True,
        save_path=str(tmp_path),
        verbose=False,
        show_progress_bar=False,
        plot_images=False,
    )
    trainer.train()
    after = list(model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert model.backward.n_solves == 2  # one implicit backward per batch


def test_stats_hook_sees_every_solve_of_an_ei_step():
    physics, x, y = inpainting("cpu")
    model = DEQ(denoiser=ContractiveDenoiser(), max_iter=100, tol=1e-6)
    seen = []
    handle = model.register_stats_hook(lambda kind, stats: seen.append((kind, stats.nfe)))
    ei = dinv.loss.EILoss(dinv.transform.Shift())
    x_net = model(y, physics)
    loss = dinv.loss.MCLoss()(y=y, x_net=x_net, physics=physics) + ei(
        x_net=x_net, physics=physics, model=model
    )
    assert [k for k, _ in seen] == ["forward", "forward"]
    loss.backward()
    assert [k for k, _ in seen] == ["forward", "forward", "backward", "backward"]
    assert all(n > 0 for _, n in seen)
    handle.remove()
    model(y, physics)
    assert len(seen) == 4


def test_solver_instance_rejects_separate_budget():
    with pytest.raises(ValueError, match="solver instance"):
        DEQ(denoiser=ContractiveDenoiser(), solver=FixedPointIteration(max_iter=5), max_iter=10)
    model = DEQ(denoiser=ContractiveDenoiser(), solver=FixedPointIteration(max_iter=5, tol=1e-3))
    assert model.solver.max_iter == 5 and model.solver.tol == 1e-3


def test_diverging_forward_solve_warns():
    physics, x, y = inpainting("cpu")
    model = DEQ(iteration=lambda x, y, p: 1.5 * x + 1.0, solver="fixed_point", max_iter=200)
    with pytest.warns(RuntimeWarning, match="forward solve did not converge.*DIVERGED"):
        with torch.no_grad():
            model(y, physics)
