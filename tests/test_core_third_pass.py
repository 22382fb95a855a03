"""Issue 16, items 5-8: the contractive denoiser's output layer, frozen models, out-of-memory
errors and the monitor's readers. Each test failed on 0.2.0."""

import gc

import deepinv as dinv
import pytest
import torch

from deepinv_deq import DEQ, ContractiveDenoiser, DEQMonitor


class OutputFirst(torch.nn.Module):
    # the output convolution is defined (registered) first and used last
    def __init__(self):
        super().__init__()
        self.out = torch.nn.Conv2d(8, 1, 3, padding=1)
        self.inp = torch.nn.Conv2d(1, 8, 3, padding=1)

    def forward(self, x):
        return self.out(torch.relu(self.inp(x)))


class ShiftedOutput(torch.nn.Module):
    # an operation after the output layer: zeroing that layer leaves sigmoid(0) = 0.5
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x):
        return torch.sigmoid(self.conv(x))


def test_contractive_denoiser_zeroes_the_layer_that_produces_the_output():
    torch.manual_seed(0)
    D = ContractiveDenoiser(OutputFirst())
    x = torch.rand(2, 1, 12, 12)
    assert torch.allclose(D(x, 0.05), 0.9 * x)  # on 0.2: 11 % off (the input layer was zeroed)
    assert D.residual.inp.weight.abs().sum() > 0 and D.residual.out.weight.abs().sum() == 0


def test_contractive_denoiser_refuses_a_branch_it_cannot_make_zero():
    with pytest.raises(ValueError, match="does not make the branch zero"):
        ContractiveDenoiser(ShiftedOutput())
    ContractiveDenoiser(ShiftedOutput(), zero_init=False)  # the user's choice


def test_contractive_denoiser_probes_vector_networks():
    net = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh(), torch.nn.Linear(4, 6))
    D = ContractiveDenoiser(net, epsilon=0.2)
    x = torch.rand(3, 6)
    assert torch.allclose(D(x), 0.8 * x)


def test_frozen_deq_attaches_no_backward_solve():
    # on 0.2 a frozen model under grad mode ran a full adjoint solve (and could warn) on every
    # downstream backward, although nothing upstream needed a gradient
    physics = dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.6)
    model = DEQ(denoiser=ContractiveDenoiser(depth=3, width=4), max_iter=50)
    model.requires_grad_(False)
    solves = []
    model.register_stats_hook(lambda kind, stats: solves.append(kind))
    y = physics(torch.rand(2, 1, 8, 8))
    other = torch.ones(1, requires_grad=True)
    out = model(y, physics)
    assert not out.requires_grad
    (out.sum() * other).backward()
    assert solves == ["forward"] and model.backward_stats is None
    assert other.grad is not None
    # a measurement that requires a gradient does get the implicit gradient
    y = y.clone().requires_grad_()
    model(y, physics).sum().backward()
    assert solves[-1] == "backward" and y.grad is not None


def test_frozen_model_with_a_gradient_through_a_closure_still_differentiates():
    theta = torch.tensor(0.5, requires_grad=True)  # captured by the map, not a parameter
    model = DEQ(
        iteration=lambda x, y, physics: theta * torch.tanh(x) + y,
        init=lambda y, physics: torch.zeros_like(y),
        max_iter=100,
        tol=1e-8,
    )
    model(torch.ones(1, 4), None).sum().backward()
    assert model.backward_stats is not None and theta.grad is not None


class OutOfMemoryPhysics(dinv.physics.Denoising):
    def __init__(self, error):
        super().__init__()
        self.error = error

    def A_adjoint(self, y, **kwargs):
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 GB"),
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    ],
)
def test_out_of_memory_passes_through_untouched(error):
    # on 0.2 a CPU allocation failure became "ValueError: y ... does not fit the physics"
    def fmap(x, y, physics):
        raise error

    model = DEQ(iteration=fmap, init=lambda y, physics: torch.zeros_like(y))
    with pytest.raises(type(error)) as raised:
        model(torch.ones(1, 4), OutOfMemoryPhysics(error))
    assert raised.value is error
    model = DEQ(denoiser=ContractiveDenoiser(depth=2, width=2))  # the initial iterate A^T y
    with pytest.raises(type(error)) as raised:
        model(torch.ones(1, 1, 4, 4), OutOfMemoryPhysics(error))
    assert raised.value is error


def test_monitor_releases_its_readers():
    # on 0.2, 20 calls to metrics() left 100 queues holding every record, even after detach()
    physics = dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.6)
    model = DEQ(denoiser=ContractiveDenoiser(depth=2, width=4), max_iter=30)
    monitor = DEQMonitor(model)
    for _ in range(20):
        monitor.metrics()
    gc.collect()
    assert len(monitor._readers) == 0  # metrics that were dropped read nothing
    kept = monitor.metrics()
    y = physics(torch.rand(2, 1, 8, 8))
    model(y, physics).sum().backward()
    assert len(monitor._readers) == len(kept)
    assert all(len(m._pending) == 2 for m in kept)  # one forward and one backward record
    monitor.detach()
    assert len(monitor._readers) == 0 and all(len(m._pending) == 0 for m in kept)


def test_data_parallel_replicas_are_refused_clearly():
    # on 0.2 DataParallel's replicas set forward_stats on themselves (lost) and shared the hooks
    physics = dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.6)
    model = DEQ(denoiser=ContractiveDenoiser(depth=2, width=4), max_iter=30)
    y = physics(torch.rand(2, 1, 8, 8))
    replica = model._replicate_for_data_parallel()  # what DataParallel makes on each GPU
    with pytest.raises(RuntimeError, match="DistributedDataParallel"):
        replica(y, physics)
    # without GPUs DataParallel calls the model itself: that works and keeps the statistics
    wrapped = torch.nn.DataParallel(model)
    wrapped(y, physics)
    assert model.forward_stats is not None and model.forward_stats.all_converged
