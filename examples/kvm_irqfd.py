#!/usr/bin/env python3
"""A VFIO device's MSI wired into a VM as an irqfd: edu interrupts reach guest code.

Run it in a lab guest whose CPU has SVM, so that the guest has /dev/kvm
(nested KVM under TCG):

    python3 -m pyvfio lab run --kernel full --qemu-arg=-cpu --qemu-arg=qemu64,+svm \\
        -- python3 examples/kvm_irqfd.py

The edu device is given to VFIO; its MSI vector signals an eventfd, and
that same eventfd is registered with KVM as the irqfd of GSI 4.  A few
bytes of real-mode code program the VM's in-kernel PIC, count interrupts in
their handler and report the count through an I/O port.  Each edu
"raise interrupt" becomes one guest interrupt, without this process
forwarding anything.  The VFIO group (or device cdev) is also added to the
VM's KVM-VFIO device, as a VMM does for assigned devices.
"""
import sys

import pyvfio
from pyvfio.core.memory import DmaBuffer
from pyvfio import pci
from pyvfio.drivers.edu import Edu
from pyvfio.kvm import Kvm

GSI = 4
COUNTER = 0x2000
# 16-bit real mode at 0x1000: IVT[0x0c] = handler; 8259 ICW1-4 (vector base 8),
# unmask IRQ 4; loop { cli; out 0x10, [COUNTER]; sti; hlt };
# handler: inc word [COUNTER]; EOI; iret
GUEST = bytes.fromhex(
    "31c0 8ed8 8ed0 bc0030 c7063000 3310 c7063200 0000"
    " b011 e620 b008 e621 b004 e621 b001 e621 b0ef e621"
    " fa a10020 e710 fb f4 ebf6"
    " ff060020 b020 e620 cf")
ROUNDS = 5

edus = pci.find(vendor=0x1234, device=0x11E8)
if not edus:
    sys.exit("no edu device: run this inside `pyvfio lab run`")

with edus[0].bound("vfio-pci"), pyvfio.open_device(edus[0].name) as device, \
        Kvm() as kvm, kvm.create_vm() as vm, DmaBuffer(0x10000) as mem:
    edu = Edu(device)
    vm.create_irqchip()
    mem.write(0x1000, GUEST)
    vm.set_user_memory_region(0, 0, mem)
    vcpu = vm.create_vcpu(0)
    s = vcpu.get_sregs()
    for seg in (s.cs, s.ds, s.es, s.fs, s.gs, s.ss):
        seg.base = seg.selector = 0
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
        exit_ = vcpu.run()                    # ... which KVM injects as GSI 4
        edu.ack_irq(1)
        print(f"edu interrupt {i}: guest handler count {exit_.value}")
        assert (exit_.port, exit_.value) == (0x10, i)
    print("counter in guest memory:", int.from_bytes(mem.read(COUNTER, 2), "little"))
    vm.unregister_irqfd(msi_eventfd, GSI)
    device.msi.disable()
    kvfio.file_del(device.group if device.group is not None else device)
    vm.delete_user_memory_region(0)
