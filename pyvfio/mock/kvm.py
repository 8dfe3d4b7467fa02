"""A mock ``/dev/kvm`` for the mock kernel: VMs, vCPUs with LoongArch ONE_REG, KVM-VFIO.

No emulator on an x86 machine runs LoongArch KVM, so the LoongArch ONE_REG
rules are checked here against a model of the kernel's code
(arch/loongarch/kvm/vcpu.c, Linux 6.12):

- only 64-bit ids exist (any other size: EINVAL);
- CSR ids reach the vCPU's software CSR copy; CSR CPUID (0x20) follows
  ``kvm_set_cpuid``: a value >= KVM_MAX_PHYID (256) is EINVAL; a vCPU whose
  CPUID is set may only set the same value again (EINVAL otherwise); a value
  another vCPU of the VM holds is EINVAL; a new vCPU starts with CPUID
  KVM_MAX_PHYID, meaning "not set", and the first set takes any free value;
- the KVM class has COUNTER (read/write) and VCPU_RESET (write);
- KVM_GET_REG_LIST does not exist on LoongArch (ENOTTY).

The KVM-VFIO device accepts the mock's VFIO group and device fds
(KVM_DEV_VFIO_FILE_ADD/DEL: EINVAL for any other file, EBADF for a closed
fd, EEXIST when added twice, ENOENT when deleting a file not added).

Family ``kvm`` (configuration: ``kvm_arch``, the ONE_REG dialect of the
vCPUs, None for no ``/dev/kvm``); ``kernel.kvm.enable()`` adds the node to a
kernel made without it.  KVM_RUN is not modelled (ENOTTY).
"""
from __future__ import annotations

import dataclasses
import errno
import mmap as _mmap
import os
from typing import Any, Dict, List, Optional

from pyvfio.core.uapi import ffi, lib
from pyvfio.mock.core.family import Family, MockFile, register
from pyvfio.mock.core.uaccess import copy_from_user, copy_to_user, fail, read_user, write_user

__all__ = ["MockKvm"]

KVM_MAX_PHYID = 256
_REG_LOONGARCH = lib.KVM_REG_LOONGARCH
_LA_CSR = _REG_LOONGARCH | 0x10000
_LA_KVM = _REG_LOONGARCH | 0x20000
_LA_CPUCFG = _REG_LOONGARCH | 0x40000
_LA_MASK = _REG_LOONGARCH | 0x70000
_LA_COUNTER = _LA_KVM | lib.KVM_REG_SIZE_U64 | 1
_LA_VCPU_RESET = _LA_KVM | lib.KVM_REG_SIZE_U64 | 2
_CSR_CPUID = 0x20
_CSR_ESTAT = 0x5
_CAPS = {lib.KVM_CAP_ONE_REG: 1, lib.KVM_CAP_IRQFD: 1, lib.KVM_CAP_IOEVENTFD: 1,
         lib.KVM_CAP_USER_MEMORY: 1, lib.KVM_CAP_NR_VCPUS: 256, lib.KVM_CAP_MAX_VCPUS: 256,
         lib.KVM_CAP_DEVICE_CTRL: 1}


@register
class MockKvm(Family):
    """What the mock KVM knows: its VMs, for tests to look at."""

    name = "kvm"

    @dataclasses.dataclass
    class Config:
        #: The ONE_REG dialect of the vCPUs ("loongarch"); None: no /dev/kvm.
        kvm_arch: Optional[str] = None

    def __init__(self, kernel: Any, config: "MockKvm.Config") -> None:
        super().__init__(kernel, config)
        self.arch: Optional[str] = None
        self.vms: List["_VmFile"] = []

    def setup(self) -> None:
        if self.config.kvm_arch is not None:
            self.enable(self.config.kvm_arch)

    def enable(self, arch: str = "loongarch") -> "MockKvm":
        """Add ``<dev>/kvm``; the vCPUs speak ``arch``'s ONE_REG ("loongarch")."""
        if arch != "loongarch":
            raise ValueError("the mock KVM models LoongArch ONE_REG only")
        self.arch = arch
        path = self.kernel.host.dev_path("kvm")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "a").close()
        self.kernel.add_node(path, lambda p: _KvmFile(self.kernel, p, self))
        return self


