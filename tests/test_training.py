"""A DEQ under deepinv's Trainer: deepinv's losses unchanged, the DEQ-aware adapters, solver
statistics in the Trainer's logs, and checkpoint save/reload."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import deepinv as dinv

from deepinv_deq import (
    ContractiveDenoiser,
    DEQ,
    DEQEILoss,
    DEQMOEILoss,
    DEQMonitor,
    DEQSureGaussianLoss,
    JacobianNormLoss,
    spectral_radius,
)

N = 16
SIGMA = 0.01


class SmallDenoiser(torch.nn.Module):
    r"""Contractive learned denoiser :math:`D(x) = a x + b \tanh(W_2 * \tanh(W_1 * x))` (Lipschitz
    :math:`\le a + b\,s^2` with the kernels normalised to :math:`\ell_1` norm :math:`s`)."""

    def __init__(self, channels=1, features=6, scale=0.6):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.3))
        self.b = torch.nn.Parameter(torch.tensor(0.4))
        self.conv1 = torch.nn.Conv2d(
            channels, features, 3, padding=1, padding_mode="circular", bias=False
        )
        self.conv2 = torch.nn.Conv2d(
            features, channels, 3, padding=1, padding_mode="circular", bias=False
        )
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                conv.weight.mul_(scale / conv.weight.abs().sum(dim=(1, 2, 3), keepdim=True))

    def forward(self, x, sigma=None):
        return self.a * x + self.b * torch.tanh(self.conv2(torch.tanh(self.conv1(x))))


class Images(torch.utils.data.Dataset):
    """Fixed smooth images (so that a loss change comes from training, not from new data)."""

    def __init__(self, n=2, channels=1, seed=0):
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(n, 1, N // 4, N // 4, generator=g)
        x = torch.nn.functional.interpolate(x, size=(N, N), mode="bilinear", align_corners=False)
        if channels == 2:  # MRI: real and imaginary parts
            x = torch.cat([x, torch.zeros_like(x)], dim=1)
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


def tomography(device):
    return dinv.physics.Tomography(
        angles=6,
        img_width=N,
        normalize=True,
        noise_model=dinv.physics.GaussianNoise(SIGMA),
        device=device,
    )


def mri(device):
    gen = dinv.physics.generator.GaussianMaskGenerator(
        img_size=(N, N), acceleration=2, rng=torch.Generator().manual_seed(0)
    )
    mask = gen.step(batch_size=1)["mask"].to(device)
    return dinv.physics.MRI(
        mask=mask, img_size=(N, N), noise_model=dinv.physics.GaussianNoise(SIGMA), device=device
    )


def make_model(channels, device):
    model = DEQ(
        denoiser=SmallDenoiser(channels),
        iteration="PGD",
        stepsize=0.9,
        max_iter=40,
        tol=1e-5,
        backward_max_iter=40,
        backward_tol=1e-6,
    )
    return model.to(device)


def train(model, physics, losses, channels, device, epochs=6, lr=2e-2, **kwargs):
    loader = torch.utils.data.DataLoader(Images(channels=channels), batch_size=2, shuffle=False)
    trainer = dinv.Trainer(
        model=model,
        physics=physics,
        optimizer=torch.optim.Adam(model.parameters(), lr=lr),
        train_dataloader=loader,
        losses=losses,
        epochs=epochs,
        online_measurements=True,
        device=device,
        verbose=False,
        show_progress_bar=False,
        plot_images=False,
        **({"save_path": None, "metrics": []} | kwargs),
    )
    trainer.train()
    return trainer


def total_loss_per_epoch(trainer):
    hist = list(trainer.loss_history.values())
    return [sum(v) for v in zip(*hist, strict=True)]


def train_metric_logs(trainer):
    """The Trainer's running averages of its training metrics (the progress-bar values)."""
    prefix = "Training metric "
    return {m.name[len(prefix) :]: m.avg for m in trainer.logs_metrics_train}


def loss_set(name, physics):
    rot = dinv.transform.Rotate(multiples=90, positive=True)
    if name == "sup":
        return [dinv.loss.SupLoss()]
    if name == "mc":
        return [dinv.loss.MCLoss()]
    if name == "ei_rotate":
        return [dinv.loss.MCLoss(), dinv.loss.EILoss(rot)]
    if name == "ei_shift":
        return [dinv.loss.MCLoss(), dinv.loss.EILoss(dinv.transform.Shift())]
    if name == "ei_reflect":
        return [dinv.loss.MCLoss(), dinv.loss.EILoss(dinv.transform.Reflect(dim=[-1]))]
    if name == "moei":
        ops = [
            physics,
            tomography(physics.angles.device)
            if isinstance(physics, dinv.physics.Tomography)
            else physics,
        ]
        return [dinv.loss.MCLoss(), dinv.loss.MOEILoss(rot, physics=ops)]
    if name == "robust_ei":
        return [dinv.loss.SureGaussianLoss(sigma=SIGMA), dinv.loss.EILoss(rot)]
    # the adapters with their warm starts (the contractive denoiser has a unique fixed point)
    if name == "deq_ei":
        return [dinv.loss.MCLoss(), DEQEILoss(rot, warm_start=True)]
    if name == "deq_moei":
        return [dinv.loss.MCLoss(), DEQMOEILoss(rot, physics=[physics], warm_start=True)]
    if name == "deq_robust_ei":
        return [DEQSureGaussianLoss(sigma=SIGMA, warm_start=True), DEQEILoss(rot, warm_start=True)]
    raise KeyError(name)


