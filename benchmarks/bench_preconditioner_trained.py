r"""Backward products of trained DEQs under each preconditioner policy (issue 17).

Loads the weights of finished DEQ runs of ``deepinv-deq claims`` (or ``run``) and, at the fixed
point of their first held-out batch, makes a sequence of implicit backward solves (random
right-hand sides, the model's own GMRES to its ``backward_tol``), as the first solves of a training
run would, with a fresh :class:`~deepinv_deq.preconditioners.FourierPreconditioner` per policy:

- ``off``: no preconditioner;
- ``threshold``: used where its cross-validated fit error is at most ``max_fit_error = 0.3``,
  else off (the default before trials; ``trial_fit_error=0``);
- ``trial``: the default: as ``threshold``, but between 0.3 and ``trial_fit_error = 0.6`` it is
  tried on the next solves and kept only if they needed fewer products;
- ``forced``: always used (``max_fit_error=inf``).

The column after ``trial`` leaves out the trial's own solves (what the rest of a run pays).

The products counted are those of the solves, the preconditioner's probes and the trial's solves
included. Every solve is checked to have converged. Run::

    python benchmarks/bench_preconditioner_trained.py /work/claims_out/ct64-25v/ct/deq-ei \
        /work/claims_out/ct32-12v/ct/deq-sup --solves 16
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from deepinv_deq.experiments.configs import ExperimentConfig
from deepinv_deq.experiments.evaluation import held_out_measurements
from deepinv_deq.experiments.methods import build_model
from deepinv_deq.experiments.tasks import build_physics
from deepinv_deq.preconditioners import FourierPreconditioner

POLICIES = {
    "off": None,
    "threshold": {"trial_fit_error": 0.0},
    "trial": {},
    "forced": {"max_fit_error": math.inf},
}
#: solves of a trial with the default two rounds (on, off, off, on)
TRIAL_SOLVES = 8


def load(run: Path, seed: int):
    cfg = ExperimentConfig(**json.loads((run / "config.json").read_text()))
    task = run.parent.name
    physics = build_physics(task, cfg)
    model = build_model(task, "deq", cfg)
    state = torch.load(run / f"seed_{seed}" / "model.pt", map_location="cpu")
    model.load_state_dict(state)
    _, y = held_out_measurements(task, cfg)[0]
    return model, physics, y


def products(model, physics, y, policy, solves: int, generator):
    model.backward.preconditioner = None if policy is None else FourierPreconditioner(**policy)
    model.train()
    x = model(y, physics)
    params = [p for p in model.parameters() if p.requires_grad]
    counts, converged, decision = [], 0, ""
    for _ in range(solves):
        v = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        torch.autograd.grad(x, params, v, retain_graph=True, allow_unused=True)
        stats = model.backward_stats
        counts.append(stats.nfe)
        converged += int(stats.converged.sum())
    pre = model.backward.preconditioner
    if pre is not None:
        decision = f"fit {pre.fit_error:.2f}, {'on' if pre.enabled else 'off'}"
        if pre.trial_products is not None:
            decision += " (trial {:.1f} vs {:.1f})".format(*pre.trial_products)
    return counts, converged, solves * x.shape[0], decision


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+", help="folders of trained DEQ runs")
    p.add_argument("--seed", type=int, default=0, help="which seed's weights to load")
    p.add_argument("--solves", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"products per backward solve, mean over the first {args.solves} solves")
    names = list(POLICIES)
    names.insert(names.index("trial") + 1, f"trial, solves > {TRIAL_SOLVES}")
    print("| run | fwd evals | " + " | ".join(names) + " | trial's decision | converged |")
    print("|---|---|" + "---|" * len(names) + "---|---|")
    for run in args.runs:
        model, physics, y = load(run, args.seed)
        with torch.no_grad():
            model(y, physics)
        row, decision, ok, total = [], "", 0, 0
        for name, policy in POLICIES.items():
            counts, conv, n, text = products(
                model, physics, y, policy, args.solves, torch.Generator().manual_seed(0)
            )
            row.append(f"{sum(counts) / len(counts):.1f}")
            ok, total = ok + conv, total + n
            if name == "trial":
                decision = text
                later = counts[TRIAL_SOLVES:]
                row.append(f"{sum(later) / len(later):.1f}" if later else "-")
        name = f"{run.parent.parent.name}/{run.name}"
        print(
            f"| {name} | {model.forward_stats.nfe} | "
            + " | ".join(row)
            + f" | {decision} | {ok}/{total} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
