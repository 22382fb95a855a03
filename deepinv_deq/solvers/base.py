r"""The common machinery of the fixed-point solvers: statuses, statistics and the iteration loop.

A solver finds :math:`x^\star = f(x^\star)` for a batch of independent problems (the first tensor
dimension indexes the batch). Convergence is judged per sample on the relative residual

.. math::

    r_k = \frac{\|f(x_k) - x_k\|_2}{\|x_k\|_2 + \epsilon}

and on the absolute residual normalised by the number of entries, :math:`\|f(x_k)-x_k\|_2/\sqrt{n}`.
Each sample returns its best iterate (smallest absolute residual, among the iterates that meet the
tolerance once one does) and a status. A linear solve :math:`Mu = b` (:meth:`FixedPointSolver.solve`,
:meth:`GMRES.solve <deepinv_deq.solvers.GMRES.solve>`) is judged relative to the right-hand side
instead, :math:`\|b - Mu\|_2 / \|b\|_2`, by every solver alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Callable

import torch
from torch import Tensor

from .._autodiff import batch_norm, expand_as_batch
from .._validation import check_budget, check_float, reject_unknown


class SolverStatus(IntEnum):
    r"""Outcome of a solve, per sample; each code carries its :attr:`message` and :attr:`advice`.

    - ``CONVERGED``: the residual fell below the tolerance;
    - ``MAX_ITER``: the iteration budget ran out first;
    - ``DIVERGED``: the residual grew far above its best value (the map is not contractive there),
      or, for a linear solve, the returned iterate is no better than zero;
    - ``NONFINITE``: the map produced NaN or Inf; the sample was frozen at its best finite iterate.

    :Examples:

    Every failure code says what happened and what to try:

    >>> from deepinv_deq.solvers import SolverStatus
    >>> SolverStatus.MAX_ITER.message
    'the iteration budget ran out before the tolerance was met'
    >>> SolverStatus(0).name
    'CONVERGED'
    """

    CONVERGED = 0
    MAX_ITER = 1
    DIVERGED = 2
    NONFINITE = 3

    @property
    def message(self) -> str:
        r"""What this status means, in words."""
        return _MESSAGES[self]

    @property
    def advice(self) -> str:
        r"""What to try when a solve ends with this status (empty for ``CONVERGED``)."""
        return _ADVICE[self]


_MESSAGES = {
    SolverStatus.CONVERGED: "the residual fell below the tolerance",
    SolverStatus.MAX_ITER: "the iteration budget ran out before the tolerance was met",
    SolverStatus.DIVERGED: "the residual diverged (for a linear solve: it is no smaller than that of u = 0)",
    SolverStatus.NONFINITE: "the map or the right-hand side produced NaN or Inf",
}
_ADVICE = {
    SolverStatus.CONVERGED: "",
    SolverStatus.MAX_ITER: (
        "Increase max_iter, loosen tol (under autocast, a float16/bfloat16 map cannot reach a "
        "residual much below the unit roundoff of its dtype), or make the map more contractive."
    ),
    SolverStatus.DIVERGED: (
        "Lower the stepsize or make the denoiser more contractive (e.g. ContractiveDenoiser, "
        "spectral normalisation); on_failure='jfb' keeps training on a usable gradient."
    ),
    SolverStatus.NONFINITE: "Check the inputs and the map for NaN/Inf, or lower the stepsize.",
}


@dataclass
class SolverStats:
    r"""Statistics of one solve (forward or backward).

    :param int nfe: number of evaluations of the map.
    :param torch.Tensor residual: relative residual of the returned iterate, shape ``(B,)``.
    :param torch.Tensor abs_residual: absolute residual (normalised by :math:`\sqrt{n}`) of the
        returned iterate, shape ``(B,)``.
    :param torch.Tensor trace: relative residual at every iteration, shape ``(nfe, B)``.
    :param torch.Tensor status: :class:`SolverStatus` code per sample, shape ``(B,)``.
    :param str solver: name of the solver that produced these statistics. Default: ``""``.
    :param dict extra: solver-specific statistics (e.g. Anderson's ``fallbacks``). Default: empty.

    :Examples:

    Every solve returns its statistics; the summary is plain Python, for logging:

    >>> import torch
    >>> from deepinv_deq.solvers import FixedPointIteration
    >>> stats = FixedPointIteration(tol=1e-6)(lambda x: 0.5 * x + 1.0, torch.zeros(2, 1)).stats
    >>> stats.all_converged, stats.solver, stats.summary()["batch"]
    (True, 'fixed_point', 2)
    """

    nfe: int
    residual: Tensor
    abs_residual: Tensor
    trace: Tensor
    status: Tensor
    solver: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def converged(self) -> Tensor:
        r"""Boolean mask of the samples that converged, shape ``(B,)``."""
        return self.status == SolverStatus.CONVERGED

    @property
    def all_converged(self) -> bool:
        r"""``True`` if every sample converged (one host synchronisation)."""
        return bool(self.converged.all())

    def status_names(self) -> list[str]:
        r"""Status of every sample as a readable name, e.g. ``['CONVERGED', 'MAX_ITER']``."""
        return [SolverStatus(int(s)).name for s in self.status.tolist()]

    def summary(self) -> dict:
        r"""Plain-Python summary (one host synchronisation), convenient for logging."""
        return {
            "solver": self.solver,
            "nfe": self.nfe,
            "residual_max": float(self.residual.max()) if self.residual.numel() else 0.0,
            "residual_mean": float(self.residual.mean()) if self.residual.numel() else 0.0,
            "converged": int(self.converged.sum()),
            "batch": int(self.status.numel()),
        }

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"SolverStats(solver={s['solver']!r}, nfe={s['nfe']}, converged={s['converged']}/"
            f"{s['batch']}, residual_max={s['residual_max']:.3e})"
        )


@dataclass
class SolverResult:
    r"""What a solver returns.

    :param torch.Tensor x: best iterate per sample, :math:`x_k`.
    :param torch.Tensor fx: the map evaluated at that iterate, :math:`f(x_k)` (free: already computed).
    :param SolverStats stats: statistics of the solve.

    :Examples:

    The best iterate, its image and the statistics of a solve:

    >>> import torch
    >>> from deepinv_deq.solvers import AndersonAcceleration
    >>> result = AndersonAcceleration(tol=1e-8)(lambda x: 0.5 * x + 1.0, torch.zeros(1, 2))
    >>> torch.allclose(result.fx, torch.full((1, 2), 2.0)), result.stats.status_names()
    (True, ['CONVERGED'])
    """

    x: Tensor
    fx: Tensor
    stats: SolverStats


def real_dtype(dtype: torch.dtype) -> torch.dtype:
    r"""The real dtype of the precision of ``dtype`` (``float64`` for ``complex128``, ``float32``
    for ``complex64``), at least ``float32``: the dtype of residuals and statistics.

    :Examples:

    >>> import torch
    >>> from deepinv_deq.solvers.base import real_dtype
    >>> real_dtype(torch.complex128), real_dtype(torch.bfloat16)
    (torch.float64, torch.float32)
    """
    if dtype.is_complex:
        dtype = torch.empty((), dtype=dtype).real.dtype
    return torch.float64 if dtype == torch.float64 else torch.float32


def default_tol(tol: float, like: Tensor) -> float:
    r"""A default tolerance fitted to the precision of the map: ``max(tol, eps)`` with ``eps`` the
    unit roundoff of the lowest precision involved, the autocast dtype under
    :func:`torch.autocast` or the dtype of ``like`` (a model cast to bfloat16 or float16), below
    which a residual computed from low-precision evaluations cannot reliably fall (``7.8e-3`` for
    bfloat16, ``9.8e-4`` for float16); ``tol`` for float32 and float64.

    :param float tol: the default tolerance.
    :param torch.Tensor like: the iterate (its dtype and device).

    :Examples:

    >>> import torch
    >>> from deepinv_deq.solvers.base import default_tol
    >>> default_tol(1e-4, torch.zeros(1))
    0.0001
    >>> default_tol(1e-4, torch.zeros(1, dtype=torch.float16))
    0.0009765625
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     default_tol(1e-4, torch.zeros(1))
    0.0078125
    """
    dtype = like.real.dtype if like.is_complex() else like.dtype
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    if torch.is_autocast_enabled(like.device.type):
        eps = max(eps, torch.finfo(torch.get_autocast_dtype(like.device.type)).eps)
    return max(tol, eps) if eps > torch.finfo(torch.float32).eps else tol


class FixedPointSolver(torch.nn.Module):
    r"""Base class of the forward solvers of :math:`x = f(x)`.

    Subclasses implement :meth:`_init_state` and :meth:`_next`, which compute the next iterate from
    the current one and its image; the base class runs the loop, tracks the per-sample best iterate,
    stops when every sample is done and fills :class:`SolverStats`. The loop makes one host
    synchronisation per iteration (the "are all samples done?" check).

    Every forward solver is also a linear solver (:meth:`solve`), as the fixed point of
    :math:`u \mapsto u - Mu + b`.

    :param int max_iter: maximum number of evaluations of :math:`f`. Default: ``50``.
    :param float tol: relative residual tolerance :math:`r_k \le` ``tol``. Default: ``1e-4``.
    :param float atol: absolute residual tolerance (root-mean-square of :math:`f(x_k)-x_k`);
        ``0`` disables it. A sample converges when either tolerance is met. Default: ``0``.
    :param float divergence_ratio: a sample whose absolute residual exceeds ``divergence_ratio``
        times its smallest one is flagged ``DIVERGED`` and frozen at its best iterate.
        Default: ``1e4``.

    :Examples:

    A subclass implements one step; here a plain Picard iteration:

    >>> import torch
    >>> from deepinv_deq.solvers import FixedPointSolver
    >>> class Picard(FixedPointSolver):
    ...     def _next(self, state, k, x, fx):
    ...         return fx
    >>> Picard(tol=1e-6)(lambda x: 0.5 * x + 1.0, torch.zeros(1, 1)).stats.status_names()
    ['CONVERGED']
    """

    name = "base"
    _options: tuple[str, ...] = ("max_iter", "tol", "atol", "divergence_ratio")

    def __init__(
        self,
        max_iter: int = 50,
        tol: float = 1e-4,
        atol: float = 0.0,
        divergence_ratio: float = 1e4,
        **unknown,
    ):
        super().__init__()
        owner = type(self).__name__
        reject_unknown(owner, unknown, self._options)
        self.max_iter, self.tol = check_budget(owner, max_iter, tol)
        self.atol = check_float(owner, "atol", atol, 0.0)
        self.divergence_ratio = check_float(
            owner, "divergence_ratio", divergence_ratio, 1.0, strict_min=True
        )

    # -- to implement -------------------------------------------------------------------------
    def _init_state(self, x0: Tensor) -> dict:
        return {}

    def _next(self, state: dict, k: int, x: Tensor, fx: Tensor) -> Tensor:
        raise NotImplementedError

    def _extra_stats(self, state: dict) -> dict:
        return {}

    # -- the loop -----------------------------------------------------------------------------
    @torch.no_grad()
    def forward(
        self,
        f: Callable[[Tensor], Tensor],
        x0: Tensor,
        callback: Callable[[int, Tensor, Tensor], None] | None = None,
        tol: float | None = None,
        scale: Tensor | None = None,
        max_iter: int | None = None,
    ) -> SolverResult:
        r"""Solve :math:`x = f(x)` from ``x0``.

        :param Callable f: the map, applied to the whole batch.
        :param torch.Tensor x0: initial iterate, shape ``(B, ...)``.
        :param Callable callback: optional ``callback(k, x_k, f(x_k))`` called at every iteration.
        :param float tol: relative tolerance of this solve. Default: the solver's ``tol``.
        :param torch.Tensor scale: per-sample norms, shape ``(B,)``, that the residual is relative
            to, instead of :math:`\|x_k\|` (a linear solve passes :math:`\|b\|`). Default: none.
        :param int max_iter: budget of this solve. Default: the solver's ``max_iter``.
        :return: (:class:`SolverResult`) best iterate, its image and statistics.
        """
        tol = self.tol if tol is None else tol
        budget = self.max_iter if max_iter is None else max_iter
        if x0.ndim == 0:
            raise ValueError(
                f"{type(self).__name__}: x0 must have a batch dimension, got a scalar."
            )
        if not bool(torch.isfinite(x0).all()):
            raise ValueError(f"{type(self).__name__}: the initial iterate contains NaN or Inf.")
        B = x0.shape[0]
        dev = x0.device
        x = x0
        n_entries = max(x0[0].numel(), 1)
        stat_dtype = real_dtype(x0.dtype)
        eps = torch.finfo(stat_dtype).tiny ** 0.5
        if scale is not None:  # residuals relative to a fixed norm per sample (e.g. ||b||)
            scale = scale.to(device=dev, dtype=stat_dtype)
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        state = self._init_state(x0)

        best_x = x0
        best_fx = x0
        best_rel = torch.full((B,), float("inf"), device=dev, dtype=stat_dtype)
        best_abs = best_rel.clone()
        converged = torch.zeros(B, dtype=torch.bool, device=dev)
        nonfinite = torch.zeros_like(converged)
        diverged = torch.zeros_like(converged)
        trace = []
        nfe = 0
        for k in range(budget):
            fx = f(x)
            nfe += 1
            if fx.shape != x.shape:
                raise ValueError(
                    f"{type(self).__name__}: the map changed the shape of its input "
                    f"from {tuple(x.shape)} to {tuple(fx.shape)}."
                )
            fx = fx.to(x.dtype)
            with torch.autocast(device_type=dev.type, enabled=False):
                diff_norm = batch_norm(fx - x).to(best_rel.dtype)
                norm = batch_norm(x).to(best_rel.dtype) + eps if scale is None else scale
                rel = diff_norm / norm
                absr = diff_norm / n_entries**0.5
                finite = torch.isfinite(rel)
                nonfinite = nonfinite | ~finite
                trace.append(rel)
                frozen = nonfinite | diverged
                meets = finite & ~frozen & ((rel <= tol) | (absr <= self.atol))
                # the best iterate has the smallest absolute residual (for a contraction it bounds
                # the distance to the fixed point); once a sample has converged, only iterates that
                # still meet the tolerance may replace its best one
                smaller = absr <= best_abs  # ties go to the later iterate
                improved = (
                    finite & ~frozen & ((smaller & (meets | ~converged)) | (meets & ~converged))
                )
                best_rel = torch.where(improved, rel, best_rel)
                best_abs = torch.where(improved, absr, best_abs)
                m = expand_as_batch(improved, x)
                best_x = torch.where(m, x, best_x)
                best_fx = torch.where(m, fx, best_fx)
                converged = converged | meets
                # judged on the absolute residual: a linearly diverging map keeps a bounded
                # relative residual while its iterates and residuals blow up
                diverged = diverged | (
                    finite & ~converged & (absr > self.divergence_ratio * best_abs)
                )
                if callback is not None:
                    callback(k, x, fx)
                done = converged | nonfinite | diverged
                if k == budget - 1 or bool(done.all()):
                    break
                x_next = self._next(state, k, x, fx)
                frozen = nonfinite | diverged
                x = torch.where(expand_as_batch(frozen, x), best_x, x_next)

        status = torch.full((B,), int(SolverStatus.MAX_ITER), dtype=torch.int64, device=dev)
        status = torch.where(diverged, int(SolverStatus.DIVERGED), status)
        status = torch.where(nonfinite, int(SolverStatus.NONFINITE), status)
        status = torch.where(converged, int(SolverStatus.CONVERGED), status)
        # a sample that never produced a finite image keeps x0 as its iterate
        never = ~torch.isfinite(best_rel)
        best_fx = torch.where(expand_as_batch(never, x0), x0, best_fx)
        stats = SolverStats(
            nfe=nfe,
            residual=best_rel,
            abs_residual=best_abs,
            trace=torch.stack(trace),
            status=status,
            solver=self.name,
            extra=self._extra_stats(state),
        )
        return SolverResult(x=best_x, fx=best_fx, stats=stats)

    def solve(
        self,
        matvec: Callable[[Tensor], Tensor],
        b: Tensor,
        x0: Tensor | None = None,
        tol: float | None = None,
    ) -> SolverResult:
        r"""Solve the linear system :math:`M u = b` as the fixed point of :math:`u \mapsto u - M u + b`.

        The linear-solve interface shared with :class:`deepinv_deq.solvers.GMRES`. For the adjoint
        system of implicit differentiation, :math:`M = I - J^\top`, the map is
        :math:`u \mapsto J^\top u + b` (a Neumann series, accelerated by Anderson); it converges
        when the spectral radius of :math:`J` is below one. As for every linear solver of the
        package, a sample converges when :math:`\|b - M u\| \le \text{tol}\,\|b\|` (relative
        to the right-hand side, not to :math:`\|u\|`, which near a singular :math:`M` is
        :math:`(1-\rho)^{-1}` times larger and would stop the solve that much too early);
        ``stats.residual`` reports that ratio.

        :param Callable matvec: :math:`u \mapsto M u`, applied to the whole batch.
        :param torch.Tensor b: right-hand side, shape ``(B, ...)``.
        :param torch.Tensor x0: initial guess. Default: ``b``.
        :param float tol: relative tolerance of this solve. Default: the solver's ``tol``.
        :return: (:class:`SolverResult`) ``x`` is the solution (the image of the best iterate);
            ``stats.abs_residual`` is :math:`\|b - M u\|/\sqrt{n}` at the best iterate.
        """
        result = self(
            lambda u: u - matvec(u) + b, b if x0 is None else x0, tol=tol, scale=batch_norm(b)
        )
        return SolverResult(x=result.fx, fx=result.fx, stats=result.stats)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={getattr(self, k)!r}" for k in self._options)
