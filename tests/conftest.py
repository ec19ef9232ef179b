import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import traceback
from pathlib import Path

import pytest

# -- one XLA compilation cache for the session ----------------------------------------------------
# Many tests train the same small nets (tests/specs/mlp.yaml above all), in this process and in
# `netc train` subprocesses; each run builds a new jitted step, which XLA would compile again
# (~2 s of a ~3 s run). JAX's persistent cache keys an executable by its HLO, compile options,
# backend and versions, so a hit is the same program. The directory is new for every session (and
# removed at its end): nothing carries over between runs of the suite. Set before JAX is imported
# (test modules import it; subprocesses inherit the environment).
# Under pytest-xdist the workers inherit the folder the controller made (one cache for the run).
_JAX_CACHE = os.environ.get("NETC_TESTS_XLA_CACHE", "")
if not _JAX_CACHE or not os.path.isdir(_JAX_CACHE):
    _JAX_CACHE = tempfile.mkdtemp(prefix="netc-tests-xla-cache-")
    os.environ["NETC_TESTS_XLA_CACHE"] = _JAX_CACHE
    atexit.register(shutil.rmtree, _JAX_CACHE, ignore_errors=True)
# netc's commands put their own persistent cache in force (runtime/compile_cache.py, by default in
# the user's ~/.cache/netc/jax): NETC_CACHE_DIR points them at this session's folder instead, so
# that the suite never writes into the real user cache (in-process and in subprocesses alike).
# ... and its native kernels (compiler/kernels/onednn.py: built once per session, ~8 s, into this
# folder instead of ~/.cache/netc/kernels; the xdist workers share it as they share the cache)
_KERNEL_DIR = _JAX_CACHE.rstrip("/") + "-kernels"
if not os.path.isdir(_KERNEL_DIR):
    os.makedirs(_KERNEL_DIR, mode=0o700, exist_ok=True)
    atexit.register(shutil.rmtree, _KERNEL_DIR, ignore_errors=True)
