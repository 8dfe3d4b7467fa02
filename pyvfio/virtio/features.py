"""Names of virtio feature bits, from the binding's constants."""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from pyvfio.core import uapi

__all__ = ["feature_names", "bits_of"]

_GENERIC = ("VIRTIO_F_", "VIRTIO_RING_F_", "VHOST_F_")
_BY_DEVICE = {
    "net": ("VIRTIO_NET_F_", "VHOST_NET_F_"),
    "vsock": ("VIRTIO_VSOCK_F_",),
    "scsi": ("VIRTIO_SCSI_F_",),
    "blk": ("VIRTIO_BLK_F_",),
}
_cache: Dict[str, Dict[int, List[str]]] = {}


def bits_of(device: str = "") -> Dict[int, List[str]]:
    """Feature bit number -> names, for the generic bits and those of ``device``."""
    if device in _cache:
        return _cache[device]
    prefixes: Tuple[str, ...] = _GENERIC + _BY_DEVICE.get(device, ())
    out: Dict[int, List[str]] = {}
    for name in uapi.CONSTANTS:
        if name.startswith(prefixes) and not name.endswith(("_MASK", "_SHIFT")):
            value = getattr(uapi.lib, name, None)
            if isinstance(value, int) and 0 <= value < 64 and "TRANSPORT" not in name:
                out.setdefault(value, []).append(name)
    _cache[device] = out
    return out


def feature_names(features: int, device: str = "") -> List[str]:
    """The names of the bits set in ``features`` (``bit N`` for unknown ones)."""
    table = bits_of(device)
    names = []
    for bit in range(64):
        if features >> bit & 1:
            candidates = table.get(bit)
            if not candidates:
                names.append(f"bit {bit}")
                continue
            own = [c for c in candidates if c.startswith(_BY_DEVICE.get(device, ("-",)))]
            modern = [c for c in candidates if c != "VIRTIO_F_IOMMU_PLATFORM"]
            names.append((own or modern or candidates)[0])
    return names
