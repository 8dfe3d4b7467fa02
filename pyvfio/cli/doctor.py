"""``pyvfio doctor``: is this host ready to drive devices from user space, and if not, why.

Each check reads what the kernel publishes (sysfs, /dev, /proc through
:func:`pyvfio.core.sysfs.host`) and reports ``ok``, ``warn`` (works, with a
caveat), ``fail`` (this will not work) or ``info``, with the remedy for every
problem.  The exit status is 1 when a check failed.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple

from pyvfio import pci
from pyvfio.cli import reports_errors
from pyvfio.core import syscalls
from pyvfio.core import sysfs as _sysfs

__all__ = ["Check", "diagnose", "register", "parse_size"]

#: IOMMU drivers by the name they give their /sys/class/iommu entries.
_IOMMU_KINDS = (("dmar", "Intel VT-d"), ("ivhd", "AMD-Vi"), ("smmu", "Arm SMMU"),
                ("virtio", "virtio-iommu"))

_CAP_IPC_LOCK = 14


@dataclass
class Check:
    """One finding: ``status`` is ok, warn, fail or info."""
    name: str
    status: str
    detail: str
    remedy: Optional[str] = None


def parse_size(text: str) -> int:
    """``64M``, ``1G``, ``4096``, ``2GiB`` -> bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(i?b)?\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512M, 2G)")
    return int(m.group(1)) << (10 * " kmgt".index((m.group(2) or " ").lower()))


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def _read(path: str) -> Optional[str]:
    try:
        return syscalls.read_file(path).decode(errors="replace").strip()
    except OSError:
        return None


def _iommu(host: _sysfs.Host) -> Check:
    units = sorted(os.listdir(host.sys_path("class", "iommu"))) \
        if os.path.isdir(host.sys_path("class", "iommu")) else []
    groups = pci.host_has_iommu_groups(host)
    cmdline = _read(host.proc_path("cmdline")) or ""
    # CONFIG_IOMMUFD_TEST registers a mock IOMMU for its selftests: it translates no
    # device's DMA, so it does not count as an IOMMU here
    selftest = [u for u in units if u.startswith("iommufd_selftest")]
    units = [u for u in units if u not in selftest]
    if units:
        kinds = sorted({next((k for p, k in _IOMMU_KINDS if u.startswith(p)), u) for u in units})
        detail = f"on: {', '.join(kinds)} ({', '.join(units)})"
        if not groups:
            return Check("iommu", "warn", detail + ", but no IOMMU groups",
                         "the IOMMU is in passthrough for the whole host or not translating "
                         "DMA (e.g. iommu=off/intel_iommu=off on the command line); remove "
                         "that option")
        mode = "passthrough for host drivers (iommu=pt)" if "iommu=pt" in cmdline else None
        return Check("iommu", "ok", detail + (f"; {mode}" if mode else ""))
    if groups:
        return Check("iommu", "ok", "on (IOMMU groups exist; no /sys/class/iommu entry)")
    why = next((w for w in cmdline.split() if w in ("intel_iommu=off", "amd_iommu=off",
                                                      "iommu=off")), None)
    return Check("iommu", "fail", "off: no IOMMU unit and no IOMMU groups"
                 + (f" (the command line says {why})" if why else "")
                 + (f"; {selftest[0]} is iommufd's selftest mock" if selftest else ""),
                 pci.IOMMU_OFF_REMEDY)


# (module name in /sys/module, what it gives, device nodes (globs below /dev), required?)
_MODULES: Tuple[Tuple[str, str, Tuple[str, ...], bool], ...] = (
    ("vfio", "VFIO", ("vfio/vfio",), True),
    ("vfio_pci", "VFIO for PCI devices", (), True),
    ("vfio_iommu_type1", "the type1 IOMMU of VFIO containers", (), False),
    ("iommufd", "iommufd", ("iommu",), False),
    ("vhost_net", "vhost-net", ("vhost-net",), False),
    ("vhost_vsock", "vhost-vsock", ("vhost-vsock",), False),
    ("vhost_vdpa", "vhost-vdpa", ("vhost-vdpa-*",), False),
    ("vduse", "VDUSE", ("vduse/control",), False),
    ("uio", "UIO", ("uio*",), False),
    ("kvm", "KVM", ("kvm",), False),
)


def _modules(host: _sysfs.Host) -> List[Check]:
    out = []
    for module, what, nodes, required in _MODULES:
        loaded = os.path.isdir(host.sys_path("module", module))
        found = sorted(p for n in nodes for p in glob.glob(host.dev_path(n)))
        rel = [os.path.relpath(p, host.dev) for p in found]
        usable = [r for r, p in zip(rel, found) if os.access(p, os.R_OK | os.W_OK)]
        if nodes and found:
            detail = f"{what}: /dev/{', /dev/'.join(rel)}"
            if not usable:
                out.append(Check(module, "warn", detail + " (no read/write access)",
                                 f"run as root, or give your user /dev/{rel[0]} "
                                 f"(e.g. a udev rule with GROUP=/MODE=)"))
                continue
            out.append(Check(module, "ok", detail))
        elif loaded and not nodes:
            out.append(Check(module, "ok", f"{what}: module loaded"))
        elif loaded:
            out.append(Check(module, "warn" if required else "info",
                             f"{what}: module loaded but no /dev/{nodes[0]}",
                             _missing_node_remedy(host, module)))
        else:
            mod = module.replace("_", "-") if module == "vfio_pci" else module
            out.append(Check(module, "fail" if required else "info",
                             f"{what}: not loaded", f"`modprobe {mod}`"))
    return out


