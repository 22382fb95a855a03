r"""Training and evaluation of one run ``(task, method, regime)``, once per seed.

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

Fairness: for a seed :math:`s`, every method sees the same training batches, the same noise draws
and the same EI transformations (seeded generators), the same initial denoiser (same
initialisation seed) and the same held-out measurements; non-convergence warnings are never
filtered and every solve of a DEQ is counted (:class:`~deepinv_deq.experiments.training.SolveCounter`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import torch

from .configs import ExperimentConfig, FIXED, SOLVED, check_run
from .results import percent
from .methods import build_denoiser, build_losses, build_model
from .tasks import build_physics
from .plateau import flattened
from .training import SolveCounter, train, validation_psnr
from ..data import load_dataset

N_SAMPLES = 2  # test images whose reconstructions are kept for the figures
#: PnP/RED settings searched on the validation images: training noise levels of the denoiser,
#: PnP step sizes and RED weights (RED's step is 1 / (1 + lambda)).
PNP_SIGMAS = (0.02, 0.05, 0.1)
PNP_STEPSIZES = (0.5, 1.0)
RED_LAMBDAS = (0.2, 1.0, 5.0)


def run_dir(out: Path, task: str, method: str, regime: str) -> Path:
    r"""Folder of a run."""
    name = method if regime == "none" else f"{method}-{regime}"
    return Path(out) / task / name


def _seed_for(cfg: ExperimentConfig, *names: str) -> int:
    # a stable seed per run (python's hash() is salted per process)
    import zlib

    return (cfg.seed * 1000003 + zlib.crc32("/".join(names).encode())) % (2**31)


class RunSettingsError(ValueError):
    r"""The output folder holds a run with other settings (the command line reports it as a
    usage error)."""


def _check_settings(folder: Path, cfg: ExperimentConfig) -> None:
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


def _extend(
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


def _generator(cfg: ExperimentConfig, *names) -> torch.Generator:
    return torch.Generator(cfg.device).manual_seed(_seed_for(cfg, *names))


class _DenoiserReconstructor(torch.nn.Module):
    # trains a denoiser on the Denoising physics: model(y, physics) = D(y, sigma)
    def __init__(self, denoiser, sigma: float):
        super().__init__()
        self.denoiser = denoiser
        self.sigma = sigma

    def forward(self, y, physics, **kwargs):
        return self.denoiser(y, self.sigma)


def train_denoiser(
    task: str,
    cfg: ExperimentConfig,
    out: Path,
    sigma: float | None = None,
    progress: bool = True,
    log=print,
):
    r"""The denoiser of PnP/RED, trained once per task and noise level ``sigma`` (default
    ``cfg.sigma_denoiser``) as a Gaussian denoiser on the clean training images; cached in
    ``OUT/<task>/denoiser_<sigma>``.

    :return: the trained denoiser.
    """
    import deepinv as dinv

    sigma = cfg.sigma_denoiser if sigma is None else sigma
    folder = Path(out) / task / f"denoiser_{sigma:g}"
    _check_settings(folder, cfg)
    torch.manual_seed(_seed_for(cfg, task, "denoiser-init"))
    denoiser = build_denoiser(task, cfg)
    weights = folder / "model.pt"
    if weights.exists():
        denoiser.load_state_dict(torch.load(weights, map_location=cfg.device))
        return denoiser
    noise = _generator(cfg, task, "denoiser-noise", str(sigma))
    physics = dinv.physics.Denoising(
        dinv.physics.GaussianNoise(sigma=sigma, rng=noise), device=cfg.device
    )
    data = load_dataset(
        cfg.data, task, cfg.n_train, cfg.size_of(task), cfg.seed, split=0, counts=_counts(cfg)
    )
    model = _DenoiserReconstructor(denoiser, sigma)
    # the Gaussian denoiser trains for its own budget, denoiser_epochs, with either budget rule:
    # the plateau rule watches a reconstruction's validation PSNR, which a denoiser has not
    train(
        model,
        physics,
        [dinv.loss.SupLoss()],
        data,
        dataclasses.replace(cfg, budget="fixed"),
        folder,
        _seed_for(cfg, task, "denoiser"),
        cfg.denoiser_epochs,
        label=f"{task} denoiser {sigma:g}",
        log=log,
    )
    torch.save(denoiser.state_dict(), weights)
    return denoiser


def _counts(cfg: ExperimentConfig) -> tuple[int, int, int]:
    return (cfg.n_train, cfg.n_test, cfg.n_val)


def held_out_measurements(task: str, cfg: ExperimentConfig, split: str = "test"):
    r"""Held-out images and their measurements, identical for every method and seed (their noise
    comes from a generator of their own).

    :param str split: ``"test"`` (``cfg.n_test`` images) or ``"val"`` (``cfg.n_val`` images).
    :return: list of ``(x, y)`` batches on ``cfg.device``.
    """
    index, n = {"test": (1, cfg.n_test), "val": (2, cfg.n_val)}[split]
    data = load_dataset(
        cfg.data_of(task), task, n, cfg.size_of(task), cfg.seed, split=index, counts=_counts(cfg)
    )
    noisy = build_physics(task, cfg, rng=_generator(cfg, task, f"{split}-noise"))
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


def _equivariance(model, task, cfg, physics, batches) -> float:
    import deepinv as dinv
    from ..diagnostics import equivariance_error

    rng = _generator(cfg, task, "equivariance")
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


def _choose_fixed(task, method, cfg, out, physics, val, progress, log):
    # PnP / RED: the denoiser's training noise level and the step (PnP) or weight (RED) with the
    # best validation PSNR, each iterated to cfg.tol
    grid = PNP_STEPSIZES if method == "pnp" else RED_LAMBDAS
    best = None
    tried = []
    for sigma in PNP_SIGMAS:
        denoiser = train_denoiser(task, cfg, out, sigma, progress, log)
        for value in grid:
            settings = (
                {"stepsize": value}
                if method == "pnp"
                else {"lambda_reg": value, "stepsize": cfg.stepsize / (1 + value)}
            )
            model = build_model(task, method, cfg, denoiser=denoiser, settings=settings)
            score = validation_psnr(model, physics, val, magnitude)
            tried.append(dict(sigma=sigma, **settings, val_psnr=score))
            if best is None or score > best[0]:
                best = (score, denoiser, dict(sigma=sigma, **settings))
    return best[1], best[2], tried


def _unrolled_iters(task, regime, cfg, out, seed, physics, val) -> tuple[int, str]:
    # K = the mean forward iterations of the implicit DEQ trained in the same regime and seed
    # (during its training), when that run is done; else those of the untrained DEQ on the
    # validation images
    done = run_dir(out, task, "deq", regime) / f"seed_{seed}" / "result.json"
    if done.exists():
        iters = json.loads(done.read_text()).get("train", {}).get("fwd_iters")
        if iters:
            return max(1, round(iters)), f"deq-{regime} seed {seed} (training)"
    model = build_model(task, "deq-init", cfg)
    model.eval()
    nfe = []
    with torch.no_grad():
        for _, y in val:
            model(y, physics)
            nfe.append(model.forward_stats.nfe)
    return max(1, round(sum(nfe) / len(nfe))), "untrained DEQ (validation)"


def _run_seed(task, method, regime, cfg, out, seed, physics, val, test, progress, log, label):
    folder = run_dir(out, task, method, regime) / f"seed_{seed}"
    done = folder / "result.json"
    if done.exists():
        return json.loads(done.read_text()), torch.load(folder / "samples.pt")
    folder.mkdir(parents=True, exist_ok=True)
    scfg = ExperimentConfig(**{**cfg.to_dict(), "seed": seed})
    extra, denoiser, settings = {}, None, {}
    if method in ("pnp", "red"):
        denoiser, settings, tried = _choose_fixed(
            task, method, cfg, out, physics, val, progress, log
        )
        extra.update(settings=settings, tried=tried)
    earlier = sorted(
        (int(p.stem[len("result_epochs") :]), json.loads(p.read_text()))
        for p in folder.glob("result_epochs*.json")
    )
    if earlier:  # an extended run: keep the K it was trained with
        extra["extended_from_epochs"] = [e for e, _ in earlier]
        earlier = [r for _, r in earlier]
    if method == "unrolled" and not cfg.unrolled_iters:
        if earlier and "unrolled_iters" in earlier[0]:
            settings["unrolled_iters"] = earlier[0]["unrolled_iters"]
            extra["unrolled_iters_from"] = earlier[0].get("unrolled_iters_from")
        else:
            settings["unrolled_iters"], extra["unrolled_iters_from"] = _unrolled_iters(
                task, regime, cfg, out, seed, physics, val
            )
        extra["unrolled_iters"] = settings["unrolled_iters"]
    # the same initial weights for every method of a seed (same initialisation seed)
    torch.manual_seed(_seed_for(scfg, task, "init"))
    model = build_model(task, method, cfg, denoiser=denoiser, settings=settings)
    counter = SolveCounter(model)
    history = None
    if method not in FIXED:
        noise = _generator(scfg, task, "train-noise")
        transforms = _generator(scfg, task, "transforms")
        train_physics = build_physics(task, cfg, rng=noise)
        losses = build_losses(regime, cfg, rng=transforms)
        data = load_dataset(
            cfg.data_of(task), task, cfg.n_train, cfg.size_of(task), cfg.seed, 0, _counts(cfg)
        )
        log(f"{label}: training {cfg.epochs} epochs on {cfg.n_train} images (seed {seed})")
        history = train(
            model,
            train_physics,
            losses,
            data,
            cfg,
            folder,
            _seed_for(scfg, task, "batches"),
            cfg.epochs,
            val_batches=val,
            to_image=magnitude,
            counter=counter,
            label=label,
            progress=progress,
            log=log,
        )
        torch.save(model.state_dict(), folder / "model.pt")
        (folder / "history.json").write_text(json.dumps(history, indent=1))
    result = evaluate(model, task, cfg, physics, test, counter=counter)
    samples = result.pop("samples")
    result.update(seed=seed, train_s=history["train_s"] if history else 0.0, **extra)
    if history is not None:
        result["epochs"] = history["epochs_done"]
        result["val_change_last20"] = flattened(history)
        result["plateau"] = history.get("plateau")
    if method in SOLVED:
        result["counts"] = counter.counts
        for phase in ("train", "test"):
            result[phase] = counter.summary(phase)
    if cfg.equivariance and (method not in FIXED or method == "deq-init"):
        result["equivariance"] = _equivariance(model, task, cfg, physics, test)
    counter.remove()
    torch.save(samples, folder / "samples.pt")
    done.write_text(json.dumps(result, indent=1))
    return result, samples


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


def _seed_job(args: tuple, log=None):
    # one seed of a run, from picklable arguments: the physics and held-out measurements are
    # built afresh for each seed, so a seed's result does not depend on which seeds ran before
    # it in the same process (the same with jobs=1 and jobs>1)
    task, method, regime, cfg, out, seed, progress, label = args
    cfg = ExperimentConfig(**cfg)
    messages = []
    log = messages.append if log is None else log
    physics = build_physics(task, cfg)
    val = held_out_measurements(task, cfg, split="val")
    test = held_out_measurements(task, cfg, split="test")
    result, samples = _run_seed(
        task, method, regime, cfg, Path(out), seed, physics, val, test, progress, log, label
    )
    return result, samples, messages


def _worker_init(threads: int) -> None:
    import warnings

    torch.set_num_threads(threads)
    # one line per warning, as the command line prints them (cli.one_line_warnings)
    warnings.formatwarning = lambda message, category, *a, **k: f"{category.__name__}: {message}\n"


def train_in_parallel(runs, cfg: ExperimentConfig, out, jobs: int, progress=False, log=print):
    r"""Train the seeds of several runs at the same time, ``jobs`` processes at a time.

    Every seed of every trained run (``deq``, ``deq-jfb``, ``unet``) of ``runs`` that is not done
    yet is trained in its own process (spawned, with the current number of torch threads), as
    :func:`run` would train it; :func:`run` then finds the seeds done and aggregates them. Runs
    that depend on others (``unrolled`` takes its number of iterations from the DEQ's; PnP and RED
    share trained denoisers) and the untrained methods are left to :func:`run`. A seed's result
    does not depend on ``jobs`` (up to float rounding, ~1e-7 relative: a fresh process).

    :param list runs: ``(task, method, regime)`` triples.
    :param ExperimentConfig cfg: settings.
    :param str out: output directory.
    :param int jobs: number of processes.
    :param bool progress: collect the training curves' lines too (printed when a seed ends).
    :param Callable log: where messages go.
    :return: (int) the number of seeds trained.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    out = Path(out)
    pending = []
    for task, method, regime in runs:
        task, method, regime = check_run(task, method, regime)
        if method in FIXED or method == "unrolled":
            continue
        folder = run_dir(out, task, method, regime)
        _check_settings(folder, cfg)
        if (folder / "result.json").exists():
            continue
        label = f"{task} {method} {regime}"
        for seed in cfg.seed_list():
            if not (folder / f"seed_{seed}" / "result.json").exists():
                args = (task, method, regime, cfg.to_dict(), str(out), seed, progress, label)
                pending.append(args)
    if not pending:
        return 0
    log(f"training {len(pending)} seed(s) in {min(jobs, len(pending))} processes")
    context = multiprocessing.get_context("spawn")
    threads = torch.get_num_threads()
    with ProcessPoolExecutor(
        min(jobs, len(pending)), mp_context=context, initializer=_worker_init, initargs=(threads,)
    ) as pool:
        futures = [pool.submit(_seed_job, args) for args in pending]
        for args, future in zip(pending, futures, strict=True):
            result, _, messages = future.result()
            for message in messages:
                log(message)
            log(f"{args[-1]} seed {args[5]}: PSNR {result['psnr_mean']:.2f} dB")
    return len(pending)


