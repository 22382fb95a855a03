r"""What the forward solve, other solves and a learned preconditioner each save the backward solve.

One backward system :math:`(I - J_F(x^\star)^\top) u = v` of a DEQ on sparse-view CT (64x64,
30 views, batch 4; PGD map with :class:`deepinv_deq.ContractiveDenoiser`, residual branch
perturbed as after training; ``v`` the gradient of an MSE loss), solved by GMRES to a relative
residual ``--tol`` (relative to ``||v||``) from several starting points or with a preconditioner.
Reported: the relative residual of the starting point, the vector-Jacobian products of the solve
(each ~1 map evaluation), and the products spent to build the starting point or preconditioner.

- ``zero``: :math:`u_0 = 0`; ``Neumann``: :math:`u_0 = v` (what the fixed-point solvers start at).
- ``forward history`` (the idea of SHINE, Ramzi et al. 2022): the forward Anderson solve's secant
  pairs :math:`(\Delta x_i, \Delta g_i)`, :math:`\Delta g_i \approx -(I - J)\Delta x_i`, give the
  least-squares :math:`u_0 \in \mathrm{span}(v, \Delta x_i)` with :math:`(I - J^\top)\Delta x_i`
  approximated by :math:`-\Delta g_i` (:math:`J` nearly symmetric here); ``exact products`` pays
  the products on that span to measure the subspace itself.
- ``recycled Krylov space``: the Krylov vectors of the other samples' systems (same operator at
  initialisation), as a recycling method across training steps would reuse them.
- ``Fourier preconditioner``: :class:`deepinv_deq.preconditioners.FourierPreconditioner` (two
  probes), right preconditioning.

Run: ``python benchmarks/bench_backward_reuse.py``.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
import deepinv as dinv

from common import markdown_table
from deepinv_deq import DEQ, ContractiveDenoiser
from deepinv_deq.preconditioners import FourierPreconditioner
from deepinv_deq.solvers import GMRES


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--angles", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--tol", type=float, default=1e-4)
    args = p.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    n, B = args.img_size, args.batch_size
    torch.manual_seed(0)
    np.random.seed(0)
    physics = dinv.physics.Tomography(
        angles=args.angles,
        img_width=n,
        normalize=True,
        noise_model=dinv.physics.GaussianNoise(0.01, rng=torch.Generator().manual_seed(0)),
    )
    data = dinv.utils.RandomPhantomDataset(length=B, size=n, use_dict_output=False)
    first = lambda item: item[0] if isinstance(item, (tuple, list)) else item
    x = torch.stack([first(data[i]) for i in range(B)])
    y = physics(x)
    den = ContractiveDenoiser()
    with torch.no_grad():
        [m for m in den.modules() if isinstance(m, torch.nn.Conv2d)][-1].weight.normal_(0, 0.02)
    model = DEQ(denoiser=den, iteration="PGD", stepsize=1.0, max_iter=100, tol=args.tol)
    history = []
    with torch.no_grad():
        x0 = physics.A_adjoint(y)
        result = model.solver(
            lambda t: model.map(t, y, physics),
            x0,
            callback=lambda k, xk, fxk: history.append((xk.clone(), fxk.clone())),
        )
    xs = result.x
    x_in = xs.clone().requires_grad_()
    z = model.map(x_in, y, physics)
    count = [0]

    def M(u):  # (I - J^T) u
        count[0] += 1
        (g,) = torch.autograd.grad(z, x_in, u, retain_graph=True)
        return u - g

    v = 2 * (xs - x) / x.numel()
    vb = v.flatten(1)
    ref = GMRES(max_iter=600, tol=1e-7, restart=80).solve(M, v).x

    def rel_residual(u):
        return ((v - M(u)).flatten(1).norm(dim=1) / vb.norm(dim=1)).max().item()

    def solve(u0=None, apply_inverse=None):
        gm = GMRES(max_iter=300, tol=args.tol, restart=40)
        count[0] = 0
        if apply_inverse is None:
            u = gm.solve(M, v, u0).x
        else:
            u = apply_inverse(gm.solve(lambda t: M(apply_inverse(t)), v).x)
        used = count[0]
        err = ((u - ref).norm() / ref.norm()).item()
        return used, rel_residual(u), err

    rows = []

    def add(name, u0, built, apply_inverse=None):
        start = 1.0 if u0 is None else rel_residual(u0)
        used, res, err = solve(u0, apply_inverse)
        rows.append([name, f"{start:.2f}", str(used), str(built), f"{res:.1e}", f"{err:.1e}"])

    add("zero", None, 0)
    add("Neumann u0 = v", v.clone(), 0)
    X = torch.stack([h[0] for h in history], 1).flatten(2)
    G = torch.stack([h[1] - h[0] for h in history], 1).flatten(2)
    dX, dG = X[:, 1:] - X[:, :-1], G[:, 1:] - G[:, :-1]
    U = torch.cat([vb[:, None], dX], 1)
    for exact in (False, True):
        count[0] = 0
        if exact:
            MU = torch.stack([M(t.reshape(v.shape)).flatten(1) for t in U.unbind(1)], 1)
        else:
            MU = torch.cat([M(v).flatten(1)[:, None], -dG], 1)
        built = count[0]
        c = torch.linalg.lstsq(MU.transpose(1, 2), vb[:, :, None]).solution
        u0 = (U.transpose(1, 2) @ c).squeeze(-1).reshape(v.shape)
        label = "forward history, exact products" if exact else "forward history (SHINE-like)"
        add(f"{label}, {U.shape[1]} vectors", u0, built)
    # recycled Krylov space of the other samples' systems
    count[0] = 0
    K = [v]
    for _ in range(12):
        K.append(M(K[-1]))
    Kb = torch.stack([t.flatten(1) for t in K], 1)
    built = count[0]
    u0 = torch.zeros_like(vb)
    for i in range(B):
        others = [j for j in range(B) if j != i]
        Ui = torch.cat([Kb[j, :-1] for j in others], 0)
        MUi = torch.cat([Kb[j, 1:] for j in others], 0)
        c = torch.linalg.lstsq(MUi.T, vb[i][:, None]).solution
        u0[i] = (Ui.T @ c).squeeze(-1)
    add("recycled Krylov space of the other samples", u0.reshape(v.shape), built)
    count[0] = 0
    pre = FourierPreconditioner()
    apply_inverse = pre.prepare(M, v)
    add(f"Fourier preconditioner (pad {pre.pad})", None, count[0], apply_inverse)

    print(
        f"CT {n}x{n}, {args.angles} views, batch {B}; forward {result.stats}; "
        f"||u||/||v|| = {(ref.norm() / v.norm()).item():.1f}; GMRES to {args.tol:g}\n"
    )
    header = [
        "start / preconditioner",
        "start residual",
        "products to tol",
        "products to build it",
        "final residual",
        "error vs reference",
    ]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
