r"""Cost of an exact-gradient training step against a JFB step, per backward technique.

Side by side in one process, on sparse-view CT (64x64, 30 views, batch 4 by default) with the
library's :class:`deepinv_deq.ContractiveDenoiser` (its residual branch perturbed as a trained one
would be), each variant trains the same model (same initial weights, batches, noise draws and
rotations) for ``--steps`` Adam steps, round-robin so that all see the same machine load:

- ``JFB``: Jacobian-free backward;
- ``implicit, anderson`` (the 0.2 default): Anderson backward, no preconditioner;
- ``implicit, gmres``: GMRES backward, no preconditioner;
- ``implicit, gmres + fourier`` (the default now): GMRES with the recycled
  :class:`deepinv_deq.preconditioners.FourierPreconditioner`;
- ``implicit, anderson + fourier``.

Every variant uses the same forward (Anderson to ``--tol``) and backward tolerance (``--tol``,
relative to the right-hand side). Two losses: MC + EI (deepinv's ``MCLoss`` and ``EILoss`` with
rotations; two DEQ calls per step) and supervised (``SupLoss``; one call). Reported per variant:
forward map evaluations and backward products (vector-Jacobian products, preconditioner probes
included) per step, CPU time per step (median), the time ratio to the JFB step, and the relative
error of the first step's parameter gradient against a tight reference (GMRES to 1e-7).

``--physics sparse`` applies the same operator as :class:`deepinv_deq.physics.SparseMatrixPhysics`.

Run: ``python benchmarks/bench_step_cost.py [--steps 8] [--loss ei|sup|both] [--physics sparse]``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import numpy as np
import torch
import deepinv as dinv

from deepinv_deq import DEQ, ContractiveDenoiser
from deepinv_deq.backward import ImplicitDifferentiation
from deepinv_deq.physics import SparseMatrixPhysics
from deepinv_deq.solvers import GMRES

VARIANTS = {
    "JFB": dict(backward="jfb"),
    "implicit, anderson": dict(backward_solver="anderson", preconditioner=None),
    "implicit, gmres": dict(backward_solver="gmres", preconditioner=None),
    "implicit, gmres + fourier": dict(backward_solver="gmres", preconditioner="fourier"),
    "implicit, anderson + fourier": dict(backward_solver="anderson", preconditioner="fourier"),
}


def build_model(denoiser, variant: dict, tol: float) -> DEQ:
    opts = dict(variant)
    backward = opts.pop("backward", "implicit")
    kwargs = dict(denoiser=denoiser, iteration="PGD", stepsize=1.0, max_iter=200, tol=tol)
    if backward == "jfb":
        return DEQ(**kwargs, backward="jfb")
    return DEQ(
        **kwargs,
        backward="implicit",
        backward_solver=opts["backward_solver"],
        backward_tol=tol,
        backward_max_iter=300,
        backward_options={"preconditioner": opts["preconditioner"]},
    )


class Counter:
    r"""Map evaluations and backward products of every solve of a model, through its stats hook."""

    def __init__(self, model: DEQ):
        self.fwd = self.bwd = self.solves = 0
        self.converged = {"forward": [0, 0], "backward": [0, 0]}  # converged, samples
        model.register_stats_hook(self)

    def __call__(self, kind, stats):
        if kind == "forward":
            self.fwd += stats.nfe
        else:
            self.bwd += stats.nfe
            self.solves += 1
        self.converged[kind][0] += int(stats.converged.sum())
        self.converged[kind][1] += int(stats.status.numel())

    def fraction(self, kind: str) -> str:
        done, total = self.converged[kind]
        return f"{done}/{total}" if total else "-"


def losses_for(kind: str, seed: int):
    if kind == "sup":
        return [dinv.loss.SupLoss()]
    rotate = dinv.transform.Rotate(
        interpolation_mode="bilinear", rng=torch.Generator().manual_seed(seed)
    )
    return [dinv.loss.MCLoss(), dinv.loss.EILoss(transform=rotate)]


def step_loss(losses, model, x, y, physics):
    x_net = model(y, physics)
    return sum(loss(x_net=x_net, x=x, y=y, physics=physics, model=model).mean() for loss in losses)


def parameter_grad(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--angles", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--loss", choices=("ei", "sup", "both"), default="both")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--physics",
        choices=("deepinv", "sparse"),
        default="deepinv",
        help="deepinv's Tomography, or the same operator as SparseMatrixPhysics",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    n, B = args.img_size, args.batch_size
    physics = dinv.physics.Tomography(
        angles=args.angles,
        img_width=n,
        normalize=True,
        noise_model=dinv.physics.GaussianNoise(0.01, rng=torch.Generator().manual_seed(0)),
    )
    if args.physics == "sparse":
        physics = SparseMatrixPhysics(physics)
    np.random.seed(0)
    data = dinv.utils.RandomPhantomDataset(length=B * args.steps, size=n, use_dict_output=False)
    first = lambda item: item[0] if isinstance(item, (tuple, list)) else item
    images = torch.stack([first(data[i]) for i in range(len(data))])
    batches = [images[i * B : (i + 1) * B] for i in range(args.steps)]
    torch.manual_seed(0)
    denoiser = ContractiveDenoiser()
    with torch.no_grad():  # a residual branch as after some training
        [m for m in denoiser.modules() if isinstance(m, torch.nn.Conv2d)][-1].weight.normal_(
            0, 0.02
        )

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU time; CT {n}x{n}, "
        f"{args.angles} views ({args.physics} operator), batch {B}, {args.steps} steps; forward "
        "Anderson and backward "
        f"tol {args.tol:g} (backward relative to the right-hand side)"
    )
    for kind in ("ei", "sup") if args.loss == "both" else (args.loss,):
        models = {
            name: build_model(copy.deepcopy(denoiser), v, args.tol) for name, v in VARIANTS.items()
        }
        counters = {name: Counter(m) for name, m in models.items()}
        optims = {name: torch.optim.Adam(m.parameters(), lr=1e-3) for name, m in models.items()}
        losses = {name: losses_for(kind, 1) for name in models}
        times = {name: [] for name in models}
        errors = {}
        # reference gradient of the first step, from the same weights, noise and rotation
        ref = build_model(copy.deepcopy(denoiser), VARIANTS["implicit, gmres"], args.tol)
        ref.backward = ImplicitDifferentiation(solver=GMRES(max_iter=800, tol=1e-7, restart=60))
        physics.noise_model.rng.manual_seed(100)
        y = physics(batches[0])
        physics.noise_model.rng.manual_seed(1000)  # the noise of EI's second measurement
        step_loss(losses_for(kind, 1), ref, batches[0], y, physics).backward()
        g_ref = parameter_grad(ref)
        for step, x in enumerate(batches):
            physics.noise_model.rng.manual_seed(100 + step)
            y = physics(x)
            for name, model in models.items():
                physics.noise_model.rng.manual_seed(1000 + step)
                optims[name].zero_grad()
                t0 = time.process_time()
                step_loss(losses[name], model, x, y, physics).backward()
                if step == 0:
                    errors[name] = float((parameter_grad(model) - g_ref).norm() / g_ref.norm())
                optims[name].step()
                times[name].append(time.process_time() - t0)
        t_jfb = statistics.median(times["JFB"])
        print(f"\n{'MC + EI' if kind == 'ei' else 'supervised'} step:\n")
        print(
            "| backward | fwd evals / step | bwd products / step | products / solve | "
            "converged fwd / bwd | time / step (ms) | ratio to JFB | grad error, step 1 |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for name in models:
            c, t = counters[name], statistics.median(times[name])
            per_solve = f"{c.bwd / c.solves:.1f}" if c.solves else "-"
            print(
                f"| {name} | {c.fwd / args.steps:.1f} | {c.bwd / args.steps:.1f} | {per_solve} | "
                f"{c.fraction('forward')} / {c.fraction('backward')} | "
                f"{1e3 * t:.0f} | {t / t_jfb:.2f} | {errors[name]:.1e} |"
            )


if __name__ == "__main__":
    main()
