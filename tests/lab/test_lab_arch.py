"""The lab's other architectures, host side: cross-building the binding, the
private apt for foreign packages, and the QEMU machines of aarch64 and ppc64le.
(The guests themselves run in `./run test` / `--lab=arches`.)"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyvfio.lab import cross
from pyvfio.lab.machine import MachineConfig, kernel_cmdline, qemu_command
from pyvfio.lab.pytest_plugin import GuestConfig, LabTarget, guest_configs

pytestmark = pytest.mark.host
BUILD = Path(cross.BUILD_SCRIPT)


def test_modes_and_labels() -> None:
    assert [c.name for c in guest_configs("arches")] == ["ppc64le stock iommu=on",
                                                         "aarch64 stock iommu=on"]
    assert guest_configs("ppc64le-64k") == [GuestConfig("stock", True, "ppc64le", 64)]
    assert guest_configs("ppc64le-64k")[0].name == "ppc64le-64k stock iommu=on"
    ppc = LabTarget("real", "6.12.95+deb12-powerpc64le", "stock", True, "ppc64le")
    assert ppc.label == "real 6.12.95+deb12-powerpc64le ppc64le stock iommu=on"
    arm = LabTarget("real", "6.12.95+deb12-arm64", "stock", True, "aarch64")
    assert arm.arch == "aarch64" and arm.label.startswith("real 6.12.95+deb12-arm64 aarch64 ")
    assert LabTarget("real", "6.12.95+deb12-amd64", "stock", True, "x86_64").label == \
        "real 6.12.95+deb12-amd64 stock iommu=on"


def _cmd(tmp_path: Path, arch: str, iommu: bool = True, devices=("edu", "edu")) -> list:
    cfg = MachineConfig(vmlinux=Path("/k"), initrd=Path("/i"), arch=arch, iommu=iommu,
                        devices=devices, root=Path("/land"))
    return qemu_command(cfg, tmp_path, [], "qemu", frozenset({"edu", "nvme", "e1000e"}))


def test_aarch64_machine(tmp_path: Path) -> None:
    cmd = _cmd(tmp_path, "aarch64")
    assert cmd[cmd.index("-machine") + 1] == "virt,virtualization=on,gic-version=3,iommu=smmuv3"
    assert cmd[cmd.index("-cpu") + 1] == "max,pauth-impdef=on"
    assert "virtconsole,chardev=cmdout" in cmd
    assert "local,path=/land,mount_tag=hostroot,security_model=none,readonly=on," \
           "multidevs=remap" in cmd
    assert "edu,addr=0x10" in cmd and "edu,addr=0x11" in cmd     # 28-bit DMA behind the SMMU
    no_smmu = _cmd(tmp_path, "aarch64", iommu=False)
    assert no_smmu[no_smmu.index("-machine") + 1] == "virt,virtualization=on,gic-version=3"
    assert kernel_cmdline(True, (), "aarch64").split()[0] == "console=ttyAMA0"
    assert "labout=hvc0" in kernel_cmdline(True, (), "aarch64").split()


def test_ppc64le_machine_one_phb_per_device(tmp_path: Path) -> None:
    cmd = _cmd(tmp_path, "ppc64le", devices=("edu", "edu", "nvme"))
    assert cmd[cmd.index("-machine") + 1].startswith("pseries,") and "x-vof=on" in \
        cmd[cmd.index("-machine") + 1]
    devs = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-device"]
    assert devs[0] == "spapr-vty,chardev=cmdout"
    assert devs[1:] == [
        "spapr-pci-host-bridge,index=1,id=labphb0",
        "edu,bus=labphb0.0,addr=0x0,dma_mask=0xffffffffffffffff",
        "spapr-pci-host-bridge,index=2,id=labphb1",
        "edu,bus=labphb1.0,addr=0x0,dma_mask=0xffffffffffffffff",
        "spapr-pci-host-bridge,index=3,id=labphb2",
        "nvme,serial=pyvfio-nvme2,drive=nvme2,bus=labphb2.0,addr=0x0"]
    assert "labout=hvc1" in kernel_cmdline(True, (), "ppc64le").split()
    from pyvfio.lab.errors import LabError
    with pytest.raises(LabError, match="igb needs a PCIe root port"):
        _cmd(tmp_path, "ppc64le", devices=("igb",))


def test_foreign_apt_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYVFIO_LAB_CACHE", str(tmp_path))
    opts = cross.ForeignApt("arm64").options()
    pairs = dict(o.split("=", 1) for o in opts[1::2])
    assert pairs["APT::Architecture"] == pairs["APT::Architectures"] == "arm64"
    assert pairs["Dir::State::status"] == str(tmp_path / "apt/arm64-bookworm/status")
    assert all(v.startswith(str(tmp_path)) for k, v in pairs.items() if k.startswith("Dir::"))


def test_arch_names() -> None:
    assert cross.arch("arm64") is cross.arch("aarch64")
    assert cross.arch("ppc64el").triplet == "powerpc64le-linux-gnu"
    assert cross.arch("s390x").big_endian
    with pytest.raises(cross.CrossError, match="unknown architecture"):
        cross.arch("vax")


def test_uapi_include_holds_only_that_architectures_headers(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PYVFIO_LAB_CACHE", str(tmp_path))
    inc = cross.uapi_include(cross.arch("aarch64"))
    assert os.path.realpath(inc / "asm") == "/usr/lib/linux/uapi/arm64/asm"
    assert (inc / "linux" / "vfio.h").exists() and not (inc / "stdio.h").exists()


def test_arm64_cdef_defines_structs_from_other_headers(tmp_path, monkeypatch) -> None:
    """arm64's kvm_regs embeds asm/ptrace.h's user_pt_regs and user_fpsimd_state: the
    generator defines them (the 128-bit vregs stay out, the layout stays the compiler's)."""
    if not os.path.exists("/usr/bin/aarch64-linux-gnu-gcc"):
        pytest.fail("aarch64-linux-gnu-gcc missing: ./run setup installs gcc-aarch64-linux-gnu")
    monkeypatch.setenv("PYVFIO_LAB_CACHE", str(tmp_path))
    env = dict(os.environ, PYVFIO_UAPI_CC="aarch64-linux-gnu-gcc",
               PYVFIO_UAPI_INCLUDE=str(cross.uapi_include(cross.arch("aarch64"))))
    cdef = subprocess.run([sys.executable, str(BUILD), "--cdef"], env=env, check=True,
                          capture_output=True, text=True).stdout
    assert "struct user_pt_regs { __u64 regs[...]; __u64 sp; __u64 pc; __u64 pstate; ...; };" \
        in cdef
    assert "struct user_fpsimd_state { __u32 fpsr; __u32 fpcr;" in cdef
    assert "vregs" not in cdef
    assert "struct kvm_regs { struct user_pt_regs regs;" in cdef


def test_cross_build_needs_suffix_and_python_headers(tmp_path) -> None:
    env = dict(os.environ, PYVFIO_UAPI_EXT_SUFFIX=".cpython-311-aarch64-linux-gnu.so")
    env.pop("PYVFIO_UAPI_PYTHON_INCLUDE", None)
    proc = subprocess.run([sys.executable, str(BUILD), "--outdir", str(tmp_path)], env=env,
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "PYVFIO_UAPI_PYTHON_INCLUDE" in proc.stderr
    assert list(tmp_path.iterdir()) == []
