r"""Training of one run ``(task, method, regime)``, once per seed (resumable, seeds in parallel
processes), with the settings of PnP and RED chosen on the validation images.

Where a run lives and when its settings match: :mod:`~deepinv_deq.experiments.layout`; its
evaluation: :mod:`~deepinv_deq.experiments.evaluation`.

Fairness: for a seed :math:`s`, every method sees the same training batches, the same noise draws
and the same EI transformations (seeded generators), the same initial denoiser (same
initialisation seed) and the same held-out measurements; non-convergence warnings are never
filtered and every solve of a DEQ is counted (:class:`~deepinv_deq.experiments.training.SolveCounter`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch

from ..data import load_dataset
from .configs import FIXED, SOLVED, ExperimentConfig, check_run
from .evaluation import aggregate, equivariance, evaluate, held_out_measurements, magnitude
from .evaluation import split_counts
from .layout import check_settings, extend_run, run_dir
from .methods import build_denoiser, build_losses, build_model
from .plateau import flattened
from .results import percent
from .seeds import generator, seed_for
from .tasks import build_physics
from .training import SolveCounter, train, validation_psnr

#: PnP/RED settings searched on the validation images: training noise levels of the denoiser,
#: PnP step sizes and RED weights (RED's step is 1 / (1 + lambda)).
PNP_SIGMAS = (0.02, 0.05, 0.1)
PNP_STEPSIZES = (0.5, 1.0)
RED_LAMBDAS = (0.2, 1.0, 5.0)


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
    check_settings(folder, cfg)
    torch.manual_seed(seed_for(cfg, task, "denoiser-init"))
    denoiser = build_denoiser(task, cfg)
    weights = folder / "model.pt"
    if weights.exists():
        denoiser.load_state_dict(torch.load(weights, map_location=cfg.device))
        return denoiser
    noise = generator(cfg, task, "denoiser-noise", str(sigma))
    physics = dinv.physics.Denoising(
        dinv.physics.GaussianNoise(sigma=sigma, rng=noise), device=cfg.device
    )
    data = load_dataset(
        cfg.data, task, cfg.n_train, cfg.size_of(task), cfg.seed, split=0, counts=split_counts(cfg)
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
        seed_for(cfg, task, "denoiser"),
        cfg.denoiser_epochs,
        label=f"{task} denoiser {sigma:g}",
        log=log,
    )
    torch.save(denoiser.state_dict(), weights)
    return denoiser


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
    torch.manual_seed(seed_for(scfg, task, "init"))
    model = build_model(task, method, cfg, denoiser=denoiser, settings=settings)
    counter = SolveCounter(model)
    history = None
    if method not in FIXED:
        noise = generator(scfg, task, "train-noise")
        transforms = generator(scfg, task, "transforms")
        train_physics = build_physics(task, cfg, rng=noise)
        losses = build_losses(regime, cfg, rng=transforms)
        data = load_dataset(
            cfg.data_of(task), task, cfg.n_train, cfg.size_of(task), cfg.seed, 0, split_counts(cfg)
        )
        log(f"{label}: training {cfg.epochs} epochs on {cfg.n_train} images (seed {seed})")
        history = train(
            model,
            train_physics,
            losses,
            data,
            cfg,
            folder,
            seed_for(scfg, task, "batches"),
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
        result["equivariance"] = equivariance(model, task, cfg, physics, test)
    counter.remove()
    torch.save(samples, folder / "samples.pt")
    done.write_text(json.dumps(result, indent=1))
    return result, samples


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
        check_settings(folder, cfg)
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
        extend_run(out, folder, task, method, cfg, log, label)
    progress = progress or verbose
    check_settings(folder, cfg)
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
