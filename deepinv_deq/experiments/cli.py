r"""Command line: ``deepinv-deq {demo,train,eval,table,claims}`` (also ``python -m deepinv_deq``).

- ``demo``: the README's main job: the key runs of the paper on sparse-view CT with the offline
  phantoms; prints the table and writes the figures.
- ``train``: one method on one task in one regime.
- ``eval``: evaluates the trained runs found in ``--out`` again (no training option).
- ``table``: every method x regime on the chosen tasks: the comparison table of the paper.
- ``claims``: the paper's claims measured on several configurations
  (:mod:`deepinv_deq.experiments.claims`).

Every command writes into ``--out`` (default ``./deepinv_deq_results``) and resumes: finished runs
are skipped, interrupted ones continue from their last checkpoint (Ctrl-C stops cleanly).

This module imports neither torch nor deepinv at import time: ``--help``, ``--version`` and usage
errors are answered before the package's heavy part is loaded (``launcher/_deepinv_deq_cli.py``).
Usage errors name the option as typed, show the subcommand's usage and exit with status 2. What
each command does once its arguments are valid is in :mod:`deepinv_deq.experiments.commands`.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import re
import sys
import time
from pathlib import Path

from . import commands, configs
from .commands import option_message
from .configs import CT_OPERATORS, DEMO_RUNS, DEQ_ITERATIONS, FIXED, METHODS, PRESETS
from .configs import REGIMES, TASKS
from .configs import ExperimentConfig
from .configurations import CONFIGURATIONS

DEFAULT_OUT = "deepinv_deq_results"
#: default preset of each command.
DEFAULT_SIZE = {
    "demo": "demo",
    "train": "cpu" if "cpu" in PRESETS else "repro",
    "table": "cpu" if "cpu" in PRESETS else "repro",
}
#: settings that have their own option (not generated from :class:`ExperimentConfig`).
_OWN_OPTIONS = ("data", "seed", "device")
#: choices of the settings that have a fixed set of values.
_CHOICES = {
    "transform": ("rotate", "shift"),
    "iteration": DEQ_ITERATIONS,
    "ct_operator": CT_OPERATORS,
}
#: what ``eval`` accepts: it re-evaluates trained runs with their stored settings.
EVAL_OPTIONS = ("--out", "--device", "--n-test", "--threads", "--quiet", "--verbose", "-q", "-v")


# ------------------------------------------------------------------------------------------------
# help text


def _setting_help() -> dict[str, str]:
    """``field -> help`` from :class:`ExperimentConfig`'s ``:param type name:`` docstring lines."""
    doc = inspect.cleandoc(ExperimentConfig.__doc__ or "")
    out: dict[str, str] = {}
    for m in re.finditer(r":param \S+ (\w+): (.*?)(?=\n:param |\n\n|\Z)", doc, re.S):
        text = " ".join(m.group(2).split())
        text = re.sub(r":\w+:`([^`]*)`", r"\1", text).replace("``", "")
        text = text.replace("\\times", " x ").replace("\\eta", "eta").replace("\\alpha", "alpha")
        text = text.replace("\\lambda", "lambda").replace("\\|", "||").replace("\\", "")
        out[m.group(1)] = text.rstrip(".").replace("%", "%%")
    return out


def _preset_notes() -> dict[str, str]:
    """``preset -> what it runs and its measured time``, as recorded next to :data:`PRESETS`
    (``PRESET_NOTES``; "not measured" where none is recorded)."""
    return {k: str(v) for k, v in getattr(configs, "PRESET_NOTES", {}).items()}


def _used_by(name: str) -> str:
    commands = [c for c, size in DEFAULT_SIZE.items() if size == name]
    return "default of " + ", ".join(commands) if commands else f"--size {name}"


