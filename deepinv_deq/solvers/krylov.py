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

from .._validation import check_budget, check_int, reject_unknown
from .._autodiff import batch_norm
from .base import SolverResult, SolverStats, SolverStatus


def _linear_result(
    solver, u: Tensor, res: Tensor, bnorm: Tensor, nmv: int, trace, bad: Tensor, tol: float
) -> SolverResult:
    # statistics of a linear solve M u = b from the final residual norms ||b - M u||
    rel = res / torch.where(bnorm > 0, bnorm, torch.ones_like(bnorm))
    bad = bad | ~torch.isfinite(rel) | ~torch.isfinite(u.reshape(u.shape[0], -1)).all(dim=1)
    status = torch.where(rel <= tol, int(SolverStatus.CONVERGED), int(SolverStatus.MAX_ITER))
    status = torch.where(bad, int(SolverStatus.NONFINITE), status).to(torch.int64)
    stats = SolverStats(
        nfe=nmv,
        residual=rel,
        abs_residual=res / max(u[0].numel(), 1) ** 0.5,
        trace=torch.stack(trace) if trace else rel[None],
        status=status,
        solver=solver.name,
    )
    return SolverResult(x=u, fx=u, stats=stats)


def _safe_div(a: Tensor, d: Tensor, tiny: Tensor) -> Tensor:
    # a / d where |d| > tiny, 0 elsewhere (a rank-deficient Krylov step contributes nothing)
    ok = d.abs() > tiny
    return torch.where(ok, a / torch.where(ok, d, torch.ones_like(d)), torch.zeros_like(a))


