"""The persistent compilation cache netc puts in force for the commands that compile
(runtime/compile_cache.py): entries are written, reused by a second run, and not written with
--no-compile-cache; a folder that cannot be used is a warning, never a crash."""

import io
import os

from conftest import MLP, netc, run_netc


def _entries(path):
    return sorted(os.listdir(path)) if path.exists() else []


def test_train_writes_reuses_and_opts_out(tmp_path):
    """The first and the opted-out runs in this process (netc's commands configure the cache
    themselves); the second run is a new process, as a user's next command is."""
    import jax

    from netc.runtime import compile_cache

    cache = tmp_path / "cache"
    env = {"NETC_CACHE_DIR": str(cache), "NETC_NO_COMPILE_CACHE": ""}
    try:
        # programs an earlier test compiled in this process would be taken from memory and
        # never written: the first run must compile everything, as a new process does
        jax.clear_caches()
        r = netc("train", MLP, "--max-iter", 2, "--out", tmp_path / "run1", env=env)
        assert r.returncode == 0, r.stderr
        first = _entries(cache)
        # the train step, the TEST net's forward, the fillers... every program, however fast
        assert len(first) >= 3, first
        assert any("step" in e for e in first), first

        # the same net again: every program is loaded from the cache, none is written anew
        r = run_netc("train", MLP, "--max-iter", 2, "--out", tmp_path / "run2", env=env)
        assert r.returncode == 0, r.stderr
        assert _entries(cache) == first

        off = tmp_path / "off"
        r = netc("--no-compile-cache", "train", MLP, "--max-iter", 2, "--out", tmp_path / "run3",
                 env={"NETC_CACHE_DIR": str(off), "NETC_NO_COMPILE_CACHE": ""})
        assert r.returncode == 0, r.stderr
        assert _entries(off) == []
        assert "compile cache" not in r.stderr
    finally:
        compile_cache.configure(err=io.StringIO())  # back to the suite's folder


def test_env_opt_out_and_unusable_folder(tmp_path, monkeypatch):
    """In-process: configure() with the environment opt-out, and with a folder that cannot be
    created (a file is in the way): no cache, one warning, no exception; then the session's own
    cache is put back for the tests that follow."""
    import jax  # imported: configure() updates JAX's config (not the environment)

    from netc.runtime import compile_cache

    saved = os.environ.get("NETC_CACHE_DIR")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    try:
        monkeypatch.setenv("NETC_NO_COMPILE_CACHE", "1")
        monkeypatch.setenv("NETC_CACHE_DIR", str(tmp_path / "unused"))
        assert compile_cache.configure(err=io.StringIO()) is None
        assert not (tmp_path / "unused").exists()

        monkeypatch.delenv("NETC_NO_COMPILE_CACHE")
        monkeypatch.setenv("NETC_CACHE_DIR", str(blocker / "jax"))
        err = io.StringIO()
        assert compile_cache.configure(err=err) is None
        assert "cannot use the compile cache" in err.getvalue()
        again = io.StringIO()
        assert compile_cache.configure(err=again) is None
        assert again.getvalue() == ""  # warned once per folder

        assert not jax.config.jax_enable_compilation_cache
    finally:
        monkeypatch.setenv("NETC_CACHE_DIR", saved or str(tmp_path / "restored"))
        monkeypatch.delenv("NETC_NO_COMPILE_CACHE", raising=False)
        assert compile_cache.configure(err=io.StringIO()) is not None


def test_default_folder_follows_xdg(monkeypatch, tmp_path):
    from netc.runtime.compile_cache import cache_dir

    monkeypatch.delenv("NETC_CACHE_DIR", raising=False)
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "netc" / "jax"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec: absolute only
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "netc" / "jax"
    monkeypatch.setenv("NETC_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_entries_written_without_a_bound_get_a_last_use(tmp_path, monkeypatch):
    """A folder filled by unbounded JAX has entries without the `-atime` file JAX's bounded
    (locked) cache reads: configure() stamps them, else every write would warn."""
    from netc.runtime import compile_cache

    old = tmp_path / "jit_f-0123-cache"
    old.write_bytes(b"x" * 10)
    stamped = tmp_path / "jit_g-4567-cache"
    stamped.write_bytes(b"y")
    (tmp_path / "jit_g-4567-atime").write_bytes((5).to_bytes(8, "little"))
    monkeypatch.setenv("NETC_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("NETC_NO_COMPILE_CACHE", raising=False)
    monkeypatch.delenv("NETC_CACHE_MAX_MB", raising=False)
    try:
        assert compile_cache.configure(True) == tmp_path
        atime = int.from_bytes((tmp_path / "jit_f-0123-atime").read_bytes(), "little")
        assert atime == old.stat().st_mtime_ns
        assert int.from_bytes((tmp_path / "jit_g-4567-atime").read_bytes(), "little") == 5
    finally:
        monkeypatch.undo()
        compile_cache.configure(True)  # back to the suite's folder
