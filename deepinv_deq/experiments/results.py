r"""Result tables (Markdown, CSV, JSON) and the reconstruction figure (as the paper's Figure 1)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from .configs import METHODS, REGIMES

REGIME_NAMES = {"sup": "supervised", "ei": "EI (MC + EI)", "mc": "MC only", "none": "-"}
COLUMNS = ("task", "method", "regime", "psnr_mean", "psnr_std", "ssim_mean", "ssim_std", "nfe", "train_s")


def _order(r: dict):
    methods, regimes = list(METHODS), list(REGIMES) + ["none"]
    return (r["task"], methods.index(r["method"]), regimes.index(r["regime"]))


def rows(results: list[dict]) -> list[dict]:
    r"""One row per run, in table order, with the columns of :data:`COLUMNS`."""
    return [{k: r.get(k) for k in COLUMNS} for r in sorted(results, key=_order)]


def markdown(results: list[dict], title: str | None = None) -> str:
    r"""The comparison table in Markdown: PSNR and SSIM as mean :math:`\pm` std over test images."""
    lines = [f"### {title}", ""] if title else []
    lines += [
        "| task | method | training | PSNR (dB) | SSIM | fwd iters | train (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows(results):
        nfe = "-" if r["nfe"] is None else f"{r['nfe']:.1f}"
        tr = "-" if not r["train_s"] else f"{r['train_s']:.0f}"
        lines.append(
            f"| {r['task'].upper()} | {r['method']} | {REGIME_NAMES[r['regime']]} | "
            f"{r['psnr_mean']:.2f} ± {r['psnr_std']:.2f} | {r['ssim_mean']:.3f} ± {r['ssim_std']:.3f} | "
            f"{nfe} | {tr} |"
        )
    return "\n".join(lines) + "\n"


def write_tables(results: list[dict], out, name: str = "results", config: dict | None = None) -> dict:
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
    paths["json"].write_text(json.dumps({"config": config, "runs": full}, indent=1))
    return paths


def figure(results: list[dict], out, task: str, path, reference=None) -> Path:
    r"""Reconstructions of the first test image by every run of ``task``, with their PSNR in the
    corner (layout of the paper's Figure 1), saved with matplotlib's Agg backend.

    :param list results: the runs' results.
    :param str out: the experiment's output directory (holding each run's ``samples.pt``).
    :param str task: ``"ct"`` or ``"mri"``.
    :param str path: image file to write (``.png``).
    :param torch.Tensor reference: the ground-truth image (shown first), shape ``(1, H, W)``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .runner import run_dir

    panels = []
    if reference is not None:
        panels.append(("ground truth", reference, None))
    for r in rows([r for r in results if r["task"] == task]):
        full = next(x for x in results if x["task"] == task and x["method"] == r["method"]
                    and x["regime"] == r["regime"])
        samples = torch.load(run_dir(out, task, r["method"], r["regime"]) / "samples.pt")
        label = r["method"] if r["regime"] == "none" else f"{r['method']} ({r['regime']})"
        panels.append((label, samples[0], full["psnr"][0]))
    n = len(panels)
    cols = min(n, 6)
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(2.2 * cols, 2.4 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (label, img, psnr) in zip(axes.flat, panels):
        ax.imshow(img[0].clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(label, fontsize=8)
        if psnr is not None:
            ax.text(0.02, 0.98, f"{psnr:.2f} dB", transform=ax.transAxes, color="yellow",
                    fontsize=8, va="top", ha="left",
                    bbox=dict(facecolor="black", alpha=0.5, pad=1, linewidth=0))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def rst(results: list[dict]) -> str:
    r"""The comparison table as a reStructuredText ``list-table`` (for the documentation)."""
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "",
        "   * - task",
        "     - method",
        "     - training",
        "     - PSNR (dB)",
        "     - SSIM",
        "     - fwd iters",
        "     - train (s)",
    ]
    for r in rows(results):
        nfe = "-" if r["nfe"] is None else f"{r['nfe']:.1f}"
        tr = "-" if not r["train_s"] else f"{r['train_s']:.0f}"
        cells = [r["task"].upper(), r["method"], REGIME_NAMES[r["regime"]],
                 f"{r['psnr_mean']:.2f} ± {r['psnr_std']:.2f}",
                 f"{r['ssim_mean']:.3f} ± {r['ssim_std']:.3f}", nfe, tr]
        lines.append(f"   * - {cells[0]}")
        lines += [f"     - {c}" for c in cells[1:]]
    return "\n".join(lines) + "\n"
