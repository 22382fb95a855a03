r"""Forward solve: map evaluations, wall time and solver overhead to relative residual 1e-4.

Compares, on the same PGD map, data and initial iterate (see :mod:`common`):

- ours: :class:`deepinv_deq.DEQ` with ``solver="fixed_point"`` and ``solver="anderson"``;
- deepinv 0.5's built-in DEQ, ``dinv.optim.PGD(..., DEQ=DEQConfig(), early_stop=True,
  thres_conv=1e-4)``, with plain iterations, with its default ``AndersonAccelerationConfig`` and
  with an Anderson configuration matched to ours (same history size, no mixing, small ridge).

All models are called the way a user reconstructs, ``model(y, physics)`` under
:func:`torch.no_grad`. Map evaluations are counted by a wrapper around the denoiser (each PGD map
evaluation calls it once in both libraries), so deepinv's extra evaluations at the equilibrium
(``DEQ_additional_step``) are counted too. The relative residual
:math:`\|F(\hat x) - \hat x\| / \|\hat x\|` of every output is recomputed with the same map
(worst sample reported), because deepinv's stopping test is on successive iterates averaged over
the batch, not on the fixed-point residual of each sample.

Solver overhead is ``solve time / (map evaluations x time of one map evaluation)``. On a shared
machine the load changes during a run, so the models are timed round-robin and each solve is
normalised by the time of one map evaluation measured right before it (``time / t_map``); the
time ratios are computed on these normalised times. Both libraries start from :math:`A^\top y`,
whose cost is part of the solve; the last column subtracts it (measured before each solve).

Run: ``python benchmarks/bench_forward.py [--device cuda] [--repeats 5]``.
"""

from __future__ import annotations

import torch

from common import (
    quiet_library_notices,
    build_problem,
    describe,
    markdown_table,
    median,
    parse_args,
    repeat,
    spread,
    timed,
)


def our_models(pb, max_iter: int, tol: float) -> dict:
    r"""Our DEQ with each forward solver (the backward is irrelevant here)."""
    from deepinv_deq import DEQ

    models = {}
    for solver in ("fixed_point", "anderson"):
        models[f"ours {solver}"] = DEQ(
            denoiser=pb.denoiser,
            iteration="PGD",
            stepsize=pb.stepsize,
            sigma_denoiser=pb.sigma,
            max_iter=max_iter,
            tol=tol,
            solver=solver,
        ).to(pb.device)
    return models


def deepinv_pgd(denoiser, stepsize, sigma, max_iter, tol, anderson, early_stop=True):
    r"""deepinv's built-in DEQ: ``PGD`` with a PnP prior and ``DEQ=DEQConfig()``."""
    import deepinv as dinv
    from deepinv.optim import DEQConfig

    return dinv.optim.PGD(
        data_fidelity=dinv.optim.L2(),
        prior=dinv.optim.PnP(denoiser=denoiser),
        stepsize=stepsize,
        sigma_denoiser=sigma,
        max_iter=max_iter,
        thres_conv=tol,
        crit_conv="residual",
        early_stop=early_stop,
        DEQ=DEQConfig(),
        anderson_acceleration=anderson,
    )


def deepinv_models(pb, max_iter: int, tol: float) -> dict:
    r"""deepinv's built-in DEQ with early stopping at ``tol`` (and one at ``tol / 10``, to see
    what its Anderson needs to reach a true residual of ``tol``)."""
    from deepinv.optim import AndersonAccelerationConfig

    matched = dict(history_size=5, beta=1.0, eps=1e-4)
    configs = {
        "deepinv fixed-point": (False, tol),
        "deepinv anderson (default config)": (AndersonAccelerationConfig(), tol),
        "deepinv anderson (m=5, beta=1, eps=1e-4)": (AndersonAccelerationConfig(**matched), tol),
        "deepinv anderson (m=5, beta=1, eps=1e-4), thres_conv=tol/10": (
            AndersonAccelerationConfig(**matched),
            tol / 10,
        ),
    }
    return {
        name: deepinv_pgd(pb.denoiser, pb.stepsize, pb.sigma, max_iter, t, aa).to(pb.device)
        for name, (aa, t) in configs.items()
    }


def bookkeeping(pb, repeats: int, n_iter: int = 40) -> list:
    r"""Per-iteration cost of each library's loop around a near-free map of the same shape.

    The map is PGD for denoising (:math:`A = I`) with the denoiser :math:`x \mapsto 0.5x`, run for
    exactly ``n_iter`` iterations (ours: ``tol=0``; deepinv: ``early_stop=False``), so the time
    per iteration is the solver's own work: residuals, best-iterate tracking, Anderson mixing.
    """
    import deepinv as dinv
    from deepinv.optim import AndersonAccelerationConfig
    from deepinv_deq import DEQ

    class Half(torch.nn.Module):
        def forward(self, x, sigma=None):
            return 0.5 * x

    physics = dinv.physics.Denoising(device=pb.device)
    y = pb.x0()
    models = {
        "ours fixed_point": DEQ(
            denoiser=Half(), stepsize=0.5, solver="fixed_point", max_iter=n_iter, tol=0.0
        ),
        "ours anderson": DEQ(
            denoiser=Half(), stepsize=0.5, solver="anderson", max_iter=n_iter, tol=0.0
        ),
        "deepinv fixed-point": deepinv_pgd(
            Half(), 0.5, 0.05, n_iter, 1e-4, False, early_stop=False
        ),
        "deepinv anderson (m=5)": deepinv_pgd(
            Half(),
            0.5,
            0.05,
            n_iter,
            1e-4,
            AndersonAccelerationConfig(history_size=5, beta=1.0, eps=1e-4),
            early_stop=False,
        ),
    }
    rows = []
    for name, model in models.items():
        model = model.to(pb.device)

        def run():
            with torch.no_grad():
                return model(y, physics)

        _, ts = repeat(run, pb.device, repeats)
        rows.append([name, n_iter, f"{median(ts) / n_iter * 1e6:.0f}", f"{spread(ts):.0%}"])
    return rows


