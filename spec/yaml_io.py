"""A safe, bounded YAML reader that remembers where every node came from.

- PyYAML's *safe* machinery only (no Python tags, no constructors that run code); tags other than
  YAML's core ones are refused.
- YAML 1.2 core-schema scalars: ``1e-3`` and ``5e-4`` are numbers (PyYAML's YAML 1.1 resolver reads
  them as strings), only ``true``/``false`` are booleans (``NO``, ``on``, ``y`` stay strings).
- Duplicate keys are errors; file size, nesting depth and the number of nodes after alias
  expansion are bounded, so a small file (the "billion laughs") cannot cost much memory or time.
- The result is plain Python data plus a table from key paths to (line, col), 1-based.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from netc.spec.errors import Path

MAX_BYTES = 8 * 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 200_000

_TAG = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL, MAP, SEQ, MERGE = (
    _TAG + t for t in ("str", "int", "float", "bool", "null", "map", "seq", "merge")
)


class _CoreResolver(BaseResolver):
    """YAML 1.2 core schema, plus the `<<` merge key."""


for _tag, _regexp, _first in [
    (BOOL, r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    (NULL, r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    (INT, r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        FLOAT,
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
    (MERGE, r"^<<$", "<"),
]:
    _CoreResolver.add_implicit_resolver(_tag, re.compile(_regexp), list(_first))


class _BoundedComposer(Composer):
    """Composer that refuses documents nested deeper than MAX_DEPTH."""

    _depth = 0

    def compose_node(self, parent, index):  # noqa: D401 - PyYAML's hook
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _MarkedError(f"YAML nesting is deeper than {MAX_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _MarkedError(Exception):
    def __init__(self, message: str, mark):
        super().__init__(message)
        self.message = message
        self.line = mark.line + 1 if mark else 1
        self.col = mark.column + 1 if mark else 1


class _Loader(Reader, Scanner, Parser, _BoundedComposer, _CoreResolver):
    def __init__(self, stream):
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        _BoundedComposer.__init__(self)
        _CoreResolver.__init__(self)


@dataclass
class YamlDocument:
    data: Any
    positions: dict[Path, tuple[int, int]]


class YamlError(Exception):
    """A document that cannot be read at all; carries 1-based line and column."""

    def __init__(self, message: str, line: int = 1, col: int = 1):
        super().__init__(message)
        self.message, self.line, self.col = message, line, col


def _pos(node: Node) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


class _Builder:
    def __init__(self) -> None:
        self.positions: dict[Path, tuple[int, int]] = {}
        self.count = 0

    def build(self, node: Node, path: Path, depth: int = 0) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise YamlError(
                f"document expands to more than {MAX_NODES:,} nodes (through aliases?); "
                "refusing to read it",
                *_pos(node),
            )
        if depth > MAX_DEPTH:
            raise YamlError(f"YAML nesting is deeper than {MAX_DEPTH} levels", *_pos(node))
        if isinstance(node, ScalarNode):
            return self.scalar(node)
        if isinstance(node, SequenceNode):
            if node.tag != SEQ:
                raise YamlError(f"tag '{node.tag}' is not allowed", *_pos(node))
            out = []
            for i, item in enumerate(node.value):
                self.positions.setdefault(path + (i,), _pos(item))
                out.append(self.build(item, path + (i,), depth + 1))
            return out
        if isinstance(node, MappingNode):
            if node.tag != MAP:
                raise YamlError(f"tag '{node.tag}' is not allowed", *_pos(node))
            return self.mapping(node, path, depth)
        raise YamlError("unsupported YAML node", *_pos(node))  # pragma: no cover

    def mapping(self, node: MappingNode, path: Path, depth: int) -> dict:
        out: dict = {}
        seen: dict = {}
        merged: list[MappingNode] = []
        for key_node, value_node in node.value:
            if key_node.tag == MERGE:
                sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                for src in sources:
                    if not isinstance(src, MappingNode):
                        raise YamlError("'<<' merges only mappings", *_pos(src))
                    merged.append(src)
                continue
            if not isinstance(key_node, ScalarNode):
                raise YamlError("mapping keys must be plain scalars", *_pos(key_node))
            key = self.scalar(key_node)
            if not isinstance(key, str | int) or isinstance(key, bool):
                key = str(key_node.value)
            if key in seen:
                line = seen[key][0]
                raise YamlError(f"duplicate key '{key}' (first given on line {line})", *_pos(key_node))
            seen[key] = _pos(key_node)
            self.positions[path + (key,)] = _pos(key_node)
            out[key] = self.build(value_node, path + (key,), depth + 1)
        for src in merged:  # explicit keys win over merged ones
            for key, value in self.mapping(src, path, depth).items():
                out.setdefault(key, value)
        return out

    @staticmethod
    def scalar(node: ScalarNode) -> Any:
        v, tag = node.value, node.tag
        if tag == STR:
            return v
        if tag == NULL:
            return None
        if tag == BOOL:
            return v.lower() == "true"
        if tag == INT:
            s = v.replace("_", "")
            try:
                if s.startswith("0o"):
                    return int(s[2:], 8)
                if s.startswith("0x"):
                    return int(s[2:], 16)
                return int(s)
            except ValueError:
                raise YamlError(f"'{v}' is not an integer", *_pos(node)) from None
        if tag == FLOAT:
            s = v.lower()
            if s.endswith("inf"):
                return -math.inf if s.startswith("-") else math.inf
            if s.endswith("nan"):
                return math.nan
            try:
                return float(v)
            except ValueError:
                raise YamlError(f"'{v}' is not a number", *_pos(node)) from None
        raise YamlError(f"tag '{tag}' is not allowed", *_pos(node))


def read_yaml(text: str | bytes, *, max_bytes: int = MAX_BYTES) -> YamlDocument:
    """Parse one YAML document safely; raise YamlError with a position on any problem."""
    if isinstance(text, bytes):
        if len(text) > max_bytes:
            raise YamlError(f"file is {len(text):,} bytes, more than the {max_bytes:,} allowed")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise YamlError(f"file is not UTF-8 text ({e.reason} at byte {e.start})") from None
    elif len(text) > max_bytes:
        raise YamlError(f"file is {len(text):,} characters, more than the {max_bytes:,} allowed")
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as e:  # a control character: binary data, not text
        line = text.count("\n", 0, e.position) + 1
        col = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        char = e.character if isinstance(e.character, int) else ord(e.character)
        raise YamlError(f"invalid YAML: character #x{char:04x} is not allowed (is this a binary "
                        f"file?)", line, col) from None
    try:
        node = loader.get_single_node()
    except _MarkedError as e:
        raise YamlError(e.message, e.line, e.col) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        msg = " ".join(str(p) for p in (e.context, e.problem) if p)
        raise YamlError(
            f"invalid YAML: {msg}", (mark.line + 1) if mark else 1, (mark.column + 1) if mark else 1
        ) from None
    except yaml.YAMLError as e:
        raise YamlError(f"invalid YAML: {e}") from None
    finally:
        loader.dispose()
    if node is None:
        return YamlDocument(None, {(): (1, 1)})
    builder = _Builder()
    builder.positions[()] = _pos(node)
    data = builder.build(node, ())
    return YamlDocument(data, builder.positions)
