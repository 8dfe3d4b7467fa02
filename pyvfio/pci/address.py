"""PCI function addresses: the one parser of ``domain:bus:slot.function``."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Union

from pyvfio import errors

__all__ = ["PciAddress", "is_bdf", "spelled"]

_BDF = re.compile(r"^(?:(?P<domain>[0-9a-fA-F]{1,8}):)?(?P<bus>[0-9a-fA-F]{1,2}):"
                  r"(?P<slot>[0-9a-fA-F]{1,2})\.(?P<function>[0-7])$")


def is_bdf(name: str) -> bool:
    """Whether ``name`` is spelled like a PCI address (``0000:00:1f.3`` or ``00:1f.3``)."""
    return _BDF.match(name) is not None


def spelled(text: str) -> Optional[str]:
    """The kernel's spelling of a well-formed address, even one out of range; else None."""
    match = _BDF.match(text.strip())
    if match is None:
        return None
    return (f"{int(match['domain'] or '0', 16):04x}:{int(match['bus'], 16):02x}:"
            f"{int(match['slot'], 16):02x}.{match['function']}")


@dataclass(frozen=True, order=True)
class PciAddress:
    """A PCI function address (domain:bus:slot.function), as the kernel names it."""

    domain: int
    bus: int
    slot: int
    function: int

    def __post_init__(self) -> None:
        limits = (("domain", 0xFFFFFFFF), ("bus", 0xFF), ("slot", 0x1F), ("function", 7))
        for field_name, limit in limits:
            value = getattr(self, field_name)
            if not isinstance(value, int) or not 0 <= value <= limit:
                raise errors.InvalidArgumentError(
                    f"PCI {field_name} {value!r} out of range 0..{limit:#x}",
                    remedy="a PCI address looks like 0000:00:1f.3 (domain:bus:slot.function)")

    @classmethod
    def parse(cls, text: Union[str, "PciAddress"]) -> "PciAddress":
        """Parse ``0000:00:10.0`` or the short ``00:10.0`` (domain 0000)."""
        if isinstance(text, PciAddress):
            return text
        match = _BDF.match(text.strip()) if isinstance(text, str) else None
        if match is None:
            raise errors.InvalidArgumentError(
                f"not a PCI address: {text!r}",
                remedy="a PCI address looks like 0000:00:1f.3 or 00:1f.3 "
                       "(domain:bus:slot.function, hexadecimal); `pyvfio ls` lists them")
        return cls(int(match["domain"] or "0", 16), int(match["bus"], 16),
                   int(match["slot"], 16), int(match["function"]))

    @property
    def devfn(self) -> int:
        """slot << 3 | function, as in the routing ID."""
        return self.slot << 3 | self.function

    @property
    def rid(self) -> int:
        """The 16-bit routing ID (bus << 8 | devfn)."""
        return self.bus << 8 | self.devfn

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.function:x}"

