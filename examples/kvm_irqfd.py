#!/usr/bin/env python3
"""A VFIO device's MSI wired into a VM as an irqfd: edu interrupts reach guest code.

Run it in a lab guest whose CPU has SVM, so that the guest has /dev/kvm
(nested KVM under TCG):

    python3 -m pyvfio lab run --kernel full --cpu max \\
        -- python3 examples/kvm_irqfd.py

The edu device is given to VFIO; its MSI vector signals an eventfd, and
that same eventfd is registered with KVM as the irqfd of a GSI that the
VM's routing table sends as an MSI (vector 0x30 to the local APIC of vCPU
0), which is how a VMM passes an assigned device's MSI to its guest.  A few
bytes of real-mode code (ES based at the APIC page through sregs) enable
the local APIC, count interrupts in their handler and report the count
through an I/O port.  Each edu "raise interrupt" becomes one guest
interrupt, without this process forwarding anything.  The VFIO group (or
device cdev) is also added to the VM's KVM-VFIO device, as a VMM does for
assigned devices.
"""
import sys

import pyvfio
from pyvfio.core.memory import DmaBuffer
from pyvfio import pci
from pyvfio.drivers.edu import Edu
from pyvfio.kvm import Kvm, MsiRoute

GSI = 24                 # past the in-kernel PIC/IOAPIC pins
VECTOR = 0x30
LAPIC = 0xFEE00000       # MSI address: the local APIC of APIC ID 0
COUNTER = 0x2000
# 16-bit real mode at 0x1000: IVT[0x30] = handler; APIC SVR = 0x1ff (enabled);
# loop { cli; out 0x10, [COUNTER]; sti; hlt };
# handler: inc word [COUNTER]; APIC EOI = 0; iret
GUEST = bytes.fromhex(
    "31c0 8ed8 8ed0 bc0030 c706c000 2910 c706c200 0000"
    " 6626c706f000 ff010000"
    " fa a10020 e710 fb f4 ebf6"
    " ff060020 6626c706b000 00000000 cf")
ROUNDS = 5

edus = pci.find(vendor=0x1234, device=0x11E8)
if not edus:
    sys.exit("no edu device: run this inside `pyvfio lab run`")

with edus[0].bound("vfio-pci"), pyvfio.open_device(edus[0].name) as device, \
        Kvm() as kvm, kvm.create_vm() as vm, DmaBuffer(0x10000) as mem:
    edu = Edu(device)
    vm.create_irqchip()
    vm.set_gsi_routing([MsiRoute(gsi=GSI, address=LAPIC, data=VECTOR)])
    mem.write(0x1000, GUEST)
    vm.set_user_memory_region(0, 0, mem)
    vcpu = vm.create_vcpu(0)
    s = vcpu.get_sregs()
    for seg in (s.cs, s.ds, s.es, s.fs, s.gs, s.ss):
        seg.base = seg.selector = 0
    s.es.base = LAPIC                         # big real mode: ES reaches the APIC's registers
    vcpu.set_sregs(s)
    vcpu.set_regs(rip=0x1000, rflags=0x2, rsp=0x3000)

    kvfio = vm.create_vfio_device()
    kvfio.file_add(device.group if device.group is not None else device)
    msi_eventfd, = device.msi.enable(1)
    vm.register_irqfd(msi_eventfd, GSI)

    exit_ = vcpu.run()
    print("guest ready:", exit_)
    for i in range(1, ROUNDS + 1):
        edu.raise_irq(1)                      # the device sends MSI vector 0 ...
        exit_ = vcpu.run()                    # ... which KVM delivers as vector 0x30
        edu.ack_irq(1)
        print(f"edu interrupt {i}: guest handler count {exit_.value}")
        assert (exit_.port, exit_.value) == (0x10, i)
    print("counter in guest memory:", int.from_bytes(mem.read(COUNTER, 2), "little"))
    vm.unregister_irqfd(msi_eventfd, GSI)
    device.msi.disable()
    kvfio.file_del(device.group if device.group is not None else device)
    vm.delete_user_memory_region(0)
