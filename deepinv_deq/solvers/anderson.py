r"""Anderson acceleration (type II) with safeguards."""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_float, check_int
from .base import FixedPointSolver


class AndersonAcceleration(FixedPointSolver):
    r"""Anderson acceleration :footcite:p:`walker2011anderson` of the fixed-point iteration :math:`x = f(x)`.

    With :math:`g_i = f(x_i) - x_i` the residuals of the last :math:`m` iterates, each step solves
    the small constrained least-squares problem

    .. math::

        \alpha^\star = \underset{\sum_i \alpha_i = 1}{\arg\min}\;
        \Big\|\sum_i \alpha_i g_i\Big\|_2^2 + \lambda \|\alpha\|_2^2,
        \qquad
        x_{k+1} = \sum_i \alpha^\star_i f(x_i) - (1-\beta)\sum_i \alpha^\star_i g_i,

    in closed form :math:`\alpha^\star = H^{-1}\mathbf{1} / \mathbf{1}^\top H^{-1}\mathbf{1}` with
    :math:`H = \bar G G^\top + \lambda I` (the Hermitian Gram matrix: complex states get complex
    weights). The ridge :math:`\lambda` is relative to the scale of
    :math:`GG^\top` (``ridge`` times its mean diagonal), so the step does not depend on the image's
    scale. The system is solved per sample, in at least float32 and outside autocast. A singular or
    non-finite system falls back, for that sample only, to the damped step
    :math:`x_k + \beta g_k`, so the solver never crashes on a degenerate history.

    The budget and tolerances are those of :class:`FixedPointSolver`.

    :param int max_iter: maximum number of evaluations of :math:`f`. Default: ``50``.
    :param float tol: relative residual tolerance. Default: ``1e-4``.
    :param float atol: absolute residual tolerance (``0`` disables it). Default: ``0``.
    :param int history_size: :math:`m`, number of past iterates mixed. Default: ``5``.
    :param float ridge: relative ridge regularisation :math:`\lambda`. Default: ``1e-4``.
    :param float mixing: :math:`\beta \in (0, 1]`, weight of :math:`f(x_i)` against :math:`x_i`.
        Default: ``1.0``.
    :param float divergence_ratio: divergence threshold, as in :class:`FixedPointSolver`.
        Default: ``1e4``.

    |sep|

    :Examples:

    An affine contraction in two dimensions, solved in a few iterations:

    >>> import torch
    >>> from deepinv_deq.solvers import AndersonAcceleration
    >>> A = torch.tensor([[0.9, 0.05], [0.0, 0.8]])
    >>> solver = AndersonAcceleration(max_iter=50, tol=1e-8, history_size=3)
    >>> result = solver(lambda x: x @ A.T + 1.0, torch.zeros(4, 2))
    >>> x_true = torch.linalg.solve(torch.eye(2) - A, torch.ones(2))
    >>> torch.allclose(result.fx, x_true.expand(4, 2), atol=1e-4)
    True
    >>> bool(result.stats.nfe < 20)
    True

    .. footbibliography::
    """

    name = "anderson"
    _options = FixedPointSolver._options + ("history_size", "ridge", "mixing")

    def __init__(
        self,
        max_iter=50,
        tol=1e-4,
        atol=0.0,
        history_size=5,
        ridge=1e-4,
        mixing=1.0,
        divergence_ratio=1e4,
        **unknown,
    ):
        super().__init__(
            max_iter=max_iter, tol=tol, atol=atol, divergence_ratio=divergence_ratio, **unknown
        )
        owner = type(self).__name__
        self.history_size = check_int(owner, "history_size", history_size, 1)
        self.ridge = check_float(owner, "ridge", ridge, 0.0)
        self.mixing = check_float(owner, "mixing", mixing, 0.0, 1.0, strict_min=True)

    def _init_state(self, x0: Tensor) -> dict:
        B = x0.shape[0]
        n = x0[0].numel()
        cdtype = torch.promote_types(x0.dtype, torch.float32)
        m = self.history_size
        return {
            "F": torch.zeros(B, m, n, dtype=cdtype, device=x0.device),
            "G": torch.zeros(B, m, n, dtype=cdtype, device=x0.device),
            "cdtype": cdtype,
            "fallbacks": torch.zeros(B, dtype=torch.int64, device=x0.device),
        }

    def _next(self, state: dict, k: int, x: Tensor, fx: Tensor) -> Tensor:
        B = x.shape[0]
        m = self.history_size
        cdtype = state["cdtype"]
        F, G = state["F"], state["G"]
        slot = k % m
        n_hist = min(k + 1, m)
        with torch.autocast(device_type=x.device.type, enabled=False):
            fx_flat = fx.reshape(B, -1).to(cdtype)
            g_flat = fx_flat - x.reshape(B, -1).to(cdtype)
            F[:, slot] = fx_flat
            G[:, slot] = g_flat
            beta = self.mixing
            plain = (x.reshape(B, -1).to(cdtype) + beta * g_flat) if beta != 1.0 else fx_flat
            if n_hist == 1:
                return plain.reshape(x.shape).to(x.dtype)
            Gh = G[:, :n_hist]
            # the Gram matrix of the residuals, Hermitian for complex states: H_ij = <g_i, g_j>
            H = torch.bmm(Gh.conj(), Gh.transpose(1, 2))  # (B, n, n)
            diag_mean = H.diagonal(dim1=1, dim2=2).real.mean(dim=1)  # (B,)
            lam = self.ridge * diag_mean + torch.finfo(diag_mean.dtype).tiny
            H = H + lam[:, None, None] * torch.eye(n_hist, dtype=cdtype, device=x.device)
            ones = torch.ones(B, n_hist, 1, dtype=cdtype, device=x.device)
            w, info = torch.linalg.solve_ex(H, ones)
            w = w.squeeze(-1)
            wsum = w.sum(dim=1, keepdim=True)
            alpha = w / wsum
            ok = (info == 0) & torch.isfinite(alpha).all(dim=1) & (wsum.squeeze(1).abs() > 0)
            alpha = torch.where(ok[:, None], alpha, torch.zeros_like(alpha))
            mixed = torch.bmm(alpha[:, None, :], F[:, :n_hist]).squeeze(1)
            if beta != 1.0:
                mixed = mixed - (1.0 - beta) * torch.bmm(alpha[:, None, :], Gh).squeeze(1)
            x_next = torch.where(ok[:, None], mixed, plain)
            state["fallbacks"] = state["fallbacks"] + (~ok).to(torch.int64)
        return x_next.reshape(x.shape).to(x.dtype)

    def _extra_stats(self, state: dict) -> dict:
        # number of steps per sample where the least-squares system was singular or non-finite
        # and the plain damped step was taken instead
        return {"fallbacks": state["fallbacks"]}
