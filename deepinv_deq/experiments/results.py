r"""Result tables (Markdown, CSV, JSON, reStructuredText) with paired seed differences and their 95 % intervals."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path


from .configs import FIXED, METHODS, REGIMES

REGIME_NAMES = {"sup": "supervised", "ei": "EI (MC + EI)", "mc": "MC only", "none": "-"}
COLUMNS = (
    "task",
    "method",
    "regime",
    "psnr_mean",
    "psnr_std",
    "std_over",
    "ssim_mean",
    "ssim_std",
    "nfe",
    "fwd_converged",
    "fwd_iters",
    "bwd_converged",
    "bwd_iters",
    "equivariance",
    "train_s",
)
#: two-sided 95 % quantiles of Student's t distribution, by degrees of freedom
_T95 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    12: 2.179,
    15: 2.131,
    20: 2.086,
    30: 2.042,
}


def t95(df: int) -> float:
    r"""Two-sided 95 % quantile of Student's t with ``df`` degrees of freedom (1.96 beyond 30)."""
    if df < 1:
        return math.nan
    keys = [k for k in _T95 if k <= df]
    return _T95[max(keys)] if df <= 30 else 1.96


def _order(r: dict):
    methods, regimes = list(METHODS), list(REGIMES) + ["none"]
    return (r["task"], methods.index(r["method"]), regimes.index(r["regime"]))


def rows(results: list[dict]) -> list[dict]:
    r"""One row per run, in table order, with the columns of :data:`COLUMNS`."""
    return [{k: r.get(k) for k in COLUMNS} for r in sorted(results, key=_order)]


def _per_seed(r: dict, key: str) -> dict:
    if key == "psnr":
        return dict(zip(r.get("seeds", []), r.get("psnr_seeds", []), strict=False))
    return {x["seed"]: x[key] for x in r.get("per_seed", []) if x.get(key) is not None}


def paired_difference(a: dict, b: dict, key: str = "psnr") -> dict | None:
    r"""Paired difference ``a - b`` of ``key`` (``"psnr"``: the seeds' mean PSNR; or a per-seed
    quantity such as ``"equivariance"``) over the seeds two runs share (a method that runs once,
    e.g. FBP, is paired with every seed; a trained run with fewer seeds, e.g. one still training,
    only with its own), with a 95 % Student-t interval.

    :return: ``dict(diffs, mean, lo, hi, n)``, or ``None`` if the runs share no seed.
    """
    sa, sb = _per_seed(a, key), _per_seed(b, key)
    if b.get("method") in FIXED and len(sb) == 1:
        sb = {s: next(iter(sb.values())) for s in sa}
    if a.get("method") in FIXED and len(sa) == 1:
        sa = {s: next(iter(sa.values())) for s in sb}
    common = [s for s in sa if s in sb]
    if not common:
        return None
    d = [sa[s] - sb[s] for s in common]
    n = len(d)
    mean = sum(d) / n
    if n > 1:
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
        half = t95(n - 1) * sd / math.sqrt(n)
    else:
        half = math.nan
    return dict(diffs=d, mean=mean, lo=mean - half, hi=mean + half, n=n)


#: the comparisons reported under every table: (label, run a, run b) with runs as (method, regime)
COMPARISONS = (
    ("EI-DEQ implicit - EI-DEQ JFB", ("deq", "ei"), ("deq-jfb", "ei")),
    ("EI-DEQ implicit - supervised DEQ", ("deq", "ei"), ("deq", "sup")),
    ("EI-DEQ implicit - FBP / zero-filled", ("deq", "ei"), ("pinv", "none")),
    ("EI-DEQ implicit - untrained DEQ", ("deq", "ei"), ("deq-init", "none")),
    ("EI-DEQ implicit - EI unrolled", ("deq", "ei"), ("unrolled", "ei")),
    ("EI-DEQ implicit - EI U-Net", ("deq", "ei"), ("unet", "ei")),
    ("EI-DEQ implicit - PnP", ("deq", "ei"), ("pnp", "none")),
    ("EI-DEQ implicit - RED", ("deq", "ei"), ("red", "none")),
    ("supervised DEQ implicit - supervised DEQ JFB", ("deq", "sup"), ("deq-jfb", "sup")),
    ("supervised DEQ implicit - supervised unrolled", ("deq", "sup"), ("unrolled", "sup")),
    ("MC-only DEQ implicit - EI-DEQ implicit", ("deq", "mc"), ("deq", "ei")),
)
#: equivariance-error comparisons (:func:`deepinv_deq.diagnostics.equivariance_error`)
EQUIVARIANCE_COMPARISONS = (
    ("equivariance error: EI-DEQ - supervised DEQ", ("deq", "ei"), ("deq", "sup")),
    ("equivariance error: EI-DEQ - MC-only DEQ", ("deq", "ei"), ("deq", "mc")),
)


def comparisons(results: list[dict]) -> list[dict]:
    r"""The paired differences of :data:`COMPARISONS` available in ``results``, per task."""
    out = []
    for task in sorted({r["task"] for r in results}):
        by = {(r["method"], r["regime"]): r for r in results if r["task"] == task}
        for key, table in (("psnr", COMPARISONS), ("equivariance", EQUIVARIANCE_COMPARISONS)):
            for label, a, b in table:
                if a in by and b in by:
                    d = paired_difference(by[a], by[b], key)
                    if d is not None:
                        out.append(dict(task=task, label=label, key=key, **d))
    return out


