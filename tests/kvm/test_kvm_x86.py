"""x86 KVM for real: a few bytes of real-mode code, its exits, ioeventfd and irqfd.

These run on the host's /dev/kvm (a real kernel: result lines say
``real <release> host-kvm``) and in a lab guest whose CPU has SVM (nested
KVM under TCG), where the plugin labels them ``real <guest release>``.
"""
from __future__ import annotations

import os

import pytest

from pyvfio.core.eventfd import EventFd
from pyvfio.core.memory import DmaBuffer
from pyvfio.lab import in_guest

from guest16 import CODE, COUNTER, MEM_SIZE, MMIO, Asm, setup_real_mode

pytestmark = [pytest.mark.device,
              pytest.mark.skipif(os.uname().machine != "x86_64",
                                 reason="x86 real-mode guests need an x86 host")]

#: seconds a single KVM_RUN may take before SIGALRM ends it (nested KVM under TCG is slow)
RUN_LIMIT = 60.0 if in_guest() else 5.0


@pytest.fixture
def machine(real_kvm, alarm):
    """A VM with 64 KiB of memory at 0 and vCPU 0; ``load(code)`` puts code at 0x1000."""
    with real_kvm.create_vm() as vm, DmaBuffer(MEM_SIZE) as mem:
        if vm.check_extension("SET_TSS_ADDR"):
            vm.set_tss_addr(0xFFFBD000)

        class M:
            pass
        m = M()
        m.vm, m.mem, m.kvm = vm, mem, real_kvm

        def load(code: bytes, irqchip: bool = False):
            if irqchip:
                vm.create_irqchip()
            vm.set_user_memory_region(0, 0, mem)
            mem.write(CODE, code)
            m.vcpu = vm.create_vcpu(0)
            setup_real_mode(m.vcpu)
            return m.vcpu

        def run():
            alarm(RUN_LIMIT)
            ex = m.vcpu.run()
            alarm(0)
            assert ex.name != "INTR", f"KVM_RUN took longer than {RUN_LIMIT} s"
            return ex
        m.load, m.run = load, run
        yield m
        vm.delete_user_memory_region(0)


def test_port_and_mmio_exits_decoded(machine):
    a = Asm()
    a.mov_dx(0x3F8).mov_al(0x41).out_dx_al()               # out 0x3f8, 'A'
    a.mov_dx(0x3FA).mov_ax(0x1234).out_dx_ax()             # out 0x3fa, 0x1234 (16-bit)
    a.mov_ax(MMIO >> 4).mov_es_ax()
    a.mov_ax(0xBEEF).mov_es_mem_ax(0)                      # MMIO write 0x10000, 2 bytes
    a.mov_al_es_mem(4)                                     # MMIO read 0x10004, 1 byte
    a.mov_dx(0x3F8).out_dx_al()                            # echo what was read
    a.in_al_dx()                                           # in al, 0x3f8
    a.mov_mem_al(COUNTER)
    a.hlt()
    machine.load(a.assemble())

    ex = machine.run()
    assert (ex.name, ex.direction, ex.port, ex.size, ex.count, ex.data) == \
        ("IO", "out", 0x3F8, 1, 1, b"\x41")
    ex = machine.run()
    assert (ex.name, ex.direction, ex.port, ex.size, ex.data, ex.value) == \
        ("IO", "out", 0x3FA, 2, b"\x34\x12", 0x1234)
    ex = machine.run()
    assert (ex.name, ex.address, ex.length, ex.is_write, ex.data) == \
        ("MMIO", 0x10000, 2, True, b"\xef\xbe")
    ex = machine.run()
    assert (ex.name, ex.address, ex.length, ex.is_write) == ("MMIO", 0x10004, 1, False)
    ex.respond(0x5A)
    ex = machine.run()
    assert (ex.name, ex.port, ex.data) == ("IO", 0x3F8, b"\x5a")
    ex = machine.run()
    assert (ex.name, ex.direction, ex.port, ex.size) == ("IO", "in", 0x3F8, 1)
    ex.respond(0x77)
    ex = machine.run()
    assert ex.name == "HLT"
    assert machine.mem.read(COUNTER, 1) == b"\x77"
    assert machine.vcpu.get_regs().rip == CODE + len(machine.mem.read(CODE, 64).split(b"\xf4")[0]) + 1


N = 7


def _writes(n: int, match: int, other: int, pio: bool) -> bytes:
    a = Asm()
    if pio:
        a.mov_dx(0x500)
    else:
        a.mov_ax(MMIO >> 4).mov_es_ax()
    a.mov_cx(n).label("loop").mov_ax(match)
    a.out_dx_ax() if pio else a.mov_es_mem_ax(0)
    a.dec_cx().jnz("loop")
    a.mov_ax(other)
    a.out_dx_ax() if pio else a.mov_es_mem_ax(0)
    a.hlt()
    return a.assemble()


@pytest.mark.parametrize("pio", [False, True], ids=["mmio", "pio"])
def test_ioeventfd_counts_writes_without_exit(machine, pio):
    machine.load(_writes(N, 0x1234, 0x9999, pio))
    addr = 0x500 if pio else MMIO
    with EventFd("ioeventfd") as efd:
        machine.vm.register_ioevent(efd, addr, 2, datamatch=0x1234, pio=pio)
        ex = machine.run()
        # the N matching writes completed in the kernel; only the other value exits
        if pio:
            assert (ex.name, ex.port, ex.size, ex.data) == ("IO", 0x500, 2, b"\x99\x99")
        else:
            assert (ex.name, ex.address, ex.length, ex.data) == ("MMIO", MMIO, 2, b"\x99\x99")
        assert efd.pending() == N
        assert machine.run().name == "HLT"
        assert efd.pending() == 0
        machine.vm.unregister_ioevent(efd, addr, 2, datamatch=0x1234, pio=pio)


