"""Resuming interrupted training (issue 7, item 5) with :class:`deepinv.Trainer`.

A run is interrupted in the middle of an epoch (an exception raised from inside a training step);
a fresh process-like restart (new model, new optimiser, different initial weights) resumes from
the last checkpoint the Trainer wrote and must end with the same parameters -- network weights,
a trainable step size and Adam's moments -- as an uninterrupted run. Deterministic on CPU.
"""

from __future__ import annotations

from pathlib import Path

import deepinv as dinv
import pytest
import torch

from deepinv_deq import DEQ

EPOCHS = 4
N_DATA = 8
BATCH = 4


class TinyDenoiser(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.mul_(0.3 / self.conv.weight.abs().sum())

    def forward(self, x, sigma=None):
        return 0.5 * x + torch.tanh(self.conv(x))


class Interrupt(Exception):
    """Stands for a crash or a pre-emption in the middle of training."""


class InterruptingLoss(dinv.loss.Loss):
    r"""Wraps a loss and raises :class:`Interrupt` at its ``at``-th call."""

    def __init__(self, loss, at: int | None):
        super().__init__()
        self.loss = loss
        self.at = at
        self.calls = 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        if self.at is not None and self.calls == self.at:
            raise Interrupt
        return self.loss(*args, **kwargs)


class PairDataset(torch.utils.data.Dataset):
    """Offline pairs as the dicts deepinv's Trainer expects."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def _data():
    g = torch.Generator().manual_seed(0)
    physics = dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.6, rng=g)
    x = torch.rand(N_DATA, 1, 8, 8, generator=g)
    y = physics.A(x)
    loader = torch.utils.data.DataLoader(PairDataset(x, y), batch_size=BATCH, shuffle=False)
    return physics, loader


def _trainer(seed: int, save_path: Path, epochs: int, interrupt_at=None, ckpt=None):
    torch.manual_seed(seed)
    model = DEQ(
        denoiser=TinyDenoiser(), stepsize=0.9, trainable_params=("stepsize",), max_iter=40, tol=1e-6
    )
    physics, loader = _data()
    losses = [InterruptingLoss(dinv.loss.SupLoss(), interrupt_at), dinv.loss.MCLoss()]
    return dinv.Trainer(
        model=model,
        physics=physics,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        train_dataloader=loader,
        losses=losses,
        epochs=epochs,
        online_measurements=False,
        save_path=str(save_path),
        ckp_interval=1,
        ckpt_pretrained=None if ckpt is None else str(ckpt),
        device="cpu",
        non_blocking_transfers=False,
        metrics=[],
        verbose=False,
        show_progress_bar=False,
        plot_images=False,
    )


def _state(trainer):
    params = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    adam = trainer.optimizer.state_dict()["state"]
    moments = [s["exp_avg"].clone() for _, s in sorted(adam.items())]
    return params, moments


def test_interrupted_training_resumes_to_the_same_parameters(tmp_path):
    full = _trainer(seed=0, save_path=tmp_path / "full", epochs=EPOCHS)
    full.train()
    ref_params, ref_moments = _state(full)

    # interrupted in the middle of epoch 2 (step 2 of epoch 2 = loss call 2 * 2 + 2)
    crashed = _trainer(
        seed=0,
        save_path=tmp_path / "crashed",
        epochs=EPOCHS,
        interrupt_at=2 * (N_DATA // BATCH) + 2,
    )
    with pytest.raises(Interrupt):
        crashed.train()
    checkpoints = sorted((tmp_path / "crashed").glob("*/ckp_*.pth.tar"))
    last = max(checkpoints, key=lambda p: int(p.stem.split("_")[1].split(".")[0]))
    assert last.name == "ckp_1.pth.tar"  # epochs 0 and 1 finished; epoch 0 is not checkpointed

    # restart: other initial weights, so that only the checkpoint can make the runs agree
    resumed = _trainer(seed=123, save_path=tmp_path / "resumed", epochs=EPOCHS, ckpt=last)
    assert not torch.equal(
        resumed.model.map.denoiser.conv.weight, ref_params["map.denoiser.conv.weight"]
    )
    resumed.train()
    assert resumed.epoch_start == 2
    params, moments = _state(resumed)

    assert params.keys() == ref_params.keys()
    for name in ref_params:
        assert torch.allclose(params[name], ref_params[name], rtol=1e-6, atol=1e-7), name
    for m, ref in zip(moments, ref_moments, strict=True):
        assert torch.allclose(m, ref, rtol=1e-6, atol=1e-9)
    # the run trained at all: the step size moved away from its initial value
    assert abs(float(ref_params["map.stepsize"]) - 0.9) > 1e-4
