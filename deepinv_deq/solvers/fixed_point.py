r"""Damped fixed-point (Krasnosel'skii–Mann) iteration."""

from __future__ import annotations

from torch import Tensor

from .._validation import check_float
from .base import FixedPointSolver


class FixedPointIteration(FixedPointSolver):
    r"""Damped fixed-point iteration

    .. math::

        x_{k+1} = x_k + \beta \left(f(x_k) - x_k\right),

    with damping :math:`\beta \in (0, 1]` (:math:`\beta = 1` is plain Picard iteration). It converges
    linearly for a contractive :math:`f`; damping helps averaged (non-expansive) maps.

    :param int max_iter: maximum number of evaluations of :math:`f`. Default: ``50``.
    :param float tol: relative residual tolerance. Default: ``1e-4``.
    :param float atol: absolute residual tolerance, ``0`` to disable. Default: ``0``.
    :param float damping: :math:`\beta`. Default: ``1.0``.
    :param float divergence_ratio: see :class:`FixedPointSolver`. Default: ``1e4``.

    |sep|

    :Examples:

    The fixed point of :math:`x \mapsto x/2 + 1` is 2:

    >>> import torch
    >>> from deepinv_deq.solvers import FixedPointIteration
    >>> solver = FixedPointIteration(max_iter=100, tol=1e-6)
    >>> result = solver(lambda x: 0.5 * x + 1.0, torch.zeros(2, 3))
    >>> torch.allclose(result.fx, torch.full((2, 3), 2.0), atol=1e-5)
    True
    >>> result.stats.status_names()
    ['CONVERGED', 'CONVERGED']
    """

    name = "fixed_point"
    _options = FixedPointSolver._options + ("damping",)

    def __init__(
        self, max_iter=50, tol=1e-4, atol=0.0, damping=1.0, divergence_ratio=1e4, **unknown
    ):
        super().__init__(
            max_iter=max_iter, tol=tol, atol=atol, divergence_ratio=divergence_ratio, **unknown
        )
        self.damping = check_float(
            type(self).__name__, "damping", damping, 0.0, 1.0, strict_min=True
        )

    def _next(self, state: dict, k: int, x: Tensor, fx: Tensor) -> Tensor:
        if self.damping == 1.0:
            return fx
        return x + self.damping * (fx - x)
