r"""The plateau budget: train until the validation PSNR stops rising, the same rule for every method.

With ``budget="plateau"`` a trained run first takes ``epochs`` epochs; then, while its validation
PSNR gained at least ``plateau_db`` over the last ``plateau_fraction`` of its steps
(:func:`plateau_reached`), it is extended by half its length (at least one epoch, at most up to
the cap :meth:`~deepinv_deq.experiments.configs.ExperimentConfig.epoch_cap`). Each extension
resumes from the run's ``last.pt`` with the cosine schedule stretched to the new total, as
``--extend`` does (:func:`deepinv_deq.experiments.training.train`). The history records the
outcome under ``"plateau"``: whether the plateau was reached, the last gain and the epochs taken.

The target of the current extension is kept in ``plateau.json`` next to the checkpoints, so that an
interrupted run resumes the extension it was in rather than restarting the schedule.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from .._validation import check_float

#: an extension adds this fraction of the epochs taken so far (at least one epoch)
GROWTH = 0.5


def flattened(history: dict, fraction: float = 0.2) -> float | None:
    r"""Change of the validation PSNR over the last ``fraction`` of the steps (last value minus
    the value at the start of that window); ``None`` with fewer than two points."""
    steps, values = history.get("val_step", []), history.get("val_psnr", [])
    if len(values) < 2:
        return None
    start = steps[-1] * (1 - fraction)
    before = [v for s, v in zip(steps[:-1], values[:-1], strict=True) if s <= start]
    reference = before[-1] if before else values[0]
    return values[-1] - reference


def plateau_reached(history: dict, db: float = 0.05, fraction: float = 0.2) -> bool:
    r"""Whether the validation PSNR of ``history`` gained less than ``db`` over the last
    ``fraction`` of the steps (:func:`flattened`); ``False`` with
    fewer than two validation points.

    :param dict history: a training history (``val_step``, ``val_psnr``).
    :param float db: the threshold (dB).
    :param float fraction: the trailing fraction of the steps.

    |sep|

    :Example:

    >>> from deepinv_deq.experiments.plateau import plateau_reached
    >>> plateau_reached({"val_step": [10, 20, 30, 40, 50], "val_psnr": [20, 25, 27, 28, 28.01]})
    True
    >>> plateau_reached({"val_step": [10, 20, 30, 40, 50], "val_psnr": [20, 25, 27, 28, 28.5]})
    False
    """
    db = check_float("plateau_reached", "db", db, 0.0, strict_min=True)
    fraction = check_float("plateau_reached", "fraction", fraction, 0.0, 1.0, strict_min=True)
    change = flattened(history, fraction)
    return change is not None and change < db


def next_epochs(epochs: int, cap: int) -> int:
    r"""The total epochs of the next extension of a run of ``epochs`` epochs: ``epochs`` grown by
    :data:`GROWTH` (at least one more epoch), at most ``cap``."""
    return min(cap, max(epochs + 1, math.ceil(epochs * (1 + GROWTH))))


def train_to_plateau(train, model, physics, losses, dataset, cfg, folder, seed, **kwargs) -> dict:
    r"""Train with ``train`` (:func:`deepinv_deq.experiments.training.train`) under the plateau
    budget of ``cfg``: ``cfg.epochs`` epochs, then extensions (:func:`next_epochs`) until
    :func:`plateau_reached` or ``cfg.epoch_cap()`` epochs.

    :param Callable train: the training function (called with a copy of ``cfg`` whose budget is
        ``"fixed"`` and the epochs of each stage).
    :param ExperimentConfig cfg: settings (``epochs``, ``plateau_db``, ``plateau_fraction``,
        ``max_epochs``).
    :param kwargs: passed to ``train`` (``val_batches`` is required: the rule reads the validation
        curve).
    :return: the history, with ``history["plateau"] = {"reached", "change_db", "epochs", "cap",
        "db", "fraction"}``.
    :raises ValueError: without validation batches.
    """
    if not kwargs.get("val_batches"):
        raise ValueError(
            "train_to_plateau: the plateau budget needs validation batches (n_val >= 1)."
        )
    kwargs.pop("epochs", None)
    fixed = dataclasses.replace(cfg, budget="fixed")
    cap = cfg.epoch_cap()
    state = Path(folder) / "plateau.json"
    epochs = cfg.epochs  # or, for an interrupted run, the extension it was in
    if state.exists():
        epochs = max(epochs, json.loads(state.read_text())["epochs"])
    while True:
        Path(folder).mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps({"epochs": epochs}))
        extending = epochs > cfg.epochs
        history = train(
            model,
            physics,
            losses,
            dataset,
            fixed,
            folder,
            seed,
            epochs,
            extending=extending,
            **kwargs,
        )
        reached = plateau_reached(history, cfg.plateau_db, cfg.plateau_fraction)
        if reached or epochs >= cap:
            break
        epochs = next_epochs(epochs, cap)
    history["plateau"] = dict(
        reached=reached,
        change_db=flattened(history, cfg.plateau_fraction),
        epochs=history["epochs_done"],
        cap=cap,
        db=cfg.plateau_db,
        fraction=cfg.plateau_fraction,
    )
    return history
