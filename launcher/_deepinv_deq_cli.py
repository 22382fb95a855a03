"""Launcher of the ``deepinv-deq`` command: parses the arguments before torch is imported.

``import deepinv_deq`` imports torch and deepinv and registers the plugin into deepinv (seconds,
hundreds of MB). ``deepinv-deq --help``, ``--version`` and every usage error need none of it. The
console script therefore enters here, a tiny module installed at the top level of site-packages
(next to the autoload hook), which imports the package while :data:`PARSING` is true:
``deepinv_deq/__init__.py`` then defines ``__version__`` only, and the command line
(:mod:`deepinv_deq.experiments.cli`, whose imports are torch-free) parses and checks the arguments.
Once they are valid, :func:`deepinv_deq.experiments.cli.main` completes the import of the package.

Any other import of ``deepinv_deq`` (``import deepinv_deq``, ``python -m deepinv_deq``, the
autoload hook) is unaffected.
"""

import sys

#: True only while :func:`main` imports the command line module.
PARSING = False


def main(argv=None):
    """Entry point of the ``deepinv-deq`` console script."""
    global PARSING
    PARSING = "deepinv_deq" not in sys.modules
    try:
        from deepinv_deq.experiments import cli
    finally:
        PARSING = False
    return cli.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
