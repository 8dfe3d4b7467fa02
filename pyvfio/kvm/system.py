"""``/dev/kvm``: the system fd (KVM_GET_API_VERSION, KVM_CHECK_EXTENSION, KVM_CREATE_VM)."""
from __future__ import annotations

import errno as _errno
import os
from typing import TYPE_CHECKING, Any, List, NamedTuple, Optional, Union

from pyvfio import errors
from pyvfio.core import syscalls
from pyvfio.core.handle import Handle
from pyvfio.core.sysfs import host
from pyvfio.core.uapi import ffi, lib

if TYPE_CHECKING:
    from pyvfio.kvm.vm import Vm

__all__ = ["Kvm", "CpuidEntry", "cap_number"]

#: The API version every KVM since 2.6.22 reports.
KVM_API_VERSION = 12

_OPEN_REMEDY = ("load KVM (`modprobe kvm_intel` or `modprobe kvm_amd`) on a CPU with VMX or SVM "
                "(in a QEMU guest: `-cpu host` with KVM, or an SVM CPU model such as "
                "`-cpu qemu64,+svm` under TCG), and give your user /dev/kvm")


def cap_number(cap: Union[int, str]) -> int:
    """A capability by number or name (``"ONE_REG"`` or ``"KVM_CAP_ONE_REG"``)."""
    if isinstance(cap, int) and not isinstance(cap, bool):
        return cap
    name = str(cap).upper()
    if not name.startswith("KVM_CAP_"):
        name = "KVM_CAP_" + name
    value = getattr(lib, name, None)
    if not isinstance(value, int):
        raise errors.InvalidArgumentError(f"unknown KVM capability {cap!r}",
                                          remedy="use a KVM_CAP_* name of linux/kvm.h or its number")
    return value


class CpuidEntry(NamedTuple):
    """One ``struct kvm_cpuid_entry2``."""
    function: int
    index: int  # type: ignore[assignment]  # the kernel's field name shadows tuple.index
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int


class Kvm(Handle):
    """The KVM subsystem: ``Kvm()`` opens ``/dev/kvm`` of the current host."""

    def __init__(self, path: Optional[str] = None) -> None:
        self.path = path or host().dev_path("kvm")
        self.name = self.path
        try:
            self.fd = syscalls.open(self.path, os.O_RDWR, device="kvm")
        except errors.PyvfioError as exc:
            exc.remedy = _OPEN_REMEDY
            raise
        self._mmap_size: Optional[int] = None
        try:
            version = self.get_api_version()
        except BaseException:
            self.close()                  # nothing of a half-made object outlives it
            raise
        if version != KVM_API_VERSION:
            syscalls.close(self.fd)
            self._closed = True
            raise errors.NotSupportedError(
                f"KVM API version {version}, pyvfio speaks {KVM_API_VERSION}", path=self.path,
                op="KVM_GET_API_VERSION", device="kvm")

    def fileno(self) -> int:
        self._check_open()
        return self.fd

    def _release(self) -> None:
        syscalls.close(self.fd)

    def _ioctl(self, request: int, arg: Any = None) -> int:
        self._check_open()
        return syscalls.ioctl(self.fd, request, arg, device="kvm")

    def get_api_version(self) -> int:
        """KVM_GET_API_VERSION (always 12)."""
        return self._ioctl(lib.KVM_GET_API_VERSION)

    @property
    def api_version(self) -> int:
        return self.get_api_version()

    def check_extension(self, cap: Union[int, str]) -> int:
        """KVM_CHECK_EXTENSION on the system fd: 0 when absent, else 1 or a count."""
        return self._ioctl(lib.KVM_CHECK_EXTENSION, cap_number(cap))

    def get_vcpu_mmap_size(self) -> int:
        """KVM_GET_VCPU_MMAP_SIZE: bytes of a vCPU's ``kvm_run`` mapping (and the pages after it)."""
        if self._mmap_size is None:
            self._mmap_size = self._ioctl(lib.KVM_GET_VCPU_MMAP_SIZE)
        return self._mmap_size

    def get_supported_cpuid(self, max_entries: int = 256) -> List[CpuidEntry]:
        """KVM_GET_SUPPORTED_CPUID (x86): the CPUID leaves KVM can give a guest."""
        if not hasattr(lib, "KVM_GET_SUPPORTED_CPUID"):
            raise errors.NotSupportedError("KVM_GET_SUPPORTED_CPUID exists on x86 only",
                                           device="kvm", path=self.path)
        n = max_entries
        for _ in range(4):
            buf = ffi.new("char[]", ffi.sizeof("struct kvm_cpuid2")
                          + n * ffi.sizeof("struct kvm_cpuid_entry2"))
            arg = ffi.cast("struct kvm_cpuid2 *", buf)
            arg.nent = n
            try:
                self._ioctl(lib.KVM_GET_SUPPORTED_CPUID, arg)
            except errors.PyvfioError as exc:
                if exc.errno != _errno.E2BIG:
                    raise
                n *= 2
                continue
            return [CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
                    for e in (arg.entries[i] for i in range(arg.nent))]
        raise errors.InvalidArgumentError("KVM_GET_SUPPORTED_CPUID kept asking for more room",
                                          device="kvm")

    def create_vm(self, machine_type: int = 0) -> "Vm":
        """KVM_CREATE_VM: a new, empty virtual machine."""
        from pyvfio.kvm.vm import Vm
        fd = self._ioctl(lib.KVM_CREATE_VM, machine_type)
        return Vm(self, syscalls.adopt(fd, f"kvm-vm fd (from {self.path})"))

