"""Helpers of the KVM tests: whether /dev/kvm can be used here, and result labels."""
from __future__ import annotations

import os

from pyvfio.lab import in_guest


def _kvm_usable() -> str:
    """'' when /dev/kvm can be opened, else why not."""
    from pyvfio.core.sysfs import host
    path = host().dev_path("kvm")
    if in_guest() and not os.path.exists(path):
        os.system("modprobe kvm_amd >/dev/null 2>&1; modprobe kvm_intel >/dev/null 2>&1")
    if not os.path.exists(path):
        where = "this lab guest" if in_guest() else "this host"
        return (f"no {path} on {where} (a lab guest needs an SVM CPU for nested KVM: "
                "`pyvfio lab run --cpu qemu64,+svm`)")
    if not os.access(path, os.R_OK | os.W_OK):
        return f"{path} is not accessible to this user"
    return ""


def label(request, text: str) -> None:
    """Say where the test ran in its result line (``-v``): ``[real ...]`` or ``[mock]``."""
    props = request.node.user_properties
    props[:] = [p for p in props if p[0] != "lab_target"]
    props.append(("lab_target", text))
