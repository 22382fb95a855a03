r"""Solver statistics of a DEQ during training, in the deepinv Trainer's usual output.

A :class:`DEQMonitor` attaches to a :class:`deepinv_deq.DEQ` and records the
:class:`deepinv_deq.solvers.SolverStats` of every forward solve and of every implicit backward solve
(a training step of an EI loss makes several of each). :meth:`DEQMonitor.metrics` returns objects
that :class:`deepinv.Trainer` accepts as metrics, so the numbers appear next to the losses in the
progress bar, the training history and wandb/mlflow logs::

    monitor = DEQMonitor(model)
    trainer = dinv.Trainer(model, ..., metrics=[dinv.metric.PSNR(), *monitor.metrics()])

Each metric reports an aggregate over the solves recorded since the same metric was last read,
so a rising residual or a falling convergence rate shows as soon as the DEQ stops converging.
A ``callback`` is also called with every record.

With ``spectral_radius_every=N`` the monitor also estimates the spectral radius
:math:`\rho(J_F)` of the map's Jacobian at the reconstruction every ``N`` metric evaluations
(:func:`deepinv_deq.spectral_radius`, a few power iterations warm-started from the previous
estimate's vector), reported as ``DEQSpectralRadius``: a DEQ is well posed while
:math:`\rho(J_F) < 1`, and a value creeping towards 1 announces slow or failing solves before
they happen.
"""

from __future__ import annotations

import weakref
from collections import deque
from typing import Callable

import torch
from torch import Tensor

from ._validation import check_float, check_int
from .loss import is_deq
from .solvers import SolverStats
from .stabilisers import _power_iteration

__all__ = ["DEQMonitor", "SolveRecord", "QUANTITIES"]

#: quantities :meth:`DEQMonitor.metrics` can report, with the class name shown in the logs
QUANTITIES = {
    "forward_nfe": "DEQForwardNFE",
    "forward_residual": "DEQForwardResidual",
    "backward_nfe": "DEQBackwardNFE",
    "backward_residual": "DEQBackwardResidual",
    "not_converged": "DEQNotConverged",
    "spectral_radius": "DEQSpectralRadius",
}


class SolveRecord:
    r"""One recorded solve.

    :param str kind: ``"forward"`` or ``"backward"``.
    :param SolverStats stats: its statistics (tensors stay on the device; nothing is synchronised
        until the record is read).

    |sep|

    :Examples:

    The record of one forward solve:

    >>> import torch
    >>> from deepinv_deq.monitor import SolveRecord
    >>> from deepinv_deq.solvers import FixedPointIteration
    >>> result = FixedPointIteration(tol=1e-6)(lambda x: 0.5 * x + 1, torch.zeros(2, 3))
    >>> rec = SolveRecord("forward", result.stats)
    >>> rec.kind, bool(rec.stats.all_converged)
    ('forward', True)
    """

    __slots__ = ("kind", "stats")

    def __init__(self, kind: str, stats: SolverStats):
        self.kind = kind
        self.stats = stats

    def __repr__(self) -> str:
        return f"SolveRecord({self.kind!r}, {self.stats!r})"


class _MonitorMetric(torch.nn.Module):
    # One quantity; each instance keeps its own queue of unread records.
    quantity = ""
    lower_better = True

    def __init__(self, monitor: "DEQMonitor"):
        super().__init__()
        self._monitor = [monitor]  # a list: keep the monitor out of the module tree
        self._pending: deque = deque(maxlen=monitor.max_history)
        monitor._readers.add(self)  # a weak reference: released with the metric

    def forward(self, x_net: Tensor = None, model=None, y=None, physics=None, **kwargs) -> Tensor:
        monitor = self._monitor[0]
        if monitor.model is None and is_deq(model):
            monitor.attach(model)
        device = x_net.device if isinstance(x_net, Tensor) else None
        if self.quantity == "spectral_radius":
            value = monitor._spectral_radius_metric(x_net, model, y, physics)
            return torch.tensor([value], device=device)
        records = list(self._pending)
        self._pending.clear()
        kind = "backward" if self.quantity.startswith("backward") else "forward"
        if not records and model is not None:  # nothing recorded yet: the model's last solves
            records = monitor._current(model)
        value = _aggregate(self.quantity, records, kind)
        return torch.tensor([value], device=device)


