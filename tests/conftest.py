"""Shared pytest fixtures.

* ``device``: every test that takes it runs on the CPU and, when
  ``torch.cuda.is_available()``, on CUDA too (otherwise CUDA is not even listed).
* every test starts from seeded RNGs (``torch``, ``numpy``, ``random``; seed 0).
* ``dtype64``: run a test with ``torch.float64`` as default dtype (gradient checks).
* ``run_python``: run a code snippet in a fresh interpreter (registration and
  autoload are process-wide side effects, so they are tested in subprocesses).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

SEED = 0

# The tests use tiny tensors: extra intra-op threads only add synchronisation overhead, and on a
# busy 2-core machine oversubscribed threads slow small convolutions down by 10-30x.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """The device a test runs on: ``cpu``, plus ``cuda`` when available."""
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed_rngs():
    """Seed torch (CPU and CUDA), numpy's global RNG and ``random`` before each test."""
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)  # also seeds every CUDA device
    yield


@pytest.fixture
def dtype64():
    """Make ``torch.float64`` the default dtype for the test; restored afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield torch.float64
    finally:
        torch.set_default_dtype(previous)


def subprocess_env(overrides: dict[str, str | None] | None = None) -> dict[str, str]:
    """This process's environment without deepinv-deq switches, plus ``overrides``.

    A value of ``None`` removes the variable.
    """
    env = dict(os.environ)
    env.pop("DEEPINV_DEQ_AUTOLOAD", None)
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@pytest.fixture
def run_python(tmp_path):
    """Return ``run(code, env=None, cwd=None, python=None, check=True, args=())``.

    Runs ``python [args] -c code`` in a fresh interpreter (default: this one; cwd: a
    temporary directory, so the checkout is not on ``sys.path`` through the working
    directory).  ``env`` holds overrides of this process's environment (``None``
    removes a variable; ``DEEPINV_DEQ_AUTOLOAD`` is always unset first) and
    returns the ``CompletedProcess``; with ``check=True`` a non-zero exit fails the
    test and shows the subprocess's output.
    """

    def run(code, env=None, cwd=None, python=None, check=True, args=()):
        proc = subprocess.run(
            [python or sys.executable, *args, "-c", code],
            capture_output=True,
            text=True,
            env=subprocess_env(env),
            cwd=str(cwd or tmp_path),
            stdin=subprocess.DEVNULL,
            timeout=300,
        )
        if check and proc.returncode != 0:
            pytest.fail(
                f"subprocess exited with {proc.returncode}\n--- code ---\n{code}\n"
                f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
            )
        return proc

    return run
