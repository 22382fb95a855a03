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

Two DEQs with the same architecture are trained briefly on CT measurements, one with measurement
consistency only (MC), one with MC + EI (rotations), and compared. Tiny size: about a minute on a
CPU; the numbers are indicative, not the paper's.
"""

import torch

import deepinv as dinv
from deepinv_deq import DEQ, DEQEILoss
from deepinv_deq.data import SeededPhantomDataset
from deepinv_deq.diagnostics import equivariance_error, invariant_prior_test
from deepinv_deq.stabilisers import spectral_normalize

torch.manual_seed(0)

img_size = 32
train_set = SeededPhantomDataset(32, size=img_size, kind="ct", seed=0, split=0)
test_images = torch.stack([SeededPhantomDataset(8, size=img_size, kind="ct", seed=0, split=1)[i] for i in range(8)])
physics = dinv.physics.Tomography(
    angles=12, img_width=img_size, normalize=True, noise_model=dinv.physics.GaussianNoise(sigma=0.005)
)


class AveragedDenoiser(torch.nn.Module):
    def __init__(self, features=16):
        super().__init__()
        self.net = spectral_normalize(
            torch.nn.Sequential(
                torch.nn.Conv2d(1, features, 3, padding=1),
                torch.nn.Tanh(),
                torch.nn.Conv2d(features, 1, 3, padding=1),
            )
        )

    def forward(self, x, sigma=None):
        return 0.5 * x + 0.5 * self.net(x)


def train(losses, seed):
    torch.manual_seed(seed)
    model = DEQ(
        denoiser=AveragedDenoiser(),
        iteration="PGD",
        stepsize=1.0,
        sigma_denoiser=0.05,
        max_iter=20,
        tol=1e-3,
        backward_max_iter=20,
        backward_tol=1e-3,
        init="pseudo_inverse",
    )
    trainer = dinv.Trainer(
        model=model,
        physics=physics,
        train_dataloader=torch.utils.data.DataLoader(train_set, batch_size=8, shuffle=True),
        losses=losses,
        optimizer=torch.optim.Adam(model.parameters(), lr=2e-3),
        epochs=2,
        online_measurements=True,
        save_path=None,
        show_progress_bar=False,
        verbose=False,
        device="cpu",
    )
    return trainer.train().eval()


models = {
    "MC only": train([dinv.loss.MCLoss()], seed=0),
    "MC + EI": train([dinv.loss.MCLoss(), DEQEILoss(transform=dinv.transform.Rotate())], seed=0),
}

# %%
# The diagnostics
# ---------------
# Rotations by random angles for the equivariance of the reconstructor; the learned denoiser is
# probed at noisy test images.

rotate = dinv.transform.Rotate()
psnr = dinv.metric.PSNR()
print(f"{'training':<10}{'PSNR (dB)':>11}{'equiv. error f':>17}{'equiv. error D':>17}{'Jacobian asym.':>17}")
for name, model in models.items():
    with torch.no_grad():
        quality = psnr(model(physics(test_images), physics), test_images).mean().item()
        err = equivariance_error(model, physics, rotate, test_images, n_draws=2).item()
    prior = invariant_prior_test(model, rotate, test_images, n_draws=2, n_probes=4)
    print(
        f"{name:<10}{quality:>11.2f}{err:>17.2e}{prior['equivariance_error']:>17.2e}"
        f"{prior['jacobian_asymmetry']:>17.2e}"
    )

# %%
# Reading the table: a smaller equivariance error means the reconstruction commutes better with
# rotations; a Jacobian asymmetry near zero means the denoiser is close to the gradient of a
# potential, as a proximal operator is. At this tiny size and training length the differences are
# small; the :mod:`deepinv_deq.experiments` command line measures them on trained models.
