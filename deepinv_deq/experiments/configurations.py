r"""The configurations over which the paper's claims are measured, and the null-space diagnostic.

Each entry of :data:`CONFIGURATIONS` is a task and overrides of a size preset
(:meth:`~deepinv_deq.experiments.configs.ExperimentConfig.from_preset`): image sizes 32 to 64,
several CT view counts, MRI accelerations on real anatomy, and a deblurring task.
``deepinv-deq claims`` (:mod:`deepinv_deq.experiments.claims`) measures the paper's claims on them.

Why a claim holds on one configuration and not another may depend on how much of each image lies
in the null space of :math:`A`, the part that measurements cannot see and that only the learned
prior (and, with EI, the invariance) recovers: :func:`null_space_fraction`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .configs import ExperimentConfig

if TYPE_CHECKING:  # torch is imported on first use: deepinv-deq --help reads this module
    import torch

#: name -> (task, preset, overrides): the configurations of the claims across settings. Every
#: trained run goes on until its validation PSNR plateaus (``budget="plateau"``: from 16 epochs,
#: cap 64); the MRI configurations use slices of the MNI template (the ``[realdata]`` extra).
CONFIGURATIONS = {
    "ct32-12v": ("ct", "cpu", dict(img_size=32, views=12, budget="plateau")),
    "ct32-6v": ("ct", "cpu", dict(img_size=32, views=6, budget="plateau")),
    "mri64-8x": (
        "mri",
        "cpu",
        dict(mri_img_size=64, acceleration=8, mri_data="mni", budget="plateau"),
    ),
    "mri64-4x": (
        "mri",
        "cpu",
        dict(mri_img_size=64, acceleration=4, mri_data="mni", budget="plateau"),
    ),
    "deblur32-s1": ("deblur", "cpu", dict(img_size=32, blur_sigma=1.0, budget="plateau")),
    "deblur48-s2": ("deblur", "cpu", dict(img_size=48, blur_sigma=2.0, budget="plateau")),
    "ct64-25v": ("ct", "scale", dict(img_size=64, views=25)),
}

#: name -> the measured training cost of the claims' runs on it (``deepinv-deq claims --help``):
#: CPU time of training every run, summed over its seeds, one thread (2026-12-05, 2-core machine;
#: PnP/RED denoisers and the evaluations not included)
MEASURED = {
    "ct32-12v": "1536 s of training CPU",
    "ct32-6v": "1271 s of training CPU",
    "mri64-8x": "2789 s of training CPU",
    "mri64-4x": "5806 s of training CPU",
    "deblur32-s1": "552 s of training CPU",
    "deblur48-s2": "1270 s of training CPU",
    "ct64-25v": "partial: 24419 s of training CPU for its 8 finished seeds (EI-DEQ implicit "
    "seeds 0-2, 24 to 64 epochs, 19035 s; JFB seeds 0-2, 16 epochs, 2589 s; supervised seeds "
    "0-1, 16 epochs, 2795 s); an EI step of 8 images ~3.4 s implicit, 1.6 s JFB",
}


def configuration(name: str, **overrides) -> tuple[str, ExperimentConfig]:
    r"""The task and settings of the configuration ``name`` (further ``overrides`` on top).

    :param str name: a key of :data:`CONFIGURATIONS`.
    :raises ValueError: for an unknown name or option.

    |sep|

    :Example:

    >>> from deepinv_deq.experiments.configurations import configuration
    >>> task, cfg = configuration("ct64-25v")
    >>> task, cfg.img_size, cfg.views
    ('ct', 64, 25)
    """
    from .._validation import check_choice

    name = check_choice("configuration", "name", name, CONFIGURATIONS)
    task, preset, own = CONFIGURATIONS[name]
    return task, ExperimentConfig.from_preset(preset, **{**own, **overrides})


def null_space_fraction(physics, x: torch.Tensor, pinv=None) -> torch.Tensor:
    r"""Fraction of each image's energy in the null space of :math:`A`:

    .. math::

        \frac{\|x - A^\dagger A x\|^2}{\|x\|^2},

    with :math:`A^\dagger A` the orthogonal projection onto the row space (``physics.A_dagger``,
    deepinv's least-squares solve or SVD, unless ``pinv`` is given). Noise-free: :math:`A` is
    applied by ``physics.A``.

    :param deepinv.physics.LinearPhysics physics: the operator.
    :param torch.Tensor x: images ``(B, C, H, W)``.
    :param Callable pinv: ``y -> A^\dagger y`` (default ``physics.A_dagger``).
    :return: one fraction per image, shape ``(B,)``.
    :raises ValueError: if an image is zero.

    |sep|

    :Example:

    >>> import torch, deepinv as dinv
    >>> from deepinv_deq.experiments.configurations import null_space_fraction
    >>> mask = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
    >>> x = torch.tensor([[[[1.0, 2.0], [0.0, 1.0]]]])
    >>> null_space_fraction(dinv.physics.Inpainting((1, 2, 2), mask=mask), x)
    tensor([0.6667])
    """
    import torch

    energy = x.flatten(1).pow(2).sum(1)
    if bool((energy == 0).any()):
        raise ValueError("null_space_fraction: an image is zero (its fraction is undefined).")
    pinv = pinv or physics.A_dagger
    with torch.no_grad():
        residual = x - pinv(physics.A(x))
    return residual.flatten(1).pow(2).sum(1) / energy