def preset_table(fmt: str = "text") -> str:
    r"""The size presets as a table: image size, images, training budget, which command uses
    them, what they run and the measured time (or that it is unmeasured).

    Built from :data:`deepinv_deq.experiments.configs.PRESETS` (notes and times from its
    ``PRESET_NOTES``), so the ``--help`` text and the documentation show the same numbers.

    :param str fmt: ``"text"`` (for ``--help``) or ``"rst"`` (a list-table for the docs).
    """
    notes = _preset_notes()
    header = ("preset", "image", "train/val/test", "epochs", "seeds", "used by", "runs, time")
    rows = []
    for name, p in PRESETS.items():
        size = str(p.get("img_size", "?"))
        if p.get("mri_img_size"):
            size += f" (MRI {p['mri_img_size']})"
        images = "/".join(str(p.get(k, "-")) for k in ("n_train", "n_val", "n_test"))
        rows.append(
            (
                name,
                size,
                images,
                str(p.get("epochs", "?")),
                str(p.get("seeds", 1)),
                _used_by(name),
                notes.get(name, "not measured"),
            )
        )
    if fmt == "rst":
        lines = [".. list-table:: Size presets (``--size``)", "   :header-rows: 1", ""]
        for row in (header, *rows):
            lines.append("   * - " + row[0])
            lines += [f"     - {c}" for c in row[1:]]
        return "\n".join(lines) + "\n"
    if fmt != "text":
        raise ValueError(f"preset_table: 'fmt' must be 'text' or 'rst', got {fmt!r}.")
    import textwrap

    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header) - 1)]
    fmt_row = "  ".join(f"{{:{w}s}}" for w in widths)
    table = [fmt_row.format(*r[:-1]).rstrip() for r in (header, *rows)]
    # what each preset runs and its time, wrapped below the table
    wrapped = [
        textwrap.fill(f"{r[0]}: {r[-1]}", 96, initial_indent="  ", subsequent_indent="    ")
        for r in rows
    ]
    return "\n".join(table) + "\nwhat each runs, and its time:\n" + "\n".join(wrapped)


# ------------------------------------------------------------------------------------------------
# parser


def _version() -> str:
    from importlib import metadata

    import deepinv_deq

    parts = []
    for dist in ("deepinv", "torch"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} not installed")
    return f"deepinv-deq {deepinv_deq.__version__} ({', '.join(parts)})"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _verbosity(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    v = g.add_mutually_exclusive_group()
    v.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print only the final table, the files written and errors (no progress)",
    )
    v.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print everything: the training curves even with --no-progress",
    )
    g.add_argument(
        "--no-progress",
        action="store_true",
        help="no training-curve lines (one line per run stays)",
    )


def _common(p: argparse.ArgumentParser) -> None:
    """Options shared by demo, train and table: settings, data, output, machine."""
    helps = _setting_help()
    g = p.add_argument_group(
        "experiment settings",
        "Each default comes from the --size preset (table below); an option "
        "overrides that one setting.",
    )
    g.add_argument(
        "--size",
        choices=list(PRESETS),
        metavar="PRESET",
        help=f"size preset, one of {', '.join(PRESETS)} (default: %(default)s)",
    )
    for f in dataclasses.fields(ExperimentConfig):
        if f.name in _OWN_OPTIONS:
            continue
        flag = "--" + f.name.replace("_", "-")
        text = helps.get(f.name, f.name.replace("_", " "))
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str")
        if kind == "bool":
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif f.name in _CHOICES:
            g.add_argument(flag, choices=_CHOICES[f.name], help=text)
        else:
            conv = {"int": int, "float": float}.get(kind, str)
            g.add_argument(
                flag, type=conv, metavar={"int": "N", "float": "X"}.get(kind, "VALUE"), help=text
            )
    d = p.add_argument_group("data, output and machine")
    d.add_argument(
        "--data",
        default="phantoms",
        metavar="FOLDER",
        help="'phantoms' (offline procedural phantoms, the default) or a local folder of "
        "real data: LIDC-IDRI (metadata.csv + DICOM) for ct, fastMRI .h5 files for mri",
    )
    d.add_argument(
        "--seed",
        type=int,
        default=0,
        help="first seed of data, noise, masks and initialisation (default: %(default)s)",
    )
    _machine(d)
    d.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="FOLDER",
        help="output folder; runs found there are resumed (default: ./%(default)s)",
    )
    w = d.add_mutually_exclusive_group()
    w.add_argument(
        "--overwrite",
        action="store_true",
        help="train the selected runs again from scratch (their folders in --out are replaced)",
    )
    w.add_argument(
        "--extend",
        action="store_true",
        help="train finished (or interrupted) runs in --out further, up to a larger --epochs "
        "(the new total), from their last checkpoint; the remaining steps follow the cosine "
        "learning-rate schedule of the new total; every other setting must be unchanged",
    )


