"""A fake /sys (and /dev) in a temporary directory, with a small stand-in kernel.

:class:`SysfsTree` builds the sysfs layout pyvfio reads: PCI functions under
``sys/devices/pci<domain>:<bus>/<BDF>`` linked from ``sys/bus/pci/devices``,
drivers under ``sys/bus/pci/drivers``, IOMMU groups under
``sys/kernel/iommu_groups``, mdev parents under ``sys/class/mdev_bus``.

Plain files cannot react to writes as sysfs attributes do, so the kernel's
reactions are explicit: as the backend of pyvfio.core.syscalls it answers sysfs
writes to :meth:`SysfsTree.write`, which records them in
:attr:`SysfsTree.writes` and, like the kernel's store functions, binds on
``drivers_probe`` (honouring ``driver_override``), unbinds, adds dynamic IDs,
creates and destroys VFs and mdevs, and fails with the kernel's errno where
the kernel would.  :meth:`SysfsTree.modprobe` stands in for loading a module.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

from pyvfio.core import syscalls
from pyvfio.core.sysfs import Host, use_host
from pyvfio.pci import PciAddress

__all__ = ["SysfsTree"]

Ids = Tuple[int, int]


def _fail(err: int) -> OSError:
    return OSError(err, os.strerror(err))


class SysfsTree(syscalls.Kernel):
    """A fake sysfs tree under ``root/sys`` and device nodes under ``root/dev``.

    On its own it is a :mod:`pyvfio.core.syscalls` backend (:meth:`installed`)
    for tests of sysfs alone; inside the mock kernel it is the pci family's tree.
    """

    def __init__(self, root: "os.PathLike[str] | str") -> None:
        super().__init__()
        self.root = Path(root)
        self.sys = self.root / "sys"
        self.dev = self.root / "dev"
        for d in ("bus/pci/devices", "bus/pci/drivers", "kernel/iommu_groups",
                  "bus/mdev/devices", "class/mdev_bus"):
            (self.sys / d).mkdir(parents=True, exist_ok=True)
        (self.dev / "vfio").mkdir(parents=True, exist_ok=True)
        (self.sys / "bus/pci/drivers_probe").write_text("")
        #: Every write pyvfio made: (path relative to sys/, bytes written).
        self.writes: List[Tuple[str, bytes]] = []
        #: The modules modprobe was asked for.
        self.modprobed: List[str] = []
        #: Modules the fake modprobe can load: name -> IDs of the PCI driver it registers.
        self.loadable: Dict[str, Sequence[Ids]] = {}
        #: When True, every write fails with EACCES, as for a user other than root.
        self.unprivileged = False
        #: When False, writes only land in the files: no kernel reaction.
        self.react = True
        self._ids: Dict[str, Set[Ids]] = {}     # driver -> IDs it matches
        self._sriov: Set[str] = set()            # drivers with sriov_configure
        self._refuse: Set[Tuple[str, str]] = set()  # (driver, BDF) whose probe fails
        self._failures: Dict[str, int] = {}      # sys-relative path -> errno, next write
        self._vf: Dict[str, Dict[str, int]] = {}  # PF BDF -> VF parameters
        self._cdev_next = 0

    # ----------------------------------------------------------------- roots
    @property
    def sysfs(self) -> str:
        """The fake sysfs root, to pass as ``sysfs=``."""
        return str(self.sys)

    @property
    def devroot(self) -> str:
        """The fake /dev root, to pass as ``devroot=``."""
        return str(self.dev)

    @property
    def host(self) -> Host:
        """The machine this tree describes."""
        return Host(sysfs=self.sysfs, dev=self.devroot)

    @contextlib.contextmanager
    def installed(self) -> Iterator["SysfsTree"]:
        """Make this tree the host, and this stand-in kernel answer sysfs writes and modprobe."""
        with syscalls.use(self), use_host(self.host):
            yield self

    def write_file(self, path: str, data: bytes) -> int:
        self.write(path, data)
        return len(data)

    # ----------------------------------------------------------------- small helpers
    @staticmethod
    def put(path: "os.PathLike[str] | str", text: str) -> None:
        """Create (or replace) the file ``path`` holding ``text``, with its directories."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    @staticmethod
    def link(link: "os.PathLike[str] | str", target: "os.PathLike[str] | str") -> None:
        """A relative symlink ``link`` -> ``target`` (both absolute), replacing one there."""
        link = Path(link)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.is_file():
            link.unlink()
        link.symlink_to(os.path.relpath(target, link.parent))

    def device_dir(self, bdf: str) -> Path:
        """The real directory of a PCI function (what bus/pci/devices/<BDF> links to)."""
        return Path(os.path.realpath(self.sys / "bus/pci/devices" / bdf))

    def driver_dir(self, driver: str) -> Path:
        """``sys/bus/pci/drivers/<driver>``."""
        return self.sys / "bus/pci/drivers" / driver

    # path-based helpers of the tree, not the descriptor-level read(2)/write(2) of Kernel
    def read(self, relpath: str) -> str:  # type: ignore[override]
        """The text of a file, path relative to sys/."""
        return (self.sys / relpath).read_text()

    def driver_of(self, bdf: str) -> Optional[str]:
        """The driver the fake has bound to ``bdf``, None when unbound."""
        link = self.device_dir(bdf) / "driver"
        return os.path.basename(os.readlink(link)) if link.is_symlink() else None

    def writes_to(self, relpath: str) -> List[bytes]:
        """What was written to one file, in order."""
        return [data for path, data in self.writes if path == relpath]

    # ----------------------------------------------------------------- building
    def add_driver(self, name: str, ids: Iterable[Ids] = (), *, sriov: bool = False) -> Path:
        """A PCI driver matching ``ids`` (vendor, device); ``sriov`` gives it sriov_configure."""
        path = self.driver_dir(name)
        path.mkdir(parents=True, exist_ok=True)
        for attr in ("bind", "unbind", "new_id", "remove_id"):
            (path / attr).touch()
        self._ids.setdefault(name, set()).update(ids)
        if sriov:
            self._sriov.add(name)
        return path

    def add_group(self, number: int, *, name: Optional[str] = None) -> Path:
        """IOMMU group ``number``; ``name="vfio-noiommu"`` makes it a no-IOMMU group."""
        path = self.sys / "kernel/iommu_groups" / str(number)
        (path / "devices").mkdir(parents=True, exist_ok=True)
        self.put(path / "type", "DMA\n")
        if name is not None:
            self.put(path / "name", name + "\n")
        return path

    def _join_group(self, devdir: Path, number: int) -> None:
        group = self.add_group(number)
        self.link(devdir / "iommu_group", group)
        self.link(group / "devices" / devdir.name, devdir)

    def _new_group_number(self) -> int:
        used = [int(p.name) for p in (self.sys / "kernel/iommu_groups").iterdir()]
        return max(used, default=-1) + 1

    def add_device(self, bdf: str, vendor: int = 0x8086, device: int = 0x10D3, *,
                   class_code: int = 0x020000, subsystem_vendor: Optional[int] = None,
                   subsystem_device: int = 0, revision: int = 0, driver: Optional[str] = None,
                   group: Optional[int] = None, numa_node: int = -1, header_type: int = 0,
                   resources: Sequence[Tuple[int, int, int]] = (),
                   totalvfs: Optional[int] = None, vf_device: int = 0, vf_offset: int = 1,
                   vf_stride: int = 1) -> Path:
        """A PCI function; ``driver`` is bound (and created if missing), ``group`` joined.

        ``resources`` are (start, end, flags) of the first lines of ``resource``
        (13 lines in all, the rest zero).  ``totalvfs`` makes it an SR-IOV PF whose
        VF i sits at routing ID PF + ``vf_offset`` + i * ``vf_stride``.
        """
        addr = PciAddress.parse(bdf)
        name = str(addr)
        devdir = self.sys / "devices" / f"pci{addr.domain:04x}:{addr.bus:02x}" / name
        devdir.mkdir(parents=True)
        self.link(self.sys / "bus/pci/devices" / name, devdir)
        sub_vendor = vendor if subsystem_vendor is None else subsystem_vendor
        files = {
            "vendor": f"0x{vendor:04x}\n", "device": f"0x{device:04x}\n",
            "subsystem_vendor": f"0x{sub_vendor:04x}\n",
            "subsystem_device": f"0x{subsystem_device:04x}\n",
            "class": f"0x{class_code:06x}\n", "revision": f"0x{revision:02x}\n",
            "driver_override": "(null)\n", "numa_node": f"{numa_node}\n",
            "enable": "0\n", "remove": "", "reset": "",
        }
        for attr, text in files.items():
            self.put(devdir / attr, text)
        lines = list(resources) + [(0, 0, 0)] * (13 - len(resources))
        self.put(devdir / "resource",
                  "".join(f"0x{s:016x} 0x{e:016x} 0x{f:016x}\n" for s, e, f in lines))
        config = bytearray(64)
        config[0:4] = vendor.to_bytes(2, "little") + device.to_bytes(2, "little")
        config[8] = revision
        config[9:12] = class_code.to_bytes(3, "little")
        config[0x0E] = header_type
        (devdir / "config").write_bytes(bytes(config))
        if totalvfs is not None:
            for attr, number in (("sriov_totalvfs", totalvfs), ("sriov_numvfs", 0),
                                 ("sriov_offset", vf_offset), ("sriov_stride", vf_stride),
                                 ("sriov_drivers_autoprobe", 1)):
                self.put(devdir / attr, f"{number}\n")
            self.put(devdir / "sriov_vf_device", f"{vf_device:x}\n")
            self._vf[name] = {"offset": vf_offset, "stride": vf_stride, "device": vf_device}
        if group is not None:
            self._join_group(devdir, group)
        if driver is not None:
            if not self.driver_dir(driver).is_dir():
                self.add_driver(driver)
            self._attach(devdir, driver)
        return devdir

    def add_vfio_cdev(self, bdf_or_path: str, number: Optional[int] = None) -> str:
        """Give a device ``vfio-dev/vfioN`` and the node ``dev/vfio/devices/vfioN``."""
        devdir = Path(bdf_or_path) if os.path.isabs(bdf_or_path) else self.device_dir(bdf_or_path)
        if number is None:
            number = self._cdev_next
        self._cdev_next = max(self._cdev_next, number + 1)
        self.put(devdir / "vfio-dev" / f"vfio{number}" / "dev", f"511:{number}\n")
        node = self.dev / "vfio/devices" / f"vfio{number}"
        self.put(node, "")
        return str(node)

    def refuse(self, driver: str, bdf: str) -> None:
        """Make ``driver``'s probe of ``bdf`` fail, as a driver that returns an error."""
        self._refuse.add((driver, bdf))

    def fail_next_write(self, relpath: str, err: int) -> None:
        """Make the next write to ``relpath`` (relative to sys/) fail with ``err``."""
        self._failures[relpath] = err

    def add_mdev_parent(self, name: str, types: Dict[str, Dict[str, object]], *,
                        driver: str = "mtty") -> Path:
        """An mdev parent; ``types`` maps type id to name, description, device_api, available.

        A PCI address names an existing PCI function; anything else a virtual
        device under ``sys/devices/virtual/<name>/<name>`` (like the mtty sample).
        """
        if (self.sys / "bus/pci/devices" / name).exists():
            devdir = self.device_dir(name)
        else:
            devdir = self.sys / "devices/virtual" / name / name
            devdir.mkdir(parents=True)
        self.link(self.sys / "class/mdev_bus" / name, devdir)
        (self.sys / "bus/mdev/drivers" / driver).mkdir(parents=True, exist_ok=True)
        for type_id, info in types.items():
            tdir = devdir / "mdev_supported_types" / type_id
            (tdir / "devices").mkdir(parents=True)
            if info.get("name") is not None:
                self.put(tdir / "name", f"{info['name']}\n")
            if info.get("description") is not None:
                self.put(tdir / "description", f"{info['description']}\n")
            self.put(tdir / "device_api", f"{info.get('device_api', 'vfio-pci')}\n")
            self.put(tdir / "available_instances", f"{info.get('available', 1)}\n")
            self.put(tdir / "create", "")
            self.put(tdir / "mdev_driver", f"{driver}\n")
        return devdir

    # ----------------------------------------------------------------- the stand-in kernel
    def modprobe(self, module: str) -> Tuple[int, str]:
        """Load ``module`` if it is in :attr:`loadable` (registering its PCI driver)."""
        self.modprobed.append(module)
        for candidate in (module, module.replace("_", "-"), module.replace("-", "_")):
            if candidate in self.loadable:
                self.add_driver(candidate, self.loadable[candidate])
                return 0, ""
        return 1, f"modprobe: FATAL: Module {module} not found"

    def write(self, path: str, data: bytes) -> None:  # type: ignore[override]  # path-based, see read
        """pyvfio's sysfs write, answered as the kernel's store functions would."""
        given = os.path.abspath(path)
        real = os.path.realpath(path)
        for p in (given, real):
            if os.path.relpath(p, self.sys).startswith(".."):
                raise AssertionError(f"write outside the fake sysfs: {path}")
        self.writes.append((os.path.relpath(given, self.sys), bytes(data)))
        if self.unprivileged:
            raise _fail(errno.EACCES)
        err = self._failures.pop(os.path.relpath(given, self.sys), None)
        if err is not None:
            raise _fail(err)
        if not os.path.exists(real):
            raise _fail(errno.ENOENT)
        text = data.decode()
        parts = Path(os.path.relpath(real, self.sys)).parts
        if not self.react:
            Path(real).write_bytes(data)
        elif parts == ("bus", "pci", "drivers_probe"):
            self._drivers_probe(text)
        elif parts[:3] == ("bus", "pci", "drivers") and len(parts) == 5:
            {"bind": self._bind, "unbind": self._unbind, "new_id": self._new_id,
             "remove_id": self._remove_id}[parts[4]](parts[3], text)
        elif parts[-1] == "driver_override":
            self._override(Path(real), text)
        elif parts[-1] == "sriov_numvfs":
            self._numvfs(Path(real).parent, text)
        elif len(parts) >= 3 and parts[-3] == "mdev_supported_types" and parts[-1] == "create":
            self._mdev_create(Path(real).parent, text)
        elif parts[-1] == "remove" and (Path(real).parent / "mdev_type").is_symlink():
            self._mdev_remove(Path(real).parent, text)
        else:
            Path(real).write_bytes(data)

    # PCI core -------------------------------------------------------------
    def _pci_dir(self, text: str) -> Path:
        name = text.strip()  # the kernel compares names with sysfs_streq
        link = self.sys / "bus/pci/devices" / name
        if not link.exists():
            raise _fail(errno.ENODEV)
        return Path(os.path.realpath(link))

    def _ids_of(self, devdir: Path) -> Ids:
        return (int((devdir / "vendor").read_text(), 16), int((devdir / "device").read_text(), 16))

    def _override_of(self, devdir: Path) -> Optional[str]:
        text = (devdir / "driver_override").read_text().strip()
        return None if text == "(null)" else text

    def _matches(self, driver: str, devdir: Path) -> bool:
        """pci_match_device: driver_override decides alone; else the ID table."""
        override = self._override_of(devdir)
        if override is not None:
            return override == driver
        return self._ids_of(devdir) in self._ids.get(driver, set())

    def _attach(self, devdir: Path, driver: str) -> None:
        self.link(devdir / "driver", self.driver_dir(driver))
        self.link(self.driver_dir(driver) / devdir.name, devdir)

    def _detach(self, devdir: Path) -> None:
        link = devdir / "driver"
        if link.is_symlink():
            driver = os.path.basename(os.readlink(link))
            link.unlink()
            back = self.driver_dir(driver) / devdir.name
            if back.is_symlink():
                back.unlink()

    def _probe_one(self, devdir: Path) -> None:
        """device_attach: the first driver that matches and whose probe succeeds."""
        if (devdir / "driver").is_symlink():
            return
        for driver in self._ids:
            if not self.driver_dir(driver).is_dir() or not self._matches(driver, devdir):
                continue
            header = (devdir / "config").read_bytes()[0x0E] & 0x7F
            if "vfio" in driver and header != 0:
                continue  # vfio_pci_probe: -EINVAL for anything but a type-0 header
            if (driver, devdir.name) in self._refuse:
                continue
            self._attach(devdir, driver)
            return

    def _drivers_probe(self, text: str) -> None:
        self._probe_one(self._pci_dir(text))

    def _bind(self, driver: str, text: str) -> None:
        devdir = self._pci_dir(text)
        if not self._matches(driver, devdir):
            raise _fail(errno.ENODEV)
        if (devdir / "driver").is_symlink():
            raise _fail(errno.EBUSY)
        self._attach(devdir, driver)

    def _unbind(self, driver: str, text: str) -> None:
        devdir = self._pci_dir(text)
        link = devdir / "driver"
        if not link.is_symlink() or os.path.basename(os.readlink(link)) != driver:
            raise _fail(errno.ENODEV)
        self._detach(devdir)

    def _new_id(self, driver: str, text: str) -> None:
        fields = text.split()
        if len(fields) < 2:
            raise _fail(errno.EINVAL)
        self._ids[driver].add((int(fields[0], 16), int(fields[1], 16)))
        for link in sorted((self.sys / "bus/pci/devices").iterdir()):
            self._probe_one(Path(os.path.realpath(link)))

    def _remove_id(self, driver: str, text: str) -> None:
        fields = text.split()
        key = (int(fields[0], 16), int(fields[1], 16))
        if key not in self._ids[driver]:
            raise _fail(errno.ENODEV)
        self._ids[driver].discard(key)

    def _override(self, file: Path, text: str) -> None:
        """driver_set_override: up to the first newline; empty clears it."""
        if len(text) >= 4095:
            raise _fail(errno.EINVAL)
        value = text.split("\0", 1)[0].split("\n", 1)[0]
        file.write_text((value or "(null)") + "\n")

    # SR-IOV ---------------------------------------------------------------
    def _numvfs(self, pfdir: Path, text: str) -> None:
        """sriov_numvfs_store, including its ERANGE, ENOENT and EBUSY answers."""
        try:
            count = int(text.strip(), 0)
        except ValueError:
            raise _fail(errno.EINVAL) from None
        if count > int((pfdir / "sriov_totalvfs").read_text()):
            raise _fail(errno.ERANGE)
        current = int((pfdir / "sriov_numvfs").read_text())
        if count == current:
            return
        link = pfdir / "driver"
        driver = os.path.basename(os.readlink(link)) if link.is_symlink() else None
        if driver is None or driver not in self._sriov:
            raise _fail(errno.ENOENT)
        if count and current:
            raise _fail(errno.EBUSY)
        if count:
            self._add_vfs(pfdir, count)
        else:
            self._remove_vfs(pfdir)
        (pfdir / "sriov_numvfs").write_text(f"{count}\n")

    def _add_vfs(self, pfdir: Path, count: int) -> None:
        pf = PciAddress.parse(pfdir.name)
        info = self._vf[pfdir.name]
        vendor = self._ids_of(pfdir)[0]
        for i in range(count):
            rid = pf.rid + info["offset"] + i * info["stride"]
            vf = PciAddress(pf.domain, rid >> 8, (rid >> 3) & 0x1F, rid & 7)
            vfdir = self.add_device(str(vf), vendor, info["device"],
                                    class_code=int((pfdir / "class").read_text(), 16),
                                    group=self._new_group_number())
            self.link(vfdir / "physfn", pfdir)
            self.link(pfdir / f"virtfn{i}", vfdir)
            self._probe_one(vfdir)  # sriov_drivers_autoprobe

    def _remove_vfs(self, pfdir: Path) -> None:
        for link in sorted(pfdir.glob("virtfn*")):
            vfdir = Path(os.path.realpath(link))
            self._detach(vfdir)
            self._remove_device(vfdir)
            link.unlink()

    def _remove_device(self, devdir: Path) -> None:
        group_link = devdir / "iommu_group"
        if group_link.is_symlink():
            group = Path(os.path.realpath(group_link))
            (group / "devices" / devdir.name).unlink()
            if not any((group / "devices").iterdir()):
                shutil.rmtree(group)
        for bus in ("bus/pci/devices", "bus/mdev/devices"):
            link = self.sys / bus / devdir.name
            if link.is_symlink():
                link.unlink()
        shutil.rmtree(devdir)

    # mdev -----------------------------------------------------------------
    def _mdev_create(self, tdir: Path, text: str) -> None:
        """create_store: a new mdev in its own IOMMU group, bound to the parent's mdev driver."""
        import uuid
        try:
            name = str(uuid.UUID(text.strip()))
        except ValueError:
            raise _fail(errno.EINVAL) from None
        if (self.sys / "bus/mdev/devices" / name).exists():
            raise _fail(errno.EEXIST)
        available = int((tdir / "available_instances").read_text())
        if available <= 0:
            raise _fail(errno.EUSERS)
        parent = tdir.parent.parent
        mdir = parent / name
        mdir.mkdir()
        self.link(mdir / "mdev_type", tdir)
        self.put(mdir / "remove", "")
        self.link(self.sys / "bus/mdev/devices" / name, mdir)
        self.link(tdir / "devices" / name, mdir)
        driver = (tdir / "mdev_driver").read_text().strip()
        self.link(mdir / "driver", self.sys / "bus/mdev/drivers" / driver)
        self._join_group(mdir, self._new_group_number())
        (tdir / "available_instances").write_text(f"{available - 1}\n")

    def _mdev_remove(self, mdir: Path, text: str) -> None:
        if text.strip() != "1":
            raise _fail(errno.EINVAL)
        tdir = Path(os.path.realpath(mdir / "mdev_type"))
        (tdir / "devices" / mdir.name).unlink()
        available = int((tdir / "available_instances").read_text())
        (tdir / "available_instances").write_text(f"{available + 1}\n")
        self._remove_device(mdir)
