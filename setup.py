"""Build hook for the optional compiled accelerator (everything else is in pyproject.toml).

``pyverity.hashing._accel`` is declared ``optional=True``: without a C compiler or Python
headers the build warns and installs the pure-Python package, which is complete on its own.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pyverity.hashing._accel",
            sources=["src/pyverity/hashing/_accel.c", "src/pyverity/hashing/_accel_sha512.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
            optional=True,
        )
    ]
)
