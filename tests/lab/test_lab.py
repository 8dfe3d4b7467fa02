"""Tests of pyvfio.lab: the QEMU guest runner, its kernels, modules and pytest plugin.

Most tests run on the host without QEMU (a stand-in QEMU script plays the
guest); the ``real boot`` tests at the end boot the stock kernel under QEMU
and are skipped where QEMU is not installed.
"""
from __future__ import annotations

import gzip
import io
import lzma
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Sequence

import pytest

from pyvfio.lab import debian, kernel, machine, runner
from pyvfio.lab.errors import (AptUnavailableError, BootError, BootTimeoutError,
                               CommandTimeoutError, KernelConfigError, KernelPackageError,
                               LabError, LabInterrupted, QemuNotFoundError)
from pyvfio.lab.initramfs import write_cpio
from pyvfio.lab.modules import ModuleNotFound, ModuleTree, builtin_from_modinfo, modinfo
from pyvfio.lab.pytest_plugin import LabTarget, guest_configs, parse_junit

pytestmark = pytest.mark.host

REPO = Path(__file__).resolve().parents[2]
HAVE_QEMU = shutil.which("qemu-system-x86_64") is not None


# --------------------------------------------------------------------------- helpers
def fake_module(modinfo_pairs: Sequence[str]) -> bytes:
    """A minimal ELF64 object whose only content is a ``.modinfo`` section."""
    info = b"".join(p.encode() + b"\0" for p in modinfo_pairs)
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    info_off = 64
    str_off = info_off + len(info)
    shoff = (str_off + len(shstrtab) + 7) & ~7
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x28, shoff)
    struct.pack_into("<HHH", header, 0x3A, 64, 3, 2)

    def section(name: int, offset: int, size: int) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name, 1, 0, 0, offset, size, 0, 0, 1, 0)

    body = bytes(header) + info + shstrtab
    body += b"\0" * (shoff - len(body))
    return body + bytes(64) + section(1, info_off, len(info)) + section(10, str_off,
                                                                       len(shstrtab))


def make_tree(root: Path, modules: Dict[str, List[str]], builtin: Sequence[str] = ()) -> Path:
    """A fake ``lib/modules/<release>`` with ``.ko.xz`` files: {relpath: modinfo pairs}."""
    moddir = root / "lib" / "modules" / "1.0-test"
    for rel, pairs in modules.items():
        path = moddir / "kernel" / f"{rel}.ko.xz"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(lzma.compress(fake_module(pairs)))
    (moddir / "modules.builtin").write_text("".join(f"kernel/{b}.ko\n" for b in builtin))
    return moddir


FAKE_QEMU = '''\
import os, sys, time
args = sys.argv[1:]
if "help" in args:
    print('name "edu"\\nname "nvme"\\nname "e1000e"')
    sys.exit(0)
console = next(a[5:] for a in args if a.startswith("file:"))
run = os.path.dirname(console)
with open(os.environ["FAKE_QEMU_PIDFILE"], "w") as f:
    f.write(str(os.getpid()))
with open(console, "w") as f:
    f.write("".join("console line %d\\n" % i for i in range(60)))
mode = os.environ["FAKE_QEMU_MODE"]
if mode == "die":
    print("qemu: something broke", file=sys.stderr)
    sys.exit(1)
if mode == "hang":
    time.sleep(600)
with open(os.path.join(run, "started"), "w") as f:
    f.write("1.25\\n")
sys.stdout.write("hello from the fake guest\\n")
sys.stdout.flush()
if mode == "forever":
    time.sleep(600)
with open(os.path.join(run, "junit.xml"), "w") as f:
    f.write("<testsuites/>")
with open(os.path.join(run, "rc"), "w") as f:
    f.write("3\\n")
'''


