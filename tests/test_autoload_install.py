"""Packaging: the wheel ships the autoload hook; regular and editable installs both work.

Builds the wheel from this checkout with the real build backend (hatchling, in the
``test`` extra), installs it, and installs the checkout in editable mode, each into a
throw-away virtual environment whose dependencies (deepinv, torch, hatchling) are
borrowed from the interpreter running the tests through a path ``.pth`` file
(nothing is downloaded).  Documented behaviour (README, "Editable installs"): an
editable install ships the hook as a *copy* in site-packages, while ``deepinv_deq``
itself is imported from the checkout.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HOOK = "_deepinv_deq_autoload"
PTH = "deepinv_deq_autoload.pth"
LAUNCHER = "_deepinv_deq_cli"  # the console script's entry point (parses before torch is imported)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("hatchling") is None,
    reason="the build backend (hatchling, in the `test` extra) is not installed",
)


def _run(cmd, cwd=None, check=True):
    proc = subprocess.run(
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        timeout=600,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, cmd))} exited with {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def _pip(*args):
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheelhouse")
    _run(_pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", out, REPO))
    (path,) = out.glob("deepinv_deq-*.whl")
    return path


def _dependency_paths() -> list[str]:
    """sys.path entries holding this interpreter's packages, minus the checkout itself."""
    paths = []
    for entry in sys.path:
        path = Path(entry or ".").resolve()
        inside_checkout = path == REPO or REPO in path.parents
        # keep a virtual environment living in the checkout (.venv, .venv-ci)
        if not path.is_dir() or (
            inside_checkout and path.name not in ("site-packages", "dist-packages")
        ):
            continue
        paths.append(str(path))
    return paths


def _ours(name: str) -> bool:
    """Whether a site-packages entry belongs to an installed deepinv-deq (package, hook, launcher,
    metadata, editable-install path file)."""
    name = name.lower().replace("-", "_")
    return name.lstrip("_").startswith("deepinv_deq") or (
        name.startswith("__editable__") and "deepinv_deq" in name
    )


def _borrow(path: Path, into: Path) -> Path:
    """``into``: links to every entry of ``path`` except deepinv-deq's own files.

    The throw-away venv must not see an outer deepinv-deq: with a regular (non-editable) install
    of the project in the test environment, pip would otherwise find it already installed and
    install nothing into the venv.
    """
    into.mkdir(parents=True)
    for entry in path.iterdir():
        if not _ours(entry.name):
            (into / entry.name).symlink_to(entry)
    return into


def _make_venv(root: Path):
    """A pip-less venv that sees this interpreter's packages (but not deepinv-deq); returns
    (python, purelib)."""
    _run([sys.executable, "-m", "venv", "--without-pip", root])
    python = root / "bin" / "python"
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = Path(_run([python, "-c", code]).stdout.strip()).resolve()
    borrowed = [
        _borrow(Path(p), root / "borrowed" / str(i)) for i, p in enumerate(_dependency_paths())
    ]
    (purelib / "zz_borrowed_dependencies.pth").write_text("\n".join(map(str, borrowed)) + "\n")
    return python, purelib


def _pip_supports_python_option() -> bool:
    return "--python" in _run(_pip("--help")).stdout


CHECK = textwrap.dedent(
    f"""
    import json, sys
    import deepinv as dinv
    autoloaded = "deepinv_deq" in sys.modules
    import deepinv_deq, {HOOK}
    from importlib.metadata import entry_points
    eps = [ep.value for ep in entry_points(group="deepinv.plugins") if ep.name == "deepinv_deq"]
    print(json.dumps({{
        "autoloaded": autoloaded,
        "registered": dinv.models.DEQ is deepinv_deq.DEQ and dinv.loss.DEQEILoss is deepinv_deq.DEQEILoss,
        "package": deepinv_deq.__file__,
        "hook": {HOOK}.__file__,
        "entry_points": eps,
    }}))
    """
)


def _check(python, tmp_path):
    proc = _run([python, "-c", CHECK], cwd=tmp_path)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["package"] = Path(result["package"]).resolve()
    result["hook"] = Path(result["hook"]).resolve()
    return result


def test_wheel_contents(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert zf.read(PTH).decode().strip() == f"import {HOOK}"
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
        metadata = zf.read(f"{dist_info}/METADATA").decode()
    assert f"{HOOK}.py" in names and f"{LAUNCHER}.py" in names
    # every module of the package (subpackages included) is in the wheel
    sources = {
        p.relative_to(REPO).as_posix()
        for p in (REPO / "deepinv_deq").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert sources and sources <= names, sources - names
    assert "[deepinv.plugins]" in entry_points
    assert "deepinv_deq = deepinv_deq.plugin:register" in entry_points
    assert f"deepinv-deq = {LAUNCHER}:main" in entry_points
    assert "Requires-Dist: deepinv>=0.5" in metadata
    assert "Requires-Python: >=3.10" in metadata


@pytest.mark.slow
def test_regular_install_autoloads_and_uninstalls_cleanly(wheel, tmp_path):
    if not _pip_supports_python_option():
        pytest.skip("pip too old for --python")
    python, purelib = _make_venv(tmp_path / "venv")
    _run(_pip("--python", python, "install", "--no-deps", "--no-index", wheel))
    assert (purelib / PTH).is_file() and (purelib / f"{HOOK}.py").is_file()
    assert (python.parent / "deepinv-deq").is_file()  # console script
    assert (purelib / f"{LAUNCHER}.py").is_file()
    version = _run([python.parent / "deepinv-deq", "--version"], cwd=tmp_path).stdout
    assert version.startswith("deepinv-deq ")

    result = _check(python, tmp_path)
    assert result["autoloaded"] and result["registered"]
    assert result["package"].is_relative_to(purelib)
    assert result["hook"].is_relative_to(purelib)
    assert result["entry_points"] == ["deepinv_deq.plugin:register"]

    _run(_pip("--python", python, "uninstall", "-y", "deepinv-deq"))
    assert not (purelib / PTH).exists() and not (purelib / f"{HOOK}.py").exists()
    assert (
        not (purelib / f"{LAUNCHER}.py").exists() and not (python.parent / "deepinv-deq").exists()
    )
    code = "import sys; print(any(getattr(f, '_deepinv_deq_autoload', 0) for f in sys.meta_path), '%s' in sys.modules)"
    assert _run([python, "-c", code % HOOK], cwd=tmp_path).stdout.split() == ["False", "False"]


@pytest.mark.slow
def test_editable_install_autoloads_from_the_checkout(tmp_path):
    if not _pip_supports_python_option():
        pytest.skip("pip too old for --python")
    python, purelib = _make_venv(tmp_path / "venv")
    _run(
        _pip(
            "--python",
            python,
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-e",
            REPO,
        )
    )
    # the hook ships with editable installs too (hatchling force-include) ...
    assert (purelib / PTH).is_file()

    result = _check(python, tmp_path)
    assert result["autoloaded"] and result["registered"]
    # ... deepinv_deq comes from the checkout (edits are live), while the hook module
    # is a copy in site-packages: edits to autoload/ need `pip install -e .` again.
    assert result["package"].is_relative_to(REPO / "deepinv_deq")
    assert result["hook"].is_relative_to(purelib)
    assert result["entry_points"] == ["deepinv_deq.plugin:register"]
