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
total-variation denoiser (:class:`deepinv.models.TVDenoiser`), so the fixed point is a
TV-regularised reconstruction. It is not the :class:`deepinv_deq.ContractiveDenoiser` of the other
examples because an untrained network (:math:`D = 0.9\,I` at initialisation) would give no
reconstruction worth looking at; any deepinv denoiser, trained or not, plugs in the same way. The
TV proximal operator is non-expansive but not a contraction, so the plain fixed-point iteration is
slow here: a good case for Anderson acceleration. There is no backward pass (nothing to train);
the :doc:`EI example <../training/demo_ei_training_ct>` trains the denoiser of a DEQ end to end,
from measurements alone.
"""

import time

import matplotlib.pyplot as plt
import numpy as np
import torch

import deepinv as dinv
from deepinv_deq import DEQ

_ = torch.manual_seed(0)

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
# :class:`deepinv.models.TVDenoiser` computes the proximal operator of the total variation,
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
# (``init="pseudo_inverse"``), with a tolerance of :math:`10^{-4}` and at most 500 evaluations.

models = {
    solver: DEQ(
        denoiser=denoiser,
        iteration="PGD",
        stepsize=1.0,
        sigma_denoiser=0.001,
        max_iter=500,
        tol=1e-4,
        solver=solver,
        init="pseudo_inverse",  # start from the FBP
    )
    for solver in ("fixed_point", "anderson")
}

psnr = dinv.metric.PSNR()
results = {}
print(f"{'solver':<12}{'iterations':>11}{'converged':>11}{'residual':>10}{'PSNR':>9}{'time':>7}")
for solver, model in models.items():
    start = time.process_time()
    with torch.no_grad():  # evaluation: no backward is attached
        x_hat, metrics = model(y, physics, x_gt=x, compute_metrics=True)
    elapsed = time.process_time() - start
    stats = model.forward_stats
    results[solver] = (x_hat, stats, metrics)
    print(
        f"{solver:<12}{stats.nfe:>11}{stats.status_names().count('CONVERGED'):>9}/1"
        f"{stats.residual.max().item():>10.1e}{psnr(x_hat, x).item():>6.2f} dB{elapsed:>5.1f} s"
    )
print(f"{'FBP':<12}{'':>32}{psnr(x_fbp, x).item():>6.2f} dB")
print(model.forward_stats)

# %%
# Both solvers reach the tolerance, Anderson with fewer map evaluations, and the TV fixed point is
# above the FBP. ``model.forward_stats`` (printed last) is a
# :class:`deepinv_deq.solvers.SolverStats`: ``nfe`` map evaluations, the final residual and a
# status per image (``CONVERGED``, ``MAX_ITER``,
# ``DIVERGED`` or ``NONFINITE``), and the whole residual ``trace`` of shape ``(nfe, batch)``.
#
# Convergence
# -----------
# The residual of the plain iteration decays slowly (the TV map is not a contraction); Anderson
# acceleration reaches the tolerance in fewer evaluations, at the same PSNR. ``compute_metrics=True`` also records the PSNR of every iterate against ``x_gt``.

plt.rcParams.update({"font.size": 12})
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
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

# sphinx_gallery_thumbnail_number = 2

x_deq = results["anderson"][0]
dinv.utils.plot(
    [x, x_fbp, x_deq],
    titles=[
        "ground truth",
        f"FBP ({psnr(x_fbp, x).item():.1f} dB)",
        f"DEQ ({psnr(x_deq, x).item():.1f} dB)",
    ],
    figsize=(10, 3.6),
    fontsize=12,
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
print(
    f"warm start: {model.forward_stats.nfe} map evaluation(s), {model.forward_stats.status_names()}"
)
