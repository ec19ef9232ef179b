"""Diagnostics: every problem a user can cause, with a location, reported all at once."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Diagnostic:
    """One error or warning: ``FILE:LINE:COL: error: <message>``."""

    severity: str  # "error" | "warning"
    message: str
    file: str = "<spec>"
    line: int = 0
    col: int = 0

    def format(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.severity}: {self.message}"

    def to_json(self) -> dict:
        return {"file": self.file, "line": self.line, "col": self.col, "message": self.message}


class NetcError(Exception):
    """The one user-facing error type: a problem the user can fix. The CLI prints `text()` and
    exits with `code`; nothing else turns errors into messages. `lines` are printed as they are
    (e.g. FILE:LINE:COL diagnostics), then `error: message`. Subclasses name the area (RunError,
    ExportError, DataError, CheckpointError, ...)."""

    code: int = 1

    def __init__(self, message: str = "", *, lines: Sequence[str] | None = None,
                 code: int | None = None):
        super().__init__(message or "\n".join(lines or []))
        self.message = message
        self.lines = list(lines or [])
        if code is not None:
            self.code = code

    def text(self) -> str:
        parts = list(self.lines)
        if self.message:
            parts.append(f"error: {self.message}")
        return "\n".join(parts)


class SpecError(Exception):
    """An error in a spec, raised where it is found; `path` locates it in the YAML document.

    `path` is the key path from the document root, e.g. ("layers", 3, "convolution_param",
    "kernel_size"); the collector turns it into line:column.
    """

    def __init__(self, message: str, path: Path = ()):
        super().__init__(message)
        self.message = message
        self.path = tuple(path)


@dataclass
class Diagnostics:
    """Collects diagnostics for one file; `positions` maps document paths to (line, col)."""

    file: str
    positions: dict[Path, tuple[int, int]] = field(default_factory=dict)
    items: list[Diagnostic] = field(default_factory=list)

    def locate(self, path: Sequence[str | int]) -> tuple[int, int]:
        """Line:column of the longest prefix of `path` that the document has (1-based)."""
        path = tuple(path)
        for n in range(len(path), -1, -1):
            pos = self.positions.get(path[:n])
            if pos is not None:
                return pos
        return (1, 1)

    def _add(self, severity: str, message: str, path: Sequence[str | int]) -> None:
        line, col = self.locate(path)
        d = Diagnostic(severity, message, self.file, line, col)
        if d not in self.items:  # the same problem found in both phases is reported once
            self.items.append(d)

    def error(self, message: str, path: Sequence[str | int] = ()) -> None:
        self._add("error", message, path)

    def warning(self, message: str, path: Sequence[str | int] = ()) -> None:
        self._add("warning", message, path)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity == "warning"]

    def sorted(self) -> list[Diagnostic]:
        return sorted(self.items, key=lambda d: (d.line, d.col))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """" (did you mean 'x'?)" when a choice is close to `word`, else ""."""
    choices = [c for c in choices if isinstance(c, str)]
    low = {c.lower(): c for c in choices}
    if isinstance(word, str) and word.lower() in low and low[word.lower()] != word:
        return f" (did you mean '{low[word.lower()]}'?)"
    match = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""
