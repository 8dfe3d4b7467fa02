"""Fixtures of the VFIO tests."""
from __future__ import annotations

from typing import Iterator

import pytest

from pyvfio.core import syscalls
from pyvfio.drivers.edu import Edu


@pytest.fixture
def edu(vfio_edu) -> Iterator[Edu]:
    """An edu driver on the device of ``vfio_edu``'s path; closing it must release everything."""
    before = syscalls.open_fds()
    dev = vfio_edu.open()
    try:
        yield Edu(dev)
    finally:
        dev.close()
    # closing the device released every fd, mapping and eventfd it had
    assert syscalls.open_fds() == before
    assert syscalls.live_mappings() == []
