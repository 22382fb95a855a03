r"""Warm-started EI solves, and the cost of one EI training step against deepinv's built-in DEQ.

Two measurements on sparse-view tomography with a small contractive learned denoiser:

1. Forward iterations (map evaluations) of the extra solves: EI's :math:`f(A T_g \hat{x})` cold, as
   deepinv's :class:`deepinv.loss.EILoss` calls it (start at :math:`A^\top y`), versus warm, as
   :class:`deepinv_deq.DEQEILoss` calls it with ``warm_start=True`` (start at
   :math:`T_g \hat{x}`), and SURE's
   :math:`f(y + \tau b)` cold versus warm at :math:`\hat{x}`
   (:class:`deepinv_deq.DEQSureGaussianLoss`), with the same random draws; at initialisation and
   after a few EI training steps (goal: warm >= 2x fewer). The EI gain grows as training makes
   :math:`f(A T_g \hat x) \approx T_g \hat x`: it is the ratio of
   :math:`\log(\text{distance}/\text{tol})` of the two starting points.
2. Wall-clock time of one EI training step (reconstruction, MC + EI loss, backward, optimiser
   step) of :class:`deepinv_deq.DEQ` + :class:`deepinv_deq.DEQEILoss` versus deepinv's
   ``PGD(..., DEQ=DEQConfig(...), early_stop=True, anderson_acceleration=True)`` + ``EILoss``, on
   the same map :math:`F(x) = D_\sigma(x - \eta A^\top(Ax - y))` with identical initial weights and
   the same tolerance (goal: ratio <= 0.6).

Run (a few minutes on one CPU core at the default size)::

    python benchmarks/bench_ei_warmstart.py --size 32 --angles 16 --batch 4
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch
import deepinv as dinv
from deepinv.optim import PGD, DEQConfig, AndersonAccelerationConfig
from deepinv.optim.prior import PnP

from deepinv_deq import DEQ, DEQEILoss, DEQSureGaussianLoss


class Denoiser(torch.nn.Module):
    r"""Contractive learned denoiser :math:`D(x) = a x + b \tanh(W_3 * \tanh(W_2 * \tanh(W_1 * x)))`,
    kernels normalised to :math:`\ell_1` norm ``scale`` (Lipschitz :math:`\le a + b\,s^3`)."""

    def __init__(self, features=16, scale=0.7):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.4))
        self.b = torch.nn.Parameter(torch.tensor(0.5))
        self.convs = torch.nn.ModuleList(
            [
                torch.nn.Conv2d(1, features, 3, padding=1, padding_mode="circular"),
                torch.nn.Conv2d(features, features, 3, padding=1, padding_mode="circular"),
                torch.nn.Conv2d(features, 1, 3, padding=1, padding_mode="circular"),
            ]
        )
        with torch.no_grad():
            for c in self.convs:
                c.weight.mul_(scale / c.weight.abs().sum(dim=(1, 2, 3), keepdim=True))
                c.bias.zero_()

    def forward(self, x, sigma=None):
        h = x
        for c in self.convs:
            h = torch.tanh(c(h))
        return self.a * x + self.b * h


def phantoms(n, size, seed=0):
    np.random.seed(seed)
    ds = dinv.utils.RandomPhantomDataset(length=n, size=size)
    return torch.stack([ds[i] for i in range(n)])


def ours(denoiser, args):
    return DEQ(
        denoiser=denoiser,
        iteration="PGD",
        stepsize=args.stepsize,
        sigma_denoiser=0.05,
        max_iter=args.max_iter,
        tol=args.tol,
        solver="anderson",
        backward_max_iter=args.max_iter,
        backward_tol=args.tol,
        backward_solver="anderson",
        backward_options={"on_failure": "warn"},
    )


def deepinv_deq(denoiser, args):
    return PGD(
        data_fidelity=dinv.optim.L2(),
        prior=PnP(denoiser=denoiser),
        stepsize=args.stepsize,
        sigma_denoiser=0.05,
        max_iter=args.max_iter,
        thres_conv=args.tol,
        early_stop=True,
        anderson_acceleration=AndersonAccelerationConfig(history_size=5),
        DEQ=DEQConfig(anderson_acceleration_backward=True, max_iter_backward=args.max_iter),
    )


def transform(seed):
    return dinv.transform.Rotate(
        multiples=90, positive=True, rng=torch.Generator().manual_seed(seed)
    )


def extra_solve_nfe(model, physics, y, n_draws):
    r"""Mean forward iterations of the extra solves of EI (:math:`f(A T_g \hat x)`) and SURE
    (:math:`f(y + \tau b)`), cold (deepinv's losses) and warm (the DEQ adapters), same draws."""
    with torch.no_grad():
        x_net = model(y, physics)
    pairs = {
        "EI": (
            lambda: dinv.loss.EILoss(transform(123), apply_noise=False),
            lambda: DEQEILoss(transform(123), apply_noise=False, warm_start=True),
        ),
        "SURE": (
            lambda: dinv.loss.SureGaussianLoss(
                sigma=0.01, tau=1e-2, rng=torch.Generator().manual_seed(5)
            ),
            lambda: DEQSureGaussianLoss(
                sigma=0.01, tau=1e-2, rng=torch.Generator().manual_seed(5), warm_start=True
            ),
        ),
    }
    out = {}
    for term, makers in pairs.items():
        for name, make in zip(("cold", "warm"), makers, strict=True):
            loss = make()
            nfe = []
            for _ in range(n_draws):
                with torch.no_grad():
                    loss(x_net=x_net, y=y, physics=physics, model=model)
                nfe.append(model.forward_stats.nfe)
            out[term, name] = statistics.mean(nfe)
    return out


def train_step(model, optimizer, losses, physics, x):
    optimizer.zero_grad(set_to_none=True)
    y = physics(x)
    x_net = model(y, physics)
    total = sum(l(x_net=x_net, x=x, y=y, physics=physics, model=model).mean() for l in losses)
    total.backward()
    optimizer.step()
    return float(total.detach())


def timed_steps(model, losses, physics, x, n_steps, lr):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    times = []
    for _ in range(n_steps):
        t0 = time.perf_counter()
        train_step(model, opt, losses, physics, x)
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--angles", type=int, default=16)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--stepsize", type=float, default=0.9)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--max-iter", type=int, default=50)
    p.add_argument(
        "--train-steps", type=int, default=20, help="EI steps before the second nfe count"
    )
    p.add_argument("--draws", type=int, default=4, help="transform draws per nfe count")
    p.add_argument("--timing-steps", type=int, default=6)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    physics = dinv.physics.Tomography(
        angles=args.angles,
        img_width=args.size,
        normalize=True,
        noise_model=dinv.physics.GaussianNoise(0.01),
    )
    x = phantoms(args.batch, args.size, args.seed)
    y = physics(x)
    rows = []

    # 1. forward iterations of the EI solve, cold vs warm
    model = ours(Denoiser(), args)
    before = extra_solve_nfe(model, physics, y, args.draws)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    losses = [dinv.loss.MCLoss(), DEQEILoss(transform(args.seed), warm_start=True)]
    for _ in range(args.train_steps):
        train_step(model, opt, losses, physics, x)
    after = extra_solve_nfe(model, physics, y, args.draws)
    for label, d in (("at init", before), (f"after {args.train_steps} EI steps", after)):
        for term in ("EI", "SURE"):
            cold, warm = d[term, "cold"], d[term, "warm"]
            rows.append(
                (
                    f"{term} extra solve nfe {label}",
                    f"{cold:.1f}",
                    f"{warm:.1f}",
                    f"{cold / warm:.2f}x fewer",
                )
            )

    # 2. time of one EI training step (same initial weights, same map, same tolerance)
    base = Denoiser()
    ours_model = ours(copy.deepcopy(base), args)
    ref_model = deepinv_deq(copy.deepcopy(base), args)
    ours_losses = [dinv.loss.MCLoss(), DEQEILoss(transform(7), warm_start=True)]
    ref_losses = [dinv.loss.MCLoss(), dinv.loss.EILoss(transform(7))]
    cold_model = ours(copy.deepcopy(base), args)
    cold_losses = [dinv.loss.MCLoss(), dinv.loss.EILoss(transform(7))]
    for m, l in ((ours_model, ours_losses), (ref_model, ref_losses), (cold_model, cold_losses)):
        timed_steps(m, l, physics, x, 1, args.lr)  # warm-up (caches, allocator)
    t_ours = timed_steps(ours_model, ours_losses, physics, x, args.timing_steps, args.lr)
    t_ref = timed_steps(ref_model, ref_losses, physics, x, args.timing_steps, args.lr)
    t_cold = timed_steps(cold_model, cold_losses, physics, x, args.timing_steps, args.lr)
    med = {k: statistics.median(v) for k, v in (("ours", t_ours), ("ref", t_ref), ("cold", t_cold))}
    rows.append(
        (
            "EI step time [s] deepinv PGD-DEQ+EILoss vs DEQ+DEQEILoss",
            f"{med['ref']:.3f}",
            f"{med['ours']:.3f}",
            f"ratio {med['ours'] / med['ref']:.2f}",
        )
    )
    rows.append(
        (
            "EI step time [s] DEQ+EILoss (cold) vs DEQ+DEQEILoss",
            f"{med['cold']:.3f}",
            f"{med['ours']:.3f}",
            f"ratio {med['ours'] / med['cold']:.2f}",
        )
    )

    print(
        f"Tomography {args.size}x{args.size}, {args.angles} angles, batch {args.batch}, tol {args.tol}, "
        f"max_iter {args.max_iter}, threads {args.threads}, torch {torch.__version__}, deepinv {dinv.__version__}"
    )
    head = ("measurement", "baseline", "ours", "gain")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(4)]
    fmt = " | ".join("{:<%d}" % w for w in widths)
    print(fmt.format(*head))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(fmt.format(*r))


if __name__ == "__main__":
    main()
