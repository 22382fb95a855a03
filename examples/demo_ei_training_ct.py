r"""
Training a DEQ without ground truth: equivariant imaging on CT
==============================================================

A :class:`deepinv_deq.DEQ` is trained on sparse-view CT measurements only, with the
measurement-consistency (MC) loss plus the equivariant imaging (EI) loss, through
:deepinv:`deepinv.Trainer`:

.. math::

   \mathcal{L}(\theta) = \|A \hat{x} - y\|^2 + \|T_g \hat{x} - f_\theta(A T_g \hat{x})\|^2,
   \qquad \hat{x} = f_\theta(y),

with :math:`T_g` a random rotation. The EI term calls the DEQ a second time;
:class:`deepinv_deq.DEQEILoss` starts that second solve at :math:`T_g\hat{x}` (a warm start: same
fixed point, fewer iterations). :class:`deepinv_deq.DEQMonitor` reports the solver statistics
(iterations, residuals, non-converged share) with the Trainer's metrics.

The size is tiny (32 x 32 images, a few epochs) so that the example runs in about a minute on a
CPU: it shows the workflow, not the final quality (at this size the DEQ only approaches the
filtered back-projection); the ``deepinv-deq`` command line (:doc:`../user_guide/experiments`)
trains at larger sizes.
"""

import matplotlib.pyplot as plt
import torch

import deepinv as dinv
from deepinv_deq import DEQ, DEQEILoss, DEQMonitor
from deepinv_deq.data import SeededPhantomDataset
from deepinv_deq.stabilisers import spectral_normalize

torch.manual_seed(0)

# %%
# Data and physics
# ----------------
# Random-ellipse phantoms (:class:`deepinv_deq.data.SeededPhantomDataset`, generated offline and
# reproducibly from a seed). The images are used only to simulate measurements on the fly
# (``online_measurements=True``) and to report PSNR: no loss below reads them.

img_size = 32
train_set = SeededPhantomDataset(32, size=img_size, kind="ct", seed=0, split=0)
test_set = SeededPhantomDataset(8, size=img_size, kind="ct", seed=0, split=1)
train_loader = torch.utils.data.DataLoader(train_set, batch_size=8, shuffle=True)
test_loader = torch.utils.data.DataLoader(test_set, batch_size=8)

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
# PGD iterations with a small learned residual denoiser
# :math:`D(z) = \tfrac12 z + \tfrac12\, h_\theta(z)`, where :math:`h_\theta` is a small
# convolutional network with spectrally normalised layers
# (:func:`deepinv_deq.stabilisers.spectral_normalize`): the averaging keeps the PGD map close to a
# contraction throughout training, so the forward and backward solves converge (a plain DnCNN with
# random weights often does not). Loose training tolerances (``tol=1e-3``) and the implicit
# backward.


class AveragedDenoiser(torch.nn.Module):
    def __init__(self, features=16):
        super().__init__()
        self.net = spectral_normalize(
            torch.nn.Sequential(
                torch.nn.Conv2d(1, features, 3, padding=1),
                torch.nn.Tanh(),
                torch.nn.Conv2d(features, features, 3, padding=1),
                torch.nn.Tanh(),
                torch.nn.Conv2d(features, 1, 3, padding=1),
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
    backward="implicit",
    backward_max_iter=30,
    backward_tol=1e-3,
    init="pseudo_inverse",
)

# %%
# Training with MC + EI
# ---------------------
# The Trainer is deepinv's own; the monitor's metrics print the mean number of forward
# iterations and the share of solves that did not converge, next to the PSNR.

monitor = DEQMonitor(model)
losses = [dinv.loss.MCLoss(), DEQEILoss(transform=dinv.transform.Rotate())]
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
# The trained DEQ against the filtered back-projection, on test images never seen in training.

model.eval()
x = next(iter(test_loader))
torch.manual_seed(1)
y = physics(x)
with torch.no_grad():
    x_hat = model(y, physics)
x_fbp = physics.A_dagger(y)
psnr = dinv.metric.PSNR()
print(f"FBP     : {psnr(x_fbp, x).mean().item():.2f} dB")
print(f"EI-DEQ  : {psnr(x_hat, x).mean().item():.2f} dB   ({model.forward_stats})")

dinv.utils.plot(
    [x[:3], x_fbp[:3], x_hat[:3]],
    titles=["ground truth", "FBP", "EI-DEQ (no ground truth)"],
    figsize=(8, 8),
)

# %%
# The solver statistics recorded during training: map evaluations of each forward solve (the
# reconstruction and, after it, the warm-started EI solve).

nfe = [r.stats.nfe for r in monitor.history if r.kind == "forward"]
plt.figure(figsize=(7, 3))
plt.plot(nfe, ".", ms=3)
plt.xlabel("forward solve")
plt.ylabel("map evaluations")
plt.title("forward iterations during training")
plt.tight_layout()
plt.show()
