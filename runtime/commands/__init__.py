"""One module per command; each has `run(...) -> int` (the exit code) and raises a NetcError
subclass for anything the user can fix. cli.py parses flags and calls these."""
