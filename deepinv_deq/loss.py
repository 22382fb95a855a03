r"""DEQ-aware versions of deepinv's equivariant-imaging losses, and a Jacobian-norm regulariser.

deepinv's self-supervised losses call the reconstructor again on new measurements: the EI loss on
:math:`A T_g \hat{x}`, SURE on :math:`y + \tau b`. For a DEQ every such call is a fixed-point solve,
started by default at :math:`A^\top y`. The adapters below start those extra solves *warm*, at a
point close to their solution (detached, so the gradient is unchanged up to the solver tolerance):

- :class:`DEQEILoss`, :class:`DEQMOEILoss`: the transformed solve starts at :math:`T_g \hat{x}`,
  which is the answer of an equivariant reconstructor;
- :class:`DEQSureGaussianLoss`: the perturbed solve starts at :math:`\hat{x}`, the reconstruction
  of the unperturbed measurement.

With any model that is not a :class:`deepinv_deq.DEQ` they behave exactly as their deepinv parents.
"""

from __future__ import annotations

import torch
from torch import Tensor
from deepinv.loss import EILoss, Loss, MOEILoss, SureGaussianLoss

from ._validation import check_choice, check_float, check_int, reject_unknown
from .deq import DEQ

__all__ = ["DEQEILoss", "DEQMOEILoss", "DEQSureGaussianLoss", "JacobianNormLoss", "is_deq"]


def is_deq(model) -> bool:
    r"""Whether ``model`` is a :class:`deepinv_deq.DEQ` (whose solves accept a warm start).

    :param model: any reconstructor.
    """
    return isinstance(model, DEQ)


class _WarmStarted:
    r"""A reconstructor ``model(y, physics)`` whose solve starts at a fixed ``init``."""

    def __init__(self, model: DEQ, init: Tensor):
        self.model = model
        self.init = init

    @property
    def training(self) -> bool:
        return self.model.training

    def __call__(self, y: Tensor, physics, **kwargs) -> Tensor:
        return self.model(y, physics, init=self.init, **kwargs)


def _warm_ei_term(loss: EILoss, x_net: Tensor, physics, model: DEQ) -> Tensor:
    # The EI term of deepinv's EILoss, :math:`\|f(A T_g \hat x) - T_g \hat x\|`, with the solve
    # started at T_g x_hat.
    if loss.no_grad:
        with torch.no_grad():
            x2 = loss.T(x_net).detach()
    else:
        x2 = loss.T(x_net)
    y2 = physics(x2) if loss.noise else physics.A(x2)
    x3 = model(y2, physics, init=x2.detach())
    return loss.weight * loss.metric(x3, x2)


class DEQEILoss(EILoss):
    r"""Equivariant imaging loss whose transformed DEQ solve starts at :math:`T_g\hat{x}`.

    Same loss as :class:`deepinv.loss.EILoss`,

    .. math::

        \| T_g \hat{x} - f_\theta(A T_g \hat{x}) \|^2, \qquad \hat{x} = f_\theta(y),

    but when the reconstructor :math:`f_\theta` is a :class:`deepinv_deq.DEQ` the fixed-point solve
    of :math:`f_\theta(A T_g \hat{x})` is initialised at :math:`\operatorname{sg}(T_g \hat{x})`
    (``sg``: stop-gradient). The fixed point and therefore the implicit gradient are those of the
    cold-started loss up to the solver tolerance; the solve needs fewer iterations the more
    equivariant :math:`f_\theta` already is. With any other model it is exactly
    :class:`deepinv.loss.EILoss`. The constructor arguments are those of
    :class:`deepinv.loss.EILoss`.

    |sep|

    :Example:

    >>> import torch, deepinv as dinv
    >>> from deepinv_deq import DEQ, DEQEILoss
    >>> physics = dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.6)
    >>> model = DEQ(denoiser=dinv.models.MedianFilter(), iteration="PGD", max_iter=30)
    >>> loss = DEQEILoss(transform=dinv.transform.Rotate(multiples=90))
    >>> y = physics(torch.rand(2, 1, 8, 8))
    >>> x_net = model(y, physics)
    >>> loss(x_net=x_net, physics=physics, model=model).shape
    torch.Size([])
    """

    def forward(self, x_net, physics, model, **kwargs):
        r"""Compute the EI loss.

        :param torch.Tensor x_net: reconstruction :math:`\hat{x} = f_\theta(y)`.
        :param deepinv.physics.Physics physics: forward operator.
        :param torch.nn.Module model: the reconstructor :math:`f_\theta`.
        :return: (:class:`torch.Tensor`) loss.
        """
        if not is_deq(model):
            return super().forward(x_net, physics, model, **kwargs)
        return _warm_ei_term(self, x_net, physics, model)


