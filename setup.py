"""Build the optional C extension agents._stage_one. The rest of the package is
described in pyproject.toml.

The worker runs without the extension, because agents/routing.py has the same
logic in Python. So a failed build, on a machine without a C compiler, does not
fail the install.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "agents._stage_one",
            sources=["agents/_stage_one.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