def test_ioeventfd_any_value(machine):
    machine.load(_writes(N, 0x1111, 0x2222, pio=False))
    with EventFd("ioeventfd") as efd:
        machine.vm.register_ioevent(efd, MMIO, 2)
        assert machine.run().name == "HLT"       # no exit for any of the N + 1 writes
        assert efd.pending() == N + 1
        machine.vm.unregister_ioevent(efd, MMIO, 2)


IRQ = 4                 # ISA IRQ 4 = GSI 4
VECTOR = 0x08 + IRQ     # the PIC is programmed with vector base 8


def _irq_guest() -> bytes:
    a = Asm()
    a.xor_ax_ax().mov_ds_ax().mov_ss_ax().mov_sp(0x3000)
    a.mov_mem_label(VECTOR * 4, "handler").mov_mem_imm16(VECTOR * 4 + 2, 0)   # IVT entry
    for port, v in ((0x20, 0x11), (0x21, 0x08), (0x21, 0x04), (0x21, 0x01),  # ICW1-4
                    (0x21, 0xFF & ~(1 << IRQ))):                              # OCW1: unmask IRQ
        a.mov_al(v).out_imm_al(port)
    a.label("loop").cli()
    a.mov_ax_mem(COUNTER).out_imm_ax(0x10)       # report the count: IO exit on port 0x10
    a.sti().hlt()                                # sti; hlt: the interrupt wakes the hlt
    a.jmp("loop")
    a.label("handler").inc_mem16(COUNTER)
    a.mov_al(0x20).out_imm_al(0x20)              # EOI
    a.iret()
    return a.assemble()


@pytest.mark.parametrize("resample", [False, True], ids=["edge", "resample"])
def test_irqfd_injection_seen_by_guest(machine, resample):
    machine.load(_irq_guest(), irqchip=True)
    with EventFd("irqfd") as efd, EventFd("irqfd resample") as rfd:
        machine.vm.register_irqfd(efd, IRQ, resamplefd=rfd if resample else None)
        ex = machine.run()
        assert (ex.name, ex.port, ex.value) == ("IO", 0x10, 0)
        for i in range(1, N + 1):
            efd.signal()
            ex = machine.run()
            assert (ex.name, ex.port, ex.value) == ("IO", 0x10, i)
            if resample:
                assert rfd.pending() == 1           # the guest's EOI lowered the line
        assert int.from_bytes(machine.mem.read(COUNTER, 2), "little") == N
        machine.vm.unregister_irqfd(efd, IRQ)


def test_system_fd_answers(real_kvm, leaks):
    assert real_kvm.get_api_version() == 12
    assert real_kvm.check_extension("KVM_CAP_USER_MEMORY") == 1
    assert real_kvm.check_extension("IRQFD") == 1
    assert real_kvm.check_extension("IOEVENTFD") == 1
    size = real_kvm.get_vcpu_mmap_size()
    assert size % 4096 == 0 and size >= 4096
    leaf0 = next(e for e in real_kvm.get_supported_cpuid() if e.function == 0)
    vendor = b"".join(r.to_bytes(4, "little") for r in (leaf0.ebx, leaf0.edx, leaf0.ecx)).decode()
    with open("/proc/cpuinfo") as f:
        cpu_vendor = next(line.split(":")[1].strip() for line in f if line.startswith("vendor_id"))
    assert vendor == cpu_vendor


MSI_VECTOR = 0x30
LAPIC = 0xFEE00000


def _msi_guest() -> bytes:
    """ES is based at the local APIC's page (set through sregs): enable the APIC, count
    vector 0x30 in its handler, EOI through the APIC."""
    a = Asm()
    a.xor_ax_ax().mov_ds_ax().mov_ss_ax().mov_sp(0x3000)
    a.mov_mem_label(MSI_VECTOR * 4, "handler").mov_mem_imm16(MSI_VECTOR * 4 + 2, 0)
    a.mov_es_mem32_imm(0xF0, 0x1FF)              # SVR: APIC software-enabled, spurious 0xff
    a.label("loop").cli()
    a.mov_ax_mem(COUNTER).out_imm_ax(0x10)
    a.sti().hlt()
    a.jmp("loop")
    a.label("handler").inc_mem16(COUNTER)
    a.mov_es_mem32_imm(0xB0, 0)                  # EOI
    a.iret()
    return a.assemble()


def test_irqfd_on_an_msi_route_and_signal_msi(machine):
    """A VMM's MSI path: an eventfd on a GSI routed as MSI, and KVM_SIGNAL_MSI."""
    from pyvfio.kvm import MsiRoute
    vcpu = machine.load(_msi_guest(), irqchip=True)
    s = vcpu.get_sregs()
    s.es.base = LAPIC                            # big real mode: ES reaches the APIC page
    vcpu.set_sregs(s)
    machine.vm.set_gsi_routing([MsiRoute(gsi=24, address=LAPIC, data=MSI_VECTOR)])
    with EventFd("msi irqfd") as efd:
        machine.vm.register_irqfd(efd, 24)
        ex = machine.run()
        assert (ex.name, ex.port, ex.value) == ("IO", 0x10, 0)
        for i in range(1, N + 1):
            efd.signal()
            ex = machine.run()
            assert (ex.name, ex.port, ex.value) == ("IO", 0x10, i)
        assert machine.vm.signal_msi(LAPIC, MSI_VECTOR) == 1
        ex = machine.run()
        assert (ex.name, ex.port, ex.value) == ("IO", 0x10, N + 1)
        machine.vm.unregister_irqfd(efd, 24)
