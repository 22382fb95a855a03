r"""What the commands of ``deepinv-deq`` do once their arguments are valid: settings, machine,
the runs of each command, their tables and figures (:mod:`deepinv_deq.experiments.cli` parses
and checks the arguments). Torch and deepinv are imported on first use, so that ``--help`` stays
fast.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import sys
from pathlib import Path

from . import configs
from .configs import DEMO_RUNS, FIXED, METHODS, REGIMES, TASKS, ExperimentConfig


def option_message(message: str) -> str:
    """A validation message naming the option as typed (``'img_size'`` -> ``--img-size``)."""
    message = " ".join(str(message).split())
    message = re.sub(r"^(ExperimentConfig|run|deepinv-deq|claims): ", "", message)
    return re.sub(r"^'(\w+)'", lambda m: "--" + m.group(1).replace("_", "-"), message)


def check_data(cfg, tasks, error) -> None:
    """Open the real-data folder for each task (train and test splits) before any run starts."""
    if cfg.data == "phantoms":
        return
    from ..data import load_dataset

    for task in tasks:
        size = cfg.size_of(task) if hasattr(cfg, "size_of") else cfg.img_size
        try:
            # all the splits at once: disjoint, and n_train + n_test + n_val <= the images
            counts = (cfg.n_train, cfg.n_test, getattr(cfg, "n_val", 0))
            load_dataset(cfg.data, task, cfg.n_train, size, cfg.seed, split=0, counts=counts)
            load_dataset(cfg.data, task, cfg.n_test, size, cfg.seed, split=1, counts=counts)
        except (FileNotFoundError, ValueError, ImportError, OSError) as e:
            error(
                f"--data: not usable for {task}: " + re.sub(r"^\w+: ", "", " ".join(str(e).split()))
            )


def load_package() -> None:
    """Complete ``import deepinv_deq`` if the launcher imported it for parsing only (torch, deepinv,
    registration)."""
    import importlib

    import deepinv_deq

    if not hasattr(deepinv_deq, "DEQ"):
        importlib.reload(deepinv_deq)


def settings(args, error) -> ExperimentConfig:
    """The settings: the preset with the options given (validated without importing torch)."""
    names = {f.name for f in dataclasses.fields(ExperimentConfig)}
    overrides = {n: getattr(args, n) for n in names if n != "device" and hasattr(args, n)}
    try:
        return ExperimentConfig.from_preset(args.size, device=args.device, **overrides)
    except ValueError as e:
        error(option_message(e))


def one_line_warnings() -> None:
    r"""Print warnings as one line, ``Category: message``, without the source path and line that
    Python's default format adds (a path inside site-packages or multiprocessing tells a user of
    the command line nothing)."""
    import warnings

    warnings.formatwarning = lambda message, category, *args, **kwargs: (
        f"{category.__name__}: {message}\n"
    )


def setup_machine(args, error) -> None:
    """Apply ``--threads`` and ``--jobs`` (their defaults depend on the device); check ``--device``."""
    import torch

    one_line_warnings()
    cpu = not args.device.startswith("cuda")
    if args.threads is None and cpu:
        args.threads = 1
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if hasattr(args, "jobs") and args.jobs is None:
        parallel = cpu and args.command == "demo"
        args.jobs = min(2, os.cpu_count() or 1) if parallel else 1
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        error(f"--device {args.device}: CUDA is not available on this machine")


def versions(device: str) -> dict:
    from importlib import metadata

    import torch

    import deepinv_deq

    info = {
        "deepinv-deq": deepinv_deq.__version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "device": device,
    }
    try:
        info["deepinv"] = metadata.version("deepinv")
    except metadata.PackageNotFoundError:  # pragma: no cover
        info["deepinv"] = None
    if device.startswith("cuda"):
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return info


def save_meta(out: Path, cfg: ExperimentConfig, argv) -> None:
    (out / "experiment.json").write_text(
        json.dumps(
            {
                "command": "deepinv-deq " + " ".join(argv),
                "config": cfg.to_dict(),
                "versions": versions(cfg.device),
            },
            indent=1,
        )
    )


def selected_runs(args, error) -> list[tuple[str, str, str]]:
    if args.command == "demo":
        return [("ct", m, r) for m, r in DEMO_RUNS]
    if args.command == "train":
        if args.method in FIXED:
            if args.regime is not None:
                error(f"--regime: method '{args.method}' is not trained end to end: no regime")
            return [(args.task, args.method, "none")]
        if args.regime is None:
            error(f"--regime is required for method '{args.method}' (one of {', '.join(REGIMES)})")
        return [(args.task, args.method, args.regime)]
    chosen = {}
    preset = configs.PRESET_RUNS.get(args.size, {})
    for name, value, choices in (
        ("tasks", args.tasks, TASKS),
        ("methods", args.methods, METHODS),
        ("regimes", args.regimes, REGIMES),
    ):
        value = preset.get(name, "all") if value is None else value
        try:
            chosen[name] = configs.parse_list(name, value, choices)
        except ValueError as e:
            error(option_message(e))
    runs = [(t, m, "none") for t in chosen["tasks"] for m in chosen["methods"] if m in FIXED]
    runs += [
        (t, m, r)
        for t in chosen["tasks"]
        for m in chosen["methods"]
        if m not in FIXED
        for r in chosen["regimes"]
    ]
    runs.sort(key=lambda x: (x[0], list(METHODS).index(x[1])))
    return runs


def _run_kwargs(run, args, index: int, total: int, task: str, method: str, regime: str) -> dict:
    """Options of :func:`~deepinv_deq.experiments.runner.run` this runner version supports."""
    params = inspect.signature(run).parameters
    wanted = {
        "verbose": args.verbose,
        "overwrite": args.overwrite,
        "extend": getattr(args, "extend", False),
        "label": f"run {index}/{total}: {task} {method}"
        + ("" if regime == "none" else f" {regime}"),
    }
    return {k: v for k, v in wanted.items() if k in params and v}


def train_runs(cfg, out, runs, progress, log, args):
    from .runner import run, train_in_parallel

    if (getattr(args, "jobs", None) or 1) > 1 and not getattr(args, "extend", False):
        if args.overwrite:  # start afresh here, then train the seeds in parallel
            import shutil

            from .layout import run_dir

            for task, method, regime in runs:
                shutil.rmtree(run_dir(Path(out), task, method, regime), ignore_errors=True)
            args.overwrite = False
        train_in_parallel(runs, cfg, out, args.jobs, progress=args.verbose, log=log)
    return [
        run(
            task,
            method,
            regime,
            cfg,
            out,
            progress=progress,
            log=log,
            **_run_kwargs(run, args, i, len(runs), task, method, regime),
        )
        for i, (task, method, regime) in enumerate(runs, 1)
    ]


def report(results, cfg, out: Path, name: str, log, say, figures: bool = True) -> None:
    from .figures import figure
    from .results import markdown, write_tables
    from .evaluation import held_out_measurements, magnitude

    paths = write_tables(results, out, name=name, config=cfg.to_dict())
    say("")
    say(markdown(results))
    written = [str(p) for p in paths.values()]
    if figures:
        for task in sorted({r["task"] for r in results}):
            x, _ = held_out_measurements(task, cfg)[0]
            path = figure(
                results, out, task, out / f"figure_{task}.png", reference=magnitude(x)[0].cpu()
            )
            written.append(str(path))
            curves = path.with_name(f"curves_{task}.png")
            if curves.exists():
                written.append(str(curves))
    say("written: " + ", ".join(written))


def reevaluate_all(args, out: Path, log, say, error) -> int:
    from .results import markdown, write_tables
    from .evaluation import reevaluate

    # run folders only (<method> or <method>-<regime>), not the denoisers of PnP and RED
    # (denoiser_<sigma>), which hold a config.json too
    names = set(METHODS) | {f"{m}-{r}" for m in METHODS for r in REGIMES}
    folders = sorted(p.parent for p in out.glob("*/*/config.json") if p.parent.name in names)
    if not folders:
        error(f"--out: no trained run found in '{out}'")
    results = []
    for folder in folders:
        stored = json.loads((folder / "config.json").read_text())
        if args.n_test is not None:
            stored["n_test"] = args.n_test
        cfg = ExperimentConfig(**{**stored, "device": args.device})
        results.append(reevaluate(folder, cfg, log=log))
    paths = write_tables(results, out, name="eval")
    say("")
    say(markdown(results))
    say("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


def claims(args, out: Path, argv, progress, log, say, error) -> int:
    r"""``deepinv-deq claims``: train (resumably) the runs of every chosen configuration, then
    judge the claims and write their tables and figures into ``out``."""
    import time

    from . import claims as c
    from .figures import claims_forest, claims_null_space
    from .layout import RunSettingsError

    try:
        names = c.names_of(args.configurations)
    except ValueError as e:
        error(option_message(e))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.partial:
        return _partial_claims(c, names, out, args, argv, log, say, error)
    try:
        results = c.measure(
            names,
            out,
            size=args.size,
            jobs=args.jobs,
            progress=progress,
            log=log,
            device=args.device,
        )
    except RunSettingsError as e:
        error(option_message(e))
    rows = c.judge(results)
    facts, gaps = {}, {}
    for name in names:
        task, cfg = c.configuration_settings(name, args.size, device=args.device)
        facts[name] = c.facts(name, cfg)
        facts[name]["gain_correlation"] = c.gain_correlation(results[name], facts[name])
        facts[name]["train_cpu_s"] = sum(r.get("train_s") or 0.0 for r in results[name])
        gaps[name] = c.validation_gap(out / name, task)
    paths = c.write(rows, out, facts)
    _save_command(out / "claims_experiment.json", argv, args.device)
    written = [str(p) for p in paths.values()]
    for path in (
        claims_forest(rows, c.CLAIMS, out / "claims.png"),
        claims_null_space(rows, facts, gaps, out / "claims_null_space.png"),
    ):
        if path is not None:
            written.append(str(path))
    written += _real_ct_figures(names, out, args, log)
    say("")
    say(c.markdown(rows, facts))
    say("written: " + ", ".join(written))
    log(f"total time {time.perf_counter() - t0:.0f} s")
    return 0


def _save_command(path: Path, argv, device: str) -> None:
    # the command line and the versions behind a claims table
    record = {"command": "deepinv-deq " + " ".join(argv), "versions": versions(device)}
    path.write_text(json.dumps(record, indent=1))


def _partial_claims(c, names, out: Path, args, argv, log, say, error) -> int:
    # ``claims --partial``: the claims on the seeds finished so far, nothing trained
    from .figures import claims_forest, training_curves
    from .layout import RunSettingsError
    from .results import write_tables

    try:
        results = c.finished(names, out, size=args.size, device=args.device)
    except RunSettingsError as e:
        error(option_message(e))
    facts, written = {}, []
    for name in names:
        runs = ", ".join(f"{r['method']} {r['regime']} {r['partial']}" for r in results[name])
        log(f"{name}: seeds finished: {runs or 'none'}")
        if results[name]:
            task, cfg = c.configuration_settings(name, args.size, device=args.device)
            facts[name] = c.facts(name, cfg)
            facts[name]["train_cpu_s"] = sum(r.get("train_s") or 0.0 for r in results[name])
            paths = write_tables(
                results[name], out / name, name="results_partial", config=cfg.to_dict()
            )
            written += [str(p) for p in paths.values()]
            curves = training_curves(
                results[name], out / name, task, out / name / "curves_partial.png"
            )
            if curves is not None:
                written.append(str(curves))
    rows = c.judge(results)
    paths = c.write(rows, out, facts, name="claims_partial")
    written += [str(p) for p in paths.values()]
    _save_command(out / "claims_partial_experiment.json", argv, args.device)
    figure = claims_forest(rows, c.CLAIMS, out / "claims_partial.png")
    if figure is not None:
        written.append(str(figure))
    say("")
    say(c.markdown(rows, facts))
    say("written: " + ", ".join(written))
    return 0


def _real_ct_figures(names, out: Path, args, log) -> list[str]:
    # each CT configuration's models on the real CT slices (needs the [realdata] extra)
    from . import claims as c
    from .evaluation import real_ct_reconstructions
    from .figures import real_ct

    written = []
    for name in names:
        task, cfg = c.configuration_settings(name, args.size, device=args.device)
        if task != "ct":
            continue
        try:
            x, panels = real_ct_reconstructions(out / name, cfg, c.REAL_CT_RUNS)
        except ImportError as e:
            log(f"{name}: no real-CT figure ({e})")
            continue
        title = f"{name}: models trained on phantoms, tested on real CT slices"
        written.append(str(real_ct(x, panels, out / name / "figure_real_ct.png", title)))
    return written
