"""Boot one QEMU guest, run one command in it, tear everything down.

The guest is an x86-64 ``q35`` machine, under TCG by default, with an
emulated Intel IOMMU (interrupt remapping and caching mode on) unless asked
otherwise.  Other architectures (:data:`ARCH_MACHINES`):

* ``aarch64``: ``virt`` with EL2 (``virtualization=on``, so the guest kernel
  offers KVM: nested under TCG), GICv3, ``-cpu max``, and an SMMUv3 in front
  of the PCIe devices unless the IOMMU is off; the command's output is a
  virtio console (``hvc0``);
* ``ppc64le``: ``pseries`` with QEMU's built-in firmware (VOF); each device
  under test sits alone on a PCI host bridge of its own, since one PHB is one
  IOMMU group (one TCE table); the output is a second ``spapr-vty`` (``hvc1``).

There the guest's root is the architecture's userland (Debian's packages
unpacked by :mod:`pyvfio.lab.cross`) instead of the host's ``/``.  Each gets:

* the host's ``/`` read-only over virtio-9p (``hostroot``), under a tmpfs
  overlay, so the host's Python and packages run unchanged;
* the run directory (``labrun``) read-write at ``/run/lab``: the command,
  its environment, and back from the guest its exit status and ``dmesg``;
* the read-write host directories at their own paths.

Serial port 0 (the kernel console) goes to ``console.log`` in the run
directory; serial port 1 carries the command's output to the caller.
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence

from pyvfio.lab._host import info, interruptible, signals_blocked
from pyvfio.lab.errors import BootError, BootTimeoutError, CommandTimeoutError, LabError, QemuNotFoundError

__all__ = ["DEVICE_KINDS", "LAB_PROPERTIES", "ARCH_MACHINES", "ArchMachine", "MachineConfig", "RunResult", "find_qemu",
           "qemu_device_models", "qemu_device_properties", "parse_device", "lab_device_index", "device_args", "kernel_cmdline", "qemu_command", "run_guest"]

#: Emulated PCI devices the lab knows (``igb`` only with a QEMU that has it).
DEVICE_KINDS = ("edu", "nvme", "e1000e", "igb")
#: First PCI slot given to the devices under test: they appear at 0000:00:10.0, 00:11.0, ...
FIRST_SLOT = 0x10
#: Device properties the lab sets itself (slots, buses, back ends): not for ``--device``.
LAB_PROPERTIES = ("addr", "bus", "id", "netdev", "drive", "chassis")
NVME_IMAGE_BYTES = 64 << 20
_CONSOLE_TAIL_LINES = 40
_RUN_PREFIX = "pyvfio-lab-"


@dataclass(frozen=True)
class MachineConfig:
    """What to boot and with which emulated hardware."""
    vmlinux: Path
    initrd: Path
    iommu: bool = True
    devices: Sequence[str] = ("edu", "edu")
    mem_mb: int = 2048
    cpus: int = 1
    accel: str = "tcg"
    #: Extra kernel command-line words.
    append: Sequence[str] = ()
    #: Extra QEMU arguments, appended as given.
    qemu_args: Sequence[str] = ()
    qemu: Optional[str] = None
    #: The guest's architecture (``uname -m``).
    arch: str = "x86_64"
    #: Host directory shared read-only as the guest's root.
    root: Path = Path("/")


@dataclass(frozen=True)
class ArchMachine:
    """How QEMU emulates one architecture for the lab."""
    qemu: str
    console: str
    #: The guest device carrying the command's output.
    output: str


#: The machines of the architectures the lab boots.
ARCH_MACHINES = {
    "x86_64": ArchMachine("qemu-system-x86_64", "ttyS0", "ttyS1"),
    "aarch64": ArchMachine("qemu-system-aarch64", "ttyAMA0", "hvc0"),
    "ppc64le": ArchMachine("qemu-system-ppc64", "hvc0", "hvc1"),
}
#: pseries under TCG: QEMU's speculation-mitigation capabilities it cannot emulate, off.
_PSERIES = "pseries,cap-cfpc=broken,cap-sbbc=broken,cap-ibs=broken,cap-ccf-assist=off,x-vof=on"


@dataclass
class RunResult:
    """Outcome of a command run in the guest."""
    returncode: int
    #: Host wall time from QEMU's start to the command's start.
    boot_seconds: Optional[float]
    #: Guest uptime when the command started.
    guest_uptime: Optional[float]
    #: Host wall time of the whole run, QEMU start to exit.
    wall_seconds: float
    #: The guest kernel log, taken after the command.
    dmesg: str = ""
    #: Files the caller asked to fetch from the run directory (``/run/lab`` in the guest).
    files: Dict[str, bytes] = field(default_factory=dict)
    #: The run directory, when kept.
    run_dir: Optional[Path] = None


def find_qemu(arch: str = "x86_64") -> str:
    """Path of ``qemu-system-x86_64`` (or ``$PYVFIO_LAB_QEMU``), or of the QEMU of
    ``arch``; else :class:`QemuNotFoundError`."""
    if arch not in ARCH_MACHINES:
        raise LabError(f"the lab has no {arch} machine",
                       remedy=f"use one of {', '.join(ARCH_MACHINES)}")
    name = (os.environ.get("PYVFIO_LAB_QEMU") if arch == "x86_64" else None) \
        or ARCH_MACHINES[arch].qemu
    path = shutil.which(name)
    if path is None:
        pkg = {"aarch64": "qemu-system-arm", "ppc64le": "qemu-system-ppc"}.get(arch)
        raise QemuNotFoundError(f"{name} not found: the lab needs QEMU to boot its guests",
                                remedy=f"apt-get install -t bookworm-backports {pkg}"
                                if pkg else None)
    return path


@functools.lru_cache(maxsize=None)
def qemu_device_models(qemu: str) -> FrozenSet[str]:
    """Names of the device models ``qemu -device help`` lists."""
    out = subprocess.run([qemu, "-nodefaults", "-machine", "none", "-device", "help"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True).stdout
    return frozenset(re.findall(r'^name "([^"]+)"', out, re.M))


@functools.lru_cache(maxsize=None)
def qemu_device_properties(qemu: str, kind: str) -> FrozenSet[str]:
    """Names of the properties ``qemu -device KIND,help`` lists for a device model."""
    out = subprocess.run([qemu, "-nodefaults", "-machine", "none", "-device", f"{kind},help"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True).stdout
    return frozenset(re.findall(r"^\s+([A-Za-z][\w.-]*)=<", out, re.M))


def parse_device(spec: str) -> "tuple[str, Dict[str, str]]":
    """``"nvme,serial=x,msix_qsize=3"`` -> ``("nvme", {"serial": "x", "msix_qsize": "3"})``.

    The kind must be one of :data:`DEVICE_KINDS`; each property is
    ``NAME=VALUE``; the properties of :data:`LAB_PROPERTIES` are the lab's.
    """
    kind, *words = spec.split(",")
    if kind not in DEVICE_KINDS:
        raise LabError(f"unknown device {kind!r} in --device {spec!r} "
                       f"(known: {', '.join(DEVICE_KINDS)})",
                       remedy="use one of the known kinds, with properties after commas: "
                              "--device nvme,serial=x,msix_qsize=3")
    props: Dict[str, str] = {}
    for word in words:
        name, sep, value = word.partition("=")
        if not sep or not name:
            raise LabError(f"device property {word!r} of {kind} is not NAME=VALUE",
                           remedy=f"write it as --device {kind},NAME=VALUE[,NAME=VALUE...]")
        if name in LAB_PROPERTIES:
            raise LabError(f"device property {name!r} of {kind} is set by the lab",
                           remedy="devices sit at fixed slots from 00:10.0 with the lab's back "
                                  "ends; add other devices with --qemu-arg instead")
        props[name] = value
    return kind, props


def device_args(devices: Sequence[str], run_dir: Path, models: FrozenSet[str],
                iommu: bool = True,
                properties: Optional[Callable[[str], FrozenSet[str]]] = None,
                arch: str = "x86_64") -> List[str]:
    """QEMU arguments for the devices under test, at fixed PCI slots from 00:10.0 on.

    Each device is a kind with optional QEMU properties
    (``"nvme,serial=x,msix_qsize=3"``, see :func:`parse_device`); they override
    the lab's defaults (e.g. the NVMe serial).  ``properties(kind)``, when
    given, names the properties the QEMU model has: an unknown one is refused
    here rather than by QEMU at boot.

    ``edu`` keeps its 28-bit DMA mask behind an IOMMU (IOVAs are chosen to
    fit); without one it gets a 64-bit mask, since no-IOMMU DMA uses
    physical addresses, which may lie anywhere in guest memory.

    ``nvme`` gets a sparse scratch image in ``run_dir``; the NICs get a
    one-port hub as peer (no host network); ``igb`` sits behind a PCIe root
    port at its slot, so it appears on a bus of its own.

    On ``ppc64le`` each device sits alone on a PCI host bridge of its own (one
    IOMMU group, one TCE table each), and edu gets a 64-bit DMA mask: the
    dynamic DMA windows start at 1 << 59.
    """
    args: List[str] = []
    for i, spec in enumerate(devices):
        kind, props = parse_device(spec)
        if arch == "ppc64le" and kind == "igb":
            raise LabError("igb needs a PCIe root port, which the pseries PHB does not have",
                           remedy="leave igb out of the ppc64le guest's devices")
        if kind not in models:
            raise LabError(f"this QEMU has no {kind!r} device model",
                           remedy="install a newer QEMU (bookworm-backports has QEMU 10: "
                                  "apt-get install -t bookworm-backports qemu-system-x86)")
        if props and properties is not None:
            known = properties(kind)
            unknown = sorted(set(props) - known)
            if known and unknown:
                raise LabError(f"the {kind} device has no propert{'ies' if len(unknown) > 1 else 'y'}"
                               f" {', '.join(unknown)}",
                               remedy=f"see `qemu-system-x86_64 -device {kind},help` for its "
                                      "properties")
        addr = f"addr={FIRST_SLOT + i:#x}"
        if arch == "ppc64le":
            args += ["-device", f"spapr-pci-host-bridge,index={i + 1},id=labphb{i}"]
            addr = f"bus=labphb{i}.0,addr=0x0"
        if kind == "nvme":
            image = run_dir / f"nvme{i}.img"
            with open(image, "wb") as fh:
                fh.truncate(NVME_IMAGE_BYTES)
            base = {"serial": f"pyvfio-nvme{i}"}
            args += ["-drive", f"file={image},if=none,id=nvme{i},format=raw",
                     "-device", _device_word("nvme", {**base, **props}, f"drive=nvme{i},{addr}")]
        elif kind == "e1000e":
            args += ["-netdev", f"hubport,id=net{i},hubid={i}",
                     "-device", _device_word("e1000e", props, f"netdev=net{i},{addr}")]
        elif kind == "igb":
            # its SR-IOV VFs need device numbers past the PF's: give it a bus of its own
            args += ["-netdev", f"hubport,id=net{i},hubid={i}",
                     "-device", f"pcie-root-port,id=labport{i},chassis={i + 1},hotplug=off,{addr}",
                     "-device", _device_word("igb", props, f"netdev=net{i},bus=labport{i}")]
        else:
            wide = kind == "edu" and (not iommu or arch == "ppc64le")
            base = {"dma_mask": "0xffffffffffffffff"} if wide else {}
            word = _device_word(kind, {}, addr)
            merged = {**base, **props}
            if merged:
                word += "," + ",".join(f"{k}={v}" for k, v in merged.items())
            args += ["-device", word]
    return args


def lab_device_index(domain: int, bus: int, slot: int) -> Optional[int]:
    """Which of the lab's devices under test (0-based, in ``--device`` order) sits at
    this PCI address: slot 0x10 + i on x86-64 and aarch64, alone on PHB i + 1
    (PCI domain i + 1, slot 0) on ppc64le.  None for any other address."""
    if domain == 0 and bus == 0 and slot >= FIRST_SLOT:
        return slot - FIRST_SLOT
    if domain > 0 and bus == 0 and slot == 0:
        return domain - 1
    return None


def _device_word(kind: str, props: Mapping[str, str], lab: str) -> str:
    """``kind,prop=value,...,<the lab's own properties>``."""
    return ",".join([kind, *(f"{k}={v}" for k, v in props.items()), lab])