def _missing_node_remedy(host: _sysfs.Host, module: str) -> str:
    """Why a loaded module has no node, where the usual reason is not udev."""
    if module == "kvm":       # kvm registers /dev/kvm once kvm_intel or kvm_amd initialised
        return ("the CPU offers no VMX/SVM (or the firmware disables it), so kvm_intel/"
                "kvm_amd could not initialise: KVM cannot run on this machine (in a VM: "
                "enable nested virtualisation)")
    if module == "vhost_vdpa":
        return ("no vDPA device exists yet: create one (`vdpa dev add mgmtdev vdpasim_net "
                "name vdpa0`, or a VDUSE device) and bind it to vhost_vdpa")
    if module == "uio":
        return "no device is bound to a UIO driver yet: `pyvfio bind BDF --driver uio_pci_generic`"
    return "udev has not created the node: `udevadm trigger`, or check devtmpfs on /dev"


def _noiommu(host: _sysfs.Host, iommu_on: bool) -> Optional[Check]:
    value = _read(host.sys_path("module", "vfio", "parameters", "enable_unsafe_noiommu_mode"))
    if value is None:
        if iommu_on:
            return None
        return Check("noiommu", "info", "no-IOMMU mode unavailable (vfio not loaded, or built "
                     "without CONFIG_VFIO_NOIOMMU)",
                     "`modprobe vfio enable_unsafe_noiommu_mode=1` (kernel with "
                     "CONFIG_VFIO_NOIOMMU) to drive devices without isolation")
    if value == "Y":
        return Check("noiommu", "warn", "no-IOMMU mode is ON: devices bound to vfio-pci "
                     "without an IOMMU group can DMA anywhere in memory",
                     None if not iommu_on else
                     "with an IOMMU present, turn it off: "
                     "`echo 0 > /sys/module/vfio/parameters/enable_unsafe_noiommu_mode`")
    if iommu_on:
        return Check("noiommu", "ok", "no-IOMMU mode off")
    return Check("noiommu", "info", "no-IOMMU mode off (and there is no IOMMU)",
                 "to use devices anyway, without isolation: "
                 "`echo 1 > /sys/module/vfio/parameters/enable_unsafe_noiommu_mode`")


def _status_field(host: _sysfs.Host, name: str) -> Optional[str]:
    for line in (_read(host.proc_path("self", "status")) or "").splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return None


def _memlock(host: _sysfs.Host, want: int) -> Check:
    cap = _status_field(host, "CapEff")
    if cap is not None and int(cap, 16) >> _CAP_IPC_LOCK & 1:
        return Check("memlock", "ok", f"CAP_IPC_LOCK: no locked-memory limit applies "
                     f"({_size(want)} wanted)")
    limit: Optional[int] = None
    for line in (_read(host.proc_path("self", "limits")) or "").splitlines():
        if line.startswith("Max locked memory"):
            soft = line.split()[3]
            limit = None if soft == "unlimited" else int(soft)
            break
    else:
        return Check("memlock", "info", "RLIMIT_MEMLOCK unknown (no /proc/self/limits)")
    locked_kb = _status_field(host, "VmLck")
    used = int(locked_kb.split()[0]) * 1024 if locked_kb else 0
    if limit is None:
        return Check("memlock", "ok", f"RLIMIT_MEMLOCK unlimited ({_size(want)} wanted)")
    if limit - used < want:
        return Check("memlock", "fail",
                     f"RLIMIT_MEMLOCK {_size(limit)} ({_size(used)} in use) is less than the "
                     f"{_size(want)} to map for DMA",
                     f"raise it: `ulimit -l {max(want >> 10, 1)}` (or unlimited) in the shell, a "
                     "`memlock` line in /etc/security/limits.conf, LimitMEMLOCK= in a systemd "
                     "unit, or --ulimit memlock=-1 for a container")
    return Check("memlock", "ok", f"RLIMIT_MEMLOCK {_size(limit)} covers the {_size(want)} "
                 "to map")


