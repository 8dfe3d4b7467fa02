"""edu's registers follow the byte order of the machine QEMU emulates: the driver
tells it from the identification register (big-endian under qemu-system-ppc64)."""
from __future__ import annotations

import pytest

from pyvfio import errors
from pyvfio.drivers.edu import Edu

pytestmark = pytest.mark.host


class FakeBar:
    def __init__(self, raw: int) -> None:
        self.raw, self.endian = raw, "little"

    def read32(self, off: int) -> int:
        assert off == 0
        return self.raw if self.endian == "little" else int.from_bytes(
            self.raw.to_bytes(4, "little"), "big")


@pytest.mark.parametrize("raw, order", [(0x010000ED, "little"), (0xED000001, "big")])
def test_byte_order_from_the_identification_register(raw, order):
    bar = FakeBar(raw)
    assert Edu.detect_endian(bar) == order
    bar.endian = order
    assert bar.read32(0) == 0x010000ED and Edu.detect_endian(bar) == order


def test_not_an_edu():
    with pytest.raises(errors.NotFoundError, match="not an edu device"):
        Edu.detect_endian(FakeBar(0x12345678))
