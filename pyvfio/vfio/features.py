"""VFIO device features: ``VFIO_DEVICE_FEATURE`` probe, get and set.

One ioctl multiplexes optional device capabilities, each with a payload of
its own: migration (the device-state machine and its data fd), low-power
entry and exit (runtime PM of an idle device), and DMA dirty-page logging.
A device or kernel without a feature answers ENOTTY (or EOPNOTSUPP); pyvfio
turns those into :class:`~pyvfio.errors.NotSupportedError` naming the feature.
Other errors (EINVAL for a bad argument or migration arc) stay what they are.
"""
from __future__ import annotations

import errno as _errno
from typing import Any, List, Optional, Sequence, Tuple

from pyvfio import errors
from pyvfio.core import argsz
from pyvfio.core import syscalls
from pyvfio.core.uapi import ffi, lib

__all__ = ["Features", "MIGRATION_STATES"]

MIGRATION_STATES = {
    lib.VFIO_DEVICE_STATE_ERROR: "error", lib.VFIO_DEVICE_STATE_STOP: "stop",
    lib.VFIO_DEVICE_STATE_RUNNING: "running", lib.VFIO_DEVICE_STATE_STOP_COPY: "stop_copy",
    lib.VFIO_DEVICE_STATE_RESUMING: "resuming", lib.VFIO_DEVICE_STATE_RUNNING_P2P: "running_p2p",
    lib.VFIO_DEVICE_STATE_PRE_COPY: "pre_copy", lib.VFIO_DEVICE_STATE_PRE_COPY_P2P: "pre_copy_p2p",
}
_STATE_OF_NAME = {v: k for k, v in MIGRATION_STATES.items()}
_FEATURE_NAMES = {
    lib.VFIO_DEVICE_FEATURE_MIGRATION: "migration",
    lib.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE: "migration device state",
    lib.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY: "low-power entry",
    lib.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP: "low-power entry with wakeup",
    lib.VFIO_DEVICE_FEATURE_LOW_POWER_EXIT: "low-power exit",
    lib.VFIO_DEVICE_FEATURE_DMA_LOGGING_START: "DMA logging start",
    lib.VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP: "DMA logging stop",
    lib.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT: "DMA logging report",
}
_UNSUPPORTED = (_errno.ENOTTY, _errno.EOPNOTSUPP)


