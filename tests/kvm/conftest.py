"""KVM fixtures: the real /dev/kvm (host or lab guest) and the mock KVM.

The host's /dev/kvm runs small real-mode guests, so the x86 tests there are
real kernel tests; their result lines say ``real <host release> host-kvm``.
In a lab guest /dev/kvm exists only when the guest CPU has SVM (nested KVM
under TCG: ``pyvfio lab run --cpu qemu64,+svm``); without it those tests skip.
"""
from __future__ import annotations

import os
import signal
from typing import Iterator

import pytest

from pyvfio.core import syscalls
from pyvfio.lab import in_guest


from kvm_support import _kvm_usable, label  # noqa: E402


@pytest.fixture
def leaks() -> Iterator[None]:
    """Descriptors and mappings back to their starting values after the test."""
    fds = dict(syscalls.open_fds())
    maps = list(syscalls.live_mappings())
    yield
    assert syscalls.open_fds() == fds
    assert syscalls.live_mappings() == maps


@pytest.fixture
def real_kvm(request, leaks):
    """A :class:`pyvfio.kvm.Kvm` on the real kernel's /dev/kvm (host or lab guest)."""
    why = _kvm_usable()
    if why:
        pytest.skip(why)
    from pyvfio.kvm import Kvm
    if not in_guest():
        label(request, f"real {os.uname().release} host-kvm")
    with Kvm() as kvm:
        yield kvm


@pytest.fixture
def alarm():
    """``alarm(seconds)``: a SIGALRM that interrupts a stuck KVM_RUN (exit INTR)."""
    old = signal.signal(signal.SIGALRM, lambda *a: None)

    def arm(seconds: float) -> None:
        signal.setitimer(signal.ITIMER_REAL, seconds)
    yield arm
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture
def mock_kvm(request, tmp_path):
    """The mock kernel with a LoongArch-speaking /dev/kvm, as the current host."""
    label(request, "mock")
    from pyvfio.mock import mock_kernel
    with mock_kernel(tmp_path, kvm_arch="loongarch") as mock:   # installed: syscalls and host
        yield mock
