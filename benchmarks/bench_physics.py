r"""Cost of the CT operator: deepinv's ``Tomography`` against the same operator stored as sparse matrices.

For each size (image side, views), side by side in one process: the time to build
:class:`deepinv_deq.physics.SparseMatrixPhysics` (probing :math:`A` on the canonical basis) and its
non-zeros; then, for a batch of images, the CPU time of :math:`A`, of :math:`A^\top`, of one PGD map
evaluation :math:`F(x) = D(x - A^\top(Ax - y))` with the experiments' denoiser
(:class:`deepinv_deq.ContractiveDenoiser`, its residual branch perturbed as after training), and of
one vector-Jacobian product of that map (the unit of the implicit backward), with each operator;
and the largest relative difference of the outputs (the operator is the same up to float
rounding). Medians over ``--repeats`` timings.

Run: ``python benchmarks/bench_physics.py [--batch 8] [--repeats 20]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import deepinv as dinv
import torch

from common import markdown_table
from deepinv_deq import ContractiveDenoiser
from deepinv_deq.maps import PGDMap
from deepinv_deq.physics import SparseMatrixPhysics

#: (image side, views, denoiser depth, width): the demo, the benchmarks' problem, the scale preset,
#: the gpu preset's size
SIZES = ((32, 12, 5, 16), (64, 30, 5, 16), (64, 25, 8, 32), (128, 50, 7, 32))


def cpu_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return 1e3 * statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-size", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    rows = []
    for n, views, depth, width in SIZES:
        if n > args.max_size:
            continue
        ct = dinv.physics.Tomography(angles=views, img_width=n, circle=False, normalize=True)
        start = time.perf_counter()
        fast = SparseMatrixPhysics(ct)
        build_s = time.perf_counter() - start
        g = torch.Generator().manual_seed(0)
        x = torch.rand(args.batch, 1, n, n, generator=g)
        y = ct.A(x)
        torch.manual_seed(0)
        denoiser = ContractiveDenoiser(in_channels=1, depth=depth, width=width)
        with torch.no_grad():  # a trained-like residual branch
            [m for m in denoiser.modules() if isinstance(m, torch.nn.Conv2d)][-1].weight.normal_(
                0, 0.02
            )
        fmap = PGDMap(denoiser, stepsize=1.0, sigma_denoiser=0.05)
        u = torch.randn(x.shape, generator=g)
        cells, outputs = {}, {}
        for name, physics in (("deepinv", ct), ("sparse", fast)):
            with torch.no_grad():
                cells[name, "A"] = cpu_ms(lambda: physics.A(x), args.repeats)
                cells[name, "AT"] = cpu_ms(lambda: physics.A_adjoint(y), args.repeats)
                cells[name, "map"] = cpu_ms(lambda: fmap(x, y, physics), args.repeats)
                outputs[name] = fmap(x, y, physics)
            xin = x.clone().requires_grad_()
            z = fmap(xin, y, physics)
            cells[name, "vjp"] = cpu_ms(
                lambda: torch.autograd.grad(z, xin, u, retain_graph=True), args.repeats
            )
        diff = (outputs["sparse"] - outputs["deepinv"]).abs().max() / outputs["deepinv"].abs().max()
        for name in ("deepinv", "sparse"):
            rows.append(
                [
                    f"{n}x{n}, {views} views, D {depth}x{width}",
                    name,
                    "-" if name == "deepinv" else f"{build_s:.1f} s, nnz {fast.nnz}",
                    *(f"{cells[name, k]:.2f}" for k in ("A", "AT", "map", "vjp")),
                    f"{cells['deepinv', 'map'] / cells[name, 'map']:.2f}x",
                    "-" if name == "deepinv" else f"{float(diff):.1e}",
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
    header = ["problem", "operator", "build", "A (ms)", "A^T (ms)", "map (ms)", "map VJP (ms)"]
    header += ["map speed-up", "max rel. diff of F(x)"]
    print()
    print(f"batch {args.batch}, {args.threads} thread(s), CPU time, median of {args.repeats}")
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
