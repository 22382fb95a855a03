"""Validation of keyword options: every public constructor checks its settings here.

An unknown option or an out-of-range value raises a :class:`ValueError` that names it, so a
misspelled setting can never be silently ignored.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable, Mapping

from typing import TYPE_CHECKING

# torch is imported inside the tensor checks only: the option checks of this module serve the
# experiments' configuration too, which `deepinv-deq --help` reads without importing torch.
if TYPE_CHECKING:
    from torch import Tensor


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
    accepted = f"valid options are: {', '.join(valid)}" if valid else "it takes no options"
    raise ValueError(f"{owner} got unknown option(s) {', '.join(hints)}; {accepted}.")


def check_int(owner: str, name: str, value, minimum: int = 1) -> int:
    r"""Return ``value`` as an ``int`` after checking that it is an integer ``>= minimum``
    (any :class:`numbers.Integral`, e.g. ``numpy.int64``; not a ``bool``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
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
        raise ValueError(f"{owner}: '{name}' must lie in {lo}{minimum}, {maximum}], got {value!r}.")
    return v


def check_budget(owner: str, max_iter, tol) -> tuple[int, float]:
    r"""Check an iteration budget (an integer ``>= 1``) and a tolerance (a number ``>= 0``)."""
    return check_int(owner, "max_iter", max_iter, 1), check_float(owner, "tol", tol, 0.0)


def check_choice(owner: str, name: str, value, choices: Iterable[str]) -> str:
    r"""Check that ``value`` is one of ``choices`` (case-insensitive) and return it lower-cased."""
    choices = list(choices)
    if isinstance(value, str) and value.lower() in [c.lower() for c in choices]:
        return value.lower()
    raise ValueError(f"{owner}: '{name}' must be one of {choices}, got {value!r}.")


def resolve(spec, registry: Mapping, owner: str, name: str, base, **options):
    r"""Build an object from its name in ``registry``, or check and return an instance.

    The one place where a setting given as a name or as an instance (a solver, a backward
    strategy) is turned into an object: a name is checked against ``registry`` and its options
    against the class's ``_options``; an instance must be of type ``base`` and comes without
    options (they are set on the instance).

    :param str, object spec: a name of ``registry`` or an instance of ``base``.
    :param dict registry: the names accepted here and their classes.
    :param str owner: name of the object receiving the setting (used in messages).
    :param str name: name of the setting (used in messages).
    :param type, tuple base: the accepted instance type(s).
    :param options: keyword options of the class; an unknown one raises :class:`ValueError`.
    :return: the object.

    :Examples:

    Unknown names, unknown options and instances of the wrong kind are named in the error:

    >>> from deepinv_deq._validation import resolve
    >>> from deepinv_deq.solvers import SOLVERS, FixedPointSolver
    >>> resolve("fixed_point", SOLVERS, "DEQ", "solver", FixedPointSolver, damping=0.5)
    FixedPointIteration(max_iter=50, tol=0.0001, atol=0.0, divergence_ratio=10000.0, damping=0.5)
    >>> resolve("broyden", SOLVERS, "DEQ", "solver", FixedPointSolver)
    Traceback (most recent call last):
    ...
    ValueError: DEQ: 'solver' must be one of ['fixed_point', 'anderson', 'gmres'], got 'broyden'.
    """
    if isinstance(spec, base):
        if options:
            raise ValueError(
                f"{owner}: option(s) {sorted(options)} cannot be combined with a {name} instance; "
                "set them on the instance."
            )
        return spec
    if not isinstance(spec, str):
        kinds = base if isinstance(base, tuple) else (base,)
        raise ValueError(
            f"{owner}: '{name}' must be one of {list(registry)} or an instance of "
            f"{' or '.join(k.__name__ for k in kinds)}, got {spec!r}."
        )
    key = check_choice(owner, name, spec, registry)
    cls = registry[key]
    reject_unknown(f"{owner} ({name} '{key}')", options, cls._options)
    return cls(**options)


class _DefaultInt(int):
    __slots__ = ()


class _DefaultFloat(float):
    __slots__ = ()


class _DefaultStr(str):
    __slots__ = ()


def default(value):
    r"""Mark a default value so that a signature shows it (``max_iter=50``) while the code can
    still tell whether the user passed the argument (see :func:`is_given`)."""
    for kind, marked in (
        (bool, None),
        (int, _DefaultInt),
        (float, _DefaultFloat),
        (str, _DefaultStr),
    ):
        if isinstance(value, kind):
            return value if marked is None else marked(value)
    return value


def is_given(value) -> bool:
    r"""``False`` for a value left at its :func:`default` (or ``None``), ``True`` otherwise.

    :Examples:

    >>> from deepinv_deq._validation import default, is_given
    >>> MAX_ITER = default(50)
    >>> MAX_ITER, is_given(MAX_ITER), is_given(50)
    (50, False, True)
    """
    return value is not None and not isinstance(value, (_DefaultInt, _DefaultFloat, _DefaultStr))


def tensor_parts(y) -> list:
    r"""The tensors of a measurement: ``[y]`` for a tensor, its parts for a deepinv
    :class:`deepinv.utils.TensorList` (the measurements of stacked physics)."""
    parts = getattr(y, "x", None)
    return list(parts) if isinstance(parts, list) else [y]


def check_measurements(owner: str, y, init, ref) -> None:
    r"""Check the measurements ``y`` (a tensor or a TensorList) and the optional initial iterate
    against the floating-point tensor ``ref`` of the model (device, dtype), and that both are
    finite (one host synchronisation)."""
    import torch
    from torch import Tensor

    parts = tensor_parts(y)
    for part in parts:
        if not isinstance(part, Tensor):
            raise ValueError(
                f"{owner}: y must be a tensor or a TensorList of tensors, got {type(part).__name__}."
            )
        if not (part.is_floating_point() or part.is_complex()):
            raise ValueError(f"{owner}: y must be a floating-point tensor, got dtype {part.dtype}.")
        if ref is not None and part.device != ref.device:
            raise ValueError(
                f"{owner}: y is on device {part.device} but the model is on {ref.device}; move one of "
                "them (e.g. model.to(y.device))."
            )
        if ref is not None and part.real.dtype != ref.dtype:
            raise ValueError(
                f"{owner}: y has dtype {part.dtype} but the model's parameters have dtype {ref.dtype}; "
                "convert one of them (e.g. model.to(y.dtype))."
            )
    if init is not None:
        if not isinstance(init, Tensor):
            raise ValueError(f"{owner}: 'init' must be a tensor, got {type(init).__name__}.")
        if not (init.is_floating_point() or init.is_complex()):
            raise ValueError(f"{owner}: 'init' must be a floating-point tensor, got {init.dtype}.")
        if init.device != parts[0].device:
            raise ValueError(f"{owner}: 'init' is on {init.device} but y is on {parts[0].device}.")
        if init.real.dtype != parts[0].real.dtype:
            raise ValueError(
                f"{owner}: 'init' has dtype {init.dtype} but y has dtype {parts[0].dtype}."
            )
    flags = torch.stack([torch.isfinite(t).all() for t in parts + ([] if init is None else [init])])
    if not bool(flags.all()):
        which = (
            "the measurements y contain"
            if not bool(flags[: len(parts)].all())
            else "'init' contains"
        )
        raise ValueError(f"{owner}: {which} NaN or Inf.")


def check_deq_arguments(
    unknown: Mapping, valid: Iterable[str], iteration, denoiser, solver, prior=None
) -> None:
    r"""The mistakes a new user of :class:`deepinv_deq.DEQ` meets, each with a hint."""
    gd = isinstance(iteration, str) and iteration.upper() == "GD"
    if prior is not None and not gd:
        raise ValueError(
            "DEQ takes the denoiser itself, not a deepinv prior (except for iteration='GD'): use "
            "DEQ(denoiser=...), e.g. DEQ(denoiser=prior.denoiser) for a dinv.optim.PnP prior."
        )
    if gd and (prior is None or denoiser is not None):
        raise ValueError(
            "DEQ: the 'GD' iteration takes a differentiable deepinv prior, not a denoiser: "
            "DEQ(iteration='GD', prior=dinv.optim.prior.RED(denoiser))."
        )
    reject_unknown("DEQ", unknown, valid)
    if isinstance(iteration, str) and denoiser is None and not gd:
        raise ValueError(
            f"DEQ: the '{iteration}' iteration needs a denoiser, e.g. "
            "DEQ(denoiser=deepinv_deq.ContractiveDenoiser()) or a deepinv denoiser such as "
            "dinv.models.DnCNN(pretrained=None); or pass a callable iteration F(x, y, physics)."
        )
    if type(solver).__name__ == "GMRES":
        raise ValueError(
            "DEQ: GMRES solves the linear backward system only; pass it as backward_solver='gmres' "
            "(or ImplicitBackward(solver=GMRES())). The forward 'solver' must be 'anderson', "
            "'fixed_point' or a FixedPointSolver instance."
        )


def _shapes(t):
    return [tuple(p.shape) for p in tensor_parts(t)]


def is_out_of_memory(error: BaseException) -> bool:
    r"""Whether ``error`` reports an exhausted memory (CUDA or CPU allocator, or Python's
    :class:`MemoryError`): such errors are passed on untouched, never explained as bad input."""
    import torch

    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    message = str(error).lower()
    return "out of memory" in message or "can't allocate memory" in message


def measurement_error(owner: str, y, error: Exception) -> ValueError:
    r"""The error for measurements ``y`` that the physics rejects (``A^T y`` fails)."""
    return ValueError(
        f"{owner}: y of shape {_shapes(y)} does not fit the physics ({type(error).__name__}: {error})."
    )


def explain_map_error(owner: str, error: Exception, x: Tensor, y, physics, init) -> Exception:
    r"""The error to raise when the fixed-point map fails on the iterate ``x``.

    A shape mismatch that can be proven (``A^T y`` fails, ``init`` does not have the shape of
    ``A^T y``, or ``A(A^T y)`` does not have the shape of ``y``) becomes a :class:`ValueError`
    naming it; any other error keeps its type and gains the shapes involved in its message. An
    out-of-memory error is returned untouched (:func:`is_out_of_memory`), whatever the check
    would say."""
    import torch

    if is_out_of_memory(error):
        return error
    try:
        with torch.no_grad():
            image = physics.A_adjoint(y)
            measured = physics.A(image)
    except Exception as e:  # the physics itself rejects y
        return error if is_out_of_memory(e) else measurement_error(owner, y, e)
    if init is not None and tuple(init.shape) != tuple(image.shape):
        return ValueError(
            f"{owner}: 'init' has shape {tuple(init.shape)} but the images of this physics have shape "
            f"{tuple(image.shape)} (that of A^T y)."
        )
    if _shapes(measured) != _shapes(y):
        return ValueError(
            f"{owner}: y has shape {_shapes(y)} but the physics produces measurements of shape "
            f"{_shapes(measured)}."
        )
    context = (
        f"{owner}: raised while evaluating the fixed-point map on an iterate of shape {tuple(x.shape)} "
        f"(y of shape {_shapes(y)}): check that the denoiser accepts images of this shape."
    )
    if type(error) is RuntimeError:
        return RuntimeError(f"{error}\n{context}")
    if hasattr(error, "add_note"):
        error.add_note(context)
    return error
