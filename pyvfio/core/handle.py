"""One base for every object that owns kernel resources (fds, mappings, pins).

A :class:`Handle` is open until :meth:`~Handle.close`; after that every use
raises :class:`~pyvfio.errors.ClosedError` naming the object.  ``with`` closes
it on exit and never lets an error from closing replace the error that ended
the block: the first error wins, the close error is chained as its context.
"""
from __future__ import annotations

from typing import Any, Optional, Type, TypeVar

from pyvfio import errors

__all__ = ["Handle"]

H = TypeVar("H", bound="Handle")


class Handle:
    """Base of fd-owning objects: ``closed``, :meth:`close`, ``with``.

    Subclasses implement :meth:`_release` (free what they hold, in the order
    the kernel needs) and call :meth:`_check_open` before using it.  ``name``
    is what error messages call the object (a device address, a node path).
    """

    name: str = "handle"
    _closed: bool = False
    _closing: bool = False

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise errors.ClosedError(f"{type(self).__name__} {self.name}", device=self.name)

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
        self._check_open()
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

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self.name} {state}>"
