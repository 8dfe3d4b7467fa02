# The cffi extension is declared here because setuptools reads `cffi_modules`
# only from setup(); everything else lives in pyproject.toml.
#
# cffi builds the binding against the stable ABI (a .abi3.so) except on a
# free-threaded interpreter, so the wheel is tagged abi3 for every CPython
# from 3.9 on (requires-python) in that case.
import sysconfig

from setuptools import setup

options = {}
if not sysconfig.get_config_var("Py_GIL_DISABLED"):
    options["bdist_wheel"] = {"py_limited_api": "cp39"}

setup(cffi_modules=["pyvfio/core/_build_uapi.py:make_builder"], options=options)
