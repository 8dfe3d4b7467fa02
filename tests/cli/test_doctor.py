"""`pyvfio doctor`, and the remedies of `ls`/`bind` (fake sysfs, /dev and /proc trees).

Each host state the doctor must recognise is built as files; the expected
verdicts and remedies are exact.  The lab test runs the real command in a
guest with the IOMMU on and in one without it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyvfio.mock.pci.sysfs import SysfsTree as FakeSysfs
from pyvfio import errors, pci
from pyvfio.cli import main
from pyvfio.cli import doctor
from pyvfio.core import sysfs

pytestmark = pytest.mark.host

EDU = "0000:00:10.0"
NIC = "0000:00:11.0"
LIMITS = ("Limit                     Soft Limit           Hard Limit           Units\n"
          "Max locked memory         {soft}              {soft}              bytes\n")


def _proc(root: Path, *, memlock: str = "8388608", cap_eff: str = "0000000000000000",
          vmlck_kb: int = 0, cmdline: str = "console=ttyS0") -> Path:
    proc = root / "proc"
    (proc / "self").mkdir(parents=True, exist_ok=True)
    (proc / "net").mkdir(exist_ok=True)
    (proc / "self" / "limits").write_text(LIMITS.format(soft=memlock))
    (proc / "self" / "status").write_text(f"Name:\tpython\nVmLck:\t{vmlck_kb} kB\n"
                                          f"CapEff:\t{cap_eff}\n")
    (proc / "cmdline").write_text(cmdline + "\n")
    (proc / "self" / "mounts").write_text("proc /proc proc rw 0 0\n")
    (proc / "swaps").write_text("Filename Type Size Used Priority\n")
    (proc / "net" / "route").write_text("Iface\tDestination\tGateway\n")
    (proc / "net" / "if_inet6").write_text("")
    return proc


def _module(fake: FakeSysfs, name: str, **params: str) -> None:
    d = fake.sys / "module" / name / "parameters"
    d.mkdir(parents=True, exist_ok=True)
    for k, v in params.items():
        (d / k).write_text(v + "\n")


def _hugepages(fake: FakeSysfs, kb: int, total: int, free: int) -> None:
    d = fake.sys / "kernel/mm/hugepages" / f"hugepages-{kb}kB"
    d.mkdir(parents=True, exist_ok=True)
    (d / "nr_hugepages").write_text(f"{total}\n")
    (d / "free_hugepages").write_text(f"{free}\n")


@pytest.fixture
def iommu_host(tmp_path):
    """IOMMU on (VT-d), vfio/vfio_pci/type1 loaded; group 5 viable, group 6 not."""
    fake = FakeSysfs(tmp_path)
    (fake.sys / "class/iommu/dmar0").mkdir(parents=True)
    fake.add_group(5)
    fake.add_group(6)
    fake.add_device(EDU, 0x1234, 0x11E8, class_code=0x00FF00, driver="vfio-pci", group=5)
    fake.add_device("0000:00:12.0", 0x1234, 0x11E8, class_code=0x00FF00, driver="vfio-pci",
                    group=6)
    fake.add_device(NIC, driver="e1000e", group=6)
    _module(fake, "vfio", enable_unsafe_noiommu_mode="N")
    _module(fake, "vfio_pci")
    _module(fake, "vfio_iommu_type1", dma_entry_limit="65535")
    (fake.dev / "vfio" / "vfio").write_text("")
    (fake.dev / "vfio" / "5").write_text("")
    (fake.dev / "vfio" / "6").write_text("")
    (fake.dev / "kvm").write_text("")
    _hugepages(fake, 2048, 16, 16)
    _hugepages(fake, 1048576, 0, 0)
    proc = _proc(tmp_path)
    with fake.installed(), sysfs.use_host(fake.host.with_roots(proc=str(proc))):
        yield fake


@pytest.fixture
def no_iommu_host(tmp_path):
    """No IOMMU (intel_iommu=off), vfio loaded, no-IOMMU mode off, no groups."""
    fake = FakeSysfs(tmp_path)
    fake.add_device(EDU, 0x1234, 0x11E8, class_code=0x00FF00)
    fake.add_device("0000:00:00.0", 0x8086, 0x29C0, class_code=0x060000)     # host bridge
    _module(fake, "vfio", enable_unsafe_noiommu_mode="N")
    _module(fake, "vfio_pci")
    (fake.dev / "vfio" / "vfio").write_text("")
    proc = _proc(tmp_path, memlock="unlimited", cmdline="console=ttyS0 intel_iommu=off")
    with fake.installed(), sysfs.use_host(fake.host.with_roots(proc=str(proc))):
        yield fake


def _by_name(checks):
    return {c.name: c for c in checks}


def test_doctor_iommu_host(iommu_host):
    checks = _by_name(doctor.diagnose(want_map=64 << 20))
    assert (checks["iommu"].status, checks["iommu"].detail) == ("ok", "on: Intel VT-d (dmar0)")
    assert checks["vfio"].status == "ok" and checks["vfio"].detail == "VFIO: /dev/vfio/vfio"
    assert checks["vfio_pci"].status == "ok"
    assert (checks["iommufd"].status, checks["iommufd"].remedy) == ("info", "`modprobe iommufd`")
    assert checks["kvm"].detail == "KVM: /dev/kvm"
    assert (checks["noiommu"].status, checks["noiommu"].detail) == ("ok", "no-IOMMU mode off")
    mem = checks["memlock"]
    assert mem.status == "fail"
    assert mem.detail == ("RLIMIT_MEMLOCK 8 MiB (0 bytes in use) is less than the 64 MiB to "
                          "map for DMA")
    assert mem.remedy.startswith("raise it: `ulimit -l 65536`")
    assert (checks["hugepages-2MiB"].status, checks["hugepages-2MiB"].detail) == ("ok", "16 of 16 free")
    assert checks["hugepages-1GiB"].status == "info"
    assert "`echo 1 > /sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages`" in \
        checks["hugepages-1GiB"].remedy
    assert checks["dma_entry_limit"].detail == "65535 DMA mappings per type1 container"
    assert checks["group 5"].status == "ok"
    assert checks["group 5"].detail == f"viable, /dev/vfio/5: {EDU} (vfio-pci)"
    g6 = checks["group 6"]
    assert g6.status == "fail" and f"{NIC} (e1000e)" in g6.detail
    assert f"`pyvfio bind {NIC}`" in g6.remedy


def test_doctor_memlock_fits_and_cap_ipc_lock(iommu_host, tmp_path):
    assert _by_name(doctor.diagnose(want_map=4 << 20))["memlock"].status == "ok"
    _proc(tmp_path, vmlck_kb=6 * 1024)                       # 6 of the 8 MiB already locked
    assert _by_name(doctor.diagnose(want_map=4 << 20))["memlock"].status == "fail"
    _proc(tmp_path, cap_eff=f"{1 << 14:016x}")                # CAP_IPC_LOCK
    mem = _by_name(doctor.diagnose(want_map=1 << 40))["memlock"]
    assert (mem.status, mem.detail) == ("ok", "CAP_IPC_LOCK: no locked-memory limit applies "
                                              "(1024 GiB wanted)")


def test_doctor_without_iommu(no_iommu_host):
    checks = _by_name(doctor.diagnose())
    io = checks["iommu"]
    assert io.status == "fail"
    assert io.detail == ("off: no IOMMU unit and no IOMMU groups (the command line says "
                         "intel_iommu=off)")
    assert io.remedy == pci.IOMMU_OFF_REMEDY
    assert checks["noiommu"].status == "info"
    assert "enable_unsafe_noiommu_mode" in checks["noiommu"].remedy
    assert checks["memlock"].status == "ok"
    assert not [c for c in checks if c.startswith("group ")]


def test_doctor_noiommu_mode_on_is_a_warning(no_iommu_host):
    (no_iommu_host.sys / "module/vfio/parameters/enable_unsafe_noiommu_mode").write_text("Y\n")
    c = _by_name(doctor.diagnose())["noiommu"]
    assert c.status == "warn" and c.detail.startswith("no-IOMMU mode is ON")


def test_doctor_cli_json_and_exit_status(iommu_host, capsys):
    assert main(["doctor", "--json", "--map", "4M"]) == 1          # group 6 is not viable
    got = json.loads(capsys.readouterr().out)
    assert {c["name"]: c["status"] for c in got}["memlock"] == "ok"
    assert set(got[0]) == {"name", "status", "detail", "remedy"}
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] memlock" in out and out.rstrip().endswith("2 problem(s), 0 warning(s)")
    with pytest.raises(SystemExit):
        main(["doctor", "--map", "lots"])


def test_doctor_parse_size():
    assert [doctor.parse_size(s) for s in ("4096", "64M", "2G", "1GiB", "512k")] == \
        [4096, 64 << 20, 2 << 30, 1 << 30, 512 << 10]


# -- the remedies of ls and bind -------------------------------------------------------

def test_ls_says_the_iommu_is_off(no_iommu_host, capsys):
    assert main(["ls"]) == 0
    assert capsys.readouterr().err.strip() == "note: " + pci.IOMMU_OFF_REMEDY


def test_ls_is_quiet_about_a_working_iommu(iommu_host, capsys):
    assert main(["ls"]) == 0
    assert capsys.readouterr().err == ""


def test_bind_refuses_a_host_bridge(no_iommu_host, monkeypatch, capsys):
    no_iommu_host.add_driver("vfio-pci")
    assert main(["bind", "0000:00:00.0"]) == 1
    err = capsys.readouterr().err
    assert "is a host bridge, which VFIO cannot take" in err and "`pyvfio bind" not in err
    assert no_iommu_host.writes == []                             # refused: nothing changed


def test_not_bound_remedy_without_iommu_groups(no_iommu_host):
    dev = pci.get(EDU)
    with pytest.raises(errors.NotBoundError) as ei:
        dev.check_bound()
    assert ei.value.remedy == f"{pci.IOMMU_OFF_REMEDY}; then `pyvfio bind {EDU}`"
    bridge = pci.get("0000:00:00.0")
    with pytest.raises(errors.NotBoundError) as ei:
        bridge.check_bound()
    assert "host bridge" in ei.value.remedy and "pyvfio bind" not in ei.value.remedy


def test_root_is_not_told_to_run_as_root(iommu_host, monkeypatch):
    iommu_host.unprivileged = True
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(errors.PermissionDeniedError) as ei:
        pci.get(NIC).bind("vfio-pci")
    assert "run as root" not in ei.value.remedy and "refused root" in ei.value.remedy
    assert "run as root" not in errors.PermissionDeniedError("x").remedy
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert errors.PermissionDeniedError("x").remedy.startswith("run as root")


def _netdev(fake: FakeSysfs, bdf: str, name: str) -> None:
    d = fake.device_dir(bdf) / "net" / name
    d.mkdir(parents=True)
    (fake.sys / "class/net").mkdir(parents=True, exist_ok=True)
    (d / "subsystem").symlink_to(os.path.relpath(fake.sys / "class/net", d))


def _disk(fake: FakeSysfs, bdf: str, *names: str) -> None:
    parent = fake.device_dir(bdf) / "nvme" / "nvme0"
    (fake.sys / "class/block").mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        d = parent / name if i == 0 else parent / names[0] / name
        d.mkdir(parents=True)
        (d / "subsystem").symlink_to(os.path.relpath(fake.sys / "class/block", d))


def test_bind_refuses_a_routed_netdev_without_force(iommu_host, monkeypatch, tmp_path, capsys):
    _netdev(iommu_host, NIC, "enp0s17")
    (tmp_path / "proc/net/route").write_text(
        "Iface\tDestination\tGateway\tFlags\nenp0s17\t0002000A\t00000000\t0001\n")
    assert main(["bind", NIC]) == 1
    err = capsys.readouterr().err
    assert "in use by the host through e1000e: network interface enp0s17 has IPv4 routes" in err
    assert "--force" in err
    assert iommu_host.driver_of(NIC) == "e1000e" and iommu_host.writes == []
    assert main(["bind", NIC, "--force"]) == 0
    assert iommu_host.driver_of(NIC) == "vfio-pci"


def test_bind_refuses_a_netdev_with_a_global_ipv6_address(iommu_host, monkeypatch, tmp_path):
    _netdev(iommu_host, NIC, "enp0s17")
    (tmp_path / "proc/net/if_inet6").write_text(
        "fe800000000000000000000000000001 02 40 20 80 enp0s17\n")   # link-local only: free
    dev = pci.get(NIC)
    from pyvfio.cli.pci import device_users
    assert device_users(dev) == []
    (tmp_path / "proc/net/if_inet6").write_text(
        "20010db8000000000000000000000001 02 40 00 80 enp0s17\n")
    assert device_users(dev) == ["network interface enp0s17 has address 2001:0db8:0000:0000:0000:0000:0000:0001"]


def test_bind_refuses_a_mounted_disk(iommu_host, monkeypatch, tmp_path, capsys):
    iommu_host.add_device("0000:00:13.0", 0x1B36, 0x0010, class_code=0x010802, driver="nvme",
                          group=7)
    iommu_host.add_group(7)
    _disk(iommu_host, "0000:00:13.0", "nvme0n1", "nvme0n1p1")
    from pyvfio.cli.pci import device_users
    dev = pci.get("0000:00:13.0")
    assert device_users(dev) == []
    (tmp_path / "proc/self/mounts").write_text("/dev/nvme0n1p1 /srv ext4 rw 0 0\n")
    assert device_users(dev) == ["disk nvme0n1p1 is mounted on /srv"]
    assert main(["bind", "0000:00:13.0"]) == 1
    assert "disk nvme0n1p1 is mounted on /srv" in capsys.readouterr().err
    (tmp_path / "proc/self/mounts").write_text("proc /proc proc rw 0 0\n")
    (tmp_path / "proc/swaps").write_text("Filename Type\n/dev/nvme0n1 partition\n")
    assert device_users(dev) == ["disk nvme0n1 is in use as swap"]


def test_doctor_remedies_for_loaded_modules_without_nodes(iommu_host):
    for m in ("kvm", "vhost_vdpa"):
        (iommu_host.sys / "module" / m).mkdir(parents=True, exist_ok=True)
    (iommu_host.dev / "kvm").unlink()
    checks = _by_name(doctor.diagnose())
    assert checks["kvm"].detail == "KVM: module loaded but no /dev/kvm"
    assert "no VMX/SVM" in checks["kvm"].remedy
    assert "vdpa dev add" in checks["vhost_vdpa"].remedy


def test_doctor_does_not_count_the_iommufd_selftest_mock(no_iommu_host):
    """CONFIG_IOMMUFD_TEST's mock IOMMU in /sys/class/iommu translates nothing (seen in the lab)."""
    (no_iommu_host.sys / "class/iommu/iommufd_selftest_iommu.0").mkdir(parents=True)
    io = _by_name(doctor.diagnose())["iommu"]
    assert io.status == "fail"
    assert io.detail.endswith("; iommufd_selftest_iommu.0 is iommufd's selftest mock")
