r"""Cold vs warm EI solves of a DEQ trained by ``deepinv-deq`` (complements bench_ei_warmstart.py).

``bench_ei_warmstart.py`` trains tiny models for a few steps; this script loads the weights of a
finished EI-DEQ run of the experiments (e.g. the ``ct/deq-ei`` run of ``deepinv-deq demo``) and
counts, on its held-out measurements, the forward map evaluations of EI's transformed solve
:math:`f(A T_g \hat x)` started cold at the model's default init (as deepinv's ``EILoss`` calls it)
and warm at :math:`T_g \hat x` (as :class:`deepinv_deq.DEQEILoss` calls it with
``warm_start=True``), with the same group elements, for several tolerances. Run::

    python benchmarks/bench_ei_warmstart_trained.py deepinv_deq_results/ct/deq-ei
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import deepinv as dinv

from deepinv_deq.experiments.configs import ExperimentConfig
from deepinv_deq.experiments.methods import build_model
from deepinv_deq.experiments.evaluation import held_out_measurements
from deepinv_deq.experiments.tasks import build_physics


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "run", type=Path, help="folder of a trained deq-ei run (config.json, seed_<s>/model.pt)"
    )
    p.add_argument("--seed", type=int, default=0, help="which seed's weights to load")
    p.add_argument("--tols", default="1e-3,1e-4,1e-5")
    p.add_argument("--max-iter", type=int, default=200)
    p.add_argument("--draws", type=int, default=4)
    args = p.parse_args(argv)
    cfg = ExperimentConfig(**json.loads((args.run / "config.json").read_text()))
    task = args.run.parent.name
    physics = build_physics(task, cfg)
    model = build_model(task, "deq", cfg)
    weights = args.run / f"seed_{args.seed}" / "model.pt"
    model.load_state_dict(torch.load(weights, map_location=cfg.device))
    model.eval()
    transform = dinv.transform.Rotate(
        multiples=90, rng=torch.Generator().manual_seed(0)
    ) * dinv.transform.Shift(rng=torch.Generator().manual_seed(1))
    print(
        f"run {args.run} ({task}, {cfg.img_size}x{cfg.img_size}), {args.draws} group elements per batch"
    )
    print(
        "| tol | cold nfe (A^T y / default init) | warm nfe (T_g x_hat) | ratio "
        "| converged cold / warm |"
    )
    print("|---|---|---|---|---|")
    for tol in [float(t) for t in args.tols.split(",")]:
        model.solver.tol, model.solver.max_iter = tol, args.max_iter
        cold = warm = 0
        converged = {"cold": 0, "warm": 0, "all": 0}
        with torch.no_grad():
            for _, y in held_out_measurements(task, cfg):
                x_hat = model(y, physics)
                for _ in range(args.draws):
                    x2 = transform(x_hat)
                    y2 = physics.A(x2)
                    model(y2, physics)
                    cold += model.forward_stats.nfe
                    converged["cold"] += int(model.forward_stats.converged.sum())
                    model(y2, physics, init=x2)
                    warm += model.forward_stats.nfe
                    converged["warm"] += int(model.forward_stats.converged.sum())
                    converged["all"] += y2.shape[0]
        n = converged["all"]
        print(
            f"| {tol:g} | {cold} | {warm} | {cold / max(warm, 1):.2f}x "
            f"| {converged['cold']}/{n} / {converged['warm']}/{n} |"
        )


if __name__ == "__main__":
    main()
