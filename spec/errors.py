"""Diagnostics: every problem a user can cause, with a location, reported all at once."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Diagnostic:
    """One error or warning: ``FILE:LINE:COL: error: <message>``."""

    severity: str  # "error" | "warning"
    message: str
    file: str = "<spec>"
    line: int = 0
    col: int = 0
    path: Path = field(default=(), compare=False, repr=False)  # the document path it was found at

    def format(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.severity}: {self.message}"

    def to_json(self) -> dict:
        return {"file": self.file, "line": self.line, "col": self.col, "message": self.message}


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
        d = Diagnostic(severity, message, self.file, line, col, tuple(path))
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


_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def _numbers_apart(a: str, b: str) -> list[str] | None:
    """The words of `b` that differ from `a` when the two messages differ only in numbers (the
    batch in a shape, an element count), else None."""
    wa, wb = a.split(), b.split()
    if len(wa) != len(wb):
        return None
    words = []
    for x, y in zip(wa, wb):
        if x != y:
            if _NUMBER.sub("#", x) != _NUMBER.sub("#", y):
                return None
            words.append(y.strip(",.;:()'\""))
    return words


def _partner(d: Diagnostic, items: list[Diagnostic]) -> Diagnostic | None:
    here = [x for x in items if (x.severity, x.file, x.line, x.col) == (d.severity, d.file, d.line, d.col)]
    return (next((x for x in here if x.message == d.message), None)
            or next((x for x in here if _numbers_apart(d.message, x.message) is not None), None))


def _names(phases: Sequence[str]) -> str:
    return " and ".join(phases) if len(phases) < 3 else ", ".join(phases[:-1]) + f" and {phases[-1]}"


def merge_phases(found: dict[str, list[Diagnostic]],
                 applies: Callable[[Diagnostic, str], bool]) -> list[Diagnostic]:
    """One list from the diagnostics of several phases (e.g. TRAIN and TEST), each problem once.

    The same message at the same place in every phase where its layer runs is kept as it is.
    Messages at the same place that differ only in numbers (batch 64 in TRAIN, 100 in TEST) become
    one, naming the phases and the other phase's numbers: "... 64×1×28×28 ... (TRAIN and TEST; in
    TEST: 100×1×28×28)". A message found in only some of the phases where its layer runs names
    them: "... (TEST)". `applies(d, phase)` says whether d's layer runs in `phase`."""
    phases = list(found)
    left = {ph: list(items) for ph, items in found.items()}
    merged: list[Diagnostic] = []
    for k, ph in enumerate(phases):
        while left[ph]:
            d = left[ph].pop(0)
            group = {ph: d}
            for other in phases[k + 1:]:
                match = _partner(d, left[other])
                if match is not None:
                    left[other].remove(match)
                    group[other] = match
            merged.append(_combine(group, [p for p in phases if applies(d, p)]))
    return merged


def _combine(group: dict[str, Diagnostic], runs_in: list[str]) -> Diagnostic:
    d = next(iter(group.values()))
    named = list(group)
    if all(x.message == d.message for x in group.values()):
        if set(named) >= set(runs_in):
            return d  # true wherever the layer runs: no phase to name
        return replace(d, message=f"{d.message} ({_names(named)})")
    others = "; ".join(f"in {ph}: {', '.join(_numbers_apart(d.message, x.message))}"
                       for ph, x in group.items() if x.message != d.message)
    return replace(d, message=f"{d.message} ({_names(named)}; {others})")


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """" (did you mean 'x'?)" when a choice is close to `word`, else ""."""
    choices = [c for c in choices if isinstance(c, str)]
    low = {c.lower(): c for c in choices}
    if isinstance(word, str) and word.lower() in low and low[word.lower()] != word:
        return f" (did you mean '{low[word.lower()]}'?)"
    match = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""