def _machine(g) -> None:
    g.add_argument(
        "--device",
        default="cpu",
        metavar="DEVICE",
        help="torch device: cpu, cuda or cuda:N (default: %(default)s)",
    )
    g.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="CPU threads for torch in each process (default: 1 on the CPU, never slowed down "
        "by another busy process as several threads are; torch's choice on a GPU)",
    )
    g.add_argument(
        "--jobs",
        type=_positive_int,
        default=None,
        metavar="N",
        help="seeds trained at the same time, one process each (default: for demo, 2 on a CPU "
        "with two cores or more; else 1); the results do not depend on it",
    )


_RESUME = (
    "Runs are resumable: finished runs in --out are skipped, an interrupted run continues from "
    "its last checkpoint (Ctrl-C stops cleanly). '--extend --epochs N' trains finished runs "
    "further, to N epochs in total."
)


def _claim_runs() -> tuple:
    # the runs of the claims, without importing the analysis (torch-free, for --help)
    from .claims import CLAIM_RUNS

    return CLAIM_RUNS


def configuration_table() -> str:
    r"""The configurations of ``deepinv-deq claims``, one entry each: task, preset, settings and
    measured cost (:data:`~deepinv_deq.experiments.configurations.MEASURED`)."""
    import textwrap

    from .configurations import MEASURED

    lines = []
    for name, (task, preset, own) in CONFIGURATIONS.items():
        what = ", ".join(f"{k}={v}" for k, v in own.items())
        cost = MEASURED.get(name, "time not measured")
        text = f"{name}: {task}, preset {preset}, {what}; {cost}"
        lines.append(textwrap.fill(text, 96, initial_indent="  ", subsequent_indent="    "))
    return "\n".join(lines)


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    fmt = argparse.RawDescriptionHelpFormatter
    presets = "size presets (--size):\n" + preset_table()
    p = argparse.ArgumentParser(
        prog="deepinv-deq",
        description="Equivariant deep equilibrium models (deepinv-deq): the paper's experiments "
        "on CPU or GPU, with offline data.",
        epilog=presets
        + "\n\n"
        + _RESUME
        + "\nRun 'deepinv-deq COMMAND --help' for a command's options.",
        formatter_class=fmt,
    )
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(
        dest="command", metavar="{demo,train,eval,table,claims}", title="commands"
    )
    sub.required = True
    demo_runs = ", ".join(m if r == "none" else f"{m} ({r})" for m, r in DEMO_RUNS)
    parsers = {
        "demo": sub.add_parser(
            "demo",
            help="the paper's key runs on CT at a CPU size (see the presets below)",
            description=f"Trains and evaluates on sparse-view CT: {demo_runs}; prints the table "
            "and writes the figures. " + _RESUME,
            usage="deepinv-deq demo [--size PRESET] [--out FOLDER] [options]",
            epilog=presets,
            formatter_class=fmt,
        ),
        "train": sub.add_parser(
            "train",
            help="train and evaluate one method on one task",
            description="Trains (unless done before) and evaluates one run. " + _RESUME,
            usage="deepinv-deq train --task {ct,mri} --method METHOD [--regime {sup,ei,mc}] "
            "[options]",
            epilog=presets,
            formatter_class=fmt,
        ),
        "eval": sub.add_parser(
            "eval",
            help="evaluate the trained runs in --out again",
            description="Re-evaluates every trained run found in --out with its stored settings. "
            "Training options are refused.",
            usage="deepinv-deq eval [--out FOLDER] [--n-test N] [--device DEVICE] [--threads N]",
            formatter_class=fmt,
        ),
        "table": sub.add_parser(
            "table",
            help="the comparison table: every method x regime on the chosen tasks",
            description="Trains and evaluates every method in every regime on the chosen tasks "
            "(--size gpu chooses CT, deq and deq-jfb, sup and ei; --tasks, --methods and "
            "--regimes override a preset's choice). " + _RESUME,
            usage="deepinv-deq table [--size PRESET] [--tasks LIST] [--methods LIST] "
            "[--regimes LIST] [options]",
            epilog=presets,
            formatter_class=fmt,
        ),
        "claims": sub.add_parser(
            "claims",
            help="the paper's claims on several configurations (CT, MRI on real anatomy, "
            "deblurring)",
            description="Trains and evaluates, on each configuration, the runs that the paper's "
            "claims compare ("
            + ", ".join(m if r == "none" else f"{m} ({r})" for m, r in _claim_runs())
            + "), each trained until its validation PSNR plateaus; writes each configuration's "
            "table in its own folder, then claims.md/.csv/.json (each claim's paired difference, "
            "95 %% interval and verdict per configuration) and the figures claims.png and "
            "claims_null_space.png. " + _RESUME.split(" '--extend")[0],
            usage="deepinv-deq claims [--configurations LIST] [--out FOLDER] [options]",
            epilog="configurations (--configurations):\n" + configuration_table(),
            formatter_class=fmt,
        ),
    }
    t = parsers["train"].add_argument_group("run")
    t.add_argument(
        "--task", required=True, choices=TASKS, help="ct (sparse-view CT) or mri (accelerated MRI)"
    )
    t.add_argument(
        "--method",
        required=True,
        choices=list(METHODS),
        metavar="METHOD",
        help="; ".join(f"{k}: {v}" for k, v in METHODS.items()).replace("%", "%%"),
    )
    t.add_argument(
        "--regime",
        choices=REGIMES,
        help="training regime of the trained methods: sup (supervised), ei (MC + EI), "
        f"mc (measurement consistency only); none for {', '.join(FIXED)}",
    )
    tb = parsers["table"].add_argument_group("which runs")
    for name, choices in (("tasks", TASKS), ("methods", METHODS), ("regimes", REGIMES)):
        by_preset = "; ".join(
            f"--size {k}: {v[name]}" for k, v in configs.PRESET_RUNS.items() if name in v
        )
        tb.add_argument(
            f"--{name}",
            default=None,
            metavar="LIST",
            help=f"comma-separated among {', '.join(choices)} or 'all' (default: all"
            + (f"; {by_preset}" if by_preset else "")
            + ")",
        )
    for name in ("demo", "train", "table"):
        _common(parsers[name])
        _verbosity(parsers[name])
        parsers[name].set_defaults(size=DEFAULT_SIZE[name])
    c = parsers["claims"].add_argument_group("which configurations")
    c.add_argument(
        "--configurations",
        default=None,
        metavar="LIST",
        help=f"comma-separated among {', '.join(CONFIGURATIONS)} or 'all' (default: all)",
    )
    c.add_argument(
        "--size",
        choices=["tiny"],
        default=None,
        help="tiny: every configuration shrunk to the tiny preset, generated images, one seed "
        "(checks the whole pipeline in about a minute a configuration; not results)",
    )
    c.add_argument(
        "--partial",
        action="store_true",
        help="train nothing: judge the claims on the seeds finished so far in --out (for a "
        "configuration run in parts); writes claims_partial.md/.csv/.json/.rst and "
        "claims_partial.png, and each configuration's results_partial.md and curves_partial.png",
    )
    m = parsers["claims"].add_argument_group("output and machine")
    m.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="FOLDER",
        help="output folder (one sub-folder a configuration); runs found there are resumed "
        "(default: ./%(default)s)",
    )
    _machine(m)
    _verbosity(parsers["claims"])
    e = parsers["eval"].add_argument_group("runs and machine")
    e.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="FOLDER",
        help="folder holding the trained runs (default: ./%(default)s)",
    )
    e.add_argument(
        "--n-test",
        type=_positive_int,
        metavar="N",
        help="held-out test images (default: those of each run)",
    )
    _machine(e)
    _verbosity(parsers["eval"])
    return p, parsers


