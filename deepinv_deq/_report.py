r"""Private: how solves are reported. The statistics-hook registry shared by
:class:`deepinv_deq.DEQ` and the backward strategies, the failure policy applied to forward and
backward solves alike (``on_failure``), and warnings that point at the user's line."""

from __future__ import annotations

import os
import sys
import warnings
from collections import OrderedDict
from typing import Callable

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from .solvers.base import SolverStats, SolverStatus

POLICIES = ("warn", "jfb", "raise")

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))


class HookRegistry:
    r"""Functions ``hook(kind, stats)`` called after every solve, removable through their handle.

    :Examples:

    Register a hook, call it, remove it:

    >>> from deepinv_deq._report import HookRegistry
    >>> hooks, seen = HookRegistry(), []
    >>> handle = hooks.register(lambda kind, stats: seen.append(kind))
    >>> hooks("forward", None)
    >>> handle.remove()
    >>> hooks("backward", None)
    >>> seen
    ['forward']
    """

    def __init__(self):
        self._hooks: OrderedDict = OrderedDict()

    def register(self, hook: Callable) -> RemovableHandle:
        r"""Add ``hook``; return a handle whose ``remove()`` unregisters it."""
        handle = RemovableHandle(self._hooks)
        self._hooks[handle.id] = hook
        return handle

    def __call__(self, kind: str, stats) -> None:
        for hook in tuple(self._hooks.values()):
            hook(kind, stats)

    def __len__(self) -> int:
        return len(self._hooks)


def warn_at_caller(message: str, category=RuntimeWarning) -> None:
    r"""Warn with the location of the first frame outside deepinv-deq and torch: the user's call
    of the model, or of ``loss.backward()`` for a warning raised during the backward pass (when
    the backward runs in autograd's own thread, as on CUDA, no user frame exists and the warning
    points at the line that raises it)."""
    frame, level = sys._getframe(1), 2
    while frame is not None:
        name = os.path.abspath(frame.f_code.co_filename)
        if not (name.startswith(_PACKAGE_DIR) or name.startswith(_TORCH_DIR)):
            break
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level if frame is not None else 2)


def enforce(stats: SolverStats, policy: str, owner: str, what: str, among: Tensor | None = None):
    r"""Apply the failure policy to the samples of a solve that did not converge.

    :param SolverStats stats: the statistics of the solve.
    :param str policy: ``"warn"``, ``"jfb"`` (warn; the caller falls back to JFB for those
        samples) or ``"raise"`` (:class:`RuntimeError`).
    :param str owner: who reports (``"DEQ"``, ``"ImplicitBackward"``).
    :param str what: ``"forward"`` or ``"backward"``.
    :param torch.Tensor among: boolean mask of the samples to judge. Default: all.
    :return: (:class:`torch.Tensor`, None) the mask of failed samples, or ``None`` when every judged
        sample converged (one host synchronisation).
    """
    bad = stats.status != int(SolverStatus.CONVERGED)
    if among is not None:
        bad = bad & among
    if not bool(bad.any()):
        return None
    codes = [SolverStatus(c) for c in sorted(set(stats.status[bad].tolist()))]
    residual = stats.residual[bad]
    if what == "forward":
        result = (
            "their gradient falls back to JFB."
            if policy == "jfb"
            else "their best iterate is returned, and the implicit gradient assumes a fixed point."
        )
    elif policy == "jfb":
        result = "the gradient falls back to JFB for them."
    elif any(c != SolverStatus.MAX_ITER for c in codes):
        result = "the gradient of these samples is unreliable."
    else:
        result = "the gradient of these samples is approximate."
    message = (
        f"{owner}: the {what} solve did not converge for {int(bad.sum())} of {bad.numel()} samples "
        f"after {stats.nfe} iterations of {stats.solver or 'the solver'} (max relative residual "
        f"{float(residual.max()):.2e}): "
        + "; ".join(f"{c.name}: {c.message}" for c in codes)
        + f"; {result} "
        + " ".join(c.advice for c in codes)
    )
    if policy == "raise":
        raise RuntimeError(message)
    warn_at_caller(message)
    return bad
