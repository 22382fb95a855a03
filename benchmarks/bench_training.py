r"""One training step: time and peak autograd memory of DEQ (implicit, JFB) against unrolled PGD.

On the same PGD map, data and initial iterate (see :mod:`common`), one step is
``loss = mse(model(y, physics), x); loss.backward()`` (the optimiser update, identical for all
models, is left out). Rows:

- ``DEQ implicit``: Anderson forward to ``tol``, Anderson implicit backward;
- ``DEQ JFB``: same forward, Jacobian-free backward;
- ``DEQ implicit, tol t``: the same DEQ solved to tighter tolerances (more forward and backward
  iterations, every solve converged), to show that the memory does not grow with the iterations;
- ``unrolled PGD K``: ``K`` evaluations of the same map from :math:`A^\top y`, differentiated by
  autograd, for K = 10, 20, 40;
- ``deepinv DEQ``: deepinv 0.5's ``PGD(..., DEQ=DEQConfig(), anderson_acceleration=...)``.

Times are medians over round-robin repetitions (all models see the same machine load); ``time /
t_map`` divides each step's time by the time of one map evaluation measured right before it.

Memory: on CPU, the bytes of the distinct tensors autograd saves for the backward pass
(:func:`common.saved_tensor_meter`, parameters excluded) -- the memory the graph pins from the
forward to the backward, which is the peak of a step up to transient buffers. On CUDA, also
``torch.cuda.max_memory_allocated`` during the step minus the memory allocated before it.

Run: ``python benchmarks/bench_training.py [--device cuda] [--repeats 5]``.
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
    saved_tensor_meter,
    spread,
    timed,
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

    common = dict(
        denoiser=pb.denoiser, iteration="PGD", stepsize=pb.stepsize, sigma_denoiser=pb.sigma
    )
    models = {
        "DEQ implicit": DEQ(**common, max_iter=200, tol=tol, backward="implicit"),
        "DEQ JFB": DEQ(**common, max_iter=200, tol=tol, backward="jfb"),
    }
    for t in (1e-5, 1e-6):
        models[f"DEQ implicit, tol {t:g}"] = DEQ(
            **common,
            max_iter=200,
            tol=t,
            backward="implicit",
            backward_tol=t,
            backward_max_iter=200,
        )
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


def _converged(fwd, bwd) -> str:
    # samples that reached the tolerance in the last step's solves (read once, after the timings)
    if fwd is None:
        return "-"
    out = f"{int(fwd.converged.sum())}/{fwd.converged.numel()}"
    return out + (f" / {int(bwd.converged.sum())}/{bwd.converged.numel()}" if bwd else " / -")


def main():
    args = parse_args(
        __doc__.splitlines()[0], lambda p: p.add_argument("--tol", type=float, default=1e-4)
    )
    quiet_library_notices()
    pb = build_problem(args)
    params = list(pb.denoiser.parameters())
    cuda = pb.device.type == "cuda"
    models = build_models(pb, args.tol)
    fmap_module = pb.pgd_map()
    x0 = pb.x0()

    def make_step(model):
        def step():
            for p in params:
                p.grad = None
            before = pb.denoiser.calls
            out = model(pb.y, pb.physics)
            torch.nn.functional.mse_loss(out, pb.x).backward()
            return pb.denoiser.calls - before

        return step

    # memory: one metered step per model (and, on CUDA, the allocator's peak); it is also the
    # warm-up of the timings
    mem, cuda_mem, calls = {}, {}, {}
    for name, model in models.items():
        if cuda:
            torch.cuda.synchronize(pb.device)
            torch.cuda.reset_peak_memory_stats(pb.device)
            base = torch.cuda.memory_allocated(pb.device)
        with saved_tensor_meter(exclude=params) as meter:
            calls[name] = make_step(model)()
        mem[name] = meter["bytes"] / 2**20
        if cuda:
            cuda_mem[name] = (torch.cuda.max_memory_allocated(pb.device) - base) / 2**20
    # time: round robin over the models (same machine load for all), each step normalised by
    # the time of one map evaluation measured right before it
    times = {name: [] for name in models}
    norm = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            with torch.no_grad():
                _, t_maps = repeat(
                    lambda: fmap_module(x0, pb.y, pb.physics), pb.device, repeats=3, warmup=0
                )
            _, t = timed(make_step(model), pb.device)
            times[name].append(t)
            norm[name].append(t / median(t_maps))
    rows = []
    for name, model in models.items():
        fwd = getattr(model, "forward_stats", None)
        bwd = getattr(model, "backward_stats", None) if "implicit" in name else None
        row = [
            name,
            fwd.nfe if fwd is not None else "-",
            bwd.nfe if bwd is not None else "-",
            _converged(fwd, bwd),
            calls[name],
            f"{median(times[name]) * 1e3:.0f}",
            f"{spread(times[name]):.0%}",
            f"{median(norm[name]):.1f}",
            f"{mem[name]:.2f}",
        ]
        if cuda:
            row.append(f"{cuda_mem[name]:.1f}")
        rows.append(row)
    header = [
        "model",
        "fwd map evals",
        "bwd VJPs",
        "converged fwd / bwd",
        "denoiser calls",
        "step time (ms)",
        "time spread",
        "time / t_map",
        "graph memory (MiB)",
    ]
    if cuda:
        header.append("CUDA peak (MiB)")
    print(describe(args))
    print()
    print(markdown_table(header, rows))
    print()
    ref = mem["unrolled PGD K=20"]
    for name in ("DEQ implicit", "DEQ JFB", "DEQ implicit, tol 1e-06"):
        print(f"graph memory {name} / unrolled PGD K=20: {mem[name] / ref:.3f}")
    n = pb.x[0].numel() * pb.x.shape[0]
    print(
        f"Anderson history (not in the graph; forward and backward each, freed after use): "
        f"2 x 5 x {n} x {pb.x.element_size()} B = {2 * 5 * n * pb.x.element_size() / 2**20:.2f} MiB"
    )


if __name__ == "__main__":
    main()
