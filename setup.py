# The compiled parts are declared here because setuptools reads `cffi_modules`
# only from setup(); everything else lives in pyproject.toml.
#
# - pyvfio.core._uapi: the cffi binding of the kernel's uAPI headers (plus the
#   MMIO accessors and barriers of pyvfio/core/mmio_access.h);
# - pyvfio.core._mmio: the same single-access MMIO loads and stores as CPython
#   functions, which do not release the GIL around each access.
from setuptools import Extension, setup

setup(cffi_modules=["pyvfio/core/_build_uapi.py:make_builder"],
      ext_modules=[Extension("pyvfio.core._mmio", ["pyvfio/core/_mmio.c"],
                             include_dirs=["pyvfio/core"], depends=["pyvfio/core/mmio_access.h"],
                             extra_compile_args=["-O2"])])
