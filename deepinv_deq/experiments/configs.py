r"""Configuration of the experiments: tasks, methods, regimes and size presets, all validated.

A run is one ``(task, method, regime)`` triple trained and evaluated under one
:class:`ExperimentConfig`. Size presets (``tiny``, ``demo``, ``repro``, ``paper``) fix the image
size, the number of images, epochs and solver budgets; every field can be overridden.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .._validation import check_choice, check_float, check_int, reject_unknown

TASKS = ("ct", "mri")
#: method name -> short description (the order of the tables).
METHODS = {
    "deq": "DEQ, implicit differentiation (ours)",
    "deq-jfb": "DEQ, Jacobian-free backprop",
    "unrolled": "unrolled PGD (K iterations, backprop)",
    "pnp": "PnP-PGD, DnCNN trained as a denoiser",
    "red": "RED, DnCNN trained as a denoiser",
    "pnp-tv": "PnP-PGD with a TV denoiser (no training)",
    "unet": "U-Net on the pseudo-inverse",
    "pinv": "pseudo-inverse (FBP / zero-filled)",
}
REGIMES = ("sup", "ei", "mc")
#: methods trained end to end on the task, in each regime.
TRAINED = ("deq", "deq-jfb", "unrolled", "unet")
#: methods whose denoiser is trained on clean images as a Gaussian denoiser, or not trained at all.
FIXED = ("pnp", "red", "pnp-tv", "pinv")

#: CT views scale with the image side as in the paper (50 views for 128 x 128 images: about
#: 0.4 n views of about 1.4 n detector cells for n^2 unknowns), so the problem stays
#: under-determined; 30 views on 32 x 32 images would give more measurements than unknowns.
PRESETS = {
    # seconds on 2 CPU cores: used by the tests
    "tiny": dict(img_size=16, n_train=4, n_test=2, epochs=1, batch_size=2, max_iter=5,
                 backward_max_iter=5, unrolled_iters=3, depth=3, width=8, views=6, denoiser_epochs=1),
    # ~10 minutes on 2 CPU cores: `deepinv-deq demo`
    "demo": dict(img_size=32, n_train=64, n_test=16, epochs=8, batch_size=8, max_iter=12,
                 backward_max_iter=12, unrolled_iters=6, depth=5, width=16, views=12,
                 denoiser_epochs=20),
    # the recorded CPU reproduction (docs/results.rst)
    "repro": dict(img_size=32, n_train=48, n_test=24, epochs=10, batch_size=8, max_iter=12,
                  backward_max_iter=12, unrolled_iters=6, depth=5, width=16, views=12,
                  denoiser_epochs=20),
    # the paper's setting (GPU)
    "paper": dict(img_size=128, n_train=2000, n_test=100, epochs=100, batch_size=8, max_iter=50,
                  backward_max_iter=50, unrolled_iters=10, depth=7, width=64, views=50,
                  denoiser_epochs=50),
}


@dataclass
class ExperimentConfig:
    r"""Settings of one experiment (shared by every run of a table).

    :param int img_size: image side :math:`n` (images are :math:`n\times n`).
    :param int n_train: training images.
    :param int n_test: held-out test images.
    :param int epochs: training epochs of the end-to-end methods.
    :param int batch_size: batch size.
    :param float lr: Adam learning rate.
    :param int max_iter: forward fixed-point iterations of the DEQs, PnP and RED.
    :param float tol: forward relative tolerance.
    :param int backward_max_iter: iterations of the implicit backward solve.
    :param float backward_tol: tolerance of the implicit backward solve.
    :param int unrolled_iters: iterations :math:`K` of the unrolled network.
    :param int depth: DnCNN depth (shared denoiser architecture).
    :param int width: DnCNN feature channels.
    :param float sigma_denoiser: noise level given to the denoiser.
    :param float stepsize: PGD step size :math:`\eta` (operators are normalised, :math:`\|A\|=1`).
    :param int views: CT projection angles.
    :param float ct_noise: Gaussian noise standard deviation for CT.
    :param int acceleration: MRI acceleration factor.
    :param float mri_noise: Gaussian noise standard deviation for MRI (0.01-0.05).
    :param str transform: EI transformation group, ``"rotate"`` or ``"shift"``.
    :param float ei_weight: weight :math:`\alpha` of the EI term.
    :param int denoiser_epochs: epochs of Gaussian-denoiser training for PnP/RED.
    :param float red_lambda: RED regularisation weight :math:`\lambda`.
    :param str data: ``"phantoms"`` (default offline data) or a folder of real data.
    :param int seed: seed of data, masks, noise and initialisation.
    :param str device: torch device.
    """

    img_size: int = 32
    n_train: int = 64
    n_test: int = 16
    epochs: int = 8
    batch_size: int = 8
    lr: float = 1e-3
    max_iter: int = 20
    tol: float = 1e-3
    backward_max_iter: int = 20
    backward_tol: float = 1e-4
    unrolled_iters: int = 8
    depth: int = 5
    width: int = 16
    sigma_denoiser: float = 0.05
    stepsize: float = 1.0
    views: int = 30
    ct_noise: float = 0.01
    acceleration: int = 8
    mri_noise: float = 0.02
    transform: str = "rotate"
    ei_weight: float = 1.0
    denoiser_epochs: int = 20
    red_lambda: float = 1.0
    data: str = "phantoms"
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        o = "ExperimentConfig"
        for name in ("img_size", "n_train", "n_test", "epochs", "batch_size", "max_iter",
                     "backward_max_iter", "unrolled_iters", "depth", "width", "views",
                     "denoiser_epochs"):
            setattr(self, name, check_int(o, name, getattr(self, name), 1))
        if self.img_size < 8:
            raise ValueError(f"{o}: 'img_size' must be >= 8, got {self.img_size}.")
        if self.depth < 2:
            raise ValueError(f"{o}: 'depth' must be >= 2, got {self.depth}.")
        self.acceleration = check_int(o, "acceleration", self.acceleration, 2)
        self.seed = check_int(o, "seed", self.seed, 0)
        for name in ("lr", "tol", "backward_tol", "sigma_denoiser", "stepsize", "red_lambda"):
            setattr(self, name, check_float(o, name, getattr(self, name), 0.0, strict_min=True))
        for name in ("ct_noise", "mri_noise", "ei_weight"):
            setattr(self, name, check_float(o, name, getattr(self, name), 0.0))
        self.transform = check_choice(o, "transform", self.transform, ("rotate", "shift"))
        if not isinstance(self.data, str) or not self.data:
            raise ValueError(f"{o}: 'data' must be 'phantoms' or a folder, got {self.data!r}.")
        if not isinstance(self.device, str) or not self.device.split(":")[0] in ("cpu", "cuda", "mps"):
            raise ValueError(f"{o}: 'device' must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}.")

    @classmethod
    def from_preset(cls, preset: str = "demo", **overrides) -> "ExperimentConfig":
        r"""The preset's settings, with ``overrides`` (``None`` values are ignored).

        :param str preset: one of ``tiny``, ``demo``, ``repro``, ``paper``.
        """
        preset = check_choice("ExperimentConfig", "size", preset, PRESETS)
        overrides = {k: v for k, v in overrides.items() if v is not None}
        reject_unknown("ExperimentConfig", overrides, [f.name for f in dataclasses.fields(cls)])
        return cls(**{**PRESETS[preset], **overrides})

    def to_dict(self) -> dict:
        r"""The settings as a plain dictionary (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def training_key(self) -> dict:
        r"""The settings a trained checkpoint depends on (everything but the device)."""
        d = self.to_dict()
        d.pop("device")
        return d


def check_run(task: str, method: str, regime: str | None) -> tuple[str, str, str]:
    r"""Validate a ``(task, method, regime)`` triple; fixed methods take regime ``"none"``.

    :raises ValueError: naming the unknown task, method or regime.
    """
    task = check_choice("run", "task", task, TASKS)
    method = check_choice("run", "method", method, METHODS)
    if method in FIXED:
        if regime not in (None, "none", "-"):
            raise ValueError(
                f"run: method '{method}' is not trained end to end on the task, so it has no "
                f"regime; got regime={regime!r}."
            )
        return task, method, "none"
    regime = check_choice("run", "regime", regime, REGIMES)
    return task, method, regime


def parse_list(name: str, value: str, choices) -> list[str]:
    r"""Parse a comma-separated list (``"all"`` = every choice), validating each entry."""
    choices = list(choices)
    if value in (None, "", "all"):
        return choices
    items = [v.strip().lower() for v in str(value).split(",") if v.strip()]
    for v in items:
        check_choice("deepinv-deq", name, v, choices)
    return items