@pytest.fixture
def fake_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for qemu-system-x86_64; FAKE_QEMU_MODE picks what the "guest" does."""
    script = tmp_path / "fake-qemu"
    script.write_text(f"#!{sys.executable}\n{FAKE_QEMU}")
    script.chmod(0o755)
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setenv("TMPDIR", str(runs))
    monkeypatch.setattr("tempfile.tempdir", None)
    monkeypatch.setenv("FAKE_QEMU_PIDFILE", str(tmp_path / "qemu.pid"))
    return script


def fake_config(tmp_path: Path, qemu: Path, **kw: object) -> machine.MachineConfig:
    return machine.MachineConfig(vmlinux=tmp_path / "vmlinux", initrd=tmp_path / "initrd",
                                 qemu=str(qemu), **kw)  # type: ignore[arg-type]


def assert_gone(pid_file: Path) -> None:
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# --------------------------------------------------------------------------- QEMU command line
def test_qemu_command_with_iommu(tmp_path: Path) -> None:
    config = machine.MachineConfig(vmlinux=Path("/k/vmlinux"), initrd=Path("/k/initrd"),
                                   devices=("edu", "edu", "nvme", "e1000e", "igb"))
    models = frozenset({"edu", "nvme", "e1000e", "igb"})
    cmd = machine.qemu_command(config, tmp_path, [Path("/srv/project")], "qemu", models)
    line = " ".join(cmd)
    assert cmd[0] == "qemu"
    assert "-machine q35,kernel-irqchip=split" in line
    assert "-device intel-iommu,intremap=on,caching-mode=on" in line
    assert "-cpu Nehalem -smp 1" in line and "-accel tcg" in line
    assert "-kernel /k/vmlinux -initrd /k/initrd" in line
    append = cmd[cmd.index("-append") + 1]
    assert "intel_iommu=on" in append.split() and "console=ttyS0" in append.split()
    assert "local,path=/,mount_tag=hostroot,security_model=none,readonly=on" in line
    assert f"local,path={tmp_path},mount_tag=labrun" in line
    assert "local,path=/srv/project,mount_tag=labrw0" in line
    assert (tmp_path / "mounts").read_text() == "labrw0 /srv/project\n"
    assert "-device edu,addr=0x10" in line and "-device edu,addr=0x11" in line
    assert "nvme,serial=pyvfio-nvme2,drive=nvme2,addr=0x12" in line
    assert (tmp_path / "nvme2.img").stat().st_size == machine.NVME_IMAGE_BYTES
    assert "e1000e,netdev=net3,addr=0x13" in line
    assert "pcie-root-port,id=labport4,chassis=5," in line and ",addr=0x14 " in line
    assert "igb,netdev=net4,bus=labport4" in line


def test_qemu_command_without_iommu(tmp_path: Path) -> None:
    config = machine.MachineConfig(vmlinux=Path("v"), initrd=Path("i"), iommu=False,
                                   devices=("edu",), mem_mb=512, append=("foo=1",),
                                   qemu_args=("-s",))
    cmd = machine.qemu_command(config, tmp_path, [], "qemu", frozenset({"edu"}))
    assert "intel-iommu" not in " ".join(cmd)
    # no-IOMMU DMA uses physical addresses: edu gets a 64-bit DMA mask
    assert "edu,addr=0x10,dma_mask=0xffffffffffffffff" in cmd
    assert cmd[cmd.index("-machine") + 1] == "q35"
    assert cmd[cmd.index("-m") + 1] == "512"
    append = cmd[cmd.index("-append") + 1].split()
    assert "intel_iommu=off" in append and append[-1] == "foo=1"
    assert cmd[-1] == "-s"


def test_device_args_refuses_unknown_and_missing_models(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="unknown device 'gpu'"):
        machine.device_args(["gpu"], tmp_path, frozenset({"edu"}))
    with pytest.raises(LabError, match="no 'igb' device model") as exc:
        machine.device_args(["igb"], tmp_path, frozenset({"edu"}))
    assert "bookworm-backports" in str(exc.value)


def test_shared_dirs_drops_root_and_nested(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    dirs = runner.shared_dirs(tmp_path / "a" / "b", [tmp_path / "a", Path("/"),
                                                     tmp_path / "missing"])
    assert tmp_path / "a" in dirs
    assert tmp_path / "a" / "b" not in dirs and Path("/") not in dirs
    assert all(d.is_dir() for d in dirs)


def test_guest_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("SECRET_THING", "x")
    monkeypatch.setenv("MINE", "1")
    env = runner.guest_env("full", False, ["MINE", "OTHER=2"])
    assert env["PATH"].split(":")[0] == os.path.dirname(sys.executable)
    assert env["CI"] == "true" and "SECRET_THING" not in env
    assert env["MINE"] == "1" and env["OTHER"] == "2"
    assert env["PYVFIO_LAB_KERNEL"] == "full" and env["PYVFIO_LAB_IOMMU"] == "off"


# --------------------------------------------------------------------------- modules
def test_module_order_and_index_files(tmp_path: Path) -> None:
    moddir = make_tree(tmp_path, {
        "drivers/vfio/vfio": ["name=vfio", "depends=", "softdep=post: vfio_iommu_type1",
                              "alias=devname:vfio/vfio"],
        "drivers/vfio/vfio_iommu_type1": ["name=vfio_iommu_type1", "depends=vfio"],
        "drivers/vfio/pci/vfio-pci-core": ["name=vfio_pci_core", "depends=vfio,irqbypass"],
        "drivers/vfio/pci/vfio-pci": ["name=vfio_pci", "depends=vfio-pci-core,vfio",
                                      "alias=vfio_pci:v*d*"],
        "virt/lib/irqbypass": ["name=irqbypass", "depends="],
        "drivers/x/uses_crc": ["name=uses_crc", "depends=", "softdep=pre: crc_thing"],
        "lib/crc_thing": ["name=crc_thing", "depends="],
    }, builtin=["drivers/virtio/virtio_pci"])
    tree = ModuleTree(moddir)
    order, skipped = tree.resolve(["vfio-pci", "?no_such_module", "virtio_pci", "uses_crc"])
    assert skipped == ["no_such_module"]
    assert order.index("vfio") < order.index("vfio_pci_core") < order.index("vfio_pci")
    assert order.index("irqbypass") < order.index("vfio_pci_core")
    assert order.index("vfio") < order.index("vfio_iommu_type1")
    assert order.index("crc_thing") < order.index("uses_crc")
    assert "virtio_pci" not in order  # built in

    dest = tmp_path / "staged"
    tree.stage(order, dest)
    assert (dest / "kernel/drivers/vfio/pci/vfio-pci.ko").read_bytes()[:4] == b"\x7fELF"
    deps = dict(line.split(":", 1) for line in (dest / "modules.dep").read_text().splitlines())
    # busybox and kmod load the dependency list from its end: reverse topological order
    assert deps["kernel/drivers/vfio/pci/vfio-pci.ko"].split() == [
        "kernel/drivers/vfio/pci/vfio-pci-core.ko", "kernel/virt/lib/irqbypass.ko",
        "kernel/drivers/vfio/vfio.ko"]
    assert deps["kernel/drivers/x/uses_crc.ko"].split() == ["kernel/lib/crc_thing.ko"]
    assert deps["kernel/drivers/vfio/vfio.ko"].strip() == ""
    assert "alias devname:vfio/vfio vfio\n" in (dest / "modules.alias").read_text()
    post = (dest / "modules.softdep-post").read_text().splitlines()
    assert "vfio: vfio_iommu_type1" in post and "vfio_pci: vfio_iommu_type1" in post
    assert not any(line.startswith("vfio_iommu_type1:") for line in post)
    assert (dest / "modules.builtin").read_text() == "kernel/drivers/virtio/virtio_pci.ko\n"


def test_missing_required_module_names_the_chain(tmp_path: Path) -> None:
    moddir = make_tree(tmp_path, {"a": ["name=a", "depends=b"]})
    with pytest.raises(ModuleNotFound, match=r"module b not found .*needed by a"):
        ModuleTree(moddir).resolve(["a"])


def test_out_of_tree_modules_win_and_go_to_extra(tmp_path: Path) -> None:
    moddir = make_tree(tmp_path, {"drivers/vhost/vringh": ["name=vringh", "depends="]})
    extra = tmp_path / "oot"
    extra.mkdir()
    (extra / "vringh.ko").write_bytes(fake_module(["name=vringh", "depends="]))
    (extra / "vdpa_sim.ko").write_bytes(fake_module(["name=vdpa_sim", "depends=vringh"]))
    tree = ModuleTree(moddir, [extra])
    order, _ = tree.resolve(["vdpa_sim"])
    assert order == ["vringh", "vdpa_sim"]
    tree.stage(order, tmp_path / "staged")
    assert "extra/vdpa_sim.ko: extra/vringh.ko" in (tmp_path / "staged/modules.dep").read_text()


def test_modinfo_and_builtin_from_modinfo(tmp_path: Path) -> None:
    assert modinfo(fake_module(["name=x", "alias=y"])) == [("name", "x"), ("alias", "y")]
    blob = (b"vfio.file=drivers/vfio/vfio\0vfio.license=GPL\0"
            b"vfio_pci.file=drivers/vfio/pci/vfio-pci\0")
    (tmp_path / "m").write_bytes(blob)
    assert builtin_from_modinfo(tmp_path / "m") == ["kernel/drivers/vfio/vfio.ko",
                                                   "kernel/drivers/vfio/pci/vfio-pci.ko"]


# --------------------------------------------------------------------------- initramfs, kernel
def read_cpio(data: bytes) -> Dict[str, bytes]:
    out, pos = {}, 0
    while True:
        fields = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        size, namesize = fields[6], fields[11]
        name_end = pos + 110 + namesize
        name = data[pos + 110:name_end - 1].decode()
        start = (name_end + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out[name] = data[start:start + size]
        pos = (start + size + 3) & ~3


def test_write_cpio_roundtrip(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "tool").write_bytes(b"abcde")
    (tmp_path / "bin" / "sh").symlink_to("tool")
    buf = io.BytesIO()
    write_cpio(buf, tmp_path)
    assert read_cpio(buf.getvalue()) == {"bin": b"", "bin/sh": b"tool", "bin/tool": b"abcde"}


def test_extract_vmlinux_gzip_payload(tmp_path: Path) -> None:
    elf = b"\x7fELF" + bytes(1000)
    payload = gzip.compress(elf) + struct.pack("<I", len(elf))
    image = bytearray(2 * 512)
    image[0x1F1] = 1
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<II", image, 0x248, 0, len(payload))
    (tmp_path / "bzImage").write_bytes(bytes(image) + payload)
    kernel.extract_vmlinux(tmp_path / "bzImage", tmp_path / "vmlinux")
    assert (tmp_path / "vmlinux").read_bytes() == elf
    (tmp_path / "bad").write_bytes(bytes(2048))
    with pytest.raises(KernelPackageError, match="not a bzImage"):
        kernel.extract_vmlinux(tmp_path / "bad", tmp_path / "x")


def test_config_fragment_merge_and_check(tmp_path: Path) -> None:
    wanted = kernel.read_fragment()
    for option in ("CONFIG_IOMMUFD", "CONFIG_VFIO_DEVICE_CDEV", "CONFIG_VFIO_NOIOMMU",
                   "CONFIG_IOMMUFD_TEST", "CONFIG_VDPA_SIM_BLOCK", "CONFIG_VDPA_USER",
                   "CONFIG_SAMPLE_VFIO_MDEV_MTTY", "CONFIG_VHOST_SCSI", "CONFIG_UIO_PCI_GENERIC",
                   "CONFIG_KVM_INTEL", "CONFIG_TUN", "CONFIG_BLK_DEV_NVME", "CONFIG_IGB"):
        assert wanted[option] == "y", option
    assert wanted["CONFIG_MODULES"] == "y"         # for out-of-tree modules (uio_msi)
    assert wanted["CONFIG_VIRTIO_VDPA"] == "n"     # new vDPA devices must bind to vhost_vdpa
    config = tmp_path / ".config"
    config.write_text("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\n")
    kernel._merge_config(config, {"CONFIG_B": "y", "CONFIG_C": "n"})
    assert kernel.read_fragment(config) == {"CONFIG_A": "y", "CONFIG_B": "y", "CONFIG_C": "n"}
    assert kernel.check_config(config, {"CONFIG_A": "y", "CONFIG_D": "y"}) == [
        "CONFIG_D=y (got n)"]
    assert issubclass(KernelConfigError, LabError)


# --------------------------------------------------------------------------- error paths
def test_qemu_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                      capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("PYVFIO_LAB_QEMU", "no-such-qemu-system")
    with pytest.raises(QemuNotFoundError) as exc:
        runner.run("true")
    assert exc.value.remedy == "apt-get install qemu-system-x86"
    from pyvfio.cli import main
    assert main(["lab", "run", "--", "true"]) == 125
    err = capsys.readouterr().err
    assert "no-such-qemu-system not found" in err
    assert "remedy: apt-get install qemu-system-x86" in err


def test_apt_unavailable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYVFIO_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AptUnavailableError, match="apt-get not found") as exc:
        debian.download("linux-image-0.0.0-amd64", "0")
    assert "Debian" in (exc.value.remedy or "")


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get")
def test_kernel_package_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYVFIO_LAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(KernelPackageError, match="apt-get download pyvfio-no-such") as exc:
        debian.download("pyvfio-no-such-kernel-package", "1.0")
    assert "apt-get update" in (exc.value.remedy or "")
    assert not list((tmp_path / "cache" / "debs").glob("*.deb"))


def test_stock_kernel_falls_back_with_warning(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("PYVFIO_LAB_CACHE", str(tmp_path))
    asked = []

    def prepare(package: str, version: str) -> str:
        asked.append((package, version))
        if version == kernel.STOCK_VERSION:
            raise KernelPackageError("gone")
        return "prepared"

    monkeypatch.setattr(kernel, "_prepare_stock", prepare)
    monkeypatch.setattr(debian, "candidates", lambda regex: [
        "linux-image-6.12.9+deb12-amd64", "linux-image-6.12.120+deb12-amd64"])
    monkeypatch.setattr(debian, "candidate_version", lambda pkg: "6.12.120-1")
    assert kernel.stock_kernel() == "prepared"
    assert asked[-1] == ("linux-image-6.12.120+deb12-amd64", "6.12.120-1")
    assert "no longer in the archive" in capsys.readouterr().err


def test_version_key_orders_numerically() -> None:
    names = ["linux-image-6.12.10+deb12-amd64", "linux-image-6.12.9+deb12-amd64"]
    assert sorted(names, key=debian.version_key)[0] == "linux-image-6.12.9+deb12-amd64"


def test_run_guest_streams_output_and_returns_status(fake_qemu: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_MODE", "ok")
    chunks: List[bytes] = []
    result = machine.run_guest(fake_config(tmp_path, fake_qemu), "echo hi", env={"A": "b c"},
                               cwd=tmp_path, output=chunks.append, fetch=("junit.xml",))
    assert result.returncode == 3
    assert b"".join(chunks) == b"hello from the fake guest\n"
    assert result.guest_uptime == 1.25 and result.boot_seconds is not None
    assert result.files == {"junit.xml": b"<testsuites/>"}
    assert not os.listdir(tmp_path / "runs")
    assert_gone(tmp_path / "qemu.pid")


def test_run_dirs_of_killed_processes_are_swept(fake_qemu: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_MODE", "ok")
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = tmp_path / "runs" / f"pyvfio-lab-{gone.pid}-abcd"
    live = tmp_path / "runs" / f"pyvfio-lab-{os.getpid()}-efgh"
    stale.mkdir()
    live.mkdir()
    machine.run_guest(fake_config(tmp_path, fake_qemu), "true", env={}, cwd=tmp_path,
                      output=lambda data: None)
    assert not stale.exists() and live.exists()


def test_boot_timeout_shows_console_tail(fake_qemu: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_MODE", "hang")
    with pytest.raises(BootTimeoutError) as exc:
        machine.run_guest(fake_config(tmp_path, fake_qemu), "true", env={}, cwd=tmp_path,
                          boot_timeout=1.5, output=lambda data: None)
    text = str(exc.value)
    assert "did not start the command within 2 s" in text
    assert "console line 59" in text and "console line 20" in text
    assert "console line 19\n" not in text  # only the last 40 lines
    assert "--timeout" in (exc.value.remedy or "")
    assert not os.listdir(tmp_path / "runs")
    assert_gone(tmp_path / "qemu.pid")


def test_command_timeout(fake_qemu: Path, tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_MODE", "forever")
    with pytest.raises(CommandTimeoutError, match="did not finish within 2 s"):
        machine.run_guest(fake_config(tmp_path, fake_qemu), "true", env={}, cwd=tmp_path,
                          timeout=2, output=lambda data: None)
    assert not os.listdir(tmp_path / "runs")
    assert_gone(tmp_path / "qemu.pid")


def test_guest_dies_without_status(fake_qemu: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_MODE", "die")
    with pytest.raises(BootError) as exc:
        machine.run_guest(fake_config(tmp_path, fake_qemu), "true", env={}, cwd=tmp_path,
                          output=lambda data: None)
    assert "QEMU exit status 1" in str(exc.value)
    assert "qemu: something broke" in str(exc.value)
    assert "console line 59" in exc.value.console_tail
    assert not os.listdir(tmp_path / "runs")


def test_keyboard_interrupt_tears_down(fake_qemu: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_MODE", "forever")

    def output(data: bytes) -> None:
        raise KeyboardInterrupt

    with pytest.raises(LabInterrupted) as exc:
        machine.run_guest(fake_config(tmp_path, fake_qemu), "true", env={}, cwd=tmp_path,
                          output=output)
    assert exc.value.signum == signal.SIGINT
    assert not os.listdir(tmp_path / "runs")
    assert_gone(tmp_path / "qemu.pid")


def test_sigterm_tears_down(fake_qemu: Path, tmp_path: Path) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from pyvfio.lab import machine
        from pyvfio.lab.errors import LabInterrupted
        config = machine.MachineConfig(vmlinux=Path("v"), initrd=Path("i"), qemu={str(fake_qemu)!r})
        try:
            machine.run_guest(config, "true", env={{}}, cwd=Path.cwd())
        except LabInterrupted as exc:
            print("interrupted", exc.signum)
            sys.exit(128 + exc.signum)
    """))
    env = dict(os.environ, FAKE_QEMU_MODE="forever", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, str(driver)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "hello from the fake guest\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert proc.stdout.read() == f"interrupted {int(signal.SIGTERM)}\n"
    assert not os.listdir(tmp_path / "runs")
    assert_gone(tmp_path / "qemu.pid")


# --------------------------------------------------------------------------- pytest plugin
def test_guest_configs_and_target_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [c.name for c in guest_configs("all")] == [
        "stock iommu=on", "full iommu=on", "full iommu=off"]
    assert guest_configs("off") == []
    monkeypatch.delenv("PYVFIO_LAB", raising=False)
    assert LabTarget.current().label == "mock"
    monkeypatch.setenv("PYVFIO_LAB", "1")
    monkeypatch.setenv("PYVFIO_LAB_KERNEL", "stock")
    monkeypatch.setenv("PYVFIO_LAB_KERNEL_RELEASE", "6.12.95+deb12-amd64")
    monkeypatch.setenv("PYVFIO_LAB_IOMMU", "on")
    target = LabTarget.current()
    assert (target.kind, target.flavour, target.iommu) == ("real", "stock", True)
    assert target.label == "real 6.12.95+deb12-amd64 stock iommu=on"


def test_parse_junit() -> None:
    xml = b"""<testsuites><testsuite>
      <testcase classname="tests.test_x" name="test_a"><properties>
        <property name="lab_nodeid" value="tests/test_x.py::test_a"/></properties></testcase>
      <testcase classname="tests.test_x" name="test_b"><failure message="boom"/></testcase>
      <testcase classname="tests.test_x" name="test_c"><skipped message="no"/></testcase>
      <testcase classname="tests.test_x" name="test_d"><error message="setup"/></testcase>
    </testsuite></testsuites>"""
    assert parse_junit(xml) == [("tests/test_x.py::test_a", "passed", ""),
                                ("tests.test_x::test_b", "failed", "boom"),
                                ("tests.test_x::test_c", "skipped", "no"),
                                ("tests.test_x::test_d", "failed", "setup")]


INNER_TESTS = '''\
import pytest

@pytest.mark.device
def test_device(lab_target):
    assert lab_target.kind == "mock" and lab_target.kernel is None

@pytest.mark.host
def test_host():
    pass

def test_plain():
    pass
'''


def run_inner_pytest(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["pyvfio.lab.pytest_plugin"]\n')
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PYVFIO_LAB")}
    full_env.update(PYTHONPATH=str(REPO), **env)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v",
                           *args], cwd=tmp_path, env=full_env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=120)


