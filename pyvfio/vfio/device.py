"""A VFIO device: the fd through which a userspace driver owns one device.

The fd comes either from a group (``VFIO_GROUP_GET_DEVICE_FD``, legacy
container path) or from the device's cdev ``/dev/vfio/devices/vfioN`` bound
to an iommufd (``VFIO_DEVICE_BIND_IOMMUFD`` + ``VFIO_DEVICE_ATTACH_IOMMUFD_PT``).
Either way the device offers the same things: regions, interrupts, reset and
features; and either way ``device.dma`` is the I/O address space its DMA
goes through.  :func:`pyvfio.vfio.open.open_device` chooses the path.
"""
from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Sequence, TYPE_CHECKING

from pyvfio import errors
from pyvfio.core import args, argsz
from pyvfio.core import syscalls
from pyvfio.core.handle import Handle
from pyvfio.core.memory import DmaBuffer
from pyvfio.core.space import IoAddressSpace
from pyvfio.vfio.irq import Irq
from pyvfio.vfio.region import Region
from pyvfio.core.uapi import lib


if TYPE_CHECKING:  # pragma: no cover
    from pyvfio.pci.config import PciConfig
    from pyvfio.vfio.features import Features

__all__ = ["Device", "DeviceInfo", "HotResetDevice"]


class DeviceInfo(NamedTuple):
    flags: int
    num_regions: int
    num_irqs: int

    @property
    def is_pci(self) -> bool:
        return bool(self.flags & lib.VFIO_DEVICE_FLAGS_PCI)

    @property
    def can_reset(self) -> bool:
        return bool(self.flags & lib.VFIO_DEVICE_FLAGS_RESET)


class HotResetDevice(NamedTuple):
    """One device a hot reset would affect (``VFIO_DEVICE_GET_PCI_HOT_RESET_INFO``)."""
    group_id: int
    segment: int
    bus: int
    devfn: int

    @property
    def address(self) -> str:
        return f"{self.segment:04x}:{self.bus:02x}:{self.devfn >> 3:02x}.{self.devfn & 7}"


