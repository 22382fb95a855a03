r"""The paper's claims across configurations: which runs measure them, how each is judged, tables.

Each claim of the paper is a paired difference between two runs of one configuration
(:data:`~deepinv_deq.experiments.configurations.CONFIGURATIONS`), over the training seeds they
share, with a 95 % Student-t interval (:func:`~deepinv_deq.experiments.results.paired_difference`):

.. math::

    d_s = q(\text{run } a, \text{seed } s) - q(\text{run } b, \text{seed } s),\qquad
    \bar d \pm t_{0.975, n-1}\, \mathrm{sd}(d) / \sqrt{n},

with :math:`q` the test PSNR (or the equivariance error). A claim *holds* on a configuration when
the whole interval lies on its side of the claim's threshold, *fails* when the whole interval lies
on the other side, and is *unresolved* otherwise (too few seeds, or a difference smaller than the
seeds' spread).

``deepinv-deq claims`` trains the runs of :data:`CLAIM_RUNS` on every configuration (resumable,
each configuration in a folder of its own) and writes ``claims.md`` / ``.csv`` / ``.json`` and the
figures (:func:`~deepinv_deq.experiments.figures.claims_forest`,
:func:`~deepinv_deq.experiments.figures.claims_null_space`).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

from .configurations import CONFIGURATIONS, configuration
from .results import paired_difference, percent

#: the (method, regime) runs trained and evaluated on every configuration
CLAIM_RUNS = (
    ("deq", "ei"),
    ("deq-jfb", "ei"),
    ("deq", "sup"),
    ("deq", "mc"),
    ("unrolled", "ei"),
    ("unet", "ei"),
    ("pnp", "none"),
    ("red", "none"),
    ("pinv", "none"),
)
VERDICTS = ("holds", "unresolved", "fails")
#: converged fraction below which a run's score is marked as partly that of capped iterates
CONVERGED = 0.99
#: the reconstruction figures of each configuration, one per question: name -> runs shown
FIGURES = {
    "training": (("deq", "ei"), ("deq-jfb", "ei"), ("deq", "mc"), ("deq", "sup")),
    "methods": (
        ("deq", "ei"),
        ("unrolled", "ei"),
        ("unet", "ei"),
        ("pnp", "none"),
        ("red", "none"),
        ("pinv", "none"),
    ),
}
#: the runs of each CT configuration shown on the real CT slices (``figure_real_ct.png``)
REAL_CT_RUNS = (("deq", "ei"), ("deq-jfb", "ei"), ("deq", "sup"), ("unet", "ei"), ("pinv", "none"))


@dataclass(frozen=True)
class Claim:
    r"""One claim: ``a - b`` of ``key`` lies above ``threshold`` (``sign=+1``) or below it
    (``sign=-1``).

    :param str name: short identifier (a column of the tables).
    :param str statement: the claim in words.
    :param tuple a: the run ``(method, regime)`` the claim is about.
    :param tuple b: the run it is compared with.
    :param str key: ``"psnr"`` (dB) or ``"equivariance"`` (equivariance error).
    :param float threshold: the margin of the claim.
    :param int sign: ``+1``: the difference must exceed ``threshold``; ``-1``: stay below it.

    |sep|

    :Example:

    >>> from deepinv_deq.experiments.claims import Claim
    >>> within = Claim("ei_vs_sup", "within 1 dB of supervised", ("deq", "ei"), ("deq", "sup"),
    ...                threshold=-1.0)
    >>> within.verdict(dict(mean=-0.6, lo=-0.9, hi=-0.3, n=3))
    'holds'
    >>> within.verdict(dict(mean=-0.9, lo=-1.5, hi=-0.3, n=3))
    'unresolved'
    """

    name: str
    statement: str
    a: tuple
    b: tuple
    key: str = "psnr"
    threshold: float = 0.0
    sign: int = 1

    def verdict(self, d: dict | None) -> str:
        r"""``"holds"``, ``"fails"`` or ``"unresolved"`` for the paired difference ``d``."""
        if d is None or d["n"] < 2 or math.isnan(d["lo"]):
            return "unresolved"
        lo, hi = (d["lo"], d["hi"]) if self.sign > 0 else (-d["hi"], -d["lo"])
        t = self.sign * self.threshold
        return "holds" if lo > t else "fails" if hi < t else "unresolved"


#: the paper's claims, in the order of the tables and the figure
CLAIMS = (
    Claim(
        "id_vs_jfb", "EI-DEQ: implicit differentiation beats JFB", ("deq", "ei"), ("deq-jfb", "ei")
    ),
    Claim(
        "ei_vs_sup",
        "EI-DEQ within 1 dB of the supervised DEQ",
        ("deq", "ei"),
        ("deq", "sup"),
        threshold=-1.0,
    ),
    Claim("ei_vs_mc", "EI beats measurement consistency alone", ("deq", "ei"), ("deq", "mc")),
    Claim("deq_vs_unrolled", "EI-DEQ beats EI unrolling", ("deq", "ei"), ("unrolled", "ei")),
    Claim("deq_vs_unet", "EI-DEQ beats the EI U-Net", ("deq", "ei"), ("unet", "ei")),
    Claim("deq_vs_pnp", "EI-DEQ beats PnP", ("deq", "ei"), ("pnp", "none")),
    Claim("deq_vs_red", "EI-DEQ beats RED", ("deq", "ei"), ("red", "none")),
    Claim(
        "equivariance",
        "EI-DEQ more equivariant than the supervised DEQ",
        ("deq", "ei"),
        ("deq", "sup"),
        key="equivariance",
        sign=-1,
    ),
)


def judge(results: dict[str, list[dict]]) -> list[dict]:
    r"""Every claim of :data:`CLAIMS` on every configuration of ``results``.

    :param dict results: configuration name -> the results of its runs
        (:func:`~deepinv_deq.experiments.runner.run`).
    :return: one row per (configuration, claim): the paired difference (``mean``, ``lo``, ``hi``,
        ``n``, per-seed ``diffs``), the ``verdict``, the forward and backward converged fractions
        of both runs (``fwd_a``, ``bwd_a``, ``fwd_b``, ``bwd_b``; ``None`` where a method has no
        such solve) and ``unconverged``: whether a run has fewer than :data:`CONVERGED` of its
        solves at the tolerance (then its score is partly that of capped iterates, and the verdict
        is marked). Claims whose runs are missing are left out.
    """
    rows = []
    for name, runs in results.items():
        by = {(r["method"], r["regime"]): r for r in runs}
        for claim in CLAIMS:
            if claim.a not in by or claim.b not in by:
                continue
            a, b = by[claim.a], by[claim.b]
            d = paired_difference(a, b, claim.key)
            rows.append(
                dict(
                    configuration=name,
                    claim=claim.name,
                    key=claim.key,
                    verdict=claim.verdict(d),
                    fwd_a=a.get("fwd_converged"),
                    bwd_a=a.get("bwd_converged"),
                    fwd_b=b.get("fwd_converged"),
                    bwd_b=b.get("bwd_converged"),
                    unconverged=any(
                        v is not None and v < CONVERGED
                        for r in (a, b)
                        for v in (r.get("fwd_converged"), r.get("bwd_converged"))
                    ),
                    **(d or dict(diffs=[], mean=math.nan, lo=math.nan, hi=math.nan, n=0)),
                )
            )
    return rows


def pooled(rows: list[dict]) -> dict:
    r"""Each claim over every configuration at once: how many of the per-seed paired differences
    lie on its side of the threshold, and the one-sided sign-test probability of at least that many
    if each were a fair coin, :math:`P(X \ge k)`, :math:`X \sim \mathrm{Bin}(n, 1/2)`.

    A summary across configurations, not a verdict: it treats the seeds of different
    configurations as independent draws of one effect, which they are not quite (the effect may
    differ from one configuration to another).

    :param list rows: rows of :func:`judge`.
    :return: claim name -> ``dict(k, n, p)``.

    |sep|

    :Example:

    >>> from deepinv_deq.experiments.claims import pooled
    >>> rows = [dict(claim="id_vs_jfb", diffs=[0.4, 1.1, 0.2]), dict(claim="id_vs_jfb", diffs=[-0.1])]
    >>> pooled(rows)["id_vs_jfb"]
    {'k': 3, 'n': 4, 'p': 0.3125}
    """
    out = {}
    for c in CLAIMS:
        diffs = [d for r in rows if r["claim"] == c.name for d in r["diffs"]]
        if not diffs:
            continue
        k = sum(c.sign * (d - c.threshold) > 0 for d in diffs)
        n = len(diffs)
        p = sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n
        out[c.name] = dict(k=k, n=n, p=p)
    return out


def _pooled_cell(value: dict | None) -> str:
    return "-" if value is None else f"{value['k']}/{value['n']} (p = {value['p']:.2g})"


def _number(value: float, key: str) -> str:
    return (
        "n/a" if value is None or math.isnan(value) else f"{value:+.{2 if key == 'psnr' else 4}f}"
    )


def _seconds(fact: dict) -> str:
    # training CPU time of every run of the configuration, summed over seeds (one thread each)
    value = fact.get("train_cpu_s")
    return "-" if value is None else f"{value:.0f}"


def _correlation(fact: dict) -> str:
    r = fact.get("gain_correlation")
    return "-" if r is None else f"{r:+.2f}"


def _converged(row: dict) -> str:
    # "fwd / bwd" of run a, then of run b ("-" where a run has no such solve)
    parts = []
    for side in ("a", "b"):
        fwd, bwd = row.get(f"fwd_{side}"), row.get(f"bwd_{side}")
        if fwd is not None:
            parts.append(percent(fwd) + ("" if bwd is None else f" / {percent(bwd)}"))
    return "; ".join(parts) if parts else "-"


def _verdict(row: dict) -> str:
    return row["verdict"] + (" (†)" if row.get("unconverged") else "")


#: legend of the mark on a verdict that rests on a run with unconverged solves
MARK = (
    "(†): a run of the comparison has fewer than 99 % of its forward or backward solves at the "
    "tolerance; its score is partly that of iterates stopped by the cap, so the verdict is not "
    "one on the method's fixed points."
)


def markdown(rows: list[dict], facts: dict | None = None) -> str:
    r"""The claims in Markdown: a verdict matrix (claims x configurations), then one row per
    (configuration, claim) with the mean paired difference, its 95 % interval, the seeds and the
    forward converged fractions of both runs; and the configurations' facts when given."""
    claims = {c.name: c for c in CLAIMS}
    names = list(dict.fromkeys(r["configuration"] for r in rows))
    cell = {(r["configuration"], r["claim"]): _verdict(r) for r in rows}
    pool = pooled(rows)
    lines = ["| claim | " + " | ".join(names) + " | seeds on its side, all configurations |"]
    lines.append("|---|" + "---|" * (len(names) + 1))
    for c in CLAIMS:
        if any((n, c.name) in cell for n in names):
            verdicts = " | ".join(cell.get((n, c.name), "-") for n in names)
            lines.append(f"| {c.statement} | {verdicts} | {_pooled_cell(pool.get(c.name))} |")
    lines += [
        "",
        MARK,
        "",
        "| configuration | claim | a - b | mean | 95% interval | seeds | verdict "
        "| converged fwd / bwd (a; b) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = claims[r["claim"]]
        unit = "dB" if c.key == "psnr" else "equivariance error"
        ci = f"[{_number(r['lo'], c.key)}, {_number(r['hi'], c.key)}]"
        lines.append(
            f"| {r['configuration']} | {c.statement} | {'/'.join(c.a)} - {'/'.join(c.b)} ({unit}) "
            f"| {_number(r['mean'], c.key)} | {ci} | {r['n']} | {_verdict(r)} | {_converged(r)} |"
        )
    if facts:
        lines += [
            "",
            "| configuration | task | settings | null-space fraction of the test images "
            "| correlation of EI's per-image gain over MC with it | training CPU (s) |",
            "|---|---|---|---|---|---|",
        ]
        for n in names:
            f = facts.get(n)
            if f:
                lines.append(
                    f"| {n} | {f['task']} | {f['settings']} | "
                    f"{f['null_space_mean']:.3f} ± {f['null_space_std']:.3f} | "
                    f"{_correlation(f)} | {_seconds(f)} |"
                )
    return "\n".join(lines) + "\n"


def write(rows: list[dict], out, facts: dict | None = None, name: str = "claims") -> dict:
    r"""Write ``name.md``, ``name.csv``, ``name.json`` and ``name.rst`` (the tables for a
    documentation page, :func:`rst`) into ``out``.

    :return: the paths written, by format.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"{name}.{ext}" for ext in ("md", "csv", "json", "rst")}
    paths["md"].write_text(markdown(rows, facts))
    paths["rst"].write_text(rst(rows, facts))
    fields = ["configuration", "claim", "key", "mean", "lo", "hi", "n", "verdict", "unconverged"]
    fields += ["fwd_a", "bwd_a", "fwd_b", "bwd_b"]
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    claims = [dict(c.__dict__) for c in CLAIMS]
    paths["json"].write_text(
        json.dumps(dict(claims=claims, rows=rows, facts=facts or {}), indent=1)
    )
    return paths


def settings(name: str, cfg=None) -> str:
    r"""The settings of configuration ``name`` in words (e.g. ``"32x32, 12 views, ..."``).

    :param str name: a configuration.
    :param ExperimentConfig cfg: its settings (default: those of ``name``).
    """
    task, own = configuration(name)
    cfg = cfg or own
    n = cfg.size_of(task)
    what = {
        "ct": f"{cfg.views} views, noise {cfg.ct_noise}",
        "mri": f"{cfg.acceleration}x, noise {cfg.mri_noise}, {cfg.mri_data}",
        "deblur": f"blur sigma {cfg.blur_sigma} px, noise {cfg.blur_noise}",
    }[task]
    return f"{n}x{n}, {what}, {cfg.depth}x{cfg.width} denoiser"


def facts(name: str, cfg=None) -> dict:
    r"""What characterises configuration ``name`` beyond its settings: the fraction of each test
    image's energy in the null space of :math:`A`
    (:func:`~deepinv_deq.experiments.configurations.null_space_fraction`; for deblurring, whose
    operator is invertible but ill-conditioned, the part its Tikhonov inverse does not recover).

    :param str name: a configuration.
    :param ExperimentConfig cfg: its settings (default: those of ``name``).
    :return: ``dict(task, settings, null_space_mean, null_space_std)``.
    """
    import torch

    from .configurations import null_space_fraction
    from .evaluation import held_out_measurements
    from .tasks import build_physics, pseudo_inverse

    task, own = configuration(name)
    cfg = cfg or own
    physics = build_physics(task, cfg)
    pinv = None
    if task == "deblur":
        wiener = pseudo_inverse(task)
        pinv = lambda y: wiener(y, physics)  # noqa: E731
    x = torch.cat([x for x, _ in held_out_measurements(task, cfg)])
    frac = null_space_fraction(physics, x, pinv=pinv).double()
    return dict(
        task=task,
        settings=settings(name, cfg),
        null_space_mean=float(frac.mean()),
        null_space_std=float(frac.std()) if len(frac) > 1 else 0.0,
        null_space=frac.tolist(),
    )


def gain_correlation(
    runs: list[dict], fact: dict, a=("deq", "ei"), b=("deq", "mc")
) -> float | None:
    r"""Pearson correlation, over the test images, between the gain of run ``a`` over run ``b``
    (per-image PSNR averaged over the seeds) and the image's null-space fraction: does EI help
    most where the measurements see least?

    :param list runs: the results of one configuration.
    :param dict fact: its :func:`facts`.
    :return: the correlation, or ``None`` if a run is missing or there are fewer than 3 images.
    """
    by = {(r["method"], r["regime"]): r for r in runs}
    if a not in by or b not in by or len(fact.get("null_space", [])) < 3:
        return None
    gain = [p - q for p, q in zip(by[a]["psnr"], by[b]["psnr"], strict=True)]
    frac = fact["null_space"]
    n = len(gain)
    mg, mf = sum(gain) / n, sum(frac) / n
    cov = sum((g - mg) * (f - mf) for g, f in zip(gain, frac, strict=True))
    var = math.sqrt(sum((g - mg) ** 2 for g in gain) * sum((f - mf) ** 2 for f in frac))
    return cov / var if var > 0 else None


def validation_gap(folder, task: str, a=("deq", "ei"), b=("deq", "mc")) -> dict | None:
    r"""Validation PSNR of run ``a`` minus run ``b`` against the training step, averaged over the
    seeds both have (their shared steps): how a gain grows with training length.

    :param str folder: the configuration's output folder.
    :return: ``dict(step, gap)`` or ``None`` if a run has no history.
    """
    from .layout import run_dir

    def curves(run):
        found = {}
        for p in sorted(run_dir(Path(folder), task, *run).glob("seed_*/history.json")):
            h = json.loads(p.read_text())
            found[p.parent.name] = dict(zip(h["val_step"], h["val_psnr"], strict=False))
        return found

    ca, cb = curves(a), curves(b)
    seeds = [s for s in ca if s in cb]
    if not seeds:
        return None
    steps = sorted(set.intersection(*(set(ca[s]) & set(cb[s]) for s in seeds)))
    gap = [sum(ca[s][k] - cb[s][k] for s in seeds) / len(seeds) for k in steps]
    return dict(step=steps, gap=gap)


def names_of(value: str | None) -> list[str]:
    r"""Configuration names from a comma-separated list (``None`` or ``"all"``: every one)."""
    from .configs import parse_list

    return parse_list("configurations", value, CONFIGURATIONS)


#: settings of a configuration that the ``tiny`` size keeps (the others come from the preset)
_KEPT_BY_TINY = ("views", "acceleration", "blur_sigma")


def configuration_settings(name: str, size: str | None = None, **overrides):
    r"""Task and settings of configuration ``name``; ``size="tiny"`` shrinks it to the ``tiny``
    preset (keeping its view count, acceleration or blur; generated images, a fixed budget), for
    a check of the whole pipeline in seconds.

    :param str name: a configuration.
    :param str size: ``None`` (the configuration as defined) or ``"tiny"``.
    :return: ``(task, ExperimentConfig)``.
    :raises ValueError: for an unknown configuration or size.
    """
    from .._validation import check_choice
    from .configs import ExperimentConfig

    if size is None:
        return configuration(name, **overrides)
    check_choice("claims", "size", size, ("tiny",))
    task, preset, own = CONFIGURATIONS[
        check_choice("claims", "configuration", name, CONFIGURATIONS)
    ]
    kept = {k: v for k, v in own.items() if k in _KEPT_BY_TINY}
    return task, ExperimentConfig.from_preset("tiny", **{**kept, **overrides})


def measure(
    names, out, size: str | None = None, jobs: int = 1, progress=True, log=print, **overrides
) -> dict:
    r"""Train (resumably) and evaluate the runs of :data:`CLAIM_RUNS` on each configuration, in
    ``out/<name>``, and write each configuration's comparison table there (``results.md``...)
    and its reconstruction figures, one per question (:data:`FIGURES`: ``figure_training.png``,
    the training strategies; ``figure_methods.png``, EI-DEQ against the other methods).

    :param list names: configuration names.
    :param str out: output folder.
    :param str size: ``None`` or ``"tiny"`` (:func:`configuration_settings`).
    :param int jobs: seeds trained at the same time (processes).
    :param bool progress: print the training curves.
    :param Callable log: where messages go.
    :param overrides: settings applied to every configuration (e.g. ``device``).
    :return: configuration name -> list of run results.
    """
    from .evaluation import held_out_measurements, magnitude
    from .figures import reconstructions
    from .results import write_tables
    from .runner import run, train_in_parallel

    results = {}
    for name in names:
        task, cfg = configuration_settings(name, size, **overrides)
        folder = Path(out) / name
        runs = [(task, m, r) for m, r in CLAIM_RUNS]
        if jobs > 1:
            train_in_parallel(runs, cfg, folder, jobs, progress=progress, log=log)
        results[name] = [
            run(task, m, r, cfg, folder, progress=progress, log=log, label=f"{name}: {m} {r}")
            for _, m, r in runs
        ]
        write_tables(results[name], folder, name="results", config=cfg.to_dict())
        reference = magnitude(held_out_measurements(task, cfg)[0][0])[0].cpu()
        for question, shown in FIGURES.items():
            reconstructions(
                results[name],
                folder,
                task,
                folder / f"figure_{question}.png",
                reference=reference,
                max_cols=len(shown) + 1,
                runs=shown,
            )
    return results


def finished(names, out, size: str | None = None, **overrides) -> dict:
    r"""The runs of :data:`CLAIM_RUNS` as far as they are trained, without training anything: for
    a configuration that runs in parts (e.g. ``ct64-25v``), the claims on the seeds finished so far.

    Each run is aggregated (:func:`~deepinv_deq.experiments.evaluation.aggregate`) over the seeds
    whose ``seed_<s>/result.json`` exists, and records them in ``seeds`` and ``partial``
    (``"k/n"`` of its ``n`` seeds); a run without a finished seed is left out, and with it the
    claims that need it (:func:`judge` pairs the seeds two runs share).

    :param list names: configuration names.
    :param str out: the output folder of ``deepinv-deq claims``.
    :param str size: ``None`` or ``"tiny"`` (:func:`configuration_settings`).
    :param overrides: settings applied to every configuration.
    :return: configuration name -> list of run results.
    :raises ValueError: if a run folder holds a run with other settings.
    """
    from .configs import FIXED
    from .evaluation import aggregate
    from .layout import check_settings, run_dir

    results = {}
    for name in names:
        task, cfg = configuration_settings(name, size, **overrides)
        results[name] = []
        for method, regime in CLAIM_RUNS:
            folder = run_dir(Path(out) / name, task, method, regime)
            if not (folder / "config.json").exists():
                continue
            check_settings(folder, cfg)
            seeds = [cfg.seed] if method in FIXED else cfg.seed_list()
            per_seed = [
                json.loads((folder / f"seed_{s}" / "result.json").read_text())
                for s in seeds
                if (folder / f"seed_{s}" / "result.json").exists()
            ]
            if per_seed:
                result = aggregate(task, method, regime, per_seed)
                result["partial"] = f"{len(per_seed)}/{len(seeds)}"
                results[name].append(result)
    return results


def _list_table(caption: str, header: list[str], body: list[list[str]]) -> list[str]:
    lines = [f".. list-table:: {caption}", "   :header-rows: 1", ""]
    for row in [header, *body]:
        # a lone "-" would start a bullet list inside the list-table: escape it
        cells = [c if c != "-" else "\\-" for c in row]
        lines.append(f"   * - {cells[0]}")
        lines += [f"     - {c}" for c in cells[1:]]
    return lines + [""]


def rst(rows: list[dict], facts: dict | None = None) -> str:
    r"""The claims as reStructuredText list-tables (for the documentation): the verdict matrix,
    then one table per claim (configuration, mean, 95 % interval, seeds, verdict, forward
    converged fractions), then the configurations' facts."""
    names = list(dict.fromkeys(r["configuration"] for r in rows))
    cell = {(r["configuration"], r["claim"]): r for r in rows}
    present = [c for c in CLAIMS if any((n, c.name) in cell for n in names)]
    pool = pooled(rows)
    matrix = [
        [c.statement]
        + [_verdict(cell[(n, c.name)]) if (n, c.name) in cell else "-" for n in names]
        + [_pooled_cell(pool.get(c.name))]
        for c in present
    ]
    header = ["claim", *names, "seeds on its side (sign test)"]
    lines = _list_table("Verdict of each claim on each configuration", header, matrix)
    lines += [MARK, ""]
    for c in present:
        unit = "dB" if c.key == "psnr" else "equivariance error"
        body = []
        for n in names:
            r = cell.get((n, c.name))
            if r is None:
                continue
            ci = f"[{_number(r['lo'], c.key)}, {_number(r['hi'], c.key)}]"
            body.append([n, _number(r["mean"], c.key), ci, str(r["n"]), _verdict(r), _converged(r)])
        header = ["configuration", f"mean ({unit})", "95% interval", "seeds", "verdict"]
        header.append("converged fwd / bwd (a; b)")
        what = f"{c.statement}: {'/'.join(c.a)} - {'/'.join(c.b)}"
        lines += _list_table(what, header, body)
    if facts:
        body = [
            [
                n,
                facts[n]["task"],
                facts[n]["settings"],
                f"{facts[n]['null_space_mean']:.3f} ± {facts[n]['null_space_std']:.3f}",
                _correlation(facts[n]),
                _seconds(facts[n]),
            ]
            for n in names
            if n in facts
        ]
        header = ["configuration", "task", "settings", "null-space fraction"]
        header += ["correlation of EI's per-image gain over MC with it", "training CPU (s)"]
        lines += _list_table("The configurations", header, body)
    return "\n".join(lines)
