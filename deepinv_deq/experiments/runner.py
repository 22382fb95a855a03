r"""Training and evaluation of one run ``(task, method, regime)`` with :class:`deepinv.Trainer`.

Layout of an output directory (one per experiment)::

    OUT/<task>/<method>-<regime>/ckpt/attempt_<n>/<time>/ckp_<epoch>.pth.tar   checkpoints (resume from the last)
    OUT/<task>/<method>-<regime>/model.pt                   trained weights
    OUT/<task>/<method>-<regime>/result.json                metrics on the held-out images (run done)
    OUT/<task>/<method>-<regime>/samples.pt                 reconstructions of the first test images
    OUT/<task>/denoiser/                                    Gaussian denoiser shared by PnP and RED

A run whose ``result.json`` exists with the same settings is skipped; an interrupted run continues
from its last checkpoint. A run with *different* settings in the same folder is an error (use
another ``--out``), so results are never silently mixed.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import torch

from .configs import ExperimentConfig, FIXED, check_run
from .methods import build_denoiser, build_losses, build_model
from .tasks import build_physics
from ..data import load_dataset

N_SAMPLES = 2  # test images whose reconstructions are kept for the figures


def run_dir(out: Path, task: str, method: str, regime: str) -> Path:
    r"""Folder of a run."""
    name = method if regime == "none" else f"{method}-{regime}"
    return Path(out) / task / name


def _seed_for(cfg: ExperimentConfig, *names: str) -> int:
    # a stable seed per run (python's hash() is salted per process)
    import zlib

    return (cfg.seed * 1000003 + zlib.crc32("/".join(names).encode())) % (2**31)


def _check_settings(folder: Path, cfg: ExperimentConfig) -> None:
    path = folder / "config.json"
    key = cfg.training_key()
    if path.exists():
        old = json.loads(path.read_text())
        if old != key:
            diff = sorted(k for k in set(old) | set(key) if old.get(k) != key.get(k))
            raise ValueError(
                f"'{folder}' holds a run with other settings ({', '.join(diff)} differ); "
                f"use another --out or delete the folder."
            )
    else:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(key, indent=1))


def _latest_checkpoint(folder: Path) -> Path | None:
    # dinv.Trainer writes save_path/<timestamp>/ckp_<epoch>.pth.tar
    ckpts = [p for p in folder.rglob("ckp_*.pth.tar") if p.name.split("_")[1].split(".")[0].isdigit()]
    ckpts.sort(key=lambda p: (int(p.name.split("_")[1].split(".")[0]), p.stat().st_mtime))
    return ckpts[-1] if ckpts else None


def _loader(dataset, cfg: ExperimentConfig, shuffle: bool, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=shuffle, generator=g, drop_last=False
    )


class _DenoiserReconstructor(torch.nn.Module):
    # lets dinv.Trainer train a denoiser on the Denoising physics: model(y, physics) = D(y, sigma)
    def __init__(self, denoiser, sigma: float):
        super().__init__()
        self.denoiser = denoiser
        self.sigma = sigma

    def forward(self, y, physics, **kwargs):
        return self.denoiser(y, self.sigma)


def _train(model, physics, losses, dataset, cfg, folder: Path, epochs: int, seed: int, progress: bool):
    import deepinv as dinv

    ckdir = folder / "ckpt"
    ckdir.mkdir(parents=True, exist_ok=True)
    latest = _latest_checkpoint(ckdir)
    # dinv.Trainer refuses an existing save_path/<timestamp to the second>: one folder per attempt
    attempt = ckdir / f"attempt_{len([p for p in ckdir.iterdir() if p.is_dir()])}"
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non_blocking_transfers.*")
        trainer = _trainer(model, physics, losses, dataset, cfg, attempt, latest, epochs, seed, progress)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*backward solve did not converge.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*non_blocking_transfers.*")
        trainer.train()
    return trainer


def _trainer(model, physics, losses, dataset, cfg, ckdir, latest, epochs, seed, progress):
    import deepinv as dinv

    return dinv.Trainer(
        model=model,
        physics=physics,
        optimizer=torch.optim.Adam(model.parameters(), lr=cfg.lr),
        train_dataloader=_loader(dataset, cfg, True, seed),
        epochs=epochs,
        losses=losses,
        online_measurements=True,
        device=torch.device(cfg.device),
        save_path=str(ckdir),
        ckp_interval=1,
        ckpt_pretrained=str(latest) if latest else None,
        compute_train_metrics=False,
        grad_clip=1.0,
        check_grad=True,
        verbose=progress,  # deepinv shows its progress bars only when verbose
        show_progress_bar=progress,
    )


def train_denoiser(task: str, cfg: ExperimentConfig, out: Path, progress: bool = True):
    r"""The DnCNN of PnP/RED, trained once per task as a Gaussian denoiser (noise level
    ``cfg.sigma_denoiser``) on the clean training images; cached in ``OUT/<task>/denoiser``.

    :return: the trained denoiser.
    """
    import deepinv as dinv

    folder = Path(out) / task / "denoiser"
    _check_settings(folder, cfg)
    denoiser = build_denoiser(task, cfg)
    weights = folder / "model.pt"
    if weights.exists():
        denoiser.load_state_dict(torch.load(weights, map_location=cfg.device))
        return denoiser
    seed = _seed_for(cfg, task, "denoiser")
    torch.manual_seed(seed)
    denoiser = build_denoiser(task, cfg)
    physics = dinv.physics.Denoising(dinv.physics.GaussianNoise(sigma=cfg.sigma_denoiser), device=cfg.device)
    train = load_dataset(cfg.data, task, cfg.n_train, cfg.img_size, cfg.seed, split=0)
    model = _DenoiserReconstructor(denoiser, cfg.sigma_denoiser)
    _train(model, physics, [dinv.loss.SupLoss()], train, cfg, folder, cfg.denoiser_epochs, seed, progress)
    torch.save(denoiser.state_dict(), weights)
    return denoiser


def held_out_measurements(task: str, cfg: ExperimentConfig, physics):
    r"""The held-out images and their measurements, identical for every method (seeded noise).

    :return: list of ``(x, y)`` batches on ``cfg.device``.
    """
    test = load_dataset(cfg.data, task, cfg.n_test, cfg.img_size, cfg.seed, split=1)
    batches = []
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(_seed_for(cfg, task, "test-noise"))
    try:
        for x in _loader(test, cfg, False, 0):
            x = x.to(cfg.device)
            with torch.no_grad():
                batches.append((x, physics(x)))
    finally:
        torch.random.set_rng_state(rng_state)
    return batches


def magnitude(x: torch.Tensor) -> torch.Tensor:
    r"""Image shown and scored: the magnitude for 2-channel (complex MRI) images, else the image."""
    if x.shape[1] == 2:
        return x.pow(2).sum(1, keepdim=True).sqrt()
    return x


def evaluate(model, task: str, cfg: ExperimentConfig, physics, batches=None) -> dict:
    r"""PSNR and SSIM (mean, std over the held-out images) of ``model`` on ``task``.

    Scores are computed on the magnitude image clipped to :math:`[0, 1]` (peak value 1).

    :return: a dict with ``psnr``, ``ssim`` (lists per image), their means and standard deviations,
        the evaluation time, the mean number of forward iterations of DEQ solves when available and
        ``samples``: reconstructions of the first :data:`N_SAMPLES` test images.
    """
    import deepinv as dinv

    batches = batches if batches is not None else held_out_measurements(task, cfg, physics)
    psnr, ssim = dinv.metric.PSNR(max_pixel=1.0), dinv.metric.SSIM(max_pixel=1.0)
    model.eval()
    values = {"psnr": [], "ssim": []}
    nfe, samples = [], []
    t0 = time.perf_counter()
    with torch.no_grad():
        for x, y in batches:
            x_hat = model(y, physics)
            a, b = magnitude(x_hat).clamp(0, 1), magnitude(x)
            values["psnr"] += psnr(a, b).flatten().tolist()
            values["ssim"] += ssim(a, b).flatten().tolist()
            stats = getattr(model, "forward_stats", None)
            if stats is not None:
                nfe.append(float(stats.nfe))
            if len(samples) < N_SAMPLES:
                samples += list(magnitude(x_hat)[: N_SAMPLES - len(samples)].cpu())
    out = {"eval_s": time.perf_counter() - t0}
    for k, v in values.items():
        t = torch.tensor(v, dtype=torch.float64)
        out[k] = v
        out[f"{k}_mean"] = float(t.mean())
        out[f"{k}_std"] = float(t.std(unbiased=False))
    out["nfe"] = sum(nfe) / len(nfe) if nfe else None
    out["samples"] = samples
    return out


def run(task: str, method: str, regime: str | None, cfg: ExperimentConfig, out,
        progress: bool = True, log=print) -> dict:
    r"""Train (if needed) and evaluate one run; resumable.

    :param str task: ``"ct"`` or ``"mri"``.
    :param str method: a method name (see :data:`deepinv_deq.experiments.configs.METHODS`).
    :param str regime: ``"sup"``, ``"ei"``, ``"mc"``; ``None``/``"none"`` for fixed methods.
    :param ExperimentConfig cfg: settings.
    :param str out: output directory.
    :param bool progress: show progress bars.
    :param Callable log: where progress messages go.
    :return: the run's result (also in ``result.json``); ``skipped`` is ``True`` if it was done before.
    """
    task, method, regime = check_run(task, method, regime)
    out = Path(out)
    folder = run_dir(out, task, method, regime)
    _check_settings(folder, cfg)
    result_path = folder / "result.json"
    if result_path.exists():
        result = json.loads(result_path.read_text())
        result["skipped"] = True
        log(f"[{task}] {method:>9s} {regime:>4s}: done before, skipped "
            f"(PSNR {result['psnr_mean']:.2f} dB)")
        return result
    physics = build_physics(task, cfg)
    denoiser = train_denoiser(task, cfg, out, progress) if method in ("pnp", "red") else None
    torch.manual_seed(_seed_for(cfg, task, method, regime, "init"))
    model = build_model(task, method, cfg, denoiser=denoiser)
    t0 = time.perf_counter()
    if method not in FIXED:
        log(f"[{task}] {method:>9s} {regime:>4s}: training {cfg.epochs} epochs on {cfg.n_train} images")
        train = load_dataset(cfg.data, task, cfg.n_train, cfg.img_size, cfg.seed, split=0)
        losses = build_losses(regime, cfg, model)
        _train(model, physics, losses, train, cfg, folder, cfg.epochs,
               _seed_for(cfg, task, method, regime), progress)
        torch.save(model.state_dict(), folder / "model.pt")
    train_s = time.perf_counter() - t0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*did not converge.*")
        result = evaluate(model, task, cfg, physics)
    torch.save(result.pop("samples"), folder / "samples.pt")
    result.update(task=task, method=method, regime=regime, train_s=train_s, skipped=False)
    result_path.write_text(json.dumps(result, indent=1))
    log(f"[{task}] {method:>9s} {regime:>4s}: PSNR {result['psnr_mean']:.2f} +- "
        f"{result['psnr_std']:.2f} dB, SSIM {result['ssim_mean']:.3f} (train {train_s:.0f} s)")
    return result


def reevaluate(folder, cfg: ExperimentConfig | None = None, log=print) -> dict:
    r"""Evaluate the trained weights of a finished run again (``deepinv-deq eval``).

    :param str folder: the run folder (holding ``config.json`` and ``model.pt`` or ``result.json``).
    :param ExperimentConfig cfg: settings; default those stored with the run (``n_test``, ``device``
        may differ from training).
    """
    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"'{folder}' is not a run folder (no config.json).")
    stored = json.loads((folder / "config.json").read_text())
    cfg = cfg or ExperimentConfig(**stored)
    task = folder.parent.name
    name = folder.name
    method, _, regime = name.rpartition("-") if name.rsplit("-", 1)[-1] in ("sup", "ei", "mc") else (name, "", "none")
    task, method, regime = check_run(task, method, regime)
    physics = build_physics(task, cfg)
    denoiser = None
    if method in ("pnp", "red"):
        denoiser = build_denoiser(task, cfg)
        denoiser.load_state_dict(torch.load(folder.parent / "denoiser" / "model.pt", map_location=cfg.device))
    model = build_model(task, method, cfg, denoiser=denoiser)
    if method not in FIXED:
        weights = folder / "model.pt"
        if not weights.exists():
            raise FileNotFoundError(f"'{folder}': no trained weights (model.pt); train the run first.")
        model.load_state_dict(torch.load(weights, map_location=cfg.device))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*did not converge.*")
        result = evaluate(model, task, cfg, physics)
    result.pop("samples")
    old = json.loads((folder / "result.json").read_text()) if (folder / "result.json").exists() else {}
    result.update(task=task, method=method, regime=regime, train_s=old.get("train_s"), skipped=False)
    log(f"[{task}] {method:>9s} {regime:>4s}: PSNR {result['psnr_mean']:.2f} +- {result['psnr_std']:.2f} dB")
    return result
