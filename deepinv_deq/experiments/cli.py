r"""Command line: ``deepinv-deq {demo,train,eval,table}`` (also ``python -m deepinv_deq``).

- ``demo``: the README's main job: trains the EI-DEQ and its key baselines on sparse-view CT with
  the offline phantoms (about 10 minutes on 2 CPU cores), prints the table and writes
  ``figure_ct.png`` (reconstructions with their PSNR in the corner).
- ``train``: one method on one task in one regime.
- ``eval``: evaluates the trained runs found in ``--out`` again.
- ``table``: every method x regime on the chosen tasks: the comparison table of the paper.

Every command writes into ``--out`` (default ``./deepinv_deq_results``) and resumes: finished runs
are skipped, interrupted ones continue from their last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .configs import FIXED, METHODS, PRESETS, REGIMES, TASKS, ExperimentConfig, check_run, parse_list

DEFAULT_OUT = "deepinv_deq_results"
#: (method, regime) pairs of ``deepinv-deq demo``: the EI-DEQ and its key baselines.
DEMO_RUNS = (
    ("pinv", "none"),
    ("pnp-tv", "none"),
    ("deq", "sup"),
    ("deq", "ei"),
    ("deq-jfb", "ei"),
    ("unrolled", "ei"),
    ("unet", "sup"),
)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("experiment settings (default: those of --size)")
    g.add_argument("--size", default=None, choices=list(PRESETS),
                   help="size preset (demo: demo; train/table: repro)")
    g.add_argument("--img-size", type=int, help="image side in pixels")
    g.add_argument("--n-train", type=int, help="training images")
    g.add_argument("--n-test", type=int, help="held-out test images")
    g.add_argument("--epochs", type=int, help="training epochs")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float, help="Adam learning rate")
    g.add_argument("--max-iter", type=int, help="forward fixed-point iterations")
    g.add_argument("--backward-max-iter", type=int, help="implicit backward iterations")
    g.add_argument("--unrolled-iters", type=int, help="iterations K of the unrolled network")
    g.add_argument("--views", type=int, help="CT projection angles")
    g.add_argument("--transform", choices=["rotate", "shift"], help="EI transformation group")
    g.add_argument("--data", help="'phantoms' (default, offline) or a folder of real data "
                                  "(LIDC-IDRI for ct, fastMRI .h5 for mri)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    g.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default ./{DEFAULT_OUT})")
    g.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is fastest on a busy machine)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = argparse.ArgumentParser(
        prog="deepinv-deq",
        description="Equivariant deep equilibrium models: the paper's experiments on CPU or GPU.",
    )
    sub = p.add_subparsers(dest="command", metavar="{demo,train,eval,table}")
    sub.required = True
    sub.add_parser("demo", parents=[common], help="EI-DEQ and key baselines on CT (~10 min on 2 CPUs)")
    t = sub.add_parser("train", parents=[common], help="train and evaluate one method")
    t.add_argument("--task", required=True, help=f"one of {list(TASKS)}")
    t.add_argument("--method", required=True, help=f"one of {list(METHODS)}")
    t.add_argument("--regime", default=None, help=f"one of {list(REGIMES)} (none for {list(FIXED)})")
    sub.add_parser("eval", parents=[common], help="evaluate the trained runs in --out again")
    tb = sub.add_parser("table", parents=[common], help="the full comparison table")
    tb.add_argument("--tasks", default="all", help=f"comma-separated, among {list(TASKS)}")
    tb.add_argument("--methods", default="all", help=f"comma-separated, among {list(METHODS)}")
    tb.add_argument("--regimes", default="all", help=f"comma-separated, among {list(REGIMES)}")
    return p


def _config(args, default_size: str) -> ExperimentConfig:
    import torch

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}.")
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available on this machine.")
    return ExperimentConfig.from_preset(
        args.size or default_size,
        img_size=args.img_size, n_train=args.n_train, n_test=args.n_test, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, max_iter=args.max_iter,
        backward_max_iter=args.backward_max_iter, unrolled_iters=args.unrolled_iters,
        views=args.views, transform=args.transform, data=args.data, seed=args.seed,
        device=args.device,
    )


def _save_meta(out: Path, cfg: ExperimentConfig, argv) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiment.json").write_text(json.dumps(
        {"command": "deepinv-deq " + " ".join(argv), "config": cfg.to_dict()}, indent=1))


def _grid(cfg, out, runs, progress, log):
    from .runner import run

    results = []
    for task, method, regime in runs:
        results.append(run(task, method, regime, cfg, out, progress=progress, log=log))
    return results


def _report(results, cfg, out: Path, name: str, log, figures: bool = True) -> None:
    from .results import figure, markdown, write_tables
    from .runner import magnitude, held_out_measurements
    from .tasks import build_physics

    paths = write_tables(results, out, name=name, config=cfg.to_dict())
    log("")
    log(markdown(results))
    written = [str(p) for p in paths.values()]
    if figures:
        for task in sorted({r["task"] for r in results}):
            x, _ = held_out_measurements(task, cfg, build_physics(task, cfg))[0]
            path = figure(results, out, task, out / f"figure_{task}.png", reference=magnitude(x)[0].cpu())
            written.append(str(path))
    log("written: " + ", ".join(written))


def main(argv=None) -> int:
    r"""Entry point of the ``deepinv-deq`` console script.

    :param list argv: arguments (default ``sys.argv[1:]``).
    :return: exit status (0 on success); invalid options exit with status 2 and a message.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    log = print
    progress = not args.no_progress
    out = Path(args.out)
    try:
        if args.command == "demo":
            cfg = _config(args, "demo")
            runs = [("ct", m, r) for m, r in DEMO_RUNS]
        elif args.command == "train":
            cfg = _config(args, "repro")
            runs = [check_run(args.task, args.method, args.regime)]
        elif args.command == "table":
            cfg = _config(args, "repro")
            tasks = parse_list("tasks", args.tasks, TASKS)
            methods = parse_list("methods", args.methods, METHODS)
            regimes = parse_list("regimes", args.regimes, REGIMES)
            runs = [(t, m, "none") for t in tasks for m in methods if m in FIXED]
            runs += [(t, m, r) for t in tasks for m in methods if m not in FIXED for r in regimes]
            runs.sort(key=lambda x: (x[0], list(METHODS).index(x[1])))
        else:  # eval
            return _eval(args, out, log)
    except ValueError as e:
        parser.error(str(e))
    _save_meta(out, cfg, argv)
    t0 = time.perf_counter()
    try:
        results = _grid(cfg, out, runs, progress, log)
    except ValueError as e:
        parser.error(str(e))
    name = {"demo": "demo", "train": "results_train", "table": "results"}[args.command]
    _report(results, cfg, out, name, log, figures=args.command != "train")
    log(f"total time {time.perf_counter() - t0:.0f} s")
    return 0


def _eval(args, out: Path, log) -> int:
    from .configs import ExperimentConfig
    from .results import markdown, write_tables
    from .runner import reevaluate

    folders = sorted(p.parent for p in out.glob("*/*/config.json") if p.parent.name != "denoiser")
    if not folders:
        raise SystemExit(f"deepinv-deq eval: error: no run found in '{out}'.")
    results = []
    for folder in folders:
        stored = json.loads((folder / "config.json").read_text())
        if args.n_test is not None:
            stored["n_test"] = args.n_test
        cfg = ExperimentConfig(**{**stored, "device": args.device})
        results.append(reevaluate(folder, cfg, log=log))
    paths = write_tables(results, out, name="eval")
    log("")
    log(markdown(results))
    log("written: " + ", ".join(str(p) for p in paths.values()))
    return 0
