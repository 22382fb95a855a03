r"""
Implicit differentiation vs JFB vs unrolling
============================================

Three ways to get a training gradient for a fixed-point model :math:`x^\star = F_\theta(x^\star)`:

- **implicit** differentiation (:class:`deepinv_deq.ImplicitBackward`, ``mode="implicit"``):
  solve :math:`u = J_F(x^\star)^\top u + v` and push :math:`u` through one evaluation of
  :math:`F_\theta` -- the exact gradient of the fixed point, at the cost of a backward solve;
- **JFB** (Jacobian-free backpropagation, ``mode="jfb"``): take :math:`u = v`, i.e. backpropagate
  through the last iteration only;
- **phantom** gradients (``mode="phantom"``): backpropagate through a few damped iterations
  started at the fixed point;
- **unrolling**: run :math:`K` iterations with autograd on and backpropagate through all of them,
  as a deep unrolled network does; memory grows with :math:`K`.

This example measures, on one small deblurring problem in float64, how close each gradient is to
the exact gradient of the fixed point (computed by autograd through a long unrolled run), how long
a forward + backward pass takes, and how much memory autograd keeps for the backward pass.
"""

import time

import matplotlib.pyplot as plt
import numpy as np
import torch

import deepinv as dinv
from deepinv_deq import DEQ, ContractiveDenoiser

_ = torch.manual_seed(0)
dtype = torch.float64

# %%
# A contractive PGD map
# ---------------------
# Gaussian deblurring of 32 x 32 random phantoms, and a :class:`deepinv_deq.ContractiveDenoiser`
# :math:`D(z) = 0.85\, z + R(z)` with :math:`R = W_2 * \tanh(W_1 * z)` a small network. Unlike in
# the other examples, :math:`R`'s last layer is not set to zero (``zero_init=False``): with
# :math:`R = 0`, every layer of :math:`R` but the last would get a zero gradient, and the comparison
# below would say little. Instead the weights are scaled so that
# :math:`\sum|W_1| \cdot \sum|W_2| \le 0.075`, which bounds the Lipschitz constant of :math:`D`,
# hence of the PGD map, by 0.925: the fixed point, and its gradient, are well defined.


def small_residual(features=8, scales=(0.5, 0.15)):
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, features, 3, padding=1, padding_mode="circular"),
        torch.nn.Tanh(),
        torch.nn.Conv2d(features, 1, 3, padding=1, padding_mode="circular"),
    )
    with torch.no_grad():
        for conv, scale in zip((net[0], net[2]), scales, strict=True):
            conv.weight.mul_(scale / conv.weight.abs().sum())
    return net


np.random.seed(0)
phantoms = dinv.utils.RandomPhantomDataset(length=4, size=32, use_dict_output=True)
x = torch.stack([phantoms[i]["x"] for i in range(4)]).to(dtype)
physics = dinv.physics.Blur(
    filter=dinv.physics.functional.blur.gaussian_blur(sigma=(1.0, 1.0)).to(dtype),
    padding="circular",
    noise_model=dinv.physics.GaussianNoise(0.01),
)
y = physics(x)

model = DEQ(
    denoiser=ContractiveDenoiser(small_residual(), epsilon=0.15, zero_init=False).to(dtype),
    iteration="PGD",
    stepsize=1.0,
    max_iter=200,
    tol=1e-12,
    backward="implicit",
    backward_max_iter=200,
    backward_tol=1e-12,
)
params = [p for p in model.parameters() if p.requires_grad]


def loss_fn(x_hat):
    return torch.nn.functional.mse_loss(x_hat, x)


def flat(grads):
    return torch.cat([g.reshape(-1) for g in grads])


# %%
# The reference gradient
# ----------------------
# Autograd through 400 iterations of the map from :math:`A^\top y`: for a contraction this is the
# gradient of the fixed point up to round-off. It is exact but expensive: autograd stores every
# iteration.

x_k = physics.A_adjoint(y)
for _ in range(400):
    x_k = model.map(x_k, y, physics)
reference = flat(torch.autograd.grad(loss_fn(x_k), params))

