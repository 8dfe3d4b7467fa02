# The cffi extension is declared here because setuptools reads `cffi_modules`
# only from setup(); everything else lives in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["pyvfio/core/_build_uapi.py:make_builder"])
