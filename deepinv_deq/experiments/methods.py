r"""The compared reconstruction methods and their training losses.

All learned iterative methods share one denoiser architecture, a small
:class:`deepinv.models.DnCNN` (``pretrained=None``: nothing is downloaded):

- ``deq`` / ``deq-jfb``: :class:`deepinv_deq.DEQ` with a PGD map, implicit differentiation or JFB;
- ``unrolled``: :class:`Unrolled`, :math:`K` iterations of the same PGD map trained by backprop;
- ``pnp`` / ``red``: the same DnCNN trained once as a Gaussian denoiser on clean training images
  (the usual plug-and-play recipe, independent of the operator), then iterated to a fixed point by
  :class:`deepinv_deq.DEQ` without further training;
- ``pnp-tv``: PnP-PGD with deepinv's :class:`deepinv.models.TVDenoiser`, a fixed denoiser that needs
  no data and no weights (wavelet denoisers need ``ptwt`` and BM3D needs ``bm3d``, neither a
  dependency of deepinv-deq); it is the ground-truth-free classical baseline;
- ``unet``: :class:`deepinv.models.UNet` applied to the pseudo-inverse (:class:`PseudoInverseNet`);
- ``pinv``: the pseudo-inverse alone (FBP / zero-filled), the no-learning reference.
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
    r"""The shared denoiser architecture: a DnCNN of ``cfg.depth`` layers and ``cfg.width`` features.

    Its last layer is zero-initialised, so the residual network starts as the identity.

    :param str task: ``"ct"`` or ``"mri"`` (sets the channels).
    :param ExperimentConfig cfg: settings.
    """
    import deepinv as dinv

    c = channels(task)
    net = dinv.models.DnCNN(
        in_channels=c, out_channels=c, depth=cfg.depth, nf=cfg.width, pretrained=None, device=cfg.device
    )
    # DnCNN is residual (x + out_conv(...)): a zero last layer makes it the identity at
    # initialisation, so DEQ / unrolled training starts from the Landweber iteration instead of
    # a random, expansive map.
    torch.nn.init.zeros_(net.out_conv.weight)
    if net.out_conv.bias is not None:
        torch.nn.init.zeros_(net.out_conv.bias)
    return net


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


def build_model(task: str, method: str, cfg: ExperimentConfig, denoiser=None) -> torch.nn.Module:
    r"""The reconstructor of ``method`` for ``task``.

    :param str task: ``"ct"`` or ``"mri"``.
    :param str method: a key of :data:`deepinv_deq.experiments.configs.METHODS`.
    :param ExperimentConfig cfg: settings.
    :param torch.nn.Module denoiser: the denoiser to use (``pnp``/``red``: the trained Gaussian
        denoiser); default a fresh :func:`build_denoiser`.
    """
    import deepinv as dinv
    from ..deq import DEQ

    init = pseudo_inverse(task)
    if method in ("deq", "deq-jfb", "pnp", "red", "pnp-tv"):
        if method == "pnp-tv":
            denoiser = dinv.models.TVDenoiser(n_it_max=30)
        elif denoiser is None:
            denoiser = build_denoiser(task, cfg)
        kwargs = dict(
            denoiser=denoiser,
            iteration="RED" if method == "red" else "PGD",
            stepsize=cfg.stepsize / (1 + cfg.red_lambda) if method == "red" else cfg.stepsize,
            sigma_denoiser=cfg.sigma_denoiser,
            max_iter=cfg.max_iter,
            tol=cfg.tol,
            backward="jfb" if method == "deq-jfb" else "implicit",
            init=init,
        )
        if method == "red":
            kwargs["lambda_reg"] = cfg.red_lambda
        if method == "deq":
            kwargs.update(backward_max_iter=cfg.backward_max_iter, backward_tol=cfg.backward_tol)
        model = DEQ(**kwargs)
    elif method == "unrolled":
        fmap = PGDMap(denoiser if denoiser is not None else build_denoiser(task, cfg),
                      stepsize=cfg.stepsize, sigma_denoiser=cfg.sigma_denoiser)
        model = Unrolled(fmap, n_iter=cfg.unrolled_iters, init=init)
    elif method == "unet":
        c = channels(task)
        scales = 3 if cfg.img_size % 8 == 0 else (2 if cfg.img_size % 4 == 0 else 1)
        backbone = dinv.models.UNet(in_channels=c, out_channels=c, scales=scales,
                                    batch_norm=False, residual=True)
        model = PseudoInverseNet(backbone, init=init)
    elif method == "pinv":
        model = PseudoInverseNet(None, init=init)
    else:
        raise ValueError(f"build_model: unknown method {method!r}.")
    return model.to(cfg.device)


def build_losses(regime: str, cfg: ExperimentConfig, model=None) -> list:
    r"""Training losses of a regime.

    - ``sup``: :class:`deepinv.loss.SupLoss` (ground truth);
    - ``mc``: :class:`deepinv.loss.MCLoss`, measurement consistency :math:`\|A\hat{x}-y\|^2` only;
    - ``ei``: MC plus the equivariant-imaging term :math:`\alpha\|f(AT_g\hat{x})-T_g\hat{x}\|^2`
      with random rotations (or shifts); :class:`deepinv_deq.loss.DEQEILoss` (warm-started
      transformed solve) for a DEQ when available, :class:`deepinv.loss.EILoss` otherwise.

    :param str regime: ``"sup"``, ``"ei"`` or ``"mc"``.
    :param ExperimentConfig cfg: settings (transform, EI weight).
    :param model: the model being trained (selects the DEQ-aware EI loss).
    """
    import deepinv as dinv

    if regime == "sup":
        return [dinv.loss.SupLoss()]
    if regime == "mc":
        return [dinv.loss.MCLoss()]
    if regime == "ei":
        transform = dinv.transform.Rotate(interpolation_mode="bilinear") if cfg.transform == "rotate" else dinv.transform.Shift()
        ei_cls = dinv.loss.EILoss
        from ..deq import DEQ

        if isinstance(model, DEQ):
            try:
                from ..loss import DEQEILoss

                ei_cls = DEQEILoss
            except ImportError:  # pragma: no cover - the DEQ-aware loss is optional
                pass
        return [dinv.loss.MCLoss(), ei_cls(transform=transform, weight=cfg.ei_weight)]
    raise ValueError(f"build_losses: unknown regime {regime!r}; choose 'sup', 'ei' or 'mc'.")
