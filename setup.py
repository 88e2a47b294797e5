"""Build hook for the one optional C extension; everything else is in pyproject.toml.

``numbeam.tensors._ctensor`` makes the Tensor object a C type (see tensors/_ctensor.c). It is
optional: without a C compiler the build skips it and numbeam uses its pure-Python Tensor.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("numbeam.tensors._ctensor", ["tensors/_ctensor.c"], optional=True),
    ]
)
