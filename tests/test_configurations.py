"""The configurations of the claims across settings, the deblurring task, the null-space fraction."""

from __future__ import annotations

import deepinv as dinv
import pytest
import torch

from deepinv_deq.experiments.configs import ExperimentConfig, check_run
from deepinv_deq.experiments.configurations import (
    CONFIGURATIONS,
    configuration,
    null_space_fraction,
)
from deepinv_deq.experiments.tasks import build_physics, channels, pseudo_inverse


def test_configurations_are_valid_and_varied():
    tasks, sizes = set(), set()
    for name in CONFIGURATIONS:
        task, cfg = configuration(name)
        tasks.add(task)
        sizes.add(cfg.size_of(task))
    assert len(CONFIGURATIONS) >= 5 and tasks == {"ct", "mri", "deblur"}
    assert min(sizes) == 32 and max(sizes) == 64
    with pytest.raises(ValueError, match="name"):
        configuration("ct-128")


def test_null_space_fraction_of_inpainting_is_the_masked_energy():
    torch.manual_seed(0)
    x = torch.rand(3, 1, 8, 8)
    mask = (torch.rand(1, 8, 8) > 0.4).float()
    physics = dinv.physics.Inpainting((1, 8, 8), mask=mask)
    expected = (x * (1 - mask)).flatten(1).pow(2).sum(1) / x.flatten(1).pow(2).sum(1)
    assert torch.allclose(null_space_fraction(physics, x), expected, atol=1e-6)
    # an invertible operator has no null space
    assert torch.allclose(null_space_fraction(dinv.physics.Denoising(), x), torch.zeros(3))
    with pytest.raises(ValueError, match="zero"):
        null_space_fraction(physics, torch.zeros(1, 1, 8, 8))


def test_deblur_task_at_tiny_size():
    cfg = ExperimentConfig.from_preset("tiny", blur_sigma=1.5, blur_noise=0.0)
    assert check_run("deblur", "deq", "ei") == ("deblur", "deq", "ei")
    assert channels("deblur") == 1
    physics = build_physics("deblur", cfg)
    torch.manual_seed(0)
    x = torch.rand(2, 1, 16, 16)
    y = physics(x)
    assert y.shape == x.shape and not torch.allclose(y, x)
    # ||A|| = 1: a normalised kernel keeps the mean
    assert torch.allclose(y.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=1e-5)
    # the Wiener filter solves (A^T A + lambda I) x = A^T y
    xw = pseudo_inverse("deblur")(y, physics)
    lhs = physics.A_adjoint(physics.A(xw)) + cfg.blur_lambda * xw
    assert torch.allclose(lhs, physics.A_adjoint(y), atol=1e-4)
    assert (xw - x).norm() < (physics.A_adjoint(y) - x).norm()


def test_tiny_deblur_run(tmp_path):
    from deepinv_deq.experiments.runner import run

    cfg = ExperimentConfig.from_preset("tiny")
    result = run("deblur", "pinv", None, cfg, tmp_path, progress=False, log=lambda *a: None)
    assert result["task"] == "deblur" and result["psnr_mean"] > 10
