r"""The deep equilibrium reconstructor: a fixed-point map, a forward solver and a backward."""

from __future__ import annotations

import contextlib
import inspect
import warnings

from collections import OrderedDict
from typing import Callable

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle
from deepinv.models import Reconstructor

from ._validation import check_choice, reject_unknown
from .implicit import ImplicitBackward
from .maps import build_map
from .solvers import SolverStats, SolverStatus, get_solver

FORWARD_SOLVERS = ("fixed_point", "anderson")


@contextlib.contextmanager
def _explained(action: str):
    # turn a shape/dtype/device error inside torch into a ValueError that says what DEQ was doing
    try:
        yield
    except RuntimeError as e:
        if "out of memory" in str(e):
            raise
        raise ValueError(f"DEQ: {action} failed; check that y, init and the physics fit: {e}") from e


def _parameter_names(fn) -> list[str]:
    skip = {"self", "unknown", "kwargs"}
    return [n for n in inspect.signature(fn).parameters if n not in skip]
INITS = ("adjoint", "pseudo_inverse")


class DEQ(Reconstructor):
    r"""Deep equilibrium model: the reconstruction is the fixed point of one iteration of an algorithm.

    .. math::

        \hat{x} = x^\star \quad\text{with}\quad x^\star = F_\theta(x^\star; y, A),

    where :math:`F_\theta` is e.g. a proximal gradient step whose proximal operator is the learned
    denoiser :math:`D_\theta`. The forward pass solves for :math:`x^\star` without building an
    autograd graph (fixed-point iteration or Anderson acceleration, per-sample stopping); the
    gradient is obtained by implicit differentiation (or JFB / phantom gradients), see
    :class:`deepinv_deq.ImplicitBackward`. Memory is therefore constant in the number of iterations.

    :param torch.nn.Module denoiser: the denoiser :math:`D_\theta`, called ``denoiser(x, sigma)``
        (e.g. :class:`deepinv.models.DnCNN`). Required for the built-in iterations.
    :param str, Callable iteration: ``"PGD"`` (default), ``"HQS"``, ``"RED"`` (see
        :mod:`deepinv_deq.maps`), or a callable ``F(x, y, physics) -> x`` (then ``denoiser``,
        ``stepsize``, ``sigma_denoiser``, ``data_fidelity``, ``lambda_reg`` and
        ``trainable_params`` must be left unset).
    :param float stepsize: step size :math:`\eta` (default 1.0).
    :param float sigma_denoiser: denoiser noise level :math:`\sigma` (default 0.05).
    :param deepinv.optim.DataFidelity data_fidelity: default :class:`deepinv.optim.L2`.
    :param int max_iter: maximum forward map evaluations (default 50; with a solver instance, set
        it on the instance).
    :param float tol: forward relative residual tolerance (default ``1e-4``; likewise).
    :param str, torch.nn.Module solver: ``"anderson"`` (default), ``"fixed_point"`` or a solver
        instance from :mod:`deepinv_deq.solvers`.
    :param str, ImplicitBackward backward: ``"implicit"`` (default), ``"jfb"``, ``"phantom"`` or an
        :class:`ImplicitBackward` instance.
    :param int backward_max_iter: maximum iterations of the implicit backward solve (default 50).
    :param float backward_tol: tolerance of the implicit backward solve (default ``1e-5``).
    :param str backward_solver: ``"anderson"`` (default), ``"fixed_point"`` or ``"gmres"``.
    :param float lambda_reg: regularisation weight of the RED iteration.
    :param tuple trainable_params: scalar parameters to learn, among ``"stepsize"``,
        ``"sigma_denoiser"`` (and ``"lambda_reg"`` for RED).
    :param str, Callable init: initial iterate when none is passed: ``"adjoint"`` (:math:`A^\top y`,
        default, as deepinv's optimisers), ``"pseudo_inverse"`` (:math:`A^\dagger y`) or a callable
        ``init(y, physics)``.
    :param dict solver_options: further options of the forward solver (e.g. ``history_size``).
    :param dict backward_options: further options of :class:`ImplicitBackward`.

    After each call, :attr:`forward_stats` holds the :class:`deepinv_deq.solvers.SolverStats` of the
    forward solve and :attr:`backward_stats` those of the last implicit backward solve; to see every
    solve (an EI step makes several), use :meth:`register_stats_hook` or
    :class:`deepinv_deq.DEQMonitor`.

    |sep|

    :Example:

    >>> import torch, deepinv as dinv
    >>> from deepinv_deq import DEQ
    >>> physics = dinv.physics.Inpainting(img_size=(1, 16, 16), mask=0.7)
    >>> denoiser = dinv.models.DnCNN(1, 1, depth=3, nf=8, pretrained=None)
    >>> model = DEQ(denoiser=denoiser, iteration="PGD", stepsize=1.0, max_iter=20, tol=1e-3)
    >>> x = torch.rand(2, 1, 16, 16)
    >>> y = physics(x)
    >>> x_hat = model(y, physics)
    >>> x_hat.shape, model.forward_stats.nfe <= 20
    (torch.Size([2, 1, 16, 16]), True)
    >>> torch.nn.functional.mse_loss(x_hat, x).backward()  # implicit differentiation
    >>> model.backward_stats.solver
    'anderson'
    """

    def __init__(
        self,
        denoiser: torch.nn.Module | None = None,
        iteration="PGD",
        stepsize: float | None = None,
        sigma_denoiser: float | None = None,
        data_fidelity=None,
        max_iter: int | None = None,
        tol: float | None = None,
        solver="anderson",
        backward="implicit",
        backward_max_iter: int | None = None,
        backward_tol: float | None = None,
        backward_solver: str | None = None,
        lambda_reg: float | None = None,
        trainable_params=(),
        init="adjoint",
        solver_options: dict | None = None,
        backward_options: dict | None = None,
        **unknown,
    ):
        super().__init__()
        reject_unknown("DEQ", unknown, _parameter_names(DEQ.__init__))
        self.map = build_map(
            iteration,
            denoiser=denoiser,
            data_fidelity=data_fidelity,
            stepsize=stepsize,
            sigma_denoiser=sigma_denoiser,
            lambda_reg=lambda_reg,
            trainable_params=tuple(trainable_params),
        )
        solver_options = dict(solver_options or {})
        if isinstance(solver, torch.nn.Module):
            if solver_options or max_iter is not None or tol is not None:
                raise ValueError(
                    "DEQ: max_iter, tol and solver_options cannot be combined with a solver "
                    "instance; set them on the instance."
                )
            self.solver = get_solver(solver, owner="DEQ")
        else:
            self.solver = get_solver(
                solver,
                owner="DEQ",
                allowed=FORWARD_SOLVERS,
                max_iter=50 if max_iter is None else max_iter,
                tol=1e-4 if tol is None else tol,
                **solver_options,
            )
        backward_options = dict(backward_options or {})
        if isinstance(backward, ImplicitBackward):
            if backward_options or any(
                v is not None for v in (backward_max_iter, backward_tol, backward_solver)
            ):
                raise ValueError(
                    "DEQ: backward_max_iter, backward_tol, backward_solver and backward_options "
                    "cannot be combined with an ImplicitBackward instance; set them on the instance."
                )
            self.backward = backward
        else:
            opts = dict(backward_options)
            for name, value in (
                ("max_iter", backward_max_iter),
                ("tol", backward_tol),
                ("solver", backward_solver),
            ):
                if value is not None:
                    if name in opts:
                        raise ValueError(f"DEQ: '{name}' given twice (backward_{name} and backward_options).")
                    opts[name] = value
            self.backward = ImplicitBackward(mode=backward, **opts)
        if callable(init):
            self.init = init
        else:
            self.init = check_choice("DEQ", "init", init, INITS)
        self.forward_stats: SolverStats | None = None
        self._stats_hooks: OrderedDict = OrderedDict()
        self.backward.register_stats_hook(self._dispatch_backward_stats)

    def register_stats_hook(self, hook: Callable[[str, SolverStats], None]) -> RemovableHandle:
        r"""Call ``hook(kind, stats)`` after every solve of this model.

        ``kind`` is ``"forward"`` for a forward solve and ``"backward"`` for an implicit backward
        solve; ``stats`` is its :class:`deepinv_deq.solvers.SolverStats` (tensors stay on the device).
        An EI training step calls the hook several times: one forward and one backward per DEQ call.

        :param Callable hook: the function to call.
        :return: a handle whose ``remove()`` unregisters the hook.
        """
        handle = RemovableHandle(self._stats_hooks)
        self._stats_hooks[handle.id] = hook
        return handle

    def _dispatch_backward_stats(self, kind: str, stats: SolverStats) -> None:
        for hook in tuple(self._stats_hooks.values()):
            hook(kind, stats)

    @property
    def backward_stats(self) -> SolverStats | None:
        r"""Statistics of the last implicit backward solve (``None`` before the first one)."""
        return self.backward.last_stats

    def initial_iterate(self, y: Tensor, physics) -> Tensor:
        r"""The default initial iterate :math:`x_0` (:math:`A^\top y`, :math:`A^\dagger y` or the
        user's ``init`` callable)."""
        if callable(self.init):
            return self.init(y, physics)
        if self.init == "pseudo_inverse":
            return physics.A_dagger(y)
        return physics.A_adjoint(y)

    def _check_measurements(self, y) -> None:
        if not isinstance(y, Tensor):
            raise ValueError(f"DEQ: y must be a tensor, got {type(y).__name__}.")
        if not (y.is_floating_point() or y.is_complex()):
            raise ValueError(f"DEQ: y must be a floating-point tensor, got dtype {y.dtype}.")
        ref = next((t for t in self.parameters() if t.is_floating_point()), None)
        if ref is None:
            ref = next((t for t in self.buffers() if t.is_floating_point()), None)
        if ref is not None:
            if y.device != ref.device:
                raise ValueError(
                    f"DEQ: y is on device {y.device} but the model is on {ref.device}; move one of "
                    "them (e.g. model.to(y.device))."
                )
            if y.real.dtype != ref.dtype:
                raise ValueError(
                    f"DEQ: y has dtype {y.dtype} but the model's parameters have dtype {ref.dtype}; "
                    "convert one of them (e.g. model.to(y.dtype))."
                )

    def _check_init(self, y: Tensor, init: Tensor) -> None:
        # the shape of init is checked by the first map evaluation (see checked_map in forward):
        # computing A^T y only to compare shapes would cost an adjoint on every warm start
        if not isinstance(init, Tensor):
            raise ValueError(f"DEQ: 'init' must be a tensor, got {type(init).__name__}.")
        if init.device != y.device:
            raise ValueError(f"DEQ: 'init' is on {init.device} but y is on {y.device}.")
        if not init.is_floating_point() and not init.is_complex():
            raise ValueError(f"DEQ: 'init' must be a floating-point tensor, got {init.dtype}.")
        if init.real.dtype != y.real.dtype:
            raise ValueError(f"DEQ: 'init' has dtype {init.dtype} but y has dtype {y.dtype}.")

    def forward(
        self,
        y: Tensor,
        physics,
        init: Tensor | None = None,
        x_gt: Tensor | None = None,
        compute_metrics: bool = False,
        **kwargs,
    ):
        r"""Reconstruct :math:`x^\star` from the measurements.

        :param torch.Tensor y: measurements.
        :param deepinv.physics.Physics physics: forward operator.
        :param torch.Tensor init: optional initial iterate (warm start); default from ``init``.
        :param torch.Tensor x_gt: ground truth, used only with ``compute_metrics``.
        :param bool compute_metrics: if ``True``, also return per-iteration metrics in the format of
            :attr:`deepinv.Trainer.plot_convergence_metrics` (``{"residual": [[...]], "psnr":
            [[...]]}``, indexed by sample then iteration).
        :return: the reconstruction, or ``(x, metrics)`` when ``compute_metrics`` is ``True``.
        """
        reject_unknown("DEQ.forward", kwargs, _parameter_names(DEQ.forward))
        self._check_measurements(y)
        if init is not None:
            self._check_init(y, init)
        # one host synchronisation for both finiteness checks
        finite = torch.isfinite(y).all()
        if init is not None:
            finite = finite & torch.isfinite(init).all()
        if not bool(finite):
            if not bool(torch.isfinite(y).all()):
                raise ValueError("DEQ: the measurements y contain NaN or Inf.")
            raise ValueError("DEQ: 'init' contains NaN or Inf.")
        with torch.no_grad(), _explained(f"computing the initial iterate from y of shape {tuple(y.shape)}"):
            x0 = (self.initial_iterate(y, physics) if init is None else init).detach()

        def fmap(x):
            return self.map(x, y, physics)

        callback = None
        metrics = None
        if compute_metrics:
            metrics, callback = self._metrics_recorder(x_gt)
        first = [True]

        def checked_map(x):
            # the first evaluation is where inputs that do not fit the physics or the denoiser
            # fail: name them in the error instead of surfacing a bare torch error
            if first[0]:
                first[0] = False
                with _explained(
                    f"evaluating the fixed-point map on an iterate of shape {tuple(x.shape)} "
                    f"(from y of shape {tuple(y.shape)})"
                ):
                    return fmap(x)
            return fmap(x)

        result = self.solver(checked_map, x0, callback=callback)
        self.forward_stats = result.stats
        for hook in tuple(self._stats_hooks.values()):
            hook("forward", result.stats)
        failed = result.stats.status >= int(SolverStatus.DIVERGED)
        if bool(failed.any()):  # one host synchronisation per forward, not per iteration
            warnings.warn(
                f"DEQ: the forward solve diverged or produced NaN/Inf for {int(failed.sum())} of "
                f"{failed.numel()} samples (status {result.stats.status_names()}); their best finite "
                "iterate is returned. Lower the stepsize or make the denoiser more contractive.",
                RuntimeWarning,
                stacklevel=2,
            )
        if torch.is_grad_enabled():
            x = self.backward(fmap, result.x)
        else:
            x = result.fx
        if compute_metrics:
            return x, self._metrics(result.stats, metrics)
        return x

    @staticmethod
    def _metrics_recorder(x_gt: Tensor | None):
        # PSNR of every iterate is kept on the device and read once after the solve; the residuals
        # come from the solver's own trace (see _metrics)
        from deepinv.loss.metric import PSNR

        psnr = PSNR()
        values: list = []

        def callback(k, x, fx):
            if x_gt is not None:
                values.append(psnr(fx, x_gt).detach())

        return values, callback

    @staticmethod
    def _metrics(stats: SolverStats, psnr_values: list) -> dict:
        residual = stats.trace.T.tolist()  # (B, nfe)
        psnr = torch.stack(psnr_values).T.tolist() if psnr_values else [[] for _ in residual]
        return {"residual": residual, "psnr": psnr}