def _aggregate(quantity: str, records: list, kind: str) -> float:
    if quantity == "not_converged":
        bad = sum(int((~r.stats.converged).sum()) for r in records)
        total = sum(int(r.stats.status.numel()) for r in records)
        return bad / total if total else 0.0
    chosen = [r.stats for r in records if r.kind == kind]
    if not chosen:
        return 0.0
    if quantity.endswith("nfe"):
        return sum(s.nfe for s in chosen) / len(chosen)
    residuals = [float(s.residual.max()) for s in chosen if s.residual.numel()]
    return max(residuals) if residuals else 0.0


class DEQMonitor:
    r"""Record the forward and backward solver statistics of a DEQ and report them while training.

    After :meth:`attach`, every forward solve of the model and every implicit backward solve
    (see :class:`deepinv_deq.ImplicitBackward`) is stored as a :class:`SolveRecord` in
    :attr:`history` (the last ``max_history`` ones) and passed to ``callback``.
    :meth:`metrics` returns Trainer-compatible metrics, one per quantity:

    - ``forward_nfe`` (logged as ``DEQForwardNFE``): mean number of map evaluations per forward solve;
    - ``forward_residual`` (``DEQForwardResidual``): largest relative residual
      :math:`\|F(x)-x\|/\|x\|` of the forward solves;
    - ``backward_nfe`` (``DEQBackwardNFE``), ``backward_residual`` (``DEQBackwardResidual``): the
      same for the backward solves (0 when none ran, e.g. in evaluation or with JFB);
    - ``not_converged`` (``DEQNotConverged``): fraction of (sample, solve) pairs that did not reach
      their tolerance;
    - ``spectral_radius`` (``DEQSpectralRadius``, only with ``spectral_radius_every > 0``): the
      largest per-sample estimate of :math:`\rho(J_F(\hat x))` at the reconstruction the metric
      is given, re-estimated every ``spectral_radius_every`` evaluations of the metric (the last
      estimate is reported in between; NaN for a model that is not a DEQ, e.g. the Trainer's
      no-learning comparison). Each estimate costs one differentiable map evaluation and up to
      ``spectral_radius_iter`` vector-Jacobian products; all estimates are kept in
      :attr:`spectral_radii`.

    Each aggregate covers the solves since that metric was last evaluated (by the Trainer: one
    training step, i.e. the reconstruction plus the extra solves of the losses, and its backward).
    Reading a record synchronises with the device once; recording does not.

    :param deepinv_deq.DEQ model: the model to attach to now (or later with :meth:`attach`; a
        metric attaches to the model it is given on its first call).
    :param Callable callback: optional ``callback(record)`` called with every :class:`SolveRecord`.
    :param int max_history: number of records kept. Default: ``1000``.
    :param int spectral_radius_every: estimate :math:`\rho(J_F)` every that many evaluations of the
        ``spectral_radius`` metric (one per training step with :class:`deepinv.Trainer`); ``0``
        turns the estimate off. Default: ``0``.
    :param int spectral_radius_iter: maximum power iterations per estimate. Default: ``20``.
    :param float spectral_radius_tol: relative change at which the power iteration stops.
        Default: ``1e-3``.

    |sep|

    :Examples:

    Attach to a DEQ, reconstruct, and read the number of map evaluations as the Trainer would:

    >>> import torch, deepinv as dinv
    >>> from deepinv_deq import DEQ, DEQMonitor
    >>> physics = dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.6)
    >>> model = DEQ(denoiser=dinv.models.MedianFilter(), iteration="PGD", max_iter=30)
    >>> monitor = DEQMonitor(model)
    >>> y = physics(torch.rand(2, 1, 8, 8))
    >>> x_net = model(y, physics)
    >>> [r.kind for r in monitor.history]
    ['forward']
    >>> nfe = monitor.metrics(["forward_nfe"])[0]
    >>> bool(nfe(x_net=x_net, model=model) == model.forward_stats.nfe)
    True
    """

    def __init__(
        self,
        model=None,
        callback: Callable[[SolveRecord], None] | None = None,
        max_history: int = 1000,
        spectral_radius_every: int = 0,
        spectral_radius_iter: int = 20,
        spectral_radius_tol: float = 1e-3,
    ):
        if callback is not None and not callable(callback):
            raise ValueError(f"DEQMonitor: 'callback' must be callable, got {callback!r}.")
        self.max_history = check_int("DEQMonitor", "max_history", max_history, 1)
        self.spectral_radius_every = check_int(
            "DEQMonitor", "spectral_radius_every", spectral_radius_every, 0
        )
        self.spectral_radius_iter = check_int(
            "DEQMonitor", "spectral_radius_iter", spectral_radius_iter, 1
        )
        self.spectral_radius_tol = check_float(
            "DEQMonitor", "spectral_radius_tol", spectral_radius_tol, 0.0
        )
        #: every estimate of the spectral radius: ``(metric evaluation index, per-sample tensor)``
        self.spectral_radii: list = []
        self._rho_calls = 0
        self._rho_vector = None
        self.callback = callback
        self.history: deque = deque(maxlen=self.max_history)
        # the metrics reading the records, held weakly: a metric that is dropped stops receiving
        self._readers: weakref.WeakSet = weakref.WeakSet()
        self._handles: list = []
        self.model = None
        if model is not None:
            self.attach(model)

    def attach(self, model) -> "DEQMonitor":
        r"""Start recording the solves of ``model``.

        :param deepinv_deq.DEQ model: the DEQ to monitor.
        :return: the monitor itself.
        """
        from .deq import DEQ

        if not isinstance(model, DEQ):
            raise ValueError(
                f"DEQMonitor: can only monitor a deepinv_deq.DEQ, got {type(model).__name__}."
            )
        if self.model is not None:
            if self.model is model:
                return self
            raise ValueError("DEQMonitor: already attached to another model; call detach() first.")
        self.model = model
        self._handles = [model.register_stats_hook(self._record)]
        return self

    def detach(self) -> None:
        r"""Stop recording, and release the records that the metrics had not read yet."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self.model = None
        for metric in list(self._readers):
            metric._pending.clear()
        self._readers.clear()

    def metrics(self, quantities=None) -> list:
        r"""Trainer-compatible metrics reporting the recorded statistics.

        :param tuple quantities: names among ``"forward_nfe"``, ``"forward_residual"``,
            ``"backward_nfe"``, ``"backward_residual"``, ``"not_converged"``,
            ``"spectral_radius"``. Default: ``None``, meaning all (``"spectral_radius"`` only when
            ``spectral_radius_every > 0``).
        :return: a list of :class:`torch.nn.Module`, each called as
            ``metric(x_net=..., model=..., y=..., physics=...)`` and returning a tensor of shape ``(1,)``.
        """
        if quantities is None:
            quantities = [
                q for q in QUANTITIES if q != "spectral_radius" or self.spectral_radius_every > 0
            ]
        if isinstance(quantities, str):
            quantities = (quantities,)
        out = []
        for q in quantities:
            if q not in QUANTITIES:
                raise ValueError(
                    f"DEQMonitor: unknown quantity {q!r}; valid: {sorted(QUANTITIES)}."
                )
            if q == "spectral_radius" and self.spectral_radius_every == 0:
                raise ValueError(
                    "DEQMonitor: the 'spectral_radius' metric needs spectral_radius_every > 0 "
                    "(estimate every that many steps)."
                )
            cls = type(QUANTITIES[q], (_MonitorMetric,), {"quantity": q, "__module__": __name__})
            out.append(cls(self))
        return out

    def summary(self) -> dict:
        r"""Aggregates over :attr:`history`: the value of each quantity of :meth:`metrics`
        (``"spectral_radius"``: the largest value of the last estimate, NaN if none)."""
        records = list(self.history)
        out = {
            q: _aggregate(q, records, "backward" if q.startswith("backward") else "forward")
            for q in QUANTITIES
            if q != "spectral_radius"
        }
        out["spectral_radius"] = (
            float(self.spectral_radii[-1][1].max()) if self.spectral_radii else float("nan")
        )
        return out

    # -- spectral radius ----------------------------------------------------------------------
    def _spectral_radius_metric(self, x_net, model, y, physics) -> float:
        if not is_deq(model) or not isinstance(x_net, Tensor) or y is None:
            return float("nan")
        call = self._rho_calls
        self._rho_calls += 1
        if call % self.spectral_radius_every == 0 or not self.spectral_radii:
            rho, self._rho_vector = _power_iteration(
                model.map,
                x_net,
                y,
                physics,
                self.spectral_radius_iter,
                self.spectral_radius_tol,
                init=self._rho_vector,
            )
            self.spectral_radii.append((call, rho.cpu()))
        return float(self.spectral_radii[-1][1].max())

    # -- recording ----------------------------------------------------------------------------
    def _record(self, kind: str, stats: SolverStats | None) -> None:
        if stats is None:
            return
        rec = SolveRecord(kind, stats)
        self.history.append(rec)
        for metric in list(self._readers):
            metric._pending.append(rec)
        if self.callback is not None:
            self.callback(rec)

    def _current(self, model) -> list:
        out = []
        if getattr(model, "forward_stats", None) is not None:
            out.append(SolveRecord("forward", model.forward_stats))
        if getattr(model, "backward_stats", None) is not None:
            out.append(SolveRecord("backward", model.backward_stats))
        return out
