r"""Cost of one fixed-point map evaluation, against the minimal PGD map and deepinv's own iterator.

On the anchor problem of :mod:`common` (CT 64x64, 30 views, batch 4 by default), times:

- the parts: the forward operator :math:`A`, the adjoint :math:`A^\top` and the denoiser :math:`D`;
- **minimal map**: :math:`D(x - \eta A^\top(Ax - y))` written out by hand (one :math:`A`, one
  :math:`A^\top`, one :math:`D`), the reference of the ratio;
- **ours**: :class:`deepinv_deq.maps.PGDMap` and :class:`deepinv_deq.maps.REDMap` (with the same
  denoiser);
- **L2.grad formula**: the same PGD step written with deepinv's ``L2.grad``, which for a linear
  physics computes :math:`A^\top A x - A^\top y` (one :math:`A`, two :math:`A^\top`): what our
  maps did before;
- **deepinv PGD iterator**: one step of the iterator of ``dinv.optim.PGD`` (``PGDIteration``,
  with its data fidelity, prior and parameters, exactly as its fixed-point loop calls it).

Each is timed as a forward iteration of a solver (under :func:`torch.no_grad`) and as a backward
product (one vector-Jacobian product :math:`J_F^\top u` through a graph built once, as the
implicit backward solve does). Times are CPU time of the process with one thread, round-robin
(each round runs every candidate ``--inner`` times in turn, in an order rotated every round),
median over rounds; the ratio to the minimal map is computed within each round, then the median
is taken.

Run: ``python benchmarks/bench_map.py [--repeats 15] [--batch-size 4]``.
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
    timed,
)


def candidates(pb):
    r"""The map evaluations to compare, each a function of the iterate ``x``."""
    import deepinv as dinv
    from deepinv.optim import DEQConfig
    from deepinv_deq.maps import PGDMap, REDMap

    physics, y, D, eta, sigma = pb.physics, pb.y, pb.denoiser, pb.stepsize, pb.sigma
    ours_pgd = PGDMap(D, stepsize=eta, sigma_denoiser=sigma).to(pb.device)
    ours_red = REDMap(D, stepsize=eta, sigma_denoiser=sigma, lambda_reg=1.0).to(pb.device)
    l2 = dinv.optim.L2()
    s = torch.tensor(sigma)

    model = dinv.optim.PGD(
        data_fidelity=dinv.optim.L2(),
        prior=dinv.optim.PnP(denoiser=D),
        stepsize=eta,
        sigma_denoiser=sigma,
        max_iter=1,
        early_stop=False,
        DEQ=DEQConfig(),  # its built-in DEQ: the iterator its fixed-point loop calls
    )
    model = model.to(pb.device)
    iterator = model.fixed_point.iterator
    params, prior, fidelity = (
        model.update_params_fn(0),
        model.update_prior_fn(0),
        model.update_data_fidelity_fn(0),
    )

    def deepinv_step(x):
        return iterator({"est": (x, x)}, fidelity, prior, params, y, physics)["est"][0]

    def red_minimal(x):
        return x - eta * (physics.A_adjoint(physics.A(x) - y) + (x - D(x, s)))

    return {
        "minimal PGD map D(x - eta A^T(Ax - y))": lambda x: D(
            x - eta * physics.A_adjoint(physics.A(x) - y), s
        ),
        "ours PGDMap": lambda x: ours_pgd(x, y, physics),
        "L2.grad formula (PGD, A^T A x - A^T y)": lambda x: D(x - eta * l2.grad(x, y, physics), s),
        "deepinv PGD iterator (one step)": deepinv_step,
        "minimal RED map": red_minimal,
        "ours REDMap": lambda x: ours_red(x, y, physics),
    }, iterator.has_cost


def parts(pb, x):
    r"""The operators a map evaluation is made of, applied to ``x`` (or to ``y`` for the adjoint)."""
    physics, y, D = pb.physics, pb.y, pb.denoiser
    s = torch.tensor(pb.sigma)
    return {"A": lambda: physics.A(x), "A^T": lambda: physics.A_adjoint(y), "D": lambda: D(x, s)}


def vjp_of(fn, x, u):
    r"""A function running one vector-Jacobian product through a graph of ``fn`` built once."""
    xg = x.detach().clone().requires_grad_()
    with torch.enable_grad():
        out = fn(xg)

    def run():
        (g,) = torch.autograd.grad(out, xg, u, retain_graph=True)
        return g

    return run


def round_robin(funcs: dict, device, rounds: int, inner: int, reference: str):
    r"""Time every function ``inner`` times per round, all functions in turn each round.

    :return: per-function lists of the median-per-round seconds, and of the ratio to ``reference``
        within each round.
    """
    times = {name: [] for name in funcs}
    ratios = {name: [] for name in funcs}
    names = list(funcs)
    for r in range(rounds + 1):  # the first round is a warm-up
        this = {}
        shift = r % len(names)  # rotate the order, so that no function always runs first
        for name in names[shift:] + names[:shift]:
            this[name] = median([timed(funcs[name], device)[1] for _ in range(inner)])
        if r == 0:
            continue
        for name in funcs:
            times[name].append(this[name])
            ratios[name].append(this[name] / this[reference])
    return times, ratios


def main():
    args = parse_args(
        __doc__.splitlines()[0],
        lambda p: (
            p.set_defaults(batch_size=4, repeats=15),
            p.add_argument("--inner", type=int, default=3),
        ),
    )
    quiet_library_notices()
    pb = build_problem(args)
    x = pb.x0()
    u = torch.randn_like(x)
    cands, has_cost = candidates(pb)
    ref = "minimal PGD map D(x - eta A^T(Ax - y))"
    with torch.no_grad():
        out_min = cands[ref](x)
        out_ours = cands["ours PGDMap"](x)
        out_dinv = cands["deepinv PGD iterator (one step)"](x)
        out_l2 = cands["L2.grad formula (PGD, A^T A x - A^T y)"](x)
        p = parts(pb, x)
        p_times, _ = round_robin(p, pb.device, args.repeats, args.inner, "D")

    fwd = {name: (lambda fn=fn: torch.no_grad()(fn)(x)) for name, fn in cands.items()}
    f_times, f_ratios = round_robin(fwd, pb.device, args.repeats, args.inner, ref)
    bwd = {name: vjp_of(fn, x, u) for name, fn in cands.items()}
    b_times, b_ratios = round_robin(bwd, pb.device, args.repeats, args.inner, ref)

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    print(describe(args) + f" (rounds), {args.inner} calls per round")
    print(
        "parts: "
        + ", ".join(f"{k} {median(v) * 1e3:.1f} ms" for k, v in p_times.items())
        + f"; deepinv iterator computes its cost: {has_cost}"
    )
    print(
        f"relative difference to the minimal map: ours {rel(out_ours, out_min):.1e}, "
        f"L2.grad formula {rel(out_l2, out_min):.1e}, deepinv iterator {rel(out_dinv, out_min):.1e}"
    )
    print()
    rows = []
    for name in cands:
        rows.append(
            [
                name,
                f"{median(f_times[name]) * 1e3:.1f}",
                f"{median(f_ratios[name]):.2f}",
                f"{median(b_times[name]) * 1e3:.1f}",
                f"{median(b_ratios[name]):.2f}",
            ]
        )
    print(
        markdown_table(
            [
                "map",
                "evaluation (ms)",
                "ratio to minimal PGD",
                "VJP (ms)",
                "VJP ratio to minimal PGD",
            ],
            rows,
        )
    )
    print()
    print(
        f"map-cost ratio ours PGDMap / minimal map: {median(f_ratios['ours PGDMap']):.2f} (goal <= 1.10)"
    )
    print(
        "map-cost ratio ours REDMap / minimal RED map: "
        f"{median([a / b for a, b in zip(f_times['ours REDMap'], f_times['minimal RED map'], strict=True)]):.2f}"
    )


if __name__ == "__main__":
    main()
