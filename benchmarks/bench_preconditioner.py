r"""Products per implicit backward solve with and without the Fourier preconditioner, on several physics.

For each problem, a contractive DEQ (PGD map, :class:`deepinv_deq.ContractiveDenoiser`, at
initialisation and with a perturbed residual branch that stands for a trained one) reconstructs a
batch, and the backward solve of ``<w, x*>`` (``w`` a fixed random image) is run with each linear
solver, without and with :class:`deepinv_deq.preconditioners.FourierPreconditioner`, to the same
tolerance relative to ``||w||``. Reported: vector-Jacobian products (probes included), the true
relative residual ``||w - (I - J^T) u|| / ||w||`` of the answer (worst sample), and its error
against a tight reference solve. Counts, not times: they do not depend on the machine's load.

Run: ``python benchmarks/bench_preconditioner.py [--tol 1e-4] [--size 64]``.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
import deepinv as dinv

from common import markdown_table
from deepinv_deq import DEQ, ContractiveDenoiser
from deepinv_deq.backward import ImplicitDifferentiation
from deepinv_deq.preconditioners import FourierPreconditioner
from deepinv_deq.solvers import GMRES


def problems(n: int, generator: torch.Generator):
    noise = lambda s: dinv.physics.GaussianNoise(s, rng=torch.Generator().manual_seed(0))
    yield (
        "CT, 30 views",
        1,
        dinv.physics.Tomography(
            angles=30 * n // 64, img_width=n, normalize=True, noise_model=noise(0.01)
        ),
    )
    for acc in (4, 8):
        mask = dinv.physics.generator.GaussianMaskGenerator(
            img_size=(n, n), acceleration=acc, rng=torch.Generator().manual_seed(0)
        ).step()["mask"]
        yield (
            f"MRI {acc}x",
            2,
            dinv.physics.MRI(mask=mask, img_size=(2, n, n), noise_model=noise(0.01)),
        )
    kernel = dinv.physics.blur.gaussian_blur(sigma=2.0)
    yield (
        "blur (FFT, sigma 2)",
        1,
        dinv.physics.BlurFFT(img_size=(1, n, n), filter=kernel, noise_model=noise(0.01)),
    )
    yield (
        "inpainting 50%",
        1,
        dinv.physics.Inpainting(
            img_size=(1, n, n),
            mask=0.5,
            noise_model=noise(0.01),
            rng=torch.Generator().manual_seed(0),
        ),
    )
    yield "denoising", 1, dinv.physics.Denoising(noise_model=noise(0.1))


def images(n: int, channels: int, batch: int) -> torch.Tensor:
    np.random.seed(0)
    data = dinv.utils.RandomPhantomDataset(length=batch, size=n, use_dict_output=False)
    x = torch.stack(
        [data[i][0] if isinstance(data[i], (tuple, list)) else data[i] for i in range(batch)]
    )
    return x.repeat(1, channels, 1, 1) * (torch.tensor([1.0, 0.3])[:channels, None, None])


def count_solve(model, y, physics, w, solver, preconditioner, tol):
    budget = {} if isinstance(solver, GMRES) else {"tol": tol, "max_iter": 300}
    if preconditioner == "fourier":
        preconditioner = FourierPreconditioner()
    backward = ImplicitDifferentiation(solver=solver, preconditioner=preconditioner, **budget)
    model.backward = backward
    model.zero_grad()
    out = model(y, physics)
    (out * w).sum().backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return backward.last_stats, grad


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    g = torch.Generator().manual_seed(0)
    rows = []
    for name, channels, physics in problems(args.size, g):
        x = images(args.size, channels, args.batch)
        y = physics(x)
        for state in ("init", "perturbed"):
            torch.manual_seed(0)
            den = ContractiveDenoiser(in_channels=channels)
            if state == "perturbed":
                with torch.no_grad():
                    [m for m in den.modules() if isinstance(m, torch.nn.Conv2d)][-1].weight.normal_(
                        0, 0.02
                    )
            model = DEQ(denoiser=den, iteration="PGD", stepsize=1.0, max_iter=200, tol=1e-6)
            w = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
            ref, gref = count_solve(
                model, y, physics, w, GMRES(max_iter=600, tol=1e-7, restart=60), None, None
            )
            fwd = model.forward_stats
            cells = []
            for solver in ("gmres", "anderson"):
                for pre in (None, "fourier"):
                    stats, grad = count_solve(model, y, physics, w, solver, pre, args.tol)
                    err = (grad - gref).norm() / gref.norm()
                    cells.append(f"{stats.nfe} ({stats.residual.max():.0e}, {err:.0e})")
            rows.append([name, state, f"{fwd.nfe}", f"{ref.residual.max():.0e}", *cells])
            print(" | ".join(rows[-1]), flush=True)
    header = ["problem", "denoiser", "fwd evals", "ref residual"]
    header += ["gmres", "gmres + fourier", "anderson", "anderson + fourier"]
    print()
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
