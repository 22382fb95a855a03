r"""DEQ-aware versions of deepinv's equivariant-imaging losses, and a Jacobian-norm regulariser.

deepinv's self-supervised losses call the reconstructor again on new measurements: the EI loss
:footcite:`chen2021equivariant` on :math:`A T_g \hat{x}`, SURE :footcite:`stein1981sure` on
:math:`y + \tau b`. For a DEQ every such call is a fixed-point solve, started by default at the
model's initial iterate (e.g. :math:`A^\top y`). By default the adapters below are exactly their
deepinv parents (same objective, same cold-started solves). With ``warm_start=True`` they start
those extra solves at a point close to their solution (detached):

- :class:`DEQEILoss`, :class:`DEQMOEILoss`: the transformed solve starts at :math:`T_g \hat{x}`,
  which is the answer of an equivariant reconstructor;
- :class:`DEQSureGaussianLoss`: the perturbed solve starts at :math:`\hat{x}`, the reconstruction
  of the unperturbed measurement.

**Precondition of the warm start**: the map has a *unique* fixed point (e.g. it is a contraction,
see :class:`deepinv_deq.ContractiveDenoiser`) and the solves converge. Then the warm-started solve
reaches the same fixed point as the cold one, and the loss and its gradient are unchanged up to
the solver tolerance. When the fixed point is not unique (e.g. a denoiser initialised as the
identity: every :math:`x` with :math:`Ax = y` is a fixed point of the PGD map), the solve started
at :math:`T_g \hat{x}` returns :math:`T_g \hat{x}`, the EI term vanishes and the objective is not
deepinv's any more.

The adapters do not copy deepinv's code: they call deepinv's own ``forward`` with the model (and,
for EI, the transformation) wrapped, so they follow deepinv when it changes. With any model that
is not a :class:`deepinv_deq.DEQ` they are exactly their deepinv parents. (The references are
listed at the end of the page that shows this text, the API reference.)
"""

from __future__ import annotations

import torch
from torch import Tensor
from deepinv.loss import EILoss, Loss, MOEILoss, SureGaussianLoss

from ._validation import check_choice, check_float, check_int, reject_unknown
from .deq import DEQ
from .maps import autograd_vjp

__all__ = ["DEQEILoss", "DEQMOEILoss", "DEQSureGaussianLoss", "JacobianNormLoss", "is_deq"]


def is_deq(model) -> bool:
    r"""Whether ``model`` is a :class:`deepinv_deq.DEQ` (whose solves accept a warm start).

    :param model: any reconstructor.
    :return: (bool) ``True`` for a :class:`deepinv_deq.DEQ`.

    :Examples:

    >>> import torch
    >>> from deepinv_deq.loss import is_deq
    >>> is_deq(torch.nn.Identity())
    False
    """
    return isinstance(model, DEQ)


def _check_warm_start(owner: str, warm_start) -> bool:
    if not isinstance(warm_start, bool):
        raise ValueError(f"{owner}: 'warm_start' must be a bool, got {warm_start!r}.")
    return warm_start


def _as_init(init: Tensor, y) -> Tensor:
    # The warm start follows the measurements' precision: under autocast the reconstruction (and
    # so T_g x_hat) may be in low precision while y is float32.
    init = init.detach()
    if isinstance(y, Tensor) and not init.is_complex() and init.dtype != y.real.dtype:
        init = init.to(y.real.dtype)
    return init


class _WarmStarted:
    r"""A reconstructor ``model(y, physics)`` whose solve starts at ``init()`` (detached)."""

    def __init__(self, model: DEQ, init):
        self.model = model
        self.init = init

    @property
    def training(self) -> bool:
        return self.model.training

    def __call__(self, y, physics, **kwargs) -> Tensor:
        return self.model(y, physics, init=_as_init(self.init(), y), **kwargs)


class _RecordingTransform:
    r"""The transformation :math:`T_g` of an EI loss, remembering its last output :math:`T_g\hat x`."""

    def __init__(self, transform):
        self.transform = transform
        self.output = None

    def __call__(self, x, *args, **kwargs):
        self.output = self.transform(x, *args, **kwargs)
        return self.output

    def __getattr__(self, name):
        if name == "transform":  # not set yet (e.g. during copying): no recursion
            raise AttributeError(name)
        return getattr(self.transform, name)

    def last(self) -> Tensor:
        if self.output is None:
            raise RuntimeError(
                "DEQEILoss(warm_start=True): deepinv's EILoss called the model before the "
                "transformation; the warm start needs T_g x_hat first (incompatible deepinv version)."
            )
        return self.output