class DEQMOEILoss(MOEILoss):
    r"""Multi-operator EI loss whose transformed DEQ solve starts at :math:`T_g\hat{x}`.

    Same loss as :class:`deepinv.loss.MOEILoss`,
    :math:`\| T_g \hat{x} - f_\theta(A_2 T_g \hat{x}, A_2) \|^2` with :math:`A_2` drawn from the
    set of operators, with the warm start of :class:`DEQEILoss` when the model is a
    :class:`deepinv_deq.DEQ`; exactly :class:`deepinv.loss.MOEILoss` otherwise. The constructor
    arguments are those of :class:`deepinv.loss.MOEILoss`.

    |sep|

    :Example:

    >>> import torch, deepinv as dinv
    >>> from deepinv_deq import DEQ, DEQMOEILoss
    >>> ops = [dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.6) for _ in range(2)]
    >>> model = DEQ(denoiser=dinv.models.MedianFilter(), iteration="PGD", max_iter=30)
    >>> loss = DEQMOEILoss(transform=dinv.transform.Shift(), physics=ops)
    >>> y = ops[0](torch.rand(2, 1, 8, 8))
    >>> x_net = model(y, ops[0])
    >>> loss(x_net=x_net, physics=ops[0], model=model).shape
    torch.Size([])
    """

    def forward(self, x_net, physics, model, **kwargs):
        r"""Compute the MO-EI loss.

        :param torch.Tensor x_net: reconstruction :math:`\hat{x} = f_\theta(y, A_1)`.
        :param deepinv.physics.Physics physics: forward operator of the measurements.
        :param torch.nn.Module model: the reconstructor :math:`f_\theta`.
        :return: (:class:`torch.Tensor`) loss.
        """
        if not is_deq(model):
            return super().forward(x_net, physics, model, **kwargs)
        return _warm_ei_term(self, x_net, self.next_physics(physics), model)


class DEQSureGaussianLoss(SureGaussianLoss):
    r"""SURE loss for Gaussian noise whose perturbed DEQ solve starts at :math:`\hat{x}`.

    Same loss as :class:`deepinv.loss.SureGaussianLoss`,

    .. math::

        \frac{1}{m}\|B(y - A\hat{x})\|_2^2 - \sigma^2 + \frac{2\sigma^2}{m\tau} b^\top B^\top
        \big(A f_\theta(y + \tau b) - A\hat{x}\big),

    but when :math:`f_\theta` is a :class:`deepinv_deq.DEQ` the solve of
    :math:`f_\theta(y + \tau b)` starts at :math:`\operatorname{sg}(\hat{x})`, which is within
    :math:`O(\tau)` of its solution. With any other model it is exactly
    :class:`deepinv.loss.SureGaussianLoss`. The constructor arguments are those of
    :class:`deepinv.loss.SureGaussianLoss`.

    |sep|

    :Example:

    >>> import torch, deepinv as dinv
    >>> from deepinv_deq import DEQ, DEQSureGaussianLoss
    >>> physics = dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.6,
    ...                                   noise_model=dinv.physics.GaussianNoise(0.05))
    >>> model = DEQ(denoiser=dinv.models.MedianFilter(), iteration="PGD", max_iter=30)
    >>> loss = DEQSureGaussianLoss(sigma=0.05)
    >>> y = physics(torch.rand(2, 1, 8, 8))
    >>> x_net = model(y, physics)
    >>> loss(y=y, x_net=x_net, physics=physics, model=model).shape
    torch.Size([2])
    """

    def forward(self, y, x_net, physics, model, **kwargs):
        r"""Compute the SURE loss.

        :param torch.Tensor y: measurements.
        :param torch.Tensor x_net: reconstruction :math:`\hat{x} = f_\theta(y)`.
        :param deepinv.physics.Physics physics: forward operator.
        :param torch.nn.Module model: the reconstructor :math:`f_\theta`.
        :return: (:class:`torch.Tensor`) loss of shape ``(batch_size,)``.
        """
        if is_deq(model):
            model = _WarmStarted(model, x_net.detach())
        return super().forward(y, x_net, physics, model, **kwargs)