def test_plugin_without_qemu_says_so(tmp_path: Path) -> None:
    proc = run_inner_pytest(tmp_path, PYVFIO_LAB_QEMU="no-such-qemu-system")
    assert proc.returncode == 0, proc.stdout
    out = proc.stdout
    assert "QEMU not found: guest tests skipped, device tests ran against the mock only" in out
    assert "test_inner.py::test_device PASSED [mock]" in out
    assert "test_inner.py::test_host PASSED" in out
    assert "device test results: 0 real, 1 mock" in out
    assert "\n3 passed, 0 failed, 0 skipped\n" in out


def test_plugin_lab_off(tmp_path: Path) -> None:
    proc = run_inner_pytest(tmp_path, "--lab=off")
    assert proc.returncode == 0, proc.stdout
    assert "lab off: device tests ran against the mock only" in proc.stdout
    assert "\n3 passed, 0 failed, 0 skipped\n" in proc.stdout


def test_plugin_in_guest_does_not_recurse_and_skips_host_tests(tmp_path: Path) -> None:
    proc = run_inner_pytest(tmp_path, PYVFIO_LAB="1",
                            PYVFIO_LAB_KERNEL="full", PYVFIO_LAB_IOMMU="off",
                            PYVFIO_LAB_KERNEL_RELEASE="6.12.95-pyvfio-lab")
    assert "test_host" not in proc.stdout.replace("deselected", "")
    assert "pyvfio lab guest: real 6.12.95-pyvfio-lab full iommu=off" in proc.stdout
    assert "test_inner.py::test_device FAILED [real 6.12.95-pyvfio-lab full iommu=off]" \
        in proc.stdout
    assert "pyvfio lab guest: stock" not in proc.stdout


