r"""One training step: time and peak autograd memory of DEQ (implicit, JFB) against unrolled PGD.

On the same PGD map, data and initial iterate (see :mod:`common`), one step is
``loss = mse(model(y, physics), x); loss.backward()`` (the optimiser update, identical for all
models, is left out). Rows:

- ``DEQ implicit``: Anderson forward to ``tol``, Anderson implicit backward;
- ``DEQ JFB``: same forward, Jacobian-free backward;
- ``DEQ implicit, K fwd iters``: the forward forced to exactly ``K`` iterations (``tol=0``), to
  show that the memory does not grow with the number of iterations;
- ``unrolled PGD K``: ``K`` evaluations of the same map from :math:`A^\top y`, differentiated by
  autograd, for K = 10, 20, 40;
- ``deepinv DEQ``: deepinv 0.5's ``PGD(..., DEQ=DEQConfig(), anderson_acceleration=...)``.

Memory: on CPU, the bytes of the distinct tensors autograd saves for the backward pass
(:func:`common.saved_tensor_meter`, parameters excluded) -- the memory the graph pins from the
forward to the backward, which is the peak of a step up to transient buffers. On CUDA, also
``torch.cuda.max_memory_allocated`` during the step minus the memory allocated before it.

Run: ``python benchmarks/bench_training.py [--device cuda] [--repeats 5]``.
"""

from __future__ import annotations

import warnings

import torch

from common import (
    build_problem,
    describe,
    markdown_table,
    median,
    parse_args,
    repeat,
    saved_tensor_meter,
    spread,
)


class Unrolled(torch.nn.Module):
    r"""``K`` iterations of a map from :math:`A^\top y`, differentiated by ordinary autograd."""

    def __init__(self, fmap: torch.nn.Module, n_iter: int):
        super().__init__()
        self.map = fmap
        self.n_iter = n_iter

    def forward(self, y, physics):
        x = physics.A_adjoint(y)
        for _ in range(self.n_iter):
            x = self.map(x, y, physics)
        return x


def build_models(pb, tol: float) -> dict:
    r"""The models compared, all sharing the denoiser (and so its parameters)."""
    from deepinv.optim import AndersonAccelerationConfig
    from deepinv_deq import DEQ

    from bench_forward import deepinv_pgd

    common = dict(denoiser=pb.denoiser, iteration="PGD", stepsize=pb.stepsize, sigma_denoiser=pb.sigma)
    models = {
        "DEQ implicit": DEQ(**common, max_iter=200, tol=tol, backward="implicit"),
        "DEQ JFB": DEQ(**common, max_iter=200, tol=tol, backward="jfb"),
    }
    for k in (10, 20, 40):
        models[f"DEQ implicit, {k} fwd iters"] = DEQ(**common, max_iter=k, tol=0.0, backward="implicit")
    for k in (10, 20, 40):
        models[f"unrolled PGD K={k}"] = Unrolled(pb.pgd_map(), k)
    models["deepinv DEQ (anderson m=5)"] = deepinv_pgd(
        pb.denoiser,
        pb.stepsize,
        pb.sigma,
        200,
        tol,
        AndersonAccelerationConfig(history_size=5, beta=1.0, eps=1e-4),
    )
    return {k: m.to(pb.device) for k, m in models.items()}


def main():
    args = parse_args(__doc__.splitlines()[0], lambda p: p.add_argument("--tol", type=float, default=1e-4))
    warnings.filterwarnings("ignore")
    pb = build_problem(args)
    params = list(pb.denoiser.parameters())
    cuda = pb.device.type == "cuda"
    rows = []
    mem = {}
    for name, model in build_models(pb, args.tol).items():
        counts = []

        def step():
            for p in params:
                p.grad = None
            before = pb.denoiser.calls
            out = model(pb.y, pb.physics)
            torch.nn.functional.mse_loss(out, pb.x).backward()
            counts.append(pb.denoiser.calls - before)

        # memory: one metered step (and, on CUDA, the allocator's peak)
        if cuda:
            torch.cuda.synchronize(pb.device)
            torch.cuda.reset_peak_memory_stats(pb.device)
            base = torch.cuda.memory_allocated(pb.device)
        with saved_tensor_meter(exclude=params) as meter:
            step()
        graph_mb = meter["bytes"] / 2**20
        mem[name] = graph_mb
        cuda_mb = (torch.cuda.max_memory_allocated(pb.device) - base) / 2**20 if cuda else None
        _, ts = repeat(step, pb.device, args.repeats, warmup=0)
        fwd = getattr(model, "forward_stats", None)
        bwd = getattr(model, "backward_stats", None) if "implicit" in name else None
        row = [
            name,
            fwd.nfe if fwd is not None else "-",
            bwd.nfe if bwd is not None else "-",
            counts[-1],
            f"{median(ts) * 1e3:.0f}",
            f"{spread(ts):.0%}",
            f"{graph_mb:.2f}",
        ]
        if cuda:
            row.append(f"{cuda_mb:.1f}")
        rows.append(row)
    header = ["model", "fwd map evals", "bwd VJPs", "denoiser calls", "step time (ms)", "time spread", "graph memory (MiB)"]
    if cuda:
        header.append("CUDA peak (MiB)")
    print(describe(args))
    print()
    print(markdown_table(header, rows))
    print()
    ref = mem["unrolled PGD K=20"]
    for name in ("DEQ implicit", "DEQ JFB", "DEQ implicit, 40 fwd iters"):
        print(f"graph memory {name} / unrolled PGD K=20: {mem[name] / ref:.3f}")
    n = pb.x[0].numel() * pb.x.shape[0]
    print(
        f"Anderson history (not in the graph; forward and backward each, freed after use): "
        f"2 x 5 x {n} x {pb.x.element_size()} B = {2 * 5 * n * pb.x.element_size() / 2**20:.2f} MiB"
    )


if __name__ == "__main__":
    main()
