r"""
8x accelerated MRI with noise: robust equivariant imaging
=========================================================

Single-coil MRI with an 8x undersampled Cartesian mask and Gaussian noise. Measurement
consistency alone would fit the noise; robust EI replaces it by Stein's unbiased risk estimate
(SURE), which estimates the error in the measurement domain from the noisy measurements and the
known noise level:

.. math::

   \mathcal{L}(\theta) = \mathrm{SURE}_\sigma(f_\theta, y)
   + \|T_g \hat{x} - f_\theta(A T_g \hat{x})\|^2 .

Both terms call the DEQ again (SURE at a perturbed measurement, EI at a transformed one);
:class:`deepinv_deq.DEQSureGaussianLoss` and :class:`deepinv_deq.DEQEILoss` start those solves
warm. Tiny size (32 x 32, a few epochs): this shows the workflow in about a minute on a CPU.
"""

import torch

import deepinv as dinv
from deepinv_deq import DEQ, DEQEILoss, DEQMonitor, DEQSureGaussianLoss
from deepinv_deq.data import SeededPhantomDataset
from deepinv_deq.stabilisers import spectral_normalize

torch.manual_seed(0)

# %%
# Data and physics
# ----------------
# Head-like phantoms with two channels (real and imaginary parts), generated offline from a seed
# (:class:`deepinv_deq.data.SeededPhantomDataset` with ``kind="mri"``), and
# :deepinv:`deepinv.physics.MRI` with a Gaussian-density Cartesian mask
# (:deepinv:`deepinv.physics.generator.GaussianMaskGenerator`, acceleration 8).

img_size, sigma = 32, 0.02
train_set = SeededPhantomDataset(32, size=img_size, kind="mri", seed=0, split=0)
test_set = SeededPhantomDataset(8, size=img_size, kind="mri", seed=0, split=1)
train_loader = torch.utils.data.DataLoader(train_set, batch_size=8, shuffle=True)
test_loader = torch.utils.data.DataLoader(test_set, batch_size=8)

mask = dinv.physics.generator.GaussianMaskGenerator(
    img_size=(img_size, img_size), acceleration=8, rng=torch.Generator().manual_seed(0)
).step()["mask"]
physics = dinv.physics.MRI(
    mask=mask, img_size=(2, img_size, img_size), noise_model=dinv.physics.GaussianNoise(sigma=sigma)
)


# %%
# The model
# ---------
# The same construction as in the CT example: PGD iterations whose denoiser averages the input
# with a small spectrally normalised network, so that the map stays close to a contraction.


class AveragedDenoiser(torch.nn.Module):
    def __init__(self, channels=2, features=16):
        super().__init__()
        self.net = spectral_normalize(
            torch.nn.Sequential(
                torch.nn.Conv2d(channels, features, 3, padding=1),
                torch.nn.Tanh(),
                torch.nn.Conv2d(features, features, 3, padding=1),
                torch.nn.Tanh(),
                torch.nn.Conv2d(features, channels, 3, padding=1),
            )
        )

    def forward(self, x, sigma=None):
        return 0.5 * x + 0.5 * self.net(x)


model = DEQ(
    denoiser=AveragedDenoiser(),
    iteration="PGD",
    stepsize=1.0,
    max_iter=30,
    tol=1e-3,
    backward_max_iter=30,
    backward_tol=1e-3,
)

# %%
# Training with robust EI
# -----------------------

monitor = DEQMonitor(model)
losses = [DEQSureGaussianLoss(sigma=sigma), DEQEILoss(transform=dinv.transform.Shift())]
trainer = dinv.Trainer(
    model=model,
    physics=physics,
    train_dataloader=train_loader,
    eval_dataloader=test_loader,
    losses=losses,
    metrics=[dinv.metric.PSNR()] + monitor.metrics(["forward_nfe", "not_converged"]),
    optimizer=torch.optim.Adam(model.parameters(), lr=2e-3),
    epochs=3,
    online_measurements=True,
    save_path=None,
    show_progress_bar=False,
    device="cpu",
)
model = trainer.train()

# %%
# Results on held-out images
# --------------------------
# Magnitude images of the zero-filled reconstruction :math:`A^\top y` and of the DEQ.

model.eval()
x = next(iter(test_loader))
torch.manual_seed(1)
y = physics(x)
with torch.no_grad():
    x_hat = model(y, physics)
x_zf = physics.A_adjoint(y)
psnr = dinv.metric.PSNR()
print(f"zero-filled : {psnr(x_zf, x).mean().item():.2f} dB")
print(f"robust EI   : {psnr(x_hat, x).mean().item():.2f} dB   ({model.forward_stats})")


def magnitude(t):
    return t.pow(2).sum(1, keepdim=True).sqrt()


dinv.utils.plot(
    [magnitude(x[:3]), magnitude(x_zf[:3]), magnitude(x_hat[:3])],
    titles=["ground truth", "zero-filled", "robust EI DEQ"],
    figsize=(8, 8),
)
