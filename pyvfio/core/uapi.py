"""The kernel's uAPI as the C compiler sees it: ``ffi`` and ``lib``.

``lib`` holds every ioctl request, ``#define`` and enum constant of the covered
headers (string macros as ``char *``, read with ``ffi.string``), ``ffi`` every struct and union (``ffi.new("struct vfio_region_info *")``).
Both were generated from this system's headers when pyvfio was built, so
values and layouts are the kernel's own on every architecture.

``FAMILIES`` maps each uAPI family found at build time to its headers;
``MISSING`` lists the families whose headers were absent; ``IOCTLS``,
``CONSTANTS`` and ``STRUCTS`` name what the binding holds.
"""
from __future__ import annotations

import json
from typing import Dict, List, Tuple

try:
    from pyvfio.core._uapi import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "pyvfio's uAPI binding is not built (pyvfio.core._uapi is missing): install pyvfio "
        "with `pip install .` or `pip install -e .`, which compiles it against the "
        "kernel headers of linux-libc-dev") from exc

_meta = json.loads(ffi.string(lib.pyvfio_meta()))

FAMILIES: Dict[str, Tuple[str, ...]] = {k: tuple(v) for k, v in _meta["families"].items()}
MISSING: Tuple[str, ...] = tuple(_meta["missing"])
IOCTLS: Tuple[str, ...] = tuple(_meta["ioctls"])
CONSTANTS: Tuple[str, ...] = tuple(_meta["constants"])
STRINGS: Tuple[str, ...] = tuple(_meta["strings"])
STRUCTS: Tuple[str, ...] = tuple(_meta["structs"])
FAMILY_OF: Dict[str, str] = dict(_meta["family_of"])
SKIPPED: List[str] = list(_meta["skipped"])

__all__ = ["ffi", "lib", "FAMILIES", "MISSING", "IOCTLS", "CONSTANTS", "STRINGS", "STRUCTS", "FAMILY_OF"]
del _meta
