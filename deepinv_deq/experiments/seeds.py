r"""Stable seeds and generators, one per purpose (data, noise, initialisation, transformations):
for a seed :math:`s`, every method sees the same draws, in any process (python's ``hash`` is
salted per process; these are not)."""

from __future__ import annotations

import torch

from .configs import ExperimentConfig


def seed_for(cfg: ExperimentConfig, *names: str) -> int:
    # a stable seed per run (python's hash() is salted per process)
    import zlib

    return (cfg.seed * 1000003 + zlib.crc32("/".join(names).encode())) % (2**31)


def generator(cfg: ExperimentConfig, *names) -> torch.Generator:
    return torch.Generator(cfg.device).manual_seed(seed_for(cfg, *names))
