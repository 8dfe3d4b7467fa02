"""The shared leak check (``no_leaks`` in tests/conftest.py) fails a test that leaks."""
from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.host
pytest_plugins = ["pytester"]

HERE = Path(__file__).parent


def test_a_leaked_descriptor_fails_the_test(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(HERE.parent))
    pytester.makeconftest((HERE / "conftest.py").read_text())
    pytester.makepyfile(support=(HERE / "support.py").read_text())
    pytester.makepyfile(test_leaky="""
        from pyvfio.core import syscalls

        def test_forgets_to_close():
            syscalls.eventfd(what="forgotten eventfd")

        def test_closes():
            syscalls.close(syscalls.eventfd())
    """)
    result = pytester.runpytest_subprocess("--lab=off", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*leaked: descriptors {*: 'forgotten eventfd'}*"])
