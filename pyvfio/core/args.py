"""Checks of the arguments public entry points take, before anything reaches the kernel.

Each check raises :class:`~pyvfio.errors.ArgumentTypeError` (a TypeError) for
a value of the wrong type and :class:`~pyvfio.errors.InvalidArgumentError` (a
ValueError) for one out of range, naming the argument and the device, so
that no ``OverflowError``, ``struct.error`` or format error from deep inside
escapes, and a NaN never slips through a comparison.
"""
from __future__ import annotations

import operator
from typing import Any, Optional, Union

from pyvfio import errors

__all__ = ["integer", "boolean", "data", "choice", "U64", "U32"]

U64 = (1 << 64) - 1
U32 = (1 << 32) - 1

Bytes = Union[bytes, bytearray, memoryview]


def integer(value: Any, what: str, *, device: Optional[str] = None, lo: Optional[int] = 0,
            hi: Optional[int] = U64, multiple: Optional[int] = None,
            remedy: Optional[str] = None) -> int:
    """``value`` as an int in [lo, hi] (a bool or float is refused, an int-like is accepted)."""
    if isinstance(value, bool) or isinstance(value, float):
        raise errors.ArgumentTypeError(f"{what} must be an integer, not {value!r}",
                                       device=device, remedy=remedy)
    try:
        n = operator.index(value)
    except TypeError:
        raise errors.ArgumentTypeError(f"{what} must be an integer, not {type(value).__name__}",
                                       device=device, remedy=remedy) from None
    if (lo is not None and n < lo) or (hi is not None and n > hi):
        lo_s = "-inf" if lo is None else f"{lo:#x}" if lo > 4096 else str(lo)
        hi_s = "inf" if hi is None else f"{hi:#x}" if hi > 4096 else str(hi)
        raise errors.InvalidArgumentError(f"{what} must be in [{lo_s}, {hi_s}], not {n}",
                                          device=device, remedy=remedy)
    if multiple and n % multiple:
        raise errors.InvalidArgumentError(f"{what} must be a multiple of {multiple:#x}, not {n:#x}",
                                          device=device, remedy=remedy)
    return n


def boolean(value: Any, what: str, *, device: Optional[str] = None) -> bool:
    """``value`` as a bool: True, False (or 0/1 ints); anything else is refused."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise errors.ArgumentTypeError(f"{what} must be True or False, not {value!r}", device=device)


def data(value: Any, what: str, *, device: Optional[str] = None) -> Bytes:
    """``value`` as a bytes-like object (bytes, bytearray, memoryview, anything with a buffer)."""
    if isinstance(value, (bytes, bytearray)):
        return value
    if isinstance(value, str):
        raise errors.ArgumentTypeError(f"{what} must be bytes, not str (encode it first)",
                                       device=device)
    try:
        view = memoryview(value)
    except TypeError:
        raise errors.ArgumentTypeError(f"{what} must be a bytes-like object, not "
                                       f"{type(value).__name__}", device=device) from None
    if view.format == "B" and view.ndim == 1:
        return view
    try:
        return view.cast("B")
    except TypeError:                      # not contiguous: copy
        return view.tobytes()


def choice(value: Any, what: str, options: Any, *, device: Optional[str] = None) -> Any:
    """``value`` if it is one of ``options``."""
    try:
        ok = value in options
    except TypeError:
        ok = False
    if not ok:
        shown = ", ".join(repr(o) for o in options)
        raise errors.InvalidArgumentError(f"{what} must be one of {shown}, not {value!r}",
                                          device=device)
    return value
