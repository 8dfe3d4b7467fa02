"""A vCPU fd: KVM_RUN with the exits decoded, registers, ONE_REG and the register list."""
from __future__ import annotations

import errno as _errno
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Union, cast

from pyvfio import errors
from pyvfio.core import args
from pyvfio.core import syscalls
from pyvfio.core.handle import Handle
from pyvfio.core.uapi import ffi, lib
from pyvfio.kvm import regs as _regs
from pyvfio.kvm.regs import loongarch as _la

if TYPE_CHECKING:
    from pyvfio.kvm.vm import Vm

__all__ = ["Vcpu", "Exit", "EXIT_NAMES"]

#: Exit reason number -> name without the KVM_EXIT_ prefix ("IO", "MMIO", "HLT" ...).
EXIT_NAMES: Dict[int, str] = {}
for _name in dir(lib):
    if _name.startswith("KVM_EXIT_") and not _name.startswith(
            ("KVM_EXIT_IO_", "KVM_EXIT_HYPERV_", "KVM_EXIT_XEN_", "KVM_EXIT_HYPERCALL_")):
        EXIT_NAMES.setdefault(getattr(lib, _name), _name[len("KVM_EXIT_"):])

_IO, _MMIO, _INTR = lib.KVM_EXIT_IO, lib.KVM_EXIT_MMIO, lib.KVM_EXIT_INTR
_IO_OUT = lib.KVM_EXIT_IO_OUT
_SIZE: Dict[int, int] = {}       # register id -> bytes, for ids seen before


class Exit:
    """Why KVM_RUN returned: ``reason`` (``lib.KVM_EXIT_*``) and ``name`` ("IO", "MMIO" ...).

    IO exits carry ``port``, ``size``, ``count``, ``direction`` ("in"/"out")
    and, for out, ``data``; MMIO exits ``address``, ``length``, ``is_write``
    and, for writes, ``data``.  Answer an "in" or an MMIO read with
    :meth:`respond` before the next run.  Other exits keep their fields in
    ``details``.
    """

    # fields an exit kind does not set keep these class defaults (cheap to build)
    port = size = count = address = length = None
    direction: Optional[str] = None
    is_write: Optional[bool] = None
    data = b""

    def __init__(self, vcpu: "Vcpu", reason: int) -> None:
        self._vcpu = vcpu
        self.reason = reason
        self.name = EXIT_NAMES.get(reason) or f"exit {reason}"
        self.details: Dict[str, Any] = {}

    @property
    def value(self) -> int:
        """``data`` as a little-endian integer (one access)."""
        n = self.size if self.reason == _IO else self.length
        return int.from_bytes(self.data[:n or len(self.data)], "little")

    def respond(self, value: Union[int, bytes]) -> None:
        """Give the guest the result of an IO "in" or an MMIO read."""
        vcpu = self._vcpu
        vcpu._check_open()
        if self.reason == _IO and self.direction == "in":
            assert self.size is not None and self.count is not None    # set for IO exits
            n = self.size * self.count
            data = value if isinstance(value, (bytes, bytearray)) else value.to_bytes(n, "little")
            off = vcpu._run.io.data_offset
            vcpu._mmap[off:off + n] = bytes(data).ljust(n, b"\0")[:n]
        elif self.reason == _MMIO and not self.is_write:
            assert self.length is not None                            # set for MMIO exits
            n = self.length
            data = value if isinstance(value, (bytes, bytearray)) else value.to_bytes(n, "little")
            ffi.memmove(vcpu._run.mmio.data, bytes(data).ljust(n, b"\0")[:n], n)
        else:
            raise errors.InvalidArgumentError(f"a {self} exit takes no answer", device=vcpu.name)

    def __repr__(self) -> str:
        if self.reason == _IO:
            data = f" data {self.data.hex()}" if self.direction == "out" else ""
            return (f"<Exit IO {self.direction} port {self.port:#x} size {self.size}"
                    f" count {self.count}{data}>")
        if self.reason == _MMIO:
            rw = "write" if self.is_write else "read"
            data = f" data {self.data.hex()}" if self.is_write else ""
            return f"<Exit MMIO {rw} {self.address:#x} len {self.length}{data}>"
        extra = "".join(f" {k}={v!r}" for k, v in self.details.items())
        return f"<Exit {self.name}{extra}>"

    __str__ = __repr__


