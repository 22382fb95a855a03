r"""Backward strategies: how the gradient reaches through a fixed point.

Given a map :math:`f_\theta` and its fixed point :math:`x^\star = f_\theta(x^\star)` (computed
without autograd), a strategy returns :math:`z = f_\theta(x^\star)` carrying a gradient. For an
upstream gradient :math:`v = \partial \ell / \partial x^\star`:

- :class:`ImplicitDifferentiation` gives the exact gradient :footcite:p:`bai2019deep`, by the
  implicit function theorem,

  .. math::

      \frac{\partial \ell}{\partial \theta} = u^\top \frac{\partial f_\theta(x^\star)}{\partial \theta},
      \qquad (I - J_f(x^\star)^\top)\, u = v,

  the adjoint system being solved by any linear solver of :mod:`deepinv_deq.solvers`
  (``solve(matvec, b, x0)``);
- :class:`JFB`, Jacobian-free backpropagation :footcite:p:`fung2022jfb`, takes :math:`u = v`;
- :class:`PhantomGradient` :footcite:p:`geng2021phantom` backpropagates through :math:`k` damped
  steps started at :math:`x^\star`.

A new strategy is one subclass of :class:`BackwardStrategy` implementing :meth:`differentiate`,
and one entry in :data:`BACKWARDS`. (The references are listed at the end of the page that
shows this text, the API reference.)
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import torch
from torch import Tensor

from ._autodiff import batch_norm, expand_as_batch
from ._report import POLICIES, HookRegistry, enforce
from ._validation import check_budget, check_choice, check_float, check_int, default, is_given
from .preconditioners import FourierPreconditioner
from .solvers import (
    LINEAR_SOLVERS,
    FixedPointSolver,
    GMRES,
    SolverResult,
    SolverStats,
    SolverStatus,
    get_solver,
)
from .solvers.base import default_tol


class BackwardStrategy(torch.nn.Module):
    r"""Base class of the backward strategies.

    ``strategy(f, x_star)`` returns :math:`z = f(x^\star)`, equal to :math:`x^\star` up to the
    forward tolerance, whose gradient is the strategy's. Under :func:`torch.no_grad` it costs one
    evaluation of :math:`f`. Subclasses implement :meth:`differentiate`.

    :Examples:

    A new strategy is one class; this one differentiates two plain iterations from the fixed point:

    >>> import torch
    >>> from deepinv_deq.backward import BackwardStrategy
    >>> class TwoSteps(BackwardStrategy):
    ...     name = "two_steps"
    ...     def differentiate(self, f, x_star, guard=(), fallback=None, on_stats=None):
    ...         return f(f(x_star))
    >>> theta = torch.tensor(0.5, requires_grad=True)
    >>> TwoSteps()(lambda x: theta * x + 1.0, torch.full((1, 1), 2.0)).sum().backward()
    >>> theta.grad  # x* + theta x* = 3
    tensor(3.)
    """

    #: the name of the strategy in :data:`BACKWARDS`
    name = "base"
    #: the keyword options of the constructor
    _options: tuple[str, ...] = ()
    #: statistics of the last implicit backward solve (``None`` for the strategies without one)
    last_stats: SolverStats | None = None
    #: number of backward solves so far
    n_solves = 0

    def __init__(self):
        super().__init__()
        self._hooks = HookRegistry()

    @property
    def mode(self) -> str:
        r"""The strategy's name, as in ``DEQ(backward=...)``."""
        return self.name

    def register_stats_hook(self, hook: Callable[[str, SolverStats], None]):
        r"""Call ``hook("backward", stats)`` after every backward solve of this strategy.

        :param Callable hook: the function to call with the kind and the
            :class:`deepinv_deq.solvers.SolverStats` of the solve.
        :return: a handle whose ``remove()`` unregisters the hook.
        """
        return self._hooks.register(hook)

    def forward(
        self,
        f: Callable[[Tensor], Tensor],
        x_star: Tensor,
        guard: Iterable[Tensor] = (),
        fallback: Tensor | None = None,
        on_stats: Callable | None = None,
    ) -> Tensor:
        r"""Return :math:`z = f(x^\star)` carrying the strategy's gradient.

        :param Callable f: the fixed-point map, closing over parameters and inputs.
        :param torch.Tensor x_star: a fixed point of ``f`` computed without autograd.
        :param Iterable guard: tensors whose ``.grad`` the backward solve must leave untouched
            (e.g. the physics parameters, to which deepinv's least-squares solver adds gradients
            as a side effect of every vector-Jacobian product). Default: none.
        :param torch.Tensor fallback: boolean mask, shape ``(B,)``, of samples that get the JFB
            gradient (e.g. those whose forward solve failed). Default: none.
        :param Callable on_stats: called as ``on_stats("backward", stats)`` after the backward
            solve of this call only. Default: none.
        :return: (:class:`torch.Tensor`) :math:`f(x^\star)`.
        """
        x_star = x_star.detach()
        if not torch.is_grad_enabled():
            return f(x_star)
        return self.differentiate(
            f, x_star, guard=tuple(guard), fallback=fallback, on_stats=on_stats
        )

    def differentiate(self, f, x_star: Tensor, guard=(), fallback=None, on_stats=None) -> Tensor:
        r"""Evaluate :math:`f(x^\star)` with the strategy's gradient (grad mode is on)."""
        raise NotImplementedError


