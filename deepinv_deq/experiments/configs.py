r"""Configuration of the experiments: tasks, methods, regimes and size presets, all validated.

A run is one ``(task, method, regime)`` triple trained (once per seed) and evaluated under one
:class:`ExperimentConfig`. Size presets (``tiny``, ``demo``, ``cpu``, ``gpu``, ``paper``) fix the
image size, the number of images, epochs, seeds and solver budgets; every field can be overridden.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .._validation import check_choice, check_float, check_int, reject_unknown

#: tasks of the tables (``deepinv-deq table`` runs these by default).
TASKS = ("ct", "mri")
#: every task a run accepts: the tables' and ``deblur`` (Gaussian deblurring, 1-channel phantoms),
#: a task of the configurations of :mod:`deepinv_deq.experiments.configurations`.
ALL_TASKS = TASKS + ("deblur",)
#: ``mri_data`` choices: generated head phantoms, or slices of the MNI ICBM152 T1 template
#: (the ``[realdata]`` extra, :func:`deepinv_deq.data.mni_slices`).
MRI_DATA = ("phantoms", "mni")
#: ``budget`` choices: ``epochs`` epochs, or from ``epochs`` on until the validation PSNR
#: plateaus (:mod:`deepinv_deq.experiments.plateau`).
BUDGETS = ("fixed", "plateau")
#: ``ct_operator`` choices: how the CT operator is applied (the same operator either way)
CT_OPERATORS = ("sparse", "deepinv")
#: method name -> short description (the order of the tables).
METHODS = {
    "deq": "DEQ, implicit differentiation (ours)",
    "deq-jfb": "DEQ, Jacobian-free backprop",
    "unrolled": "unrolled PGD (K = the DEQ's mean forward iterations, backprop)",
    "unet": "U-Net on FBP / the zero-filled image (as many weights as the DEQ's denoiser)",
    "pnp": "PnP-PGD, the denoiser trained on clean images (noise level and step on validation)",
    "red": "RED, the denoiser trained on clean images (noise level and weight on validation)",
    "pnp-tv": "PnP-PGD with a TV denoiser (no training)",
    "deq-init": "DEQ at initialisation (untrained)",
    "pinv": "FBP (CT) / zero-filled image (MRI), no learning",
}
REGIMES = ("sup", "ei", "mc")
#: iterations of the DEQ methods (``--iteration``)
DEQ_ITERATIONS = ("PGD", "HQS", "ADMM", "DRS", "PDCP")
#: methods trained end to end on the task, in each regime.
TRAINED = ("deq", "deq-jfb", "unrolled", "unet")
#: methods whose denoiser is trained on clean images as a Gaussian denoiser, or not trained at all.
FIXED = ("pnp", "red", "pnp-tv", "deq-init", "pinv")
#: methods whose forward pass is a fixed-point solve (they report converged fractions).
SOLVED = ("deq", "deq-jfb", "pnp", "red", "pnp-tv", "deq-init")
#: (method, regime) pairs of ``deepinv-deq demo`` (CT): the paper's key claim and its references.
DEMO_RUNS = (
    ("deq", "ei"),
    ("deq-jfb", "ei"),
    ("deq", "sup"),
    ("deq-init", "none"),
    ("pinv", "none"),
)

_TINY = dict(
    img_size=16,
    n_train=4,
    n_val=2,
    n_test=2,
    epochs=1,
    batch_size=2,
    max_iter=60,
    backward_max_iter=60,
    unrolled_iters=3,
    depth=3,
    width=8,
    views=6,
    denoiser_epochs=1,
    seeds=1,
    eval_every=0,
)
_DEMO = dict(
    img_size=32,
    mri_img_size=64,
    n_train=64,
    n_val=8,
    n_test=32,
    epochs=16,
    batch_size=8,
    max_iter=100,
    backward_max_iter=100,
    unrolled_iters=0,
    depth=5,
    width=16,
    views=12,
    denoiser_epochs=20,
    seeds=3,
    eval_every=8,
    equivariance=True,
)
#: size presets. CT views scale with the image side as in the paper (50 views for 128 x 128
#: images), so the problem stays under-determined. Every DEQ solve runs to ``tol = 1e-4`` forward
#: and backward, with caps (100) that the contractive denoisers do not reach.
PRESETS = {
    # seconds on 2 CPU cores: used by the tests
    "tiny": _TINY,
    # <= 10 minutes on 2 idle CPU cores: `deepinv-deq demo` (CT, ID vs JFB vs supervised, 3 seeds)
    "demo": _DEMO,
    # <= 60 minutes on 2 CPU cores: `deepinv-deq table --size cpu` (CT 32 x 32 and MRI 64 x 64)
    # (the demo's settings: its runs are the CT runs of this table)
    "cpu": dict(_DEMO),
    # former name of the cpu table
    "repro": dict(_DEMO),
    # sized for <= 8 minutes on one H200 (unmeasured): CT 128 x 128, 50 views, ID vs JFB vs sup
    "gpu": dict(
        img_size=128,
        n_train=512,
        n_val=16,
        n_test=64,
        epochs=6,
        batch_size=16,
        max_iter=100,
        backward_max_iter=100,
        unrolled_iters=0,
        depth=7,
        width=32,
        views=50,
        denoiser_epochs=20,
        seeds=3,
        eval_every=32,
    ),
    # the claims at 64 x 64 with a deeper denoiser, trained to a plateau (time unmeasured)
    "scale": dict(
        _DEMO,
        img_size=64,
        mri_img_size=64,
        n_train=256,
        n_val=16,
        n_test=64,
        epochs=16,
        depth=8,
        width=32,
        views=25,
        acceleration=8,
        eval_every=32,
        budget="plateau",
        max_epochs=64,
    ),
    # paper-like settings (GPU)
    "paper": dict(
        img_size=128,
        n_train=2000,
        n_val=50,
        n_test=100,
        epochs=100,
        batch_size=8,
        max_iter=150,
        backward_max_iter=150,
        unrolled_iters=0,
        depth=7,
        width=64,
        views=50,
        denoiser_epochs=50,
        seeds=3,
        eval_every=250,
        equivariance=True,
    ),
}


#: what each preset runs and its measured cost (shown by ``deepinv-deq --help`` and the docs)
PRESET_NOTES = {
    "tiny": "every method in seconds (used by the tests)",
    "demo": "CT: EI-DEQ implicit and JFB, supervised DEQ (3 seeds each), untrained DEQ, FBP; "
    "under 2 min (113 s wall, seeds in 2 processes of 1 thread, idle 2-core machine, "
    "2026-12-05; 177 s with --ct-operator deepinv)",
    "cpu": "CT 32x32 and MRI 64x64, every method and regime (3 seeds); the demo's runs are its CT "
    "runs; the runs of docs/results.rst took 1008 s (CT) and 1721 s (MRI) of CPU time on "
    "one thread",
    "repro": "former name of cpu",
    "gpu": "table: CT 128x128, 50 views, deq and deq-jfb in sup and ei (ID vs JFB vs supervised, "
    "3 seeds); sized for <= 8 min on one H200; time not measured",
    "scale": "CT 64x64 with 25 views (the paper's 50 at 128x128, scaled) and MRI 64x64 at 8x "
    "(zero-filled PSNR 18.9 dB at 8x vs 20.1 dB at 4x on 16 phantoms: 8x kept, as the paper); "
    "every method and regime of cpu, 3 seeds, a contractive depth-8 / width-32 denoiser, each "
    "trained run until its validation PSNR gains < 0.05 dB over its last 20 % of steps (from 16 "
    "epochs, cap 64); at initialisation the DEQ solves converge (32/32 images, CT 14 and MRI 2 "
    "iterations) and one EI-DEQ training step of 8 images takes 3.7 s (CT, deepinv's operator) and "
    "0.7-1.1 s (MRI) of CPU on one thread (supervised: 2.1 s and 0.4 s); measured in training on "
    "CT with the sparse operator: ~3.4 s implicit, 1.6 s JFB, so an implicit CT EI seed takes 45 "
    "min to over an hour of CPU to its plateau (24 to 54 epochs seen), a JFB one 14 min: the "
    "claims' configuration ct64-25v runs it in parts (claims --partial); total time not measured. The MNI slices (--mri-data mni) are 142: training, validation and test images "
    "plus gaps of 5 slices must fit (e.g. --n-train 64 --n-val 16 --n-test 32)",
    "paper": "paper-like settings (GPU: 128x128, 2000 images, 100 epochs, tol 1e-4, contractive "
    "init); time not measured",
}

#: runs ``deepinv-deq table`` selects for a preset when ``--tasks``, ``--methods`` or ``--regimes``
#: is not given (the options override each entry); other presets select every task, method and
#: regime.
PRESET_RUNS = {
    "gpu": dict(tasks="ct", methods="deq,deq-jfb", regimes="sup,ei"),
}


@dataclass
class ExperimentConfig:
    r"""Settings of one experiment (shared by every run of a table).

    :param int img_size: image side :math:`n` (images are :math:`n\times n`).
    :param int mri_img_size: image side of the MRI task; ``0`` means ``img_size``.
    :param int n_train: training images.
    :param int n_val: validation images (training curves, PnP/RED settings).
    :param int n_test: held-out test images.
    :param int epochs: training epochs of the end-to-end methods.
    :param int batch_size: batch size.
    :param int seeds: training seeds per trained run (``seed``, ``seed + 1``, ...); data, noise
        and transformations of a seed are shared by every method.
    :param float lr: Adam learning rate.
    :param str lr_schedule: ``"cosine"`` (decay to ``lr / 10`` over the training) or ``"constant"``.
    :param int max_iter: cap on the forward fixed-point iterations (DEQs, PnP, RED).
    :param float tol: forward relative tolerance.
    :param int backward_max_iter: cap on the iterations of the implicit backward solve.
    :param float backward_tol: tolerance of the implicit backward solve.
    :param int unrolled_iters: iterations :math:`K` of the unrolled network; ``0`` means the mean
        forward iterations of the untrained DEQ on the validation images.
    :param int depth: depth of the denoiser's residual network.
    :param int width: feature channels of the denoiser's residual network.
    :param float epsilon: contraction margin of :class:`deepinv_deq.ContractiveDenoiser`.
    :param float sigma_denoiser: noise level given to the denoiser.
    :param float stepsize: PGD step size :math:`\eta` (operators are normalised, :math:`\|A\|=1`).
    :param int views: CT projection angles.
    :param float ct_noise: Gaussian noise standard deviation for CT.
    :param int acceleration: MRI acceleration factor.
    :param float center_fraction: fraction of fully sampled central k-space lines (MRI).
    :param float mri_noise: Gaussian noise standard deviation for MRI (0.01-0.05).
    :param str transform: EI transformation group, ``"rotate"`` or ``"shift"``.
    :param str iteration: the DEQ's iteration (methods ``deq``, ``deq-jfb``, ``deq-init``):
        ``"PGD"``, ``"HQS"``, ``"ADMM"``, ``"DRS"`` or ``"PDCP"``; PnP, RED and unrolling keep
        their own (PGD, RED, PGD). Default: ``"PGD"``.
    :param float ei_weight: weight :math:`\alpha` of the EI term.
    :param int denoiser_epochs: epochs of Gaussian-denoiser training for PnP/RED.
    :param float red_lambda: RED regularisation weight :math:`\lambda` (default of the grid).
    :param int eval_every: validation PSNR every this many steps (``0``: once per epoch).
    :param bool equivariance: measure the equivariance error of each trained run.
    :param str data: ``"phantoms"`` (default offline data) or a folder of real data.
    :param str mri_data: images of the MRI task when ``data`` is ``"phantoms"``: ``"phantoms"``
        (generated head phantoms) or ``"mni"`` (axial slices of the MNI ICBM152 T1 template,
        training / validation / test slabs separated by gaps; needs the ``[realdata]`` extra).
    :param float blur_sigma: standard deviation (pixels) of the Gaussian kernel of ``deblur``.
    :param float blur_noise: Gaussian noise standard deviation of ``deblur``.
    :param float blur_lambda: Tikhonov weight :math:`\lambda` of the Wiener pseudo-inverse of
        ``deblur``.
    :param str budget: ``"fixed"`` (``epochs`` epochs) or ``"plateau"``: from ``epochs`` on,
        training is extended (cosine schedule stretched) until the validation PSNR gains less
        than ``plateau_db`` over the last ``plateau_fraction`` of the steps, or ``max_epochs``
        (the methods trained end to end; the Gaussian denoisers of PnP and RED train for
        ``denoiser_epochs`` under either rule).
    :param float plateau_db: the plateau threshold (dB).
    :param float plateau_fraction: the trailing fraction of the steps the gain is measured over.
    :param int max_epochs: cap of the plateau budget; ``0`` means ``4 * epochs``.
    :param int seed: first seed of data, masks, noise and initialisation.
    :param str ct_operator: how the CT operator is applied: ``"sparse"``, deepinv's
        ``Tomography`` stored as sparse matrices (:class:`deepinv_deq.physics.SparseMatrixPhysics`:
        the same operator up to float rounding, many times faster), or ``"deepinv"``, deepinv's
        ``Tomography`` itself. Like ``device``, not a setting a trained run depends on.
    :param str device: torch device.
    """

    img_size: int = 32
    mri_img_size: int = 0
    n_train: int = 64
    n_val: int = 8
    n_test: int = 32
    epochs: int = 12
    batch_size: int = 8
    seeds: int = 1
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    max_iter: int = 100
    tol: float = 1e-4
    backward_max_iter: int = 100
    backward_tol: float = 1e-4
    unrolled_iters: int = 0
    depth: int = 5
    width: int = 16
    epsilon: float = 0.1
    sigma_denoiser: float = 0.05
    stepsize: float = 1.0
    views: int = 12
    ct_noise: float = 0.01
    acceleration: int = 4
    center_fraction: float = 0.08
    mri_noise: float = 0.02
    transform: str = "rotate"
    iteration: str = "PGD"
    ei_weight: float = 1.0
    denoiser_epochs: int = 20
    red_lambda: float = 1.0
    eval_every: int = 0
    equivariance: bool = False
    data: str = "phantoms"
    mri_data: str = "phantoms"
    blur_sigma: float = 1.0
    blur_noise: float = 0.01
    blur_lambda: float = 0.01
    budget: str = "fixed"
    plateau_db: float = 0.05
    plateau_fraction: float = 0.2
    max_epochs: int = 0
    seed: int = 0
    ct_operator: str = "sparse"
    device: str = "cpu"

    def __post_init__(self):
        o = "ExperimentConfig"
        for name in (
            "img_size",
            "n_train",
            "n_val",
            "n_test",
            "epochs",
            "batch_size",
            "seeds",
            "max_iter",
            "backward_max_iter",
            "depth",
            "width",
            "views",
            "denoiser_epochs",
        ):
            setattr(self, name, check_int(o, name, getattr(self, name), 1))
        for name in ("mri_img_size", "unrolled_iters", "eval_every"):
            setattr(self, name, check_int(o, name, getattr(self, name), 0))
        for name in ("img_size", "mri_img_size"):
            if 0 < getattr(self, name) < 8:
                raise ValueError(f"{o}: '{name}' must be >= 8, got {getattr(self, name)}.")
        if self.depth < 2:
            raise ValueError(f"{o}: 'depth' must be >= 2, got {self.depth}.")
        self.acceleration = check_int(o, "acceleration", self.acceleration, 2)
        self.seed = check_int(o, "seed", self.seed, 0)
        for name in (
            "lr",
            "tol",
            "backward_tol",
            "sigma_denoiser",
            "stepsize",
            "red_lambda",
            "epsilon",
        ):
            setattr(self, name, check_float(o, name, getattr(self, name), 0.0, strict_min=True))
        if self.epsilon > 1:
            raise ValueError(f"{o}: 'epsilon' must be in (0, 1], got {self.epsilon}.")
        self.center_fraction = check_float(
            o, "center_fraction", self.center_fraction, 0.0, 1.0, strict_min=True
        )
        for name in ("ct_noise", "mri_noise", "ei_weight"):
            setattr(self, name, check_float(o, name, getattr(self, name), 0.0))
        if not isinstance(self.equivariance, bool):
            raise ValueError(
                f"{o}: 'equivariance' must be True or False, got {self.equivariance!r}."
            )
        self.transform = check_choice(o, "transform", self.transform, ("rotate", "shift"))
        self.iteration = check_choice(o, "iteration", self.iteration, DEQ_ITERATIONS).upper()
        self.lr_schedule = check_choice(o, "lr_schedule", self.lr_schedule, ("cosine", "constant"))
        if not isinstance(self.data, str) or not self.data:
            raise ValueError(f"{o}: 'data' must be 'phantoms' or a folder, got {self.data!r}.")
        self.mri_data = check_choice(o, "mri_data", self.mri_data, MRI_DATA)
        for name in ("blur_sigma", "blur_lambda", "plateau_db"):
            setattr(self, name, check_float(o, name, getattr(self, name), 0.0, strict_min=True))
        self.blur_noise = check_float(o, "blur_noise", self.blur_noise, 0.0)
        self.budget = check_choice(o, "budget", self.budget, BUDGETS)
        self.ct_operator = check_choice(o, "ct_operator", self.ct_operator, CT_OPERATORS)
        self.plateau_fraction = check_float(
            o, "plateau_fraction", self.plateau_fraction, 0.0, 1.0, strict_min=True
        )
        if self.plateau_fraction == 1.0:
            raise ValueError(f"{o}: 'plateau_fraction' must lie in (0, 1), got 1.0.")
        self.max_epochs = check_int(o, "max_epochs", self.max_epochs, 0)
        if 0 < self.max_epochs < self.epochs:
            raise ValueError(
                f"{o}: 'max_epochs' ({self.max_epochs}) must be 0 (4 * epochs) or at least "
                f"'epochs' ({self.epochs})."
            )
        if not isinstance(self.device, str) or self.device.split(":")[0] not in (
            "cpu",
            "cuda",
            "mps",
        ):
            raise ValueError(
                f"{o}: 'device' must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}."
            )

    def size_of(self, task: str) -> int:
        r"""Image side of ``task`` (``mri_img_size`` for MRI when set, else ``img_size``)."""
        return self.mri_img_size if task == "mri" and self.mri_img_size else self.img_size

    def epoch_cap(self) -> int:
        r"""The most epochs a trained run may take: ``epochs`` with the fixed budget, else
        ``max_epochs`` (``4 * epochs`` when ``0``)."""
        if self.budget == "fixed":
            return self.epochs
        return self.max_epochs or 4 * self.epochs

    def data_of(self, task: str) -> str:
        r"""The image source of ``task`` for :func:`deepinv_deq.data.load_dataset`: ``data``, or
        ``"mni"`` for MRI when ``mri_data == "mni"`` and ``data`` is ``"phantoms"``."""
        if task == "mri" and self.mri_data == "mni" and self.data == "phantoms":
            return "mni"
        return self.data

    def seed_list(self) -> list[int]:
        r"""The training seeds: ``seed, seed + 1, ..., seed + seeds - 1``."""
        return [self.seed + k for k in range(self.seeds)]

    @classmethod
    def from_preset(cls, preset: str = "demo", **overrides) -> "ExperimentConfig":
        r"""The preset's settings, with ``overrides`` (``None`` values are ignored).

        :param str preset: a key of :data:`PRESETS` (``tiny``, ``demo``, ``cpu``, ``gpu``,
            ``paper``; ``repro`` is the former name of ``cpu``).
        """
        preset = check_choice("ExperimentConfig", "size", preset, PRESETS)
        overrides = {k: v for k, v in overrides.items() if v is not None}
        reject_unknown("ExperimentConfig", overrides, [f.name for f in dataclasses.fields(cls)])
        return cls(**{**PRESETS[preset], **overrides})

    def to_dict(self) -> dict:
        r"""The settings as a plain dictionary (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def training_key(self) -> dict:
        r"""The settings a trained checkpoint depends on (everything but the device and how the CT
        operator is applied)."""
        d = self.to_dict()
        d.pop("device")
        d.pop("ct_operator")
        return d


def check_run(task: str, method: str, regime: str | None) -> tuple[str, str, str]:
    r"""Validate a ``(task, method, regime)`` triple; fixed methods take regime ``"none"``.

    :raises ValueError: naming the unknown task, method or regime.
    """
    task = check_choice("run", "task", task, ALL_TASKS)
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