def kernel_cmdline(iommu: bool, append: Sequence[str] = (), arch: str = "x86_64") -> str:
    """The guest kernel's command line (the options after ``panic`` save boot time).

    ``no_timer_check`` skips the IO-APIC timer test, which a busy host running
    software emulation can fail ("timer doesn't work through Interrupt-remapped
    IO-APIC": a panic at boot).
    """
    if arch != "x86_64":
        m = ARCH_MACHINES[arch]
        return " ".join([f"console={m.console}", "quiet", "loglevel=4", "panic=-1",
                         "mitigations=off", "lsm=capability", "cryptomgr.notests",
                         f"labout={m.output}", *append])
    words = ["console=ttyS0", "quiet", "loglevel=4", "panic=-1", "mitigations=off",
             "no_timer_check", "lsm=capability", "8250.nr_uarts=2", "cryptomgr.notests",
             "intel_iommu=on" if iommu else "intel_iommu=off", *append]
    return " ".join(words)


def qemu_command(config: MachineConfig, run_dir: Path, rw_dirs: Sequence[Path],
                 qemu: str, models: FrozenSet[str]) -> List[str]:
    """The complete QEMU command line (also writes ``run_dir/mounts`` for the guest)."""
    output = ["-chardev", "stdio,id=cmdout,signal=off", "-serial", "chardev:cmdout"]
    if config.arch == "aarch64":
        cpu = "max,pauth-impdef=on"      # the cheap pointer-authentication hash under TCG
        machine = ["-machine", "virt,virtualization=on,gic-version=3"
                   + (",iommu=smmuv3" if config.iommu else "")]
        output = ["-chardev", "stdio,id=cmdout,signal=off",
                  "-device", "virtio-serial-pci,id=labserial",
                  "-device", "virtconsole,chardev=cmdout"]
    elif config.arch == "ppc64le":
        cpu = "power9"
        machine = ["-machine", _PSERIES]
        output = ["-chardev", "stdio,id=cmdout,signal=off",
                  "-device", "spapr-vty,chardev=cmdout"]
    else:
        # qemu64 is cheap under TCG and has SVM, so the guest gets /dev/kvm (nested
        # KVM with shadow paging): the KVM tests run in every x86 guest.
        cpu = "host" if config.accel == "kvm" else "qemu64"
        machine = ["-machine", "q35,kernel-irqchip=split",
                   "-device", "intel-iommu,intremap=on,caching-mode=on"] if config.iommu \
            else ["-machine", "q35"]
    fs = ["-virtfs", f"local,path={config.root},mount_tag=hostroot,security_model=none,"
                     "readonly=on,multidevs=remap",
          "-virtfs", f"local,path={run_dir},mount_tag=labrun,security_model=none"]
    mounts = []
    for i, d in enumerate(rw_dirs):
        fs += ["-virtfs", f"local,path={d},mount_tag=labrw{i},security_model=none,"
                          "multidevs=remap"]
        mounts.append(f"labrw{i} {d}\n")
    (run_dir / "mounts").write_text("".join(mounts))
    return [qemu, "-nodefaults", "-display", "none", "-no-reboot",
            "-accel", config.accel, "-cpu", cpu, "-smp", str(config.cpus),
            "-m", str(config.mem_mb), *machine,
            "-kernel", str(config.vmlinux), "-initrd", str(config.initrd),
            "-append", kernel_cmdline(config.iommu, config.append, config.arch),
            "-serial", f"file:{run_dir / 'console.log'}", *output,
            *fs, *device_args(config.devices, run_dir, models, config.iommu,
                              functools.partial(qemu_device_properties, qemu), config.arch),
            *config.qemu_args]


