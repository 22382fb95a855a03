"""No leaks: many tiny DEQ steps keep memory flat.

A thousand forward/backward steps -- half of them never call ``backward()``, whose per-call adjoint
node and graph must then die with the output -- must not leave tensors, graphs or hooks behind.
The live tensors are counted with :mod:`gc`; the cyclic garbage collector is disabled during the
steps, so anything freed only by a collection (a reference cycle through a closure, say) shows up
as growth too.
"""

from __future__ import annotations

import gc
import warnings

import pytest
import torch

from deepinv_deq import DEQ


class TinyMap(torch.nn.Module):
    r""":math:`F(x) = 0.2\tanh(Wx) + y`, a contraction with a trainable :math:`W`."""

    def __init__(self, n: int = 4):
        super().__init__()
        self.lin = torch.nn.Linear(n, n, bias=False)
        with torch.no_grad():
            self.lin.weight.mul_(1.0 / torch.linalg.matrix_norm(self.lin.weight, ord=2))

    def forward(self, x, y, physics):
        return 0.2 * torch.tanh(self.lin(x)) + y


def live_tensors() -> tuple[int, int]:
    """Number and total bytes of the tensors the garbage collector tracks."""
    n, nbytes = 0, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance on deprecated module attributes warns
        for obj in gc.get_objects():
            try:
                if isinstance(obj, torch.Tensor):
                    n += 1
                    nbytes += obj.numel() * obj.element_size()
            except ReferenceError:  # weak proxies
                pass
    return n, nbytes


def _step(model, y, backward: bool):
    out = model(y, None)
    if backward:
        out.square().sum().backward()
    return out


@pytest.mark.parametrize("solver, n_steps", [("anderson", 1000), ("fixed_point", 200)])
def test_thousand_steps_keep_memory_flat(solver, n_steps):
    # loose tolerances keep each step to a couple of map evaluations: the test is about what
    # survives a step, not about accuracy
    fmap = TinyMap()
    model = DEQ(
        iteration=fmap,
        solver=solver,
        backward_solver=solver,
        max_iter=30,
        tol=0.05,
        backward_tol=0.05,
        init=lambda y, physics: torch.zeros_like(y),
    )
    y = torch.randn(2, 4)
    params = list(fmap.parameters())
    hooks_before = [len(p._backward_hooks or {}) for p in params]
    counts = []
    gc.collect()
    gc.disable()
    try:
        for k in range(n_steps):
            _step(model, y, backward=(k % 2 == 0))
            if k in (99, n_steps - 1):
                counts.append(live_tensors())
        no_grad_before = live_tensors()
        with torch.no_grad():
            for _ in range(50):
                _step(model, y, backward=False)
        no_grad_after = live_tensors()
    finally:
        gc.enable()
    # no growth between step 100 and the last step (not even in bytes), with or without backward
    assert counts[1] == counts[0], f"live tensors grew from {counts[0]} to {counts[1]}"
    assert no_grad_after == no_grad_before
    # one backward solve per step that called backward, and nothing registered on the parameters
    assert model.backward.n_solves == n_steps // 2
    assert [len(p._backward_hooks or {}) for p in params] == hooks_before
    # the gradient accumulated over the 500 backward steps is finite
    assert all(torch.isfinite(p.grad).all() for p in params)


def test_forward_without_backward_frees_its_graph():
    # the output of a step whose backward is never called is freed by reference counting alone
    import weakref

    fmap = TinyMap()
    model = DEQ(iteration=fmap, max_iter=30, tol=1e-4, init=lambda y, physics: torch.zeros_like(y))
    y = torch.randn(2, 4)
    gc.collect()
    gc.disable()
    try:
        out = model(y, None)
        assert out.requires_grad and out.grad_fn is not None
        ref = weakref.ref(out)
        del out
        assert ref() is None
    finally:
        gc.enable()


def test_statistics_do_not_accumulate():
    # the model keeps the last call's statistics only, not a growing history
    fmap = TinyMap()
    model = DEQ(iteration=fmap, max_iter=30, tol=1e-4, init=lambda y, physics: torch.zeros_like(y))
    y = torch.randn(2, 4)
    for _ in range(20):
        model(y, None).sum().backward()
    assert model.forward_stats.trace.shape[0] == model.forward_stats.nfe <= 30
    # GMRES records one residual per Krylov step; its products also count the true residuals
    assert model.backward_stats.trace.shape[0] <= model.backward_stats.nfe <= 50
