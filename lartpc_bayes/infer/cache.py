"""Compilation: a persistent XLA cache, and compilation in the background while the fit runs.

**Persistent cache.** A second fit of the same shapes starts in seconds.

JAX keys each compiled executable by the computation (shapes, constants, flags) and the backend;
with ``jax_compilation_cache_dir`` set, executables that took longer than
``jax_persistent_cache_min_compile_time_secs`` to compile are written there and reused by later
processes. The directory is ``$LARTPC_BAYES_CACHE_DIR`` when set (an empty value or ``off``
disables the cache, as the benchmarks that measure compile time do), else
``$XDG_CACHE_HOME/lartpc_bayes/xla`` (default ``~/.cache/lartpc_bayes/xla``).

**Background compilation** (:class:`AheadOfTime`). A fit needs several executables (the batched
potential of the E scan, the value and gradient of L-BFGS, the Hessian of the Laplace step) one
after the other. Each is *lowered* (traced: Python, NumPyro's handler stack, which is a global and
must not be entered from two threads) in the caller's thread, and its XLA *compilation* (C++, no
Python) handed to one background thread, so that the Hessian compiles while L-BFGS runs instead of
after it. The executables are the ones ``jax.jit`` would build (``Lowered.compile``, the same
persistent cache).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

__all__ = ["CACHE_ENV", "AheadOfTime", "cache_dir", "enable_compilation_cache"]

#: environment variable that overrides (or, set to "" / "off", disables) the cache directory
CACHE_ENV = "LARTPC_BAYES_CACHE_DIR"


def cache_dir() -> Path | None:
    """The default cache directory; None when ``$LARTPC_BAYES_CACHE_DIR`` disables it."""
    env = os.environ.get(CACHE_ENV)
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none") else Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lartpc_bayes" / "xla"


def enable_compilation_cache(path: str | Path | None = None, min_compile_s: float = 1.0
                             ) -> Path | None:
    """Switch JAX's persistent compilation cache on at ``path`` (default :func:`cache_dir`).

    Only executables that took at least ``min_compile_s`` to compile are stored (the small ones
    recompile faster than they load). Returns the directory, or None when disabled. Safe to call
    more than once; a directory that cannot be created disables the cache with no error, since
    the cache only saves time.
    """
    import jax

    d = Path(path).expanduser() if path is not None else cache_dir()
    if d is None:
        return None
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(d))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_s))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return d


#: one background compiler for the process: compilations queue behind each other and leave the
#: other cores to the fit (XLA's CPU runtime uses them)
_COMPILER: ThreadPoolExecutor | None = None


def _compiler() -> ThreadPoolExecutor:
    global _COMPILER
    if _COMPILER is None:
        _COMPILER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lartpc-bayes-compile")
    return _COMPILER


class AheadOfTime:
    """A jitted function whose executables are compiled in the background, one per signature.

    ``prefetch(*args)`` lowers ``fn`` for the shapes and dtypes of ``args`` (arrays or
    ``jax.ShapeDtypeStruct``) in the calling thread and queues its compilation; calling the object
    waits for that executable (compiling it first if nobody asked) and runs it. Arguments are
    converted with ``jnp.asarray`` first, so NumPy inputs find the executable of their JAX dtype.
    """

    def __init__(self, fn: Callable) -> None:
        self.fn = fn  # a jax.jit-wrapped function
        self._compiled: dict[Any, Future] = {}

    @staticmethod
    def _signature(args) -> tuple:
        import jax

        leaves, tree = jax.tree.flatten(args)
        return tree, tuple((tuple(a.shape), str(a.dtype)) for a in leaves)

    def prefetch(self, *args) -> None:
        """Lower now, compile in the background (no-op when this signature is known)."""
        key = self._signature(args)
        if key not in self._compiled:
            lowered = self.fn.lower(*args)
            self._compiled[key] = _compiler().submit(lowered.compile)

    def __call__(self, *args):
        import jax
        import jax.numpy as jnp

        args = jax.tree.map(jnp.asarray, args)
        self.prefetch(*args)
        return self._compiled[self._signature(args)].result()(*args)

    def _cache_size(self) -> int:
        """Executables built or queued (one per argument signature), as ``jax.jit``'s."""
        return len(self._compiled)
