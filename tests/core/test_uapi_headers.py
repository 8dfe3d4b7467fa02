"""pyvfio.core.uapi holds the kernel's own numbers and layouts, and all of them.

A C program compiled against the same headers prints every ioctl request,
constant and struct size that ``pyvfio.core.uapi`` exposes; they must be equal.
An independent scan of the header files finds every object-like macro and
every struct/union definition; none that the compiler accepts may be missing.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from pyvfio.core import uapi
from pyvfio.core.uapi import ffi, lib

pytestmark = pytest.mark.host

HEADERS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           "kernel_headers")
CC = os.environ.get("CC", "cc")


def _includes() -> str:
    return "".join(f"#include <{h}>\n" for hs in uapi.FAMILIES.values() for h in hs)


def _run_c(tmp_path, body: str) -> str:
    src = tmp_path / "probe.c"
    src.write_text("#include <stdio.h>\n" + _includes() + "int main(void) {\n" + body + "return 0;\n}\n")
    exe = tmp_path / "probe"
    subprocess.run([CC, "-w", "-I", HEADERS_DIR, "-o", str(exe), str(src)], check=True)
    return subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout


def _header_paths():
    """Where the compiler finds each covered header (line markers of -E output)."""
    out = subprocess.run([CC, "-E", "-I", HEADERS_DIR, "-x", "c", "-"], input=_includes(),
                         capture_output=True, text=True, check=True).stdout
    files = set(re.findall(r'^# \d+ "([^"]+)"', out, re.M))
    paths = {}
    for hs in uapi.FAMILIES.values():
        for h in hs:
            paths[h] = next(f for f in files if f.endswith("/" + h))
    return paths


def test_families_present_on_this_system():
    # CI builds against Debian's 6.12 linux-libc-dev, which has every family
    assert {"vfio", "iommufd", "vhost", "vduse", "virtio", "kvm", "uio_msi", "pci"} <= set(uapi.FAMILIES)
    assert uapi.FAMILIES["uio_msi"] == ("uio_msi.h",)
    assert set(uapi.FAMILIES).isdisjoint(uapi.MISSING)


def test_every_ioctl_and_constant_equals_the_c_value(tmp_path):
    names = sorted(set(uapi.IOCTLS) | set(uapi.CONSTANTS))
    body = "".join(
        f'printf("%s %lld %llu\\n", "{n}", ({n}) < 0 ? 1LL : 0LL,'
        f' (unsigned long long)({n}));\n' for n in names)
    seen = 0
    for line in _run_c(tmp_path, body).splitlines():
        name, neg, value = line.split()
        c_value = int(value) - (1 << 64) if neg == "1" else int(value)
        assert getattr(lib, name) == c_value, name
        seen += 1
    assert seen == len(names) > 1000


def test_known_ioctl_numbers():
    # spot checks against the _IOC encoding on x86-64 (type ';' = 0x3b, 'I', 0xAF, 0xAE)
    assert lib.VFIO_GET_API_VERSION == 0x3B64
    assert lib.VFIO_IOMMU_MAP_DMA == 0x3B71
    assert lib.IOMMU_IOAS_MAP == 0x3B85
    assert lib.VHOST_GET_FEATURES == 0x8008AF00
    assert lib.UIO_MSI_IRQ_SET == 0x40084987
    assert lib.KVM_RUN == 0xAE80
    assert "UIO_MSI_IRQ_SET" in uapi.IOCTLS and "VFIO_DEVICE_FEATURE" in uapi.IOCTLS


def test_every_struct_size_and_offset_equals_the_c_value(tmp_path):
    body = "".join(f'printf("%s|%zu\\n", "{s}", sizeof({s}));\n' for s in uapi.STRUCTS)
    fields = []
    for s in uapi.STRUCTS:
        for fname, f in ffi.typeof(s).fields or ():
            if fname and not fname.startswith("__"):
                fields.append((s, fname, f.offset))
    body += "".join(f'printf("%s.{f}|%zu\\n", "{s}", __builtin_offsetof({s}, {f}));\n'
                    for s, f, _ in fields)
    c = dict(line.rsplit("|", 1) for line in _run_c(tmp_path, body).splitlines())
    for s in uapi.STRUCTS:
        assert ffi.sizeof(s) == int(c[s]), s
    for s, f, off in fields:
        assert off == int(c[f"{s}.{f}"]), f"{s}.{f}"
    assert len(uapi.STRUCTS) > 200 and len(fields) > 1000


def test_nothing_in_the_covered_headers_is_missing(tmp_path):
    macros, aggregates = {}, set()
    for h, path in _header_paths().items():
        text = open(path).read()
        for m in re.finditer(r"^\s*#\s*define\s+([A-Za-z_]\w*)(?![\w(])\s*(.*)$", text, re.M):
            macros[m.group(1)] = m.group(2)
        aggregates |= {f"{k} {n}" for k, n in re.findall(r"\b(struct|union)\s+(\w+)\s*\{", text)}
    # which of the scanned macros the compiler takes as integer constants:
    # compile, drop the lines it rejects, until it accepts the rest
    integer = sorted(macros)
    head = _includes()
    for _ in range(8):
        src = tmp_path / "ints.c"
        src.write_text(head + "".join(f"static const long long v_{i} = (long long)({n});\n"
                                      for i, n in enumerate(integer)))
        proc = subprocess.run([CC, "-c", "-w", "-fmax-errors=0", "-I", HEADERS_DIR, "-o",
                               str(tmp_path / "ints.o"), str(src)], capture_output=True, text=True)
        if proc.returncode == 0:
            break
        first = head.count("\n") + 1
        bad = {int(x) - first for x in re.findall(r"ints\.c:(\d+):\d+: error", proc.stderr)}
        assert bad, proc.stderr[-2000:]
        integer = [n for i, n in enumerate(integer) if i not in bad]
    else:
        pytest.fail("could not classify the headers' macros")
    missing = [n for n in integer if not hasattr(lib, n) and n not in uapi.STRINGS]
    assert missing == [], f"integer macros not in pyvfio.core.uapi.lib: {missing}"
    ioctl_like = [n for n in integer if re.search(r"\b_IO(R|W|WR)?\s*\(", macros[n])]
    assert set(ioctl_like) <= set(uapi.IOCTLS)
    assert sorted(aggregates - set(uapi.STRUCTS)) == []
    assert len(integer) > 1000


def test_missing_header_leaves_family_out(monkeypatch):
    sys.path.insert(0, os.path.join(os.path.dirname(HEADERS_DIR), "pyvfio", "core"))
    try:
        import _build_uapi as builder
    finally:
        sys.path.pop(0)
    monkeypatch.setitem(builder.FAMILIES, "nonesuch", ("linux/pyvfio_nonesuch.h",))
    found = builder.present_families()
    assert "nonesuch" not in found and "vfio" in found


def test_structs_are_usable_from_python():
    m = ffi.new("struct vfio_iommu_type1_dma_map *")
    m.argsz = ffi.sizeof(m[0])
    m.iova = 1 << 40
    assert (m.argsz, m.iova) == (32, 1 << 40)
    r = ffi.new("struct kvm_irq_routing_entry *")
    r.u.msi.address_lo = 0xFEE00000
    assert r.u.msi.address_lo == 0xFEE00000
    assert lib.vring_size(256, 4096) == 10246    # static inline from virtio_ring.h
    assert ffi.string(lib.VFIO_DEVICE_API_PCI_STRING) == b"vfio-pci"
    assert ffi.string(lib.VDPA_GENL_NAME) == b"vdpa"


def test_import_time():
    """`import pyvfio` stays cheap: measured in a fresh interpreter, target <= 50 ms."""
    code = ("import time; t = time.perf_counter(); import pyvfio; "
            "print((time.perf_counter() - t) * 1000)")
    ms = min(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  check=True).stdout) for _ in range(3))
    print(f"import pyvfio: {ms:.2f} ms")
    assert ms <= 50