class Features:
    """The VFIO_DEVICE_FEATURE interface of one open device."""

    def __init__(self, device: Any) -> None:
        self.device = device

    def call(self, feature: int, flags: int, payload: Optional[Any] = None,
             size: int = 0) -> bytes:
        """One ``VFIO_DEVICE_FEATURE`` call; ``payload`` is a cdata struct pointer or bytes.

        Returns the payload as the kernel left it.
        """
        raw = (bytes(ffi.buffer(payload)) if payload is not None and not isinstance(payload, bytes)
               else (payload or b""))
        size = max(size, len(raw))
        p = argsz.new_var("struct vfio_device_feature", "data", size, flags=flags | feature)
        if raw:
            ffi.memmove(p.ptr.data, raw, len(raw))
        try:
            syscalls.ioctl(self.device._check_open(), lib.VFIO_DEVICE_FEATURE, p.ptr,
                           device=self.device.name)
        except errors.PyvfioError as exc:
            if exc.errno in _UNSUPPORTED:
                name = _FEATURE_NAMES.get(feature, f"feature {feature}")
                raise errors.NotSupportedError(
                    f"{name} is not supported by this device or kernel", errno=exc.errno,
                    op="VFIO_DEVICE_FEATURE", device=self.device.name) from None
            raise
        return bytes(ffi.buffer(p.ptr.data, size))

    def probe(self, feature: int, *, get: bool = False, set: bool = False) -> bool:
        """FEATURE_PROBE: whether the device offers ``feature`` (for get and/or set)."""
        flags = lib.VFIO_DEVICE_FEATURE_PROBE
        flags |= lib.VFIO_DEVICE_FEATURE_GET if get else 0
        flags |= lib.VFIO_DEVICE_FEATURE_SET if set else 0
        try:
            self.call(feature, flags)
            return True
        except errors.NotSupportedError:
            return False

    def supported(self) -> List[str]:
        """Names of the features the device answers a probe for."""
        out = []
        for feature, name in _FEATURE_NAMES.items():
            if self.probe(feature, get=True) or self.probe(feature, set=True):
                out.append(name)
        return out

    def _get(self, feature: int, ctype: str) -> Any:
        data = self.call(feature, lib.VFIO_DEVICE_FEATURE_GET, size=ffi.sizeof(ctype))
        p = ffi.new(ctype + " *")
        ffi.memmove(p, data, ffi.sizeof(ctype))
        return p

    # -- migration -------------------------------------------------------------
    def migration_flags(self) -> int:
        """VFIO_DEVICE_FEATURE_MIGRATION: STOP_COPY, P2P, PRE_COPY support bits."""
        return int(self._get(lib.VFIO_DEVICE_FEATURE_MIGRATION,
                             "struct vfio_device_feature_migration").flags)

    def migration_state(self) -> str:
        """The device's migration state (``running``, ``stop``, ...)."""
        p = self._get(lib.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, "struct vfio_device_feature_mig_state")
        return MIGRATION_STATES.get(p.device_state, str(p.device_state))

    def set_migration_state(self, state: str) -> Optional[int]:
        """Move the device to ``state``; returns the data fd the kernel opens for
        STOP_COPY, RESUMING and PRE_COPY (closed with the device)."""
        if state not in _STATE_OF_NAME:
            raise errors.InvalidArgumentError(
                f"unknown migration state {state!r}", remedy=f"one of {', '.join(_STATE_OF_NAME)}")
        p = ffi.new("struct vfio_device_feature_mig_state *", {"device_state": _STATE_OF_NAME[state],
                                                               "data_fd": -1})
        out = self.call(lib.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
                        lib.VFIO_DEVICE_FEATURE_SET, p)
        ffi.memmove(p, out, ffi.sizeof(p[0]))
        return syscalls.adopt(p.data_fd, f"{self.device.name} migration data") \
            if p.data_fd >= 0 else None

    # -- power -------------------------------------------------------------------
    def low_power_entry(self, wakeup_eventfd: Optional[int] = None) -> None:
        """Let the idle device enter D3 (optionally signalling ``wakeup_eventfd`` on wake-up).

        Mapped regions are inaccessible until :meth:`low_power_exit`.
        """
        if wakeup_eventfd is None:
            self.call(lib.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY, lib.VFIO_DEVICE_FEATURE_SET)
        else:
            p = ffi.new("struct vfio_device_low_power_entry_with_wakeup *",
                        {"wakeup_eventfd": wakeup_eventfd})
            self.call(lib.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP,
                      lib.VFIO_DEVICE_FEATURE_SET, p)

    def low_power_exit(self) -> None:
        """Bring the device back to D0."""
        self.call(lib.VFIO_DEVICE_FEATURE_LOW_POWER_EXIT, lib.VFIO_DEVICE_FEATURE_SET)

    # -- DMA dirty-page logging ------------------------------------------------------
    def dma_logging_start(self, ranges: Sequence[Tuple[int, int]], page_size: int = 4096) -> None:
        """Track device writes to the IOVA ``(iova, length)`` ranges."""
        arr = ffi.new("struct vfio_device_feature_dma_logging_range[]", len(ranges))
        for i, (iova, length) in enumerate(ranges):
            arr[i].iova, arr[i].length = iova, length
        p = ffi.new("struct vfio_device_feature_dma_logging_control *",
                    {"page_size": page_size, "num_ranges": len(ranges),
                     "ranges": int(ffi.cast("uintptr_t", arr))})
        self.call(lib.VFIO_DEVICE_FEATURE_DMA_LOGGING_START, lib.VFIO_DEVICE_FEATURE_SET, p)

    def dma_logging_stop(self) -> None:
        self.call(lib.VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, lib.VFIO_DEVICE_FEATURE_SET)

    def dma_logging_report(self, iova: int, length: int, page_size: int = 4096) -> bytes:
        """The dirty bitmap (one bit per page) of ``[iova, iova+length)``."""
        pages = (length + page_size - 1) // page_size
        bitmap = ffi.new("uint64_t[]", max(1, (pages + 63) // 64))
        p = ffi.new("struct vfio_device_feature_dma_logging_report *",
                    {"iova": iova, "length": length, "page_size": page_size,
                     "bitmap": int(ffi.cast("uintptr_t", bitmap))})
        self.call(lib.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, lib.VFIO_DEVICE_FEATURE_GET, p)
        return bytes(ffi.buffer(bitmap))
