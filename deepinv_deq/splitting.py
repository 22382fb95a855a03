r"""Splitting iterations with a multi-variable state: ADMM, Douglas–Rachford and Chambolle–Pock.

Each map is one iteration of the algorithm as deepinv writes it (``deepinv.optim.ADMM``, ``DRS``,
``PDCP``, with ``g_first=False``), the prior's proximal operator being the learned denoiser
:math:`D_\sigma` and :math:`f` the data fidelity (default :class:`deepinv.optim.L2`). Its state is
what the algorithm iterates; the reconstruction is the primal variable :math:`x`:

- :class:`ADMMMap`, state :math:`(x, z)`:
  :math:`u = \operatorname{prox}_{\gamma f}(x - z)`, :math:`x^+ = D_\sigma(u + z)`,
  :math:`z^+ = z + \beta (u - x^+)`;
- :class:`DRSMap`, state :math:`(x, z)`:
  :math:`u = \operatorname{prox}_{\gamma f}(z)`, :math:`x^+ = D_\sigma(2u - z)`,
  :math:`z^+ = z + \beta (x^+ - u)`;
- :class:`PDCPMap` (Chambolle–Pock with :math:`K = I`), state :math:`(x, z, u)`:
  :math:`u^+ = \operatorname{prox}_{\sigma_d f^*}(u + \sigma_d z)`,
  :math:`x^+ = D_\sigma(x - \tau u^+)`, :math:`z^+ = x^+ + \beta (x^+ - x)`.

A DEQ iterates them on the packed state (:class:`deepinv_deq.state.StatePacker`), so every solver
and backward strategy applies, and implicit differentiation goes through the whole state.
"""

from __future__ import annotations

from torch import Tensor
import torch

from ._validation import check_float
from .maps import FixedPointMap

__all__ = ["ADMMMap", "DRSMap", "PDCPMap", "SplittingMap"]


class SplittingMap(FixedPointMap):
    r"""Base class of the maps whose state has several variables.

    Subclasses implement :meth:`step` (one iteration on the state tuple) and :meth:`init_state`
    (the state from an initial primal iterate); the reconstruction is ``state[0]``.

    :param float beta: relaxation :math:`\beta \in (0, 2)`. Default: ``1.0``.
    """

    #: names of the variables of the state, the primal one first
    variables: tuple[str, ...] = ("x", "z")

    def __init__(
        self,
        denoiser,
        data_fidelity=None,
        stepsize=1.0,
        sigma_denoiser=0.05,
        lambda_reg=None,
        trainable_params=(),
        beta: float = 1.0,
    ):
        super().__init__(
            denoiser,
            data_fidelity=data_fidelity,
            stepsize=stepsize,
            sigma_denoiser=sigma_denoiser,
            lambda_reg=lambda_reg,
            trainable_params=trainable_params,
        )
        self.beta = check_float(type(self).__name__, "beta", beta, 0.0, 2.0, strict_min=True)

    def init_state(self, x0: Tensor, y: Tensor, physics) -> tuple:
        r"""The initial state from an initial primal iterate :math:`x_0` (the other variables at
        :math:`x_0` or zero, as documented by each map)."""
        return (x0, x0.clone())

    def step(self, state: tuple, y: Tensor, physics) -> tuple:
        r"""One iteration on the state tuple."""
        raise NotImplementedError

    def forward(self, state, y, physics):
        if isinstance(state, Tensor):
            raise ValueError(
                f"{type(self).__name__}: the state is a tuple {self.variables}, got one tensor "
                "(the Jacobian tools of deepinv_deq.stabilisers and diagnostics work on "
                "single-variable maps only)."
            )
        return self.step(tuple(state), y, physics)

    def _prox_f(self, x: Tensor, y: Tensor, physics) -> Tensor:
        return self.data_fidelity.prox(x, y, physics, gamma=self.stepsize.to(x.dtype))

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class ADMMMap(SplittingMap):
    r"""One ADMM iteration, state :math:`(x, z)`, started at :math:`(x_0, 0)`.

    .. math::

        u = \operatorname{prox}_{\gamma f}(x - z), \qquad x^+ = D_\sigma(u + z), \qquad
        z^+ = z + \beta (u - x^+).

    At a fixed point :math:`u = x`: :math:`x = D_\sigma(\operatorname{prox}_{\gamma f}(x - z) +
    z)`, the ADMM equilibrium of :math:`f` and the prior whose proximal operator is
    :math:`D_\sigma`.

    :param torch.nn.Module denoiser: :math:`D_\sigma`, called ``denoiser(x, sigma)``.
    :param deepinv.optim.DataFidelity data_fidelity: :math:`f`. Default: :class:`deepinv.optim.L2`.
    :param float stepsize: :math:`\gamma`. Default: ``1.0``.
    :param float sigma_denoiser: :math:`\sigma`. Default: ``0.05``.
    :param tuple trainable_params: among ``"stepsize"``, ``"sigma_denoiser"``. Default: ``()``.
    :param float beta: relaxation :math:`\beta`. Default: ``1.0``.

    |sep|

    :Examples:

    >>> import torch, deepinv as dinv
    >>> from deepinv_deq import DEQ, ContractiveDenoiser
    >>> physics = dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.6)
    >>> y = physics(torch.rand(2, 1, 8, 8))
    >>> model = DEQ(denoiser=ContractiveDenoiser(depth=2, width=4), iteration="ADMM", tol=1e-5)
    >>> model(y, physics).shape, model.forward_stats.all_converged
    (torch.Size([2, 1, 8, 8]), True)
    """

    def init_state(self, x0, y, physics):
        return (x0, torch.zeros_like(x0))

    def step(self, state, y, physics):
        x, z = state
        u = self._prox_f(x - z, y, physics)
        x_new = self._denoise(u + z)
        return (x_new, z + self.beta * (u - x_new))


