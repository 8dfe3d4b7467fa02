"""The virtio-blk request protocol on a driver-side virtqueue (any transport).

A request is one descriptor chain: ``struct virtio_blk_outhdr`` (type,
ioprio, sector; device-readable), the data (device-readable for a write,
device-writable for a read or GET_ID) and one status byte the device writes
(``VIRTIO_BLK_S_OK``, ``_IOERR``, ``_UNSUPP``).  Sectors are 512 bytes
whatever the device's block size.

:class:`BlkDriver` keeps one slot of memory (header, data, status) per
request in flight, so batches of requests reuse the same regions.
"""
from __future__ import annotations

import struct
from typing import List, NamedTuple, Optional, Sequence, Tuple

from pyvfio import errors
from pyvfio.core.uapi import lib
from pyvfio.virtio.memory import DeviceMemory, Region
from pyvfio.virtio.queue import Virtqueue

__all__ = ["BlkDriver", "BlkRequest", "SECTOR_SIZE", "ID_BYTES"]

SECTOR_SIZE = 512
ID_BYTES = lib.VIRTIO_BLK_ID_BYTES
_HDR = struct.Struct("<IIQ")
_STATUS_NAMES = {lib.VIRTIO_BLK_S_OK: "OK", lib.VIRTIO_BLK_S_IOERR: "IOERR",
                 lib.VIRTIO_BLK_S_UNSUPP: "UNSUPP"}


class BlkRequest(NamedTuple):
    """One request to queue: ``type`` (VIRTIO_BLK_T_*), ``sector``, data to write or bytes to read."""
    type: int
    sector: int = 0
    data: bytes = b""
    read_len: int = 0


class _Slot:
    __slots__ = ("hdr", "data", "status")

    def __init__(self, memory: DeviceMemory, max_bytes: int) -> None:
        self.hdr = memory.alloc(_HDR.size, 16)
        self.data = memory.alloc(max_bytes, 512)
        self.status = memory.alloc(1, 1)


class BlkDriver:
    """virtio-blk requests on ``queue`` (whose memory also holds the request buffers).

    ``depth`` slots of ``max_bytes`` data each are allocated up front.
    """

    def __init__(self, queue: Virtqueue, *, depth: int = 32, max_bytes: int = 64 * 1024) -> None:
        if depth > queue.size:
            raise errors.InvalidArgumentError(f"depth {depth} exceeds the queue size {queue.size}")
        self.queue = queue
        self.max_bytes = max_bytes
        self.slots = [_Slot(queue.memory, max_bytes) for _ in range(depth)]
        self._free = list(range(depth - 1, -1, -1))

    # -- one request at a time --------------------------------------------------------------
    def read(self, sector: int, count: int = 1, timeout: Optional[float] = 10.0) -> bytes:
        """Read ``count`` sectors at ``sector``; raises on a status other than OK."""
        (status, data), = self.run([BlkRequest(lib.VIRTIO_BLK_T_IN, sector,
                                               read_len=count * SECTOR_SIZE)], timeout)
        self._check(status, "read", sector)
        return data

    def write(self, sector: int, data: bytes, timeout: Optional[float] = 10.0) -> None:
        """Write ``data`` (a multiple of 512 bytes) at ``sector``."""
        if len(data) % SECTOR_SIZE:
            raise errors.InvalidArgumentError(f"{len(data)} bytes is not a whole number of sectors")
        (status, _), = self.run([BlkRequest(lib.VIRTIO_BLK_T_OUT, sector, data)], timeout)
        self._check(status, "write", sector)

    def flush(self, timeout: Optional[float] = 10.0) -> int:
        """VIRTIO_BLK_T_FLUSH; returns the status byte."""
        (status, _), = self.run([BlkRequest(lib.VIRTIO_BLK_T_FLUSH)], timeout)
        return status

    def get_id(self, timeout: Optional[float] = 10.0) -> bytes:
        """VIRTIO_BLK_T_GET_ID: the device's serial (up to 20 bytes, NUL padded)."""
        (status, data), = self.run([BlkRequest(lib.VIRTIO_BLK_T_GET_ID, read_len=ID_BYTES)], timeout)
        self._check(status, "get-id", 0)
        return data

    def status_of(self, request: BlkRequest, timeout: Optional[float] = 10.0) -> int:
        """Run one request and return its status byte (no exception for IOERR/UNSUPP)."""
        (status, _), = self.run([request], timeout)
        return status

    def _check(self, status: int, what: str, sector: int) -> None:
        if status != lib.VIRTIO_BLK_S_OK:
            raise errors.PyvfioError(
                f"{what} at sector {sector}: device answered "
                f"VIRTIO_BLK_S_{_STATUS_NAMES.get(status, str(status))}", device=self.queue.name)

    # -- batches -------------------------------------------------------------------------------
    def submit(self, request: BlkRequest) -> int:
        """Queue one request (no kick); returns its slot."""
        if not self._free:
            raise errors.QueueFullError(f"all {len(self.slots)} request slots in flight",
                                        device=self.queue.name)
        size = len(request.data) or request.read_len
        if size > self.max_bytes:
            raise errors.InvalidArgumentError(f"{size} bytes exceed a slot's {self.max_bytes}")
        i = self._free.pop()
        s = self.slots[i]
        s.hdr.write(_HDR.pack(request.type, 0, request.sector))
        s.status.write(b"\xff")
        readable: List[Region] = [s.hdr]
        writable: List[Region] = []
        if request.data:
            s.data.write(request.data)
            readable.append(s.data.sub(0, len(request.data)))
        elif request.read_len:
            writable.append(s.data.sub(0, request.read_len))
        writable.append(s.status)
        self.queue.add(readable, writable, token=(i, request.read_len))
        return i

    def complete(self, used) -> Tuple[int, bytes]:
        """Status and data of a used request; its slot is free again."""
        i, read_len = used.token
        s = self.slots[i]
        status = s.status.read(0, 1)[0]
        data = s.data.read(0, read_len) if read_len else b""
        self._free.append(i)
        return status, data

    def run(self, requests: Sequence[BlkRequest], timeout: Optional[float] = 10.0
            ) -> List[Tuple[int, bytes]]:
        """Queue ``requests``, kick once, wait for all; (status, data) in request order."""
        slots = [self.submit(r) for r in requests]
        self.queue.kick()
        done = {}
        for u in self.queue.wait_for(len(requests), timeout):
            done[u.token[0]] = self.complete(u)
        return [done[i] for i in slots]
