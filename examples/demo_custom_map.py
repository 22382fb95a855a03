r"""
Your own fixed-point map with ImplicitBackward
==============================================

:class:`deepinv_deq.ImplicitBackward` differentiates through the fixed point of *any* map
:math:`x = F_\theta(x)`, not only the PGD/HQS/RED iterations built into
:class:`deepinv_deq.DEQ`. It needs only PyTorch: a callable closing over the parameters and the
inputs, and a fixed point computed without autograd.

This example

1. writes a small learned fixed-point layer for 1D deblurring,
2. checks its implicit gradient against autograd through a long unrolled run (in float64),
3. trains it, and
4. plugs the same map into :class:`deepinv_deq.DEQ` as a callable ``iteration``.
"""

import time

import matplotlib.pyplot as plt
import torch

import deepinv as dinv
from deepinv_deq import DEQ, ImplicitBackward
from deepinv_deq.solvers import AndersonAcceleration

torch.manual_seed(0)

# %%
# A toy inverse problem
# ---------------------
# Piecewise-constant 1D signals of length 64, blurred by a Gaussian kernel (circular boundary) with
# a little Gaussian noise. The blur is symmetric, so the adjoint is the same convolution.

n, batch = 64, 8
kernel = torch.exp(-0.5 * (torch.arange(-6, 7, dtype=torch.float64) / 2.5) ** 2)
kernel = (kernel / kernel.sum()).reshape(1, 1, -1)


def blur(x):
    return torch.nn.functional.conv1d(
        torch.nn.functional.pad(x, (6, 6), mode="circular"), kernel.to(x.dtype)
    )


def signals(b, generator=None):
    jumps = (torch.rand(b, 1, n, generator=generator) < 0.08).double()
    heights = torch.randn(b, 1, n, generator=generator, dtype=torch.float64)
    return torch.cumsum(jumps * heights, dim=-1) * 0.5


def measure(x, generator=None):
    return blur(x) + 0.02 * torch.randn(x.shape, generator=generator, dtype=x.dtype)


# %%
# The fixed-point map
# -------------------
# One gradient step on :math:`\tfrac12\|Ax-y\|^2`, averaged with a small learned network:
#
# .. math::
#
#    F_\theta(x; y) = \tfrac12\, z + \tfrac12\, h_\theta(z), \qquad z = x - \eta A^\top(Ax - y),
#
# where :math:`h_\theta` is a two-layer convolutional network. The gradient step is non-expansive
# for :math:`\eta \le 1/\|A\|^2`, but not contractive (the blur kills high frequencies). Each
# convolution of :math:`h_\theta` is rescaled so that its :math:`\ell_1` norm, which bounds its
# Lipschitz constant, is at most 0.9; then :math:`F_\theta` is a contraction (Lipschitz constant
# at most :math:`\tfrac12 + \tfrac12 \cdot 0.81`), so the forward and backward solves converge
# for every value of the weights -- not only at initialisation.


class DeblurLayer(torch.nn.Module):
    def __init__(self, features=8, stepsize=1.0):
        super().__init__()
        self.conv1 = torch.nn.Conv1d(1, features, 5, padding=2, padding_mode="circular")
        self.conv2 = torch.nn.Conv1d(features, 1, 5, padding=2, padding_mode="circular")
        self.stepsize = stepsize

    @staticmethod
    def _conv(conv, x):
        w = conv.weight
        w = 0.9 * w / torch.clamp(w.abs().sum(), min=1.0)
        return torch.nn.functional.conv1d(
            torch.nn.functional.pad(x, (2, 2), mode="circular"), w, conv.bias
        )

    def forward(self, x, y, physics=None):
        z = x - self.stepsize * blur(blur(x) - y)
        h = self._conv(self.conv2, torch.tanh(self._conv(self.conv1, z)))
        return 0.5 * z + 0.5 * h


layer = DeblurLayer().double()
x_true = signals(batch)
y = measure(x_true)


def F(x):  # the map as ImplicitBackward sees it: closes over the parameters and y
    return layer(x, y)


# %%
# Implicit gradient vs a long unrolled reference
# ----------------------------------------------
# Forward: Anderson acceleration to a tight tolerance, without autograd. Backward: the implicit
# gradient, computed by each of the three backward solvers. Reference: plain autograd through 300
# iterations of the same map from the same start -- exact for this contraction, but its memory
# grows with the number of iterations.

