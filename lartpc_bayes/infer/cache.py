"""Persistent XLA compilation cache: a second fit of the same shapes starts in seconds.

JAX keys each compiled executable by the computation (shapes, constants, flags) and the backend;
with ``jax_compilation_cache_dir`` set, executables that took longer than
``jax_persistent_cache_min_compile_time_secs`` to compile are written there and reused by later
processes. The directory is ``$LARTPC_BAYES_CACHE_DIR`` when set (an empty value or ``off``
disables the cache, as the benchmarks that measure compile time do), else
``$XDG_CACHE_HOME/lartpc_bayes/xla`` (default ``~/.cache/lartpc_bayes/xla``).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_dir", "enable_compilation_cache"]

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