os.environ.update({
    "NETC_KERNEL_DIR": _KERNEL_DIR,
    "NETC_CACHE_DIR": _JAX_CACHE,
    "JAX_COMPILATION_CACHE_DIR": _JAX_CACHE,
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    # bounded, so JAX locks the folder around reads and writes (processes share it)
    "JAX_COMPILATION_CACHE_MAX_SIZE": str(8 << 30),
})
if "jax" in sys.modules:  # imported before this conftest (a plugin): configure it directly
    import jax

    jax.config.update("jax_compilation_cache_dir", _JAX_CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_compilation_cache_max_size", 8 << 30)

# Scratch folders the tests make outside pytest's tmp_path (module-level helpers): one folder per
# process, removed when it exits, so that no run leaves spec files behind in /tmp.
SCRATCH = tempfile.mkdtemp(prefix="netc-tests-scratch-")
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
MLP = ROOT / "tests" / "specs" / "mlp.yaml"  # max_iter 1500, snapshot 100, dropout, shuffle


def mlp_solver(max_iter: int) -> str:
    """mlp.yaml's own update rule (the same compiled step as the suite's other MLP runs), with
    display / test / snapshot intervals short enough to give curves in a few dozen iterations."""
    return (
        "base_lr: 0.05\nmomentum: 0.9\nweight_decay: 5e-4\nlr_policy: inv\ngamma: 1e-4\n"
        "power: 0.75\ntest_iter: 1\ntest_interval: 10\ndisplay: 5\n"
        f"max_iter: {max_iter}\nsnapshot: 10\nsnapshot_prefix: mlp\nrandom_seed: 7\n"
    )


def run_netc(*args, cwd=None, timeout=300, env=None):
    """Run the installed `netc` console script as a user would (a subprocess)."""
    exe = Path(sys.executable).with_name("netc")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "netc.cli"]
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(cmd + [str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


@contextlib.contextmanager
def _chdir(path):
    if path is None:
        yield
        return
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def netc(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    """Run `netc ARGS` in this process (click's CliRunner): the same command, options, output and
    exit status as the console script, without a new interpreter importing JAX and compiling again.
    Use `run_netc` where the process itself is under test (signals, the entry point).

    An exception that escapes the command is what a user would see as a traceback: it is appended
    to stderr as one, with exit status 1, so `"Traceback" not in r.stderr` checks still mean what
    they say."""
    from click.testing import CliRunner

    from netc.cli import main

    with _chdir(cwd):
        res = CliRunner().invoke(main, [str(a) for a in args], env=env, prog_name="netc",
                                 catch_exceptions=True)
    stderr = res.stderr
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        stderr += "Traceback (most recent call last):\n" + "".join(
            traceback.format_exception(*res.exc_info))
    return subprocess.CompletedProcess(["netc", *map(str, args)], res.exit_code, res.stdout, stderr)


# -- XLA options for programs a test compiles only to check values ---------------------------------
# Most of the suite's time is XLA compiling small programs, and a parity check's program runs once.
# With LLVM's backend optimisations off and the classic loop emitters instead of the MLIR fusion
# emitters, XLA CPU compiles such a program 3-6× faster (tests/test_parity.py: 63 s of compiling
# → 12 s); the values are float32 arithmetic either way (the parity tolerances, 1e-5 against a
# float64 reference, hold unchanged). Only for programs a test jits itself: what netc compiles
# (`netc train`, predict, export...) keeps XLA's defaults, and so does anything timed or compared
# bit for bit with such a program. Options this jaxlib lacks are dropped (unknown ones are errors).

FAST_XLA = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
            "xla_cpu_use_fusion_emitters": False}
_SUPPORTED_XLA: dict = {}


def fast_xla_options(options: dict | None = None) -> dict:
    import jax

    options = FAST_XLA if options is None else options
    for k, v in options.items():
        if k not in _SUPPORTED_XLA:
            try:
                jax.jit(lambda x: x + 1).lower(1.0).compile(compiler_options={k: v})
                _SUPPORTED_XLA[k] = True
            except Exception:  # INVALID_ARGUMENT: No such compile option
                _SUPPORTED_XLA[k] = False
    return {k: v for k, v in options.items() if _SUPPORTED_XLA[k]}


class jit_fast:  # noqa: N801 - used like jax.jit
    """`jax.jit(fun, **kw)` compiled with FAST_XLA: one compiled program per argument signature
    (pytree structure, shapes, dtypes), as jax.jit would. Tracing happens at the first call with
    a signature, under the config in force there (e.g. jax.default_matmul_precision)."""

    def __init__(self, fun, **jit_kw):
        import jax

        self._jitted = jax.jit(fun, **jit_kw)
        self._compiled: dict = {}

    def __call__(self, *args):
        import jax
        import numpy as np

        leaves, tree = jax.tree_util.tree_flatten(args)
        key = (tree, tuple((type(x), np.shape(x), str(getattr(x, "dtype", ""))) for x in leaves))
        if key not in self._compiled:
            self._compiled[key] = self._jitted.lower(*args).compile(
                compiler_options=fast_xla_options())
        return self._compiled[key](*args)


# -- a run that skips a test for a missing module must not pass ------------------------------------
# jax, torch, flatbuffers... are declared dependencies: tests import them plainly. Any skip (a
# stray importorskip, a skipif on the platform) makes the session fail unless --allow-skips is given,
# so a broken install cannot report "N passed, M skipped" with exit status 0.

pytest_plugins = ["pytester"]  # test_skip_guard.py runs the guard below on made-up suites


def pytest_addoption(parser):
    parser.addoption("--allow-skips", action="store_true", default=False,
                     help="netc: do not fail the session when tests are skipped")


def pytest_configure(config):
    if not config.getoption("allow_skips"):
        config.pluginmanager.register(_SkipGuard(), "netc-skip-guard")


class _SkipGuard:
    def __init__(self):
        self.skipped: list[str] = []

    def _note(self, report):
        lr = report.longrepr
        reason = lr[2] if isinstance(lr, tuple) and len(lr) == 3 else str(lr)
        reason = reason.removeprefix("Skipped: ")
        self.skipped.append(f"{report.nodeid or '<collection>'}: {reason}")

    def pytest_collectreport(self, report):
        if report.skipped:
            self._note(report)

    def pytest_runtest_logreport(self, report):
        if report.skipped and not hasattr(report, "wasxfail"):
            self._note(report)

    def pytest_sessionfinish(self, session, exitstatus):
        if self.skipped and exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter):
        if self.skipped:
            terminalreporter.section("netc: skipped tests fail the run", sep="=", red=True,
                                     bold=True)
            for line in self.skipped:
                terminalreporter.line(f"SKIPPED {line}", red=True)
            terminalreporter.line("the suite's dependencies are all declared "
                                  "(pip install -e '.[test]'); --allow-skips accepts skips",
                                  red=True)


@pytest.fixture(scope="session")
def trained_mlp_run(tmp_path_factory) -> Path:
    """One run of tests/specs/mlp.yaml, 200 iterations with the spec's seed (7), shared by every
    test that only needs *some* trained weights and run directory (predict, test, export...).
    Read-only: a test that writes into a run directory copies it first (`shutil.copytree`)."""
    out = tmp_path_factory.mktemp("shared") / "mlp"
    r = netc("train", MLP, "--max-iter", 200, "--out", out)
    assert r.returncode == 0, r.stderr
    before = _tree_state(out)
    yield out
    assert _tree_state(out) == before, "a test changed the shared run directory"


def _tree_state(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def write_spec(tmp_path):
    def write(text: str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return write


@pytest.fixture
def check_spec(write_spec):
    """Validate + plan (both phases) a spec text; return (spec, plans, formatted diagnostics)."""
    from netc.compiler.catalogue import layer_models
    from netc.compiler.plan import plan_all_phases
    from netc.spec.net import parse_spec

    def check(text: str, phase=None, batch=None, name="spec.yaml"):
        path = write_spec(text, name)
        spec = parse_spec(str(path), layer_models(), display_name=name)
        plans = plan_all_phases(spec, phase=phase, batch=batch) if spec.layers else {}
        return spec, plans, [d.format() for d in spec.diagnostics.sorted()]

    return check


def errors_of(check_spec, text: str, **kw) -> list[str]:
    """The formatted error lines `check_spec` reports for a spec text."""
    _, _, diags = check_spec(text, **kw)
    return [d for d in diags if ": error: " in d]


def warnings_of(check_spec, text: str, **kw) -> list[str]:
    _, _, diags = check_spec(text, **kw)
    return [d for d in diags if ": warning: " in d]
