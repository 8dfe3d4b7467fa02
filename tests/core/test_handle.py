"""core.handle.Handle: one way for every fd-owning object to close."""
from __future__ import annotations

from typing import List

import pytest

from pyvfio import errors
from pyvfio.core.handle import Handle

pytestmark = pytest.mark.host


class Thing(Handle):
    name = "thing0"

    def __init__(self, fail_times: int = 0) -> None:
        self.released: List[str] = []
        self.fail_times = fail_times

    def use(self) -> str:
        self._check_open()
        return "used"

    def _release(self) -> None:
        self.use()                       # still usable while it releases
        if self.fail_times:
            self.fail_times -= 1
            raise errors.BusyError("still mapped", device=self.name)
        self.released.append("fd")


def test_close_releases_once_and_then_refuses_use():
    t = Thing()
    t.close()
    t.close()
    assert t.released == ["fd"] and t.closed
    with pytest.raises(errors.ClosedError) as ei:
        t.use()
    assert ei.value.device == "thing0" and "Thing thing0" in str(ei.value)


def test_with_keeps_the_error_that_ended_the_block():
    t = Thing(fail_times=1)
    with pytest.raises(KeyError):
        with t:
            raise KeyError("the block's own error")
    assert t.released == [] and not t.closed      # the refused close changed nothing
    t.close()
    assert t.released == ["fd"] and t.closed


def test_with_raises_the_close_error_when_the_block_succeeded():
    t = Thing(fail_times=1)
    with pytest.raises(errors.BusyError, match="still mapped"):
        with t:
            pass
    assert not t.closed


def test_entering_a_closed_handle_is_refused():
    t = Thing()
    t.close()
    with pytest.raises(errors.ClosedError):
        with t:
            pass