def worst_residual(fmap, x: torch.Tensor) -> float:
    r"""Largest per-sample relative fixed-point residual :math:`\|F(x)-x\|/\|x\|`."""
    with torch.no_grad():
        d = (fmap(x) - x).reshape(x.shape[0], -1)
        return float((d.norm(dim=1) / x.reshape(x.shape[0], -1).norm(dim=1)).max())


def main():
    args = parse_args(
        __doc__.splitlines()[0],
        lambda p: (
            p.add_argument("--tol", type=float, default=1e-4),
            p.add_argument("--max-iter", type=int, default=300),
        ),
    )
    quiet_library_notices()
    pb = build_problem(args)
    fmap_module = pb.pgd_map()

    def fmap(x):
        return fmap_module(x, pb.y, pb.physics)

    x0 = pb.x0()
    # time of one map evaluation, the unit of the overhead (re-measured before every solve too)
    with torch.no_grad():
        _, t_map = repeat(lambda: fmap(x0), pb.device, repeats=max(10, 3 * args.repeats), warmup=3)
    t_one = median(t_map)

    models = {
        **our_models(pb, args.max_iter, args.tol),
        **deepinv_models(pb, args.max_iter, args.tol),
    }
    # round robin: every repetition runs every model once, so that all models see the same
    # (varying) load of the shared machine; the map is re-timed right before each solve
    solve_times = {name: [] for name in models}
    norm_times = {name: [] for name in models}
    init_norm = {name: [] for name in models}  # time of the initial iterate A^T y, in t_map units
    counts, outputs = {}, {}
    for rep in range(args.repeats + 1):  # the first round is a warm-up
        for name, model in models.items():
            with torch.no_grad():
                _, t_maps = repeat(lambda: fmap(x0), pb.device, repeats=3, warmup=0)
                _, t_init = repeat(pb.x0, pb.device, repeats=3, warmup=0)
            before = pb.denoiser.calls

            def solve():
                with torch.no_grad():
                    return model(pb.y, pb.physics)

            outputs[name], t = timed(solve, pb.device)
            counts[name] = pb.denoiser.calls - before
            if rep > 0:
                solve_times[name].append(t)
                norm_times[name].append(t / median(t_maps))
                init_norm[name].append(median(t_init) / median(t_maps))
    rows = []
    times = {}
    for name in models:
        nfe = counts[name]
        t = median(solve_times[name])
        t_norm = median(norm_times[name])  # time in units of one map evaluation
        times[name] = t_norm
        rows.append(
            [
                name,
                nfe,
                f"{worst_residual(fmap, outputs[name]):.1e}",
                f"{t * 1e3:.0f}",
                f"{spread(solve_times[name]):.0%}",
                f"{t_norm:.1f}",
                f"{t_norm / nfe:.3f}",
                f"{(t_norm - median(init_norm[name])) / nfe:.3f}",
            ]
        )
    pairs = [
        ("ours fixed_point", "deepinv fixed-point"),
        ("ours anderson", "deepinv anderson (default config)"),
        ("ours anderson", "deepinv anderson (m=5, beta=1, eps=1e-4)"),
        ("ours anderson", "deepinv anderson (m=5, beta=1, eps=1e-4), thres_conv=tol/10"),
    ]
    print(describe(args))
    print(
        f"one map evaluation: {t_one * 1e3:.1f} ms (spread {spread(t_map):.0%}); tol {args.tol}, max_iter {args.max_iter}"
    )
    all_init = [v for vals in init_norm.values() for v in vals]
    print(
        f"initial iterate A^T y (done once per solve by both libraries): {median(all_init):.2f} map evaluations"
    )
    print()
    print(
        markdown_table(
            [
                "solver",
                "map evals",
                "worst rel. residual",
                "time (ms)",
                "time spread",
                "time / t_map",
                "overhead",
                "overhead excl. A^T y",
            ],
            rows,
        )
    )
    print()
    for ours, theirs in pairs:
        print(
            f"time ratio (in map-evaluation units) {ours} / {theirs}: {times[ours] / times[theirs]:.2f}"
        )
    print()
    print(
        "Solver bookkeeping per iteration (near-free map x -> 0.5 (x - 0.5 (x - y)), same shape):"
    )
    print()
    print(
        markdown_table(
            ["loop", "iterations", "us / iteration", "time spread"], bookkeeping(pb, args.repeats)
        )
    )


if __name__ == "__main__":
    main()