class JFB(BackwardStrategy):
    r"""Jacobian-free backpropagation :footcite:p:`fung2022jfb`: :math:`u = v`.

    The gradient of the last evaluation :math:`f(x^\star)` only, as if :math:`J_f` were zero:
    cheap, and a descent direction for contractive maps, but only an approximation.

    :Examples:

    The JFB gradient of the fixed point of :math:`f(x) = \theta x + 1` is :math:`x^\star = 2`,
    half the implicit one:

    >>> import torch
    >>> from deepinv_deq.backward import JFB
    >>> theta = torch.tensor(0.5, requires_grad=True)
    >>> JFB()(lambda x: theta * x + 1.0, torch.full((1, 1), 2.0)).sum().backward()
    >>> theta.grad
    tensor(2.)

    .. footbibliography::
    """

    name = "jfb"

    def differentiate(self, f, x_star, guard=(), fallback=None, on_stats=None):
        return f(x_star)


class PhantomGradient(BackwardStrategy):
    r"""Phantom gradient :footcite:p:`geng2021phantom`: :math:`k` damped steps, backpropagated.

    .. math::

        z_0 = x^\star, \qquad z_{i+1} = (1-\lambda) z_i + \lambda f(z_i), \qquad z = z_k.

    :param int steps: :math:`k`. Default: ``5``.
    :param float damping: :math:`\lambda \in (0, 1]`. Default: ``0.5``.

    :Examples:

    With :math:`f(x) = \theta x + 1`, the phantom gradient tends to the implicit one as :math:`k`
    grows:

    >>> import torch
    >>> from deepinv_deq.backward import PhantomGradient
    >>> theta = torch.tensor(0.5, requires_grad=True)
    >>> z = PhantomGradient(steps=30, damping=1.0)(lambda x: theta * x + 1.0, torch.full((1, 1), 2.0))
    >>> z.sum().backward()
    >>> round(theta.grad.item(), 4)
    4.0

    .. footbibliography::
    """

    name = "phantom"
    _options = ("steps", "damping")

    def __init__(self, steps: int = 5, damping: float = 0.5):
        super().__init__()
        owner = type(self).__name__
        self.steps = check_int(owner, "steps", steps, 1)
        self.damping = check_float(owner, "damping", damping, 0.0, 1.0, strict_min=True)

    def differentiate(self, f, x_star, guard=(), fallback=None, on_stats=None):
        z, first = x_star, None
        for _ in range(self.steps):
            fz = f(z)
            first = fz if first is None else first
            z = fz if self.damping == 1.0 else z + self.damping * (fz - z)
        if fallback is None:
            return z
        # the samples to fall back to JFB (a failed forward solve) get f(x*) and its gradient
        return torch.where(expand_as_batch(fallback.to(z.device), z), first, z)

    def extra_repr(self) -> str:
        return f"steps={self.steps}, damping={self.damping}"


