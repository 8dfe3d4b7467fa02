"""The mock's vfio-pci: what ``drivers/vfio/pci`` does for one bound function.

:class:`VfioPciDevice` answers the device-fd ioctls (info, regions, IRQs,
resets, features, ioeventfds), region reads and writes (with the kernel's
config-space virtualization and its access splitting) and mmap, and carries
the function's DMA and interrupts to the IOMMU and to eventfds.
"""
from __future__ import annotations

import errno
import mmap as _mmap
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, cast

from pyvfio.core.uapi import ffi, lib
from pyvfio.mock.core.caps import new_cap
from pyvfio.mock.pci.function import PciFunction
from pyvfio.mock.core.uaccess import (PAGE_SIZE, EventFd, copy_args, copy_from_user, copy_to_user, copy_span, fail,
                    field_end, read_user, user_range_ok, write_user)

if TYPE_CHECKING:  # pragma: no cover
    from pyvfio.mock.vfio.subsystem import DeviceFile, Group
    from pyvfio.mock.core.family import KernelState as MockKernel

__all__ = ["VfioPciDevice", "OFFSET_SHIFT"]

OFFSET_SHIFT = 40
OFFSET_MASK = (1 << OFFSET_SHIFT) - 1
NUM_REGIONS = lib.VFIO_PCI_NUM_REGIONS
NUM_IRQS = lib.VFIO_PCI_NUM_IRQS
CONFIG = lib.VFIO_PCI_CONFIG_REGION_INDEX
ROM = lib.VFIO_PCI_ROM_REGION_INDEX
VGA = lib.VFIO_PCI_VGA_REGION_INDEX
INTX = lib.VFIO_PCI_INTX_IRQ_INDEX
MSI = lib.VFIO_PCI_MSI_IRQ_INDEX
MSIX = lib.VFIO_PCI_MSIX_IRQ_INDEX
ERR = lib.VFIO_PCI_ERR_IRQ_INDEX
REQ = lib.VFIO_PCI_REQ_IRQ_INDEX
DATA_MASK = lib.VFIO_IRQ_SET_DATA_TYPE_MASK
ACTION_MASK = lib.VFIO_IRQ_SET_ACTION_TYPE_MASK
IOEVENTFD_MAX = 1000

_INFO = "struct vfio_device_info"
_REGION = "struct vfio_region_info"
_IRQ = "struct vfio_irq_info"
_IRQSET = "struct vfio_irq_set"


class _IoEventFd:
    __slots__ = ("bar", "pos", "count", "data", "efd")

    def __init__(self, bar: int, pos: int, count: int, data: int, efd: EventFd) -> None:
        self.bar, self.pos, self.count, self.data, self.efd = bar, pos, count, data, efd