# %%
# Measuring each method
# ---------------------
# Memory: the bytes of the tensors autograd saves for the backward pass, counted with
# :class:`torch.autograd.graph.saved_tensors_hooks` during the forward pass (on a GPU,
# ``torch.cuda.max_memory_allocated`` tells the same story). Time: the median of three forward +
# backward passes.


def saved_bytes(run):
    seen, total = set(), [0]

    def pack(t):
        key = (t.data_ptr(), t.numel(), t.dtype)
        if key not in seen:
            seen.add(key)
            total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    return out, total[0]


def unrolled(K):
    def run():
        x_k = physics.A_adjoint(y)
        for _ in range(K):
            x_k = model.map(x_k, y, physics)
        return x_k

    return run


def deq(mode, **options):
    m = DEQ(
        denoiser=model.map.denoiser,
        iteration="PGD",
        stepsize=1.0,
        max_iter=200,
        tol=1e-10,
        backward=mode,
        **options,
    )
    deqs.append(m)
    return lambda: m(y, physics)


deqs = []


methods = {
    "implicit (Anderson)": deq("implicit", backward_max_iter=200, backward_tol=1e-10),
    "implicit (GMRES)": deq(
        "implicit", backward_solver="gmres", backward_max_iter=200, backward_tol=1e-7
    ),
    "JFB": deq("jfb"),
    "phantom (5, λ=0.5)": deq("phantom", backward_options={"phantom_steps": 5}),
    "phantom (5, λ=1)": deq(
        "phantom", backward_options={"phantom_steps": 5, "phantom_damping": 1.0}
    ),
    "unrolled K=5": unrolled(5),
    "unrolled K=20": unrolled(20),
}

rows = []
for name, run in methods.items():
    times = []
    for _ in range(3):
        start = time.process_time()
        x_hat, nbytes = saved_bytes(run)
        g = flat(torch.autograd.grad(loss_fn(x_hat), params))
        times.append(time.process_time() - start)
    cos = torch.nn.functional.cosine_similarity(g, reference, dim=0).item()
    rel = ((g - reference).norm() / reference.norm()).item()
    rows.append((name, cos, rel, float(np.median(times)), nbytes / 2**20))

print(f"{'method':<20}{'cosine':>10}{'rel. error':>12}{'CPU (s)':>9}{'saved (MiB)':>13}")
for name, cos, rel, t, mib in rows:
    print(f"{name:<20}{cos:>10.6f}{rel:>12.1e}{t:>9.3f}{mib:>13.2f}")

print("\nthe last solves of each DEQ (forward tolerance 1e-10)")
for name, m in zip(methods, deqs, strict=False):
    backward = m.backward_stats
    print(
        f"{name:<20} forward {m.forward_stats.status_names().count('CONVERGED')}/4 converged",
        end="",
    )
    if backward is not None:
        print(
            f", backward {backward.status_names().count('CONVERGED')}/4 in {backward.nfe} iterations"
        )
    else:
        print(", no backward solve")

# %%
# Implicit differentiation matches the reference to the backward solver's tolerance with the memory
# of a single iteration. JFB costs the least but is only an approximation of the gradient. The
# phantom gradient backpropagates through :math:`k` iterations started at the fixed point, so its
# memory is that of :math:`k` iterations. Undamped (:math:`\lambda = 1`), it sums the first
# :math:`k` terms of the Neumann series :math:`(I - J_F)^{-1} = \sum_i J_F^i` and is closer to the
# exact gradient than JFB (one term). Damped (:math:`\lambda = 0.5`, the default), its five steps
# cover less of the series: it points in almost the right direction (cosine) but its scale is off,
# and its relative error is larger than JFB's here. Unrolling from the initial point computes the
# gradient of a *different* function -- the :math:`K`-th iterate, not the fixed point -- and its
# memory grows linearly with :math:`K`.

plt.rcParams.update({"font.size": 12})
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
names = [r[0] for r in rows]
axes[0].barh(names, [max(r[2], 1e-16) for r in rows], color="C0")
axes[0].set_xscale("log")
axes[0].set_xlabel("relative error of the gradient")
axes[0].invert_yaxis()
axes[1].barh(names, [r[4] for r in rows], color="C1")
axes[1].set_xlabel("memory saved for backward (MiB)")
axes[1].invert_yaxis()
axes[1].set_yticklabels([])
fig.tight_layout()
plt.show()
