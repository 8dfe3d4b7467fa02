"""core.syscalls wrappers beyond the fd basics: memfd, ftruncate, mlock, files, modprobe."""
from __future__ import annotations

import errno
import mmap
import os

import pytest

from pyvfio import errors
from pyvfio.core import syscalls

pytestmark = pytest.mark.host


def test_memfd_is_accounted_sized_and_closed():
    fd = syscalls.memfd_create("pyvfio-test")
    try:
        assert syscalls.open_fds()[fd] == "memfd:pyvfio-test"
        syscalls.ftruncate(fd, 3 * mmap.PAGESIZE)
        assert os.fstat(fd).st_size == 3 * mmap.PAGESIZE
    finally:
        syscalls.close(fd)
    assert fd not in syscalls.open_fds()


def test_ftruncate_of_a_closed_fd_names_it():
    fd = syscalls.memfd_create("gone")
    syscalls.close(fd)
    with pytest.raises(errors.PyvfioError) as ei:
        syscalls.ftruncate(fd, 4096)
    assert ei.value.errno == errno.EBADF and ei.value.op == "ftruncate"


def test_mlock_of_unmapped_memory_is_refused():
    with pytest.raises(errors.PyvfioError) as ei:
        syscalls.mlock(0, mmap.PAGESIZE)
    assert ei.value.errno == errno.ENOMEM and ei.value.op == "mlock"


def test_read_file_and_write_file(tmp_path):
    path = tmp_path / "attr"
    path.write_bytes(b"")
    syscalls.write_file(str(path), b"1\n")
    assert syscalls.read_file(str(path)) == b"1\n"
    with pytest.raises(FileNotFoundError):
        syscalls.read_file(str(tmp_path / "missing"))
    with pytest.raises(OSError) as ei:
        syscalls.write_file(str(tmp_path / "missing"), b"x")
    assert ei.value.errno == errno.ENOENT


def test_modprobe_without_the_program_names_the_module(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(errors.ModuleMissingError, match="to load vfio-pci") as ei:
        syscalls.modprobe("vfio-pci")
    assert "modprobe vfio-pci" in ei.value.remedy
