"""Validation of keyword options: every public constructor checks its settings here.

An unknown option or an out-of-range value raises a :class:`ValueError` that names it, so a
misspelled setting can never be silently ignored.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping


def reject_unknown(owner: str, options: Mapping, valid: Iterable[str]) -> None:
    r"""Raise a :class:`ValueError` if ``options`` holds a key outside ``valid``.

    :param str owner: name of the object receiving the options (used in the message).
    :param dict options: the options that were passed.
    :param valid: the option names ``owner`` accepts.
    """
    valid = sorted(valid)
    unknown = [k for k in options if k not in valid]
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, valid, n=1)
        hints.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    raise ValueError(
        f"{owner} got unknown option(s) {', '.join(hints)}; valid options are: {', '.join(valid)}."
    )


def check_int(owner: str, name: str, value, minimum: int = 1) -> int:
    r"""Return ``value`` as an ``int`` after checking that it is an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}: '{name}' must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_float(
    owner: str,
    name: str,
    value,
    minimum: float = 0.0,
    maximum: float = math.inf,
    strict_min: bool = False,
) -> float:
    r"""Return ``value`` as a ``float`` after checking that it is finite-or-inf and in range.

    :param bool strict_min: if ``True`` the value must be strictly larger than ``minimum``.
    """
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{owner}: '{name}' must be a number, got {value!r}.") from None
    if math.isnan(v) or v < minimum or (strict_min and v == minimum) or v > maximum:
        lo = "(" if strict_min else "["
        raise ValueError(
            f"{owner}: '{name}' must lie in {lo}{minimum}, {maximum}], got {value!r}."
        )
    return v


def check_choice(owner: str, name: str, value, choices: Iterable[str]) -> str:
    r"""Check that ``value`` is one of ``choices`` (case-insensitive) and return it lower-cased."""
    choices = list(choices)
    if isinstance(value, str) and value.lower() in [c.lower() for c in choices]:
        return value.lower()
    raise ValueError(f"{owner}: '{name}' must be one of {choices}, got {value!r}.")
