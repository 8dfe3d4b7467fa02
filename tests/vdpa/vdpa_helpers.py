"""Helpers shared by the vDPA tests."""
from __future__ import annotations

import pytest


def require_real(lab_target, what: str = "the simulators' data path") -> None:
    """Skip on the mock: ``what`` needs the real kernel of a lab guest."""
    if lab_target.kind != "real":
        pytest.skip(f"{what} needs a lab guest's kernel (the mock models the vdpa netlink "
                    "family and the vhost-vdpa state rules only)")
