"""Registration of deepinv-deq's objects into deepinv's namespaces (deepinv_deq.plugin).

Registration mutates deepinv's modules for the whole process, so every check runs
in a fresh interpreter.  Autoload is switched off here (DEEPINV_DEQ_AUTOLOAD=0) so
that ``import deepinv_deq`` is what registers; tests/test_autoload.py covers the hook.
"""

from __future__ import annotations

import json
import sys
import textwrap
import warnings

import pytest

NO_AUTOLOAD = {"DEEPINV_DEQ_AUTOLOAD": "0"}

NAMESPACES = {
    "deepinv.models": ["DEQ"],
    "deepinv.optim": ["ImplicitBackward"],
    "deepinv.loss": ["DEQEILoss", "DEQMOEILoss", "DEQSureGaussianLoss", "JacobianNormLoss"],
    "deepinv.physics": ["SparseMatrixPhysics"],
}
EXPECTED = {(namespace, name) for namespace, names in NAMESPACES.items() for name in names}


def _json_tail(proc):
    """The JSON document printed on the last line of a subprocess's stdout."""
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_registered_names_table():
    from deepinv_deq.plugin import registered_names

    names = registered_names()
    assert set(names) == EXPECTED
    assert len(names) == len(EXPECTED)  # no duplicates
    names.clear()  # a copy: the table itself is not mutable from outside
    assert set(registered_names()) == EXPECTED


def test_every_registered_name_is_exported_by_the_package():
    import deepinv_deq

    for _, name in EXPECTED:
        assert hasattr(deepinv_deq, name), name


def test_registered_after_import(run_python):
    code = textwrap.dedent(
        """
        import json, sys
        import deepinv_deq, deepinv
        from deepinv_deq.plugin import registered_names
        out = {}
        for namespace, name in registered_names():
            module = sys.modules[namespace]
            out[namespace + "." + name] = getattr(module, name, None) is getattr(deepinv_deq, name)
        out["dinv.models.DEQ"] = deepinv.models.DEQ is deepinv_deq.DEQ
        out["dinv.optim.ImplicitBackward"] = deepinv.optim.ImplicitBackward is deepinv_deq.ImplicitBackward
        print(json.dumps(out))
        """
    )
    result = _json_tail(run_python(code, env=NO_AUTOLOAD))
    assert result and all(result.values()), result


def test_never_overrides_a_name_deepinv_defines(run_python):
    """A (future) deepinv defining DEQ keeps its own: warn once, leave it in place."""
    code = textwrap.dedent(
        """
        import json, warnings
        import deepinv

        class DEQ:  # what a future deepinv might define itself
            pass

        deepinv.models.DEQ = DEQ
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import deepinv_deq
            again = deepinv_deq.plugin.register()
        from deepinv_deq.plugin import PluginNameConflictWarning
        ours = [w for w in caught if issubclass(w.category, PluginNameConflictWarning)]
        print(json.dumps({
            "kept": deepinv.models.DEQ is DEQ,
            "package_has_own": deepinv_deq.DEQ is not DEQ,
            "n_warnings": len(ours),
            "message": str(ours[0].message) if ours else "",
            "again": again["deepinv.models.DEQ"],
            "others": deepinv.optim.ImplicitBackward is deepinv_deq.ImplicitBackward
                      and deepinv.loss.DEQEILoss is deepinv_deq.DEQEILoss,
        }))
        """
    )
    result = _json_tail(run_python(code, env=NO_AUTOLOAD))
    assert result["kept"] and result["package_has_own"] and result["others"]
    assert result["n_warnings"] == 1, result  # once, although register() ran twice
    assert "deepinv.models.DEQ" in result["message"]
    assert "deepinv_deq.DEQ" in result["message"]
    assert result["again"] == "conflict"


# In-process checks: monkeypatch restores deepinv's and the package's attributes.


@pytest.fixture
def plugin(monkeypatch):
    import deepinv_deq.plugin as plugin

    monkeypatch.setattr(plugin, "_warned", set())  # fresh warn-once state
    return plugin


def test_register_is_idempotent(plugin, recwarn):
    import deepinv_deq

    before = {(ns, n): getattr(sys.modules[ns], n) for ns, n in plugin.registered_names()}
    for _ in range(2):
        report = plugin.register()
        assert set(report.values()) == {"present"}, report
    after = {(ns, n): getattr(sys.modules[ns], n) for ns, n in plugin.registered_names()}
    assert all(before[key] is after[key] is getattr(deepinv_deq, key[1]) for key in before)
    assert not [w for w in recwarn if issubclass(w.category, plugin.PluginNameConflictWarning)]


def test_conflict_warns_once_and_keeps_deepinv_object(plugin, monkeypatch):
    import deepinv
    import deepinv_deq

    theirs = type("ImplicitBackward", (), {"__module__": "deepinv.optim.future"})
    monkeypatch.setattr(deepinv.optim, "ImplicitBackward", theirs)
    with pytest.warns(plugin.PluginNameConflictWarning, match=r"deepinv\.optim\.ImplicitBackward"):
        report = plugin.register()
    assert report["deepinv.optim.ImplicitBackward"] == "conflict"
    assert deepinv.optim.ImplicitBackward is theirs
    assert deepinv_deq.ImplicitBackward is not theirs
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once already: silent now
        assert plugin.register()["deepinv.optim.ImplicitBackward"] == "conflict"


def test_replaces_a_stale_object_of_its_own(plugin, monkeypatch):
    """An object from deepinv_deq itself (e.g. left by a reload) is ours to replace."""
    import deepinv
    import deepinv_deq

    stale = type("DEQ", (), {"__module__": "deepinv_deq.deq"})
    monkeypatch.setattr(deepinv.models, "DEQ", stale)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = plugin.register()
    assert report["deepinv.models.DEQ"] == "registered"
    assert deepinv.models.DEQ is deepinv_deq.DEQ


def test_missing_name_is_skipped(plugin, monkeypatch):
    import deepinv
    import deepinv_deq

    monkeypatch.delattr(deepinv.loss, "JacobianNormLoss")
    monkeypatch.delattr(deepinv_deq, "JacobianNormLoss")
    report = plugin.register()
    assert report["deepinv.loss.JacobianNormLoss"] == "missing"
    assert not hasattr(deepinv.loss, "JacobianNormLoss")
    assert report["deepinv.models.DEQ"] == "present"


def test_plugin_entry_point():
    """``deepinv.plugins`` entry point, for a future deepinv plugin loader."""
    from importlib.metadata import entry_points

    import deepinv_deq.plugin

    eps = [ep for ep in entry_points(group="deepinv.plugins") if ep.name == "deepinv_deq"]
    if not eps:
        pytest.fail("entry point deepinv.plugins:deepinv_deq not found; is the package installed?")
    (ep,) = eps
    assert ep.value == "deepinv_deq.plugin:register"
    assert ep.load() is deepinv_deq.plugin.register
