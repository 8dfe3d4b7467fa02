"""The mock's VFIO core: container, groups and device files (``drivers/vfio/``).

:class:`Container` is ``/dev/vfio/vfio`` with its IOMMU driver (type1,
sPAPR TCE or no-IOMMU), :class:`Group` an IOMMU group's vfio state,
:class:`DeviceFile` an open device (from ``VFIO_GROUP_GET_DEVICE_FD`` or a
cdev); family :class:`Vfio` holds them and the vfio-pci devices.
"""
from __future__ import annotations

import dataclasses
import errno
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from pyvfio.core.uapi import ffi, lib
from pyvfio.mock.core.family import Family, MockFile, register
from pyvfio.mock.core.uaccess import (PAGE_SIZE, Translation, copy_args, copy_from_user, copy_to_user,
                                      fail, field_end)
from pyvfio.mock.iommufd import IommuFile
from pyvfio.mock.vfio.pci import VfioPciDevice
from pyvfio.mock.vfio.spapr import SpaprTceIommu
from pyvfio.mock.vfio.sysfs import build
from pyvfio.mock.vfio.type1 import Type1Iommu

if TYPE_CHECKING:  # pragma: no cover
    from pyvfio.mock.pci.function import HostFunction

__all__ = ["Vfio", "Group", "Container", "ContainerFile", "GroupFile", "DeviceFile", "NoIommuDriver"]

MockKernel = Any     # the kernel, as families see it (pyvfio.mock.core.family.KernelState)


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
        return 1 if kernel.vfio.noiommu and arg == lib.VFIO_NOIOMMU_IOMMU else 0

    def attach_group(self, group: "Group") -> None:
        self.groups.append(group)

    def detach_group(self, group: "Group") -> None:
        if group in self.groups:
            self.groups.remove(group)

    def release(self) -> None:
        self.groups = []

    def translate(self, iova: int, write: bool) -> Translation:
        run = PAGE_SIZE - (iova % PAGE_SIZE)
        vaddr = self.kernel.process.physmem.virt(iova)
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
        if self.kernel.iommu.kind in ("type1", "none"):      # type1 loads without an IOMMU too
            out.append(Type1Iommu)
        elif self.kernel.iommu.kind == "spapr":
            out.append(SpaprTceIommu)
        out.append(NoIommuDriver)
        if self.groups:
            out = [d for d in out if (d is NoIommuDriver) == self.noiommu]
        return out

    def check_extension(self, arg: int) -> int:
        if self.driver is not None:
            return int(self.driver.ioctl(lib.VFIO_CHECK_EXTENSION, arg))
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
        if not self.kernel.process.cap_sys_rawio:
            raise fail(errno.EPERM)
        return NoIommuDriver(self.kernel)

    def attach_group(self, group: Group) -> None:
        """vfio_container_attach_group."""
        if group.noiommu and not self.kernel.process.cap_sys_rawio:
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
            return int(lib.VFIO_API_VERSION)
        if cmd == lib.VFIO_CHECK_EXTENSION:
            return c.check_extension(addr)
        if cmd == lib.VFIO_SET_IOMMU:
            return c.set_iommu(addr)
        if c.driver is None:
            raise fail(errno.EINVAL)
        return int(c.driver.ioctl(cmd, addr))


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
            if not self.kernel.process.cap_sys_rawio:
                raise fail(errno.EPERM)
        self.kernel.vfio.df_open(df, iommu_file)
        if iommu_file is not None and device.open_count == 1 and not g.noiommu:
            try:
                ioas = iommu_file.ctx.compat_ioas(create=False)
                iommu_file.ctx.attach(device.idev, ioas.id)
            except OSError:
                self.kernel.vfio.df_close(df)
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
                self.kernel.vfio.df_close(self)
            if self.group_file is not None:
                self.group_file.put()
                self.group_file = None
        elif self.access_granted:
            self.kernel.vfio.df_close(self)
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
            self.kernel.vfio.df_open(self, target)
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


