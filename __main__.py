"""The `netc` program (also `python -m netc`): netc.cli's click group, started under netc's
allocator setting when the command computes (runtime/allocator.py). Kept free of heavy imports:
the process may be replaced before the command runs."""

from __future__ import annotations

import sys

# The commands that compile and run JAX programs: the persistent compilation cache (cli.main) and
# the allocator setting are put in force for them
COMPILING = frozenset({"train", "test", "predict", "export", "sample", "time", "inspect"})


def _command(args: list[str]) -> str | None:
    """The subcommand named on a command line (the group's own options are flags)."""
    return next((a for a in args if not a.startswith("-")), None)


def run() -> None:
    if _command(sys.argv[1:]) in COMPILING:
        from netc.runtime.allocator import reexec

        reexec()
    from netc.cli import main

    main()


if __name__ == "__main__":
    run()