# ------------------------------------------------------------------------------------------------
# checks made before anything is created


def _check_paths(args, error) -> None:
    """``--data`` must be 'phantoms' or an existing folder; ``--out`` a folder we can write into."""
    data = getattr(args, "data", "phantoms")
    if data != "phantoms" and not Path(data).is_dir():
        error(f"--data: no such folder: '{data}' (use 'phantoms' or a folder of real data)")
    out = Path(args.out)
    if out.exists():
        if not out.is_dir():
            error(f"--out: '{out}' exists and is not a folder")
        target = out
    else:
        target = next((p for p in out.absolute().parents if p.exists()), None)
        if target is None or not target.is_dir():
            error(f"--out: cannot create '{out}': no existing parent folder")
    if not os.access(target, os.W_OK | os.X_OK):
        error(f"--out: cannot write into '{target}' (permission denied)")


def _refuse_unknown(args, extra: list[str], parser, command: str) -> None:
    if not extra:
        return
    if command == "eval":
        option = next((a.split("=")[0] for a in extra if a.startswith("-")), extra[0])
        parser.error(
            f"{option} is not an eval option: eval re-evaluates the trained runs in --out "
            "with their stored settings (it accepts --out, --n-test, --device, --threads, -q, -v)"
        )
    parser.error("unrecognized arguments: " + " ".join(extra))


