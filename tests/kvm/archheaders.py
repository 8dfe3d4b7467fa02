"""Other architectures' uAPI headers, and the C compiler's view of their macros.

``uapi_include(arch)`` is ``make ARCH=<arch> headers`` (what ``make
headers_install`` copies, without needing rsync) of Debian's linux-source-6.12
that the lab unpacks, cached under the lab cache.  arm64 comes from Debian's
linux-libc-dev (arch all: it ships ``/usr/include/aarch64-linux-gnu/asm``).
``c_values(include, exprs)`` compiles a program with the host gcc against
those headers and returns what each C expression evaluates to: constants
need no cross compiler.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import pytest

LIBC_DEV_TRIPLETS = {"arm64": "aarch64-linux-gnu", "loongarch": "loongarch64-linux-gnu",
                     "riscv": "riscv64-linux-gnu"}


def _source_tree() -> Optional[Path]:
    try:
        from pyvfio.lab import kernel
        return kernel.source_tree(kernel.source_version())
    except Exception:                        # no network, no apt: the caller skips
        return None


def source_tree() -> Path:
    tree = _source_tree()
    if tree is None:
        pytest.skip("Debian's linux-source-6.12 is not available (the lab unpacks it on first use)")
    return tree


def uapi_include(arch: str) -> Path:
    """The include directory of ``make ARCH=arch headers`` (linux/, asm/, asm-generic/)."""
    if arch == "arm64":
        return libc_dev_include("arm64")
    from pyvfio.lab.kernel import cache_dir
    tree = source_tree()
    dest = cache_dir() / "uapi" / f"{arch}_{tree.parent.name}"
    inc = dest / "usr" / "include"
    if (inc / "asm" / "kvm.h").exists():
        return inc
    if shutil.which("make") is None or shutil.which("gcc") is None:
        pytest.skip("make and gcc are needed to build the uAPI headers")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{arch}-"))
    r = subprocess.run(["make", "-s", "-C", str(tree), f"O={tmp}", f"ARCH={arch}", "headers"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise AssertionError(f"make ARCH={arch} headers failed:\n{r.stdout[-3000:]}")
    try:
        os.rename(tmp, dest)
    except OSError:                           # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return inc


def libc_dev_include(arch: str) -> Path:
    """Debian's linux-libc-dev headers for ``arch``: a directory whose ``asm`` is that
    arch's and whose other directories are /usr/include's."""
    triplet = LIBC_DEV_TRIPLETS[arch]
    asm = Path("/usr/include") / triplet / "asm"
    if not (asm / "kvm.h").exists():
        pytest.skip(f"linux-libc-dev has no {asm}/kvm.h (needs the 6.12 package, arch all)")
    d = Path(tempfile.mkdtemp(prefix=f"pyvfio-uapi-{arch}-"))
    (d / "asm").symlink_to(asm)
    for sub in ("linux", "asm-generic"):
        (d / sub).symlink_to(Path("/usr/include") / sub)
    return d


def c_values(include: Path, exprs: Mapping[str, str], headers: Sequence[str] = ("linux/kvm.h",),
             prelude: str = "") -> Dict[str, int]:
    """``{name: value}`` of each C expression, compiled by the host gcc with ``include``
    first on the search path (``-nostdinc`` keeps the host's asm/ out)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is needed to evaluate the headers' macros")
    names = list(exprs)
    lines = ["#include <stddef.h>"]
    lines += [f"#include <{h}>" for h in headers]
    lines.append(prelude)
    lines.append("int printf(const char *, ...);")
    lines.append("int main(void) {")
    for n in names:
        lines.append(f'  printf("%s=%llu\\n", "{n}", (unsigned long long)({exprs[n]}));')
    lines.append("  return 0; }")
    with tempfile.TemporaryDirectory(prefix="pyvfio-cvals-") as tmp:
        src = Path(tmp) / "v.c"
        exe = Path(tmp) / "v"
        src.write_text("\n".join(lines) + "\n")
        gcc_inc = subprocess.run([gcc, "-print-file-name=include"], stdout=subprocess.PIPE,
                                 text=True).stdout.strip()
        cmd = [gcc, "-nostdinc", "-isystem", gcc_inc, "-isystem", str(include),
               "-o", str(exe), str(src)]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-4000:]}"
        out = subprocess.run([str(exe)], stdout=subprocess.PIPE, text=True, check=True).stdout
    vals = dict(line.split("=", 1) for line in out.splitlines())
    return {k: int(v) for k, v in vals.items()}


def source_defines(path: Path, pattern: str) -> List[Tuple[str, ...]]:
    """The groups of ``pattern`` for every match in a kernel source file."""
    return re.findall(pattern, path.read_text(errors="replace"), re.M)