def _write_env(run_dir: Path, command: str, env: Mapping[str, str], cwd: Path) -> None:
    (run_dir / "cmd.sh").write_text(command + "\n")
    lines = [f"export {k}={shlex.quote(v)}\n" for k, v in env.items()]
    lines.append(f"export PYVFIO_LAB_CWD={shlex.quote(str(cwd))}\n")
    (run_dir / "env.sh").write_text("".join(lines))


def _tail(path: Path, lines: int = _CONSOLE_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _read_float(path: Path) -> Optional[float]:
    try:
        return float(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _write_stdout(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def run_guest(config: MachineConfig, command: str, *, env: Mapping[str, str], cwd: Path,
              rw_dirs: Sequence[Path] = (), output: Callable[[bytes], None] = _write_stdout,
              timeout: float = 1800.0, boot_timeout: float = 180.0,
              fetch: Sequence[str] = (), keep: bool = False) -> RunResult:
    """Boot the guest, run ``command`` (a shell command line) as root, return its result.

    The command's output (stdout and stderr merged) is passed to ``output`` as
    it arrives.  The files named in ``fetch`` that the command wrote to
    ``/run/lab`` come back in :attr:`RunResult.files`.  QEMU is killed and the
    run directory removed on every way out (``keep=True`` keeps the
    directory), including Ctrl-C and SIGTERM, which raise
    :class:`LabInterrupted`.  Raises :class:`BootTimeoutError` when the
    command has not started after ``boot_timeout`` seconds,
    :class:`CommandTimeoutError` when it runs past ``timeout`` seconds and
    :class:`BootError` when the guest stops without reporting an exit status.
    """
    qemu = config.qemu or find_qemu(config.arch)
    models = qemu_device_models(qemu)
    with interruptible():
        run_dir = _new_run_dir()
        proc: Optional["subprocess.Popen[bytes]"] = None
        try:
            _write_env(run_dir, command, env, cwd)
            cmd = qemu_command(config, run_dir, rw_dirs, qemu, models)
            (run_dir / "qemu.cmd").write_text(shlex.join(cmd) + "\n")
            start = time.monotonic()
            with open(run_dir / "qemu.log", "wb") as qemu_log:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=qemu_log, start_new_session=True,
                                        preexec_fn=_die_with_parent())
            boot = _pump(proc, output, run_dir, start, timeout, boot_timeout)
            proc.wait()
            return _result(proc, run_dir, boot, time.monotonic() - start, fetch, keep)
        finally:
            with signals_blocked():
                if proc is not None:
                    _stop(proc)
                if keep:
                    info(f"run directory kept: {run_dir}")
                else:
                    shutil.rmtree(run_dir, ignore_errors=True)


def _new_run_dir() -> Path:
    """A fresh run directory named after this process; first sweeps away those of
    lab processes that no longer exist (killed outright, they could not clean up)."""
    for stale in Path(tempfile.gettempdir()).glob(f"{_RUN_PREFIX}*-*"):
        pid = stale.name[len(_RUN_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{_RUN_PREFIX}{os.getpid()}-"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _result(proc: "subprocess.Popen[bytes]", run_dir: Path, boot: Optional[float], wall: float,
            fetch: Sequence[str], keep: bool) -> RunResult:
    """Read what the guest left in the run directory."""
    rc_file = run_dir / "rc"
    rc_text = rc_file.read_text().strip() if rc_file.exists() else ""
    if not rc_text:
        console = _tail(run_dir / "console.log")
        raise BootError(
            f"the guest stopped without reporting an exit status "
            f"(QEMU exit status {proc.returncode})" + _qemu_errors(run_dir),
            console_tail=console,
            remedy="look at the guest console lines above" if console else None)
    dmesg_file = run_dir / "dmesg"
    dmesg = dmesg_file.read_text(errors="replace") if dmesg_file.exists() else ""
    files = {name: (run_dir / name).read_bytes() for name in fetch
             if (run_dir / name).is_file()}
    return RunResult(int(rc_text), boot, _read_float(run_dir / "started"), wall, dmesg,
                     files, run_dir if keep else None)


def _pump(proc: "subprocess.Popen[bytes]", output: Callable[[bytes], None], run_dir: Path,
          start: float, timeout: float, boot_timeout: float) -> Optional[float]:
    """Copy QEMU's output until it exits; return the boot-to-command seconds."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    started = run_dir / "started"
    boot: Optional[float] = None
    while True:
        now = time.monotonic()
        if boot is None and started.exists():
            boot = now - start
        if boot is None and now - start > boot_timeout:
            raise BootTimeoutError(
                f"the guest did not start the command within {boot_timeout:.0f} s"
                + _qemu_errors(run_dir), console_tail=_tail(run_dir / "console.log"))
        if now - start > timeout:
            raise CommandTimeoutError(
                f"the command did not finish within {timeout:.0f} s",
                console_tail=_tail(run_dir / "console.log"))
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            data = os.read(fd, 65536)
            if not data:
                return boot
            output(data)


def _qemu_errors(run_dir: Path) -> str:
    text = _tail(run_dir / "qemu.log", 10)
    return f"\nQEMU said:\n{text}" if text else ""


def _stop(proc: "subprocess.Popen[bytes]") -> None:
    """Kill QEMU (its whole process group) and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _die_with_parent() -> Optional[Callable[[], None]]:
    """A ``preexec_fn`` making the child get SIGKILL when this process dies (Linux)."""
    try:
        import ctypes
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, signal.SIGKILL)