def _assert_decreases(trainer):
    totals = total_loss_per_epoch(trainer)
    assert all(torch.isfinite(torch.tensor(totals)))
    assert min(totals[-2:]) < totals[0], totals


@pytest.mark.parametrize(
    "losses", ["sup", "mc", "ei_rotate", "ei_shift", "ei_reflect", "moei", "robust_ei"]
)
def test_trainer_tomography_deepinv_losses(losses, device):
    torch.manual_seed(0)
    physics = tomography(device)
    model = make_model(1, device)
    trainer = train(model, physics, loss_set(losses, physics), 1, device)
    _assert_decreases(trainer)


@pytest.mark.parametrize("losses", ["sup", "ei_rotate", "robust_ei", "deq_ei", "deq_robust_ei"])
def test_trainer_mri(losses, device):
    torch.manual_seed(0)
    physics = mri(device)
    model = make_model(2, device)
    trainer = train(model, physics, loss_set(losses, physics), 2, device)
    _assert_decreases(trainer)


@pytest.mark.parametrize("losses", ["deq_ei", "deq_moei", "deq_robust_ei"])
def test_trainer_tomography_adapters(losses, device):
    torch.manual_seed(0)
    physics = tomography(device)
    model = make_model(1, device)
    trainer = train(model, physics, loss_set(losses, physics), 1, device)
    _assert_decreases(trainer)


def test_trainer_with_jacobian_regulariser_reduces_jacobian_norm():
    # Training on the regulariser alone must shrink the Jacobian norm of the map at the fixed point.
    torch.manual_seed(0)
    physics = tomography("cpu")
    model = make_model(1, "cpu")
    reg = JacobianNormLoss(n_probes=2, probe="rademacher")
    trainer = train(model, physics, [reg], 1, "cpu", epochs=5, lr=5e-2)
    hist = trainer.loss_history["JacobianNormLoss"]
    assert hist[-1] < 0.8 * hist[0], hist


def test_monitor_reports_solver_statistics_in_trainer_logs():
    torch.manual_seed(0)
    physics = tomography("cpu")
    model = make_model(1, "cpu")
    seen = []
    monitor = DEQMonitor(model, callback=seen.append)
    trainer = train(
        model,
        physics,
        loss_set("deq_ei", physics),
        1,
        "cpu",
        epochs=2,
        metrics=[dinv.metric.PSNR(), *monitor.metrics()],
    )
    logged = train_metric_logs(trainer)  # what the progress bar shows for the last epoch
    assert {
        "DEQForwardNFE",
        "DEQForwardResidual",
        "DEQBackwardNFE",
        "DEQBackwardResidual",
        "DEQNotConverged",
    } <= set(logged)
    # one training step = reconstruction + EI solve (two forward records), and two backward solves
    kinds = [r.kind for r in seen]
    assert kinds.count("forward") == 2 * 2 and kinds.count("backward") == 2 * 2
    last_step = seen[-4:]
    fwd = [r.stats.nfe for r in last_step if r.kind == "forward"]
    bwd = [r.stats for r in last_step if r.kind == "backward"]
    assert logged["DEQForwardNFE"] == pytest.approx(sum(fwd) / 2)
    assert logged["DEQBackwardNFE"] == pytest.approx(sum(s.nfe for s in bwd) / 2)
    assert logged["DEQBackwardResidual"] == pytest.approx(
        max(float(s.residual.max()) for s in bwd), rel=1e-6
    )
    assert 0 < logged["DEQBackwardResidual"] <= 1e-6  # the backward tolerance was reached
    assert logged["DEQNotConverged"] == 0.0


def test_monitor_flags_non_convergence_in_trainer_logs():
    # A forward budget too small to converge shows up as DEQNotConverged = 1.
    torch.manual_seed(0)
    physics = tomography("cpu")
    model = DEQ(denoiser=SmallDenoiser(1), stepsize=0.9, max_iter=2, tol=1e-12, backward="jfb")
    monitor = DEQMonitor()  # attaches to the model it is given by the Trainer
    trainer = train(
        model, physics, [dinv.loss.MCLoss()], 1, "cpu", epochs=2, metrics=monitor.metrics()
    )
    assert monitor.model is model
    logged = train_metric_logs(trainer)
    assert logged["DEQNotConverged"] == 1.0
    assert logged["DEQForwardNFE"] == 2.0
    assert logged["DEQBackwardNFE"] == 0.0  # JFB: no backward solve


def _same(a, b) -> bool:
    # equal tensors, or equal containers of them (a module's extra state)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if torch.is_tensor(a):
        return torch.is_tensor(b) and torch.equal(a, b)
    return a == b