# --------------------------------------------------------------------------- real boots
@pytest.mark.skipif(not HAVE_QEMU, reason="QEMU not installed")
def test_real_boot_runs_command(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), TMPDIR=str(tmp_path))
    cmd = [sys.executable, "-m", "pyvfio", "lab", "run", "--timing", "--",
           "echo out:$PYVFIO_LAB:$PYVFIO_LAB_KERNEL:$PYVFIO_LAB_IOMMU:$(pwd);"
           "uname -r; echo edu:$(cat /sys/bus/pci/devices/0000:00:1[01].0/device);"
           "modprobe vfio-pci && echo type1:$(lsmod | grep -c '^vfio_iommu_type1 ');"
           "echo written > f.txt; exit 42"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=900)
    assert proc.returncode == 42, proc.stderr
    lines = proc.stdout.splitlines()
    assert f"out:1:stock:on:{tmp_path}" in lines
    assert kernel.STOCK_ABI + "-amd64" in lines
    assert "edu:0x11e8 0x11e8" in lines  # the two default edu devices, at fixed slots
    assert "type1:1" in lines  # vfio's post soft dependency got loaded too
    assert (tmp_path / "f.txt").read_text() == "written\n"
    assert "boot to command" in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


@pytest.mark.skipif(not HAVE_QEMU, reason="QEMU not installed")
def test_real_boot_killed_leaves_nothing_behind(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), TMPDIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "pyvfio", "lab", "run", "--device", "none",
                             "--", "echo READY; sleep 600"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "READY\n"
    run_dirs = [p for p in tmp_path.iterdir() if p.name.startswith("pyvfio-lab-")]
    assert len(run_dirs) == 1
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "interrupted by SIGTERM" in err
    assert not run_dirs[0].exists()
    assert processes_mentioning(str(run_dirs[0])) == []