#: what each kind of paired difference measures (one table each: one header, one unit)
QUANTITY = {"psnr": "PSNR in dB", "equivariance": "equivariance error"}


def _by_quantity(comp: list[dict]) -> list[tuple[str, list[dict]]]:
    # the comparisons grouped by the quantity they difference, PSNR first
    return [
        (k, [c for c in comp if c["key"] == k])
        for k in QUANTITY
        if any(c["key"] == k for c in comp)
    ]


def _interval(c: dict) -> tuple[str, str]:
    fmt = "{:+.2f}" if c.get("key", "psnr") == "psnr" else "{:+.4f}"
    ci = "-" if math.isnan(c["lo"]) else f"[{fmt.format(c['lo'])}, {fmt.format(c['hi'])}]"
    return fmt.format(c["mean"]), ci


def percent(value: float) -> str:
    r"""A converged fraction as a percentage that reads 100 % only when every solve converged
    (0.99967 is ``99.96%``, rounded down, not ``100.0%``).

    :Examples:

    >>> from deepinv_deq.experiments.results import percent
    >>> percent(1.0), percent(0.99967), percent(0.946)
    ('100.0%', '99.96%', '94.6%')
    """
    if value < 1.0 and round(100 * value, 1) >= 100.0:
        return f"{math.floor(1e4 * value) / 100:.2f}%"
    return f"{100 * value:.1f}%"


def _pct(value, iters) -> str:
    if value is None:
        return "-"
    return f"{percent(value)} ({iters:.1f})"


def _cells(r: dict) -> list[str]:
    psnr = f"{r['psnr_mean']:.2f}"
    ssim = f"{r['ssim_mean']:.3f}"
    if r.get("std_over") != "images":
        psnr += f" ± {r['psnr_std']:.2f}"
        ssim += f" ± {r['ssim_std']:.3f}"
    eq = "-" if r.get("equivariance") is None else f"{r['equivariance']:.2e}"
    tr = "-" if not r.get("train_s") else f"{r['train_s']:.0f}"
    return [
        r["task"].upper(),
        r["method"],
        REGIME_NAMES[r["regime"]],
        psnr,
        ssim,
        _pct(r.get("fwd_converged"), r.get("fwd_iters")),
        _pct(r.get("bwd_converged"), r.get("bwd_iters")),
        eq,
        tr,
    ]


HEADER = [
    "task",
    "method",
    "training",
    "PSNR (dB)",
    "SSIM",
    "fwd converged (iters)",
    "bwd converged (iters)",
    "equivariance error",
    "train CPU (s)",
]


def markdown(results: list[dict], title: str | None = None) -> str:
    r"""The comparison table in Markdown: PSNR and SSIM as mean :math:`\pm` standard deviation over
    the training seeds (a method without training has one value), the fraction of forward and
    backward solves that reached their tolerance (mean iterations), then the paired differences
    with their 95 % intervals."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in sorted(results, key=_order):
        lines.append("| " + " | ".join(_cells(r)) + " |")
    for key, comp in _by_quantity(comparisons(results)):
        lines += [
            "",
            f"| task | paired difference ({QUANTITY[key]}) | mean | 95% interval | seeds |",
            "|---|---|---|---|---|",
        ]
        for c in comp:
            mean, ci = _interval(c)
            lines.append(f"| {c['task'].upper()} | {c['label']} | {mean} | {ci} | {c['n']} |")
    return "\n".join(lines) + "\n"


def write_tables(
    results: list[dict], out, name: str = "results", config: dict | None = None
) -> dict:
    r"""Write ``name.md``, ``name.csv`` and ``name.json`` into ``out``.

    :param list results: the runs' results (from :func:`deepinv_deq.experiments.runner.run`).
    :param str out: output directory.
    :param str name: file stem.
    :param dict config: the experiment's settings, stored in the JSON file.
    :return: the paths written, by format.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"{name}.{ext}" for ext in ("md", "csv", "json")}
    paths["md"].write_text(markdown(results))
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows(results))
    full = [{k: v for k, v in r.items() if k != "skipped"} for r in sorted(results, key=_order)]
    paths["json"].write_text(
        json.dumps({"config": config, "runs": full, "comparisons": comparisons(results)}, indent=1)
    )
    return paths


def rst(results: list[dict]) -> str:
    r"""The comparison table as a reStructuredText ``list-table`` (for the documentation), then the
    paired differences."""
    lines = [".. list-table::", "   :header-rows: 1", ""]
    lines.append(f"   * - {HEADER[0]}")
    lines += [f"     - {h}" for h in HEADER[1:]]
    for r in sorted(results, key=_order):
        cells = _cells(r)
        lines.append(f"   * - {cells[0]}")
        # a lone "-" would start a bullet list inside the list-table: escape it
        lines += [f"     - {c}" if c != "-" else "     - \\-" for c in cells[1:]]
    for key, comp in _by_quantity(comparisons(results)):
        lines += [
            "",
            ".. list-table::",
            "   :header-rows: 1",
            "",
            "   * - task",
            f"     - paired difference ({QUANTITY[key]})",
            "     - mean",
            "     - 95% interval",
            "     - seeds",
        ]
        for c in comp:
            mean, ci = _interval(c)
            lines += [
                f"   * - {c['task'].upper()}",
                f"     - {c['label']}",
                f"     - {mean}",
                f"     - {ci if ci != '-' else 'n/a'}",
                f"     - {c['n']}",
            ]
    return "\n".join(lines) + "\n"
