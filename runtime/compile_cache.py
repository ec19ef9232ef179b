"""JAX's persistent compilation cache, on by default for every netc command that compiles.

XLA compiling the jitted programs is most of the time a command takes before its first step (on
CPU: LeNet's train step alone compiles for several seconds). JAX can keep each compiled executable
on disk, keyed by its HLO, compile options, backend and versions, so a later run of the same net
loads it instead of compiling again. netc enables that cache in the user's cache directory:

    $NETC_CACHE_DIR                          if set (the folder that holds the entries)
    else $JAX_COMPILATION_CACHE_DIR          if the user configured JAX's own cache
    else $XDG_CACHE_HOME/netc/jax            (~/.cache/netc/jax when XDG_CACHE_HOME is unset)

`netc --no-compile-cache ...` or NETC_NO_COMPILE_CACHE=1 turns it off. A directory that cannot be
created or written is warned about once, and the command runs without the cache. JAX's defaults
write only programs that took ≥ 1 s to compile; netc caches every program (on CPU most take less
and together they still add up). The entries are executables: like any cache of code, the folder
must not be writable by people you do not trust (it is created private, mode 0700). It is bounded:
NETC_CACHE_MAX_MB (default 2048) megabytes, least recently used entries evicted first; with a
bound JAX takes a file lock around each read and write, so concurrent netc processes sharing the
folder never read an entry half written. Delete it at any time (`rm -r ~/.cache/netc/jax`).

JAX is configured without being imported when it has not been yet (through the JAX_* environment
variables it reads at import), so `netc train` on a bad spec still fails before importing JAX.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TextIO

__all__ = ["cache_dir", "configure", "disabled_by_env"]

_warned: set[str] = set()


def disabled_by_env() -> bool:
    """NETC_NO_COMPILE_CACHE is set to something other than "", "0", "false", "no"."""
    v = os.environ.get("NETC_NO_COMPILE_CACHE", "").strip().lower()
    return v not in ("", "0", "false", "no", "off")


def cache_dir() -> Path:
    """The directory netc would cache compiled programs in (not created here)."""
    own = os.environ.get("NETC_CACHE_DIR")
    if own:
        return Path(own).expanduser()
    jax_own = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if jax_own:
        return Path(jax_own).expanduser()
    from netc.files import user_cache_dir

    return user_cache_dir() / "jax"


def _usable(path: Path) -> str | None:
    """None if `path` is (now) a writable directory, else why not."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        return e.strerror or str(e)
    if not path.is_dir():
        return "not a directory"
    if not os.access(path, os.W_OK | os.X_OK):
        return "not writable"
    return None


def configure(enabled: bool = True, err: TextIO | None = None) -> Path | None:
    """Put the persistent compilation cache in force for the compilations that follow (or turn
    it off). Returns the directory used, or None when there is none. Never raises: a cache
    directory that cannot be used is a warning on `err` (once per directory and process)."""
    err = err if err is not None else sys.stderr
    path: Path | None = None
    if enabled and not disabled_by_env():
        path = cache_dir()
        why = _usable(path)
        if why is not None:
            if str(path) not in _warned:
                _warned.add(str(path))
                err.write(f"warning: cannot use the compile cache {path} ({why}); compiling "
                          "without it (set NETC_CACHE_DIR, or pass --no-compile-cache)\n")
            path = None
    if path is not None and max_bytes() > 0:
        _stamp_unbounded_entries(path)
    _apply(path)
    return path


def _stamp_unbounded_entries(path: Path) -> None:
    """JAX's bounded cache keeps a `KEY-atime` file beside each `KEY-cache` entry and fails
    to write (a warning per compilation) when an entry lacks one, which is what a folder filled
    without a bound holds (an older netc, or JAX used directly). Give such entries their
    modification time as the last use, so they are evicted oldest first. One directory listing
    finds them (a stat per entry cost ~15 ms per 1,000 entries at every start)."""
    try:
        names = {e.name for e in os.scandir(path)}
        for name in names:
            stem = name[: -len("-cache")]
            if name.endswith("-cache") and stem + "-atime" not in names:
                entry = path / name
                (path / (stem + "-atime")).write_bytes(entry.stat().st_mtime_ns.to_bytes(8, "little"))
    except OSError:
        pass  # a folder we cannot stamp: JAX warns per entry, the command still runs


def max_bytes() -> int:
    """The cache's bound in bytes: NETC_CACHE_MAX_MB megabytes (default 2048; 0 or less: no
    bound, and then no file lock either)."""
    raw = os.environ.get("NETC_CACHE_MAX_MB", "").strip()
    try:
        mb = float(raw) if raw else 2048.0
    except ValueError:
        mb = 2048.0
    return int(mb * 2**20) if mb > 0 else -1


def _apply(path: Path | None) -> None:
    settings = {
        "jax_enable_compilation_cache": path is not None,
        "jax_compilation_cache_dir": str(path) if path is not None else None,
        # every program, however fast it compiled and however small (JAX's defaults: ≥ 1 s)
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": -1,
        # a bound turns on JAX's LRU eviction, which locks the folder around each read and write
        "jax_compilation_cache_max_size": max_bytes(),
    }
    if "jax" not in sys.modules:
        # JAX reads these at import: set them without importing it (a bad spec fails fast)
        for k, v in settings.items():
            if v is not None:  # off: jax_enable_compilation_cache says it; the folder stays
                os.environ[k.upper()] = ("true" if v else "false") if isinstance(v, bool) else str(v)
        return
    import jax

    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_enable_compilation_cache)
    for k, v in settings.items():
        if v is not None:
            jax.config.update(k, v)
    after = (jax.config.jax_compilation_cache_dir, jax.config.jax_enable_compilation_cache)
    if after != before:
        # JAX opens its cache once per process, at the first compilation: start over so that
        # the next compilation uses the new folder (or none)
        from jax.experimental.compilation_cache import compilation_cache

        compilation_cache.reset_cache()
