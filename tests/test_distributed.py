"""Distributed data-parallel training (issue 7, item 3): DDP over gloo, 2 CPU processes.

One EI training step (deepinv's ``MCLoss`` + ``EILoss``, two DEQ calls per loss) under
:class:`torch.nn.parallel.DistributedDataParallel`, each process holding half of the global
batch, must give the same parameter gradients as a single process on the whole batch (DDP
averages the ranks' gradients; the losses are batch means, so the two agree).

The process group is set up by deepinv's own helper, :class:`deepinv.distributed.DistributedContext`
(from the usual ``RANK``/``WORLD_SIZE`` environment), which therefore works with a DEQ. deepinv's
other distributed tools (``deepinv.distributed.distribute``) split *operators* (stacked physics,
tiled denoisers) across ranks, which is model parallelism, not data parallelism; they are not
needed to train a DEQ data-parallel.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
GLOBAL_BATCH = 4


class TinyDenoiser(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular")
        self.c2 = torch.nn.Conv2d(4, 1, 3, padding=1, padding_mode="circular")
        with torch.no_grad():
            for c in (self.c1, self.c2):
                c.weight.mul_(0.6 / c.weight.abs().sum(dim=(1, 2, 3), keepdim=True))

    def forward(self, x, sigma=None):
        return 0.5 * x + 0.5 * self.c2(torch.tanh(self.c1(x)))


def _setup():
    """Model, physics, data and losses, identical in every process (float64, seeded)."""
    import deepinv as dinv

    from deepinv_deq import DEQ

    torch.manual_seed(0)
    physics = dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.6)
    x = torch.rand(GLOBAL_BATCH, 1, 8, 8)
    y = physics(x)
    model = DEQ(
        denoiser=TinyDenoiser(),
        stepsize=1.0,
        max_iter=100,
        tol=1e-10,
        backward_tol=1e-10,
        backward_max_iter=100,
    )
    losses = [
        dinv.loss.MCLoss(),
        dinv.loss.EILoss(
            transform=dinv.transform.Shift(shift_max=0.3, rng=torch.Generator().manual_seed(3))
        ),
    ]
    return model, physics, y, losses


def _loss(model, physics, y, losses):
    x_net = model(y, physics)
    return sum(loss(x_net=x_net, y=y, physics=physics, model=model) for loss in losses)


def _reference_grads() -> list[torch.Tensor]:
    model, physics, y, losses = _setup()
    _loss(model, physics, y, losses).backward()
    return [p.grad.clone() for p in model.parameters()]


def _worker(rank: int, port: int, out_dir: str):
    from deepinv.distributed import DistributedContext

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(WORLD),
    )
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    with DistributedContext(device_mode="cpu") as ctx:
        assert ctx.use_dist and ctx.world_size == WORLD and dist.get_backend() == "gloo"
        model, physics, y, losses = _setup()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        shard = y.chunk(WORLD)[rank]
        _loss(ddp, physics, shard, losses).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        torch.save(
            {
                "grads": grads,
                "nfe": model.forward_stats.nfe,
                "status": model.forward_stats.status.tolist(),
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)
def test_ddp_ei_step_matches_single_process(tmp_path, dtype64):
    # fork: the children inherit the imported modules (spawn would re-import torch and deepinv,
    # ~10 s each); once CUDA is initialised in this process, forking is unsafe: spawn then
    method = "spawn" if torch.cuda.is_initialized() else "fork"
    mp.start_processes(
        _worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True, start_method=method
    )
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    reference = _reference_grads()
    # DDP all-reduced the gradients: every rank holds the same ones ...
    for g0, g1 in zip(results[0]["grads"], results[1]["grads"], strict=True):
        assert torch.equal(g0, g1)
    # ... equal to the single-process gradient on the global batch
    for g, ref in zip(results[0]["grads"], reference, strict=True):
        assert torch.allclose(g, ref, rtol=1e-6, atol=1e-9), (g - ref).abs().max()
    # and the shards were genuinely different problems (not a vacuous comparison)
    assert all(all(s == 0 for s in r["status"]) for r in results)
    assert any(float(g.abs().max()) > 0 for g in reference)
