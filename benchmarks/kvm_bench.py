"""KVM benchmark: pyvfio against C on the host's /dev/kvm.

    python benchmarks/kvm_bench.py [--reps 5] [--n-run 50000] [--n-reg 100000] [--json FILE]

Rows:

- ``KVM_RUN to an IO exit``: a real-mode guest loops on ``out 0x10, al``;
  one row is one KVM_RUN returning with the exit decoded (pyvfio:
  ``vcpu.run()`` building an :class:`~pyvfio.kvm.Exit`; C: ``ioctl`` and a
  look at ``kvm_run``);
- ``KVM_GET_ONE_REG`` / ``KVM_SET_ONE_REG`` of a 64-bit register: on x86
  the MSR IA32_SYSENTER_CS through ONE_REG, which Linux offers since 6.18
  (older kernels: the rows are skipped); on arm64 MDSCR_EL1 (needs the arm64
  binding and C compiler).

The C program (``kvm_bench.c``) is compiled at run time with the system
``cc`` against ``<linux/kvm.h>``.  Each cell is the median of ``--reps``
repetitions; the garbage collector is off while timing.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pyvfio import errors                                          # noqa: E402
from pyvfio.core.memory import DmaBuffer                           # noqa: E402
from pyvfio.kvm import Kvm                                         # noqa: E402
from pyvfio.kvm.regs import x86                                    # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REG = x86.msr(0x174)          # IA32_SYSENTER_CS


def build_c(tmp: str) -> Optional[str]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    exe = os.path.join(tmp, "kvm_bench")
    subprocess.run([cc, "-O2", "-o", exe, os.path.join(HERE, "kvm_bench.c")], check=True)
    return exe


def run_c(exe: str, n_run: int, n_reg: int, reg: int) -> Dict[str, float]:
    out = subprocess.run([exe, str(n_run), str(n_reg), hex(reg)], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return {k: float(v) for k, v in (line.split("=") for line in out.split())}


def time_py(fn, n: int) -> float:
    gc.disable()
    try:
        t0 = time.perf_counter_ns()
        fn(n)
        return (time.perf_counter_ns() - t0) / n
    finally:
        gc.enable()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--n-run", type=int, default=50000)
    ap.add_argument("--n-reg", type=int, default=100000)
    ap.add_argument("--no-c", action="store_true")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    try:
        kvm = Kvm()
    except errors.PyvfioError as exc:
        print(f"no usable /dev/kvm: {exc}")
        return 0
    samples: Dict[str, Dict[str, List[float]]] = {}

    def add(row: str, col: str, v: float) -> None:
        samples.setdefault(row, {}).setdefault(col, []).append(v)

    with kvm, kvm.create_vm() as vm, DmaBuffer(0x10000) as mem:
        mem.write(0x1000, bytes([0xE6, 0x10, 0xEB, 0xFC]))      # out 0x10,al; jmp .-2
        vm.set_user_memory_region(0, 0, mem)
        vcpu = vm.create_vcpu(0)
        s = vcpu.get_sregs()
        for seg in (s.cs, s.ds, s.es, s.fs, s.gs, s.ss):
            seg.base = seg.selector = 0
        vcpu.set_sregs(s)
        vcpu.set_regs(rip=0x1000, rflags=2, rsp=0x3000)
        try:
            vcpu.get_reg(REG)
            have_reg = True
        except errors.PyvfioError:
            have_reg = False

        def runs(n: int) -> None:
            run = vcpu.run
            for _ in range(n):
                ex = run()
            assert ex.port == 0x10

        def gets(n: int) -> None:
            get = vcpu.get_reg
            for _ in range(n):
                get(REG)

        def sets(n: int) -> None:
            put = vcpu.set_reg
            for i in range(n):
                put(REG, i & 0xFFFF)

        runs(1000)
        with tempfile.TemporaryDirectory() as tmp:
            exe = None if args.no_c else build_c(tmp)
            for _ in range(args.reps):        # interleaved, so load changes hit both alike
                add("KVM_RUN to an IO exit", "pyvfio", time_py(runs, args.n_run))
                if have_reg:
                    add("KVM_GET_ONE_REG (64-bit)", "pyvfio", time_py(gets, args.n_reg))
                    add("KVM_SET_ONE_REG (64-bit)", "pyvfio", time_py(sets, args.n_reg))
                if exe:
                    c = run_c(exe, args.n_run, args.n_reg, REG if have_reg else 0)
                    add("KVM_RUN to an IO exit", "C", c["run_ns"])
                    if have_reg:
                        add("KVM_GET_ONE_REG (64-bit)", "C", c["get_ns"])
                        add("KVM_SET_ONE_REG (64-bit)", "C", c["set_ns"])
        vm.delete_user_memory_region(0)
    print(f"kernel {platform.release()}, Python {platform.python_version()}, "
          f"median of {args.reps}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'operation':28} {'pyvfio':>12} {'C':>12} {'ratio':>7}   per second (pyvfio / C)")
    for row, cols in samples.items():
        py = statistics.median(cols["pyvfio"])
        c = statistics.median(cols["C"]) if "C" in cols else None
        ratio = f"{py / c:6.1f}x" if c else "     -"
        cs = f"{c:9.0f} ns" if c else "           -"
        rate = f"{1e9 / py:,.0f} / {1e9 / c:,.0f}" if c else f"{1e9 / py:,.0f}"
        print(f"{row:28} {py:9.0f} ns {cs} {ratio}   {rate}")
    if not have_reg:
        print("(ONE_REG rows skipped: this kernel has no x86 ONE_REG; it came in Linux 6.18)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"kernel": platform.release(), "samples": samples}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
