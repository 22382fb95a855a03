"""The autoload hook: ``import deepinv`` alone registers deepinv-deq's names.

These tests use the hook installed in the interpreter running pytest (``pip install
-e .`` or ``pip install .`` ships ``deepinv_deq_autoload.pth`` and
``_deepinv_deq_autoload.py`` into site-packages).  Each check runs in a fresh
interpreter.  tests/test_autoload_install.py checks both kinds of install from scratch.
"""

from __future__ import annotations

import json
import textwrap

import pytest

HOOK = "_deepinv_deq_autoload"
NAMES = [
    "DEQ",
    "ImplicitBackward",
    "DEQEILoss",
    "DEQMOEILoss",
    "DEQSureGaussianLoss",
    "JacobianNormLoss",
]


def _json_tail(proc):
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def startup(run_python):
    """State of a fresh interpreter right after start-up (``python -c`` with nothing)."""
    code = textwrap.dedent(
        f"""
        import json, sys
        print(json.dumps({{
            "hook": "{HOOK}" in sys.modules,
            "finder": any(getattr(f, "_deepinv_deq_autoload", False) for f in sys.meta_path),
            "heavy": sorted(m for m in ("torch", "numpy", "deepinv", "deepinv_deq") if m in sys.modules),
        }}))
        """
    )

    def state(env=None):
        return _json_tail(run_python(code, env=env))

    return state


def test_hook_is_installed_at_startup_and_imports_nothing_heavy(startup):
    state = startup()
    if not state["hook"]:
        pytest.fail(
            "the autoload hook did not run at start-up: deepinv-deq is not installed "
            "(run `pip install -e .`), or its .pth file is missing"
        )
    assert state["finder"]
    assert state["heavy"] == []


def test_hook_imports_no_other_module_at_startup(run_python):
    """-X importtime: the hook's cumulative time equals its own (no child imports)."""
    proc = run_python("pass", args=("-X", "importtime"))
    rows = {}
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            self_us, cumulative_us, name = line[len("import time:") :].split("|")
            if self_us.strip().isdigit():
                rows[name.strip()] = (int(self_us), int(cumulative_us))
    assert HOOK in rows, proc.stderr
    self_us, cumulative_us = rows[HOOK]
    assert self_us == cumulative_us
    for heavy in ("torch", "deepinv", "numpy", "deepinv_deq"):
        assert heavy not in rows


def test_importing_hook_explicitly_imports_nothing_heavy(run_python):
    code = textwrap.dedent(
        f"""
        import json, sys
        import {HOOK}
        print(json.dumps(sorted(m for m in ("torch", "numpy", "deepinv", "deepinv_deq") if m in sys.modules)))
        """
    )
    assert _json_tail(run_python(code, env={"DEEPINV_DEQ_AUTOLOAD": "0"})) == []


def test_import_deepinv_alone_registers(run_python):
    code = textwrap.dedent(
        f"""
        import importlib.util, json, sys, warnings
        # looking deepinv up does not fire the hook; only executing it does
        spec = importlib.util.find_spec("deepinv")
        before = {{
            "found": spec is not None,
            "loaded": sorted(m for m in ("deepinv", "deepinv_deq") if m in sys.modules),
            "finder": any(getattr(f, "_deepinv_deq_autoload", False) for f in sys.meta_path),
        }}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import deepinv as dinv
        ours = [str(w.message) for w in caught if "deepinv-deq" in str(w.message)]
        loaded = "deepinv_deq" in sys.modules
        import deepinv_deq
        namespaces = {{"DEQ": dinv.models, "ImplicitBackward": dinv.optim}}
        print(json.dumps({{
            "before": before,
            "loaded_by_hook": loaded,
            "registered": {{n: getattr(namespaces.get(n, dinv.loss), n, None) is getattr(deepinv_deq, n)
                           for n in {NAMES!r}}},
            "finder_gone": not any(getattr(f, "_deepinv_deq_autoload", False) for f in sys.meta_path),
            "real_loader": type(dinv.__loader__).__module__ != "{HOOK}"
                           and dinv.__spec__.loader is dinv.__loader__,
            "warnings": ours,
        }}))
        """
    )
    result = _json_tail(run_python(code))
    assert result["before"] == {"found": True, "loaded": [], "finder": True}
    assert result["loaded_by_hook"]
    assert all(result["registered"].values()), result["registered"]
    assert result["finder_gone"]
    assert result["real_loader"]
    assert result["warnings"] == []


@pytest.mark.parametrize(
    "statement, check",
    [
        ("from deepinv.loss import DEQEILoss", "DEQEILoss"),  # a submodule first
        (
            "import deepinv_deq, deepinv",
            "deepinv.models.DEQ",
        ),  # re-entrant: deepinv_deq imports deepinv
    ],
)
def test_first_import_variants(run_python, statement, check):
    code = textwrap.dedent(
        f"""
        import json, sys
        {statement}
        import deepinv_deq
        obj = {check}
        print(json.dumps({{"ok": obj is getattr(deepinv_deq, obj.__name__)}}))
        """
    )
    assert _json_tail(run_python(code))["ok"]


@pytest.mark.parametrize("value", ["0", "false", "OFF", " no "])
def test_env_var_disables_hook_at_startup(startup, value):
    state = startup(env={"DEEPINV_DEQ_AUTOLOAD": value})
    assert not state["finder"]
    assert state["heavy"] == []


def test_env_var_disables_autoload(run_python):
    code = textwrap.dedent(
        """
        import json, sys
        import deepinv
        print(json.dumps({"loaded": "deepinv_deq" in sys.modules, "DEQ": hasattr(deepinv.models, "DEQ")}))
        """
    )
    assert _json_tail(run_python(code, env={"DEEPINV_DEQ_AUTOLOAD": "0"})) == {
        "loaded": False,
        "DEQ": False,
    }


def test_broken_plugin_does_not_break_deepinv(run_python, tmp_path):
    """If ``import deepinv_deq`` fails, ``import deepinv`` still works, with a warning."""
    shadow = tmp_path / "shadow" / "deepinv_deq"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise RuntimeError('simulated broken install')\n")
    code = textwrap.dedent(
        """
        import json, warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import deepinv
        msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        print(json.dumps({
            "works": hasattr(deepinv, "physics") and hasattr(deepinv.models, "DnCNN"),
            "DEQ": hasattr(deepinv.models, "DEQ"),
            "warned": [m for m in msgs if "deepinv-deq autoload" in m],
        }))
        """
    )
    result = _json_tail(run_python(code, env={"PYTHONPATH": str(shadow.parent)}))
    assert result["works"]
    assert not result["DEQ"]
    assert len(result["warned"]) == 1
    assert "simulated broken install" in result["warned"][0]


def test_enabled_switch():
    hook = pytest.importorskip(HOOK)
    assert hook.enabled({})
    assert hook.enabled({"DEEPINV_DEQ_AUTOLOAD": "1"})
    assert hook.enabled({"DEEPINV_DEQ_AUTOLOAD": "yes"})
    for off in ("0", "false", "False", " no ", "OFF"):
        assert not hook.enabled({"DEEPINV_DEQ_AUTOLOAD": off})
