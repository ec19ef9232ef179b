"""The suite fails when a test is skipped (tests/conftest.py's guard): a broken install that lacks
jax or torch must not report "N passed, M skipped" with exit status 0. Each case runs pytest on a
made-up suite whose conftest is this suite's conftest."""

from __future__ import annotations

import pytest
from conftest import ROOT

CONFTEST = (ROOT / "tests" / "conftest.py").read_text()


@pytest.fixture
def suite(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_fine="def test_fine():\n    assert True\n")
    return pytester


def test_skips_fail_the_run_unless_allowed(suite):
    suite.makepyfile(test_needs="""
        import pytest
        no_such = pytest.importorskip("no_such_module_netc_guard")

        def test_uses_it():
            assert no_such
    """, test_plat="""
        import pytest

        @pytest.mark.skipif(True, reason="not on this platform")
        def test_platform():
            pass
    """)
    r = suite.runpytest_subprocess()
    assert r.ret == pytest.ExitCode.TESTS_FAILED, r.stdout.str()
    r.assert_outcomes(passed=1, skipped=2)
    out = r.stdout.str()
    assert "netc: skipped tests fail the run" in out
    assert "test_needs.py: could not import 'no_such_module_netc_guard'" in out
    assert "test_plat.py::test_platform: not on this platform" in out
    # an explicit opt-out
    r = suite.runpytest_subprocess("--allow-skips")
    assert r.ret == pytest.ExitCode.OK, r.stdout.str()
    r.assert_outcomes(passed=1, skipped=2)
    assert "skipped tests fail" not in r.stdout.str()


def test_a_run_without_skips_passes(suite):
    r = suite.runpytest_subprocess()
    assert r.ret == pytest.ExitCode.OK, r.stdout.str()
    r.assert_outcomes(passed=1)
    assert "skipped tests fail" not in r.stdout.str()