class Vcpu(Handle):
    """A virtual CPU (from :meth:`Vm.create_vcpu`)."""

    def __init__(self, vm: "Vm", vcpu_id: int, fd: int) -> None:
        self.vm = vm
        self.id = vcpu_id
        self.fd = fd
        self.name = f"kvm-vcpu {vcpu_id} of {vm.name}"
        self._mmap: Any = None
        self._run: Any = None
        size = vm.kvm.get_vcpu_mmap_size()
        self._mmap = syscalls.mmap(fd, size, device=self.name, what="kvm_run")
        self._run = ffi.from_buffer("struct kvm_run *", self._mmap)
        self._one = ffi.new("struct kvm_one_reg *")
        self._regbuf = ffi.new("uint64_t[32]")       # 256 bytes: the widest ONE_REG (U2048)
        self._one.addr = int(ffi.cast("uintptr_t", self._regbuf))
        self._onereg_name = {lib.KVM_GET_ONE_REG: "KVM_GET_ONE_REG",
                             lib.KVM_SET_ONE_REG: "KVM_SET_ONE_REG"}

    def fileno(self) -> int:
        self._check_open()
        return self.fd

    def _check_open(self) -> None:
        if self._closed:
            if self.vm.closed:
                raise errors.ClosedError(f"vCPU {self.id} (its VM was closed)", device=self.name,
                                         remedy="create the VM and its vCPUs again; a vCPU lives "
                                                "only as long as its VM object")
            super()._check_open()

    def _release(self) -> None:
        if self._run is not None:
            ffi.release(self._run)
            self._run = None
        if self._mmap is not None:
            syscalls.munmap(self._mmap)
            self._mmap = None
        syscalls.close(self.fd)
        if not self.vm.closed:
            self.vm._forget(self)

    def _ioctl(self, request: int, arg: Any = None) -> int:
        self._check_open()
        return syscalls.ioctl(self.fd, request, arg, device=self.name)

    # -- running -------------------------------------------------------------------------------
    @property
    def kvm_run(self) -> Any:
        """The mapped ``struct kvm_run`` (cdata), e.g. for ``immediate_exit``."""
        self._check_open()
        return self._run

    def run(self) -> Exit:
        """KVM_RUN until the next exit to user space; the exit decoded.

        A signal interrupts the run: the exit is then ``INTR``.
        """
        if self._closed:
            self._check_open()
        try:
            syscalls.ioctl(self.fd, lib.KVM_RUN, None, device=self.name)
        except errors.PyvfioError as exc:
            if exc.errno != _errno.EINTR:
                raise
            ex = Exit(self, _INTR)
            return ex
        run = self._run
        reason = run.exit_reason
        ex = Exit(self, reason)
        if reason == _IO:
            io = run.io
            ex.port, ex.size, ex.count = io.port, io.size, io.count
            ex.direction = "out" if io.direction == _IO_OUT else "in"
            if ex.direction == "out":
                off = io.data_offset
                ex.data = self._mmap[off:off + io.size * io.count]
        elif reason == _MMIO:
            m = run.mmio
            ex.address, ex.length, ex.is_write = m.phys_addr, m.len, bool(m.is_write)
            if ex.is_write:
                ex.data = bytes(ffi.buffer(m.data, m.len))
        elif reason == lib.KVM_EXIT_FAIL_ENTRY:
            ex.details = {"hardware_entry_failure_reason":
                          run.fail_entry.hardware_entry_failure_reason,
                          "cpu": run.fail_entry.cpu}
        elif reason == lib.KVM_EXIT_INTERNAL_ERROR:
            ie = run.internal
            ex.details = {"suberror": ie.suberror,
                          "data": [ie.data[i] for i in range(min(ie.ndata, 16))]}
        elif reason == lib.KVM_EXIT_SYSTEM_EVENT:
            se = run.system_event
            ex.details = {"type": se.type, "data": [se.data[i] for i in range(min(se.ndata, 16))]}
        return ex

    # -- registers -----------------------------------------------------------------------------
    def get_regs(self) -> Any:
        """KVM_GET_REGS: the general registers (a ``struct kvm_regs`` copy)."""
        r = ffi.new("struct kvm_regs *")
        self._ioctl(lib.KVM_GET_REGS, r)
        return r

    def set_regs(self, regs: Any = None, **fields: int) -> None:
        """KVM_SET_REGS: ``regs`` as given, or the current ones with ``fields`` changed."""
        if regs is None:
            regs = self.get_regs()
        for k, v in fields.items():
            setattr(regs, k, v)
        self._ioctl(lib.KVM_SET_REGS, regs)

    def get_sregs(self) -> Any:
        """KVM_GET_SREGS (x86): segment and control registers."""
        s = ffi.new("struct kvm_sregs *")
        self._ioctl(lib.KVM_GET_SREGS, s)
        return s

    def set_sregs(self, sregs: Any) -> None:
        """KVM_SET_SREGS (x86)."""
        self._ioctl(lib.KVM_SET_SREGS, sregs)

    def interrupt(self, irq: int) -> None:
        """KVM_INTERRUPT: queue an external interrupt (x86 without an in-kernel irqchip)."""
        arg = ffi.new("struct kvm_interrupt *", {"irq": irq})
        self._ioctl(lib.KVM_INTERRUPT, arg)

    def arm_vcpu_init(self, features: Any = (), init: Any = None) -> None:
        """KVM_ARM_VCPU_INIT (arm64): reset the vCPU as the VM's preferred target with
        ``features`` (bit numbers, e.g. ``lib.KVM_ARM_VCPU_PSCI_0_2``); needed before
        registers or KVM_RUN."""
        req = getattr(lib, "KVM_ARM_VCPU_INIT", None)
        if req is None:
            raise errors.NotSupportedError("KVM_ARM_VCPU_INIT exists on arm64 only",
                                           device=self.name)
        if init is None:
            init = self.vm.arm_preferred_target()
        for bit in features:
            init.features[bit // 32] |= 1 << (bit % 32)
        self._ioctl(req, init)

    # -- ONE_REG -------------------------------------------------------------------------------
    def _one_reg(self, request: int, reg_id: int) -> None:
        self._one.id = reg_id
        try:
            syscalls.ioctl(self.fd, request, self._one, device=self.name)
        except errors.PyvfioError as exc:
            # KVM_GET_ONE_REG shares its number with KVM_ARM_SET_DEVICE_ADDR: name it here
            exc.op = self._onereg_name[request]
            exc.message = f"{exc.message} ({_regs.describe(reg_id)}, id {reg_id:#x})"
            if exc.errno in (_errno.ENOENT, _errno.EINVAL):
                exc.remedy = ("the kernel has no such register for this vCPU (or refused the "
                              "value): check vcpu.reg_list() and the architecture's rules")
            raise

    def get_reg(self, reg_id: int, into: Optional[Union[bytearray, memoryview]] = None
                ) -> Union[int, bytes]:
        """KVM_GET_ONE_REG: an int for registers up to 64 bits, bytes for wider ones.

        ``into``: a writable buffer of exactly the id's size to fill instead.
        """
        if self._closed:
            self._check_open()
        reg_id = args.integer(reg_id, "register id", device=self.name)
        size = _SIZE.get(reg_id) or _regs.size_of(reg_id)
        if into is not None and len(into) != size:
            raise errors.RegisterIdError(
                f"register {_regs.describe(reg_id)} is {size} bytes, the buffer {len(into)}",
                device=self.name, op="KVM_GET_ONE_REG",
                remedy="give a buffer of the size the id encodes (pyvfio.kvm.regs.size_of)")
        self._one_reg(lib.KVM_GET_ONE_REG, reg_id)
        _SIZE[reg_id] = size
        if size == 8 and into is None:                # the common case, without a buffer object
            return cast("int | bytes", self._regbuf[0])
        if into is not None:
            into[:] = ffi.buffer(self._regbuf, size)
            return bytes(into)
        if size <= 8:
            return int.from_bytes(ffi.buffer(self._regbuf, size), "little")
        return bytes(ffi.buffer(self._regbuf, size))

    def set_reg(self, reg_id: int, value: Union[int, bytes, bytearray, memoryview]) -> None:
        """KVM_SET_ONE_REG: ``value`` an int that fits the id's size, or exactly that many bytes."""
        if self._closed:
            self._check_open()
        reg_id = args.integer(reg_id, "register id", device=self.name)
        size = _SIZE.get(reg_id) or _regs.size_of(reg_id)
        if isinstance(value, bool):
            raise errors.RegisterIdError(f"register value must be an int or bytes, not {value!r}",
                                         device=self.name, op="KVM_SET_ONE_REG")
        if isinstance(value, int):
            if not 0 <= value < 1 << (8 * size):
                raise errors.RegisterIdError(
                    f"{value:#x} does not fit {_regs.describe(reg_id)}", device=self.name,
                    op="KVM_SET_ONE_REG", remedy=f"give a value of 0..2**{8 * size}-1")
            if size == 8:
                self._regbuf[0] = value
                self._one_reg(lib.KVM_SET_ONE_REG, reg_id)
                _SIZE[reg_id] = size
                return
            data = value.to_bytes(size, "little")
        else:
            data = bytes(args.data(value, "register value", device=self.name))
            if len(data) != size:
                raise errors.RegisterIdError(
                    f"register {_regs.describe(reg_id)} is {size} bytes, the value {len(data)}",
                    device=self.name, op="KVM_SET_ONE_REG",
                    remedy="give exactly the size the id encodes (pyvfio.kvm.regs.size_of)")
        ffi.memmove(self._regbuf, data, size)
        self._one_reg(lib.KVM_SET_ONE_REG, reg_id)
        _SIZE[reg_id] = size

    def reg_list(self) -> List[int]:
        """KVM_GET_REG_LIST: every register id this vCPU offers through ONE_REG."""
        head = ffi.new("struct kvm_reg_list *")
        try:
            self._ioctl(lib.KVM_GET_REG_LIST, head)
        except errors.PyvfioError as exc:
            if exc.errno != _errno.E2BIG:
                raise
        n = head.n
        buf = ffi.new("uint64_t[]", n + 1)
        buf[0] = n
        self._ioctl(lib.KVM_GET_REG_LIST, ffi.cast("struct kvm_reg_list *", buf))
        return [buf[1 + i] for i in range(buf[0])]

    # -- LoongArch -----------------------------------------------------------------------------
    def set_physical_cpuid(self, cpuid: int) -> None:
        """Set the LoongArch CSR CPUID (0x20) through ONE_REG, checking LoongArch KVM's rules
        first: below KVM_MAX_PHYID (256); not the CPUID of another vCPU of this VM; once set,
        only the same value again."""
        self._check_open()
        if isinstance(cpuid, bool) or not isinstance(cpuid, int) or not 0 <= cpuid < _la.KVM_MAX_PHYID:
            raise errors.InvalidArgumentError(
                f"physical CPUID {cpuid!r} is not below KVM_MAX_PHYID ({_la.KVM_MAX_PHYID})",
                device=self.name, op="set_physical_cpuid", errno=_errno.EINVAL,
                remedy=f"use 0..{_la.KVM_MAX_PHYID - 1}")
        mine = getattr(self, "_phyid", None)
        if mine is not None and mine != cpuid:
            raise errors.InvalidArgumentError(
                f"vCPU {self.id} already has physical CPUID {mine}; LoongArch KVM does not "
                f"let it change to {cpuid}", device=self.name, op="set_physical_cpuid",
                errno=_errno.EINVAL, remedy="set a CPUID once per vCPU (the same value again is "
                                            "allowed); create a new vCPU for another one")
        for other in self.vm.vcpus:
            if other is not self and getattr(other, "_phyid", None) == cpuid:
                raise errors.InvalidArgumentError(
                    f"physical CPUID {cpuid} already belongs to vCPU {other.id} of this VM",
                    device=self.name, op="set_physical_cpuid", errno=_errno.EINVAL,
                    remedy="give each vCPU of a VM its own CPUID")
        self.set_reg(_la.csr(_la.CSR_CPUID), cpuid)
        self._phyid = cpuid