class _Adjoint(torch.autograd.Function):
    # identity in the forward; the backward replaces the incoming gradient v by the adjoint u.
    # A Function (not a tensor hook) so that a gradient taken with respect to the output itself
    # is the plain one, and each call owns its own backward state.
    @staticmethod
    def forward(ctx, z, solve):
        ctx.solve = solve
        return z.clone()

    @staticmethod
    def backward(ctx, v):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "ImplicitDifferentiation: second-order derivatives (create_graph=True) through an "
                "implicit gradient are not supported; the adjoint solve is not differentiable. "
                "Use backward='jfb' or 'phantom' (plain autograd) for higher-order derivatives."
            )
        return ctx.solve(v), None


def _depends_on_other_leaves(z: Tensor, x_in: Tensor, limit: int = 100_000) -> bool:
    # whether the graph of z reaches a tensor requiring a gradient other than x_in (a walk over
    # the graph of one map evaluation, stopped at the first such leaf; assumed True past `limit`)
    seen, stack = set(), [z.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        if len(seen) >= limit:
            return True
        seen.add(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad: a leaf
        if variable is not None:
            if variable is not x_in:
                return True
            continue
        stack.extend(fn for fn, _ in node.next_functions)
    return False


class ImplicitDifferentiation(BackwardStrategy):
    r"""Exact gradient of the fixed point by implicit differentiation :footcite:p:`bai2019deep`.

    :math:`z = f(x^\star)` is evaluated once with autograd; in the backward pass the incoming
    gradient :math:`v` is replaced by the solution :math:`u` of :math:`(I - J_f(x^\star)^\top) u
    = v`, which autograd then pushes through that single evaluation to every tensor :math:`f`
    depends on. The system is solved, in at least float32, by ``solver.solve(matvec, b, x0)``:
    fixed-point iteration (a Neumann series), Anderson acceleration :footcite:p:`walker2011anderson`
    or GMRES :footcite:p:`saad1986gmres`; one vector-Jacobian product per iteration. Each call owns
    its backward state, so any number of calls may feed one loss.

    Per sample: a zero upstream gradient gives :math:`u = 0` without a solve; a non-finite one is
    passed through unchanged (so that a gradient scaler sees it and skips the step), with status
    ``NONFINITE`` and no failure reported; a solve whose residual is no better than
    :math:`\|v\|` is ``DIVERGED``.

    :param str, torch.nn.Module solver: ``"anderson"``, ``"fixed_point"``, ``"gmres"`` or a linear
        solver instance. Default: ``"gmres"``.
    :param int max_iter: maximum iterations of the solver (not with an instance). Default: ``50``.
    :param float tol: tolerance on the residual relative to the right-hand side,
        :math:`\|v - (I - J_f^\top)u\| \le \text{tol}\,\|v\|`, the same for every solver (not
        with an instance). Default: ``1e-5``, or the unit roundoff of the map's precision when it
        runs in bfloat16/float16, cast or under :func:`torch.autocast` (see
        :func:`deepinv_deq.solvers.base.default_tol`).
    :param str on_failure: for the samples whose solve does not converge: ``"warn"`` (the best
        iterate is used, with a :class:`RuntimeWarning`), ``"jfb"`` (they get the JFB gradient
        :math:`u = v`, with a warning) or ``"raise"`` (:class:`RuntimeError`). Default: ``"warn"``.
    :param str, deepinv_deq.preconditioners.FourierPreconditioner preconditioner: ``"fourier"``
        (a :class:`deepinv_deq.preconditioners.FourierPreconditioner` with its defaults), an
        instance, or ``None``. The system is then solved as :math:`(I - J_f^\top) P^{-1} t = v`,
        :math:`u = P^{-1} t`: the residual, and so the accuracy of :math:`u`, is the true one;
        only the number of products changes. It switches itself off where it does not fit the
        operator and for states that are not image batches, and where the fit is doubtful it is
        tried on a few solves and kept only if they needed fewer products (see its docs).
        Default: ``"fourier"``.
    :param solver_options: further options of the solver (e.g. ``history_size``); an unknown one
        raises :class:`ValueError`.

    :Examples:

    The gradient of the fixed point :math:`x^\star = 1/(1-\theta)` of :math:`f(x) = \theta x + 1`:

    >>> import torch
    >>> from deepinv_deq.backward import ImplicitDifferentiation
    >>> theta = torch.tensor(0.5, requires_grad=True)
    >>> ib = ImplicitDifferentiation(solver="gmres", tol=1e-10)
    >>> ib(lambda x: theta * x + 1.0, torch.full((1, 1), 2.0)).sum().backward()
    >>> round(theta.grad.item(), 4), ib.last_stats.status_names()
    (4.0, ['CONVERGED'])

    .. footbibliography::
    """

    name = "implicit"
    _options = tuple(
        dict.fromkeys(
            ("solver", "max_iter", "tol", "on_failure", "preconditioner")
            + tuple(o for cls in LINEAR_SOLVERS.values() for o in cls._options)
        )
    )

    def __init__(
        self,
        solver="gmres",
        max_iter: int = default(50),
        tol: float = default(1e-5),
        on_failure: str = "warn",
        preconditioner="fourier",
        **solver_options,
    ):
        super().__init__()
        owner = type(self).__name__
        self.on_failure = check_choice(owner, "on_failure", on_failure, POLICIES)
        self.preconditioner = _build_preconditioner(owner, preconditioner)
        if isinstance(solver, (FixedPointSolver, GMRES)) and (is_given(max_iter) or is_given(tol)):
            raise ValueError(
                f"{owner}: max_iter and tol cannot be combined with a solver instance; set them on the instance."
            )
        # a default tolerance is fitted to the precision of the map (default_tol)
        self._auto_tol = not is_given(tol) and not isinstance(solver, (FixedPointSolver, GMRES))
        if not isinstance(solver, (FixedPointSolver, GMRES)):
            max_iter, tol = check_budget(owner, max_iter, tol)  # 2.5 is refused, not truncated
            solver_options = {"max_iter": max_iter, "tol": tol, **solver_options}
        self.solver = get_solver(solver, owner=owner, allowed=LINEAR_SOLVERS, **solver_options)
        self.last_stats = None
        self.n_solves = 0

    def differentiate(self, f, x_star, guard=(), fallback=None, on_stats=None):
        x_in = x_star.requires_grad_()
        z = f(x_in)
        if z.shape != x_in.shape:
            raise ValueError(
                f"{type(self).__name__}: the map changed the shape of its input from "
                f"{tuple(x_in.shape)} to {tuple(z.shape)}; a fixed-point map must preserve it."
            )
        if not z.requires_grad:
            return z
        if not _depends_on_other_leaves(z, x_in):
            # a frozen model (no parameter, input or physics tensor requires a gradient): nothing
            # upstream needs one, so no adjoint solve is attached
            return z.detach()
        guard = tuple(t for t in guard if t.requires_grad)
        tol = default_tol(self.solver.tol, z) if self._auto_tol else None

        def vjp(u: Tensor) -> Tensor:
            saved = [t.grad for t in guard]
            (g,) = torch.autograd.grad(z, x_in, u.to(z.dtype), retain_graph=True, allow_unused=True)
            for t, grad in zip(guard, saved, strict=True):  # undo the side-effect accumulation
                t.grad = grad
            return torch.zeros_like(u) if g is None else g.to(u.dtype)

        return _Adjoint.apply(z, lambda v: self._solve(vjp, v, fallback, on_stats, tol))

    def _solve(self, vjp, v: Tensor, fallback, on_stats, tol) -> Tensor:
        grad_dtype = v.dtype
        v = v.detach().to(torch.promote_types(v.dtype, torch.float32))
        flat = v.reshape(v.shape[0], -1)
        finite, zero = torch.isfinite(flat).all(dim=1), (flat == 0).all(dim=1)
        b = torch.where(expand_as_batch(finite, v), v, torch.zeros_like(v))
        result = self._solve_system(lambda u: u - vjp(u), b, tol)
        stats = self._classify(result.stats, b, finite, zero)
        self.last_stats, self.n_solves = stats, self.n_solves + 1
        self._hooks("backward", stats)
        if on_stats is not None:
            on_stats("backward", stats)
        u = torch.where(expand_as_batch(zero, v), torch.zeros_like(v), result.x)
        judged = finite if fallback is None else finite & ~fallback.to(finite.device)
        failed = enforce(stats, self.on_failure, "ImplicitBackward", "backward", among=judged)
        use_v = ~finite
        if failed is not None and self.on_failure == "jfb":
            use_v = use_v | failed
        if fallback is not None:
            use_v = use_v | fallback.to(use_v.device)
        return torch.where(expand_as_batch(use_v, v), v, u).to(grad_dtype)

    def _solve_system(self, matvec, b: Tensor, tol) -> SolverResult:
        # M u = b, right-preconditioned when a preconditioner applies: M P^{-1} t = b, u = P^{-1} t
        # (the residual b - M u is the true one). GMRES starts at zero (its first residual is b,
        # no product); the fixed-point solvers at the (preconditioned) Neumann term.
        apply_inverse = None
        if self.preconditioner is not None:
            apply_inverse = self.preconditioner.prepare(matvec, b)
        x0 = None if isinstance(self.solver, GMRES) else b
        if apply_inverse is None:
            result = self.solver.solve(matvec, b, x0, tol=tol)
        else:
            result = self.solver.solve(lambda t: matvec(apply_inverse(t)), b, x0, tol=tol)
            u = apply_inverse(result.x)
            result = SolverResult(x=u, fx=u, stats=result.stats)
        if self.preconditioner is None:
            return result
        self.preconditioner.observe(result.stats.nfe)  # decides a running trial
        # the products with random images that estimated the preconditioner count as the solve's
        probes = self.preconditioner.last_probes
        stats = dataclasses.replace(
            result.stats,
            nfe=result.stats.nfe + probes,
            extra={
                **result.stats.extra,
                "preconditioned": apply_inverse is not None,
                "preconditioner_probes": probes,
            },
        )
        return SolverResult(x=result.x, fx=result.fx, stats=stats)

    @staticmethod
    def _classify(stats: SolverStats, b: Tensor, finite: Tensor, zero: Tensor) -> SolverStats:
        # statuses judged against the right-hand side: a residual ||b - M u|| >= ||b|| is no better
        # than u = 0 (DIVERGED); a zero b is solved by u = 0; a non-finite b is NONFINITE
        bnorm = batch_norm(b).to(stats.abs_residual.dtype)
        residual_b = (
            stats.abs_residual
            * b[0].numel() ** 0.5
            / torch.where(bnorm > 0, bnorm, torch.ones_like(bnorm))
        )
        status = stats.status
        status = torch.where(
            (status == int(SolverStatus.MAX_ITER)) & (residual_b >= 1),
            int(SolverStatus.DIVERGED),
            status,
        )
        status = torch.where(zero, int(SolverStatus.CONVERGED), status)
        status = torch.where(finite, status, int(SolverStatus.NONFINITE))
        return dataclasses.replace(stats, status=status)

    def extra_repr(self) -> str:
        return f"on_failure={self.on_failure!r}"


#: preconditioners of the implicit backward's linear system, by name
PRECONDITIONERS = {"fourier": FourierPreconditioner}


def _build_preconditioner(owner: str, preconditioner):
    # None, a name of PRECONDITIONERS (default options) or an instance
    if preconditioner is None or isinstance(preconditioner, FourierPreconditioner):
        return preconditioner
    name = check_choice(owner, "preconditioner", preconditioner, PRECONDITIONERS)
    return PRECONDITIONERS[name]()


#: backward strategies by name, as accepted by ``DEQ(backward=...)``
BACKWARDS = {"implicit": ImplicitDifferentiation, "jfb": JFB, "phantom": PhantomGradient}
