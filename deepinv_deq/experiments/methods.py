r"""The compared reconstruction methods and their training losses.

All learned iterative methods share one denoiser architecture and initialisation,
:class:`deepinv_deq.ContractiveDenoiser` :math:`D(x) = (1-\epsilon)x + R(x)` with :math:`R` a
small residual CNN whose last layer starts at zero, so that every fixed-point map is a contraction
at initialisation (:math:`\rho(J_F) \le 1-\epsilon`) and every DEQ has a unique fixed point:

- ``deq`` / ``deq-jfb``: :class:`deepinv_deq.DEQ` with a PGD map, Anderson acceleration forward and
  (``deq``) backward, both to ``tol``; implicit differentiation or JFB;
- ``unrolled``: :class:`Unrolled`, :math:`K` iterations of the same PGD map trained by backprop
  (:math:`K` = the DEQ's mean forward iterations);
- ``pnp`` / ``red``: the same denoiser trained as a Gaussian denoiser on clean training images
  (the usual plug-and-play recipe, independent of the operator), then iterated to ``tol`` by
  :class:`deepinv_deq.DEQ`; the training noise level and the step / weight are chosen on the
  validation images;
- ``pnp-tv``: PnP-PGD with deepinv's :class:`deepinv.models.TVDenoiser`, a fixed denoiser that needs
  no data and no weights;
- ``unet``: :class:`deepinv.models.UNet` applied to the pseudo-inverse (:class:`PseudoInverseNet`),
  with channels chosen so that it has about as many weights as the DEQ's denoiser;
- ``deq-init``: the DEQ at initialisation (untrained): what training adds;
- ``pinv``: the pseudo-inverse alone (FBP / zero-filled), the no-learning reference.

Every trained method of a regime minimises the same loss (deepinv's own :class:`deepinv.loss.EILoss`,
cold-started, for EI), with the same transformations when given the same generator.
"""

from __future__ import annotations

import torch
from torch import Tensor
from deepinv.models import Reconstructor

from .._validation import check_int
from ..maps import PGDMap
from .configs import ExperimentConfig
from .tasks import channels, pseudo_inverse


def build_denoiser(task: str, cfg: ExperimentConfig) -> torch.nn.Module:
    r"""The shared denoiser: :class:`deepinv_deq.ContractiveDenoiser` with a residual CNN of
    ``cfg.depth`` convolutions and ``cfg.width`` features, :math:`D = (1-\epsilon) I` at
    initialisation (``epsilon = cfg.epsilon``).

    :param str task: ``"ct"`` or ``"mri"`` (sets the channels).
    :param ExperimentConfig cfg: settings.
    """
    from ..denoisers import ContractiveDenoiser

    net = ContractiveDenoiser(
        epsilon=cfg.epsilon, in_channels=channels(task), depth=cfg.depth, width=cfg.width
    )
    return net.to(cfg.device)