class VfioPciDevice:
    """A PCI function bound to the mock vfio-pci, with its vfio state."""

    def __init__(self, kernel: "MockKernel", model: PciFunction, group: "Group",
                 index: int) -> None:
        self.kernel = kernel
        self.model = model
        self.group = group
        self.index = index                  # N of /dev/vfio/devices/vfioN
        self.name = model.bdf
        self.open_count = 0
        self.cdev_opened = False
        self.idev: Any = None               # iommufd device object while bound
        self.iommufd: Any = None
        self.faults = model.faults
        self.irq_type: Optional[int] = None
        self.intx_trigger: Optional[EventFd] = None
        self.intx_unmask_fd: Optional[EventFd] = None
        self.intx_masked = False
        self.virq_disabled = False
        self.msi_triggers: Dict[int, EventFd] = {}
        self.msi_nvec = 0
        self.err_trigger: Optional[EventFd] = None
        self.req_trigger: Optional[EventFd] = None
        self.ioeventfds: List[_IoEventFd] = []
        self.pm_engaged = False
        self.pm_wake: Optional[EventFd] = None
        self.vconfig = bytearray(model.config)
        self.bardirty = True
        self.msi_qmax = 0
        self.saved_config: Optional[bytes] = None
        self._build_perms()
        model.host = self

    # -- topology -------------------------------------------------------------------------

    @property
    def reset_works(self) -> bool:
        """Whether pci_reset_function has a method: FLR, or a bus reset of a bus of its own."""
        if self.model.pcie_cap:
            return True
        m = self.model
        return self.bus_resettable and len(self.kernel.pci.functions_on_bus(m.segment, m.bus)) == 1

    @property
    def bus_resettable(self) -> bool:
        """A secondary bus reset needs a bridge above: not on a root bus."""
        return self.model.bus != 0

    # -- open and close -------------------------------------------------------------------

    def first_open(self) -> None:
        """vfio_pci_core_enable: enable decoding, reset, save state, build vconfig."""
        m = self.model
        m.config_write(lib.PCI_COMMAND, 2, m.command | lib.PCI_COMMAND_MEMORY)
        if self.reset_works:
            self._reset_function()
        if m.intx_disabled:
            m.config_write(lib.PCI_COMMAND, 2, m.command & ~lib.PCI_COMMAND_INTX_DISABLE)
        self.saved_config = bytes(m.config)
        self.vconfig = bytearray(m.config)
        self.bardirty = True
        self.virq_disabled = False
        self.irq_type = None
        if m.msi_cap:
            self.msi_qmax = (m.config_read(m.msi_cap + lib.PCI_MSI_FLAGS, 2) & lib.PCI_MSI_FLAGS_QMASK) >> 1
        self.pm_engaged = False

    def last_close(self) -> None:
        """vfio_pci_core_disable: stop DMA, free IRQs, restore and (try to) reset."""
        m = self.model
        m.config_write(lib.PCI_COMMAND, 2, m.command & ~lib.PCI_COMMAND_MASTER)
        self._disable_irqs()
        for ev in (self.err_trigger, self.req_trigger, self.pm_wake):
            if ev is not None:
                ev.put()
        self.err_trigger = self.req_trigger = self.pm_wake = None
        for ioev in self.ioeventfds:
            ioev.efd.put()
        self.ioeventfds = []
        self.virq_disabled = False
        self.pm_engaged = False
        m.config_write(lib.PCI_COMMAND, 2, lib.PCI_COMMAND_INTX_DISABLE)
        if self.reset_works:
            m.function_reset()
        if self.saved_config is not None:
            m.config[:] = self.saved_config
        m.config_write(lib.PCI_COMMAND, 2, m.command & ~lib.PCI_COMMAND_MASTER)
        self.saved_config = None

    def _reset_function(self) -> None:
        """pci_try_reset_function: save config, reset, restore config."""
        m = self.model
        saved = bytes(m.config)
        m.function_reset()
        m.config[:] = saved
        if m.msi_enabled:
            m.config_write(m.msi_cap + lib.PCI_MSI_FLAGS, 2,
                           m.config_read(m.msi_cap + lib.PCI_MSI_FLAGS, 2))
        self.intx_changed()

    # -- ioctl ----------------------------------------------------------------------------

    def ioctl(self, df: "DeviceFile", cmd: int, addr: int) -> int:
        """Device-fd ioctls once access is granted (vfio_device_fops_unl_ioctl onwards)."""
        self._pm_wake()
        if cmd == lib.VFIO_DEVICE_FEATURE:
            return self._feature(addr)
        handler = {
            lib.VFIO_DEVICE_GET_INFO: self._get_info,
            lib.VFIO_DEVICE_GET_REGION_INFO: self._get_region_info,
            lib.VFIO_DEVICE_GET_IRQ_INFO: self._get_irq_info,
            lib.VFIO_DEVICE_SET_IRQS: self._set_irqs,
            lib.VFIO_DEVICE_RESET: self._reset_ioctl,
            lib.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: self._hot_reset_info,
            lib.VFIO_DEVICE_PCI_HOT_RESET: self._hot_reset,
            lib.VFIO_DEVICE_IOEVENTFD: self._ioeventfd,
        }.get(cmd)
        if handler is None:
            raise fail(errno.ENOTTY)
        return handler(addr)

    def _get_info(self, addr: int) -> int:
        minsz = field_end(_INFO, "num_irqs")
        info = copy_from_user(addr, _INFO, minsz)
        if info.argsz < minsz:
            raise fail(errno.EINVAL)
        size = min(info.argsz, ffi.sizeof(_INFO))
        info.flags = lib.VFIO_DEVICE_FLAGS_PCI | (lib.VFIO_DEVICE_FLAGS_RESET if self.reset_works else 0)
        info.num_regions = NUM_REGIONS
        info.num_irqs = NUM_IRQS
        copy_to_user(addr, info, size)
        return 0

    def _get_region_info(self, addr: int) -> int:
        minsz = field_end(_REGION, "offset")
        info = copy_from_user(addr, _REGION, minsz)
        if info.argsz < minsz:
            raise fail(errno.EINVAL)
        index = info.index
        caps = b""
        m = self.model
        if index == CONFIG:
            info.offset = index << OFFSET_SHIFT
            info.size = m.cfg_size
            info.flags = lib.VFIO_REGION_INFO_FLAG_READ | lib.VFIO_REGION_INFO_FLAG_WRITE
        elif index <= lib.VFIO_PCI_BAR5_REGION_INDEX:
            info.offset = index << OFFSET_SHIFT
            spec = m.bars.get(index)
            info.size = spec.size if spec else 0
            info.flags = 0
            if spec:
                info.flags = lib.VFIO_REGION_INFO_FLAG_READ | lib.VFIO_REGION_INFO_FLAG_WRITE
                areas = m.mmap_areas.get(index)
                if areas and m.bar_fd(index) is not None:
                    info.flags |= lib.VFIO_REGION_INFO_FLAG_MMAP
                    caps = self._sparse_cap(areas)
        elif index == ROM:
            info.offset = index << OFFSET_SHIFT
            info.flags = 0
            info.size = 0
        else:                       # VGA (absent) and no device-specific regions
            raise fail(errno.EINVAL)
        if caps:
            info.flags |= lib.VFIO_REGION_INFO_FLAG_CAPS
            need = ffi.sizeof(_REGION) + len(caps)
            if info.argsz < need:
                info.argsz = need
                info.cap_offset = 0
            else:
                write_user(addr + ffi.sizeof(_REGION), caps)
                info.cap_offset = ffi.sizeof(_REGION)
        copy_to_user(addr, info, minsz)
        return 0

    @staticmethod
    def _sparse_cap(areas: List[Tuple[int, int]]) -> bytes:
        cap, buf = new_cap("struct vfio_region_info_cap_sparse_mmap",
                           lib.VFIO_REGION_INFO_CAP_SPARSE_MMAP,
                           "struct vfio_region_sparse_mmap_area", len(areas), pad=True)
        cap.nr_areas = len(areas)
        for i, (off, sz) in enumerate(areas):
            cap.areas[i].offset = off
            cap.areas[i].size = sz
        return bytes(ffi.buffer(buf))

    def irq_count(self, index: int) -> int:
        """vfio_pci_get_irq_count."""
        m = self.model
        if index == INTX:
            return 1 if m.config_read(lib.PCI_INTERRUPT_PIN, 1) else 0
        if index == MSI:
            if not m.msi_cap:
                return 0
            flags = m.config_read(m.msi_cap + lib.PCI_MSI_FLAGS, 2)
            return int(1 << ((flags & lib.PCI_MSI_FLAGS_QMASK) >> 1))
        if index == MSIX:
            return 0
        if index == ERR:
            return 1 if m.pcie_cap else 0
        if index == REQ:
            return 1
        return 0

    def _get_irq_info(self, addr: int) -> int:
        minsz = field_end(_IRQ, "count")
        info = copy_from_user(addr, _IRQ, minsz)
        if info.argsz < minsz or info.index >= NUM_IRQS:
            raise fail(errno.EINVAL)
        if info.index == ERR and not self.model.pcie_cap:
            raise fail(errno.EINVAL)
        info.flags = lib.VFIO_IRQ_INFO_EVENTFD
        info.count = self.irq_count(info.index)
        if info.index == INTX:
            info.flags |= lib.VFIO_IRQ_INFO_MASKABLE | lib.VFIO_IRQ_INFO_AUTOMASKED
        else:
            info.flags |= lib.VFIO_IRQ_INFO_NORESIZE
        copy_to_user(addr, info, minsz)
        return 0

    # -- SET_IRQS (vfio_pci_intrs.c) ---------------------------------------------------------

    def _set_irqs(self, addr: int) -> int:
        minsz = field_end(_IRQSET, "count")
        hdr = copy_from_user(addr, _IRQSET, minsz)
        max_irqs = self.irq_count(hdr.index) if hdr.index < NUM_IRQS else 0
        flags, index, start, count = hdr.flags, hdr.index, hdr.start, hdr.count
        if (hdr.argsz < minsz or index >= NUM_IRQS or count >= 0xFFFFFFFF - start
                or flags & ~(DATA_MASK | ACTION_MASK)):
            raise fail(errno.EINVAL)
        if start >= max_irqs or start + count > max_irqs:
            raise fail(errno.EINVAL)
        dtype = flags & DATA_MASK
        if dtype == lib.VFIO_IRQ_SET_DATA_NONE:
            size = 0
        elif dtype == lib.VFIO_IRQ_SET_DATA_BOOL:
            size = 1
        elif dtype == lib.VFIO_IRQ_SET_DATA_EVENTFD:
            size = 4
        else:
            raise fail(errno.EINVAL)
        data = b""
        if size:
            if hdr.argsz - minsz < count * size:
                raise fail(errno.EINVAL)
            data = read_user(addr + ffi.offsetof(_IRQSET, "data"), count * size)
        action = flags & ACTION_MASK
        func = None
        if index == INTX:
            func = {lib.VFIO_IRQ_SET_ACTION_MASK: self._intx_mask_action,
                    lib.VFIO_IRQ_SET_ACTION_UNMASK: self._intx_unmask_action,
                    lib.VFIO_IRQ_SET_ACTION_TRIGGER: self._intx_trigger_action}.get(action)
        elif index in (MSI, MSIX):
            if action == lib.VFIO_IRQ_SET_ACTION_TRIGGER:
                func = self._msi_trigger_action
        elif index == ERR:
            if action == lib.VFIO_IRQ_SET_ACTION_TRIGGER and self.model.pcie_cap:
                func = self._err_trigger_action
        elif index == REQ:
            if action == lib.VFIO_IRQ_SET_ACTION_TRIGGER:
                func = self._req_trigger_action
        if func is None:
            raise fail(errno.ENOTTY)
        func(index, start, count, flags, data)
        return 0

    @staticmethod
    def _fds(data: bytes, count: int) -> List[int]:
        return [int.from_bytes(data[4 * i:4 * i + 4], "little", signed=True) for i in range(count)]

    def _intx_mask_action(self, index: int, start: int, count: int, flags: int, data: bytes) -> None:
        if self.irq_type != INTX or start != 0 or count != 1:
            raise fail(errno.EINVAL)
        if flags & lib.VFIO_IRQ_SET_DATA_NONE:
            self.intx_mask()
        elif flags & lib.VFIO_IRQ_SET_DATA_BOOL:
            if data[0]:
                self.intx_mask()
        elif flags & lib.VFIO_IRQ_SET_DATA_EVENTFD:
            raise fail(errno.ENOTTY)

    def _intx_unmask_action(self, index: int, start: int, count: int, flags: int, data: bytes) -> None:
        if self.irq_type != INTX or start != 0 or count != 1:
            raise fail(errno.EINVAL)
        if flags & lib.VFIO_IRQ_SET_DATA_NONE:
            self.intx_unmask()
        elif flags & lib.VFIO_IRQ_SET_DATA_BOOL:
            if data[0]:
                self.intx_unmask()
        elif flags & lib.VFIO_IRQ_SET_DATA_EVENTFD:
            fd = self._fds(data, 1)[0]
            if fd >= 0:
                efd = self._eventfd(fd)
                if self.intx_unmask_fd is not None:
                    self.intx_unmask_fd.put()
                self.intx_unmask_fd = efd
            elif self.intx_unmask_fd is not None:
                self.intx_unmask_fd.put()
                self.intx_unmask_fd = None

    def _intx_trigger_action(self, index: int, start: int, count: int, flags: int, data: bytes) -> None:
        if self.irq_type == INTX and not count and flags & lib.VFIO_IRQ_SET_DATA_NONE:
            self._intx_disable()
            return
        if self.irq_type not in (INTX, None) or start != 0 or count != 1:
            raise fail(errno.EINVAL)
        if flags & lib.VFIO_IRQ_SET_DATA_EVENTFD:
            fd = self._fds(data, 1)[0]
            trigger = self._eventfd(fd) if fd >= 0 else None
            if self.irq_type == INTX:
                if self.intx_trigger is not None:
                    self.intx_trigger.put()
                self.intx_trigger = trigger
            else:
                self._intx_enable(trigger)
            return
        if self.irq_type != INTX:
            raise fail(errno.EINVAL)
        if flags & lib.VFIO_IRQ_SET_DATA_NONE or (flags & lib.VFIO_IRQ_SET_DATA_BOOL and data[0]):
            self._send_intx()

    def _msi_trigger_action(self, index: int, start: int, count: int, flags: int, data: bytes) -> None:
        if self.irq_type == index and not count and flags & lib.VFIO_IRQ_SET_DATA_NONE:
            self._msi_disable()
            return
        if self.irq_type not in (index, None):
            raise fail(errno.EINVAL)
        if flags & lib.VFIO_IRQ_SET_DATA_EVENTFD:
            fds = self._fds(data, count)
            if self.irq_type == index:
                self._msi_set_block(start, fds)
                return
            self._msi_enable(start + count)
            try:
                self._msi_set_block(start, fds)
            except OSError:
                self._msi_disable()
                raise
            return
        if self.irq_type != index:
            raise fail(errno.EINVAL)
        for i in range(start, start + count):
            trig = self.msi_triggers.get(i)
            if trig is None:
                continue
            if flags & lib.VFIO_IRQ_SET_DATA_NONE or (flags & lib.VFIO_IRQ_SET_DATA_BOOL and data[i - start]):
                trig.signal()

    def _single_trigger(self, attr: str, count: int, flags: int, data: bytes) -> None:
        """vfio_pci_set_ctx_trigger_single (ERR and REQ)."""
        cur: Optional[EventFd] = getattr(self, attr)
        if flags & lib.VFIO_IRQ_SET_DATA_NONE:
            if cur is not None:
                if count:
                    cur.signal()
                else:
                    cur.put()
                    setattr(self, attr, None)
                return
        elif flags & lib.VFIO_IRQ_SET_DATA_BOOL:
            if not count:
                raise fail(errno.EINVAL)
            if data[0] and cur is not None:
                cur.signal()
            return
        elif flags & lib.VFIO_IRQ_SET_DATA_EVENTFD:
            if not count:
                raise fail(errno.EINVAL)
            fd = self._fds(data, 1)[0]
            if fd == -1:
                if cur is not None:
                    cur.put()
                setattr(self, attr, None)
            elif fd >= 0:
                new = self._eventfd(fd)
                if cur is not None:
                    cur.put()
                setattr(self, attr, new)
            return
        raise fail(errno.EINVAL)

    def _err_trigger_action(self, index: int, start: int, count: int, flags: int, data: bytes) -> None:
        if start != 0 or count > 1:
            raise fail(errno.EINVAL)
        self._single_trigger("err_trigger", count, flags, data)

    def _req_trigger_action(self, index: int, start: int, count: int, flags: int, data: bytes) -> None:
        if start != 0 or count > 1:
            raise fail(errno.EINVAL)
        self._single_trigger("req_trigger", count, flags, data)

    def _eventfd(self, fd: int) -> EventFd:
        if self.kernel.is_mock_fd(fd):
            raise fail(errno.EINVAL)
        return EventFd.get(fd)

    # INTx state machine: masking through the (physical) INTx Disable bit, as for PCI 2.3 devices

    def _phys_intx(self, enable: bool) -> None:
        m = self.model
        cmd = m.command
        new = (cmd & ~lib.PCI_COMMAND_INTX_DISABLE) if enable else (cmd | lib.PCI_COMMAND_INTX_DISABLE)
        if new != cmd:
            m.config_write(lib.PCI_COMMAND, 2, new)

    def _intx_enable(self, trigger: Optional[EventFd]) -> None:
        if self.irq_type is not None:
            raise fail(errno.EINVAL)
        self.intx_trigger = trigger
        self.intx_masked = self.virq_disabled
        self.irq_type = INTX
        self._phys_intx(not self.intx_masked)
        self.intx_changed()

    def _intx_disable(self) -> None:
        if self.intx_unmask_fd is not None:
            self.intx_unmask_fd.put()
            self.intx_unmask_fd = None
        if self.intx_trigger is not None:
            self.intx_trigger.put()
            self.intx_trigger = None
        self.irq_type = None
        self.intx_masked = False

    def _send_intx(self) -> None:
        if self.irq_type == INTX and not self.virq_disabled and self.intx_trigger is not None:
            self.intx_trigger.signal()

    def intx_changed(self) -> None:
        """The function's INTx output may have changed: run the host's INTx handler."""
        if self.irq_type != INTX or self.intx_masked:
            return
        if self.model.intx_output:
            self.intx_masked = True
            self._phys_intx(False)
            self._send_intx()

    def intx_mask(self) -> None:
        if self.irq_type != INTX:
            self._phys_intx(False)
            return
        if not self.intx_masked:
            self._phys_intx(False)
            self.intx_masked = True

    def intx_unmask(self) -> None:
        if self.irq_type != INTX:
            self._phys_intx(True)
            return
        if self.intx_masked and not self.virq_disabled:
            if self.model.intx_level:
                self._send_intx()       # still asserted: stay masked, signal again
            else:
                self.intx_masked = False
                self._phys_intx(True)

    # MSI

    def _msi_enable(self, nvec: int) -> None:
        if self.irq_type is not None:
            raise fail(errno.EINVAL)
        m = self.model
        self.irq_type = MSI
        self.msi_nvec = nvec
        self.msi_qmax = max(0, (nvec * 2 - 1).bit_length() - 1)
        flags = m.config_read(m.msi_cap + lib.PCI_MSI_FLAGS, 2)
        m.config_write(m.msi_cap + lib.PCI_MSI_ADDRESS_LO, 4, 0xFEE00000)
        m.config_write(m.msi_cap + lib.PCI_MSI_DATA_64, 2, 0x4020 + self.index)
        m.config_write(m.msi_cap + lib.PCI_MSI_FLAGS, 2,
                       (flags & ~lib.PCI_MSI_FLAGS_QSIZE) | (self.msi_qmax << 4) | lib.PCI_MSI_FLAGS_ENABLE)

    def _msi_set_block(self, start: int, fds: List[int]) -> None:
        done = start
        try:
            for i, fd in enumerate(fds):
                vec = start + i
                old = self.msi_triggers.pop(vec, None)
                if old is not None:
                    old.put()
                if fd >= 0:
                    self.msi_triggers[vec] = self._eventfd(fd)
                done = vec + 1
        except OSError:
            for vec in range(start, done):
                old = self.msi_triggers.pop(vec, None)
                if old is not None:
                    old.put()
            raise

    def _msi_disable(self) -> None:
        for trig in self.msi_triggers.values():
            trig.put()
        self.msi_triggers = {}
        m = self.model
        flags = m.config_read(m.msi_cap + lib.PCI_MSI_FLAGS, 2)
        m.config_write(m.msi_cap + lib.PCI_MSI_FLAGS, 2, flags & ~lib.PCI_MSI_FLAGS_ENABLE)
        self.irq_type = None
        self.msi_nvec = 0

    def msi(self, vector: int) -> None:
        """An MSI write from the function reached the host."""
        if self.irq_type == MSI:
            trig = self.msi_triggers.get(vector)
            if trig is not None:
                trig.signal()

    def _disable_irqs(self) -> None:
        if self.irq_type == INTX:
            self._intx_disable()
        elif self.irq_type in (MSI, MSIX):
            self._msi_disable()

    # -- resets ---------------------------------------------------------------------------

    def _reset_ioctl(self, addr: int) -> int:
        if not self.reset_works:
            raise fail(errno.EINVAL)
        self._reset_function()
        return 0

    def _bus_functions(self) -> List[Any]:
        return cast("List[Any]", self.kernel.pci.functions_on_bus(self.model.segment, self.model.bus))

    def _hot_reset_info(self, addr: int) -> int:
        ctype = "struct vfio_pci_hot_reset_info"
        minsz = field_end(ctype, "count")
        hdr = copy_args(addr, ctype, "count")
        hdr.flags = 0
        if not self.bus_resettable:
            raise fail(errno.ENODEV)
        funcs = self._bus_functions()
        count = len(funcs)
        item = ffi.sizeof("struct vfio_pci_dependent_device")
        if count > (hdr.argsz - ffi.sizeof(ctype)) // item:
            hdr.count = count
            copy_to_user(addr, hdr, minsz)
            raise fail(errno.ENOSPC)
        devs = ffi.new("struct vfio_pci_dependent_device[]", count)
        flags = 0
        if self.cdev_opened:
            flags = lib.VFIO_PCI_HOT_RESET_FLAG_DEV_ID | lib.VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED
        for i, f in enumerate(funcs):
            if flags & lib.VFIO_PCI_HOT_RESET_FLAG_DEV_ID:
                vdev = self.kernel.vfio.vfio_device(f.bdf)
                devid = lib.VFIO_PCI_DEVID_NOT_OWNED
                if vdev is not None:
                    devid = vdev.devid_for(self.iommufd)
                if devid == lib.VFIO_PCI_DEVID_NOT_OWNED:
                    flags &= ~lib.VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED
                devs[i].devid = devid & 0xFFFFFFFF
            else:
                devs[i].group_id = f.group
            devs[i].segment = f.segment
            devs[i].bus = f.bus
            devs[i].devfn = f.devfn
        write_user(addr + ffi.sizeof(ctype), bytes(ffi.buffer(devs, count * item)))
        hdr.count = count
        hdr.flags = flags
        copy_to_user(addr, hdr, minsz)
        return 0

    def devid_for(self, ctx: Any) -> int:
        """vfio_iommufd_get_dev_id: the devid in ``ctx``, OWNED (0) or NOT_OWNED (-1)."""
        if self.idev is not None and self.idev.ctx is ctx:
            return int(self.idev.id)
        if ctx is not None and self.group.owner is ctx:
            return int(lib.VFIO_PCI_DEVID_OWNED)
        return int(lib.VFIO_PCI_DEVID_NOT_OWNED)

    def _hot_reset(self, addr: int) -> int:
        ctype = "struct vfio_pci_hot_reset"
        hdr = copy_args(addr, ctype, "count", flags=0)
        if bool(hdr.count) == self.cdev_opened:
            raise fail(errno.EINVAL)
        if not self.bus_resettable:
            raise fail(errno.ENODEV)
        funcs = self._bus_functions()
        groups = []
        if hdr.count:
            if hdr.count > len(funcs):
                raise fail(errno.EINVAL)
            raw = read_user(addr + ffi.offsetof(ctype, "group_fds"), 4 * hdr.count)
            for i in range(hdr.count):
                fd = int.from_bytes(raw[4 * i:4 * i + 4], "little", signed=True)
                group = self.kernel.vfio.group_of_fd(fd)
                groups.append(group)
        vdevs = []
        for f in funcs:
            vdev = self.kernel.vfio.vfio_device(f.bdf)
            if vdev is None:            # a function bound to a host driver: not resettable by us
                raise fail(errno.EINVAL)
            if hdr.count:
                owned = vdev.group in groups
            else:
                owned = vdev.devid_for(self.iommufd) != lib.VFIO_PCI_DEVID_NOT_OWNED
            if not owned:
                raise fail(errno.EINVAL)
            vdevs.append(vdev)
        for vdev in vdevs:              # pci_reset_bus saves and restores config around the reset
            vdev._reset_function()
        return 0

    # -- VFIO_DEVICE_FEATURE -------------------------------------------------------------------

    @staticmethod
    def _check_feature(flags: int, argsz: int, supported: int, minsz: int) -> int:
        if flags & (lib.VFIO_DEVICE_FEATURE_GET | lib.VFIO_DEVICE_FEATURE_SET) & ~supported:
            raise fail(errno.EINVAL)
        if flags & lib.VFIO_DEVICE_FEATURE_PROBE:
            return 0
        if not flags & (lib.VFIO_DEVICE_FEATURE_GET | lib.VFIO_DEVICE_FEATURE_SET):
            raise fail(errno.EINVAL)
        if argsz < minsz:
            raise fail(errno.EINVAL)
        return 1

    def _feature(self, addr: int) -> int:
        ctype = "struct vfio_device_feature"
        minsz = field_end(ctype, "flags")
        feat = copy_args(addr, ctype, "flags")
        flags = feat.flags
        known = (lib.VFIO_DEVICE_FEATURE_MASK | lib.VFIO_DEVICE_FEATURE_SET
                 | lib.VFIO_DEVICE_FEATURE_GET | lib.VFIO_DEVICE_FEATURE_PROBE)
        if flags & ~known:
            raise fail(errno.EINVAL)
        if (not flags & lib.VFIO_DEVICE_FEATURE_PROBE and flags & lib.VFIO_DEVICE_FEATURE_SET
                and flags & lib.VFIO_DEVICE_FEATURE_GET):
            raise fail(errno.EINVAL)
        which = flags & lib.VFIO_DEVICE_FEATURE_MASK
        argsz = feat.argsz - minsz
        data = addr + ffi.offsetof(ctype, "data")
        if which == lib.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY:
            if self._check_feature(flags, argsz, lib.VFIO_DEVICE_FEATURE_SET, 0) != 1:
                return 0
            return self._pm_entry(None)
        if which == lib.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP:
            wctype = "struct vfio_device_low_power_entry_with_wakeup"
            if self._check_feature(flags, argsz, lib.VFIO_DEVICE_FEATURE_SET, ffi.sizeof(wctype)) != 1:
                return 0
            entry = copy_from_user(data, wctype)
            if entry.wakeup_eventfd < 0:
                raise fail(errno.EINVAL)
            return self._pm_entry(self._eventfd(entry.wakeup_eventfd))
        if which == lib.VFIO_DEVICE_FEATURE_LOW_POWER_EXIT:
            if self._check_feature(flags, argsz, lib.VFIO_DEVICE_FEATURE_SET, 0) != 1:
                return 0
            return 0                    # the ioctl itself woke the device (_pm_wake)
        # migration, DMA logging, VF token, bus master: nothing for this device
        raise fail(errno.ENOTTY)

    def _pm_entry(self, wake: Optional[EventFd]) -> int:
        if self.pm_engaged:
            if wake is not None:
                wake.put()
            raise fail(errno.EINVAL)
        self.pm_engaged = True
        self.pm_wake = wake
        return 0

    def _pm_wake(self) -> None:
        """Any device access resumes a device the user put in low power."""
        if self.pm_engaged:
            self.pm_engaged = False
            if self.pm_wake is not None:
                self.pm_wake.signal()
                self.pm_wake.put()
                self.pm_wake = None

    # -- ioeventfd ------------------------------------------------------------------------

    def _ioeventfd(self, addr: int) -> int:
        ctype = "struct vfio_device_ioeventfd"
        arg = copy_args(addr, ctype, "fd", flags=lib.VFIO_DEVICE_IOEVENTFD_SIZE_MASK)
        count = arg.flags & lib.VFIO_DEVICE_IOEVENTFD_SIZE_MASK
        if bin(count).count("1") != 1 or arg.fd < -1:
            raise fail(errno.EINVAL)
        bar = arg.offset >> OFFSET_SHIFT
        pos = arg.offset & OFFSET_MASK
        if bar > lib.VFIO_PCI_BAR5_REGION_INDEX:
            raise fail(errno.EINVAL)
        spec = self.model.bars.get(bar)
        if pos + count > (spec.size if spec else 0):
            raise fail(errno.EINVAL)
        for ioev in self.ioeventfds:
            if (ioev.pos, ioev.bar, ioev.data, ioev.count) == (pos, bar, arg.data, count):
                if arg.fd == -1:
                    ioev.efd.put()
                    self.ioeventfds.remove(ioev)
                    return 0
                raise fail(errno.EEXIST)
        if arg.fd < 0:
            raise fail(errno.ENODEV)
        if len(self.ioeventfds) >= IOEVENTFD_MAX:
            raise fail(errno.ENOSPC)
        self.ioeventfds.append(_IoEventFd(bar, pos, count, arg.data, self._eventfd(arg.fd)))
        return 0

    def service(self) -> None:
        """Act on eventfds the kernel would be waiting on (INTx unmask, ioeventfds)."""
        if self.intx_unmask_fd is not None and self.intx_unmask_fd.consume():
            self.intx_unmask_from_eventfd()
        for ioev in list(self.ioeventfds):
            if ioev.efd.consume() and self._memory_enabled():
                self.model.bus_write(ioev.bar, ioev.pos, ioev.count,
                                      ioev.data & ((1 << (8 * ioev.count)) - 1))

    def intx_unmask_from_eventfd(self) -> None:
        if self.irq_type == INTX:
            self.intx_unmask()

    # -- regions: read, write, mmap ---------------------------------------------------------------

    def region_rw(self, offset: int, size: int, data: Optional[bytes] = None) -> Any:
        """pread (``data`` None → bytes) or pwrite (→ bytes written) at a region offset."""
        self._pm_wake()
        index = offset >> OFFSET_SHIFT
        pos = offset & OFFSET_MASK
        if index >= NUM_REGIONS:
            raise fail(errno.EINVAL)
        if size == 0:
            return b"" if data is None else 0
        if index == CONFIG:
            return self._config_rw(pos, size, data)
        if index == ROM:
            raise fail(errno.EINVAL)
        if index == VGA:
            raise fail(errno.EINVAL)
        return self._bar_rw(index, pos, size, data)

    def _memory_enabled(self) -> bool:
        return bool(int.from_bytes(self.vconfig[lib.PCI_COMMAND:lib.PCI_COMMAND + 2], "little")
                    & lib.PCI_COMMAND_MEMORY) and not self.pm_engaged

    def _chunks(self, pos: int, count: int, widest: int) -> List[Tuple[int, int]]:
        out = []
        while count:
            for width in (8, 4, 2, 1):
                if width <= widest and count >= width and pos % width == 0:
                    break
            out.append((pos, width))
            pos += width
            count -= width
        return out

    def _bar_rw(self, bar: int, pos: int, size: int, data: Optional[bytes]) -> Any:
        spec = self.model.bars.get(bar)
        if spec is None or pos >= spec.size:
            raise fail(errno.EINVAL)
        count = min(size, spec.size - pos)
        if not self._memory_enabled():
            raise fail(errno.EIO)
        chunks = self._chunks(pos, count, self.kernel.vfio.max_io_width)
        if data is None:
            out = bytearray()
            for off, width in chunks:
                out += self.model.bus_read(bar, off, width).to_bytes(width, "little")
            return bytes(out)
        for off, width in chunks:
            rel = off - pos
            self.model.bus_write(bar, off, width, int.from_bytes(data[rel:rel + width], "little"))
        return count

    def mmap(self, length: int, prot: int, flags: int, offset: int) -> _mmap.mmap:
        """vfio_pci_core_mmap, for BARs the function backs with memory."""
        index = offset >> OFFSET_SHIFT
        if index >= NUM_REGIONS or length <= 0 or offset % PAGE_SIZE:
            raise fail(errno.EINVAL)
        if not flags & _mmap.MAP_SHARED:
            raise fail(errno.EINVAL)
        if index >= ROM:
            raise fail(errno.EINVAL)
        spec = self.model.bars.get(index)
        fd = self.model.bar_fd(index)
        areas = self.model.mmap_areas.get(index)
        if spec is None or fd is None or not areas:
            raise fail(errno.EINVAL)
        start = offset & OFFSET_MASK
        phys_len = (spec.size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        if start + length > phys_len:
            raise fail(errno.EINVAL)
        if not any(a <= start and start + length <= a + n for a, n in areas):
            raise fail(errno.EINVAL)
        return _mmap.mmap(fd, length, flags=flags, prot=prot, offset=start)

    # config space virtualization (vfio_pci_config.c)

    def _build_perms(self) -> None:
        m = self.model
        n = m.cfg_size
        virt = bytearray(n)
        write = bytearray(n)

        def setp(off: int, size: int, v: int, w: int) -> None:
            virt[off:off + size] = v.to_bytes(size, "little")
            write[off:off + size] = w.to_bytes(size, "little")

        setp(lib.PCI_VENDOR_ID, 2, 0xFFFF, 0)
        setp(lib.PCI_DEVICE_ID, 2, 0xFFFF, 0)
        setp(lib.PCI_COMMAND, 2, lib.PCI_COMMAND_INTX_DISABLE, 0xFFFF)
        setp(lib.PCI_STATUS, 2, lib.PCI_STATUS_CAP_LIST, 0)
        setp(lib.PCI_CACHE_LINE_SIZE, 1, 0, 0xFF)
        setp(lib.PCI_LATENCY_TIMER, 1, 0, 0xFF)
        setp(0x0F, 1, 0, 0xFF)                                  # BIST
        for off in range(lib.PCI_BASE_ADDRESS_0, lib.PCI_BASE_ADDRESS_0 + 24, 4):
            setp(off, 4, 0xFFFFFFFF, 0xFFFFFFFF)
        setp(lib.PCI_ROM_ADDRESS, 4, 0xFFFFFFFF, 0xFFFFFFFF)
        setp(lib.PCI_CAPABILITY_LIST, 1, 0xFF, 0)
        setp(lib.PCI_INTERRUPT_LINE, 1, 0xFF, 0xFF)
        setp(lib.PCI_INTERRUPT_PIN, 1, 0xFF, 0)
        # bytes outside the header and the known capabilities pass through raw
        for off in range(0x40, n):
            write[off] = 0xFF
        if m.msi_cap:
            c = m.msi_cap
            setp(c, 14, 0, 0)
            setp(c + 1, 1, 0xFF, 0)
            setp(c + lib.PCI_MSI_FLAGS, 1, 0xFF, 0xFF)
            setp(c + lib.PCI_MSI_ADDRESS_LO, 4, 0xFFFFFFFF, 0xFFFFFFFF)
            setp(c + lib.PCI_MSI_ADDRESS_HI, 4, 0xFFFFFFFF, 0xFFFFFFFF)
            setp(c + lib.PCI_MSI_DATA_64, 2, 0xFFFF, 0xFFFF)
        if m.pcie_cap:
            c = m.pcie_cap
            setp(c, 0x3C, 0, 0)
            setp(c + 1, 1, 0xFF, 0)
            setp(c + lib.PCI_EXP_DEVCTL, 2, lib.PCI_EXP_DEVCTL_BCR_FLR, 0xFFFF)
        self._virt = bytes(virt)
        self._write = bytes(write)

    def _bar_fixup(self) -> None:
        if not self.bardirty:
            return
        m = self.model
        i = 0
        while i < 6:
            off = lib.PCI_BASE_ADDRESS_0 + 4 * i
            spec = m.bars.get(i)
            if spec is None:
                self.vconfig[off:off + 4] = bytes(4)
                i += 1
                continue
            mask = ~(spec.size - 1)
            v = int.from_bytes(self.vconfig[off:off + 4], "little")
            v = (v & mask & 0xFFFFFFFF) | spec.flags
            self.vconfig[off:off + 4] = v.to_bytes(4, "little")
            if spec.mem64:
                hi = int.from_bytes(self.vconfig[off + 4:off + 8], "little") & ((mask >> 32) & 0xFFFFFFFF)
                self.vconfig[off + 4:off + 8] = hi.to_bytes(4, "little")
                i += 1
            i += 1
        self.vconfig[lib.PCI_ROM_ADDRESS:lib.PCI_ROM_ADDRESS + 4] = bytes(4)
        self.bardirty = False

    def _config_rw(self, pos: int, size: int, data: Optional[bytes]) -> Any:
        m = self.model
        if pos >= m.cfg_size or pos + size > m.cfg_size:
            raise fail(errno.EFAULT)
        out = bytearray()
        for off, width in self._chunks(pos, size, 4):
            if data is None:
                out += self._config_read_chunk(off, width)
            else:
                rel = off - pos
                self._config_write_chunk(off, width, data[rel:rel + width])
        return bytes(out) if data is None else size

    def _config_read_chunk(self, off: int, width: int) -> bytes:
        m = self.model
        if off < lib.PCI_ROM_ADDRESS + 4 and off + width > lib.PCI_BASE_ADDRESS_0:
            self._bar_fixup()
        if m.msi_cap and off <= m.msi_cap + lib.PCI_MSI_FLAGS < off + width:
            f = m.msi_cap + lib.PCI_MSI_FLAGS
            self.vconfig[f] = (self.vconfig[f] & ~lib.PCI_MSI_FLAGS_QMASK) | (self.msi_qmax << 1)
        phys = m.config_read(off, width).to_bytes(width, "little")
        return bytes((self.vconfig[off + i] & self._virt[off + i]) | (phys[i] & ~self._virt[off + i] & 0xFF)
                     for i in range(width))

    def _config_write_chunk(self, off: int, width: int, val: bytes) -> None:
        m = self.model
        phys_bits = 0
        for i in range(width):
            a = off + i
            v, w = self._virt[a], self._write[a]
            self.vconfig[a] = (self.vconfig[a] & ~(w & v) & 0xFF) | (val[i] & w & v)
            phys_bits |= (w & ~v & 0xFF) << (8 * i)
        if phys_bits:
            cur = m.config_read(off, width)
            new = (cur & ~phys_bits) | (int.from_bytes(val, "little") & phys_bits)
            m.config_write(off, width, new)
        end = off + width
        if off < lib.PCI_COMMAND + 2 and end > lib.PCI_COMMAND:
            self._command_written(int.from_bytes(val, "little") >> (8 * (lib.PCI_COMMAND - off))
                                  if off <= lib.PCI_COMMAND else None)
        if off < lib.PCI_ROM_ADDRESS + 4 and end > lib.PCI_BASE_ADDRESS_0:
            self.bardirty = True
        if m.msi_cap and off <= m.msi_cap + lib.PCI_MSI_FLAGS < end:
            self._msi_flags_written()
        c = m.pcie_cap + lib.PCI_EXP_DEVCTL
        if m.pcie_cap and off <= c + 1 and end > c:
            ctl = int.from_bytes(self.vconfig[c:c + 2], "little")
            if ctl & lib.PCI_EXP_DEVCTL_BCR_FLR:
                self.vconfig[c:c + 2] = (ctl & ~lib.PCI_EXP_DEVCTL_BCR_FLR).to_bytes(2, "little")
                if m.config_read(m.pcie_cap + lib.PCI_EXP_DEVCAP, 4) & lib.PCI_EXP_DEVCAP_FLR:
                    self._reset_function()

    def _command_written(self, value: Optional[int]) -> None:
        cmd = int.from_bytes(self.vconfig[lib.PCI_COMMAND:lib.PCI_COMMAND + 2], "little")
        if value is not None:       # mirror memory/io enables in vconfig, as vfio does
            mask = lib.PCI_COMMAND_MEMORY | lib.PCI_COMMAND_IO
            cmd = (cmd & ~mask) | (value & mask)
            self.vconfig[lib.PCI_COMMAND:lib.PCI_COMMAND + 2] = cmd.to_bytes(2, "little")
        disabled = bool(cmd & lib.PCI_COMMAND_INTX_DISABLE)
        if disabled and not self.virq_disabled:
            self.virq_disabled = True
            self.intx_mask()
        elif not disabled and self.virq_disabled:
            self.virq_disabled = False
            self.intx_unmask()

    def _msi_flags_written(self) -> None:
        m = self.model
        f = m.msi_cap + lib.PCI_MSI_FLAGS
        flags = int.from_bytes(self.vconfig[f:f + 2], "little")
        phys = m.config_read(f, 2)
        flags = (flags & 0xFF) | (phys & 0xFF00)
        if self.irq_type != MSI:
            flags &= ~lib.PCI_MSI_FLAGS_ENABLE
        mmc = (phys & lib.PCI_MSI_FLAGS_QMASK) >> 1
        if (flags & lib.PCI_MSI_FLAGS_QSIZE) >> 4 > mmc:
            flags = (flags & ~lib.PCI_MSI_FLAGS_QSIZE) | (mmc << 4)
        self.vconfig[f] = flags & 0xFF
        m.config_write(f, 2, flags)

    # -- DMA through the IOMMU --------------------------------------------------------------

    def dma_space(self) -> Any:
        """What translates this function's DMA now (None: blocked)."""
        if self.open_count == 0:
            return None
        if self.idev is not None:
            return self.idev
        container = self.group.container
        if container is not None and container.driver is not None:
            return container.driver
        return None

    def _dma(self, addr: int, length: int, data: Optional[bytes]) -> bytes:
        write = data is not None
        out = bytearray(0 if write else length)
        space = self.dma_space()
        if space is None:
            self.model._fault(addr, length, write, "DMA blocked: no IOMMU domain attached")
            return bytes(out)
        for iova, n, vaddr, reason in copy_span(space.translate, addr, length, write):
            if vaddr is None:
                self.model._fault(iova, n, write, reason)
                continue
            if not user_range_ok(vaddr, n, write=write, read=not write):
                self.model._fault(iova, n, write, "pinned pages no longer mapped in the process")
                continue
            rel = iova - addr
            if data is not None:
                ffi.memmove(ffi.cast("char *", vaddr), data[rel:rel + n], n)
            else:
                out[rel:rel + n] = ffi.buffer(ffi.cast("char *", vaddr), n)[:]
        return bytes(out)

    def dma_read(self, addr: int, length: int) -> bytes:
        return self._dma(addr, length, None)

    def dma_write(self, addr: int, data: bytes) -> None:
        self._dma(addr, len(data), bytes(data))
