"""VFIO's argsz protocol, variable-length structs and capability chains.

VFIO structs start with ``argsz``: the caller says how much room it gave, the
kernel says how much it needed.  An ``*_GET_INFO`` call whose answer does not
fit (it has capabilities to report) returns with ``argsz`` larger than given,
and the caller calls again with a larger buffer.  The extra bytes hold a chain
of capabilities, each starting with ``struct vfio_info_cap_header`` whose
``next`` is the offset of the following one from the start of the info
struct (0 ends the chain).

Every caller in pyvfio uses :func:`get_info`, :func:`new_var` and
:func:`caps` rather than handling argsz itself.
"""
from __future__ import annotations

import errno as _errno
from typing import Any, Dict, FrozenSet, Iterator, Mapping, NamedTuple, Optional, Tuple

from pyvfio import errors
from pyvfio.core import syscalls
from pyvfio.core.uapi import ffi, lib

__all__ = ["Info", "Cap", "new", "new_var", "get_info", "caps", "call_growing"]

_MAX_ARGSZ = 1 << 20        # a kernel answer larger than this is a bug, not data


class Info:
    """An info struct as the kernel filled it, with the bytes behind it.

    ``struct`` is a cdata pointer to the info struct; ``nbytes`` the number of
    valid bytes (its final ``argsz``).  Other attributes are the struct's.
    """

    __slots__ = ("struct", "nbytes", "_keep")

    def __init__(self, struct: Any, nbytes: int, keep: Any) -> None:
        self.struct = struct
        self.nbytes = nbytes
        self._keep = keep

    def __getattr__(self, name: str) -> Any:
        return getattr(self.struct, name)

    def raw(self) -> bytes:
        """The whole answer, capabilities included."""
        return bytes(ffi.buffer(self.struct, self.nbytes))


class Cap(NamedTuple):
    """One capability of a chain: its id, version and a pointer typed by id."""
    id: int
    version: int
    offset: int
    data: Any


def new(ctype: str, **fields: Any) -> Any:
    """``ffi.new(ctype *)`` with its size field set and ``fields`` filled.

    VFIO structs say their size in ``argsz``; iommufd structs in ``size``.
    """
    info = _NEW.get(ctype)
    if info is None:
        info = _NEW[ctype] = _new_info(ctype)
    ptype, sizefield, size = info
    if sizefield is not None:
        fields.setdefault(sizefield, size)
    return ffi.new(ptype, fields)


def _new_info(ctype: str) -> Tuple[Any, Optional[str], int]:
    names = _fieldnames(ctype)
    if "argsz" in names:
        field: Optional[str] = "argsz"
    elif ctype.startswith("struct iommu_") and "size" in names:
        field = "size"
    else:
        field = None
    return ffi.typeof(ctype + " *"), field, ffi.sizeof(ctype)


_NEW: Dict[str, Tuple[Any, Optional[str], int]] = {}
_FIELDS: Dict[str, FrozenSet[str]] = {}


def _fieldnames(ctype: str) -> FrozenSet[str]:
    names = _FIELDS.get(ctype)
    if names is None:
        names = _FIELDS[ctype] = frozenset(n for n, _ in ffi.typeof(ctype).fields or ())
    return names


def new_var(ctype: str, array: str, items: int, /, **fields: Any) -> Any:
    """A struct ending in a flexible array ``array`` with room for ``items`` items.

    ``argsz`` covers the struct and the items.  The returned pointer owns the
    memory; keep it alive while the kernel uses it.
    """
    item = ffi.typeof(ctype).fields
    elem = dict(item)[array].type.item
    size = ffi.offsetof(ctype, array) + items * ffi.sizeof(elem)
    size = max(size, ffi.sizeof(ctype))
    buf = ffi.new("char[]", size)
    p = ffi.cast(ctype + " *", buf)
    if "argsz" in _fieldnames(ctype):
        p.argsz = size
    for k, v in fields.items():
        setattr(p, k, v)
    return _Owned(p, buf)


class _Owned:
    """A cast pointer that keeps its buffer alive (cffi does not, for casts)."""

    __slots__ = ("ptr", "buf")

    def __init__(self, ptr: Any, buf: Any) -> None:
        self.ptr = ptr
        self.buf = buf

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ptr, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _Owned.__slots__:
            object.__setattr__(self, name, value)
        else:
            setattr(self.ptr, name, value)


