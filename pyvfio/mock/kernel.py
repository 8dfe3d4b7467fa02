"""MockKernel: a stand-in for the kernel behind :mod:`pyvfio.core.syscalls`.

It owns a fake root (``devroot`` and ``sysfs`` under a directory the caller
gives) and answers system calls on the VFIO and iommufd nodes there with the
semantics of Linux 6.12: the container (``vfio/vfio``), groups
(``vfio/N``, ``vfio/noiommu-N``), device cdevs (``vfio/devices/vfioN``) and
``iommu``.  Everything else goes to the real kernel, so eventfds, poll and
anonymous memory are real.

Descriptors of mock nodes are real descriptors (duplicates of /dev/null), so
numbers are unique and leak checks are meaningful; a table maps them to the
mock file objects.  Errors are ``OSError(errno, strerror)`` raised where Linux
returns that errno.
"""
from __future__ import annotations

import contextlib
import errno
import operator
import os
import threading
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

from pyvfio.core.uapi import ffi, lib
from pyvfio.core import syscalls
from pyvfio.core.sysfs import Host, use_host
from pyvfio.mock import sysfs as _sysfs
from pyvfio.mock._util import (PAGE_SIZE, Accounting, DmaFault, Translation, addr_of, copy_args,
                    copy_from_user, copy_to_user, fail, field_end, process_maps)
from pyvfio.mock.edu import EduModel, PciFunction
from pyvfio.mock.iommufd import IommufdCtx
from pyvfio.mock.spapr import SpaprTceIommu
from pyvfio.mock.type1 import Type1Iommu
from pyvfio.mock.vfio_pci import VfioPciDevice

__all__ = ["MockKernel", "HostFunction", "Group", "Container"]

PathLike = Union[str, "os.PathLike[str]"]


class HostFunction(NamedTuple):
    """A function bound to a host driver (it makes its IOMMU group non-viable)."""
    bdf: str
    group: int
    segment: int
    bus: int
    devfn: int
    vendor: int = 0x8086
    device: int = 0x10D3
    class_code: int = 0x020000
    driver: str = "e1000e"


