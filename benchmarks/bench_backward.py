r"""Backward pass alone: vector-Jacobian products, gradient error and time of the implicit backward.

On the problem of :mod:`common`, every model first reconstructs (not timed), then the backward
pass of ``loss = <w, model(y, physics)>`` (a fixed random ``w``) is timed. Rows:

- ours: :class:`deepinv_deq.DEQ` with ``backward="implicit"`` and each backward solver
  (``fixed_point``, ``anderson``, ``gmres``) at two tolerances, and ``backward="jfb"``;
- deepinv 0.5's built-in DEQ, ``PGD(..., DEQ=DEQConfig(...))``, with its fixed-point backward and
  with its Anderson backward (``anderson_acceleration_backward=True``); its backward stops at the
  forward's ``thres_conv``.

All forward solves use Anderson to the same tolerance (deepinv: the same history, no mixing,
small ridge). Columns:

- ``bwd VJPs``: vector-Jacobian products through the map, counted by a backward hook on the
  denoiser (the same count for both libraries; ours includes the final product that carries the
  adjoint to the parameters);
- ``grad rel. error``: :math:`\|g - g_\text{ref}\| / \|g_\text{ref}\|` for the gradient with
  respect to the denoiser's parameters, the reference being our implicit backward solved with
  Anderson to a relative residual of ``1e-7`` from the same forward solve as our rows (so that
  our rows show the error of the backward solve alone; float32: errors below ~1e-6 are rounding).
  deepinv's forward stops elsewhere (its test is on the batch-averaged change of the iterates),
  so its error also contains the difference of its fixed point;
- ``time / t_vjp``: the backward time divided by the time of one VJP measured right before it;
  ``overhead`` divides it further by the number of VJPs.

Round-robin over the models, CPU time of the process, one thread, median over repetitions.

Run: ``python benchmarks/bench_backward.py [--repeats 5]``.
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
    spread,
    timed,
)


class VJPCounter:
    r"""Counts the backward passes through a module (one per vector-Jacobian product)."""

    def __init__(self, module: torch.nn.Module):
        self.count = 0
        module.register_full_backward_hook(self._hook)

    def _hook(self, module, grad_input, grad_output):
        self.count += 1


def build_models(pb, tol: float, bwd_tols) -> dict:
    r"""Our DEQ with each backward strategy, and deepinv's DEQ with each of its backward solvers."""
    from deepinv.optim import AndersonAccelerationConfig, DEQConfig
    from deepinv_deq import DEQ

    from bench_forward import deepinv_pgd

    common = dict(
        denoiser=pb.denoiser,
        iteration="PGD",
        stepsize=pb.stepsize,
        sigma_denoiser=pb.sigma,
        solver="anderson",
        max_iter=200,
        tol=tol,
    )
    models = {}
    for solver in ("fixed_point", "anderson", "gmres"):
        for btol in bwd_tols:
            models[f"ours implicit {solver}, tol {btol:g}"] = DEQ(
                **common,
                backward="implicit",
                backward_solver=solver,
                backward_tol=btol,
                backward_max_iter=200,
            )
    models["ours JFB"] = DEQ(**common, backward="jfb")
    matched = AndersonAccelerationConfig(history_size=5, beta=1.0, eps=1e-4)
    for name, anderson_bwd in (("fixed-point", False), ("anderson", True)):
        model = deepinv_pgd(pb.denoiser, pb.stepsize, pb.sigma, 200, tol, matched)
        model.DEQ_config = DEQConfig(
            anderson_acceleration_backward=anderson_bwd, max_iter_backward=200
        )
        models[f"deepinv DEQ, {name} backward"] = model
    return {k: m.to(pb.device) for k, m in models.items()}


def reference_gradient(pb, w, params, tol: float) -> torch.Tensor:
    r"""Our implicit gradient with the forward solve of the compared rows and a tight backward."""
    from deepinv_deq import DEQ

    model = DEQ(
        denoiser=pb.denoiser,
        iteration="PGD",
        stepsize=pb.stepsize,
        sigma_denoiser=pb.sigma,
        solver="anderson",
        max_iter=200,
        tol=tol,
        backward_solver="anderson",
        backward_tol=1e-7,
        backward_max_iter=500,
    )
    grad = gradient(model, pb, w, params)
    print(f"reference: forward {model.forward_stats}, backward {model.backward_stats}")
    return grad


def gradient(model, pb, w, params) -> torch.Tensor:
    for p in params:
        p.grad = None
    (model(pb.y, pb.physics) * w).sum().backward()
    return torch.cat([p.grad.flatten() for p in params])


def main():
    args = parse_args(
        __doc__.splitlines()[0],
        lambda p: (
            p.add_argument(
                "--tol", type=float, default=1e-5, help="forward tolerance of every model"
            ),
            p.add_argument("--bwd-tols", type=float, nargs="+", default=[1e-4, 1e-6]),
        ),
    )
    quiet_library_notices()
    pb = build_problem(args)
    params = list(pb.denoiser.parameters())
    counter = VJPCounter(pb.denoiser)
    w = torch.randn(pb.x.shape, generator=torch.Generator().manual_seed(args.seed)).to(pb.device)
    g_ref = reference_gradient(pb, w, params, args.tol)
    models = build_models(pb, args.tol, args.bwd_tols)

    # one VJP through a graph of the map, the unit of the overhead
    fmap = pb.pgd_map()
    x0 = pb.x0().requires_grad_()
    with torch.enable_grad():
        fx = fmap(x0, pb.y, pb.physics)

    def one_vjp():
        return torch.autograd.grad(fx, x0, w, retain_graph=True)

    def backward_of(model):
        for p in params:
            p.grad = None
        out = model(pb.y, pb.physics)  # not timed
        loss = (out * w).sum()
        before = counter.count
        _, t = timed(loss.backward, pb.device)
        return t, counter.count - before

    times = {name: [] for name in models}
    norm = {name: [] for name in models}
    vjps, errors, status = {}, {}, {}
    for rep in range(args.repeats + 1):  # the first round is a warm-up
        for name, model in models.items():
            t_vjp = median([timed(one_vjp, pb.device)[1] for _ in range(3)])
            t, n = backward_of(model)
            if rep == 0:
                g = torch.cat([p.grad.flatten() for p in params])
                errors[name] = float((g - g_ref).norm() / g_ref.norm())
                vjps[name] = n
                stats = getattr(model, "backward_stats", None) if "implicit" in name else None
                status[name] = (
                    f"{sum(s == 'CONVERGED' for s in stats.status_names())}/{len(stats.status_names())}"
                    if stats is not None
                    else "-"
                )
                continue
            times[name].append(t)
            norm[name].append(t / t_vjp)
    rows = []
    for name in models:
        t_norm = median(norm[name])
        rows.append(
            [
                name,
                vjps[name],
                status[name],
                f"{errors[name]:.1e}",
                f"{median(times[name]) * 1e3:.0f}",
                f"{spread(times[name]):.0%}",
                f"{t_norm:.1f}",
                f"{t_norm / max(vjps[name], 1):.2f}",
            ]
        )
    print(describe(args) + f"; forward tol {args.tol:g} for every model")
    print()
    print(
        markdown_table(
            [
                "backward",
                "bwd VJPs",
                "converged",
                "grad rel. error",
                "time (ms)",
                "time spread",
                "time / t_vjp",
                "overhead",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
