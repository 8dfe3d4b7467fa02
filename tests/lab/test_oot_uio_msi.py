"""uio_msi builds from nothing, out of tree, for both lab kernels (host only; needs the
kernels in the lab cache: the stock one's headers packages, the full one's build tree)."""
from __future__ import annotations

import pytest

from pyvfio.lab.modules import modinfo, read_module
from pyvfio.lab.oot import UIO_MSI, build_modules


def _kernel(flavour: str):
    from pyvfio.lab._host import cache_dir
    from pyvfio.lab.kernel import get_kernel
    if flavour == "full" and not list((cache_dir() / "full").glob("*/obj/Module.symvers")):
        pytest.skip("the full kernel is not built yet (`pyvfio lab run --kernel full true`)")
    if flavour == "stock" and not list((cache_dir() / "stock").glob("*")):
        pytest.skip("the stock kernel is not in the lab cache yet")
    try:
        return get_kernel(flavour)
    except Exception as exc:                      # noqa: BLE001 - no network, no packages
        pytest.skip(f"no {flavour} kernel here: {exc}")


@pytest.mark.parametrize("flavour", ["stock", "full"])
def test_uio_msi_builds_from_a_clean_cache(flavour, tmp_path):
    kernel = _kernel(flavour)
    out = build_modules(kernel, UIO_MSI, into=tmp_path)
    assert out.parent == tmp_path
    kos = sorted(p.name for p in out.glob("*.ko"))
    assert kos == ["uio_msi.ko"]
    info = dict(modinfo(read_module(out / "uio_msi.ko")))
    assert info["license"] == "GPL"
    assert info["name"] == "uio_msi"
    assert info["vermagic"].split()[0] == kernel.release
    assert "uio" in info["depends"].split(",") or flavour == "full"   # full: UIO built in
    assert build_modules(kernel, UIO_MSI, into=tmp_path) == out       # cached now
