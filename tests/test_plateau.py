"""The plateau budget: the rule on synthetic histories, its settings, and one tiny run."""

from __future__ import annotations

import json

import pytest

from deepinv_deq.experiments.configs import ExperimentConfig
from deepinv_deq.experiments.plateau import next_epochs, plateau_reached, train_to_plateau


def _history(values, every=10):
    return {"val_step": [every * (k + 1) for k in range(len(values))], "val_psnr": list(values)}


def test_rule_on_synthetic_histories():
    # gains over the last 20 % of 100 steps: from step 80 (26.00) to step 100
    assert plateau_reached(_history([20, 22, 23, 24, 25, 25.5, 25.8, 26.0, 26.02, 26.04]))
    assert not plateau_reached(_history([20, 22, 23, 24, 25, 25.5, 25.8, 26.0, 26.1, 26.2]))
    assert plateau_reached(_history([20, 25, 26, 26, 26, 26, 26, 26, 25.9, 25.5]))  # a decrease
    assert not plateau_reached(_history([20]))  # a single point says nothing
    # the threshold and the window are the settings'
    h = _history([20, 22, 23, 24, 25, 25.5, 25.8, 26.0, 26.1, 26.2])
    assert plateau_reached(h, db=0.5)
    assert not plateau_reached(h, fraction=0.5, db=0.5)
    with pytest.raises(ValueError, match="db"):
        plateau_reached(h, db=0)


def test_extensions_grow_to_the_cap():
    assert next_epochs(4, 64) == 6
    assert next_epochs(1, 64) == 2
    assert next_epochs(40, 50) == 50


def _fake_train(curves):
    # a stand-in for training.train: the validation curve of a run of `epochs` epochs
    calls = []

    def train(model, physics, losses, dataset, cfg, folder, seed, epochs, **kwargs):
        assert cfg.budget == "fixed"
        # every stage after the first is an extension, and says so
        assert kwargs["extending"] is (epochs > 4)
        calls.append(epochs)
        values = [curves(e) for e in range(1, epochs + 1)]
        return dict(_history(values, every=1), epochs_done=epochs)

    return train, calls


@pytest.mark.parametrize(
    "curve, reached, epochs",
    [
        (lambda e: 30.0 - 10.0 / e**3, True, None),  # flattens: stops before the cap
        (lambda e: 20.0 + 0.5 * e, False, 12),  # keeps rising: stops at the cap
    ],
)
def test_train_to_plateau_stops_at_plateau_or_cap(tmp_path, curve, reached, epochs):
    cfg = ExperimentConfig(epochs=4, budget="plateau", max_epochs=12)
    train, calls = _fake_train(curve)
    history = train_to_plateau(train, None, None, [], None, cfg, tmp_path, 0, val_batches=[1])
    assert history["plateau"]["reached"] is reached
    assert calls[0] == 4 and calls == sorted(calls) and calls[-1] <= 12
    if epochs is not None:
        assert calls[-1] == epochs
    else:
        assert calls[-1] < 12
        assert history["plateau"]["change_db"] < 0.05
    assert json.loads((tmp_path / "plateau.json").read_text())["epochs"] == calls[-1]


def test_an_interrupted_extension_resumes_where_it_was(tmp_path):
    # the run was in its extension to 9 epochs: resuming must not restart from 4 (that would
    # shrink the cosine schedule of the checkpoint written for 9)
    (tmp_path / "plateau.json").write_text(json.dumps({"epochs": 9}))
    cfg = ExperimentConfig(epochs=4, budget="plateau", max_epochs=12)
    train, calls = _fake_train(lambda e: 30.0 - 10.0 / e**3)
    history = train_to_plateau(train, None, None, [], None, cfg, tmp_path, 0, val_batches=[1])
    assert calls == [9] and history["plateau"]["reached"]


def test_plateau_needs_validation(tmp_path):
    cfg = ExperimentConfig(epochs=2, budget="plateau")
    with pytest.raises(ValueError, match="validation"):
        train_to_plateau(_fake_train(lambda e: e)[0], None, None, [], None, cfg, tmp_path, 0)


def test_budget_settings_are_validated():
    assert ExperimentConfig(epochs=5).epoch_cap() == 5
    assert ExperimentConfig(epochs=5, budget="plateau").epoch_cap() == 20
    assert ExperimentConfig(epochs=5, budget="plateau", max_epochs=7).epoch_cap() == 7
    for bad, name in (
        (dict(budget="clock"), "budget"),
        (dict(plateau_db=0), "plateau_db"),
        (dict(plateau_fraction=1.0), "plateau_fraction"),
        (dict(epochs=5, max_epochs=3), "max_epochs"),
    ):
        with pytest.raises(ValueError, match=name):
            ExperimentConfig(**bad)


def test_tiny_run_records_the_plateau_flag(tmp_path):
    from deepinv_deq.experiments.runner import run

    cfg = ExperimentConfig.from_preset("tiny", budget="plateau", max_epochs=3)
    said = []
    result = run("ct", "deq", "sup", cfg, tmp_path, progress=False, log=said.append)
    # an extension is announced as such, never as the resumption of an interrupted run
    assert not any("resuming" in m for m in said)
    extended = result["per_seed"][0]["plateau"]["epochs"] > 1
    assert extended == any("plateau budget: training on from epoch 1" in m for m in said)
    seed = result["per_seed"][0]
    flag = seed["plateau"]
    assert isinstance(flag["reached"], bool) and flag["cap"] == 3
    assert seed["epochs"] == flag["epochs"] and 1 <= flag["epochs"] <= 3
    # not reached means it trained to the cap
    assert flag["reached"] or flag["epochs"] == 3
    history = json.loads(next(tmp_path.rglob("history.json")).read_text())
    assert history["plateau"] == flag


def test_pnp_denoiser_trains_its_own_budget_under_the_plateau_rule(tmp_path):
    # the Gaussian denoiser of PnP/RED has no reconstruction to validate: it trains for
    # denoiser_epochs (this used to raise "the plateau budget needs validation batches")
    from deepinv_deq.experiments.runner import run

    cfg = ExperimentConfig.from_preset("tiny", budget="plateau", max_epochs=3, denoiser_epochs=2)
    result = run("ct", "pnp", "none", cfg, tmp_path, progress=False, log=lambda *a: None)
    assert result["psnr_mean"] > 0
    import torch

    for checkpoint in tmp_path.rglob("denoiser_*/last.pt"):
        history = torch.load(checkpoint, weights_only=False)["history"]
        assert history["epochs_done"] == 2 and "plateau" not in history
