"""The one build step pyproject.toml cannot state without an experimental table: the optional
C frame scanner (fixproxy/fix/_scan.c). Where no compiler is, the build goes on without it and
the pure-Python framer runs (fixproxy.fix.framer.SCANNER says which)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("fixproxy.fix._scan", ["fixproxy/fix/_scan.c"], optional=True,
                             extra_compile_args=["-O3"])])