# ------------------------------------------------------------------------------------------------
# running


def main(argv=None) -> int:
    r"""Entry point of the ``deepinv-deq`` command line.

    :param list argv: arguments. Default: ``sys.argv[1:]``.
    :return: exit status: 0 on success, 130 after Ctrl-C; usage errors exit with status 2 and a
        one-line message naming the option.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, parsers = _parser()
    args, extra = parser.parse_known_args(argv)
    sub = parsers[args.command]
    _refuse_unknown(args, extra, sub, args.command)
    _check_paths(args, sub.error)
    say = print
    log = (lambda *a, **k: None) if args.quiet else print
    progress = not (args.no_progress or args.quiet)
    out = Path(args.out)
    try:
        if args.command == "eval":
            commands.load_package()
            commands.setup_machine(args, sub.error)
            return commands.reevaluate_all(args, out, log, say, sub.error)
        if args.command == "claims":
            commands.load_package()
            commands.setup_machine(args, sub.error)
            return commands.claims(args, out, argv, progress, log, say, sub.error)
        runs = commands.selected_runs(args, sub.error)
        cfg = commands.settings(args, sub.error)
        commands.load_package()
        commands.setup_machine(args, sub.error)
        commands.check_data(cfg, sorted({t for t, _, _ in runs}), sub.error)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            sub.error(f"--out: cannot create '{out}' ({e.strerror or e})")
        commands.save_meta(out, cfg, argv)
        t0 = time.perf_counter()
        from .layout import RunSettingsError

        try:
            results = commands.train_runs(cfg, out, runs, progress, log, args)
        except RunSettingsError as e:
            sub.error(option_message(e))
        name = {"demo": "demo", "train": "results_train", "table": "results"}[args.command]
        if args.command == "train":  # one table per run: several trains share an output folder
            task, method, regime = runs[0]
            name = f"results_train_{task}_{method}" + ("" if regime == "none" else f"_{regime}")
        commands.report(results, cfg, out, name, log, say, figures=args.command != "train")
        log(f"total time {time.perf_counter() - t0:.0f} s")
        return 0
    except KeyboardInterrupt:
        print(
            f"\ndeepinv-deq: interrupted; run the same command again to resume (finished runs in "
            f"'{out}' are kept, the interrupted one continues from its last checkpoint).",
            file=sys.stderr,
        )
        return 130