class FakePhysicalMemory:
    """Physical page numbers for the process's pages, handed out on first look-up.

    The mock has no physical memory; what ``/proc/self/pagemap`` reports (and
    what no-IOMMU DMA goes to) is this bijection.  Frames are numbered from
    ``FIRST_PFN`` up in the order pages are first looked up, so addresses stay
    below small DMA masks (edu's 28 bits) and pages are only physically
    contiguous when looked up in order, as on a real machine.
    """

    FIRST_PFN = 0x2000          # 32 MiB

    def __init__(self) -> None:
        self.pfn_of: Dict[int, int] = {}
        self.vpn_of: Dict[int, int] = {}

    def pfn(self, vpn: int) -> int:
        pfn = self.pfn_of.get(vpn)
        if pfn is None:
            pfn = self.FIRST_PFN + len(self.pfn_of)
            self.pfn_of[vpn] = pfn
            self.vpn_of[pfn] = vpn
        return pfn

    def virt(self, phys: int) -> Optional[int]:
        vpn = self.vpn_of.get(phys // PAGE_SIZE)
        return None if vpn is None else vpn * PAGE_SIZE + phys % PAGE_SIZE


class NoIommuDriver:
    """vfio's noiommu "IOMMU": no translation, the device sees physical addresses.

    Physical addresses are those of the mock's :class:`FakePhysicalMemory`
    (what ``/proc/self/pagemap`` says through the mock).
    """

    name = "noiommu"

    def __init__(self, kernel: "MockKernel") -> None:
        self.kernel = kernel
        self.groups: List["Group"] = []

    @staticmethod
    def probe_extension(kernel: "MockKernel", arg: int, iommu: Any = None) -> int:
        return 1 if kernel.noiommu and arg == lib.VFIO_NOIOMMU_IOMMU else 0

    def attach_group(self, group: "Group") -> None:
        self.groups.append(group)

    def detach_group(self, group: "Group") -> None:
        if group in self.groups:
            self.groups.remove(group)

    def release(self) -> None:
        self.groups = []

    def translate(self, iova: int, write: bool) -> Translation:
        run = PAGE_SIZE - (iova % PAGE_SIZE)
        vaddr = self.kernel.physmem.virt(iova)
        if vaddr is None:
            return Translation(None, run, "no process memory at this physical address")
        return Translation(vaddr, run)

    def ioctl(self, cmd: int, addr: int) -> int:
        if cmd == lib.VFIO_CHECK_EXTENSION:
            return self.probe_extension(self.kernel, addr)
        raise fail(errno.ENOTTY)

    def mappings(self) -> List[Tuple[int, int, int]]:
        return []

    def close_summary(self) -> List[str]:
        return []


class Group:
    """An IOMMU group with vfio devices (struct vfio_group)."""

    def __init__(self, kernel: "MockKernel", gid: int, noiommu: bool) -> None:
        self.kernel = kernel
        self.id = gid
        self.noiommu = noiommu
        self.devices: List[VfioPciDevice] = []
        self.host_functions: List[HostFunction] = []
        self.opened_file: Optional["GroupFile"] = None
        self.container: Optional["Container"] = None
        self.iommufd: Optional["IommuFile"] = None
        self.container_users = 0
        self.cdev_device_open_cnt = 0
        self.owner: Any = None
        self.owner_cnt = 0

    @property
    def node_name(self) -> str:
        return f"noiommu-{self.id}" if self.noiommu else str(self.id)

    @property
    def has_iommu(self) -> bool:
        return self.container is not None or self.iommufd is not None

    @property
    def dma_owner_claimed(self) -> bool:
        return bool(self.host_functions) or self.owner_cnt > 0

    def claim_group(self, owner: Any) -> None:
        """iommu_group_claim_dma_owner (the legacy container path)."""
        if self.noiommu:
            return
        if self.dma_owner_claimed:
            raise fail(errno.EPERM)
        self.owner, self.owner_cnt = owner, 1

    def release_group(self) -> None:
        if not self.noiommu:
            self.owner, self.owner_cnt = None, 0

    def claim_device(self, owner: Any) -> None:
        """iommu_device_claim_dma_owner (iommufd binding)."""
        if self.host_functions or (self.owner_cnt and self.owner is not owner):
            raise fail(errno.EPERM)
        self.owner = owner
        self.owner_cnt += 1

    def release_device(self, owner: Any) -> None:
        if self.owner is owner and self.owner_cnt:
            self.owner_cnt -= 1
            if not self.owner_cnt:
                self.owner = None


class Container:
    """A VFIO container (struct vfio_container); lives while its file or a group holds it."""

    def __init__(self, kernel: "MockKernel") -> None:
        self.kernel = kernel
        self.groups: List[Group] = []
        self.driver: Any = None
        self.noiommu = False
        self.file_open = True

    def drivers(self) -> List[Any]:
        """The IOMMU drivers registered, filtered as vfio_iommu_driver_allowed does."""
        out: List[Any] = []
        if self.kernel.iommu in ("type1", "none"):      # type1 loads without an IOMMU too
            out.append(Type1Iommu)
        elif self.kernel.iommu == "spapr":
            out.append(SpaprTceIommu)
        out.append(NoIommuDriver)
        if self.groups:
            out = [d for d in out if (d is NoIommuDriver) == self.noiommu]
        return out

    def check_extension(self, arg: int) -> int:
        if self.driver is not None:
            return self.driver.ioctl(lib.VFIO_CHECK_EXTENSION, arg)
        ret = 0
        for drv in self.drivers():
            ret = drv.probe_extension(self.kernel, arg)
            if ret > 0:
                break
        return ret

    def set_iommu(self, arg: int) -> int:
        if not self.groups or self.driver is not None:
            raise fail(errno.EINVAL)
        err = errno.ENODEV
        for drv in self.drivers():
            if drv.probe_extension(self.kernel, arg) <= 0:
                continue
            try:
                data = self._open_driver(drv, arg)
            except OSError as exc:
                err = exc.errno or errno.EINVAL
                continue
            attached = []
            try:
                for group in self.groups:
                    data.attach_group(group)
                    attached.append(group)
            except OSError as exc:
                err = exc.errno or errno.EINVAL
                for group in attached:
                    data.detach_group(group)
                data.release()
                continue
            self.driver = data
            return 0
        raise fail(err)

    def _open_driver(self, drv: Any, arg: int) -> Any:
        if drv is Type1Iommu:
            if arg not in (lib.VFIO_TYPE1_IOMMU, lib.VFIO_TYPE1v2_IOMMU, lib.VFIO_TYPE1_NESTING_IOMMU):
                raise fail(errno.EINVAL)
            if arg == lib.VFIO_TYPE1_NESTING_IOMMU:
                raise fail(errno.EINVAL)       # iommu_enable_nesting: the IOMMU has no nesting
            return Type1Iommu(self.kernel, arg)
        if drv is SpaprTceIommu:
            if arg not in (lib.VFIO_SPAPR_TCE_IOMMU, lib.VFIO_SPAPR_TCE_v2_IOMMU):
                raise fail(errno.EINVAL)
            return SpaprTceIommu(self.kernel, arg)
        if arg != lib.VFIO_NOIOMMU_IOMMU:
            raise fail(errno.EINVAL)
        if not self.kernel.cap_sys_rawio:
            raise fail(errno.EPERM)
        return NoIommuDriver(self.kernel)

    def attach_group(self, group: Group) -> None:
        """vfio_container_attach_group."""
        if group.noiommu and not self.kernel.cap_sys_rawio:
            raise fail(errno.EPERM)
        if self.groups and self.noiommu != group.noiommu:
            raise fail(errno.EPERM)
        group.claim_group(group)
        if self.driver is not None:
            try:
                self.driver.attach_group(group)
            except OSError:
                group.release_group()
                raise
        group.container = self
        group.container_users = 1
        self.noiommu = group.noiommu
        self.groups.append(group)

    def detach_group(self, group: Group) -> None:
        """vfio_group_detach_container."""
        if self.driver is not None:
            self.driver.detach_group(group)
        group.release_group()
        group.container = None
        group.container_users = 0
        self.groups.remove(group)
        if self.driver is not None and not self.groups:
            self.driver.release()
            self.driver = None
        self.maybe_free()

    def maybe_free(self) -> None:
        if not self.file_open and not self.groups and self.driver is not None:
            self.driver.release()
            self.driver = None


class MockFile:
    """An open file of a mock node; ``refs`` counts fds and kernel-internal holders."""

    kind = "file"

    def __init__(self, kernel: "MockKernel", path: str) -> None:
        self.kernel = kernel
        self.path = path
        self.refs = 0

    def get(self) -> "MockFile":
        self.refs += 1
        return self

    def put(self) -> None:
        self.refs -= 1
        if self.refs == 0:
            self.release()

    def release(self) -> None:
        pass

    def ioctl(self, cmd: int, addr: int) -> int:
        raise fail(errno.ENOTTY)

    def rw(self, offset: Optional[int], size: int, data: Optional[bytes]) -> Any:
        raise fail(errno.EINVAL)

    def mmap(self, length: int, prot: int, flags: int, offset: int) -> Any:
        raise fail(errno.ENODEV)


class ContainerFile(MockFile):
    kind = "container"

    def __init__(self, kernel: "MockKernel", path: str) -> None:
        super().__init__(kernel, path)
        self.container = Container(kernel)

    def release(self) -> None:
        self.container.file_open = False
        self.container.maybe_free()

    def ioctl(self, cmd: int, addr: int) -> int:
        c = self.container
        if cmd == lib.VFIO_GET_API_VERSION:
            return lib.VFIO_API_VERSION
        if cmd == lib.VFIO_CHECK_EXTENSION:
            return c.check_extension(addr)
        if cmd == lib.VFIO_SET_IOMMU:
            return c.set_iommu(addr)
        if c.driver is None:
            raise fail(errno.EINVAL)
        return c.driver.ioctl(cmd, addr)


class GroupFile(MockFile):
    kind = "group"

    def __init__(self, kernel: "MockKernel", path: str, group: Group) -> None:
        super().__init__(kernel, path)
        self.group = group

    def release(self) -> None:
        g = self.group
        if g.container is not None:
            g.container.detach_group(g)
        if g.iommufd is not None:
            g.iommufd.put()
            g.iommufd = None
        g.opened_file = None

    def ioctl(self, cmd: int, addr: int) -> int:
        g = self.group
        if cmd == lib.VFIO_GROUP_GET_STATUS:
            ctype = "struct vfio_group_status"
            minsz = field_end(ctype, "flags")
            st = copy_args(addr, ctype, "flags")
            st.flags = 0
            if g.has_iommu:
                st.flags = lib.VFIO_GROUP_FLAGS_CONTAINER_SET | lib.VFIO_GROUP_FLAGS_VIABLE
            elif not g.dma_owner_claimed:
                st.flags = lib.VFIO_GROUP_FLAGS_VIABLE
            copy_to_user(addr, st, minsz)
            return 0
        if cmd == lib.VFIO_GROUP_SET_CONTAINER:
            if not addr:
                raise fail(errno.EFAULT)
            fd = int(ffi.cast("int *", addr)[0])
            return self._set_container(fd)
        if cmd == lib.VFIO_GROUP_UNSET_CONTAINER:
            if not g.has_iommu:
                raise fail(errno.EINVAL)
            if g.container is not None:
                if g.container_users != 1:
                    raise fail(errno.EBUSY)
                g.container.detach_group(g)
            if g.iommufd is not None:
                g.iommufd.put()
                g.iommufd = None
            return 0
        if cmd == lib.VFIO_GROUP_GET_DEVICE_FD:
            if not addr:
                raise fail(errno.EFAULT)
            name = ffi.string(ffi.cast("char *", addr), PAGE_SIZE).decode("utf-8", "replace")
            return self._get_device_fd(name)
        raise fail(errno.ENOTTY)

    def _set_container(self, fd: int) -> int:
        g = self.group
        target = self.kernel.file_of(fd)
        if g.has_iommu:
            raise fail(errno.EINVAL)
        if isinstance(target, ContainerFile):
            target.container.attach_group(g)
            return 0
        if isinstance(target, IommuFile):
            if not g.noiommu:
                target.ctx.compat_ioas(create=True)
            g.iommufd = target.get()     # type: ignore[assignment]
            return 0
        raise fail(errno.EBADFD)

    def _get_device_fd(self, name: str) -> int:
        g = self.group
        device = None
        for dev in g.devices:
            if name == dev.name:
                device = dev
                break
            if name.startswith(dev.name + " "):
                raise fail(errno.EINVAL)     # options such as vf_token: not a PF or VF
        if device is None:
            raise fail(errno.ENODEV)
        if not g.has_iommu:
            raise fail(errno.EINVAL)
        df = DeviceFile(self.kernel, f"vfio-device:{device.name}", device, group_path=True)
        iommu_file = g.iommufd
        if iommu_file is not None and device.group.noiommu and device.open_count == 0:
            if not self.kernel.cap_sys_rawio:
                raise fail(errno.EPERM)
        self.kernel.df_open(df, iommu_file)
        if iommu_file is not None and device.open_count == 1 and not g.noiommu:
            try:
                ioas = iommu_file.ctx.compat_ioas(create=False)
                iommu_file.ctx.attach(device.idev, ioas.id)
            except OSError:
                self.kernel.df_close(df)
                raise
        df.access_granted = True
        df.group_file = self.get()       # type: ignore[assignment]
        return self.kernel.install(df)


class DeviceFile(MockFile):
    """An open vfio device: from GET_DEVICE_FD (group path) or a cdev open."""

    kind = "device"

    def __init__(self, kernel: "MockKernel", path: str, device: VfioPciDevice, group_path: bool) -> None:
        super().__init__(kernel, path)
        self.device = device
        self.group_path = group_path
        self.access_granted = False
        self.iommufd: Optional["IommuFile"] = None
        self.group_file: Optional[GroupFile] = None
        self.opened = False
        self.pos = 0

    def release(self) -> None:
        if self.group_path:
            if self.opened:
                self.kernel.df_close(self)
            if self.group_file is not None:
                self.group_file.put()
                self.group_file = None
        elif self.access_granted:
            self.kernel.df_close(self)
            self.device.cdev_opened = False
            self.device.group.cdev_device_open_cnt -= 1

    def ioctl(self, cmd: int, addr: int) -> int:
        dev = self.device
        if cmd == lib.VFIO_DEVICE_BIND_IOMMUFD:
            return self._bind(addr)
        if not self.access_granted:
            raise fail(errno.EINVAL)
        if not self.group_path:
            if cmd == lib.VFIO_DEVICE_ATTACH_IOMMUFD_PT:
                ctype = "struct vfio_device_attach_iommufd_pt"
                minsz = field_end(ctype, "pt_id")
                a = copy_args(addr, ctype, "pt_id", flags=0)
                assert self.iommufd is not None
                a.pt_id = self.iommufd.ctx.attach(dev.idev, a.pt_id)
                copy_to_user(addr, a, minsz)
                return 0
            if cmd == lib.VFIO_DEVICE_DETACH_IOMMUFD_PT:
                ctype = "struct vfio_device_detach_iommufd_pt"
                copy_args(addr, ctype, "flags", flags=0)
                assert self.iommufd is not None
                self.iommufd.ctx.detach(dev.idev)
                return 0
        return dev.ioctl(self, cmd, addr)

    def _bind(self, addr: int) -> int:
        ctype = "struct vfio_device_bind_iommufd"
        minsz = field_end(ctype, "out_devid")
        b = copy_from_user(addr, ctype, minsz)
        if b.argsz < minsz or b.flags or b.iommufd < 0:
            raise fail(errno.EINVAL)
        if self.group_path:
            raise fail(errno.EINVAL)
        dev = self.device
        group = dev.group
        if group.opened_file is not None:
            raise fail(errno.EBUSY)
        group.cdev_device_open_cnt += 1
        try:
            if self.access_granted:
                raise fail(errno.EINVAL)
            target = self.kernel.file_of(b.iommufd)
            if not isinstance(target, IommuFile):
                raise fail(errno.EBADFD)
            if dev.open_count != 0:
                raise fail(errno.EINVAL)
            self.kernel.df_open(self, target)
        except OSError:
            group.cdev_device_open_cnt -= 1
            raise
        b.out_devid = dev.idev.id
        copy_to_user(addr, b, minsz)
        dev.cdev_opened = True
        self.access_granted = True
        return 0

    def rw(self, offset: Optional[int], size: int, data: Optional[bytes]) -> Any:
        if not self.access_granted:
            raise fail(errno.EINVAL)
        pos = self.pos if offset is None else offset
        result = self.device.region_rw(pos, size, data)
        if offset is None:
            self.pos += len(result) if data is None else result
        return result

    def mmap(self, length: int, prot: int, flags: int, offset: int) -> Any:
        if not self.access_granted:
            raise fail(errno.EINVAL)
        return self.device.mmap(length, prot, flags, offset)


class IommuFile(MockFile):
    kind = "iommufd"

    def __init__(self, kernel: "MockKernel", path: str) -> None:
        super().__init__(kernel, path)
        self.ctx = IommufdCtx(kernel)

    def release(self) -> None:
        self.ctx.release()

    def ioctl(self, cmd: int, addr: int) -> int:
        return self.ctx.ioctl(cmd, addr)


class PagemapFile(MockFile):
    """``/proc/self/pagemap`` with the mock's physical frame numbers (as root sees it)."""

    kind = "pagemap"

    def rw(self, offset: Optional[int], size: int, data: Optional[bytes]) -> Any:
        if data is not None:
            raise fail(errno.EINVAL)
        if offset is None or offset % 8 or size % 8:
            raise fail(errno.EINVAL)
        vmas = process_maps()
        out = bytearray()
        for i in range(size // 8):
            vpn = offset // 8 + i
            addr = vpn * PAGE_SIZE
            present = any(v.start <= addr < v.end for v in vmas)
            entry = ((1 << 63) | self.kernel.physmem.pfn(vpn)) if present else 0
            out += entry.to_bytes(8, "little")
        return bytes(out)


class MockKernel:
    """A mock of the kernel's VFIO and iommufd for :func:`pyvfio.core.syscalls.use`.

    ``tmpdir`` receives ``dev/`` (:attr:`devroot`) and ``sys/`` (:attr:`sysfs`).
    ``devices`` are the PCI functions bound to vfio-pci (:class:`EduModel`).
    ``iommu``: ``"type1"`` (x86 VT-d like), ``"spapr"`` (POWER TCE) or
    ``"none"`` (no IOMMU: vfio in no-IOMMU mode unless ``noiommu=False``, when
    the devices cannot be given to vfio at all).  ``noiommu`` is vfio's
    ``enable_unsafe_noiommu_mode``.
    ``iommufd`` adds ``/dev/iommu`` and the device cdevs (type1 only).
    ``memlock`` is RLIMIT_MEMLOCK in bytes (None: unlimited, as with
    CAP_IPC_LOCK).  ``dma_mask_bits`` sets the edu DMA mask of the devices
    that do not set their own.

    The other options describe the platform; the defaults are what Linux 6.12
    reports on QEMU's q35 with its VT-d (the lab's guests): a 48-bit aperture
    with 4K/2M/1G pages, the MSI window reserved, 65535 type1 mappings, BAR
    accesses up to 8 bytes wide, no snoop control (``cache_coherent``),
    ``IOMMU_GET_HW_INFO`` of type NONE (``iommu_hw_info="intel_vtd"`` gives
    QEMU's VT-d registers).  For sPAPR: the 32-bit window (start, size) and
    the largest dynamic window.  The process is taken to hold CAP_SYS_RAWIO
    and CAP_SYS_RESOURCE unless told otherwise.

    ``/proc/self/pagemap`` opened through the mock reports the mock's own
    physical frame numbers, which is where no-IOMMU DMA goes.
    """

    name = "mock"

    def __init__(self, tmpdir: PathLike, devices: Sequence[PciFunction] = (), *,
                 iommu: str = "type1", iommufd: Optional[bool] = None, noiommu: Optional[bool] = None,
                 memlock: Optional[int] = None, dma_mask_bits: Optional[int] = None,
                 iova_bits: int = 48, iova_pgsizes: int = 0x1000 | 0x200000 | 0x40000000,
                 msi_window: Optional[Tuple[int, int]] = (0xFEE00000, 0xFEEFFFFF),
                 dma_entry_limit: int = 65535, max_io_width: int = 8,
                 spapr_dma32: Tuple[int, int] = (0, 0x80000000), spapr_max_window: int = 1 << 40,
                 eeh: bool = True, cache_coherent: bool = False, cap_sys_rawio: bool = True,
                 cap_sys_resource: bool = True, iommu_hw_info: str = "none") -> None:
        if iommu not in ("type1", "spapr", "none"):
            raise ValueError(f"iommu must be 'type1', 'spapr' or 'none', not {iommu!r}")
        if noiommu is None:
            noiommu = iommu == "none"
        if iommufd is None:
            iommufd = iommu == "type1"
        if iommufd and iommu != "type1":
            raise ValueError("the mock offers iommufd only with iommu='type1'")
        if iommu_hw_info not in ("none", "intel_vtd"):
            raise ValueError("iommu_hw_info must be 'none' or 'intel_vtd'")
        self.root = os.path.abspath(os.fspath(tmpdir))
        self.devroot = os.path.join(self.root, "dev")
        self.sysfs = os.path.join(self.root, "sys")
        #: The machine the fake tree describes, for :func:`pyvfio.core.sysfs.use_host`.
        self.host = Host(sysfs=self.sysfs, dev=self.devroot)
        self.iommu = iommu
        self.iommufd = iommufd
        self.cdev = iommufd
        self.noiommu = noiommu
        self.iova_bits = iova_bits
        self.iova_pgsizes = iova_pgsizes
        self.msi_window = msi_window
        self.dma_entry_limit = dma_entry_limit
        self.max_io_width = max_io_width
        self.spapr_dma32 = spapr_dma32
        self.spapr_max_window = spapr_max_window
        self.eeh = eeh
        self.cache_coherent = cache_coherent
        self.cap_sys_rawio = cap_sys_rawio
        self.cap_sys_resource = cap_sys_resource
        self.iommu_hw_info = iommu_hw_info
        self.physmem = FakePhysicalMemory()
        self.accounting = Accounting(memlock)
        self.faults: List[DmaFault] = []
        self.spapr_mm: List[Any] = []
        self.models: List[PciFunction] = list(devices)
        self.groups: Dict[int, Group] = {}
        self.devices: List[VfioPciDevice] = []
        self.host_functions: List[HostFunction] = []
        self._real = syscalls.Kernel()
        self._files: Dict[int, MockFile] = {}
        self._lock = threading.RLock()
        self._nodes: Dict[str, Callable[[str], MockFile]] = {}
        seen = set()
        for model in self.models:
            if model.bdf in seen:
                raise ValueError(f"two devices at {model.bdf}")
            seen.add(model.bdf)
            if isinstance(model, EduModel) and model.dma_mask_bits is None and dma_mask_bits:
                model.dma_mask_bits = dma_mask_bits
        bound = iommu != "none" or noiommu
        for model in self.models:
            if not bound:
                continue
            group = self.groups.get(model.group)
            if group is None:
                group = self.groups[model.group] = Group(self, model.group, noiommu=iommu == "none")
            dev = VfioPciDevice(self, model, group, len(self.devices))
            group.devices.append(dev)
            self.devices.append(dev)
            if not model.viable and not group.host_functions:
                hf = self._companion(model, seen)
                seen.add(hf.bdf)
                group.host_functions.append(hf)
                self.host_functions.append(hf)
        _sysfs.build(self)
        self._nodes[self._dev("vfio", "vfio")] = lambda p: ContainerFile(self, p)
        for group in self.groups.values():
            self._nodes[self._dev("vfio", group.node_name)] = \
                (lambda g: lambda p: self._open_group(p, g))(group)
        if self.cdev:
            for dev in self.devices:
                self._nodes[self._dev("vfio", "devices", f"vfio{dev.index}")] = \
                    (lambda d: lambda p: DeviceFile(self, p, d, group_path=False))(dev)
        if iommufd:
            self._nodes[self._dev("iommu")] = lambda p: IommuFile(self, p)
        for p in ("/proc/self/pagemap", f"/proc/{os.getpid()}/pagemap"):
            self._nodes[p] = lambda p: PagemapFile(self, p)

    def _dev(self, *parts: str) -> str:
        return os.path.join(self.devroot, *parts)

    @staticmethod
    def _companion(model: PciFunction, taken: Iterable[str]) -> HostFunction:
        for fn in range(1, 8):
            f = (model.function + fn) % 8
            bdf = f"{model.segment:04x}:{model.bus:02x}:{model.slot:02x}.{f}"
            if bdf not in taken:
                return HostFunction(bdf, model.group, model.segment, model.bus, (model.slot << 3) | f)
        raise ValueError(f"no free function next to {model.bdf} for the host-bound device")

    # -- topology ---------------------------------------------------------------------------

    def all_functions(self) -> List[Any]:
        return list(self.models) + list(self.host_functions)

    def functions_on_bus(self, segment: int, bus: int) -> List[Any]:
        return [f for f in self.all_functions() if f.segment == segment and f.bus == bus]

    def vfio_device(self, bdf: str) -> Optional[VfioPciDevice]:
        """The vfio device at ``bdf`` (None if that function is not bound to vfio-pci)."""
        for dev in self.devices:
            if dev.name == bdf.lower():
                return dev
        return None

    def model(self, bdf: str) -> PciFunction:
        """The device model at ``bdf``."""
        for m in self.models:
            if m.bdf == bdf.lower():
                return m
        raise KeyError(bdf)

    def iova_ranges(self) -> List[Tuple[int, int]]:
        """The usable IOVA ranges of a domain: the aperture minus the reserved regions."""
        end = (1 << self.iova_bits) - 1
        ranges = [(0, end)]
        for lo, hi in self.reserved_regions():
            out = []
            for a, b in ranges:
                if hi < a or lo > b:
                    out.append((a, b))
                    continue
                if a < lo:
                    out.append((a, lo - 1))
                if hi < b:
                    out.append((hi + 1, b))
            ranges = out
        return ranges

    def reserved_regions(self) -> List[Tuple[int, int]]:
        return [self.msi_window] if self.msi_window and self.iommu == "type1" else []

    @property
    def locked_bytes(self) -> int:
        """Memory accounted as locked by the mock IOMMUs, in bytes."""
        return self.accounting.locked_bytes

    def mappings(self) -> List[str]:
        """Every live DMA mapping, described."""
        out: List[str] = []
        seen = set()
        for f in self._files.values():
            c = getattr(f, "container", None)
            if c is not None and c.driver is not None and id(c) not in seen:
                seen.add(id(c))
                out += c.driver.close_summary()
        for g in self.groups.values():
            c = g.container
            if c is not None and c.driver is not None and id(c) not in seen:
                seen.add(id(c))
                out += c.driver.close_summary()
        for ctx in self._contexts():
            out += ctx.leaks()
        out += [f"sPAPR preregistered memory {m.ua:#x}+{m.size:#x} (mm)" for m in self.spapr_mm]
        return out

    def _contexts(self) -> List[IommufdCtx]:
        ctxs: List[IommufdCtx] = []
        for f in self._files.values():
            if isinstance(f, IommuFile) and f.ctx not in ctxs:
                ctxs.append(f.ctx)
        for dev in self.devices:
            if dev.idev is not None and dev.idev.ctx not in ctxs:
                ctxs.append(dev.idev.ctx)
        for g in self.groups.values():
            if g.iommufd is not None and g.iommufd.ctx not in ctxs:
                ctxs.append(g.iommufd.ctx)
        return ctxs

    def leaks(self) -> List[str]:
        """What is still open or mapped: mock fds, DMA mappings, locked memory."""
        with self._lock:
            out = [f"fd {fd} open on {f.path}" for fd, f in sorted(self._files.items())]
            out += self.mappings()
            if self.accounting.locked_bytes:
                out.append(f"{self.accounting.locked_bytes:#x} bytes still accounted as locked memory")
            return out

    # -- files --------------------------------------------------------------------------------

    def _open_group(self, path: str, group: Group) -> GroupFile:
        if group.noiommu and not self.cap_sys_rawio:
            raise fail(errno.EPERM)
        if group.cdev_device_open_cnt:
            raise fail(errno.EBUSY)
        if group.opened_file is not None:
            raise fail(errno.EBUSY)
        gf = GroupFile(self, path, group)
        group.opened_file = gf
        return gf

    def install(self, f: MockFile) -> int:
        """Give ``f`` a descriptor (a real one, so numbers are unique)."""
        fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self._files[fd] = f.get()
        return fd

    def is_mock_fd(self, fd: int) -> bool:
        return fd in self._files

    def file_of(self, fd: int) -> Optional[MockFile]:
        """The mock file behind ``fd``; None for a real file; EBADF if ``fd`` is not open."""
        f = self._files.get(fd)
        if f is not None:
            return f
        try:
            os.fstat(fd)
        except OSError:
            raise fail(errno.EBADF) from None
        return None

    def group_of_fd(self, fd: int) -> Group:
        f = self.file_of(fd)
        if not isinstance(f, GroupFile):
            raise fail(errno.EINVAL)
        return f.group

    def df_open(self, df: DeviceFile, iommu_file: Optional[IommuFile]) -> None:
        """vfio_df_open: first open binds the IOMMU side and enables the device."""
        dev = df.device
        if dev.open_count == 0:
            if iommu_file is not None:
                dev.idev = iommu_file.ctx.bind(dev)
                dev.iommufd = iommu_file.ctx
                df.iommufd = iommu_file.get()    # type: ignore[assignment]
            else:
                g = dev.group
                if g.container is None or g.container.driver is None:
                    raise fail(errno.EINVAL)
                if g.noiommu and not self.cap_sys_rawio:
                    raise fail(errno.EPERM)
                g.container_users += 1
            dev.first_open()
        elif iommu_file is not None:
            df.iommufd = iommu_file.get()        # type: ignore[assignment]
        dev.open_count += 1
        df.opened = True

    def df_close(self, df: DeviceFile) -> None:
        """vfio_df_close: the last close disables the device and unbinds the IOMMU side."""
        dev = df.device
        if not df.opened:
            return
        df.opened = False
        dev.open_count -= 1
        if dev.open_count == 0:
            dev.last_close()
            if dev.idev is not None:
                dev.idev.ctx.unbind(dev.idev)
                dev.idev = None
                dev.iommufd = None
            else:
                dev.group.container_users -= 1
        if df.iommufd is not None:
            df.iommufd.put()
            df.iommufd = None

    def _service(self) -> None:
        for dev in self.devices:
            if dev.open_count:
                dev.service()

    # -- the backend interface of pyvfio.core.syscalls ----------------------------------------------------

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        with self._lock:
            self._service()
            p = os.path.abspath(os.fspath(path))
            factory = self._nodes.get(p)
            if factory is None:
                if (p == self.devroot or p.startswith(self.devroot + os.sep)) and not os.path.isdir(p):
                    raise fail(errno.ENOENT)
                return self._real.open(path, flags, mode)
            f = factory(p)
            return self.install(f)

    def close(self, fd: int) -> None:
        with self._lock:
            f = self._files.pop(fd, None)
            if f is None:
                self._real.close(fd)
                self._service()
                return
            os.close(fd)
            f.put()

    def ioctl(self, fd: int, request: int, arg: Any) -> int:
        with self._lock:
            self._service()
            f = self._files.get(fd)
            if f is None:
                return self._real.ioctl(fd, request, arg)
            ret = f.ioctl(request, addr_of(arg))
            self._service()
            return ret

    def mmap(self, fd: int, length: int, prot: int, flags: int, offset: int) -> Any:
        with self._lock:
            f = self._files.get(fd)
            if f is None:
                return self._real.mmap(fd, length, prot, flags, offset)
            return f.mmap(length, prot, flags, offset)

    def munmap(self, mapping: Any) -> None:
        self._real.munmap(mapping)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        offset = operator.index(offset)
        size = operator.index(size)     # as os.read: a float or NaN size is a TypeError
        if size < 0:
            raise fail(errno.EINVAL)
        with self._lock:
            self._service()
            f = self._files.get(fd)
            if f is None:
                return self._real.pread(fd, size, offset)
            if offset < 0:
                raise fail(errno.EINVAL)
            return f.rw(offset, size, None)

    def pwrite(self, fd: int, data: Any, offset: int) -> int:
        offset = operator.index(offset)
        with self._lock:
            self._service()
            f = self._files.get(fd)
            if f is None:
                return self._real.pwrite(fd, data, offset)
            if offset < 0:
                raise fail(errno.EINVAL)
            ret = f.rw(offset, len(data), bytes(data))
            self._service()
            return ret

    def read(self, fd: int, size: int) -> bytes:
        size = operator.index(size)     # as os.read: a float or NaN size is a TypeError
        if size < 0:
            raise fail(errno.EINVAL)
        with self._lock:
            self._service()
            f = self._files.get(fd)
            if f is None:
                return self._real.read(fd, size)
            return f.rw(None, size, None)

    def write(self, fd: int, data: Any) -> int:
        with self._lock:
            f = self._files.get(fd)
            if f is None:
                ret = self._real.write(fd, data)
            else:
                ret = f.rw(None, len(data), bytes(data))
            self._service()
            return ret

    def eventfd(self, initval: int, flags: int) -> int:
        return self._real.eventfd(initval, flags)

    def __getattr__(self, name: str) -> Any:
        """System calls the mock does not model go to the real kernel."""
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._real, name)

    def poll(self, fds: Sequence[Tuple[int, int]], timeout_ms: Optional[int]) -> List[Tuple[int, int]]:
        with self._lock:
            self._service()
        return self._real.poll(fds, timeout_ms)

    # -- end ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def installed(self) -> Iterator["MockKernel"]:
        """Answer every system call and make the fake tree the host, inside the block."""
        with syscalls.use(self), use_host(self.host):
            yield self

    def close_all(self) -> None:
        """Close every mock descriptor still open (as process exit would)."""
        with self._lock:
            for fd in list(self._files):
                self.close(fd)

    def shutdown(self) -> None:
        """Close everything and release the models' host resources."""
        self.close_all()
        for m in self.models:
            m.close()

