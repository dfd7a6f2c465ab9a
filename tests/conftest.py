"""Test-session set-up shared by every test file.

Compiled code is shared between tests, test files and the two ``pytest -n 2`` workers through
JAX's persistent compilation cache (:func:`lartpc_bayes.infer.enable_compilation_cache`, the one
``lartpc-bayes`` itself uses): an executable that took >= 1 s to compile is written once and
loaded by every later test that builds the same computation (same problem shapes and constants),
in this run and the next. Tracing still happens in every process, so tests that count traces or
jit-cache entries are unaffected. ``LARTPC_BAYES_CACHE_DIR=off`` switches it off (a cold run).
"""

from __future__ import annotations


def pytest_configure(config) -> None:
    from lartpc_bayes.infer import enable_compilation_cache

    enable_compilation_cache()
