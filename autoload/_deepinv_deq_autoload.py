"""Post-import hook that loads deepinv-deq whenever ``deepinv`` is imported.

deepinv 0.5 has no plugin loader, so deepinv-deq ships this module together with
``deepinv_deq_autoload.pth``.  Python's ``site`` runs the ``.pth`` line at start-up,
which imports this module.  It must stay tiny: no imports beyond ``sys`` and
``os`` (both already loaded by ``site``), nothing from torch or deepinv.

It appends nothing but one object to ``sys.meta_path``'s front.  That object ignores
every import except the top-level module ``deepinv``; for ``deepinv`` it asks the
other finders for the real spec and wraps its loader so that, right after
deepinv's ``__init__`` has run, ``import deepinv_deq`` is executed (which registers
``dinv.models.DEQ`` and friends).  The finder removes itself after firing once.

* ``DEEPINV_DEQ_AUTOLOAD=0`` (or ``false``/``no``/``off``) disables it.
* If ``deepinv_deq`` fails to import, a warning is issued and ``import deepinv``
  still succeeds.
* Re-entrancy: if ``deepinv_deq`` is already being imported (it imports deepinv
  itself), nothing is done: the package registers at the end of its own
  ``__init__``.
"""

import os
import sys

_TARGET = "deepinv"
_PLUGIN = "deepinv_deq"
_DISABLE_VALUES = ("0", "false", "no", "off")


def enabled(environ=None):
    """Whether autoload is enabled by the environment (``DEEPINV_DEQ_AUTOLOAD``)."""
    value = (os.environ if environ is None else environ).get("DEEPINV_DEQ_AUTOLOAD", "1")
    return value.strip().lower() not in _DISABLE_VALUES


class _Loader:
    """Delegates to deepinv's real loader, then imports the plugin package."""

    def __init__(self, finder, loader):
        self._finder = finder
        self._loader = loader

    def create_module(self, spec):
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module):
        # deepinv's own code (and anyone inspecting it later) sees its real loader.
        spec = getattr(module, "__spec__", None)
        if spec is not None:
            spec.loader = self._loader
        module.__loader__ = self._loader
        self._finder.uninstall()
        self._loader.exec_module(module)
        _load_plugin()

    def __getattr__(self, name):
        if name.startswith("__") or name in ("_finder", "_loader"):
            raise AttributeError(name)
        return getattr(self._loader, name)


class DeepinvFinder:
    """``sys.meta_path`` entry acting only on ``import deepinv``."""

    _deepinv_deq_autoload = True  # marker, robust to a second copy of this module

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _TARGET:
            return None
        spec = None
        for finder in list(sys.meta_path):
            if getattr(finder, "_deepinv_deq_autoload", False):
                continue
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is None:
                continue
            spec = find_spec(fullname, path, target)
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _Loader(self, spec.loader)
        return spec

    def uninstall(self):
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass


def _load_plugin():
    if _PLUGIN in sys.modules:
        # deepinv_deq is importing deepinv (or is already loaded): it registers
        # itself at the end of its own __init__.
        return
    try:
        __import__(_PLUGIN)
    except Exception as exc:  # never break `import deepinv`
        import warnings

        warnings.warn(
            f"deepinv-deq autoload: `import {_PLUGIN}` failed ({type(exc).__name__}: {exc}); "
            "deepinv works but dinv.models.DEQ etc. are not registered. "
            "Set DEEPINV_DEQ_AUTOLOAD=0 to silence this.",
            RuntimeWarning,
            stacklevel=2,
        )


def install():
    """Put the finder on ``sys.meta_path`` (once); no-op if deepinv is already imported."""
    if _TARGET in sys.modules:
        return None
    for finder in sys.meta_path:
        if getattr(finder, "_deepinv_deq_autoload", False):
            return finder
    finder = DeepinvFinder()
    sys.meta_path.insert(0, finder)
    return finder


if enabled():
    install()