class _WithTransform:
    r"""A view of an EI loss whose transformation is replaced, so that deepinv's own ``forward``
    runs unchanged on it (every other attribute is the loss's)."""

    def __init__(self, loss: EILoss, transform):
        self._loss = loss
        self.T = transform

    def __getattr__(self, name):
        if name == "_loss":
            raise AttributeError(name)
        return getattr(self._loss, name)


def _warm_ei_forward(
    deepinv_forward, loss: EILoss, x_net: Tensor, physics, model, **kwargs
) -> Tensor:
    # deepinv's own forward (EILoss.forward or MOEILoss.forward), with T_g x_hat recorded and the
    # model's solve started there.
    recorder = _RecordingTransform(loss.T)
    view = _WithTransform(loss, recorder)
    return deepinv_forward(view, x_net, physics, _WarmStarted(model, recorder.last), **kwargs)


class _WarmStartOption:
    # the one option the DEQ adapters add to deepinv's losses, validated once for all three
    def __init__(self, *args, warm_start: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.warm_start = _check_warm_start(type(self).__name__, warm_start)


class _WarmEIForward(_WarmStartOption):
    # deepinv's EILoss/MOEILoss forward, unchanged unless warm_start is on and the model is a DEQ
    def forward(self, x_net, physics, model, **kwargs):
        r"""Compute the loss of the deepinv base class (warm-started transformed solve if asked).

        :param torch.Tensor x_net: reconstruction :math:`\hat{x} = f_\theta(y)`.
        :param deepinv.physics.Physics physics: forward operator of the measurements.
        :param torch.nn.Module model: the reconstructor :math:`f_\theta`.
        :return: (:class:`torch.Tensor`) loss.
        """
        deepinv_forward = super().forward
        if not (self.warm_start and is_deq(model)):
            return deepinv_forward(x_net, physics, model, **kwargs)
        unbound = next(c.forward for c in type(self).__mro__ if c in (EILoss, MOEILoss))
        return _warm_ei_forward(unbound, self, x_net, physics, model, **kwargs)


class DEQEILoss(_WarmEIForward, EILoss):
    r"""Equivariant imaging loss :footcite:`chen2021equivariant` with an optional warm-started DEQ solve.

    The loss of :class:`deepinv.loss.EILoss`,

    .. math::

        \| T_g \hat{x} - f_\theta(A T_g \hat{x}) \|^2, \qquad \hat{x} = f_\theta(y).

    By default (``warm_start=False``) it *is* :class:`deepinv.loss.EILoss`. With
    ``warm_start=True`` and a :class:`deepinv_deq.DEQ` reconstructor :math:`f_\theta`, the
    fixed-point solve of :math:`f_\theta(A T_g \hat{x})` starts at
    :math:`\operatorname{sg}(T_g \hat{x})` (``sg``: stop-gradient; the transformation is drawn once
    by deepinv's ``forward``). Precondition: a unique fixed point and converged solves; then the
    loss and the implicit gradient are those of the cold-started loss up to the solver tolerance,
    and the solve needs fewer iterations the more equivariant :math:`f_\theta` already is. With
    several fixed points the warm-started solve returns :math:`T_g \hat{x}` and the EI term
    vanishes (see the module's docstring).

    :param bool warm_start: start the transformed solve at :math:`T_g \hat{x}`. Default: ``False``.
    :param args: the arguments of :class:`deepinv.loss.EILoss` (``transform``, ``metric``,
        ``apply_noise``, ``weight``, ``no_grad``).

    |sep|

    :Examples:

    The same value as deepinv's EI loss with the same transformation, cold or warm when the DEQ's
    map is a contraction:

    >>> import torch, deepinv as dinv
    >>> from deepinv_deq import DEQ, DEQEILoss, ContractiveDenoiser
    >>> physics = dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.6)
    >>> model = DEQ(denoiser=ContractiveDenoiser(depth=2, width=4), max_iter=100, tol=1e-6)
    >>> y = physics(torch.rand(2, 1, 8, 8))
    >>> x_net = model(y, physics)
    >>> rot = lambda x: torch.rot90(x, 1, dims=(-2, -1))
    >>> ref = dinv.loss.EILoss(rot)(x_net=x_net, physics=physics, model=model)
    >>> cold = DEQEILoss(rot)(x_net=x_net, physics=physics, model=model)
    >>> warm = DEQEILoss(rot, warm_start=True)(x_net=x_net, physics=physics, model=model)
    >>> bool(cold == ref), bool(torch.isclose(warm, ref, rtol=1e-4))
    (True, True)

    .. footbibliography::
    """


class DEQMOEILoss(_WarmEIForward, MOEILoss):
    r"""Multi-operator EI loss with an optional warm-started DEQ solve.

    The loss of :class:`deepinv.loss.MOEILoss`,
    :math:`\| T_g \hat{x} - f_\theta(A_2 T_g \hat{x}, A_2) \|^2` with :math:`A_2` drawn from the
    set of operators; by default exactly :class:`deepinv.loss.MOEILoss`, and with
    ``warm_start=True`` and a :class:`deepinv_deq.DEQ` the warm start (and the precondition) of
    :class:`DEQEILoss`.

    :param bool warm_start: start the transformed solve at :math:`T_g \hat{x}`. Default: ``False``.
    :param args: the arguments of :class:`deepinv.loss.MOEILoss` (``transform``, ``physics``, ...).

    |sep|

    :Examples:

    >>> import torch, deepinv as dinv
    >>> from deepinv_deq import DEQ, DEQMOEILoss, ContractiveDenoiser
    >>> ops = [dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.6) for _ in range(2)]
    >>> model = DEQ(denoiser=ContractiveDenoiser(depth=2, width=4), max_iter=100, tol=1e-6)
    >>> loss = DEQMOEILoss(transform=dinv.transform.Shift(), physics=ops, warm_start=True)
    >>> y = ops[0](torch.rand(2, 1, 8, 8))
    >>> x_net = model(y, ops[0])
    >>> loss(x_net=x_net, physics=ops[0], model=model).shape
    torch.Size([])
    """


class DEQSureGaussianLoss(_WarmStartOption, SureGaussianLoss):
    r"""SURE loss for Gaussian noise :footcite:`stein1981sure` with an optional warm-started DEQ solve.

    The loss of :class:`deepinv.loss.SureGaussianLoss`,

    .. math::

        \frac{1}{m}\|B(y - A\hat{x})\|_2^2 - \sigma^2 + \frac{2\sigma^2}{m\tau} b^\top B^\top
        \big(A f_\theta(y + \tau b) - A\hat{x}\big).

    By default it *is* :class:`deepinv.loss.SureGaussianLoss`. With ``warm_start=True`` and a
    :class:`deepinv_deq.DEQ` :math:`f_\theta`, the solve of :math:`f_\theta(y + \tau b)` starts at
    :math:`\operatorname{sg}(\hat{x})`, within :math:`O(\tau)` of its solution. Same precondition as
    :class:`DEQEILoss`: with several fixed points the perturbed solve stays near :math:`\hat{x}`
    and the divergence term is underestimated.

    :param bool warm_start: start the perturbed solve at :math:`\hat{x}`. Default: ``False``.
    :param args: the arguments of :class:`deepinv.loss.SureGaussianLoss` (``sigma``, ``tau``, ...).

    |sep|

    :Examples:

    >>> import torch, deepinv as dinv
    >>> from deepinv_deq import DEQ, DEQSureGaussianLoss, ContractiveDenoiser
    >>> physics = dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.6,
    ...                                   noise_model=dinv.physics.GaussianNoise(0.05))
    >>> model = DEQ(denoiser=ContractiveDenoiser(depth=2, width=4), max_iter=100, tol=1e-6)
    >>> loss = DEQSureGaussianLoss(sigma=0.05, warm_start=True)
    >>> y = physics(torch.rand(2, 1, 8, 8))
    >>> x_net = model(y, physics)
    >>> loss(y=y, x_net=x_net, physics=physics, model=model).shape
    torch.Size([2])

    .. footbibliography::
    """

    def forward(self, y, x_net, physics, model, **kwargs):
        r"""Compute the SURE loss.

        :param torch.Tensor y: measurements.
        :param torch.Tensor x_net: reconstruction :math:`\hat{x} = f_\theta(y)`.
        :param deepinv.physics.Physics physics: forward operator.
        :param torch.nn.Module model: the reconstructor :math:`f_\theta`.
        :return: (:class:`torch.Tensor`) loss of shape ``(batch_size,)``.
        """
        if self.warm_start and is_deq(model):
            model = _WarmStarted(model, x_net.detach)
        return super().forward(y, x_net, physics, model, **kwargs)


class JacobianNormLoss(Loss):
    r"""Jacobian-norm regulariser of a DEQ at its fixed point (Hutchinson estimate).

    Penalises the Frobenius norm of the Jacobian of the fixed-point map at the reconstruction,
    which keeps the map contractive there and the forward and backward solves short
    :footcite:`bai2019deep`:

    .. math::

        \mathcal{L} = \frac{w}{n}\,\|J_F(x^\star)\|_F^2
        \approx \frac{w}{n K} \sum_{k=1}^{K} \|J_F(x^\star)^\top \varepsilon_k\|_2^2,
        \qquad \mathbb{E}[\varepsilon_k\varepsilon_k^\top] = I,

    with :math:`n` the number of entries of :math:`x^\star` (only if ``normalize``) and :math:`K`
    random probes. Since :math:`\rho(J_F) \le \|J_F\|_2 \le \|J_F\|_F`, it pushes the spectral
    radius away from 1; use it together with a contractive initialisation
    (:class:`deepinv_deq.ContractiveDenoiser`) and watch :math:`\rho(J_F)` with
    :class:`deepinv_deq.DEQMonitor`. The vector-Jacobian products go through one differentiable
    evaluation of the map :math:`F(x^\star; y, A)` and are themselves differentiable, so the
    regulariser trains :math:`\theta`. For the HQS map on a physics whose proximal step is
    deepinv's (once-differentiable) least-squares solver, the products use the symmetry of that
    affine step (:meth:`deepinv_deq.maps.HQSMap.differentiable_vjp`); a custom map that calls
    such a solver can provide its own ``differentiable_vjp(x, y, physics)`` (otherwise autograd
    raises "trying to differentiate twice a function that was marked with @once_differentiable").
    The model must be a :class:`deepinv_deq.DEQ`.

    :param int n_probes: number of probes :math:`K`. Default: ``1``.
    :param float weight: weight :math:`w`. Default: ``1.0``.
    :param str probe: ``"gaussian"`` or ``"rademacher"``. Default: ``"gaussian"``.
    :param bool normalize: divide by the number of entries :math:`n`. Default: ``True``.
    :param torch.Generator rng: optional random generator of the probes (on the data's device).
        Default: ``None``.

    |sep|

    :Examples:

    For a DEQ whose map is :math:`0.9\,(x - \eta A^\top(Ax - y))` on inpainting (a contractive
    denoiser at initialisation), the regulariser per sample, with one value per sample:

    >>> import torch, deepinv as dinv
    >>> from deepinv_deq import DEQ, JacobianNormLoss, ContractiveDenoiser
    >>> physics = dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.6)
    >>> model = DEQ(denoiser=ContractiveDenoiser(depth=2, width=4), max_iter=100, tol=1e-6)
    >>> y = physics(torch.rand(2, 1, 8, 8))
    >>> x_net = model(y, physics)
    >>> reg = JacobianNormLoss(n_probes=2, weight=0.1)
    >>> reg(x_net=x_net, y=y, physics=physics, model=model).shape
    torch.Size([2])

    .. footbibliography::
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
        x = x_net.detach()
        fmap = model.map
        if hasattr(fmap, "differentiable_vjp"):
            vjp = fmap.differentiable_vjp(x, y, physics)
        else:
            vjp = autograd_vjp(fmap, x, y, physics)
        total = torch.zeros(B, device=x.device, dtype=x.dtype)
        for _ in range(self.n_probes):
            g = vjp(self._draw(x))
            total = total + g.pow(2).reshape(B, -1).sum(1)
        total = total / self.n_probes
        if self.normalize:
            total = total / x[0].numel()
        return self.weight * total