class Device(Handle):
    """An open VFIO device.

    ``owned`` are objects opened for this device (group, container, iommufd)
    that :meth:`close` closes after the device fd, last first.
    """

    def __init__(self, fd: int, name: str, *, dma: Optional[IoAddressSpace] = None,
                 group: Any = None, owned: Sequence[Any] = (), path: Optional[str] = None) -> None:
        self.fd: Optional[int] = fd
        self.name = name
        self.path = path
        self.dma = dma
        self.group = group
        self.dev_id: Optional[int] = None
        #: Address bits the device can drive (its DMA mask): IOVAs chosen by
        #: :meth:`bus_address` stay below 2**dma_mask_bits.  Drivers set it.
        self.dma_mask_bits: Optional[int] = None
        self._owned = list(owned)
        for obj in self._owned:
            obj._owner = self
        self._regions: Dict[int, Region] = {}
        self._irqs: Dict[int, Irq] = {}
        self._config: Optional["PciConfig"] = None
        try:
            self.info = self._get_info()
        except BaseException:
            self.close()
            raise

    # -- state ------------------------------------------------------------------
    def _check_open(self) -> int:
        if self._closed or self.fd is None:
            raise errors.ClosedError(f"VFIO device {self.name}", device=self.name)
        return self.fd

    def _get_info(self) -> DeviceInfo:
        info = argsz.get_info(self._check_open(), lib.VFIO_DEVICE_GET_INFO,
                              "struct vfio_device_info", device=self.name)
        return DeviceInfo(info.flags, info.num_regions, info.num_irqs)

    # -- regions ------------------------------------------------------------------
    def region(self, index: int) -> Region:
        """Region ``index`` (cached); see VFIO_PCI_*_REGION_INDEX."""
        self._check_open()
        index = args.integer(index, "region index", device=self.name, hi=None)
        r = self._regions.get(index)
        if r is None:
            if not 0 <= index < self.info.num_regions:
                raise errors.OutOfBoundsError(
                    f"region {index} does not exist ({self.info.num_regions} regions)",
                    device=self.name)
            r = self._regions[index] = Region(self, index)
        return r

    def bar(self, n: int, *, mmap: bool = True) -> Region:
        """PCI BAR ``n``, mapped into the process where the kernel allows it."""
        self._check_open()
        n = args.integer(n, "BAR number", device=self.name, hi=None)
        mmap = args.boolean(mmap, "mmap", device=self.name)
        if not 0 <= n <= 5:
            raise errors.OutOfBoundsError(f"BAR {n} does not exist (0-5)", device=self.name)
        r = self.region(lib.VFIO_PCI_BAR0_REGION_INDEX + n)
        if not r.size:
            raise errors.NotFoundError(f"BAR {n} is not implemented by the device",
                                       device=self.name, remedy="see `pyvfio info` for its BARs")
        return r.mmap() if mmap else r

    @property
    def config(self) -> "PciConfig":
        """The PCI configuration space (a :class:`pyvfio.pci.config.PciConfig`)."""
        self._check_open()
        if self._config is None:
            from pyvfio.pci.config import PciConfig
            self._config = PciConfig(self.region(lib.VFIO_PCI_CONFIG_REGION_INDEX))
        return self._config

    # -- interrupts ---------------------------------------------------------------
    def irq(self, index: int) -> Irq:
        """Interrupt index ``index`` (cached); see VFIO_PCI_*_IRQ_INDEX."""
        self._check_open()
        index = args.integer(index, "IRQ index", device=self.name, hi=None)
        q = self._irqs.get(index)
        if q is None:
            if not 0 <= index < self.info.num_irqs:
                raise errors.OutOfBoundsError(
                    f"IRQ index {index} does not exist ({self.info.num_irqs})", device=self.name)
            q = self._irqs[index] = Irq(self, index)
        return q

    @property
    def intx(self) -> Irq:
        return self.irq(lib.VFIO_PCI_INTX_IRQ_INDEX)

    @property
    def msi(self) -> Irq:
        return self.irq(lib.VFIO_PCI_MSI_IRQ_INDEX)

    @property
    def msix(self) -> Irq:
        return self.irq(lib.VFIO_PCI_MSIX_IRQ_INDEX)

    # -- reset --------------------------------------------------------------------
    def reset(self) -> None:
        """``VFIO_DEVICE_RESET``: a function-level (or equivalent) reset."""
        self._check_open()
        if not self.info.can_reset:
            raise errors.NotSupportedError("the device offers no reset method",
                                           device=self.name)
        syscalls.ioctl(self._check_open(), lib.VFIO_DEVICE_RESET, device=self.name)

    def hot_reset_info(self) -> List[HotResetDevice]:
        """``VFIO_DEVICE_GET_PCI_HOT_RESET_INFO``: the devices a bus reset would hit."""
        def make(count: int) -> Any:
            return argsz.new_var("struct vfio_pci_hot_reset_info", "devices", count)

        p = argsz.call_growing(self._check_open(), lib.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, make,
                               lambda a: a.count, device=self.name, start=4)
        return [HotResetDevice(d.group_id, d.segment, d.bus, d.devfn)
                for d in (p.ptr.devices[i] for i in range(p.count))]

    def hot_reset(self, groups: Sequence[Any] = ()) -> None:
        """``VFIO_DEVICE_PCI_HOT_RESET``: reset the bus, after proving we own every group.

        ``groups`` are the open :class:`Group` objects of the affected devices
        (this device's own group is added).  Raises a clear error naming the
        devices whose group is missing.
        """
        fd = self._check_open()
        try:
            groups = list(groups)
        except TypeError:
            raise errors.ArgumentTypeError("groups must be a sequence of open Groups",
                                           device=self.name) from None
        for g in groups:
            if not hasattr(g, "number") or not hasattr(g, "fd"):
                raise errors.ArgumentTypeError(f"groups must hold Group objects, not {g!r}",
                                               device=self.name)
            if g.closed:
                raise errors.ClosedError(f"VFIO group {g.path}", device=self.name)
        owned = {g.number: g for g in groups}
        if self.group is not None:
            owned.setdefault(self.group.number, self.group)
        missing = [d for d in self.hot_reset_info() if d.group_id not in owned]
        if missing:
            names = ", ".join(f"{d.address} (group {d.group_id})" for d in missing)
            raise errors.PermissionDeniedError(
                f"a hot reset would also reset {names}, whose groups are not open here",
                device=self.name,
                remedy="open those groups (bind the devices to vfio-pci) and pass them as groups=")
        fds = [g.fd for g in owned.values()]
        p = argsz.new_var("struct vfio_pci_hot_reset", "group_fds", len(fds), count=len(fds))
        for i, gfd in enumerate(fds):
            p.ptr.group_fds[i] = gfd
        syscalls.ioctl(fd, lib.VFIO_DEVICE_PCI_HOT_RESET, p.ptr, device=self.name)

    # -- DMA ------------------------------------------------------------------------
    def bus_address(self, buffer: DmaBuffer, offset: int = 0) -> int:
        """The address at which this device reaches ``buffer[offset]`` by DMA, in any mode.

        With an IOMMU it is an IOVA: the buffer is mapped in :attr:`dma` on
        first use (below :attr:`dma_mask_bits`) and stays mapped until it or
        the device is closed.  Without one (no-IOMMU mode) it is the physical
        address (the page is locked; see :meth:`DmaBuffer.physical_address`).
        """
        self._check_open()
        if not isinstance(buffer, DmaBuffer):
            raise errors.ArgumentTypeError(
                f"buffer must be a DmaBuffer, not {type(buffer).__name__}", device=self.name)
        buffer._check()
        offset = args.integer(offset, "offset", device=self.name, lo=None, hi=None)
        if not 0 <= offset < buffer.size:
            raise errors.OutOfBoundsError(
                f"offset {offset:#x} is outside the {buffer.size:#x}-byte DMA buffer",
                device=self.name)
        if self.dma is None:
            return buffer.physical_address(offset)
        try:
            return self.dma.iova_of(buffer, offset)
        except errors.IovaError:                    # not mapped here yet
            return self.dma.map(buffer, dma_mask_bits=self.dma_mask_bits).iova + offset

    # -- features -------------------------------------------------------------------
    @property
    def features(self) -> "Features":
        """``VFIO_DEVICE_FEATURE``: migration, low power, DMA logging (a :class:`Features`)."""
        from pyvfio.vfio.features import Features
        self._check_open()
        return Features(self)

    # -- lifetime --------------------------------------------------------------------
    def _release(self) -> None:
        """Disable interrupts, unmap BARs, remove DMA mappings, close the fd, then what was
        opened for it (group before container, the IOAS with its iommufd)."""
        first_error = None
        for q in list(self._irqs.values()):
            try:
                q.close()
            except errors.PyvfioError as exc:
                first_error = first_error or exc
        for r in list(self._regions.values()):
            r.close()
        self._irqs.clear()
        self._regions.clear()
        # unmap DMA while the IOMMU still exists: detaching the container's last
        # group drops its IOMMU, and an unmap (or sPAPR unregister) after that
        # fails with EINVAL
        dma = self.dma
        if dma is not None and not dma.closed:
            try:
                dma.release_dma()
            except errors.PyvfioError as exc:
                first_error = first_error or exc
        if self.fd is not None:
            syscalls.close(self.fd)
            self.fd = None
        owned, self._owned = self._owned, []
        for obj in reversed(owned):
            try:
                obj.close()
            except errors.PyvfioError as exc:
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    def __repr__(self) -> str:
        return f"<Device {self.name}{' closed' if self.fd is None else ''} dma={self.dma!r}>"
