r"""The two inverse problems of the paper, as deepinv physics.

- Sparse-view CT: :class:`deepinv.physics.Tomography`, parallel beam, ``views`` angles over
  180 degrees, normalised so that :math:`\|A\|=1` (then a PGD step size :math:`\eta=1\le 1/\|A\|^2`),
  Gaussian noise; applied as sparse matrices (:class:`deepinv_deq.physics.SparseMatrixPhysics`,
  the same operator) unless ``ct_operator="deepinv"``.
- Accelerated MRI: single-coil :class:`deepinv.physics.MRI` with a fixed Cartesian mask drawn by
  deepinv's :class:`deepinv.physics.generator.GaussianMaskGenerator` (acceleration 4 by default,
  8 % fully sampled central lines as in fastMRI's 4x masks), Gaussian noise. :math:`\|A\|=1`
  since the FFT is orthonormal.
- Gaussian deblurring (``deblur``, a task of the configurations): :class:`deepinv.physics.BlurFFT`
  (circular convolution) with a Gaussian kernel of standard deviation ``blur_sigma`` pixels
  (:math:`\|A\|=1`, the kernel sums to one), Gaussian noise ``blur_noise``; its linear
  reconstruction is the Tikhonov (Wiener) filter :math:`(A^\top A+\lambda I)^{-1}A^\top y`.

The noise model draws from the generator ``rng`` when one is given, so that every method of a
comparison sees the same noise.
"""

from __future__ import annotations

import torch

from .configs import ExperimentConfig


def build_physics(task: str, cfg: ExperimentConfig, rng: torch.Generator | None = None):
    r"""The forward operator of ``task`` (``"ct"`` or ``"mri"``) on ``cfg.device``.

    :param str task: ``"ct"``, ``"mri"`` or ``"deblur"``.
    :param ExperimentConfig cfg: settings (image size, views, acceleration, blur, noise, seed).
    :param torch.Generator rng: generator of the measurement noise (default: torch's global one).
    """
    import deepinv as dinv

    device = torch.device(cfg.device)
    n = cfg.size_of(task)
    if task == "ct":
        physics = dinv.physics.Tomography(
            angles=cfg.views,
            img_width=n,
            circle=False,
            normalize=True,
            noise_model=dinv.physics.GaussianNoise(sigma=cfg.ct_noise, rng=rng),
            device=device,
        )
        if cfg.ct_operator == "sparse":
            from ..physics import SparseMatrixPhysics

            physics = SparseMatrixPhysics(physics)
    elif task == "mri":
        gen = dinv.physics.generator.GaussianMaskGenerator(
            img_size=(n, n),
            acceleration=cfg.acceleration,
            center_fraction=cfg.center_fraction,
            rng=torch.Generator(device).manual_seed(cfg.seed),
            device=device,
        )
        mask = gen.step(batch_size=1, seed=cfg.seed)["mask"][0]
        physics = dinv.physics.MRI(
            mask=mask,
            img_size=(n, n),
            noise_model=dinv.physics.GaussianNoise(sigma=cfg.mri_noise, rng=rng),
            device=device,
        )
    elif task == "deblur":
        from deepinv.physics.functional import gaussian_blur

        kernel = gaussian_blur(sigma=(cfg.blur_sigma, cfg.blur_sigma), device=device)
        physics = dinv.physics.BlurFFT(
            img_size=(1, n, n),
            filter=kernel,
            noise_model=dinv.physics.GaussianNoise(sigma=cfg.blur_noise, rng=rng),
            device=device,
        )
        physics.tikhonov_lambda = cfg.blur_lambda
    else:
        raise ValueError(f"build_physics: unknown task {task!r}; choose 'ct', 'mri' or 'deblur'.")
    return physics


def channels(task: str) -> int:
    r"""Image channels of ``task``: 1 for CT and deblurring, 2 (real, imaginary) for MRI."""
    return 2 if task == "mri" else 1


def pseudo_inverse(task: str):
    r"""The linear reconstruction used as initialisation and as the U-Net input: filtered
    back-projection for CT, zero-filled inverse FFT (:math:`A^\top y = A^\dagger y`) for MRI, the
    Tikhonov (Wiener) filter :math:`(A^\top A+\lambda I)^{-1}A^\top y` for deblurring (the exact
    pseudo-inverse divides by the blur's vanishing frequencies and amplifies the noise).

    :return: a function ``(y, physics) -> x``.
    """
    return {"ct": _fbp, "deblur": _wiener}.get(task, _adjoint)


def _fbp(y, physics):
    return physics.A_dagger(y, fbp=True)


def _adjoint(y, physics):
    return physics.A_adjoint(y)


def _wiener(y, physics):
    # argmin_x |Ax - y|^2 / 2 + lambda |x|^2 / 2, by deepinv's SVD-based prox (gamma = 1 / lambda)
    return physics.prox_l2(0, y, gamma=1.0 / physics.tikhonov_lambda)
