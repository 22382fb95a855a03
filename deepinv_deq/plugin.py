"""Registration of deepinv-deq's public objects into deepinv's namespaces.

deepinv 0.5 has no plugin mechanism, so :func:`register` sets attributes on
deepinv's modules, e.g. ``deepinv.models.DEQ = deepinv_deq.DEQ``.  It is called at
the end of ``deepinv_deq/__init__.py``; the ``deepinv.plugins`` entry point points
at it too, for a future deepinv plugin loader.

How ``import deepinv`` alone gets these names (without ``import deepinv_deq``) is
the job of the autoload hook shipped next to the package
(``_deepinv_deq_autoload`` + ``deepinv_deq_autoload.pth``, disabled by
``DEEPINV_DEQ_AUTOLOAD=0``).

Rules:

* idempotent: calling :func:`register` again changes nothing;
* deepinv wins: if deepinv already defines a *different* object under a name (a
  future deepinv release with its own ``DEQ``), deepinv's object stays and a
  :class:`PluginNameConflictWarning` is issued once per name;
* names that ``deepinv_deq`` does not (yet) provide are skipped silently.

This module imports nothing from ``deepinv_deq`` at import time (it is imported by
the package's ``__init__``), and deepinv only inside :func:`register`.
"""

from __future__ import annotations

import importlib
import sys
import warnings

__all__ = ["PluginNameConflictWarning", "register", "registered_names"]

#: The single table of what is registered: (deepinv namespace, attribute name).
#: The object registered is ``getattr(deepinv_deq, name)``.
_REGISTRY: tuple[tuple[str, str], ...] = (
    ("deepinv.models", "DEQ"),
    ("deepinv.optim", "ImplicitBackward"),
    ("deepinv.loss", "DEQEILoss"),
    ("deepinv.loss", "DEQMOEILoss"),
    ("deepinv.loss", "DEQSureGaussianLoss"),
    ("deepinv.loss", "JacobianNormLoss"),
    ("deepinv.physics", "SparseMatrixPhysics"),
)

_PACKAGE = "deepinv_deq"

# Qualified names already warned about (warn once per name per process).
_warned: set[str] = set()


class PluginNameConflictWarning(UserWarning):
    """deepinv already defines a name that deepinv-deq would register.

    :Examples:

    It is a :class:`UserWarning`, so the usual filters apply:

    >>> from deepinv_deq.plugin import PluginNameConflictWarning
    >>> issubclass(PluginNameConflictWarning, UserWarning)
    True
    """


def registered_names() -> list[tuple[str, str]]:
    """Return the registration table as a list of ``(namespace, name)`` pairs.

    ``("deepinv.models", "DEQ")`` means ``deepinv.models.DEQ`` is ``deepinv_deq.DEQ`` once the
    package is imported.

    :Examples:

    >>> from deepinv_deq.plugin import registered_names
    >>> ("deepinv.models", "DEQ") in registered_names()
    True
    """
    return list(_REGISTRY)


def _is_ours(obj: object) -> bool:
    """Whether ``obj`` comes from deepinv_deq (e.g. a stale object after a reload)."""
    module = getattr(obj, "__module__", None) or ""
    return module == _PACKAGE or module.startswith(_PACKAGE + ".")


def register() -> dict[str, str]:
    """Register deepinv-deq's objects into deepinv's namespaces.

    Returns a mapping from qualified name (``"deepinv.models.DEQ"``) to what
    happened to it: ``"registered"`` (set now), ``"present"`` (already ours),
    ``"conflict"`` (deepinv defines its own object, left in place) or
    ``"missing"`` (``deepinv_deq`` does not provide the name).

    :Examples:

    Registering again changes nothing:

    >>> import deepinv, deepinv_deq
    >>> from deepinv_deq.plugin import register
    >>> register()["deepinv.models.DEQ"], deepinv.models.DEQ is deepinv_deq.DEQ
    ('present', True)
    """
    package = sys.modules.get(_PACKAGE)
    if package is None:  # called directly, e.g. through the entry point
        package = importlib.import_module(_PACKAGE)

    report: dict[str, str] = {}
    missing = object()
    for namespace, name in _REGISTRY:
        qualname = f"{namespace}.{name}"
        obj = getattr(package, name, missing)
        if obj is missing:
            report[qualname] = "missing"
            continue
        module = importlib.import_module(namespace)
        current = getattr(module, name, missing)
        if current is obj:
            report[qualname] = "present"
        elif current is missing or _is_ours(current):
            setattr(module, name, obj)
            report[qualname] = "registered"
        else:
            report[qualname] = "conflict"
            if qualname not in _warned:
                _warned.add(qualname)
                warnings.warn(
                    f"deepinv already defines {qualname} ({current!r}); deepinv-deq "
                    f"leaves deepinv's object in place. Use {_PACKAGE}.{name} for "
                    "deepinv-deq's implementation.",
                    PluginNameConflictWarning,
                    stacklevel=2,
                )
    return report
