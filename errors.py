"""The one user-facing error type of netc. Importing it loads nothing else of netc (an exported
artifact's loader uses it without the spec or compiler packages)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["NetcError"]


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
