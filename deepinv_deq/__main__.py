"""``python -m deepinv_deq``: the ``deepinv-deq`` command line."""

from deepinv_deq.experiments.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
