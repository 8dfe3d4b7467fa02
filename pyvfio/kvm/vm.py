"""A VM fd: memory slots, the in-kernel IRQ chip, devices, irqfd and ioeventfd."""
from __future__ import annotations

import errno as _errno
from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from pyvfio import errors
from pyvfio.core import args
from pyvfio.core import syscalls
from pyvfio.core.handle import Handle
from pyvfio.core.memory import PAGE_SIZE, DmaBuffer
from pyvfio.core.uapi import ffi, lib
from pyvfio.kvm.system import cap_number

if TYPE_CHECKING:
    from pyvfio.kvm.device import Device
    from pyvfio.kvm.system import Kvm
    from pyvfio.kvm.vcpu import Vcpu

__all__ = ["Vm", "MemoryRegion", "MsiRoute", "IrqchipRoute", "fd_of"]


class MsiRoute(NamedTuple):
    """A GSI that KVM delivers as the MSI ``address``/``data`` (KVM_IRQ_ROUTING_MSI)."""
    gsi: int
    address: int
    data: int


class IrqchipRoute(NamedTuple):
    """A GSI wired to ``pin`` of an in-kernel ``irqchip`` (KVM_IRQ_ROUTING_IRQCHIP;
    x86: lib.KVM_IRQCHIP_PIC_MASTER/PIC_SLAVE/IOAPIC)."""
    gsi: int
    irqchip: int
    pin: int


class MemoryRegion(NamedTuple):
    """A memory slot: guest physical ``guest_phys_addr`` .. + ``size`` is ``buffer[offset:]``."""
    slot: int
    guest_phys_addr: int
    size: int
    buffer: DmaBuffer
    offset: int
    flags: int


def fd_of(obj: Any, what: str, device: str) -> int:
    """The descriptor of a library object (``fileno()`` or ``.fd``) or of an int."""
    if isinstance(obj, bool):
        raise errors.InvalidArgumentError(f"{what} must be a file object or descriptor, not {obj!r}",
                                          device=device)
    if isinstance(obj, int):
        return obj
    if hasattr(obj, "fileno"):
        return int(obj.fileno())  # a closed library object raises ClosedError here
    fd = getattr(obj, "fd", None)
    if isinstance(fd, int):
        return fd
    if hasattr(obj, "fd") and fd is None:
        raise errors.ClosedError(f"{what} {obj!r}", device=device)
    raise errors.InvalidArgumentError(f"{what} must be a file object or descriptor, not {obj!r}",
                                      device=device)


