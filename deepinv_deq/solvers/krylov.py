r"""Krylov solver for the linear system of the implicit backward, :math:`(I - J^\top) u = v`.

The Jacobian of a fixed-point map is not symmetric, so conjugate gradient and MINRES do not apply.
deepinv's :func:`deepinv.optim.linear.bicgstab` would fit the system, but its breakdown guards
compare inner products with machine epsilon in absolute terms, so it stalls near a relative residual
of :math:`10^{-4}` in float32 (:math:`10^{-8}` in float64) on the small right-hand sides of
training gradients. :class:`GMRES` is written here with relative breakdown tests instead.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .._validation import check_float, check_int, reject_unknown
from .base import SolverResult, SolverStats, SolverStatus, _per_sample_norm


def _linear_result(solver, u: Tensor, res: Tensor, bnorm: Tensor, nmv: int, trace) -> SolverResult:
    # statistics of a linear solve M u = b from the final true residual norms ||b - M u||
    rel = res / torch.where(bnorm > 0, bnorm, torch.ones_like(bnorm))
    finite = torch.isfinite(rel) & torch.isfinite(u.reshape(u.shape[0], -1)).all(dim=1)
    status = torch.where(
        finite,
        torch.where(rel <= solver.tol, int(SolverStatus.CONVERGED), int(SolverStatus.MAX_ITER)),
        int(SolverStatus.NONFINITE),
    ).to(torch.int64)
    stats = SolverStats(
        nfe=nmv,
        residual=rel,
        abs_residual=res / max(u[0].numel(), 1) ** 0.5,
        trace=torch.stack(trace) if trace else rel[None],
        status=status,
        solver=solver.name,
    )
    return SolverResult(x=u, fx=u, stats=stats)


class GMRES(torch.nn.Module):
    r"""Restarted GMRES for the non-symmetric linear system :math:`M u = b` (batched, per sample).

    At each restart cycle an orthonormal Krylov basis :math:`V_j` of
    :math:`\{r, Mr, \dots, M^{j-1} r\}` is built by modified Gram–Schmidt, and the small
    least-squares problem :math:`\min_z \|\beta e_1 - \bar H_j z\|` gives the iterate minimising
    the residual over that space, so the residual never increases. All breakdown tests are relative
    to each sample's :math:`\|b\|`, so the solver reaches any tolerance down to rounding, in float32
    as in float64.
    One product with :math:`M` per iteration.

    :param int max_iter: maximum number of products with :math:`M` (the true residual checks
        included). The solver synchronises with the host once per product (its convergence test).
    :param float tol: relative residual tolerance :math:`\|b - Mu\| \le \text{tol}\,\|b\|`.
    :param int restart: Krylov dimension before a restart.

    |sep|

    :Example:

    >>> import torch
    >>> from deepinv_deq.solvers import GMRES
    >>> M = torch.tensor([[2.0, 1.0], [0.0, 3.0]], dtype=torch.float64)
    >>> b = torch.ones(3, 2, dtype=torch.float64)
    >>> result = GMRES(max_iter=20, tol=1e-12).solve_linear(lambda u: u @ M.T, b)
    >>> torch.allclose(result.x @ M.T, b, atol=1e-10), result.stats.status_names()
    (True, ['CONVERGED', 'CONVERGED', 'CONVERGED'])
    """

    name = "gmres"
    _options = ("max_iter", "tol", "restart")

    def __init__(self, max_iter: int = 50, tol: float = 1e-5, restart: int = 20, **unknown):
        super().__init__()
        owner = type(self).__name__
        reject_unknown(owner, unknown, self._options)
        self.max_iter = check_int(owner, "max_iter", max_iter, 1)
        self.tol = check_float(owner, "tol", tol, 0.0)
        self.restart = check_int(owner, "restart", restart, 1)

    @torch.no_grad()
    def solve_linear(
        self, matvec: Callable[[Tensor], Tensor], b: Tensor, x0: Tensor | None = None
    ) -> SolverResult:
        r"""Solve :math:`M u = b`.

        :param Callable matvec: :math:`u \mapsto M u`, applied to the whole batch.
        :param torch.Tensor b: right-hand side, shape ``(B, ...)``.
        :param torch.Tensor x0: initial guess (default zero).
        :return: (:class:`SolverResult`) with ``x`` the solution and ``fx`` equal to ``x``.
        """
        shape, B = b.shape, b.shape[0]
        cdtype = torch.promote_types(b.dtype, torch.float32)
        mv = lambda v: matvec(v.reshape(shape).to(b.dtype)).reshape(B, -1).to(cdtype)
        bf = b.reshape(B, -1).to(cdtype)
        bnorm = torch.linalg.vector_norm(bf, dim=1)
        target = self.tol * bnorm
        tiny = torch.finfo(cdtype).eps * bnorm  # relative breakdown threshold
        x = torch.zeros_like(bf) if x0 is None else x0.reshape(B, -1).to(cdtype)
        nmv, trace = 0, []
        r = bf - mv(x) if x0 is not None else bf.clone()
        nmv += x0 is not None
        res = torch.linalg.vector_norm(r, dim=1)
        # max_iter bounds every product with M, the initial and final true residuals included
        while nmv + 1 < self.max_iter and not bool((res <= target).all()):
            beta = res
            V = [r / torch.where(beta > tiny, beta, torch.ones_like(beta))[:, None]]
            H = torch.zeros(B, self.restart + 1, self.restart, dtype=cdtype, device=b.device)
            e1 = torch.zeros(B, self.restart + 1, 1, dtype=cdtype, device=b.device)
            e1[:, 0, 0] = beta
            z = None
            for j in range(self.restart):
                w = mv(V[j])
                nmv += 1
                for i in range(j + 1):
                    h = (w * V[i]).sum(dim=1)
                    H[:, i, j] = h
                    w = w - h[:, None] * V[i]
                hn = torch.linalg.vector_norm(w, dim=1)
                H[:, j + 1, j] = hn
                V.append(w / torch.where(hn > tiny, hn, torch.ones_like(hn))[:, None] * (hn > tiny)[:, None])
                Hj = H[:, : j + 2, : j + 1]
                z = torch.linalg.lstsq(Hj, e1[:, : j + 2]).solution  # (B, j+1, 1)
                res = torch.linalg.vector_norm(e1[:, : j + 2] - Hj @ z, dim=(1, 2))
                trace.append(res / torch.where(bnorm > 0, bnorm, torch.ones_like(bnorm)))
                if nmv + 1 >= self.max_iter or bool((res <= target).all()):
                    break
            x = x + (torch.stack(V[: z.shape[1]], dim=2) @ z).squeeze(2)
            r = bf - mv(x)
            nmv += 1
            res = torch.linalg.vector_norm(r, dim=1)
        return _linear_result(self, x.reshape(shape).to(b.dtype), res, bnorm, nmv, trace)

    def extra_repr(self) -> str:
        return f"max_iter={self.max_iter}, tol={self.tol}, restart={self.restart}"