class DRSMap(SplittingMap):
    r"""One Douglas–Rachford iteration, state :math:`(x, z)`, started at :math:`(x_0, x_0)`.

    .. math::

        u = \operatorname{prox}_{\gamma f}(z), \qquad x^+ = D_\sigma(2u - z), \qquad
        z^+ = z + \beta (x^+ - u).

    The iteration on :math:`z` alone is the algorithm; :math:`x` is carried in the state so that
    the reconstruction is part of the fixed point (it does not feed back: :math:`x^+` depends on
    :math:`z` only).

    :param torch.nn.Module denoiser: :math:`D_\sigma`, called ``denoiser(x, sigma)``.
    :param deepinv.optim.DataFidelity data_fidelity: :math:`f`. Default: :class:`deepinv.optim.L2`.
    :param float stepsize: :math:`\gamma`. Default: ``1.0``.
    :param float sigma_denoiser: :math:`\sigma`. Default: ``0.05``.
    :param tuple trainable_params: among ``"stepsize"``, ``"sigma_denoiser"``. Default: ``()``.
    :param float beta: relaxation :math:`\beta`. Default: ``1.0``.

    |sep|

    :Examples:

    >>> import torch, deepinv as dinv
    >>> from deepinv_deq import DEQ, ContractiveDenoiser
    >>> physics = dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.6)
    >>> y = physics(torch.rand(2, 1, 8, 8))
    >>> model = DEQ(denoiser=ContractiveDenoiser(depth=2, width=4), iteration="DRS", tol=1e-5)
    >>> model(y, physics).shape, model.forward_stats.all_converged
    (torch.Size([2, 1, 8, 8]), True)
    """

    def step(self, state, y, physics):
        _, z = state
        u = self._prox_f(z, y, physics)
        x_new = self._denoise(2 * u - z)
        return (x_new, z + self.beta * (x_new - u))


class PDCPMap(SplittingMap):
    r"""One Chambolle–Pock (primal–dual) iteration with :math:`K = I`, state :math:`(x, z, u)`,
    started at :math:`(x_0, x_0, 0)`.

    .. math::

        u^+ = \operatorname{prox}_{\sigma_d f^*}(u + \sigma_d z), \qquad
        x^+ = D_\sigma(x - \tau u^+), \qquad z^+ = x^+ + \beta (x^+ - x),

    with :math:`\operatorname{prox}_{\sigma_d f^*}` from the data fidelity's ``prox_conjugate``
    (Moreau's identity) and :math:`\tau \sigma_d \le 1`.

    :param torch.nn.Module denoiser: :math:`D_\sigma`, called ``denoiser(x, sigma)``.
    :param deepinv.optim.DataFidelity data_fidelity: :math:`f`. Default: :class:`deepinv.optim.L2`.
    :param float stepsize: :math:`\tau`, the primal step. Default: ``1.0``.
    :param float stepsize_dual: :math:`\sigma_d`, the dual step. Default: ``1.0``.
    :param float sigma_denoiser: :math:`\sigma`. Default: ``0.05``.
    :param tuple trainable_params: among ``"stepsize"``, ``"sigma_denoiser"``. Default: ``()``.
    :param float beta: relaxation :math:`\beta`. Default: ``1.0``.

    |sep|

    :Examples:

    >>> import torch, deepinv as dinv
    >>> from deepinv_deq import DEQ, ContractiveDenoiser
    >>> physics = dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.6)
    >>> y = physics(torch.rand(2, 1, 8, 8))
    >>> model = DEQ(denoiser=ContractiveDenoiser(depth=2, width=4), iteration="PDCP", tol=1e-5,
    ...             max_iter=200)
    >>> model(y, physics).shape, model.forward_stats.all_converged
    (torch.Size([2, 1, 8, 8]), True)
    """

    variables = ("x", "z", "u")

    def __init__(
        self,
        denoiser,
        data_fidelity=None,
        stepsize=1.0,
        sigma_denoiser=0.05,
        lambda_reg=None,
        trainable_params=(),
        beta: float = 1.0,
        stepsize_dual: float = 1.0,
    ):
        super().__init__(
            denoiser, data_fidelity, stepsize, sigma_denoiser, lambda_reg, trainable_params, beta
        )
        self.stepsize_dual = check_float(
            "PDCPMap", "stepsize_dual", stepsize_dual, 0.0, strict_min=True
        )

    def init_state(self, x0, y, physics):
        return (x0, x0.clone(), torch.zeros_like(x0))

    def step(self, state, y, physics):
        x, z, u = state
        sd = self.stepsize_dual
        u_new = self.data_fidelity.prox_conjugate(u + sd * z, y, physics, gamma=sd)
        x_new = self._denoise(x - self.stepsize.to(x.dtype) * u_new)
        return (x_new, x_new + self.beta * (x_new - x), u_new)


#: the splitting iterations by name, as accepted by ``DEQ(iteration=...)``
SPLITTINGS = {"ADMM": ADMMMap, "DRS": DRSMap, "PDCP": PDCPMap}
