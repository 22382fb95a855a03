r"""Figures of the experiments: reconstructions with error maps, and training curves.

Both are drawn with matplotlib's Agg backend (no display needed) and labelled in words, not in
command-line codes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

#: readable names of the runs, by (method, regime)
LABELS = {
    ("deq", "ei"): "EI-DEQ (implicit)",
    ("deq-jfb", "ei"): "EI-DEQ (JFB)",
    ("deq", "sup"): "supervised DEQ",
    ("deq-jfb", "sup"): "supervised DEQ (JFB)",
    ("deq", "mc"): "MC-only DEQ",
    ("deq-jfb", "mc"): "MC-only DEQ (JFB)",
    ("unrolled", "ei"): "EI unrolled",
    ("unrolled", "sup"): "supervised unrolled",
    ("unrolled", "mc"): "MC-only unrolled",
    ("unet", "ei"): "EI U-Net",
    ("unet", "sup"): "supervised U-Net",
    ("unet", "mc"): "MC-only U-Net",
    ("pnp", "none"): "PnP (trained denoiser)",
    ("red", "none"): "RED (trained denoiser)",
    ("pnp-tv", "none"): "PnP-TV",
    ("deq-init", "none"): "untrained DEQ",
}
FONT = 12
#: line styles cycled with the colours, so that a dozen runs never share a look


def label(method: str, regime: str, task: str = "ct") -> str:
    r"""Readable name of a run (e.g. ``"EI-DEQ (implicit)"``, ``"FBP"``, ``"zero-filled"``)."""
    if method == "pinv":
        return "FBP" if task == "ct" else "zero-filled"
    return LABELS.get((method, regime), f"{method} ({regime})")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def reconstructions(
    results: list[dict],
    out,
    task: str,
    path,
    reference=None,
    error_max: float = 0.2,
    max_cols: int = 5,
) -> Path:
    r"""Ground truth and the reconstruction of the first test image by every run of ``task``
    (top row, PSNR in the title, one grey scale from 0 to the ground truth's maximum), with the
    absolute error maps below (shared colour scale ``[0, error_max]``).

    :param list results: the runs' results.
    :param str out: the experiment's output directory (holding each run's ``samples.pt``).
    :param str task: ``"ct"`` or ``"mri"``.
    :param str path: image file to write (``.png``).
    :param torch.Tensor reference: the ground-truth magnitude image, shape ``(1, H, W)``.
    :param float error_max: upper end of the error colour scale. Default: ``0.2``.
    :param int max_cols: panels per row; more runs wrap onto further rows. Default: ``5``.
    :return: the path written.
    """
    from .results import rows
    from .runner import run_dir

    plt = _pyplot()
    panels = []
    for r in rows([r for r in results if r["task"] == task]):
        full = next(
            x
            for x in results
            if x["task"] == task and x["method"] == r["method"] and x["regime"] == r["regime"]
        )
        samples = torch.load(run_dir(out, task, r["method"], r["regime"]) / "samples.pt")
        panels.append((label(r["method"], r["regime"], task), samples[0], full["psnr"][0]))
    if reference is not None:
        panels.insert(0, ("ground truth", reference, None))
    cols = min(len(panels), max_cols)
    blocks = (len(panels) + cols - 1) // cols  # each block: a row of images, a row of errors
    fig, axes = plt.subplots(2 * blocks, cols, figsize=(2.6 * cols, 5.4 * blocks), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("off")
    # one grey scale for every panel: [0, the ground truth's maximum] (phantoms rarely reach 1)
    vmax = float(reference.max()) if reference is not None and float(reference.max()) > 0 else 1.0
    im = None
    for k, (name, img, psnr) in enumerate(panels):
        top, bottom = axes[2 * (k // cols), k % cols], axes[2 * (k // cols) + 1, k % cols]
        top.axis("on")
        top.imshow(img[0].clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=vmax)
        top.set_title(name if psnr is None else f"{name}\n{psnr:.2f} dB", fontsize=FONT)
        if psnr is None:  # the ground truth: explain the row below
            bottom.text(
                0.5,
                0.5,
                "absolute error\n|reconstruction - truth|",
                ha="center",
                va="center",
                fontsize=FONT,
                transform=bottom.transAxes,
            )
        elif reference is not None:
            bottom.axis("on")
            err = (img[0].clamp(0, 1) - reference[0]).abs().numpy()
            im = bottom.imshow(err, cmap="inferno", vmin=0, vmax=error_max)
    fig.tight_layout()
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.5, pad=0.01, label="absolute error")
    path = Path(path)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def _histories(out, task, method, regime) -> list[dict]:
    from .runner import run_dir

    folder = run_dir(out, task, method, regime)
    return [json.loads(p.read_text()) for p in sorted(folder.glob("seed_*/history.json"))]


def training_curves(results: list[dict], out, task: str, path) -> Path | None:
    r"""Validation PSNR (left) and training loss (right) against the training step, per trained
    run of ``task`` (mean over the seeds, shaded between their minimum and maximum).

    :return: the path written, or ``None`` if no run of ``task`` has a training history.
    """
    from .results import rows

    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4))
    trained = rows([r for r in results if r["task"] == task])
    # distinct colour and line-style pairs for up to 40 runs (the default cycle repeats after 10)
    colours = plt.get_cmap("tab10").colors
    drawn = 0
    for r in trained:
        hist = _histories(out, task, r["method"], r["regime"])
        if not hist or not hist[0]["val_step"]:
            continue
        name = label(r["method"], r["regime"], task)
        style = dict(
            color=colours[drawn % len(colours)],
            ls=("-", "--", ":", "-.")[(drawn // len(colours)) % 4],
            lw=1.8,
            marker="o" if len(hist[0]["val_step"]) < 3 else None,  # a curve of one point shows
        )
        for ax, xs, ys in ((left, "val_step", "val_psnr"), (right, "loss_step", "loss")):
            k = min(len(h[ys]) for h in hist)
            steps = hist[0][xs][:k]
            values = torch.tensor([h[ys][:k] for h in hist], dtype=torch.float64)
            (line,) = ax.plot(steps, values.mean(0).tolist(), label=name, **style)
            if len(hist) > 1:
                ax.fill_between(
                    steps,
                    values.min(0).values.tolist(),
                    values.max(0).values.tolist(),
                    color=line.get_color(),
                    alpha=0.2,
                )
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    left.set_xlabel("training step", fontsize=FONT)
    left.set_ylabel("validation PSNR (dB)", fontsize=FONT)
    right.set_xlabel("training step", fontsize=FONT)
    right.set_ylabel("training loss", fontsize=FONT)
    right.set_yscale("log")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=FONT - 1)
    fig.suptitle(
        f"{task.upper()}: training curves (mean over seeds, band = min-max)", fontsize=FONT + 1
    )
    handles, names = left.get_legend_handles_labels()
    fig.legend(handles, names, loc="center right", fontsize=FONT - 1, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    path = Path(path)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
