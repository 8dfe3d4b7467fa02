"""UIO fixtures, imported by the tests of this directory: functions bound to
uio_pci_generic / uio_msi, real or mock.

In a lab guest the tests bind QEMU's devices (edu at 00:10.0 and 00:11.0,
nvme, e1000e) to the real drivers (uio_msi is the project's module, built
out of tree and staged in the guest); on the host the mock kernel binds an
edu to uio_pci_generic, another edu and an MSI-X test function to uio_msi.
"""
from __future__ import annotations

import contextlib
import os
from types import SimpleNamespace
from typing import Iterator, List

import pytest

from pyvfio.core import syscalls

EDU = (0x1234, 0x11E8)
NVME_CLASS = 0x010802
E1000E = (0x8086, 0x10D3)

MOCK_EDU_GENERIC = "0000:00:10.0"
MOCK_EDU_MSI = "0000:00:11.0"
MOCK_MSIX = "0000:00:12.0"
MOCK_MSIX_VECTORS = 8


@pytest.fixture(autouse=True)
def no_leaks():
    """Every test leaves the descriptors and mappings it found."""
    fds, maps = syscalls.open_fds(), syscalls.live_mappings()
    yield
    assert syscalls.open_fds() == fds
    assert syscalls.live_mappings() == maps


def proc_interrupt_lines(bdf: str) -> List[str]:
    """The uio_msi vectors of ``bdf`` that /proc/interrupts lists (real kernel)."""
    with open("/proc/interrupts") as f:
        return sorted(line.split()[-1] for line in f
                      if "uio_msi[" in line and f"({bdf})" in line)


class RealUio:
    """The lab guest: bind real devices to the real drivers."""

    kind = "real"

    def __init__(self, target) -> None:
        self.target = target

    def _find(self, what: str):
        from pyvfio import pci
        if what in ("edu", "edu2"):
            found = pci.find(vendor=EDU[0], device=EDU[1])
            index = 0 if what == "edu" else 1
        elif what == "nvme":
            found, index = pci.find(class_code=NVME_CLASS), 0
        elif what == "msix":                   # a small MSI-X table: e1000e has 5 vectors
            found, index = pci.find(vendor=E1000E[0], device=E1000E[1]), 0
        else:
            raise ValueError(what)
        if len(found) <= index:
            pytest.skip(f"the guest has no {what} device")
        return found[index]

    @contextlib.contextmanager
    def bound(self, what: str, driver: str) -> Iterator[str]:
        dev = self._find(what)
        with dev.bound(driver):
            yield dev.name

    def irq_lines(self, bdf: str) -> List[str]:
        return proc_interrupt_lines(bdf)

    def other_device(self) -> str:
        return self._find("edu2").name


class MockUio:
    """The host: the mock kernel with its UIO family."""

    kind = "mock"

    def __init__(self, mock) -> None:
        self.mock = mock
        self.bindings = {"edu": (MOCK_EDU_GENERIC, "uio_pci_generic"),
                         "edu2": (MOCK_EDU_MSI, "uio_msi"), "msix": (MOCK_MSIX, "uio_msi")}

    @contextlib.contextmanager
    def bound(self, what: str, driver: str) -> Iterator[str]:
        if what == "nvme":
            pytest.skip("no NVMe model in the mock: runs in the lab guests")
        if what == "edu" and driver == "uio_msi":
            what = "edu2"                      # the mock binds its second edu to uio_msi
        bdf, have = self.bindings[what]
        assert have == driver, f"the mock binds {bdf} to {have}, not {driver}"
        yield bdf

    def irq_lines(self, bdf: str) -> List[str]:
        return sorted(line for line in self.mock.uio.irq_lines() if f"({bdf})" in line)

    def other_device(self) -> str:
        return "0000:00:13.0"


@pytest.fixture
def uio_env(lab_target, tmp_path):
    """Where UIO tests run: :class:`RealUio` in a guest, :class:`MockUio` on the host."""
    if lab_target.kind == "real":
        yield RealUio(lab_target)
        return
    from pyvfio.core.sysfs import host, use_host
    from pyvfio.mock import EduModel, mock_kernel
    from pyvfio.mock.uio import MsixModel
    devices = [EduModel(MOCK_EDU_GENERIC, group=5), EduModel(MOCK_EDU_MSI, group=6),
               MsixModel(MOCK_MSIX, group=7, vectors=MOCK_MSIX_VECTORS),
               EduModel("0000:00:13.0", group=8)]
    with mock_kernel(tmp_path, devices=devices, iommu="none", noiommu=True,
                     uio={MOCK_EDU_GENERIC: "uio_pci_generic", MOCK_EDU_MSI: "uio_msi",
                          MOCK_MSIX: "uio_msi"}) as mock:
        with use_host(host().with_roots(sysfs=mock.sysfs, dev=mock.devroot)):
            yield MockUio(mock)


def needs_no_iommu(lab_target) -> None:
    """Skip where an IOMMU would translate the device's DMA (physical addresses need none)."""
    if lab_target.kind == "real" and lab_target.iommu:
        pytest.skip("DMA to physical addresses needs a guest without an IOMMU "
                    "(full kernel, iommu=off)")