def test_checkpoint_save_and_reload_reproduces_outputs(tmp_path, device):
    torch.manual_seed(0)
    physics = tomography(device)
    model = make_model(1, device)
    train(
        model,
        physics,
        loss_set("deq_ei", physics),
        1,
        device,
        epochs=2,
        save_path=str(tmp_path),
        ckp_interval=1,
    )
    ckpts = sorted(Path(tmp_path).rglob("ckp_1.pth.tar"))
    assert len(ckpts) == 1
    y = physics(Images(channels=1).x.to(device))
    model.eval()
    with torch.no_grad():
        ref = model(y, physics)

    fresh = make_model(1, device)
    with torch.no_grad():
        assert not torch.equal(fresh(y, physics), ref)  # the trained weights matter
    reloaded = dinv.Trainer(
        model=fresh,
        physics=physics,
        optimizer=torch.optim.Adam(fresh.parameters(), lr=1e-3),
        train_dataloader=torch.utils.data.DataLoader(Images(channels=1), batch_size=2),
        epochs=3,
        online_measurements=True,
        device=device,
        verbose=False,
        show_progress_bar=False,
        save_path=None,
        metrics=[],
        ckpt_pretrained=str(ckpts[0]),
    )
    reloaded.setup_train()  # loads the checkpoint, as Trainer.train() does
    assert reloaded.epoch_start == 2
    fresh.eval()
    with torch.no_grad():
        out = fresh(y, physics)
    assert torch.equal(out, ref)
    for k, v in model.state_dict().items():
        assert _same(v, fresh.state_dict()[k]), k


def test_monitor_metrics_in_trainer_test_with_no_learning_comparison():
    # Trainer.test also calls metrics with its no-learning (adjoint) model: no error, and the
    # DEQ's evaluation solves are reported (no backward solve in evaluation).
    torch.manual_seed(0)
    physics = tomography("cpu")
    model = make_model(1, "cpu")
    monitor = DEQMonitor()
    trainer = train(
        model, physics, [dinv.loss.MCLoss()], 1, "cpu", epochs=1, metrics=monitor.metrics()
    )
    loader = torch.utils.data.DataLoader(Images(channels=1), batch_size=2)
    results = trainer.test(loader, compare_no_learning=True)
    assert monitor.model is model
    assert results["DEQForwardNFE"] == model.forward_stats.nfe
    assert results["DEQBackwardNFE"] == 0.0
    assert results["DEQForwardResidual"] <= 1e-5


def test_monitor_spectral_radius_every_n_steps():
    """At initialisation the ContractiveDenoiser gives J_F = 0.9 (I - A^T A) on CT with ||A|| = 1:
    rho = 0.9 (the null space of A). The monitor estimates it every 2 calls and reports the last
    estimate in between; a model that is not a DEQ gives NaN."""
    torch.manual_seed(0)
    physics = tomography("cpu")
    model = DEQ(
        denoiser=ContractiveDenoiser(depth=3, width=4), stepsize=1.0, max_iter=200, tol=1e-6
    )
    y = physics(Images().x)
    with torch.no_grad():
        x_hat = model(y, physics)
    monitor = DEQMonitor(
        model, spectral_radius_every=2, spectral_radius_iter=200, spectral_radius_tol=1e-7
    )
    (metric,) = monitor.metrics(["spectral_radius"])
    values = [float(metric(x_net=x_hat, model=model, y=y, physics=physics)) for _ in range(3)]
    assert [call for call, _ in monitor.spectral_radii] == [0, 2]
    assert values[0] == values[1] and values == pytest.approx([0.9] * 3, abs=5e-3)
    ref = spectral_radius(model, y, physics, x_star=x_hat, n_iter=200, tol=1e-7)
    assert float(ref.max()) == pytest.approx(values[-1], abs=1e-3)
    assert monitor.summary()["spectral_radius"] == values[-1]
    assert torch.isnan(metric(x_net=x_hat, model=torch.nn.Identity(), y=y, physics=physics)).all()


def test_monitor_spectral_radius_in_trainer_logs_and_options():
    torch.manual_seed(0)
    physics = tomography("cpu")
    model = make_model(1, "cpu")
    monitor = DEQMonitor(spectral_radius_every=1, spectral_radius_iter=30)
    assert "spectral_radius" in [m.quantity for m in monitor.metrics()]
    trainer = train(
        model, physics, [dinv.loss.MCLoss()], 1, "cpu", epochs=2, metrics=monitor.metrics()
    )
    logged = train_metric_logs(trainer)
    assert len(monitor.spectral_radii) == 2  # one estimate per training step
    assert 0.0 < logged["DEQSpectralRadius"] < 1.0  # contractive map
    # off by default, and asking for it then is an error naming the option
    assert "spectral_radius" not in [m.quantity for m in DEQMonitor().metrics()]
    with pytest.raises(ValueError, match="spectral_radius_every"):
        DEQMonitor().metrics(["spectral_radius"])
    with pytest.raises(ValueError, match="spectral_radius_every"):
        DEQMonitor(spectral_radius_every=-1)