class Vm(Handle):
    """A virtual machine (from :meth:`Kvm.create_vm`).

    Closing it closes its vCPUs and devices first; after that every use of
    them raises :class:`~pyvfio.errors.ClosedError`.
    """

    def __init__(self, kvm: "Kvm", fd: int) -> None:
        self.kvm = kvm
        self.fd = fd
        self.name = f"kvm-vm fd {fd}"
        self.regions: Dict[int, MemoryRegion] = {}
        self.vcpus: List["Vcpu"] = []
        self.devices: List["Device"] = []
        self.irqchip = False
        self._irqfds: Dict[Tuple[int, int], Any] = {}
        self._ioevents: Dict[Tuple[int, int, int, Optional[int], bool], Any] = {}

    def fileno(self) -> int:
        self._check_open()
        return self.fd

    def _release(self) -> None:
        first: Optional[BaseException] = None
        for child in [*self.vcpus, *self.devices]:
            try:
                child.close()
            except Exception as exc:     # keep closing; report the first failure
                first = first or exc
        self.vcpus.clear()
        self.devices.clear()
        self._irqfds.clear()
        self._ioevents.clear()
        self.regions.clear()
        syscalls.close(self.fd)
        if first is not None:
            raise first

    def _ioctl(self, request: int, arg: Any = None) -> int:
        self._check_open()
        return syscalls.ioctl(self.fd, request, arg, device=self.name)

    def check_extension(self, cap: Union[int, str]) -> int:
        """KVM_CHECK_EXTENSION on the VM fd (answers for this VM's type)."""
        return self._ioctl(lib.KVM_CHECK_EXTENSION, cap_number(cap))

    # -- memory --------------------------------------------------------------------------------
    def set_user_memory_region(self, slot: int, guest_phys_addr: int, buffer: DmaBuffer, *,
                               offset: int = 0, size: Optional[int] = None,
                               flags: int = 0) -> MemoryRegion:
        """KVM_SET_USER_MEMORY_REGION: back guest physical memory with ``buffer``.

        The buffer must stay open while the slot exists (delete the slot first).
        """
        self._check_open()
        slot = args.integer(slot, "slot", device=self.name, hi=args.U32)
        guest_phys_addr = args.integer(guest_phys_addr, "guest_phys_addr", device=self.name)
        offset = args.integer(offset, "offset", device=self.name, lo=None, hi=None)
        flags = args.integer(flags, "flags", device=self.name, hi=args.U32)
        if size is not None:
            size = args.integer(size, "size", device=self.name, lo=None, hi=None)
        if not isinstance(buffer, DmaBuffer):
            raise errors.ArgumentTypeError(
                f"buffer must be a DmaBuffer, not {type(buffer).__name__}", device=self.name)
        if buffer.closed:
            raise errors.ClosedError("DMA buffer for the memory slot", device=self.name)
        if size is None:
            size = buffer.size - offset
        if (offset % PAGE_SIZE or size <= 0 or size % PAGE_SIZE or guest_phys_addr % PAGE_SIZE
                or offset < 0 or offset + size > buffer.size):
            raise errors.InvalidArgumentError(
                f"memory slot {slot}: {size:#x} bytes at buffer offset {offset:#x} to guest "
                f"{guest_phys_addr:#x} (buffer {buffer.size:#x} bytes)", device=self.name,
                op="KVM_SET_USER_MEMORY_REGION",
                remedy=f"use page-aligned ({PAGE_SIZE:#x}) addresses and sizes inside the buffer")
        region = ffi.new("struct kvm_userspace_memory_region *", {
            "slot": slot, "flags": flags, "guest_phys_addr": guest_phys_addr,
            "memory_size": size, "userspace_addr": buffer.vaddr + offset})
        self._ioctl(lib.KVM_SET_USER_MEMORY_REGION, region)
        r = MemoryRegion(slot, guest_phys_addr, size, buffer, offset, flags)
        self.regions[slot] = r
        return r

    def delete_user_memory_region(self, slot: int) -> None:
        """KVM_SET_USER_MEMORY_REGION with size 0: remove the slot."""
        r = self.regions.get(slot)
        if r is None:
            raise errors.NotFoundError(f"no memory slot {slot}", device=self.name,
                                       remedy=f"slots in use: {sorted(self.regions)}")
        region = ffi.new("struct kvm_userspace_memory_region *", {
            "slot": slot, "flags": r.flags, "guest_phys_addr": r.guest_phys_addr,
            "memory_size": 0, "userspace_addr": 0})
        self._ioctl(lib.KVM_SET_USER_MEMORY_REGION, region)
        del self.regions[slot]

    # -- interrupt controller ------------------------------------------------------------------
    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP: the in-kernel PIC, IOAPIC and local APICs (x86; arm64 uses a
        VGIC device instead). Create it before the vCPUs."""
        self._ioctl(lib.KVM_CREATE_IRQCHIP)
        self.irqchip = True

    def set_irq_line(self, irq: int, level: int) -> None:
        """KVM_IRQ_LINE: drive GSI ``irq`` to ``level`` (0 or 1)."""
        arg = ffi.new("struct kvm_irq_level *", {"irq": irq, "level": level})
        self._ioctl(lib.KVM_IRQ_LINE, arg)

    def set_gsi_routing(self, routes: "Sequence[Union[MsiRoute, IrqchipRoute]]") -> None:
        """KVM_SET_GSI_ROUTING: replace the whole GSI routing table with ``routes``.

        An irqfd on an MSI route is how a VMM hands a VFIO device's MSI vector
        to the guest without a trip through user space.
        """
        self._check_open()
        n = len(routes)
        buf = ffi.new("char[]", ffi.sizeof("struct kvm_irq_routing")
                      + n * ffi.sizeof("struct kvm_irq_routing_entry"))
        table = ffi.cast("struct kvm_irq_routing *", buf)
        table.nr = n
        for i, r in enumerate(routes):
            e = table.entries[i]
            e.gsi = r.gsi
            if isinstance(r, MsiRoute):
                e.type = lib.KVM_IRQ_ROUTING_MSI
                e.u.msi.address_lo = r.address & 0xFFFFFFFF
                e.u.msi.address_hi = r.address >> 32
                e.u.msi.data = r.data
            elif isinstance(r, IrqchipRoute):
                e.type = lib.KVM_IRQ_ROUTING_IRQCHIP
                e.u.irqchip.irqchip = r.irqchip
                e.u.irqchip.pin = r.pin
            else:
                raise errors.InvalidArgumentError(
                    f"route {r!r} is neither an MsiRoute nor an IrqchipRoute", device=self.name)
        self._ioctl(lib.KVM_SET_GSI_ROUTING, table)

    def signal_msi(self, address: int, data: int) -> int:
        """KVM_SIGNAL_MSI: inject one MSI; >0 delivered, 0 blocked by the guest."""
        msi = ffi.new("struct kvm_msi *", {"address_lo": address & 0xFFFFFFFF,
                                           "address_hi": address >> 32, "data": data})
        return self._ioctl(lib.KVM_SIGNAL_MSI, msi)

    def set_tss_addr(self, addr: int) -> None:
        """KVM_SET_TSS_ADDR (x86, Intel): three pages KVM uses to run real mode without
        unrestricted guest; call before creating vCPUs."""
        self._ioctl(lib.KVM_SET_TSS_ADDR, addr)

    def set_identity_map_addr(self, addr: int) -> None:
        """KVM_SET_IDENTITY_MAP_ADDR (x86, Intel): one page for the EPT identity map."""
        arg = ffi.new("uint64_t *", addr)
        self._ioctl(lib.KVM_SET_IDENTITY_MAP_ADDR, arg)

    def arm_preferred_target(self) -> Any:
        """KVM_ARM_PREFERRED_TARGET (arm64): a ``struct kvm_vcpu_init`` for this host's CPUs."""
        req = getattr(lib, "KVM_ARM_PREFERRED_TARGET", None)
        if req is None:
            raise errors.NotSupportedError("KVM_ARM_PREFERRED_TARGET exists on arm64 only",
                                           device=self.name)
        init = ffi.new("struct kvm_vcpu_init *")
        self._ioctl(req, init)
        return init

    # -- vCPUs and devices ---------------------------------------------------------------------
    def create_vcpu(self, vcpu_id: int = 0) -> "Vcpu":
        """KVM_CREATE_VCPU: vCPU ``vcpu_id`` with its ``kvm_run`` mapped."""
        from pyvfio.kvm.vcpu import Vcpu
        self._check_open()
        vcpu_id = args.integer(vcpu_id, "vcpu_id", device=self.name, hi=args.U32)
        fd = self._ioctl(lib.KVM_CREATE_VCPU, vcpu_id)
        syscalls.adopt(fd, f"kvm-vcpu {vcpu_id} fd (of {self.name})")
        try:
            vcpu = Vcpu(self, vcpu_id, fd)
        except BaseException:
            syscalls.close(fd)
            raise
        self.vcpus.append(vcpu)
        return vcpu

    def create_device(self, dev_type: int, *, test: bool = False) -> Optional["Device"]:
        """KVM_CREATE_DEVICE of ``dev_type`` (``lib.KVM_DEV_TYPE_*``); ``test=True`` only asks
        whether the kernel could (returns None, or raises the kernel's error)."""
        from pyvfio.kvm.device import Device, VfioDevice
        arg = ffi.new("struct kvm_create_device *", {
            "type": dev_type, "flags": lib.KVM_CREATE_DEVICE_TEST if test else 0})
        try:
            self._ioctl(lib.KVM_CREATE_DEVICE, arg)
        except errors.PyvfioError as exc:
            if exc.errno != _errno.ENODEV:
                raise
            names = [n for n in dir(lib) if n.startswith("KVM_DEV_TYPE_")
                     and getattr(lib, n) == dev_type and n != "KVM_DEV_TYPE_MAX"]
            what = names[0] if names else f"device type {dev_type}"
            raise errors.NotSupportedError(
                f"this kernel's KVM has no {what}", errno=exc.errno, op="KVM_CREATE_DEVICE",
                device=self.name, remedy="the type belongs to another architecture or to a "
                "KVM option this kernel lacks (e.g. CONFIG_KVM_VFIO for KVM_DEV_TYPE_VFIO)"
            ) from None
        if test:
            return None
        fd = syscalls.adopt(arg.fd, f"kvm-device type {dev_type} fd (of {self.name})")
        cls = VfioDevice if dev_type == lib.KVM_DEV_TYPE_VFIO else Device
        dev = cls(self, dev_type, fd)
        self.devices.append(dev)
        return dev

    def create_vfio_device(self) -> "VfioDevice":
        """The KVM-VFIO pseudo device (KVM_DEV_TYPE_VFIO)."""
        dev = self.create_device(lib.KVM_DEV_TYPE_VFIO)
        assert dev is not None
        return dev  # type: ignore[return-value]

    def _forget(self, child: Any) -> None:
        for lst in (self.vcpus, self.devices):
            if child in lst:
                lst.remove(child)

    # -- irqfd ---------------------------------------------------------------------------------
    def register_irqfd(self, eventfd: Any, gsi: int, *, resamplefd: Any = None) -> None:
        """KVM_IRQFD: a signal on ``eventfd`` raises GSI ``gsi`` in the guest.

        With ``resamplefd`` the GSI is level-triggered: KVM keeps it asserted until
        the guest acknowledges it, then lowers it and signals ``resamplefd``.
        """
        self._check_open()
        gsi = args.integer(gsi, "gsi", device=self.name, hi=args.U32)
        efd = fd_of(eventfd, "irqfd eventfd", self.name)
        arg = ffi.new("struct kvm_irqfd *", {"fd": efd, "gsi": gsi})
        if resamplefd is not None:
            arg.flags = lib.KVM_IRQFD_FLAG_RESAMPLE
            arg.resamplefd = fd_of(resamplefd, "irqfd resample eventfd", self.name)
        self._ioctl(lib.KVM_IRQFD, arg)
        self._irqfds[(efd, gsi)] = (eventfd, resamplefd)

    def unregister_irqfd(self, eventfd: Any, gsi: int) -> None:
        """KVM_IRQFD with KVM_IRQFD_FLAG_DEASSIGN."""
        self._check_open()
        gsi = args.integer(gsi, "gsi", device=self.name, hi=args.U32)
        efd = fd_of(eventfd, "irqfd eventfd", self.name)
        arg = ffi.new("struct kvm_irqfd *", {"fd": efd, "gsi": gsi,
                                             "flags": lib.KVM_IRQFD_FLAG_DEASSIGN})
        self._ioctl(lib.KVM_IRQFD, arg)
        self._irqfds.pop((efd, gsi), None)

    # -- ioeventfd -----------------------------------------------------------------------------
    def _ioeventfd(self, eventfd: Any, addr: int, length: int, datamatch: Optional[int],
                   pio: bool, deassign: bool) -> Tuple[int, Any]:
        efd = fd_of(eventfd, "ioeventfd eventfd", self.name)
        if length not in (0, 1, 2, 4, 8):
            raise errors.InvalidArgumentError(
                f"ioeventfd length must be 0, 1, 2, 4 or 8 bytes, not {length}", device=self.name)
        if datamatch is not None and length == 0:
            raise errors.InvalidArgumentError("an ioeventfd with datamatch needs a length",
                                              device=self.name)
        flags = 0
        if datamatch is not None:
            flags |= lib.KVM_IOEVENTFD_FLAG_DATAMATCH
        if pio:
            flags |= lib.KVM_IOEVENTFD_FLAG_PIO
        if deassign:
            flags |= lib.KVM_IOEVENTFD_FLAG_DEASSIGN
        arg = ffi.new("struct kvm_ioeventfd *", {
            "datamatch": datamatch or 0, "addr": addr, "len": length, "fd": efd, "flags": flags})
        return efd, arg

    def register_ioevent(self, eventfd: Any, addr: int, length: int = 0, *,
                         datamatch: Optional[int] = None, pio: bool = False) -> None:
        """KVM_IOEVENTFD: a guest write of ``length`` bytes to ``addr`` (port I/O with
        ``pio=True``, else MMIO) signals ``eventfd`` in the kernel, without an exit.

        ``datamatch``: only writes of that value; ``length=0``: any length (MMIO).
        """
        self._check_open()
        efd, arg = self._ioeventfd(eventfd, addr, length, datamatch, pio, False)
        self._ioctl(lib.KVM_IOEVENTFD, arg)
        self._ioevents[(efd, addr, length, datamatch, pio)] = eventfd

    def unregister_ioevent(self, eventfd: Any, addr: int, length: int = 0, *,
                           datamatch: Optional[int] = None, pio: bool = False) -> None:
        """KVM_IOEVENTFD with KVM_IOEVENTFD_FLAG_DEASSIGN (same arguments as registered)."""
        self._check_open()
        efd, arg = self._ioeventfd(eventfd, addr, length, datamatch, pio, True)
        self._ioctl(lib.KVM_IOEVENTFD, arg)
        self._ioevents.pop((efd, addr, length, datamatch, pio), None)


if TYPE_CHECKING:
    from pyvfio.kvm.device import VfioDevice
