r"""Where a run lives, and whether the settings stored there are those asked for.

Layout of an output directory (one per experiment)::

    OUT/<task>/<method>-<regime>/seed_<s>/last.pt, best.pt   checkpoints (resume from last.pt)
    OUT/<task>/<method>-<regime>/seed_<s>/model.pt           trained weights
    OUT/<task>/<method>-<regime>/seed_<s>/result.json        metrics of that seed (seed done)
    OUT/<task>/<method>-<regime>/seed_<s>/history.json       training curve (loss, validation PSNR)
    OUT/<task>/<method>-<regime>/result.json                 metrics over the seeds (run done)
    OUT/<task>/<method>-<regime>/samples.pt                  reconstructions (first seed)
    OUT/<task>/denoiser_<sigma>/                             Gaussian denoisers of PnP and RED

A run whose ``result.json`` exists with the same settings is skipped; an interrupted run continues
from its last checkpoint. A run with *different* settings in the same folder is an error (use
another ``--out``), so results are never silently mixed. The one exception is ``extend=True``
(``--extend``) with a larger ``epochs`` and every other setting unchanged: the run trains on from
its ``last.pt`` to the new total (:func:`extend_settings`); the earlier per-seed results are kept
as ``seed_<s>/result_epochs<E>.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from .configs import FIXED, ExperimentConfig


def run_dir(out: Path, task: str, method: str, regime: str) -> Path:
    r"""Folder of a run."""
    name = method if regime == "none" else f"{method}-{regime}"
    return Path(out) / task / name


class RunSettingsError(ValueError):
    r"""The output folder holds a run with other settings (the command line reports it as a
    usage error)."""


def check_settings(folder: Path, cfg: ExperimentConfig) -> None:
    path = folder / "config.json"
    key = cfg.training_key()
    if path.exists():
        old = json.loads(path.read_text())
        if old != key:
            diff = sorted(k for k in set(old) | set(key) if old.get(k) != key.get(k))
            hint = (
                "; to train it longer, add --extend"
                if diff == ["epochs"] and key["epochs"] > old["epochs"]
                else ""
            )
            raise RunSettingsError(
                f"'{folder}' holds a run with other settings ({', '.join(diff)} differ); "
                f"use another --out, --overwrite or delete the folder{hint}."
            )
    else:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(key, indent=1))


def extend_settings(folder: Path, cfg: ExperimentConfig) -> int | None:
    r"""Accept ``cfg`` for the run stored in ``folder`` when it only asks for more epochs.

    :return: the run's former number of epochs when it is extended (``config.json`` is then
        rewritten with the new total), ``None`` when there is nothing to extend (no stored run, or
        the same number of epochs).
    :raises ValueError: if a setting other than ``epochs`` differs, or ``epochs`` is smaller than
        the stored run's.
    """
    path = Path(folder) / "config.json"
    if not path.exists():
        return None
    old, key = json.loads(path.read_text()), cfg.training_key()
    diff = sorted(k for k in set(old) | set(key) if k != "epochs" and old.get(k) != key.get(k))
    if diff:
        raise RunSettingsError(
            f"'{folder}' holds a run with other settings ({', '.join(diff)} differ): "
            f"--extend changes only --epochs."
        )
    if key["epochs"] < old["epochs"]:
        raise RunSettingsError(
            f"'epochs' must be at least the stored run's {old['epochs']} to extend '{folder}', "
            f"got {key['epochs']}."
        )
    if key["epochs"] == old["epochs"]:
        return None
    path.write_text(json.dumps(key, indent=1))
    return old["epochs"]


def extend_run(
    out: Path, folder: Path, task: str, method: str, cfg: ExperimentConfig, log, label
) -> None:
    # the Gaussian denoisers of PnP/RED do not depend on 'epochs': accept the new total for them
    for denoiser in sorted((out / task).glob("denoiser_*")):
        extend_settings(denoiser, cfg)
    old = extend_settings(folder, cfg)
    if old is None or method in FIXED:
        return  # nothing to extend, or not trained end to end: the result stays valid
    for path in (folder / "result.json", folder / "samples.pt"):
        path.unlink(missing_ok=True)
    for sub in sorted(folder.glob("seed_*")):
        if (sub / "result.json").exists():
            (sub / "result.json").replace(sub / f"result_epochs{old}.json")
    log(f"{label}: extending from {old} to {cfg.epochs} epochs")
