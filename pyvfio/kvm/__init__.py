"""KVM from Python: the system, VM, vCPU and device fds, and ONE_REG register ids.

Enough to tie a userspace driver's eventfds and VFIO devices to a VM and to
run a few guest instructions in tests; not a VMM::

    with Kvm() as kvm, kvm.create_vm() as vm, DmaBuffer(0x10000) as mem:
        vm.set_user_memory_region(0, 0, mem)
        vcpu = vm.create_vcpu(0)
        ...
        exit = vcpu.run()          # <Exit IO out port 0x3f8 size 1 count 1 data 41>

One module per fd kind, methods named after the ioctls (KVM_CHECK_EXTENSION
-> ``check_extension``).
"""
from __future__ import annotations

from pyvfio.kvm import regs
from pyvfio.kvm.device import Device, VfioDevice
from pyvfio.kvm.system import CpuidEntry, Kvm
from pyvfio.kvm.vcpu import EXIT_NAMES, Exit, Vcpu
from pyvfio.kvm.vm import IrqchipRoute, MemoryRegion, MsiRoute, Vm

__all__ = ["Kvm", "Vm", "Vcpu", "Exit", "EXIT_NAMES", "Device", "VfioDevice", "MemoryRegion",
           "MsiRoute", "IrqchipRoute",
           "CpuidEntry", "regs"]
