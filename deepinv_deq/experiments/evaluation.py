r"""Evaluation of a run: the held-out measurements (the same for every method and seed), PSNR and
SSIM on the magnitude image, the equivariance error, the aggregation over the seeds (converged
fractions of every solve), and the re-evaluation of stored weights (``deepinv-deq eval``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..data import load_dataset
from .configs import FIXED, SOLVED, ExperimentConfig, check_run
from .methods import build_denoiser, build_model
from .seeds import generator
from .tasks import build_physics
from .training import SolveCounter

#: test images whose reconstructions are kept for the figures
N_SAMPLES = 2


def held_out_measurements(task: str, cfg: ExperimentConfig, split: str = "test"):
    r"""Held-out images and their measurements, identical for every method and seed (their noise
    comes from a generator of their own).

    :param str split: ``"test"`` (``cfg.n_test`` images) or ``"val"`` (``cfg.n_val`` images).
    :return: list of ``(x, y)`` batches on ``cfg.device``.
    """
    index, n = {"test": (1, cfg.n_test), "val": (2, cfg.n_val)}[split]
    data = load_dataset(
        cfg.data_of(task),
        task,
        n,
        cfg.size_of(task),
        cfg.seed,
        split=index,
        counts=split_counts(cfg),
    )
    noisy = build_physics(task, cfg, rng=generator(cfg, task, f"{split}-noise"))
    batches = []
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch_size, shuffle=False)
    with torch.no_grad():
        for x in loader:
            x = x.to(cfg.device)
            batches.append((x, noisy(x)))
    return batches


def magnitude(x: torch.Tensor) -> torch.Tensor:
    r"""Image shown and scored: the magnitude for 2-channel (complex MRI) images
    (:func:`deepinv.utils.complex_abs`), else the image."""
    if x.shape[1] == 2:
        from deepinv.utils import complex_abs

        return complex_abs(x, dim=1, keepdim=True)
    return x


def evaluate(model, task: str, cfg: ExperimentConfig, physics, batches=None, counter=None) -> dict:
    r"""PSNR and SSIM of ``model`` on the held-out images of ``task``.

    Scores are computed on the magnitude image clipped to :math:`[0, 1]` (peak value 1).

    :return: a dict with ``psnr``, ``ssim`` (lists per image), their means and standard deviations
        over the images, the evaluation time, the mean forward iterations of the DEQ solves
        (``nfe``) and ``samples``: reconstructions of the first :data:`N_SAMPLES` test images.
    """
    import deepinv as dinv

    batches = batches if batches is not None else held_out_measurements(task, cfg)
    psnr, ssim = dinv.metric.PSNR(max_pixel=1.0), dinv.metric.SSIM(max_pixel=1.0)
    model.eval()
    if counter is not None:
        counter.set_phase("test")
    values = {"psnr": [], "ssim": []}
    nfe, samples = [], []
    t0 = time.process_time()
    with torch.no_grad():
        for x, y in batches:
            x_hat = magnitude(model(y, physics))
            a, b = x_hat.clamp(0, 1), magnitude(x)
            values["psnr"] += psnr(a, b).flatten().tolist()
            values["ssim"] += ssim(a, b).flatten().tolist()
            stats = getattr(model, "forward_stats", None)
            if stats is not None:
                nfe.append(float(stats.nfe))
            if len(samples) < N_SAMPLES:
                samples += list(x_hat[: N_SAMPLES - len(samples)].cpu())
    out = {"eval_s": time.process_time() - t0}
    for k, v in values.items():
        t = torch.tensor(v, dtype=torch.float64)
        out[k] = v
        out[f"{k}_mean"] = float(t.mean())
        out[f"{k}_std"] = float(t.std(unbiased=False))
    out["nfe"] = sum(nfe) / len(nfe) if nfe else None
    out["samples"] = samples
    return out


def equivariance(model, task, cfg, physics, batches) -> float:
    import deepinv as dinv
    from ..diagnostics import equivariance_error

    rng = generator(cfg, task, "equivariance")
    transform = (
        dinv.transform.Rotate(interpolation_mode="bilinear", rng=rng)
        if cfg.transform == "rotate"
        else dinv.transform.Shift(rng=rng)
    )
    model.eval()
    with torch.no_grad():
        return float(
            equivariance_error(model, physics, transform, [x for x, _ in batches], n_draws=2)
        )


def _fraction(results, kind) -> float | None:
    samples = sum(c[kind]["samples"] for r in results for c in r.get("counts", {}).values())
    conv = sum(c[kind]["converged"] for r in results for c in r.get("counts", {}).values())
    return conv / samples if samples else None


def _mean_iters(results, kind, phases=("train", "val", "test")) -> float | None:
    solves = sum(r["counts"][p][kind]["solves"] for r in results if "counts" in r for p in phases)
    nfe = sum(r["counts"][p][kind]["nfe_sum"] for r in results if "counts" in r for p in phases)
    return nfe / solves if solves else None


def aggregate(task: str, method: str, regime: str, per_seed: list[dict]) -> dict:
    r"""One result over the seeds of a run: ``psnr`` / ``ssim`` per test image averaged over the
    seeds, ``psnr_mean``, ``psnr_std`` (over the seeds' means; over the images with one seed),
    ``psnr_seeds``, the converged fractions of every forward / backward solve (training,
    validation and test), mean iterations, training time summed over the seeds."""
    out = dict(task=task, method=method, regime=regime, seeds=[r["seed"] for r in per_seed])
    for key in ("psnr", "ssim"):
        per_image = torch.tensor([r[key] for r in per_seed], dtype=torch.float64)
        means = per_image.mean(1)
        out[key] = per_image.mean(0).tolist()
        out[f"{key}_seeds"] = means.tolist()
        out[f"{key}_mean"] = float(means.mean())
        out[f"{key}_std"] = (
            float(means.std(unbiased=True)) if len(per_seed) > 1 else per_seed[0][f"{key}_std"]
        )
    out["std_over"] = "seeds" if len(per_seed) > 1 else "images"
    nfe = [r["nfe"] for r in per_seed if r.get("nfe") is not None]
    out["nfe"] = sum(nfe) / len(nfe) if nfe else None
    out["train_s"] = sum(r["train_s"] for r in per_seed)
    out["eval_s"] = sum(r["eval_s"] for r in per_seed)
    if any("counts" in r for r in per_seed):
        out["fwd_converged"] = _fraction(per_seed, "forward")
        out["bwd_converged"] = _fraction(per_seed, "backward")
        out["fwd_iters"] = _mean_iters(per_seed, "forward")
        out["bwd_iters"] = _mean_iters(per_seed, "backward")
        out["fwd_iters_max"] = max(
            r["counts"][p]["forward"]["nfe_max"] for r in per_seed for p in r["counts"]
        )
        out["bwd_iters_max"] = max(
            r["counts"][p]["backward"]["nfe_max"] for r in per_seed for p in r["counts"]
        )
    for key in (
        "equivariance",
        "val_change_last20",
        "unrolled_iters",
        "unrolled_iters_from",
        "settings",
    ):
        values = [r[key] for r in per_seed if r.get(key) is not None]
        if values:
            out[key] = (
                sum(values) / len(values) if isinstance(values[0], (int, float)) else values[0]
            )
    out["per_seed"] = [{k: v for k, v in r.items() if k not in ("counts",)} for r in per_seed]
    return out


def _run_name(folder: Path) -> tuple[str, str, str]:
    # (task, method, regime) of a run folder OUT/<task>/<method>[-<regime>]
    name = folder.name
    method, _, regime = (
        name.rpartition("-")
        if name.rsplit("-", 1)[-1] in ("sup", "ei", "mc")
        else (name, "", "none")
    )
    return check_run(folder.parent.name, method, regime)


def load_run(folder, cfg: ExperimentConfig | None = None, seed: int | None = None):
    r"""The trained model of one seed of a finished run, as it was evaluated.

    :param str folder: the run folder (``OUT/<task>/<method>[-<regime>]``).
    :param ExperimentConfig cfg: settings; default those stored with the run.
    :param int seed: the seed (default: the run's first).
    :return: ``(model, seed_result)``: the model in evaluation mode on ``cfg.device``, and the
        seed's stored result (``{}`` if none).
    :raises FileNotFoundError: for a folder that is not a run, or a run not trained yet.
    """
    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"'{folder}' is not a run folder (no config.json).")
    cfg = cfg or ExperimentConfig(**json.loads((folder / "config.json").read_text()))
    task, method, _ = _run_name(folder)
    seed = cfg.seed if seed is None else seed
    sub = folder / f"seed_{seed}"
    seed_result = (
        json.loads((sub / "result.json").read_text()) if (sub / "result.json").exists() else {}
    )
    denoiser = None
    settings = dict(seed_result.get("settings") or {})
    if "unrolled_iters" in seed_result:
        settings["unrolled_iters"] = seed_result["unrolled_iters"]
    if method in ("pnp", "red"):
        if "sigma" not in settings:
            raise FileNotFoundError(f"'{sub}': no chosen PnP/RED settings; run it first.")
        denoiser = build_denoiser(task, cfg)
        weights = folder.parent / f"denoiser_{settings.pop('sigma'):g}" / "model.pt"
        denoiser.load_state_dict(torch.load(weights, map_location=cfg.device))
    model = build_model(task, method, cfg, denoiser=denoiser, settings=settings)
    if method not in FIXED:
        weights = sub / "model.pt"
        if not weights.exists():
            raise FileNotFoundError(
                f"'{folder}': no trained weights ({weights.name}); train the run first."
            )
        model.load_state_dict(torch.load(weights, map_location=cfg.device))
    model.eval()
    return model, seed_result


def reevaluate(folder, cfg: ExperimentConfig | None = None, log=print) -> dict:
    r"""Evaluate the trained weights of a finished run again (``deepinv-deq eval``).

    :param str folder: the run folder (holding ``config.json`` and ``seed_<s>/model.pt``).
    :param ExperimentConfig cfg: settings; default those stored with the run (``n_test``, ``device``
        may differ from training).
    """
    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"'{folder}' is not a run folder (no config.json).")
    cfg = cfg or ExperimentConfig(**json.loads((folder / "config.json").read_text()))
    task, method, regime = _run_name(folder)
    physics = build_physics(task, cfg)
    test = held_out_measurements(task, cfg, split="test")
    old = (
        json.loads((folder / "result.json").read_text())
        if (folder / "result.json").exists()
        else {}
    )
    per_seed = []
    seeds = [cfg.seed] if method in FIXED else cfg.seed_list()
    for seed in seeds:
        model, seed_result = load_run(folder, cfg, seed)
        counter = SolveCounter(model)
        result = evaluate(model, task, cfg, physics, test, counter=counter)
        result.pop("samples")
        result.update(seed=seed, train_s=seed_result.get("train_s", 0.0))
        if method in SOLVED:
            result["counts"] = counter.counts
        counter.remove()
        per_seed.append(result)
    result = aggregate(task, method, regime, per_seed)
    result.update(train_s=old.get("train_s"), skipped=False)
    log(
        f"[{task}] {method:>9s} {regime:>4s}: PSNR {result['psnr_mean']:.2f} +- {result['psnr_std']:.2f} dB"
    )
    return result


def split_counts(cfg: ExperimentConfig) -> tuple[int, int, int]:
    r"""Images of the training, test and validation splits (disjoint, drawn together)."""
    return (cfg.n_train, cfg.n_test, cfg.n_val)


def real_ct_reconstructions(out, cfg: ExperimentConfig, runs) -> tuple[torch.Tensor, list]:
    r"""Reconstructions of the real CT slices (:func:`deepinv_deq.data.real_ct_test_images`, the
    ``[realdata]`` extra) by the first seed of each finished CT run of ``out``: a test of models
    trained on phantoms on real anatomy (measurements with the task's operator and noise, the
    noise drawn from a generator of its own).

    :param str out: a folder holding the CT runs (``out/ct/<run>``).
    :param ExperimentConfig cfg: the runs' settings.
    :param list runs: ``(method, regime)`` pairs; unfinished ones are left out.
    :return: ``(x, panels)``: the real images ``(4, 1, n, n)`` and one ``(method, regime, x_hat,
        psnr)`` per run, ``psnr`` per image.
    :raises ImportError: without the ``[realdata]`` extra.
    """
    import deepinv as dinv

    from ..data import real_ct_test_images
    from .layout import run_dir

    x = real_ct_test_images(cfg.img_size).to(cfg.device)
    physics = build_physics("ct", cfg, rng=generator(cfg, "ct", "real-ct-noise"))
    with torch.no_grad():
        y = physics(x)
    psnr = dinv.metric.PSNR(max_pixel=1.0)
    panels = []
    for method, regime in runs:
        folder = run_dir(out, "ct", method, regime)
        if not (folder / "result.json").exists():
            continue
        model, _ = load_run(folder, cfg)
        with torch.no_grad():
            x_hat = model(y, physics).clamp(0, 1)
        panels.append((method, regime, x_hat.cpu(), psnr(x_hat, x).flatten().tolist()))
    return x.cpu(), panels