def run(
    task: str,
    method: str,
    regime: str | None,
    cfg: ExperimentConfig,
    out,
    progress: bool = True,
    log=print,
    label: str | None = None,
    verbose: bool = False,
    overwrite: bool = False,
    extend: bool = False,
) -> dict:
    r"""Train (if needed, once per seed of ``cfg.seed_list()``) and evaluate one run; resumable.

    Methods without training (``pinv``, ``pnp-tv``, ``deq-init``, ``pnp``, ``red``) run once.

    :param str task: ``"ct"`` or ``"mri"``.
    :param str method: a method name (see :data:`deepinv_deq.experiments.configs.METHODS`).
    :param str regime: ``"sup"``, ``"ei"``, ``"mc"``; ``None``/``"none"`` for fixed methods.
    :param ExperimentConfig cfg: settings.
    :param str out: output directory.
    :param bool progress: print the training curve as it is measured.
    :param Callable log: where progress messages go.
    :param str label: name of the run in the messages (e.g. ``"run 3/7: ct deq ei"``).
    :param bool verbose: also print the training curve (as ``progress``).
    :param bool overwrite: delete the run's folder first (train again from scratch).
    :param bool extend: when the run's folder holds a run with fewer ``epochs`` and otherwise the
        same settings, train it on from its last checkpoint up to ``cfg.epochs`` in total (see
        :func:`~deepinv_deq.experiments.training.train` for the learning-rate schedule). The
        result's ``train_s`` is the training time of all the segments.
    :return: the run's result (also in ``result.json``); ``skipped`` is ``True`` if it was done before.
    """
    task, method, regime = check_run(task, method, regime)
    label = label or f"{task} {method} {regime}"
    out = Path(out)
    folder = run_dir(out, task, method, regime)
    if overwrite and extend:
        raise ValueError("run: 'overwrite' and 'extend' cannot both be set.")
    if overwrite and folder.exists():
        shutil.rmtree(folder)
    if extend:
        _extend(out, folder, task, method, cfg, log, label)
    progress = progress or verbose
    _check_settings(folder, cfg)
    result_path = folder / "result.json"
    if result_path.exists():
        result = json.loads(result_path.read_text())
        result["skipped"] = True
        log(f"{label}: done before, skipped (PSNR {result['psnr_mean']:.2f} dB)")
        return result
    seeds = [cfg.seed] if method in FIXED else cfg.seed_list()
    args = [
        (task, method, regime, cfg.to_dict(), str(out), seed, progress, label) for seed in seeds
    ]
    outcomes = [_seed_job(a, log)[:2] for a in args]
    per_seed = [r for r, _ in outcomes]
    samples = outcomes[0][1]
    result = aggregate(task, method, regime, per_seed)
    torch.save(samples, folder / "samples.pt")
    result_path.write_text(json.dumps(result, indent=1))
    result["skipped"] = False
    conv = ""
    if result.get("fwd_converged") is not None:
        bwd = result.get("bwd_converged")
        conv = (
            f", converged fwd {percent(result['fwd_converged'])} "
            f"({result['fwd_iters']:.1f} it), bwd "
            + ("-" if bwd is None else f"{percent(bwd)} ({result['bwd_iters']:.1f} it)")
        )
    spread = (
        f"+- {result['psnr_std']:.2f} dB over {len(seeds)} seeds"
        if len(seeds) > 1
        else f"(std {result['psnr_std']:.2f} dB over the test images, 1 seed)"
    )
    log(
        f"{label}: PSNR {result['psnr_mean']:.2f} {spread}{conv} "
        f"(train {result['train_s']:.0f} s CPU)"
    )
    return result


def reevaluate(folder, cfg: ExperimentConfig | None = None, log=print) -> dict:
    r"""Evaluate the trained weights of a finished run again (``deepinv-deq eval``).

    :param str folder: the run folder (holding ``config.json`` and ``seed_<s>/model.pt``).
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
    method, _, regime = (
        name.rpartition("-")
        if name.rsplit("-", 1)[-1] in ("sup", "ei", "mc")
        else (name, "", "none")
    )
    task, method, regime = check_run(task, method, regime)
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
