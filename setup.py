"""Builds the matcher's compiled search (dsq_chain/matching/_search.c); everything else is in pyproject.toml.

The extension is optional: without a C compiler the install still succeeds and the matcher uses its Python
search (same placements, slower). -ffp-contract=off keeps every multiply and add separately rounded, as in
Python, so that scores agree bit for bit.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "dsq_chain.matching._search",
            ["dsq_chain/matching/_search.c"],
            extra_compile_args=["-O2", "-ffp-contract=off", "-fno-fast-math", "-std=c11", "-Wall"],
            optional=True,
        )
    ]
)
