"""Resuming the experiments' training (issue 16, items 10-11): every random generator a run uses
is checkpointed and restored on the CPU, and the logged loss window survives an interruption."""

from __future__ import annotations

import deepinv as dinv
import pytest
import torch

from deepinv_deq.data import load_dataset
from deepinv_deq.experiments import ExperimentConfig, build_losses, build_model
from deepinv_deq.experiments import training
from deepinv_deq.experiments.tasks import build_physics


class Interrupt(Exception):
    pass


class Interrupting(dinv.loss.Loss):
    """A crash at the ``at``-th training step."""

    def __init__(self, at):
        super().__init__()
        self.calls, self.at = 0, at

    def forward(self, x_net, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            raise Interrupt
        return x_net.sum() * 0


def _cfg(device, **kw):
    return ExperimentConfig.from_preset("tiny", n_train=4, batch_size=2, device=str(device), **kw)


def _moei(cfg, device, seed):
    # MOEI with two CT operators: its own generator picks the operator of each step
    operators = [build_physics("ct", cfg), build_physics("ct", cfg)]
    operators[1].noise_model = dinv.physics.GaussianNoise(
        0.05, rng=torch.Generator(device).manual_seed(seed + 11)
    )
    transform = dinv.transform.Rotate(rng=torch.Generator(device).manual_seed(seed + 12))
    moei = dinv.loss.MOEILoss(
        transform=transform, physics=operators, rng=torch.Generator(device).manual_seed(seed + 13)
    )
    return [dinv.loss.MCLoss(), moei]


def _fresh(cfg, device, init_seed, regime):
    torch.manual_seed(init_seed)
    model = build_model("ct", "deq", cfg).to(device)
    physics = build_physics("ct", cfg, rng=torch.Generator(device).manual_seed(1))
    if regime == "moei":
        losses = _moei(cfg, device, 0)
    else:
        losses = build_losses("ei", cfg, rng=torch.Generator(device).manual_seed(2))
    return model, physics, losses


@pytest.mark.parametrize("regime", ["moei", "ei"])
def test_interrupted_run_resumes_bit_exactly(tmp_path, device, regime):
    # on 0.2 MOEILoss's own generator was not checkpointed: a resumed MOEI run ended elsewhere
    cfg = _cfg(device, eval_every=3)  # 2 steps an epoch: the loss window spans checkpoints
    data = load_dataset("phantoms", "ct", 4, cfg.img_size, 0)
    val = [(x.to(device), y.to(device)) for x, y in _val(cfg, device)]
    common = dict(seed=5, epochs=3, val_batches=val)

    model, ref_physics, ref_losses = _fresh(cfg, device, 0, regime)
    ref = training.train(model, ref_physics, ref_losses, data, cfg, tmp_path / "a", **common)

    model_b, physics, losses = _fresh(cfg, device, 0, regime)
    with pytest.raises(Interrupt):  # in the middle of the third epoch
        training.train(
            model_b, physics, [*losses, Interrupting(6)], data, cfg, tmp_path / "b", **common
        )
    model_c, physics, losses = _fresh(cfg, device, 7, regime)  # a new process
    history = training.train(model_c, physics, losses, data, cfg, tmp_path / "b", **common)
    # every generator ends in the state of the uninterrupted run (MOEI's operator choice too)
    ref_gens = training.random_generators(ref_physics, ref_losses)
    for name, g in training.random_generators(physics, losses).items():
        assert torch.equal(g.get_state(), ref_gens[name].get_state()), name
    # equal up to the last bits: fresh allocations in a new process change the rounding of a
    # few CPU kernels (1e-8 here, for unrolled training too); a generator left unrestored moves
    # the weights by orders of magnitude more
    for p, q in zip(model.parameters(), model_c.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-6, atol=1e-7)
    # the logged training loss, averaged over a window that a checkpoint cut, is the same
    assert history["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    assert history["val_psnr"] == pytest.approx(ref["val_psnr"], abs=1e-4)


def _val(cfg, device):
    physics = build_physics("ct", cfg)
    x = load_dataset("phantoms", "ct", 2, cfg.img_size, 1)[0][None].to(device)
    return [(x, physics(x))]


def test_every_generator_of_a_step_is_found():
    cfg = _cfg("cpu")
    physics = build_physics("ct", cfg, rng=torch.Generator().manual_seed(1))
    losses = _moei(cfg, "cpu", 0)
    found = training.random_generators(physics, losses)
    assert found["noise"] is physics.noise_model.rng
    assert found["transform_1"] is losses[1].T.rng and found["loss_1"] is losses[1].rng
    assert found["loss_1_physics_1_noise"] is losses[1].physics[1].noise_model.rng


def test_checkpoints_load_on_the_cpu(tmp_path, monkeypatch):
    # on 0.2 they loaded with map_location=cfg.device: on CUDA the random generators' states
    # moved there and every resume crashed (set_state takes CPU byte tensors only)
    seen = []
    original = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("map_location"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    cfg = _cfg("cpu")
    data = load_dataset("phantoms", "ct", 4, cfg.img_size, 0)
    model, physics, losses = _fresh(cfg, "cpu", 0, "ei")
    training.train(model, physics, losses, data, cfg, tmp_path, seed=5, epochs=1)
    model, physics, losses = _fresh(cfg, "cpu", 0, "ei")
    training.train(model, physics, losses, data, cfg, tmp_path, seed=5, epochs=1)
    assert seen == ["cpu"]
    state = original(tmp_path / "last.pt", map_location="cpu", weights_only=False)
    assert all(
        t is None or t.device.type == "cpu"
        for t in state["rng"].values()
        if not isinstance(t, list)
    )