def _hugepages(host: _sysfs.Host) -> List[Check]:
    out = []
    for d in sorted(glob.glob(host.sys_path("kernel", "mm", "hugepages", "hugepages-*kB")),
                    key=lambda p: int(re.findall(r"\d+", os.path.basename(p))[0])):
        kb = int(re.findall(r"\d+", os.path.basename(d))[0])
        total = int(_read(os.path.join(d, "nr_hugepages")) or 0)
        free = int(_read(os.path.join(d, "free_hugepages")) or 0)
        name = f"hugepages-{_size(kb << 10).replace(' ', '')}"
        if free:
            out.append(Check(name, "ok", f"{free} of {total} free"))
        else:
            n = max(1, (128 << 20) // (kb << 10))
            path = os.path.join("/sys/kernel/mm/hugepages", os.path.basename(d), "nr_hugepages")
            out.append(Check(name, "info", f"{free} of {total} free",
                             f"reserve some for DMA buffers of kind='hugetlb': "
                             f"`echo {n} > {path}`"))
    return out


def _dma_entry_limit(host: _sysfs.Host) -> Optional[Check]:
    value = _read(host.sys_path("module", "vfio_iommu_type1", "parameters", "dma_entry_limit"))
    if value is None:
        return None
    n = int(value)
    if n < 4096:
        return Check("dma_entry_limit", "warn",
                     f"vfio_iommu_type1 allows {n} DMA mappings per container",
                     "raise it: `modprobe vfio_iommu_type1 dma_entry_limit=65535` (or echo to "
                     "/sys/module/vfio_iommu_type1/parameters/dma_entry_limit)")
    return Check("dma_entry_limit", "ok", f"{n} DMA mappings per type1 container")


def _groups(host: _sysfs.Host) -> List[Check]:
    base = host.sys_path(pci.IOMMU_GROUPS)
    try:
        numbers = sorted(int(n) for n in os.listdir(base) if n.isdigit())
    except OSError:
        return []
    out = []
    for g in numbers:
        entries = pci.group_entries(g, host)
        members = ", ".join(f"{n} ({d or 'no driver'})" for n, d in entries)
        vfio = [n for n, d in entries if d and "vfio" in d]
        blockers = pci.group_blockers(g, host)
        if vfio and blockers:
            err = pci.not_viable_error(g, blockers)
            out.append(Check(f"group {g}", "fail", f"not viable: {members}", err.remedy))
        elif vfio:
            node = host.dev_path("vfio", str(g))
            if os.path.exists(node) or os.path.exists(host.dev_path("vfio", f"noiommu-{g}")):
                out.append(Check(f"group {g}", "ok", f"viable, /dev/vfio/{g}: {members}"))
            else:
                out.append(Check(f"group {g}", "warn", f"viable but no /dev/vfio/{g}: {members}",
                                 "udev has not created the node: `udevadm trigger`"))
        else:
            state = "not viable" if blockers else "viable"
            out.append(Check(f"group {g}", "info", f"{state}, not given to VFIO: {members}"))
    return out


def diagnose(*, want_map: int = 64 << 20) -> List[Check]:
    """Every check, in order, for the current host (:func:`pyvfio.core.sysfs.host`)."""
    host = _sysfs.host()
    iommu = _iommu(host)
    checks = [iommu]
    checks += _modules(host)
    noiommu = _noiommu(host, iommu.status != "fail")
    if noiommu:
        checks.append(noiommu)
    checks.append(_memlock(host, want_map))
    checks += _hugepages(host)
    limit = _dma_entry_limit(host)
    if limit:
        checks.append(limit)
    checks += _groups(host)
    return checks


_MARK = {"ok": " ok ", "warn": "WARN", "fail": "FAIL", "info": "info"}


def render(checks: List[Check]) -> str:
    """The text report: one line per check, the remedy indented below it."""
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"[{_MARK[c.status]}] {c.name.ljust(width)}  {c.detail}")
        if c.remedy and c.status != "ok":
            lines.append(f"       {' ' * width}  remedy: {c.remedy}")
    fails = sum(c.status == "fail" for c in checks)
    warns = sum(c.status == "warn" for c in checks)
    lines.append(f"{fails} problem(s), {warns} warning(s)")
    return "\n".join(lines)


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``doctor``."""
    p = subparsers.add_parser(
        "doctor", help="check that this host can drive devices from user space",
        description="Check the IOMMU, the VFIO/iommufd/vhost/UIO/KVM modules and nodes, "
                    "no-IOMMU mode, the locked-memory limit, huge pages, the type1 DMA entry "
                    "limit and the IOMMU groups; print each problem with its remedy.  Exit "
                    "status 1 when something will not work.")
    p.add_argument("--json", action="store_true", help="print a JSON list of checks")
    p.add_argument("--map", type=parse_size, default=64 << 20, metavar="SIZE",
                   help="memory you want to map for DMA, checked against RLIMIT_MEMLOCK "
                        "(default 64M)")
    p.set_defaults(func=reports_errors(_doctor))


def _doctor(args: argparse.Namespace) -> int:
    checks = diagnose(want_map=args.map)
    if args.json:
        json.dump([asdict(c) for c in checks], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(render(checks))
    return 1 if any(c.status == "fail" for c in checks) else 0


def counts(checks: List[Check]) -> Dict[str, int]:
    """How many checks have each status."""
    out: Dict[str, int] = {}
    for c in checks:
        out[c.status] = out.get(c.status, 0) + 1
    return out