class _KvmFile(MockFile):
    kind = "kvm"

    def __init__(self, kernel: Any, path: str, state: MockKvm) -> None:
        super().__init__(kernel, path)
        self.state = state

    def ioctl(self, cmd: int, addr: int) -> int:
        if cmd == lib.KVM_GET_API_VERSION:
            return 12
        if cmd == lib.KVM_CHECK_EXTENSION:
            return _CAPS.get(addr, 0)
        if cmd == lib.KVM_GET_VCPU_MMAP_SIZE:
            return 3 * _mmap.PAGESIZE
        if cmd == lib.KVM_CREATE_VM:
            if addr != 0:
                raise fail(errno.EINVAL)
            vm = _VmFile(self.kernel, self.path + " (vm)", self.state)
            self.state.vms.append(vm)
            return self.kernel.install(vm)
        raise fail(errno.ENOTTY)

class _VmFile(MockFile):
    kind = "kvm-vm"

    def __init__(self, kernel: Any, path: str, state: MockKvm) -> None:
        super().__init__(kernel, path)
        self.state = state
        self.vcpus: Dict[int, Any] = {}
        self.phys_map: Dict[int, Any] = {}       # CPUID -> vCPU (kvm_phyid_map)
        self.devices: List[Any] = []

    def release(self) -> None:
        if self in self.state.vms:
            self.state.vms.remove(self)

    def ioctl(self, cmd: int, addr: int) -> int:
        if cmd == lib.KVM_CHECK_EXTENSION:
            return _CAPS.get(addr, 0)
        if cmd == lib.KVM_CREATE_VCPU:
            if addr in self.vcpus or not 0 <= addr < 256:
                raise fail(errno.EEXIST if addr in self.vcpus else errno.EINVAL)
            v = _VcpuFile(self.kernel, f"{self.path} vcpu {addr}", self, addr)
            self.vcpus[addr] = v
            self.get()                       # a vCPU holds its VM
            return self.kernel.install(v)
        if cmd == lib.KVM_CREATE_DEVICE:
            arg = copy_from_user(addr, "struct kvm_create_device")
            if arg.type != lib.KVM_DEV_TYPE_VFIO:
                raise fail(errno.ENODEV)
            if arg.flags & lib.KVM_CREATE_DEVICE_TEST:
                return 0
            if any(d.kind == "kvm-vfio" for d in self.devices):
                raise fail(errno.EBUSY)      # one KVM-VFIO device per VM
            d = _VfioDevFile(self.kernel, f"{self.path} kvm-vfio", self)
            self.devices.append(d)
            self.get()
            arg.fd = self.kernel.install(d)
            copy_to_user(addr, arg, ffi.sizeof("struct kvm_create_device"))
            return 0
        raise fail(errno.ENOTTY)

