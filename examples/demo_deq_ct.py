r"""
A deep equilibrium model for sparse-view CT
===========================================

This example reconstructs a Shepp-Logan phantom from 40 noisy tomographic projections with a
:class:`deepinv_deq.DEQ`: the fixed point of a proximal gradient (PGD) iteration whose proximal
step is a denoiser,

.. math::

   x^\star = D_\theta\big(x^\star - \eta A^\top(A x^\star - y)\big).

It shows how to build the model, read the statistics of the solve (iterations, residuals, status
per image), plot the convergence of the fixed-point iteration against Anderson acceleration, and
follow the PSNR along the iterations.

To run in well under a minute on a CPU without any training, the denoiser here is a fixed
total-variation denoiser (:deepinv:`deepinv.models.TVDenoiser`), so the fixed point is a
TV-regularised reconstruction; any deepinv denoiser, trained or not, plugs in the same way. The
:doc:`EI example <demo_ei_training_ct>` trains the denoiser of a DEQ end to end, from measurements
alone.
"""

import time

import matplotlib.pyplot as plt
import numpy as np
import torch

import deepinv as dinv
from deepinv_deq import DEQ

torch.manual_seed(0)

# %%
# The problem
# -----------
# A 96 x 96 Shepp-Logan phantom, 40 projection angles over 180 degrees, Gaussian noise of
# standard deviation 0.002. ``normalize=True`` scales the operator so that :math:`\|A\| = 1`, so a
# step size :math:`\eta = 1` is safe for the gradient step.

img_size = 96
physics = dinv.physics.Tomography(
    angles=40,
    img_width=img_size,
    normalize=True,
    circle=True,  # the phantom lies inside the disc seen by every view
    noise_model=dinv.physics.GaussianNoise(sigma=0.002),
)
x = dinv.utils.SheppLoganDataset(size=img_size, use_dict_output=True)[0]["x"].unsqueeze(0)
y = physics(x)
x_fbp = physics.A_dagger(y)  # filtered back-projection

# %%
# The denoiser
# ------------
# :deepinv:`deepinv.models.TVDenoiser` computes the proximal operator of the total variation,
# :math:`D_\sigma(z) = \arg\min_u \tfrac12\|u - z\|^2 + \sigma \mathrm{TV}(u)`, by inner
# primal-dual iterations; ``sigma_denoiser`` of the DEQ is its weight :math:`\sigma`. deepinv's
# TV denoiser keeps its inner variables between calls (a warm restart); a fixed-point map must be
# the same function at every call, so the small wrapper below resets them each time.


class TV(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.tv = dinv.models.TVDenoiser(n_it_max=100, tau=0.1, crit=1e-6)

    def forward(self, x, sigma):
        self.tv.restart = True
        return self.tv(x, sigma)


denoiser = TV()

# %%
# The DEQ
# -------
# ``iteration="PGD"`` builds the map above; the forward solve stops when the relative residual
# :math:`\|F(x_k) - x_k\| / \|x_k\|` falls below ``tol`` for every image, or after ``max_iter``
# evaluations. We build the same model with the plain fixed-point iteration and with Anderson
# acceleration (the default), both started from the filtered back-projection
# (``init="pseudo_inverse"``).

models = {
    solver: DEQ(
        denoiser=denoiser,
        iteration="PGD",
        stepsize=1.0,
        sigma_denoiser=0.001,
        max_iter=100,
        tol=1e-3,
        solver=solver,
        init="pseudo_inverse",  # start from the FBP
    )
    for solver in ("fixed_point", "anderson")
}

psnr = dinv.metric.PSNR()
results = {}
for solver, model in models.items():
    start = time.perf_counter()
    with torch.no_grad():  # evaluation: no backward is attached
        x_hat, metrics = model(y, physics, x_gt=x, compute_metrics=True)
    elapsed = time.perf_counter() - start
    results[solver] = (x_hat, model.forward_stats, metrics)
    print(f"{solver:>11}: {model.forward_stats}  PSNR {psnr(x_hat, x).item():.2f} dB  ({elapsed:.1f} s)")
print(f"        FBP: PSNR {psnr(x_fbp, x).item():.2f} dB")

# %%
# ``model.forward_stats`` is a :class:`deepinv_deq.solvers.SolverStats`: ``nfe`` map
# evaluations, the final residual and a status per image (``CONVERGED``, ``MAX_ITER``,
# ``DIVERGED`` or ``NONFINITE``), and the whole residual ``trace`` of shape ``(nfe, batch)``.
#
# Convergence
# -----------
# Both solvers reach the same fixed point; Anderson acceleration needs fewer map evaluations.
# ``compute_metrics=True`` also records the PSNR of every iterate against ``x_gt``.

fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for solver, (x_hat, stats, metrics) in results.items():
    axes[0].semilogy(np.arange(1, stats.nfe + 1), stats.trace[:, 0], label=solver)
    axes[1].plot(np.arange(1, len(metrics["psnr"][0]) + 1), metrics["psnr"][0], label=solver)
axes[0].axhline(models["anderson"].solver.tol, color="0.5", ls="--", lw=1, label="tolerance")
axes[0].set_xlabel("map evaluations")
axes[0].set_ylabel(r"$\|F(x_k) - x_k\| / \|x_k\|$")
axes[0].set_title("relative residual")
axes[0].legend()
axes[1].axhline(psnr(x_fbp, x).item(), color="0.5", ls=":", lw=1, label="FBP")
axes[1].set_xlabel("map evaluations")
axes[1].set_ylabel("PSNR (dB)")
axes[1].set_title("PSNR of the iterates")
axes[1].legend()
fig.tight_layout()
plt.show()

# %%
# Reconstructions
# ---------------

x_deq = results["anderson"][0]
dinv.utils.plot(
    [x, x_fbp, x_deq],
    titles=[
        "ground truth",
        f"FBP ({psnr(x_fbp, x).item():.1f} dB)",
        f"DEQ ({psnr(x_deq, x).item():.1f} dB)",
    ],
    figsize=(10, 3.6),
)

# %%
# Warm start
# ----------
# ``model(y, physics, init=x0)`` starts the solver from ``x0`` instead of :math:`A^\top y`, e.g.
# the reconstruction of the previous frame, or of the same measurements before a small parameter
# update. Started at its own fixed point, the solve stops almost at once.

model = models["anderson"]
with torch.no_grad():
    model(y, physics, init=x_deq)
print("warm start:", model.forward_stats)