class JacobianNormLoss(Loss):
    r"""Jacobian-norm regulariser of a DEQ at its fixed point (Hutchinson estimate).

    Penalises the Frobenius norm of the Jacobian of the fixed-point map at the reconstruction,
    which keeps the map contractive there and the forward and backward solves short:

    .. math::

        \mathcal{L} = \frac{w}{n}\,\|J_F(x^\star)\|_F^2
        \approx \frac{w}{n K} \sum_{k=1}^{K} \|J_F(x^\star)^\top \varepsilon_k\|_2^2,
        \qquad \mathbb{E}[\varepsilon_k\varepsilon_k^\top] = I,

    with :math:`n` the number of entries of :math:`x^\star` (only if ``normalize``) and :math:`K`
    random probes. The vector-Jacobian products go through one differentiable evaluation of the
    map :math:`F(x^\star; y, A)` and are themselves differentiable (``create_graph``), so the
    regulariser trains :math:`\theta`. The model must be a :class:`deepinv_deq.DEQ`.

    :param int n_probes: number of probes :math:`K` (default 1).
    :param float weight: weight :math:`w` (default 1.0).
    :param str probe: ``"gaussian"`` (default) or ``"rademacher"``.
    :param bool normalize: divide by the number of entries :math:`n` (default ``True``).
    :param torch.Generator rng: optional random generator of the probes (on the data's device).

    |sep|

    :Example:

    >>> import torch, deepinv as dinv
    >>> from deepinv_deq import DEQ, JacobianNormLoss
    >>> physics = dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.6)
    >>> model = DEQ(denoiser=dinv.models.MedianFilter(), iteration="PGD", max_iter=30)
    >>> y = physics(torch.rand(2, 1, 8, 8))
    >>> x_net = model(y, physics)
    >>> reg = JacobianNormLoss(n_probes=2, weight=0.1)
    >>> reg(x_net=x_net, y=y, physics=physics, model=model).shape
    torch.Size([2])
    """

    def __init__(
        self,
        n_probes: int = 1,
        weight: float = 1.0,
        probe: str = "gaussian",
        normalize: bool = True,
        rng: torch.Generator | None = None,
        **unknown,
    ):
        super().__init__()
        owner = "JacobianNormLoss"
        reject_unknown(owner, unknown, [])
        self.n_probes = check_int(owner, "n_probes", n_probes, 1)
        self.weight = check_float(owner, "weight", weight, 0.0)
        self.probe = check_choice(owner, "probe", probe, ("gaussian", "rademacher"))
        if not isinstance(normalize, bool):
            raise ValueError(f"{owner}: 'normalize' must be a bool, got {normalize!r}.")
        self.normalize = normalize
        if rng is not None and not isinstance(rng, torch.Generator):
            raise ValueError(f"{owner}: 'rng' must be a torch.Generator, got {rng!r}.")
        self.rng = rng

    def _draw(self, like: Tensor) -> Tensor:
        if self.probe == "gaussian":
            return torch.randn(like.shape, generator=self.rng, device=like.device, dtype=like.dtype)
        bits = torch.randint(0, 2, like.shape, generator=self.rng, device=like.device)
        return (2 * bits - 1).to(like.dtype)

    def forward(self, x_net, y, physics, model, **kwargs):
        r"""Estimate :math:`w\|J_F(x^\star)\|_F^2 / n` per sample.

        :param torch.Tensor x_net: the DEQ's reconstruction :math:`x^\star` (treated as constant).
        :param torch.Tensor y: measurements.
        :param deepinv.physics.Physics physics: forward operator.
        :param deepinv_deq.DEQ model: the DEQ whose map :math:`F` is regularised.
        :return: (:class:`torch.Tensor`) estimate of shape ``(batch_size,)``.
        """
        if not is_deq(model):
            raise ValueError(
                "JacobianNormLoss: the model must be a deepinv_deq.DEQ (the regulariser needs its "
                f"fixed-point map), got {type(model).__name__}."
            )
        B = x_net.shape[0]
        x = x_net.detach().requires_grad_()
        with torch.enable_grad():
            z = model.map(x, y, physics)
            total = torch.zeros(B, device=x.device, dtype=x.dtype)
            for _ in range(self.n_probes):
                (g,) = torch.autograd.grad(z, x, self._draw(z), create_graph=True)
                total = total + g.pow(2).reshape(B, -1).sum(1)
        total = total / self.n_probes
        if self.normalize:
            total = total / x[0].numel()
        return self.weight * total
