r"""
Training a DEQ without ground truth: equivariant imaging on CT
==============================================================

A :class:`deepinv_deq.DEQ` is trained on sparse-view CT measurements only, with deepinv's
measurement-consistency (MC) and equivariant imaging (EI) losses, through
:class:`deepinv.Trainer`:

.. math::

   \mathcal{L}(\theta) = \|A \hat{x} - y\|^2 + \|f_\theta(A T_g \hat{x}) - T_g \hat{x}\|^2,
   \qquad \hat{x} = f_\theta(y),

with :math:`T_g` a random rotation. The EI term calls the DEQ a second time; each call solves its
own fixed point and attaches its own implicit backward, so the gradient is exact for both.
:class:`deepinv_deq.DEQMonitor` records every forward and backward solve, so the example can say how
many of them converged.

The size is small (32 x 32 images, 12 views, 64 training steps) so that the example runs in about a
minute on a CPU; the ``deepinv-deq`` command line (:doc:`../../user_guide/experiments`) trains at
larger sizes.
"""

import matplotlib.pyplot as plt
import torch

import deepinv as dinv
from deepinv_deq import DEQ, ContractiveDenoiser, DEQMonitor, spectral_radius
from deepinv_deq.data import SeededPhantomDataset

_ = torch.manual_seed(0)

# %%
# Data and physics
# ----------------
# Random-ellipse phantoms (:class:`deepinv_deq.data.SeededPhantomDataset`, generated offline and
# reproducibly from a seed): 32 for training, 16 held out. The training images are used only to
# simulate measurements on the fly (``online_measurements=True``) and to report PSNR: no loss below
# reads them. The operator is :class:`deepinv.physics.Tomography` with 12 views over 180 degrees,
# scaled to :math:`\|A\| = 1`, with Gaussian noise.

img_size = 32
train_set = SeededPhantomDataset(32, size=img_size, kind="ct", seed=0, split=0)
test_set = SeededPhantomDataset(16, size=img_size, kind="ct", seed=0, split=1)
train_loader = torch.utils.data.DataLoader(
    train_set, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)
)
test_loader = torch.utils.data.DataLoader(test_set, batch_size=16)

physics = dinv.physics.Tomography(
    angles=12,
    img_width=img_size,
    normalize=True,
    circle=False,
    noise_model=dinv.physics.GaussianNoise(sigma=0.005),
)

# %%
# The model
# ---------
# PGD iterations :math:`F(x) = D_\theta(x - A^\top(Ax - y))` with a
# :class:`deepinv_deq.ContractiveDenoiser` :math:`D_\theta(x) = 0.9\,x + R_\theta(x)`, where
# :math:`R_\theta` is a small CNN whose last layer starts at zero. At initialisation the map is
# therefore a contraction (:math:`\rho(J_F) \le 0.9`): the fixed point is unique and both the
# forward solve and the implicit backward system :math:`(I - J_F^\top)u = v` are well posed.
# Anderson acceleration forward, GMRES with the Fourier preconditioner backward (the defaults),
# tolerance :math:`10^{-4}` both ways, at most 100 iterations.

model = DEQ(
    denoiser=ContractiveDenoiser(in_channels=1),
    iteration="PGD",
    stepsize=1.0,
    max_iter=100,
    tol=1e-4,
    backward="implicit",
    backward_max_iter=100,
    backward_tol=1e-4,
    init="pseudo_inverse",  # start the solve at the FBP: fewer iterations, same fixed point
)

x_test = next(iter(test_loader))
_ = torch.manual_seed(1)
y_test = physics(x_test)
with torch.no_grad():
    x_untrained = model(y_test, physics)
rho_init = spectral_radius(model, y_test[:4], physics).max().item()

# %%
# Training with MC + EI
# ---------------------
# The Trainer and both losses are deepinv's own. 64 Adam steps (16 epochs of 4 batches).

monitor = DEQMonitor(model, max_history=10_000)  # keep every solve
losses = [
    dinv.loss.MCLoss(),
    dinv.loss.EILoss(transform=dinv.transform.Rotate(interpolation_mode="bilinear")),
]
trainer = dinv.Trainer(
    model=model,
    physics=physics,
    train_dataloader=train_loader,
    losses=losses,
    optimizer=torch.optim.Adam(model.parameters(), lr=2e-3),
    epochs=16,
    online_measurements=True,
    non_blocking_transfers=False,  # CPU
    save_path=None,
    show_progress_bar=False,
    verbose=False,
    device="cpu",
)
model = trainer.train()
model.eval()


summary = monitor.summary()  # over every solve recorded during training (tol 1e-4)
print(f"training: {len(monitor.history)} solves, {summary['not_converged']:.1%} not converged")
for kind in ("forward", "backward"):
    print(
        f"  {kind:<8} {summary[kind + '_nfe']:5.1f} iterations (mean), "
        f"max final residual {summary[kind + '_residual']:.3e}"
    )

# %%
# Results on held-out images
# --------------------------
# The trained DEQ against the filtered back-projection (FBP, deepinv's ``A_dagger``) and against
# the same DEQ before training, on the 16 test images.

with torch.no_grad():
    x_hat = model(y_test, physics)
test_stats = model.forward_stats
rho_trained = spectral_radius(model, y_test[:4], physics).max().item()
x_fbp = physics.A_dagger(y_test)
psnr = dinv.metric.PSNR()
rows = [
    ("FBP", psnr(x_fbp, x_test).mean().item()),
    ("untrained DEQ", psnr(x_untrained, x_test).mean().item()),
    ("EI-DEQ", psnr(x_hat, x_test).mean().item()),
]
for name, value in rows:
    print(f"{name:<14} {value:6.2f} dB")
print(
    f"test solve: {test_stats.nfe} iterations, {test_stats.status_names().count('CONVERGED')}/16 converged"
)
print(f"spectral radius of J_F: {rho_init:.3f} at initialisation, {rho_trained:.3f} after training")

# %%
# Trained from measurements alone, the EI-DEQ is above the FBP on the held-out images, and every
# forward and backward solve reached its tolerance, during training and at test. The untrained DEQ
# (:math:`D = 0.9\,I`, a damped least-squares solution) scores about as the FBP does: the gain is
# learned. The spectral radius of :math:`J_F` stays below one after training, so the fixed point is
# still unique.

dinv.utils.plot(
    [x_test[:3], x_fbp[:3], x_hat[:3]],
    titles=["ground truth", "FBP", "EI-DEQ"],
    figsize=(6, 6),
    fontsize=12,
)

# %%
# Solver statistics during training
# ---------------------------------
# Iterations of every forward solve (the reconstruction, then the EI solve, at each step) and of
# every implicit backward solve, against the iteration cap.

fwd = [r.stats.nfe for r in monitor.history if r.kind == "forward"]
bwd = [r.stats.nfe for r in monitor.history if r.kind == "backward"]
fig, ax = plt.subplots(figsize=(7, 3.2))
ax.plot(fwd, ".", ms=4, label="forward")
ax.plot(bwd, ".", ms=4, label="backward (implicit)")
ax.set_xlabel("solve", fontsize=12)
ax.set_ylabel("iterations", fontsize=12)
ax.set_ylim(0, None)
ax.set_title("iterations to reach tol = 1e-4 (cap 100)", fontsize=12)
ax.legend(fontsize=11)
fig.tight_layout()
plt.show()
