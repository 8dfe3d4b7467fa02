"""Fetch and unpack Debian packages without installing them.

Packages are downloaded with ``apt-get download`` into ``<cache>/debs`` and
unpacked with ``dpkg -x``: nothing is installed on the host and root is not
needed.  Downloaded files are kept, so a pinned version stays usable after the
archive has moved on.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import List, Optional

from pyvfio.lab._host import cache_dir, info, locked, replace_dir, run_tool
from pyvfio.lab.errors import AptUnavailableError, KernelPackageError

__all__ = ["download", "unpack", "candidates", "candidate_version", "version_key"]


def _apt_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise AptUnavailableError(f"{name} not found: cannot fetch Debian kernel packages")
    return path


def _cached(debs: Path, package: str, version: Optional[str]) -> Optional[Path]:
    # apt-get download names files <package>_<version, ':' as %3a>_<arch>.deb
    ver = version.replace(":", "%3a") if version else "*"
    found = sorted(debs.glob(f"{package}_{ver}_*.deb"), key=lambda p: version_key(p.name))
    return found[-1] if found else None


def download(package: str, version: Optional[str] = None) -> Path:
    """The ``.deb`` of ``package`` (``=version`` if given), from the cache or apt."""
    debs = cache_dir() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    if version is not None:
        hit = _cached(debs, package, version)
        if hit is not None:
            return hit
    apt_get = _apt_tool("apt-get")
    spec = f"{package}={version}" if version else package
    with locked(debs / package):
        with tempfile.TemporaryDirectory(dir=debs, prefix=".dl-") as tmp:
            info(f"downloading {spec}")
            run_tool([apt_get, "download", spec], cwd=Path(tmp), error=KernelPackageError,
                     what=f"apt-get download {spec}", remedy=KernelPackageError.default_remedy)
            got = list(Path(tmp).glob("*.deb"))
            if len(got) != 1:
                raise KernelPackageError(f"apt-get download {spec} produced no .deb")
            dest = debs / got[0].name
            got[0].replace(dest)
    return dest


def unpack(deb: Path, dest: Path) -> Path:
    """Unpack ``deb`` into ``dest`` (``dpkg -x``), once: an existing ``dest`` is kept."""
    if dest.is_dir():
        return dest
    dpkg = _apt_tool("dpkg")
    with locked(dest):
        if not dest.is_dir():
            replace_dir(dest, lambda tmp: run_tool(
                [dpkg, "-x", str(deb), str(tmp)], error=KernelPackageError,
                what=f"dpkg -x {deb.name}"))
    return dest


def candidates(name_regex: str) -> List[str]:
    """Names of the packages apt knows that fully match ``name_regex``, newest last."""
    out = run_tool([_apt_tool("apt-cache"), "search", "--names-only", f"^{name_regex}$"],
                   error=KernelPackageError, what="apt-cache search")
    names = [line.split(" ", 1)[0] for line in out.splitlines() if line.strip()]
    return sorted((n for n in names if re.fullmatch(name_regex, n)), key=version_key)


def candidate_version(package: str) -> Optional[str]:
    """The version apt would download for ``package``, or None if it has none."""
    try:
        out = subprocess.run([_apt_tool("apt-cache"), "policy", package], text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout
    except OSError:
        return None
    m = re.search(r"^\s*Candidate:\s*(\S+)", out, re.M)
    return m.group(1) if m and m.group(1) != "(none)" else None


def version_key(text: str) -> List[object]:
    """Sort key that orders embedded numbers numerically (``6.12.9`` < ``6.12.10``)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]