@register
class Vfio(Family):
    """VFIO: the container, groups, device files and the vfio-pci driver."""

    name = "vfio"
    requires = ("process", "pci", "iommu", "iommufd")

    @dataclasses.dataclass
    class Config:
        #: vfio's ``enable_unsafe_noiommu_mode`` (default: on when ``iommu="none"``).
        noiommu: Optional[bool] = None
        #: vfio_iommu_type1's ``dma_entry_limit``.
        dma_entry_limit: int = 65535
        #: The widest BAR access vfio-pci makes in one go, in bytes.
        max_io_width: int = 8

    def __init__(self, kernel: Any, config: "Vfio.Config") -> None:
        super().__init__(kernel, config)
        iommu = kernel.iommu.kind
        self.noiommu = iommu == "none" if config.noiommu is None else config.noiommu
        self.cdev = kernel.iommufd.enabled
        self.dma_entry_limit = config.dma_entry_limit
        self.max_io_width = config.max_io_width
        self.spapr_mm: List[Any] = []
        self.groups: Dict[int, Group] = {}
        self.devices: List[VfioPciDevice] = []
        if iommu == "none" and not self.noiommu:
            return              # no IOMMU and no no-IOMMU mode: vfio-pci cannot take the devices
        for model in kernel.pci.models:
            group = self.groups.get(model.group)
            if group is None:
                group = self.groups[model.group] = Group(kernel, model.group, noiommu=iommu == "none")
            dev = VfioPciDevice(kernel, model, group, len(self.devices))
            group.devices.append(dev)
            self.devices.append(dev)
            if not model.viable and not group.host_functions:
                group.host_functions.append(kernel.pci.add_companion(model))

    def setup(self) -> None:
        kernel = self.kernel
        build(kernel)
        kernel.add_node(kernel.host.dev_path("vfio", "vfio"), lambda p: ContainerFile(kernel, p))
        for group in self.groups.values():
            kernel.add_node(kernel.host.dev_path("vfio", group.node_name),
                            (lambda g: lambda p: self._open_group(p, g))(group))
        if self.cdev:
            for dev in self.devices:
                kernel.add_node(kernel.host.dev_path("vfio", "devices", f"vfio{dev.index}"),
                                (lambda d: lambda p: DeviceFile(kernel, p, d, group_path=False))(dev))

    def service(self) -> None:
        for dev in self.devices:
            if dev.open_count:
                dev.service()

    def vfio_device(self, bdf: str) -> Optional[VfioPciDevice]:
        """The vfio device at ``bdf`` (None if that function is not bound to vfio-pci)."""
        for dev in self.devices:
            if dev.name == bdf.lower():
                return dev
        return None

    def mappings(self) -> List[str]:
        """Every live DMA mapping, described."""
        out: List[str] = []
        seen = set()
        for f in self.kernel.files():
            c = getattr(f, "container", None)
            if c is not None and c.driver is not None and id(c) not in seen:
                seen.add(id(c))
                out += c.driver.close_summary()
        for g in self.groups.values():
            c = g.container
            if c is not None and c.driver is not None and id(c) not in seen:
                seen.add(id(c))
                out += c.driver.close_summary()
        out += [f"sPAPR preregistered memory {m.ua:#x}+{m.size:#x} (mm)" for m in self.spapr_mm]
        return out

    def leaks(self) -> List[str]:
        return self.mappings()

    def _open_group(self, path: str, group: Group) -> GroupFile:
        if group.noiommu and not self.kernel.process.cap_sys_rawio:
            raise fail(errno.EPERM)
        if group.cdev_device_open_cnt:
            raise fail(errno.EBUSY)
        if group.opened_file is not None:
            raise fail(errno.EBUSY)
        gf = GroupFile(self.kernel, path, group)
        group.opened_file = gf
        return gf

    def group_of_fd(self, fd: int) -> Group:
        f = self.kernel.file_of(fd)
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
                if g.noiommu and not self.kernel.process.cap_sys_rawio:
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
