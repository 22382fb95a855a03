r"""Shared setup of the benchmarks: one sparse-view CT problem, one contractive PGD map, timers and
memory meters.

The problem is 64x64 parallel-beam CT with 30 views (:class:`deepinv.physics.Tomography`, operator
normalised to :math:`\|A\| = 1`), random-ellipse phantoms, 1% Gaussian noise. The fixed-point map is
the PGD step

.. math::

    F(x) = D\big(x - \eta A^\top(Ax - y)\big), \qquad \eta = 1/\|A\|^2,

with a small DnCNN denoiser made contractive: :math:`D(x) = \rho\,\mathrm{DnCNN}(x)` where the
residual branch of the DnCNN (:math:`\mathrm{DnCNN}(x) = x + R(x)`) is rescaled so that the
Lipschitz constant of :math:`R` (power iteration on its Jacobian at :math:`A^\top y`) is
``branch_lip``; then :math:`\mathrm{Lip}(F) \le \rho(1 + \text{branch\_lip})`. Sparse-view CT has a
large null space on which :math:`I - \eta A^\top A` is the identity, so the contraction comes from
the denoiser alone there, as for a trained DEQ.

Every benchmark script builds its problem with :func:`build_problem` so that all solvers run on
the same map, the same data and the same initial iterate.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch


def parse_args(description: str, extra=None) -> argparse.Namespace:
    r"""Command-line options shared by the benchmark scripts.

    :param str description: the script's description.
    :param Callable extra: optional ``extra(parser)`` adding script-specific options.
    """
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--angles", type=int, default=30, help="number of CT views (sparse view)")
    p.add_argument("--rho", type=float, default=0.9, help="denoiser contraction factor")
    p.add_argument(
        "--branch-lip",
        type=float,
        default=0.05,
        help="Lipschitz constant of the DnCNN residual branch",
    )
    p.add_argument(
        "--repeats", type=int, default=5, help="timed repetitions (the median is reported)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: less noise on a shared machine)",
    )
    p.add_argument("--seed", type=int, default=0)
    if extra is not None:
        extra(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    return args


class ContractiveDnCNN(torch.nn.Module):
    r"""A small DnCNN scaled to be a contraction: :math:`D(x) = \rho\,(x + R(x))`.

    :param float rho: overall contraction factor :math:`\rho`.
    :param int depth: DnCNN depth.
    :param int nf: DnCNN features.
    """

    def __init__(self, rho: float = 0.9, depth: int = 5, nf: int = 16):
        super().__init__()
        import deepinv as dinv

        self.net = dinv.models.DnCNN(1, 1, depth=depth, nf=nf, pretrained=None)
        self.rho = rho

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor, branch_lip: float, n_iter: int = 30) -> float:
        r"""Rescale the last convolution so that the Jacobian of the residual branch at ``x`` has
        spectral norm ``branch_lip`` (power iteration). Returns the norm before rescaling."""

        def branch(z):
            return self.net(z) - z

        v = torch.randn_like(x)
        lip = 1.0
        for _ in range(n_iter):
            v = v / torch.linalg.vector_norm(v)
            with torch.enable_grad():
                _, v = torch.func.jvp(branch, (x,), (v,))
            lip = float(torch.linalg.vector_norm(v))
        scale = branch_lip / lip
        self.net.out_conv.weight.mul_(scale)
        if self.net.out_conv.bias is not None:
            self.net.out_conv.bias.mul_(scale)
        return lip

    def forward(self, x: torch.Tensor, sigma=None) -> torch.Tensor:
        return self.rho * self.net(x, sigma)


class CountingDenoiser(torch.nn.Module):
    r"""Wraps a denoiser and counts its calls: each PGD map evaluation calls the denoiser exactly
    once, in our maps and in deepinv's ``PGD``, so the count is the number of map evaluations."""

    def __init__(self, denoiser: torch.nn.Module):
        super().__init__()
        self.denoiser = denoiser
        self.calls = 0

    def forward(self, x, sigma=None):
        self.calls += 1
        return self.denoiser(x, sigma)


@dataclass
class Problem:
    r"""Everything a benchmark needs: physics, data, the counted denoiser and map settings."""

    physics: object
    x: torch.Tensor
    y: torch.Tensor
    denoiser: CountingDenoiser
    stepsize: float
    sigma: float
    device: torch.device

    def pgd_map(self):
        r"""Our :class:`deepinv_deq.maps.PGDMap` on this problem."""
        from deepinv_deq.maps import PGDMap

        return PGDMap(self.denoiser, stepsize=self.stepsize, sigma_denoiser=self.sigma).to(
            self.device
        )

    def x0(self) -> torch.Tensor:
        r"""The common initial iterate :math:`A^\top y`."""
        with torch.no_grad():
            return self.physics.A_adjoint(self.y)