class GMRES(torch.nn.Module):
    r"""GMRES for the non-symmetric linear system :math:`M u = b` (batched, per sample), full by
    default, restarted on request.

    At each (restart) cycle an orthonormal Krylov basis :math:`V_j` of
    :math:`\{r, Mr, \dots, M^{j-1} r\}` is built by modified Gram–Schmidt, and the small
    least-squares problem :math:`\min_z \|\beta e_1 - \bar H_j z\|` is solved as in textbook
    GMRES :footcite:p:`saad1986gmres`: Givens rotations reduce the Hessenberg matrix
    :math:`\bar H_j` to a triangular one as it grows, the residual norm of the iterate is read
    off the rotated right-hand side without a product, and the triangular system is solved by
    back-substitution. A vanishing pivot (a Krylov space that stops growing, a zero right-hand
    side) contributes a zero coefficient instead of a division by zero, and a sample whose
    products turn NaN or Inf keeps its last finite iterate and is marked ``NONFINITE``: the other
    samples of the batch are not affected. Every breakdown test is relative to the scale of the
    quantity it tests (the initial residual to :math:`\|b\|`, a new Krylov direction to
    :math:`\|Mv_j\|`, a pivot to the largest entry of the triangular factor), so the solve does
    not depend on the scale of :math:`b` (a loss scaled by :math:`2^{24}` gets the same answer,
    scaled) and reaches any tolerance down to rounding, in float32 as in float64. Complex systems
    use conjugated inner products and complex Givens rotations. One product with :math:`M` per
    iteration.

    :param int max_iter: maximum number of products with :math:`M` (the true residuals computed
        at each restart included). The residual reported for the returned iterate is the one
        GMRES's recurrence gives (exact up to rounding), which saves the product of a final true
        residual. The solver synchronises with the host once per product (its convergence test).
        Default: ``50``.
    :param float tol: relative residual tolerance :math:`\|b - Mu\| \le \text{tol}\,\|b\|`.
        Default: ``1e-5``.
    :param int restart: Krylov dimension before a restart; ``None`` (the default) never restarts
        within ``max_iter`` products (full GMRES). Memory: one basis vector of the size of
        :math:`b` per product of the cycle. Restarting saves that memory, but restarted GMRES can
        stall on a nearly singular system: on the adjoint systems of three trained MC-only CT DEQs
        (32x32, 6 views, 32 test images each, tolerance 1e-4, at most 100 products), full GMRES
        reached the tolerance for 95 of the 96 images, with 34-84 products per batch, where
        GMRES(20) reached it for 70, with 47-99. Default: ``None``.

    |sep|

    :Examples:

    Solve a small non-symmetric system for a batch of three right-hand sides:

    >>> import torch
    >>> from deepinv_deq.solvers import GMRES
    >>> M = torch.tensor([[2.0, 1.0], [0.0, 3.0]], dtype=torch.float64)
    >>> b = torch.ones(3, 2, dtype=torch.float64)
    >>> result = GMRES(max_iter=20, tol=1e-12).solve(lambda u: u @ M.T, b)
    >>> torch.allclose(result.x @ M.T, b, atol=1e-10), result.stats.status_names()
    (True, ['CONVERGED', 'CONVERGED', 'CONVERGED'])

    .. footbibliography::
    """

    name = "gmres"
    _options = ("max_iter", "tol", "restart")

    def __init__(
        self, max_iter: int = 50, tol: float = 1e-5, restart: int | None = None, **unknown
    ):
        super().__init__()
        reject_unknown(type(self).__name__, unknown, self._options)
        self.max_iter, self.tol = check_budget(type(self).__name__, max_iter, tol)
        self.restart = (
            None if restart is None else check_int(type(self).__name__, "restart", restart, 1)
        )

    @torch.no_grad()
    def solve(
        self,
        matvec: Callable[[Tensor], Tensor],
        b: Tensor,
        x0: Tensor | None = None,
        tol: float | None = None,
    ) -> SolverResult:
        r"""Solve :math:`M u = b`.

        :param Callable matvec: :math:`u \mapsto M u`, applied to the whole batch.
        :param torch.Tensor b: right-hand side, shape ``(B, ...)``.
        :param torch.Tensor x0: initial guess. Default: zero.
        :param float tol: relative tolerance of this solve. Default: the solver's ``tol``.
        :return: (:class:`SolverResult`) with ``x`` the solution and ``fx`` equal to ``x``.
        """
        tol = self.tol if tol is None else tol
        shape, B = b.shape, b.shape[0]
        cdtype = torch.promote_types(b.dtype, torch.float32)
        mv = lambda v: matvec(v.reshape(shape).to(b.dtype)).reshape(B, -1).to(cdtype)
        bf = b.reshape(B, -1).to(cdtype)
        bnorm = batch_norm(bf)
        bad = ~torch.isfinite(bnorm)
        bf = torch.where(bad[:, None], torch.zeros_like(bf), bf)
        bnorm = torch.where(bad, torch.zeros_like(bnorm), bnorm)
        target = tol * bnorm
        eps = torch.finfo(bnorm.dtype).eps
        tiny = eps * bnorm  # breakdown of the initial residual, relative to ||b||
        x = torch.zeros_like(bf) if x0 is None else x0.reshape(B, -1).to(cdtype)
        x = torch.where(bad[:, None], torch.zeros_like(x), x)
        nmv, trace = 0, []
        r = bf - mv(x) if x0 is not None else bf.clone()
        nmv += x0 is not None
        res = batch_norm(r)
        bad = bad | ~torch.isfinite(res)
        # max_iter bounds every product with M, the initial and restart true residuals included
        while nmv + 1 < self.max_iter and not bool(((res <= target) | bad).all()):
            x, r, res, bad, nmv = self._cycle(
                mv, x, r, res, bad, bf, bnorm, target, tiny, eps, nmv, trace
            )
        return _linear_result(self, x.reshape(shape).to(b.dtype), res, bnorm, nmv, trace, bad, tol)

    def _cycle(self, mv, x, r, res, bad, bf, bnorm, target, tiny, eps, nmv, trace):
        # one restart cycle: Arnoldi with Givens rotations, then the update of x and its true
        # residual. Complex systems use conjugated inner products and complex rotations. Every
        # breakdown test compares a quantity with eps times the scale it comes from (the initial
        # residual with ||b||, a new Krylov direction with ||M v_j||, a pivot with the largest
        # entry of R), so that the solve does not depend on the scale of b.
        # the cycle's length: at most the products left (a full GMRES is one cycle)
        B, m = x.shape[0], min(self.restart or self.max_iter, max(1, self.max_iter - nmv))
        r = torch.where(bad[:, None], torch.zeros_like(r), r)
        beta = torch.where(bad, torch.zeros_like(res), res)
        V = [_safe_div(r, beta[:, None], tiny[:, None])]
        R = torch.zeros(B, m, m, dtype=x.dtype, device=x.device)  # rotated Hessenberg, triangular
        g = torch.zeros(B, m + 1, dtype=x.dtype, device=x.device)  # rotated beta * e1
        g[:, 0] = beta
        cs, sn = [], []
        for j in range(m):
            w = mv(V[j])
            nmv += 1
            w = torch.where(bad[:, None], torch.zeros_like(w), w)
            wnorm = batch_norm(w)
            h = []
            for i in range(j + 1):
                hi = (V[i].conj() * w).sum(dim=1)
                h.append(hi)
                w = w - hi[:, None] * V[i]
            hn = batch_norm(w)
            # a non-finite product makes that sample NONFINITE (its rotation would read as solved)
            bad = bad | ~torch.isfinite(wnorm) | ~torch.isfinite(torch.stack(h, dim=1)).all(dim=1)
            V.append(_safe_div(w, hn[:, None], eps * wnorm[:, None]))
            for i in range(j):  # the previous rotations, applied to the new column
                h[i], h[i + 1] = (
                    cs[i] * h[i] + sn[i] * h[i + 1],
                    -sn[i].conj() * h[i] + cs[i] * h[i + 1],
                )
            # the rotation that zeroes hn below h[j]: c real, |c|^2 + |s|^2 = 1
            a = h[j].abs()
            d = torch.sqrt(a**2 + hn**2)
            ok = d > 0
            one = torch.ones_like(d)
            c = torch.where(ok, a / torch.where(ok, d, one), one)
            phase = torch.where(a > 0, h[j] / torch.where(a > 0, a, one), torch.ones_like(h[j]))
            sv = torch.where(ok, phase * hn / torch.where(ok, d, one), torch.zeros_like(h[j]))
            cs.append(c.to(x.dtype))
            sn.append(sv)
            h[j] = phase * d
            R[:, : j + 1, j] = torch.stack(h, dim=1)
            g[:, j + 1] = -sn[j].conj() * g[:, j]
            g[:, j] = cs[j] * g[:, j]
            est = g[:, j + 1].abs()
            bad = bad | ~torch.isfinite(est)
            trace.append(est / torch.where(bnorm > 0, bnorm, torch.ones_like(bnorm)))
            if nmv + 1 >= self.max_iter or bool(((est <= target) | bad).all()):
                break
        k = j + 1
        z = torch.zeros(B, k, dtype=x.dtype, device=x.device)
        pivot_tiny = eps * R[:, :k, :k].abs().flatten(1).amax(dim=1)
        for i in reversed(range(k)):  # back-substitution in the triangular system R z = g
            acc = g[:, i] - (R[:, i, i + 1 : k] * z[:, i + 1 : k]).sum(dim=1)
            z[:, i] = _safe_div(acc, R[:, i, i], pivot_tiny)
        x_new = x + (torch.stack(V[:k], dim=2) @ z[:, :, None]).squeeze(2)
        if nmv + 1 >= self.max_iter or bool(((est <= target) | bad).all()):
            # the last cycle: the residual norm is the one GMRES's recurrence gives, without a
            # product (the true residual is computed only to restart from it)
            r_new, res_new = r, est
        else:
            r_new = bf - mv(x_new)
            nmv += 1
            res_new = batch_norm(r_new)
        ok = ~bad & torch.isfinite(res_new) & torch.isfinite(x_new).all(dim=1)
        # a sample whose products turned non-finite keeps its last finite iterate
        x = torch.where(ok[:, None], x_new, x)
        r = torch.where(ok[:, None], r_new, r)
        res = torch.where(ok, res_new, res)
        return x, r, res, bad | ~ok, nmv

    def extra_repr(self) -> str:
        return f"max_iter={self.max_iter}, tol={self.tol}, restart={self.restart}"
