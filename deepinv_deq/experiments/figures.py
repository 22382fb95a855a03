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


def _save_with_legend(fig, ax, path, right: float) -> Path:
    # the legend of ``ax`` to the right of the figure, which is written to ``path`` and closed
    handles, names = ax.get_legend_handles_labels()
    fig.legend(handles, names, loc="center right", fontsize=FONT - 1, frameon=False)
    fig.tight_layout(rect=(0, 0, right, 1))
    path = Path(path)
    fig.savefig(path, dpi=130)
    _pyplot().close(fig)
    return path


def reconstructions(
    results: list[dict],
    out,
    task: str,
    path,
    reference=None,
    error_max: float = 0.2,
    max_cols: int = 5,
    runs=None,
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
    :param list runs: the ``(method, regime)`` runs to show, in this order (default: every run
        of ``task``, in table order): one figure per question.
    :return: the path written.
    """
    from .results import rows
    from .layout import run_dir

    plt = _pyplot()
    panels = []
    chosen = rows([r for r in results if r["task"] == task])
    if runs is not None:
        by = {(r["method"], r["regime"]): r for r in chosen}
        chosen = [by[tuple(run)] for run in runs if tuple(run) in by]
    for r in chosen:
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
    from .layout import run_dir

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
    return _save_with_legend(fig, left, path, 0.8)


def figure(results: list[dict], out, task: str, path, reference=None) -> Path:
    r"""Reconstructions of the first test image by every run of ``task`` with their error maps
    (:func:`reconstructions`), and next to it
    ``curves_<task>.png``, the training curves of the trained runs
    (:func:`training_curves`), when there are any."""
    path = reconstructions(results, out, task, path, reference=reference)
    training_curves(results, out, task, Path(path).with_name(f"curves_{task}.png"))
    return path


#: colours of the claims' verdicts
VERDICT_COLOURS = {"holds": "tab:green", "unresolved": "tab:gray", "fails": "tab:red"}


def claims_forest(rows: list[dict], claims, path, cols: int = 4) -> Path | None:
    r"""One panel per claim: each configuration's mean paired difference with its 95 % interval,
    coloured by verdict (green holds, grey unresolved, red fails), the claim's threshold dashed;
    a hollow dot where a run of the comparison has unconverged solves (``row["unconverged"]``).

    :param list rows: rows of :func:`deepinv_deq.experiments.claims.judge`.
    :param list claims: the :class:`~deepinv_deq.experiments.claims.Claim` objects, in panel order.
    :param str path: image file to write (``.png``).
    :param int cols: panels per row.
    :return: the path written, or ``None`` without rows.
    """
    claims = [c for c in claims if any(r["claim"] == c.name for r in rows)]
    if not claims:
        return None
    plt = _pyplot()
    names = list(dict.fromkeys(r["configuration"] for r in rows))
    cols = min(cols, len(claims))
    nrows = (len(claims) + cols - 1) // cols
    fig, axes = plt.subplots(
        nrows, cols, figsize=(4.2 * cols, 0.45 * len(names) * nrows + 1.6 * nrows), squeeze=False
    )
    for ax in axes.flat[len(claims) :]:
        ax.axis("off")
    for ax, c in zip(axes.flat, claims, strict=False):
        for k, n in enumerate(names):
            r = next((r for r in rows if r["configuration"] == n and r["claim"] == c.name), None)
            if r is None or r["n"] == 0:
                continue
            colour = VERDICT_COLOURS[r["verdict"]]
            lo, hi = r["lo"], r["hi"]
            if lo == lo:  # an interval exists (two seeds or more)
                ax.plot([lo, hi], [k, k], color=colour, lw=2.5)
            # hollow: a run of the comparison has unconverged solves (claims.CONVERGED)
            hollow = dict(mfc="white") if r.get("unconverged") else {}
            ax.plot([r["mean"]], [k], "o", color=colour, ms=6, **hollow)
        ax.axvline(c.threshold, color="black", ls="--", lw=1)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names if ax in axes[:, 0] else [], fontsize=FONT - 1)
        ax.set_ylim(len(names) - 0.5, -0.5)
        ax.set_title(c.statement, fontsize=FONT - 1, wrap=True)
        unit = "PSNR difference (dB)" if c.key == "psnr" else "equivariance error difference"
        ax.set_xlabel(unit, fontsize=FONT - 1)
        ax.grid(alpha=0.3, axis="x")
        ax.tick_params(labelsize=FONT - 2)
    handles = [
        plt.Line2D([], [], color=v, marker="o", lw=2.5, label=k) for k, v in VERDICT_COLOURS.items()
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=FONT - 1, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def claims_null_space(rows: list[dict], facts: dict, gaps: dict, path) -> Path | None:
    r"""Why EI helps where it helps: left, EI's gain over MC alone (PSNR, 95 % interval) against
    the null-space fraction of each configuration's test images; right, the gain on the validation
    images against the training step (mean over the seeds).

    :param list rows: rows of :func:`deepinv_deq.experiments.claims.judge`.
    :param dict facts: configuration -> :func:`deepinv_deq.experiments.claims.facts`.
    :param dict gaps: configuration -> :func:`deepinv_deq.experiments.claims.validation_gap`.
    :param str path: image file to write (``.png``).
    :return: the path written, or ``None`` without an EI-vs-MC row.
    """
    mine = [r for r in rows if r["claim"] == "ei_vs_mc" and r["configuration"] in facts]
    if not mine:
        return None
    plt = _pyplot()
    colours = plt.get_cmap("tab10").colors
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    for k, r in enumerate(mine):
        n = r["configuration"]
        x, colour = facts[n]["null_space_mean"], colours[k % len(colours)]
        if r["lo"] == r["lo"]:
            left.plot([x, x], [r["lo"], r["hi"]], color=colour, lw=2.5)
        left.plot([x], [r["mean"]], "o", color=colour, ms=7, label=n)
        g = gaps.get(n)
        if g:
            right.plot(g["step"], g["gap"], color=colour, lw=1.8, label=n)
    for ax in (left, right):
        ax.axhline(0, color="black", ls="--", lw=1)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=FONT - 1)
    left.set_xlabel("null-space fraction of the test images", fontsize=FONT)
    left.set_ylabel("EI-DEQ - MC-only DEQ, test PSNR (dB)", fontsize=FONT)
    right.set_xlabel("training step", fontsize=FONT)
    right.set_ylabel("EI - MC-only, validation PSNR (dB)", fontsize=FONT)
    return _save_with_legend(fig, left, path, 0.85)


def real_ct(x, panels, path, title: str = "") -> Path:
    r"""Real CT slices (rows) reconstructed by each run (columns, PSNR in each title), the ground
    truth first: :func:`deepinv_deq.experiments.evaluation.real_ct_reconstructions` drawn.

    :param torch.Tensor x: the real images ``(N, 1, n, n)``.
    :param list panels: ``(method, regime, x_hat, psnr)`` per run.
    :param str path: image file to write (``.png``).
    :param str title: the figure's title.
    :return: the path written.
    """
    plt = _pyplot()
    n, cols = x.shape[0], len(panels) + 1
    fig, axes = plt.subplots(n, cols, figsize=(2.3 * cols, 2.7 * n + 0.6), squeeze=False)
    for i in range(n):
        shown = [("ground truth", x[i], None)]
        shown += [(label(m, r, "ct"), xh[i], p[i]) for m, r, xh, p in panels]
        for j, (name, img, value) in enumerate(shown):
            ax = axes[i, j]
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(name if value is None else f"{name}\n{value:.2f} dB", fontsize=FONT - 2)
    if title:
        fig.suptitle(title, fontsize=FONT)
    fig.tight_layout(h_pad=1.5)
    path = Path(path)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