def quiet_library_notices() -> None:
    r"""Silence deepinv's and torch's deprecation and user notices, never the solvers'
    ``RuntimeWarning`` s: a solve that stops at its cap must show in the benchmark's output."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)


def build_problem(args: argparse.Namespace) -> Problem:
    r"""Build the benchmark problem from the parsed options (deterministic given ``--seed``)."""
    import deepinv as dinv

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)  # RandomPhantomDataset draws from numpy's global RNG
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        physics = dinv.physics.Tomography(
            angles=args.angles, img_width=args.img_size, circle=False, normalize=True, device=device
        )
        data = dinv.utils.RandomPhantomDataset(
            length=args.batch_size, size=args.img_size, n_data=1, use_dict_output=True
        )
        x = torch.stack([data[i]["x"] for i in range(args.batch_size)]).to(device)
    with torch.no_grad():
        y = physics.A(x)
        y = y + 0.01 * y.abs().max() * torch.randn_like(y)
        norm = float(physics.compute_norm(torch.randn_like(x[:1]), verbose=False))
    den = ContractiveDnCNN(rho=args.rho).to(device)
    den.calibrate(physics.A_adjoint(y), args.branch_lip)
    return Problem(
        physics=physics,
        x=x,
        y=y,
        denoiser=CountingDenoiser(den),
        stepsize=1.0 / norm,
        sigma=0.05,
        device=device,
    )


def synchronize(device: torch.device) -> None:
    r"""Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device):
    r"""The clock the benchmarks use: on CPU the CPU time of this process
    (:func:`time.process_time`), which does not count the time spent waiting for a core on a
    shared machine; on CUDA the wall clock (:func:`time.perf_counter`) around synchronisations."""
    return time.perf_counter if device.type == "cuda" else time.process_time


def timed(fn, device: torch.device):
    r"""Run ``fn()`` once; return ``(result, seconds)`` with device synchronisation."""
    now = clock(device)
    synchronize(device)
    t0 = now()
    out = fn()
    synchronize(device)
    return out, now() - t0


def repeat(fn, device: torch.device, repeats: int, warmup: int = 1):
    r"""Time ``fn`` ``repeats`` times after ``warmup`` untimed runs.

    :return: ``(last result, list of seconds)``.
    """
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        out, dt = timed(fn, device)
        times.append(dt)
    return out, times


def median(values) -> float:
    r"""Median of a list of numbers."""
    return statistics.median(values)


def spread(values) -> float:
    r"""Relative spread of repeated timings, :math:`(\max - \min) / \mathrm{median}`."""
    m = statistics.median(values)
    return (max(values) - min(values)) / m if m > 0 else 0.0


@contextlib.contextmanager
def saved_tensor_meter(exclude=()):
    r"""Measure the memory held by the autograd graph, on any device.

    Inside the context, every tensor that autograd saves for the backward pass goes through a
    :func:`torch.autograd.graph.saved_tensors_hooks` pack hook, which records its storage. The
    meter reports the bytes of the distinct storages saved (a storage saved by several operations
    counts once), excluding the storages of the tensors in ``exclude`` (the model's parameters,
    which exist with or without a graph). Since nothing saved is freed before ``backward()``, this
    is the peak memory of the graph of one training step. It does not count transient
    workspaces (activations freed right away, solver buffers), see the README.

    Yields a dict whose ``"bytes"`` entry is filled on exit.
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}
    report = {"bytes": 0}

    def pack(t):
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in skip and ptr not in seen:
            seen[ptr] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield report
    report["bytes"] = sum(seen.values())


def markdown_table(header: list[str], rows: list[list]) -> str:
    r"""Format rows as a Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def describe(args: argparse.Namespace) -> str:
    r"""One line describing the machine and problem, printed above each table."""
    return (
        f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} CPU thread(s), "
        f"{'wall' if args.device.startswith('cuda') else 'CPU'} time; "
        f"CT {args.img_size}x{args.img_size}, {args.angles} views, batch {args.batch_size}, "
        f"rho={args.rho}, branch_lip={args.branch_lip}, median of {args.repeats} runs"
    )
