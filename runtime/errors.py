"""The runtime's error type and exit codes (the one user-facing base is netc.spec.errors.NetcError;
the CLI turns any NetcError into its text and exit code in one place)."""

from __future__ import annotations

from netc.errors import NetcError

__all__ = ["NetcError", "RunError", "EXIT_OK", "EXIT_ERROR", "EXIT_DIVERGED", "EXIT_SIGINT",
           "EXIT_SIGTERM"]

EXIT_OK = 0
EXIT_ERROR = 1  # spec, data, checkpoint or usage problems
EXIT_DIVERGED = 3  # training stopped on a non-finite loss
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class RunError(NetcError):
    """A problem with a run the user can fix (spec, solver, data, weights, run directory)."""
