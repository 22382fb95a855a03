r"""Krylov solver for the linear system of the implicit backward, :math:`(I - J^\top) u = v`."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from .._validation import check_float, check_int
from .base import SolverResult, SolverStats, SolverStatus, _per_sample_norm


class BiCGStab(torch.nn.Module):
    r"""BiCGStab for the non-symmetric linear system :math:`M u = b` (batched, per sample).

    The Jacobian of a fixed-point map is not symmetric in general, so conjugate gradient does not
    apply; this class wraps deepinv's :func:`deepinv.optim.linear.bicgstab` (two products with
    :math:`M` per iteration) and adds the statistics shared by all solvers of this package. It
    stops when :math:`\|b - M u\| \le \text{tol}\,\|b\|` for every sample.

    :param int max_iter: maximum number of BiCGStab iterations.
    :param float tol: relative residual tolerance.

    |sep|

    :Example:

    >>> import torch
    >>> from deepinv_deq.solvers import BiCGStab
    >>> M = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    >>> b = torch.ones(3, 2)
    >>> result = BiCGStab(max_iter=20, tol=1e-8).solve_linear(lambda u: u @ M.T, b)
    >>> torch.allclose(result.x @ M.T, b, atol=1e-5)
    True
    """

    name = "bicgstab"
    _options = ("max_iter", "tol")

    def __init__(self, max_iter: int = 50, tol: float = 1e-5):
        super().__init__()
        self.max_iter = check_int(type(self).__name__, "max_iter", max_iter, 1)
        self.tol = check_float(type(self).__name__, "tol", tol, 0.0)

    def solve_linear(
        self, matvec: Callable[[Tensor], Tensor], b: Tensor, x0: Tensor | None = None
    ) -> SolverResult:
        r"""Solve :math:`M u = b`.

        :param Callable matvec: :math:`u \mapsto M u`, applied to the whole batch.
        :param torch.Tensor b: right-hand side, shape ``(B, ...)``.
        :param torch.Tensor x0: initial guess (default zero).
        :return: (:class:`SolverResult`) with ``x`` the solution and ``fx`` equal to ``x``.
        """
        from deepinv.optim.linear import bicgstab  # deepinv's solver; imported here so that the
        # solvers package itself needs only torch

        count = [0]

        def counted(u):
            count[0] += 1
            return matvec(u)

        u = bicgstab(counted, b, init=x0, max_iter=self.max_iter, tol=self.tol, parallel_dim=0)
        res = _per_sample_norm(b - counted(u))
        bnorm = _per_sample_norm(b)
        rel = res / (bnorm + torch.finfo(res.dtype).tiny)
        finite = torch.isfinite(rel) & torch.isfinite(u.reshape(u.shape[0], -1)).all(dim=1)
        status = torch.where(
            finite,
            torch.where(rel <= self.tol, int(SolverStatus.CONVERGED), int(SolverStatus.MAX_ITER)),
            int(SolverStatus.NONFINITE),
        ).to(torch.int64)
        stats = SolverStats(
            nfe=count[0],
            residual=rel,
            abs_residual=res / max(b[0].numel(), 1) ** 0.5,
            trace=rel[None],
            status=status,
            solver=self.name,
        )
        return SolverResult(x=u, fx=u, stats=stats)

    def extra_repr(self) -> str:
        return f"max_iter={self.max_iter}, tol={self.tol}"
