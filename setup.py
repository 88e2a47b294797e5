"""Build hook for the optional C extensions; everything else is in pyproject.toml.

``numbeam.tensors._ctensor`` makes the Tensor object a C type (see tensors/_ctensor.c);
``numbeam.transport._zmqfast`` makes a node's hot ZeroMQ calls (see transport/_zmqfast.c).
Both are optional: without a C compiler the build skips them and numbeam runs in pure Python.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("numbeam.tensors._ctensor", ["tensors/_ctensor.c"], optional=True),
        Extension("numbeam.transport._zmqfast", ["transport/_zmqfast.c"], optional=True),
    ]
)
