"""One base for every object that owns kernel resources (fds, mappings, pins).

A :class:`Handle` is open until :meth:`~Handle.close`; after that every use
raises :class:`~pyvfio.errors.ClosedError` naming the object, and so does
entering it in a ``with``.  ``with`` closes it on exit and never lets an error
from closing replace the error that ended the block: the first error wins.

A handle garbage-collected while still open releases what it holds and emits
a :class:`ResourceWarning`, as an unclosed file does.  An object opened *for*
another (a device's regions, interrupts, group and container) names that
owner in ``_owner``: while the owner is open, the owner closes it, in the
order the kernel needs, and it stays silent.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional, Type, TypeVar

from pyvfio import errors

__all__ = ["Handle"]

H = TypeVar("H", bound="Handle")


class Handle:
    """Base of fd-owning objects: ``closed``, :meth:`close`, ``with``, a finalizer.

    Subclasses implement :meth:`_release` (free what they hold, in the order
    the kernel needs) and call :meth:`_check_open` before using it; those with
    their own ``close`` override ``closed`` to match.  ``name`` is what error
    messages call the object (a device address, a node path).
    """

    name: str = "handle"
    _closed: bool = False
    #: the object whose close() closes this one (None: the user owns it)
    _owner: Optional["Handle"] = None
    _closing: bool = False

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    def _check_open(self) -> Any:
        if self.closed:
            raise errors.ClosedError(f"{type(self).__name__} {self.name}", device=self.name)
        return None

    def _release(self) -> None:
        """Free the kernel resources held (override)."""

    def close(self) -> None:
        """Release everything held; closing twice is a no-op.

        The object stays usable by its own :meth:`_release` (which may need to
        unmap or detach first) and counts as closed once that returns.  When
        :meth:`_release` refuses (raises), the object stays open, so the close
        can be retried: ``_release`` must be safe to run again.
        """
        if self._closed or self._closing:
            return
        self._closing = True
        try:
            self._release()
            self._closed = True
        finally:
            self._closing = False

    def __enter__(self: H) -> H:
        if self.closed:
            raise errors.ClosedError(f"{type(self).__name__} {self.name}", device=self.name,
                                     remedy="open a new one; a closed object cannot be "
                                            "used again, not even in a `with`")
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Any) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.close()
        except Exception:       # keep the error that ended the block
            pass

    def __del__(self) -> None:
        try:
            if self.closed:
                return
            owner = self._owner
            if owner is not None and not owner.closed:
                return              # the owner's finalizer closes it, in the kernel's order
            warnings.warn(f"unclosed {self!r}: close it, or use it in a `with` block",
                          ResourceWarning, source=self, stacklevel=2)
            self.close()
        except Exception:           # a finalizer must not raise (and may run at exit)
            pass

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<{type(self).__name__} {self.name} {state}>"