def get_info(fd: int, request: int, ctype: str, *, device: Optional[str] = None,
             **fields: Any) -> Info:
    """Call a VFIO ``*_GET_INFO`` ioctl, growing the buffer until the answer fits.

    ``fields`` are the inputs (e.g. ``index=``).  Returns an :class:`Info`
    whose capabilities, if any, :func:`caps` walks.
    """
    size = ffi.sizeof(ctype)
    p = new(ctype, **fields)
    syscalls.ioctl(fd, request, p, device=device)
    keep: Any = p
    for _ in range(4):
        need = p.argsz
        if need <= size:
            return Info(p, size, keep)
        if need > _MAX_ARGSZ:
            raise errors.InvalidArgumentError(
                f"kernel asked for an argsz of {need} bytes", op=syscalls.ioctl_name(request),
                path=syscalls.path_of(fd), device=device)
        buf = ffi.new("char[]", need)
        p = ffi.cast(ctype + " *", buf)
        p.argsz = need
        for k, v in fields.items():
            setattr(p, k, v)
        keep = buf
        size = need
        syscalls.ioctl(fd, request, p, device=device)
    raise errors.InvalidArgumentError("argsz kept growing", op=syscalls.ioctl_name(request),
                                      path=syscalls.path_of(fd), device=device)


def caps(info: Info, cap_offset: int, types: Mapping[int, str]) -> Iterator[Cap]:
    """Walk the capability chain of ``info`` starting at ``cap_offset``.

    ``types`` maps a capability id to its struct type; capabilities of an
    unknown id are yielded with a ``struct vfio_info_cap_header *``.  A chain
    that points outside the answer or loops is refused.
    """
    base = ffi.cast("char *", info.struct)
    seen = set()
    off = cap_offset
    hdr_size = ffi.sizeof("struct vfio_info_cap_header")
    while off:
        if off in seen or off < hdr_size or off + hdr_size > info.nbytes:
            raise errors.InvalidArgumentError(
                f"malformed capability chain (offset {off} in {info.nbytes} bytes)")
        seen.add(off)
        hdr = ffi.cast("struct vfio_info_cap_header *", base + off)
        ctype = types.get(hdr.id, "struct vfio_info_cap_header")
        yield Cap(hdr.id, hdr.version, off, ffi.cast(ctype + " *", base + off))
        off = hdr.next


def call_growing(fd: int, request: int, make: Any, count_of: Any, *,
                 grow_errnos: Tuple[int, ...] = (_errno.ENOSPC, _errno.EMSGSIZE),
                 device: Optional[str] = None, start: int = 8,
                 ptr_of: Any = None) -> Any:
    """Call an ioctl that reports "too small" with an errno and the count it needs.

    ``make(count)`` builds the argument for room for ``count`` items;
    ``count_of(arg)`` reads back how many the kernel has; ``ptr_of(arg)``
    gives the pointer to pass when ``make`` returns more than one object.  Used for
    PCI_HOT_RESET_INFO (ENOSPC) and IOMMU_IOAS_IOVA_RANGES (EMSGSIZE).
    """
    count = start
    for _ in range(4):
        arg = make(count)
        ptr = ptr_of(arg) if ptr_of else (arg.ptr if isinstance(arg, _Owned) else arg)
        try:
            syscalls.ioctl(fd, request, ptr, device=device)
            return arg
        except errors.PyvfioError as exc:
            if exc.errno not in grow_errnos:
                raise
            need = count_of(arg)
            if need <= count:
                raise
            count = need
    raise errors.InvalidArgumentError("answer kept growing", op=syscalls.ioctl_name(request))


# Capability types of the VFIO info ioctls, by capability id.
REGION_CAPS: Dict[int, str] = {
    lib.VFIO_REGION_INFO_CAP_SPARSE_MMAP: "struct vfio_region_info_cap_sparse_mmap",
    lib.VFIO_REGION_INFO_CAP_TYPE: "struct vfio_region_info_cap_type",
}
IOMMU_TYPE1_CAPS: Dict[int, str] = {
    lib.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: "struct vfio_iommu_type1_info_cap_iova_range",
    lib.VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION: "struct vfio_iommu_type1_info_cap_migration",
    lib.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL: "struct vfio_iommu_type1_info_dma_avail",
}
DEVICE_CAPS: Dict[int, str] = {
    lib.VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP: "struct vfio_device_info_cap_pci_atomic_comp",
}
