r"""
Equivariance diagnostics of trained DEQs
========================================

The paper argues that DEQs trained with equivariant imaging become (approximately) equivariant
to the group used in training, and that their learned denoiser behaves like the proximal operator
of a group-invariant prior. :mod:`deepinv_deq.diagnostics` measures both:

- :func:`deepinv_deq.diagnostics.equivariance_error`: how far the reconstructor is from
  commuting with the transformations,
  :math:`\mathbb{E}\|f(A T_g x) - T_g f(A x)\|^2 / \|T_g f(A x)\|^2`;
- :func:`deepinv_deq.diagnostics.invariant_prior_test`: the equivariance error of the learned
  denoiser and the asymmetry of its Jacobian (both zero for the prox of a convex invariant prior).

Two DEQs with the same architecture and the same initial weights are trained on the same CT
measurements, one with measurement consistency only (MC), one with MC + EI (rotations), and
compared, with the untrained DEQ as a reference. Small size (32 x 32, 40 steps each): about a
minute on a CPU.
"""

import copy

import matplotlib.pyplot as plt
import torch

import deepinv as dinv
from deepinv_deq import DEQ, ContractiveDenoiser, DEQMonitor
from deepinv_deq.data import SeededPhantomDataset
from deepinv_deq.diagnostics import equivariance_error, invariant_prior_test

_ = torch.manual_seed(0)

# %%
# Setting
# -------
# The CT problem of the :doc:`EI example <demo_ei_training_ct>`: random-ellipse phantoms, 12 views,
# Gaussian noise, a PGD DEQ with a :class:`deepinv_deq.ContractiveDenoiser` (a contraction at
# initialisation), tolerance :math:`10^{-4}` forward and backward.

img_size = 32
train_set = SeededPhantomDataset(32, size=img_size, kind="ct", seed=0, split=0)
test_images = torch.stack(
    [SeededPhantomDataset(16, size=img_size, kind="ct", seed=0, split=1)[i] for i in range(16)]
)
physics = dinv.physics.Tomography(
    angles=12,
    img_width=img_size,
    normalize=True,
    circle=False,
    noise_model=dinv.physics.GaussianNoise(sigma=0.005),
)
rotate = dinv.transform.Rotate(interpolation_mode="bilinear")

untrained = DEQ(
    denoiser=ContractiveDenoiser(in_channels=1),
    iteration="PGD",
    stepsize=1.0,
    max_iter=100,
    tol=1e-4,
    backward_max_iter=100,
    backward_tol=1e-4,
    init="pseudo_inverse",
)


def train(losses):
    """40 Adam steps from the same initial weights, on the same batches (fixed shuffling seed)."""
    model = copy.deepcopy(untrained)
    monitor = DEQMonitor(model, max_history=10_000)
    _ = torch.manual_seed(1)  # same noise draws for both trainings
    trainer = dinv.Trainer(
        model=model,
        physics=physics,
        train_dataloader=torch.utils.data.DataLoader(
            train_set, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)
        ),
        losses=losses,
        optimizer=torch.optim.Adam(model.parameters(), lr=2e-3),
        epochs=10,
        online_measurements=True,
        non_blocking_transfers=False,
        save_path=None,
        show_progress_bar=False,
        verbose=False,
        device="cpu",
    )
    model = trainer.train().eval()
    return model, monitor.summary()["not_converged"], len(monitor.history)


models, training = {"untrained": untrained}, {}
models["MC only"], *training["MC only"] = train([dinv.loss.MCLoss()])
models["MC + EI"], *training["MC + EI"] = train(
    [dinv.loss.MCLoss(), dinv.loss.EILoss(transform=rotate)]
)
for name, (not_converged, solves) in training.items():
    print(f"{name}: {solves} solves during training, {not_converged:.1%} not converged")

# %%
# The diagnostics
# ---------------
# PSNR on 16 held-out images (against the FBP), the equivariance error of the reconstructor to
# random rotations, and the invariant-prior test of the learned denoiser at noisy test images.

_ = torch.manual_seed(2)
y = physics(test_images)
psnr = dinv.metric.PSNR()
print(f"{'':<10}{'PSNR':>9}{'equiv. f':>10}{'equiv. D':>10}{'asym. J_D':>11}{'solve':>16}")
print(f"{'FBP':<10}{psnr(physics.A_dagger(y), test_images).mean().item():>6.2f} dB")
table = {}
for name, model in models.items():
    with torch.no_grad():
        quality = psnr(model(y, physics), test_images).mean().item()
        solve = model.forward_stats
        err = equivariance_error(model, physics, rotate, test_images, n_draws=4).item()
    prior = invariant_prior_test(model, rotate, test_images, n_draws=4, n_probes=4)
    table[name] = (err, prior["equivariance_error"], prior["jacobian_asymmetry"], quality)
    converged = f"{solve.status_names().count('CONVERGED')}/16 converged"
    print(
        f"{name:<10}{quality:>6.2f} dB{err:>10.1e}{prior['equivariance_error']:>10.1e}"
        f"{prior['jacobian_asymmetry']:>11.1e}{converged:>16}"
    )
ei, mc = table["MC + EI"], table["MC only"]
print(
    f"MC + EI vs MC only: PSNR {ei[3] - mc[3]:+.2f} dB, "
    f"equivariance error of f x{ei[0] / mc[0]:.2f}, of D x{ei[1] / mc[1]:.2f}"
)

# %%
# Reading the table: a smaller equivariance error means the reconstruction commutes better with
# rotations; a Jacobian asymmetry near zero means the denoiser is close to the gradient of a
# potential, as a proximal operator is. The untrained denoiser :math:`D = 0.9\,I` is exactly
# equivariant and symmetric, and its reconstruction is barely above the FBP (the reconstructor
# :math:`f` is not equivariant, because :math:`A` is not).
#
# After 40 steps both trained models are above the FBP, and close to each other in PSNR (the last
# line prints the difference): at this length, fitting the measurements already pays, and the EI
# term has not yet made a clear difference to the quality. Where EI does show is in the diagnostics:
# the MC + EI model's equivariance errors are lower, for the reconstructor and for its denoiser (the
# ratios printed last are below one). These are short runs on 32 images; the
# :doc:`results page <../../results>` reports longer ones.

names = [n for n in models if n != "untrained"]
fig, ax = plt.subplots(figsize=(7, 3.5))
width = 0.38
for i, (label, col) in enumerate([("reconstructor $f$", 0), ("denoiser $D$", 1)]):
    ax.bar(
        [k + (i - 0.5) * width for k in range(len(names))],
        [table[n][col] for n in names],
        width,
        label=label,
    )
ax.set_xticks(range(len(names)), names, fontsize=12)
ax.set_yscale("log")  # the denoiser's errors are orders of magnitude below the reconstructor's
ax.set_ylabel("equivariance error (log scale)", fontsize=12)
ax.set_title("equivariance to rotations after training", fontsize=12)
ax.legend(fontsize=11)
fig.tight_layout()
plt.show()
