r"""Fixed-point maps: one iteration of an optimisation algorithm whose prior step is a denoiser.

A map is a :class:`torch.nn.Module` called as ``F(x, y, physics)``; a DEQ reconstruction is its
fixed point :math:`x^\star = F(x^\star; y, A)`. With :math:`f(x) = d(Ax, y)` the data fidelity
(default :class:`deepinv.optim.L2`, :math:`\tfrac12\|Ax-y\|^2`) and :math:`D_\sigma` the denoiser:

- :class:`PGDMap`: :math:`F(x) = D_\sigma\big(x - \eta \nabla f(x)\big)`;
- :class:`HQSMap`: :math:`F(x) = D_\sigma\big(\operatorname{prox}_{\eta f}(x)\big)`;
- :class:`REDMap`: :math:`F(x) = x - \eta\big(\nabla f(x) + \lambda (x - D_\sigma(x))\big)`;
- :class:`GDMap`: :math:`F(x) = x - \eta\big(\nabla f(x) + \lambda \nabla g(x)\big)` for a
  differentiable deepinv prior :math:`g`;
- :class:`CallableMap`: any user function ``F(x, y, physics)``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ._validation import check_choice, check_float


class FixedPointMap(torch.nn.Module):
    r"""Base class of the fixed-point maps :math:`F(x; y, A)`.

    Holds the scalar parameters (step size :math:`\eta`, denoiser noise level :math:`\sigma`,
    regularisation weight :math:`\lambda`), each a trainable :class:`torch.nn.Parameter` when its
    name is in ``trainable_params`` and a buffer otherwise.

    :param torch.nn.Module denoiser: the denoiser :math:`D_\sigma`, called as ``denoiser(x, sigma)``.
    :param deepinv.optim.DataFidelity data_fidelity: data fidelity :math:`f`. Default: ``None``,
        meaning :class:`deepinv.optim.L2`.
    :param float stepsize: :math:`\eta`. Default: ``1.0``.
    :param float sigma_denoiser: :math:`\sigma`. Default: ``0.05``.
    :param float lambda_reg: :math:`\lambda` (used by RED only). Default: ``None``, meaning ``1.0``
        for RED.
    :param tuple trainable_params: names among ``"stepsize"``, ``"sigma_denoiser"``,
        ``"lambda_reg"`` to learn. Default: ``()``.
    """

    uses = ("stepsize", "sigma_denoiser")

    def __init__(
        self,
        denoiser: torch.nn.Module,
        data_fidelity=None,
        stepsize: float = 1.0,
        sigma_denoiser: float = 0.05,
        lambda_reg: float | None = None,
        trainable_params=(),
    ):
        super().__init__()
        owner = type(self).__name__
        if denoiser is None or not callable(denoiser):
            raise ValueError(f"{owner}: 'denoiser' must be a callable module, got {denoiser!r}.")
        self.denoiser = denoiser
        if data_fidelity is None:
            from deepinv.optim import L2

            data_fidelity = L2()
        self.data_fidelity = data_fidelity
        if lambda_reg is not None and "lambda_reg" not in self.uses:
            raise ValueError(f"{owner}: 'lambda_reg' is only used by the RED iteration.")
        values = {
            "stepsize": stepsize,
            "sigma_denoiser": sigma_denoiser,
            "lambda_reg": 1.0 if lambda_reg is None else lambda_reg,
        }
        trainable = tuple(trainable_params)
        for name in trainable:
            check_choice(owner, "trainable_params", name, self.uses)
        for name in self.uses:
            v = check_float(owner, name, values[name], 0.0, strict_min=True)
            t = torch.tensor(v, dtype=torch.get_default_dtype())
            if name in trainable:
                setattr(self, name, torch.nn.Parameter(t))
            else:
                self.register_buffer(name, t)

    def forward(self, x: Tensor, y: Tensor, physics) -> Tensor:
        r"""Apply one iteration :math:`F(x; y, A)`.

        :param torch.Tensor x: current iterate.
        :param torch.Tensor y: measurements.
        :param deepinv.physics.Physics physics: forward operator.
        """
        raise NotImplementedError

    def _denoise(self, x: Tensor) -> Tensor:
        return self.denoiser(x, self.sigma_denoiser.to(x.dtype))

    def differentiable_vjp(self, x: Tensor, y: Tensor, physics):
        r"""The map's transposed Jacobian at ``x`` as a function :math:`v \mapsto J_F(x)^\top v`,
        itself differentiable with respect to the map's parameters (for regularisers such as
        :class:`deepinv_deq.JacobianNormLoss`).

        :param torch.Tensor x: the point (treated as a constant).
        :param torch.Tensor y: measurements.
        :param deepinv.physics.Physics physics: forward operator.
        :return: (Callable) ``vjp(v)``, computed with ``create_graph=True``.
        """
        return autograd_vjp(self, x, y, physics)

    def _fidelity_grad(self, x: Tensor, y: Tensor, physics) -> Tensor:
        r"""Gradient :math:`\nabla f(x)` of the data fidelity, with one :math:`A` and one :math:`A^\top`.

        For deepinv's :class:`deepinv.optim.L2` on a linear physics it is computed as
        :math:`\tfrac{1}{\sigma^2} A^\top(Ax - y)`, one forward and one adjoint operator per call
        (``L2.grad`` computes :math:`A^\top A x - A^\top y`, which recomputes :math:`A^\top y` at
        every iteration). The value is the same and autograd differentiates it exactly with respect
        to :math:`x`, :math:`y` and the physics' parameters. Other fidelities, subclasses of ``L2``
        that redefine ``grad`` and non-linear physics use ``data_fidelity.grad``.
        """
        if _is_linear_l2(self.data_fidelity, physics):
            return self.data_fidelity.norm * physics.A_adjoint(physics.A(x) - y)
        return self.data_fidelity.grad(x, y, physics)


def autograd_vjp(fmap, x: Tensor, y: Tensor, physics):
    r"""The transposed Jacobian :math:`v \mapsto J_F(x)^\top v` of any map ``fmap(x, y, physics)``
    by reverse-mode autograd through one evaluation, with ``create_graph=True`` (so the result is
    differentiable with respect to the map's parameters).

    :param Callable fmap: the map.
    :param torch.Tensor x: the point (treated as a constant).
    :param torch.Tensor y: measurements.
    :param deepinv.physics.Physics physics: forward operator.
    :return: (Callable) ``vjp(v)``.

    :Examples:

    The Jacobian of :math:`F(x) = 3x + y` is :math:`3I`:

    >>> import torch
    >>> from deepinv_deq.maps import autograd_vjp
    >>> vjp = autograd_vjp(lambda x, y, physics: 3 * x + y, torch.zeros(1, 2), torch.ones(1, 2), None)
    >>> vjp(torch.ones(1, 2))
    tensor([[3., 3.]])
    """
    x = x.detach().requires_grad_()
    with torch.enable_grad():
        z = fmap(x, y, physics)

    def vjp(v: Tensor) -> Tensor:
        with torch.enable_grad():
            (g,) = torch.autograd.grad(z, x, v, create_graph=True)
        return g

    return vjp


def _is_linear_l2(data_fidelity, physics, method: str = "grad") -> bool:
    # deepinv's own L2 ``method`` (not a subclass's override) on a linear physics
    from deepinv.optim import L2
    from deepinv.physics import LinearPhysics

    return (
        isinstance(data_fidelity, L2)
        and getattr(type(data_fidelity), method) is getattr(L2, method)
        and isinstance(physics, LinearPhysics)
    )


class PGDMap(FixedPointMap):
    r"""Proximal gradient step with a denoiser as proximal operator.

    .. math::

        F(x) = D_\sigma\big(x - \eta \nabla f(x)\big), \qquad \nabla f(x) = A^\top(Ax - y)
        \text{ for the default } \ell_2 \text{ fidelity.}

    :param torch.nn.Module denoiser: :math:`D_\sigma`, called as ``denoiser(x, sigma)``.
    :param deepinv.optim.DataFidelity data_fidelity: the data fidelity :math:`f`. Default: ``None``,
        meaning :class:`deepinv.optim.L2`.
    :param float stepsize: :math:`\eta`, typically below :math:`1/\|A\|^2`. Default: ``1.0``.
    :param float sigma_denoiser: :math:`\sigma`. Default: ``0.05``.
    :param tuple trainable_params: parameters to learn, among ``"stepsize"``, ``"sigma_denoiser"``.
        Default: ``()``.

    |sep|

    :Examples:

    One PGD step with a median filter as denoiser on inpainting:

    >>> import torch, deepinv as dinv
    >>> from deepinv_deq.maps import PGDMap
    >>> physics = dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.5)
    >>> F = PGDMap(dinv.models.MedianFilter(), stepsize=1.0, sigma_denoiser=0.1)
    >>> x = torch.rand(2, 1, 8, 8)
    >>> F(x, physics(x), physics).shape
    torch.Size([2, 1, 8, 8])
    """

    def forward(self, x, y, physics):
        grad = self._fidelity_grad(x, y, physics)
        return self._denoise(x - self.stepsize.to(x.dtype) * grad)


class HQSMap(FixedPointMap):
    r"""Half-quadratic splitting step: data-fidelity proximal step, then the denoiser.

    .. math::

        F(x) = D_\sigma\big(\operatorname{prox}_{\eta f}(x)\big),

    where the proximal operator of the data fidelity is computed by deepinv (in closed form for
    many physics, by conjugate gradient otherwise).

    :param torch.nn.Module denoiser: :math:`D_\sigma`.
    :param deepinv.optim.DataFidelity data_fidelity: the data fidelity :math:`f`. Default: ``None``,
        meaning :class:`deepinv.optim.L2`.
    :param float stepsize: :math:`\eta`. Default: ``1.0``.
    :param float sigma_denoiser: :math:`\sigma`. Default: ``0.05``.
    :param tuple trainable_params: parameters to learn, among ``"stepsize"``, ``"sigma_denoiser"``.
        Default: ``()``.

    |sep|

    :Examples:

    One HQS step (closed-form proximal step for inpainting):

    >>> import torch, deepinv as dinv
    >>> from deepinv_deq.maps import HQSMap
    >>> physics = dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.5)
    >>> F = HQSMap(dinv.models.MedianFilter(), stepsize=1.0, sigma_denoiser=0.1)
    >>> x = torch.rand(1, 1, 8, 8)
    >>> F(x, physics(x), physics).shape
    torch.Size([1, 1, 8, 8])
    """

    def forward(self, x, y, physics):
        z = self.data_fidelity.prox(x, y, physics, gamma=self.stepsize.to(x.dtype))
        return self._denoise(z)

    def differentiable_vjp(self, x: Tensor, y: Tensor, physics):
        r"""The transposed Jacobian :math:`v \mapsto J_F(x)^\top v`, differentiable with respect to
        the parameters, also when the proximal step is deepinv's least-squares solver.

        deepinv computes :math:`\operatorname{prox}_{\eta f}` by conjugate gradient for many
        physics (Blur, Tomography, MultiCoilMRI...) inside a ``once_differentiable`` function, so
        autograd cannot differentiate a vector-Jacobian product through it. For the :math:`\ell_2`
        fidelity on a linear physics the prox is affine,
        :math:`\operatorname{prox}_{\eta f}(x) = (I + \tfrac{\eta}{\sigma^2} A^\top A)^{-1}
        (x + \tfrac{\eta}{\sigma^2} A^\top y)`, with a symmetric Jacobian, so

        .. math::

            J_F(x)^\top v = \operatorname{prox}_{\eta f}^{y=0}\big(J_D(z)^\top v\big),
            \qquad z = \operatorname{prox}_{\eta f}(x),

        where the outer prox (at :math:`y = 0`, i.e. the linear part) is only differentiated once.
        Other fidelities and physics use plain autograd (:func:`autograd_vjp`).

        :param torch.Tensor x: the point (treated as a constant).
        :param torch.Tensor y: measurements.
        :param deepinv.physics.Physics physics: forward operator.
        :return: (Callable) ``vjp(v)``.
        """
        if not _is_linear_l2(self.data_fidelity, physics, "prox"):
            return autograd_vjp(self, x, y, physics)
        x = x.detach()
        with torch.enable_grad():
            gamma = self.stepsize.to(x.dtype)
            z = self.data_fidelity.prox(x, y, physics, gamma=gamma)  # carries eta's / A's gradient
            if not z.requires_grad:
                z = z.requires_grad_()
            d = self._denoise(z)
        zero = torch.zeros_like(y) if isinstance(y, Tensor) else y * 0

        def vjp(v: Tensor) -> Tensor:
            with torch.enable_grad():
                (w,) = torch.autograd.grad(d, z, v, create_graph=True)
                return self.data_fidelity.prox(w, zero, physics, gamma=gamma)

        return vjp


class REDMap(FixedPointMap):
    r"""Regularisation-by-denoising gradient step.

    .. math::

        F(x) = x - \eta\big(\nabla f(x) + \lambda (x - D_\sigma(x))\big).

    :param torch.nn.Module denoiser: :math:`D_\sigma`.
    :param deepinv.optim.DataFidelity data_fidelity: the data fidelity :math:`f`. Default: ``None``,
        meaning :class:`deepinv.optim.L2`.
    :param float stepsize: :math:`\eta`. Default: ``1.0``.
    :param float sigma_denoiser: :math:`\sigma`. Default: ``0.05``.
    :param float lambda_reg: :math:`\lambda`. Default: ``None``, meaning ``1.0``.
    :param tuple trainable_params: parameters to learn, among ``"stepsize"``, ``"sigma_denoiser"``,
        ``"lambda_reg"``. Default: ``()``.

    |sep|

    :Examples:

    One RED gradient step:

    >>> import torch, deepinv as dinv
    >>> from deepinv_deq.maps import REDMap
    >>> physics = dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.5)
    >>> F = REDMap(dinv.models.MedianFilter(), stepsize=0.5, lambda_reg=0.5)
    >>> x = torch.rand(1, 1, 8, 8)
    >>> F(x, physics(x), physics).shape
    torch.Size([1, 1, 8, 8])
    """

    uses = ("stepsize", "sigma_denoiser", "lambda_reg")

    def forward(self, x, y, physics):
        grad = self._fidelity_grad(x, y, physics)
        prior = self.lambda_reg.to(x.dtype) * (x - self._denoise(x))
        return x - self.stepsize.to(x.dtype) * (grad + prior)


class GDMap(FixedPointMap):
    r"""Gradient descent on the data fidelity plus any differentiable deepinv prior.

    .. math::

        F(x) = x - \eta\big(\nabla f(x) + \lambda \nabla g(x)\big),

    with :math:`g` a :class:`deepinv.optim.Prior` that has a ``grad`` (e.g.
    :class:`deepinv.optim.prior.RED`, :class:`deepinv.optim.prior.Tikhonov`). The map is a
    contraction when :math:`f + \lambda g` is :math:`\mu`-strongly convex and :math:`L`-smooth and
    :math:`\eta < 2/L`.

    :param deepinv.optim.Prior prior: the prior :math:`g`, called as ``prior.grad(x)``.
    :param deepinv.optim.DataFidelity data_fidelity: :math:`f`. Default: :class:`deepinv.optim.L2`.
    :param float stepsize: :math:`\eta`. Default: ``1.0``.
    :param float lambda_reg: :math:`\lambda`. Default: ``None``, meaning ``1.0``.
    :param float sigma_denoiser: noise level passed to ``prior.grad(x, sigma)`` for a prior built
        on a denoiser (e.g. RED); ``None`` calls ``prior.grad(x)``. Default: ``None``.
    :param tuple trainable_params: among ``"stepsize"``, ``"lambda_reg"``. Default: ``()``.

    |sep|

    :Examples:

    >>> import torch, deepinv as dinv
    >>> from deepinv_deq.maps import GDMap
    >>> physics = dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.5)
    >>> F = GDMap(dinv.optim.prior.Tikhonov(), stepsize=0.5, lambda_reg=0.5)
    >>> x = torch.rand(1, 1, 8, 8)
    >>> F(x, physics(x), physics).shape
    torch.Size([1, 1, 8, 8])
    """

    uses = ("stepsize", "lambda_reg")

    def __init__(self, prior, data_fidelity=None, sigma_denoiser=None, **kwargs):
        if not callable(getattr(prior, "grad", None)):
            raise ValueError(f"GDMap: 'prior' must be a deepinv Prior with a grad, got {prior!r}.")
        super().__init__(prior, data_fidelity, **kwargs)
        self.prior = self.denoiser
        # the noise level of a denoiser-based prior (RED), passed to prior.grad when given
        self.sigma = None
        if sigma_denoiser is not None:
            self.sigma = check_float(
                "GDMap", "sigma_denoiser", sigma_denoiser, 0.0, strict_min=True
            )

    def forward(self, x, y, physics):
        grad = self._fidelity_grad(x, y, physics)
        g = self.prior.grad(x) if self.sigma is None else self.prior.grad(x, self.sigma)
        return x - self.stepsize.to(x.dtype) * (grad + self.lambda_reg.to(x.dtype) * g)


class CallableMap(torch.nn.Module):
    r"""Wrap a user function ``fn(x, y, physics) -> x`` as a fixed-point map.

    Parameters of ``fn`` are trained if ``fn`` is a :class:`torch.nn.Module` (it is registered as a
    submodule); a plain function may close over tensors that require grad, and implicit
    differentiation reaches them too.

    :param Callable fn: the map.

    |sep|

    :Examples:

    A user-defined affine map:

    >>> import torch
    >>> from deepinv_deq.maps import CallableMap
    >>> F = CallableMap(lambda x, y, physics: 0.5 * x + y)
    >>> F(torch.zeros(1, 2), torch.ones(1, 2), None)
    tensor([[1., 1.]])
    """

    def __init__(self, fn: Callable[[Tensor, Tensor, object], Tensor]):
        super().__init__()
        if not callable(fn):
            raise ValueError(f"CallableMap: 'fn' must be callable, got {fn!r}.")
        self.fn = fn

    def forward(self, x, y, physics):
        return self.fn(x, y, physics)

    def differentiable_vjp(self, x: Tensor, y: Tensor, physics):
        r"""The transposed Jacobian :math:`v \mapsto J_F(x)^\top v` by autograd
        (:func:`autograd_vjp`).

        :param torch.Tensor x: the point (treated as a constant).
        :param torch.Tensor y: measurements.
        :param deepinv.physics.Physics physics: forward operator.
        :return: (Callable) ``vjp(v)``.
        """
        return autograd_vjp(self, x, y, physics)


#: iteration names accepted by :func:`build_map` and :class:`deepinv_deq.DEQ`
ITERATIONS = {"PGD": PGDMap, "HQS": HQSMap, "RED": REDMap, "GD": GDMap}


def build_map(iteration, **kwargs) -> torch.nn.Module:
    r"""Build a fixed-point map from an iteration name or a callable.

    :param str, Callable iteration: ``"PGD"``, ``"HQS"``, ``"RED"``, ``"ADMM"``, ``"DRS"``,
        ``"PDCP"``, a :class:`FixedPointMap` instance, or a callable ``F(x, y, physics)``.
    :param kwargs: constructor arguments of the map (``denoiser``, ``stepsize``, ...).
    """
    if isinstance(iteration, str):
        from .splitting import SPLITTINGS

        iterations = {**ITERATIONS, **SPLITTINGS}
        name = iteration.upper()
        if name not in iterations:
            raise ValueError(
                f"DEQ: 'iteration' must be one of {list(iterations)} or a callable, got {iteration!r}."
            )
        return iterations[name](**{k: v for k, v in kwargs.items() if v is not None})
    if callable(iteration):
        given = sorted(k for k, v in kwargs.items() if v is not None and v != ())
        if given:
            raise ValueError(
                f"DEQ: option(s) {given} configure the built-in iterations and cannot be combined "
                "with a callable 'iteration'."
            )
        if isinstance(iteration, (FixedPointMap, CallableMap)):
            return iteration
        return CallableMap(iteration)
    raise ValueError(f"DEQ: 'iteration' must be a string or a callable, got {iteration!r}.")
