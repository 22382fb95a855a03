"""API pages show plain defaults, not the ``default(...)`` markers of the source (issue 20)."""

import importlib.util
import inspect
from pathlib import Path

import pytest

CONF = Path(__file__).resolve().parents[1] / "docs" / "conf.py"


@pytest.fixture(scope="module")
def conf():
    pytest.importorskip("sphinx")
    spec = importlib.util.spec_from_file_location("docs_conf", CONF)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_signatures_show_plain_defaults(conf):
    from deepinv_deq import DEQ, ImplicitBackward

    for cls in (DEQ, ImplicitBackward):
        # the signature as autodoc_preserve_defaults renders it: the source text of the defaults
        source = inspect.getsource(cls.__init__)
        assert "default(" in source
        text = (
            "("
            + ", ".join(
                p.strip().rstrip(",")
                for p in source.split("(", 1)[1].split("):", 1)[0].splitlines()
                if "=" in p or p.strip().startswith("**")
            )
            + ")"
        )
        shown, _ = conf._signature(None, "class", cls.__name__, cls, {}, text, None)
        assert "default(" not in shown and "**unknown" not in shown
    shown, _ = conf._signature(
        None,
        "class",
        "DEQ",
        None,
        {},
        "(stepsize: float = default(1.0), max_iter=default(50), **unknown)",
        None,
    )
    assert shown == "(stepsize: float = 1.0, max_iter=50)"