def processes_mentioning(text: str) -> List[int]:
    """PIDs of the processes whose command line contains ``text``."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


# --------------------------------------------------------------------------- argv and devices
def test_command_line_argv_is_quoted_and_a_single_word_is_a_shell_line() -> None:
    assert runner.command_line(["python3", "-c", 'print("x")']) == "python3 -c 'print(\"x\")'"
    assert runner.command_line(["echo", "a b", "$HOME"]) == "echo 'a b' '$HOME'"
    assert runner.command_line(["lspci; dmesg | tail"]) == "lspci; dmesg | tail"
    assert runner.command_line("uname -r && true") == "uname -r && true"


def test_qemu_arg_takes_values_starting_with_a_dash() -> None:
    from pyvfio.cli import build_parser
    from pyvfio.cli.lab import normalize_argv
    argv = ["lab", "run", "--qemu-arg", "-device", "--qemu-arg", "virtio-rng-pci",
            "--qemu-arg=-s", "--", "echo", "--qemu-arg", "-x"]
    args = build_parser().parse_args(normalize_argv(argv))
    assert args.qemu_arg == ["-device", "virtio-rng-pci", "-s"]
    assert args.command == ["--", "echo", "--qemu-arg", "-x"]     # the command is untouched


def test_parse_device_kinds_and_properties() -> None:
    assert machine.parse_device("edu") == ("edu", {})
    assert machine.parse_device("nvme,serial=x,msix_qsize=3") == (
        "nvme", {"serial": "x", "msix_qsize": "3"})
    with pytest.raises(LabError, match=r"unknown device 'gpu' in --device 'gpu,x=1' "
                                       r"\(known: edu, nvme, e1000e, igb\)") as exc:
        machine.parse_device("gpu,x=1")
    assert "--device nvme,serial=x" in exc.value.remedy
    with pytest.raises(LabError, match="property 'serial' of nvme is not NAME=VALUE"):
        machine.parse_device("nvme,serial")
    with pytest.raises(LabError, match="property 'addr' of edu is set by the lab"):
        machine.parse_device("edu,addr=0x5")


def test_device_properties_reach_qemu_and_unknown_ones_are_refused(tmp_path: Path) -> None:
    models = frozenset({"edu", "nvme", "e1000e", "igb"})
    known = {"nvme": frozenset({"serial", "msix_qsize", "mdts", "logical_block_size"}),
             "edu": frozenset({"dma_mask"}), "e1000e": frozenset({"mac"}),
             "igb": frozenset({"mac"})}
    args = machine.device_args(
        ["nvme,serial=x,msix_qsize=3,mdts=5", "edu,dma_mask=0xffffffff", "e1000e,mac=52:54:00:12:34:56",
         "igb,mac=52:54:00:12:34:57"], tmp_path, models, True, known.__getitem__)
    line = " ".join(args)
    assert "-device nvme,serial=x,msix_qsize=3,mdts=5,drive=nvme0,addr=0x10" in line
    assert "-device edu,addr=0x11,dma_mask=0xffffffff" in line
    assert "-device e1000e,mac=52:54:00:12:34:56,netdev=net2,addr=0x12" in line
    assert "-device igb,mac=52:54:00:12:34:57,netdev=net3,bus=labport3" in line
    with pytest.raises(LabError, match="the nvme device has no properties bogus, colour") as exc:
        machine.device_args(["nvme,colour=red,bogus=1"], tmp_path, models, True,
                            known.__getitem__)
    assert "-device nvme,help" in exc.value.remedy


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU not installed")
def test_qemu_device_properties_of_the_installed_qemu() -> None:
    props = machine.qemu_device_properties(machine.find_qemu(), "nvme")
    assert {"serial", "msix_qsize", "mdts", "logical_block_size", "addr"} <= props
    assert "dma_mask" in machine.qemu_device_properties(machine.find_qemu(), "edu")


def test_cli_refuses_an_unknown_device_kind(capsys: pytest.CaptureFixture) -> None:
    from pyvfio.cli import main
    assert main(["lab", "run", "--device", "gpu", "--", "true"]) == 2
    err = capsys.readouterr().err
    assert "unknown device 'gpu'" in err and "known: edu, nvme, e1000e, igb" in err