solver = AndersonAcceleration(max_iter=200, tol=1e-13, history_size=6)
params = [p for p in layer.parameters() if p.requires_grad]


def flat_grad(loss):
    grads = torch.autograd.grad(loss, params + [y_var])
    return torch.cat([g.reshape(-1) for g in grads])


y_var = y.clone().requires_grad_()


def F_var(x):  # the same map, differentiable with respect to y as well
    return layer(x, y_var)


x0 = blur(y)
with torch.no_grad():
    result = solver(F_var, x0)
print("forward:", result.stats)

x = x0
for _ in range(300):
    x = F_var(x)
reference = flat_grad(((x - x_true) ** 2).mean())

for backward_solver in ("fixed_point", "anderson", "gmres"):
    ib = ImplicitBackward(mode="implicit", solver=backward_solver, max_iter=200, tol=1e-9)
    z = ib(F_var, result.x)
    g = flat_grad(((z - x_true) ** 2).mean())
    cos = torch.nn.functional.cosine_similarity(g, reference, dim=0).item()
    rel = ((g - reference).norm() / reference.norm()).item()
    print(
        f"implicit ({backward_solver:>11}): cosine {cos:.8f}, relative error {rel:.1e}, "
        f"{ib.last_stats.nfe} backward iterations"
    )

z = ImplicitBackward(mode="jfb")(F_var, result.x)
g = flat_grad(((z - x_true) ** 2).mean())
print(
    f"JFB                   : cosine {torch.nn.functional.cosine_similarity(g, reference, dim=0).item():.8f}, "
    f"relative error {((g - reference).norm() / reference.norm()).item():.1e}"
)

# %%
# The implicit gradients agree with the unrolled reference to solver precision, whatever the
# backward solver, and they reach :math:`y` as well as the network weights. JFB, which drops the
# Jacobian term, is cheaper but visibly off.
#
# Training the layer
# ------------------
# A short supervised training in float32. The training loop is plain PyTorch: solve, attach the
# implicit backward, call ``backward()``.

layer = DeblurLayer().float()
optimizer = torch.optim.Adam(layer.parameters(), lr=3e-3)
forward_solver = AndersonAcceleration(max_iter=60, tol=1e-4)
backward = ImplicitBackward(mode="implicit", max_iter=60, tol=1e-5)
gen = torch.Generator().manual_seed(1)
losses = []
start = time.perf_counter()
for step in range(100):
    x_true = signals(batch, gen).float()
    y = measure(x_true.double(), gen).float()

    def F(x):
        return layer(x, y)

    x_star = forward_solver(F, blur(y)).x
    x_hat = backward(F, x_star)
    loss = ((x_hat - x_true) ** 2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
print(f"100 training steps in {time.perf_counter() - start:.1f} s; last forward solve: {forward_solver(F, blur(y)).stats}")

# %%
# Plugging the map into DEQ
# -------------------------
# The same layer, called as ``F(x, y, physics)``, can be the ``iteration`` of a
# :class:`deepinv_deq.DEQ`, which then is a deepinv ``Reconstructor``: it works with
# :deepinv:`deepinv.Trainer` and deepinv's losses. The physics here is a
# :deepinv:`deepinv.physics.LinearPhysics` built from the blur.

physics = dinv.physics.LinearPhysics(A=blur, A_adjoint=blur)
model = DEQ(iteration=layer, max_iter=60, tol=1e-5)
x_test = signals(4, torch.Generator().manual_seed(2)).float()
y_test = measure(x_test.double(), torch.Generator().manual_seed(3)).float()
with torch.no_grad():
    x_hat = model(y_test, physics)
print("DEQ with the custom map:", model.forward_stats)

fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
axes[0].semilogy(losses)
axes[0].set_xlabel("training step")
axes[0].set_title("training loss (MSE)")
axes[1].plot(x_test[0, 0], "k", lw=2, label="signal $x$")
axes[1].plot(y_test[0, 0], color="0.6", label="measurement $y$")
axes[1].plot(x_hat[0, 0], "C3", label=r"DEQ $\hat{x}$")
axes[1].set_title("a test signal")
axes[1].legend(loc="best", fontsize=8)
fig.tight_layout()
plt.show()