class _VcpuFile(MockFile):
    kind = "kvm-vcpu"

    def __init__(self, kernel: Any, path: str, vm: Any, vcpu_id: int) -> None:
        super().__init__(kernel, path)
        self.vm = vm
        self.id = vcpu_id
        self.csrs: Dict[int, int] = {_CSR_CPUID: KVM_MAX_PHYID}
        self.cpucfg: Dict[int, int] = {}
        self.counter = 0

    def release(self) -> None:
        cpuid = self.csrs[_CSR_CPUID]          # kvm_drop_cpuid
        if cpuid < KVM_MAX_PHYID and self.vm.phys_map.get(cpuid) is self:
            del self.vm.phys_map[cpuid]
        self.vm.vcpus.pop(self.id, None)
        self.vm.put()

    def mmap(self, length: int, prot: int, flags: int, offset: int) -> Any:
        if offset != 0 or length > 3 * _mmap.PAGESIZE:
            raise fail(errno.EINVAL)
        return _mmap.mmap(-1, length, flags=_mmap.MAP_SHARED, prot=prot)

    def ioctl(self, cmd: int, addr: int) -> int:
        if cmd in (lib.KVM_GET_ONE_REG, lib.KVM_SET_ONE_REG):
            one = copy_from_user(addr, "struct kvm_one_reg")
            if one.id & lib.KVM_REG_SIZE_MASK != lib.KVM_REG_SIZE_U64:
                raise fail(errno.EINVAL)
            if cmd == lib.KVM_GET_ONE_REG:
                write_user(one.addr, self._get(one.id).to_bytes(8, "little"))
            else:
                self._set(one.id, int.from_bytes(read_user(one.addr, 8), "little"))
            return 0
        raise fail(errno.ENOTTY)

    def _get(self, reg_id: int) -> int:
        cls = reg_id & _LA_MASK
        idx = (reg_id & 0x7FFF) >> 3
        if cls == _LA_CSR:
            return self.csrs.get(idx, 0)
        if cls == _LA_CPUCFG:
            if idx >= 21:                    # KVM_MAX_CPUCFG_REGS
                raise fail(errno.EINVAL)
            return self.cpucfg.get(idx, 0)
        if reg_id == _LA_COUNTER:
            return self.counter
        raise fail(errno.EINVAL)

    def _set(self, reg_id: int, value: int) -> None:
        cls = reg_id & _LA_MASK
        idx = (reg_id & 0x7FFF) >> 3
        if cls == _LA_CSR:
            if idx == _CSR_CPUID:
                self._set_cpuid(value)
            else:
                self.csrs[idx] = value
            return
        if reg_id == _LA_COUNTER:
            self.counter = value
            return
        if reg_id == _LA_VCPU_RESET:
            self.csrs[_CSR_ESTAT] = 0
            return
        raise fail(errno.EINVAL)

    def _set_cpuid(self, val: int) -> None:
        if val >= KVM_MAX_PHYID:
            raise fail(errno.EINVAL)
        cpuid = self.csrs[_CSR_CPUID]
        if cpuid < KVM_MAX_PHYID and cpuid in self.vm.phys_map:
            if cpuid == val:
                return                       # the same value again: nothing to do
            raise fail(errno.EINVAL)         # no change once set
        holder = self.vm.phys_map.get(val)
        if holder is not None:
            if holder is self:
                return
            raise fail(errno.EINVAL)         # another vCPU has it
        self.csrs[_CSR_CPUID] = val
        self.vm.phys_map[val] = self

class _VfioDevFile(MockFile):
    kind = "kvm-vfio"

    def __init__(self, kernel: Any, path: str, vm: Any) -> None:
        super().__init__(kernel, path)
        self.vm = vm
        self.files: List[Any] = []

    def release(self) -> None:
        for f in self.files:
            f.put()
        self.files.clear()
        if self in self.vm.devices:
            self.vm.devices.remove(self)
        self.vm.put()

    def ioctl(self, cmd: int, addr: int) -> int:
        if cmd not in (lib.KVM_SET_DEVICE_ATTR, lib.KVM_HAS_DEVICE_ATTR, lib.KVM_GET_DEVICE_ATTR):
            raise fail(errno.ENOTTY)
        attr = copy_from_user(addr, "struct kvm_device_attr")
        known = attr.group == lib.KVM_DEV_VFIO_FILE and attr.attr in (
            lib.KVM_DEV_VFIO_FILE_ADD, lib.KVM_DEV_VFIO_FILE_DEL)
        if cmd == lib.KVM_HAS_DEVICE_ATTR:
            if known:
                return 0
            raise fail(errno.ENXIO)
        if cmd == lib.KVM_GET_DEVICE_ATTR or not known:
            raise fail(errno.ENXIO)
        fd = int.from_bytes(read_user(attr.addr, 4), "little", signed=True)
        f = self.kernel.file_of(fd)           # EBADF for a closed fd
        if f is None or getattr(f, "kind", None) not in ("group", "device"):
            raise fail(errno.EINVAL)
        if attr.attr == lib.KVM_DEV_VFIO_FILE_ADD:
            if f in self.files:
                raise fail(errno.EEXIST)
            self.files.append(f.get())
        else:
            if f not in self.files:
                raise fail(errno.ENOENT)
            self.files.remove(f)
            f.put()
        return 0