def n_parameters(module: torch.nn.Module) -> int:
    r"""Number of trainable weights of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def matched_unet(task: str, cfg: ExperimentConfig) -> torch.nn.Module:
    r"""A :class:`deepinv.models.UNet` (2 scales) whose channel counts are chosen so that it has
    about as many weights as :func:`build_denoiser` (capacity-matched baseline)."""
    import deepinv as dinv

    c = channels(task)
    target = n_parameters(build_denoiser(task, cfg))

    def unet(w: int) -> torch.nn.Module:
        return dinv.models.UNet(
            in_channels=c,
            out_channels=c,
            scales=2,
            batch_norm=False,
            residual=True,
            channels_per_scale=[w, 2 * w],
        )

    best = None
    for w in range(2, 129):
        size = n_parameters(unet(w))
        gap = abs(size - target)
        if best is None or gap < best[0]:
            best = (gap, w)
        elif size > target:
            break
    return unet(best[1])


class Unrolled(Reconstructor):
    r"""Deep unrolling: :math:`K` iterations of a fixed-point map, trained by backpropagation.

    .. math::

        x_0 = A^\dagger y, \qquad x_{k+1} = F_\theta(x_k; y, A), \qquad \hat{x} = x_K,

    with the same map :math:`F_\theta` (and so the same weights) at every iteration, as in the
    DEQ; memory grows linearly with :math:`K`.

    :param torch.nn.Module fmap: the map ``fmap(x, y, physics)``, e.g. :class:`deepinv_deq.maps.PGDMap`.
    :param int n_iter: number of iterations :math:`K`.
    :param Callable init: ``init(y, physics)`` giving :math:`x_0` (default :math:`A^\top y`).

    |sep|

    :Example:

    >>> import torch, deepinv as dinv
    >>> from deepinv_deq.maps import PGDMap
    >>> from deepinv_deq.experiments.methods import Unrolled
    >>> physics = dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.5)
    >>> model = Unrolled(PGDMap(dinv.models.MedianFilter(), stepsize=1.0), n_iter=3)
    >>> model(physics(torch.rand(2, 1, 8, 8)), physics).shape
    torch.Size([2, 1, 8, 8])
    """

    def __init__(self, fmap: torch.nn.Module, n_iter: int = 10, init=None):
        super().__init__()
        self.map = fmap
        self.n_iter = check_int("Unrolled", "n_iter", n_iter, 1)
        self.init = init

    def forward(self, y: Tensor, physics, **kwargs) -> Tensor:
        r"""Run the :math:`K` iterations.

        :param torch.Tensor y: measurements.
        :param deepinv.physics.Physics physics: forward operator.
        """
        x = self.init(y, physics) if self.init is not None else physics.A_adjoint(y)
        for _ in range(self.n_iter):
            x = self.map(x, y, physics)
        return x


class PseudoInverseNet(Reconstructor):
    r"""A network applied to a linear reconstruction, :math:`\hat{x} = g_\theta(A^\dagger y)`.

    Like :class:`deepinv.models.ArtifactRemoval`, with the linear step chosen by the caller
    (filtered back-projection for CT, where deepinv's default :math:`A^\dagger` is an iterative
    least-squares solve).

    :param torch.nn.Module backbone: network ``g(x, sigma)`` or ``g(x)``, e.g. :class:`deepinv.models.UNet`.
    :param Callable init: ``init(y, physics)``; default :math:`A^\top y`.

    |sep|

    :Example:

    >>> import torch, deepinv as dinv
    >>> from deepinv_deq.experiments.methods import PseudoInverseNet
    >>> physics = dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.5)
    >>> model = PseudoInverseNet(torch.nn.Identity())
    >>> y = physics(torch.rand(1, 1, 8, 8))
    >>> bool(torch.equal(model(y, physics), physics.A_adjoint(y)))
    True
    """

    def __init__(self, backbone: torch.nn.Module | None, init=None):
        super().__init__()
        self.backbone = backbone
        self.init = init

    def forward(self, y: Tensor, physics, **kwargs) -> Tensor:
        r"""Reconstruct :math:`g_\theta(A^\dagger y)`.

        :param torch.Tensor y: measurements.
        :param deepinv.physics.Physics physics: forward operator.
        """
        x = self.init(y, physics) if self.init is not None else physics.A_adjoint(y)
        if self.backbone is None:
            return x
        try:
            return self.backbone(x, None)
        except TypeError:
            return self.backbone(x)


def build_model(
    task: str, method: str, cfg: ExperimentConfig, denoiser=None, settings: dict | None = None
) -> torch.nn.Module:
    r"""The reconstructor of ``method`` for ``task``.

    :param str task: ``"ct"`` or ``"mri"``.
    :param str method: a key of :data:`deepinv_deq.experiments.configs.METHODS`.
    :param ExperimentConfig cfg: settings.
    :param torch.nn.Module denoiser: the denoiser to use (``pnp``/``red``: the trained Gaussian
        denoiser); default a fresh :func:`build_denoiser`.
    :param dict settings: ``stepsize`` and ``lambda_reg`` of PnP/RED (chosen on validation images),
        ``unrolled_iters`` of the unrolled network (when ``cfg.unrolled_iters`` is 0).
    """
    import deepinv as dinv
    from ..deq import DEQ

    settings = dict(settings or {})
    init = pseudo_inverse(task)
    if method in ("deq", "deq-jfb", "deq-init", "pnp", "red", "pnp-tv"):
        if method == "pnp-tv":
            denoiser = dinv.models.TVDenoiser(n_it_max=30)
        elif denoiser is None:
            denoiser = build_denoiser(task, cfg)
        lam = settings.get("lambda_reg", cfg.red_lambda)
        kwargs = dict(
            denoiser=denoiser,
            iteration={"red": "RED", "pnp": "PGD", "pnp-tv": "PGD"}.get(method, cfg.iteration),
            stepsize=settings.get(
                "stepsize", cfg.stepsize / (1 + lam) if method == "red" else cfg.stepsize
            ),
            sigma_denoiser=cfg.sigma_denoiser,
            max_iter=cfg.max_iter,
            tol=cfg.tol,
            solver="anderson",
            backward="jfb" if method == "deq-jfb" else "implicit",
            init=init,
        )
        if method == "red":
            kwargs["lambda_reg"] = lam
        if method != "deq-jfb":
            kwargs.update(
                backward_max_iter=cfg.backward_max_iter,
                backward_tol=cfg.backward_tol,
                backward_solver="gmres",  # preconditioned (the library's default)
            )
        model = DEQ(**kwargs)
    elif method == "unrolled":
        fmap = PGDMap(
            denoiser if denoiser is not None else build_denoiser(task, cfg),
            stepsize=cfg.stepsize,
            sigma_denoiser=cfg.sigma_denoiser,
        )
        k = cfg.unrolled_iters or settings.get("unrolled_iters", 10)
        model = Unrolled(fmap, n_iter=k, init=init)
    elif method == "unet":
        model = PseudoInverseNet(matched_unet(task, cfg), init=init)
    elif method == "pinv":
        model = PseudoInverseNet(None, init=init)
    else:
        raise ValueError(f"build_model: unknown method {method!r}.")
    return model.to(cfg.device)


def build_losses(regime: str, cfg: ExperimentConfig, rng: torch.Generator | None = None) -> list:
    r"""Training losses of a regime, the same for every method.

    - ``sup``: :class:`deepinv.loss.SupLoss` (ground truth);
    - ``mc``: :class:`deepinv.loss.MCLoss`, measurement consistency :math:`\|A\hat{x}-y\|^2` only;
    - ``ei``: MC plus deepinv's :class:`deepinv.loss.EILoss`,
      :math:`\alpha\|f(AT_g\hat{x})-T_g\hat{x}\|^2` with random rotations (or shifts), the
      transformed problem solved from the model's own (cold) initialisation.

    :param str regime: ``"sup"``, ``"ei"`` or ``"mc"``.
    :param ExperimentConfig cfg: settings (transform, EI weight).
    :param torch.Generator rng: generator of the random transformations (shared across methods).
    """
    import deepinv as dinv

    if regime == "sup":
        return [dinv.loss.SupLoss()]
    if regime == "mc":
        return [dinv.loss.MCLoss()]
    if regime == "ei":
        rng = rng if rng is not None else torch.Generator(cfg.device).manual_seed(cfg.seed)
        if cfg.transform == "rotate":
            transform = dinv.transform.Rotate(interpolation_mode="bilinear", rng=rng)
        else:
            transform = dinv.transform.Shift(rng=rng)
        return [dinv.loss.MCLoss(), dinv.loss.EILoss(transform=transform, weight=cfg.ei_weight)]
    raise ValueError(f"build_losses: unknown regime {regime!r}; choose 'sup', 'ei' or 'mc'.")
