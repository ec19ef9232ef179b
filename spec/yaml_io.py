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
from yaml.events import AliasEvent, ScalarEvent, SequenceStartEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from netc.spec.errors import Path

MAX_BYTES = 8 * 1024 * 1024
MAX_DEPTH = 64

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


# What the composer and the builder refuse. A spec is at most MAX_BYTES; MAX_NODES is the number of
# nodes written in it (keys, values, list items: ~10 per small layer, so ~50,000 small layers; a
# 100,000-layer file is refused in seconds), counted while composing so that a file that is
# too big is refused before it costs memory. Aliases (`*a`) and merge keys (`<<: *a`) may add at most
# MAX_ALIAS_NODES more nodes (the "billion laughs" is refused within that many). MAX_DEPTH bounds
# nesting, merge chains included (Python's recursion would end first otherwise).
MAX_NODES = 500_000
MAX_ALIAS_NODES = 200_000


class _BoundedComposer(Composer):
    """Composer that counts nodes and nesting as it composes, refusing a document past MAX_NODES or
    MAX_DEPTH before composing the rest; `!` (the non-specific tag) makes a string, as YAML says."""

    _depth = 0
    nodes = 0

    def compose_node(self, parent, index):  # noqa: D401 - PyYAML's hook
        event = self.peek_event()
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _MarkedError(f"the document has more than {MAX_NODES:,} YAML nodes (keys, values "
                               f"and list items); refusing to read it", event.start_mark)
        if isinstance(event, AliasEvent):
            self.get_event()
            if event.anchor not in self.anchors:
                raise _MarkedError(f"found undefined alias '{event.anchor}'", event.start_mark)
            return self.anchors[event.anchor]
        if event.anchor is not None and event.anchor in self.anchors:
            first = self.anchors[event.anchor].start_mark.line + 1
            raise _MarkedError(f"anchor '&{event.anchor}' is defined twice (first on line {first})",
                               event.start_mark)
        if isinstance(event, ScalarEvent):
            return self.compose_scalar_node(event.anchor)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _MarkedError(f"YAML nesting is deeper than {MAX_DEPTH} levels", event.start_mark)
            if isinstance(event, SequenceStartEvent):
                return self.compose_sequence_node(event.anchor)
            return self.compose_mapping_node(event.anchor)
        finally:
            self._depth -= 1

    def compose_scalar_node(self, anchor):
        event = self.get_event()
        tag = event.tag
        if tag == "!":
            tag = STR
        elif tag is None:
            tag = self.resolve(ScalarNode, event.value, event.implicit)
        node = ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)
        if anchor is not None:
            self.anchors[anchor] = node
        return node

    # No path resolvers: these PyYAML hooks do nothing here.
    def descend_resolver(self, current_node, current_index):
        pass

    def ascend_resolver(self):
        pass

    def resolve(self, kind, value, implicit):
        if kind is not ScalarNode:
            return SEQ if kind is SequenceNode else MAP
        if implicit[0]:
            for tag, regexp in self.yaml_implicit_resolvers.get(value[:1], ()):
                if regexp.match(value):
                    return tag
        return STR


class _MarkedError(Exception):
    def __init__(self, message: str, mark):
        super().__init__(message)
        self.message = message
        self.line = mark.line + 1 if mark else 1
        self.col = mark.column + 1 if mark else 1


class _PyLoader(Reader, Scanner, Parser, _BoundedComposer, _CoreResolver):
    def __init__(self, stream):
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        _BoundedComposer.__init__(self)
        _CoreResolver.__init__(self)


if yaml.__with_libyaml__:  # libyaml's parser (~20x faster) feeding the same Python composer
    from yaml._yaml import CParser

    class _CLoader(_BoundedComposer, CParser, _CoreResolver):
        def __init__(self, stream):
            CParser.__init__(self, stream)
            _BoundedComposer.__init__(self)
            _CoreResolver.__init__(self)

    _Loader = _CLoader
else:  # pragma: no cover - PyYAML built without libyaml
    _Loader = _PyLoader


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


_SHORT = {t: "!!" + t[len(_TAG):] for t in (STR, INT, FLOAT, BOOL, NULL, MAP, SEQ)}
_CORE_FORMS = {  # what an explicitly tagged scalar may hold (YAML 1.2 core schema)
    BOOL: (re.compile(r"true|True|TRUE|false|False|FALSE"), "a boolean (true or false)"),
    NULL: (re.compile(r"~|null|Null|NULL|"), "null (null or ~)"),
    INT: (re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+"), "an integer"),
    FLOAT: (re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                       r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)"), "a number"),
}


def _tag_name(tag: str) -> str:
    return _SHORT.get(tag, tag)


class _Builder:
    """Plain data from composed nodes. `written` is the number of nodes the composer saw; nodes
    that aliases and merge keys add beyond it are bounded by MAX_ALIAS_NODES."""

    def __init__(self, written: int) -> None:
        self.positions: dict[Path, tuple[int, int]] = {}
        self.count = 0
        self.limit = written + MAX_ALIAS_NODES

    def _tick(self, node: Node, n: int = 1) -> None:
        self.count += n
        if self.count > self.limit:
            raise YamlError(
                f"aliases ('*name') and merge keys ('<<') expand the document by more than "
                f"{MAX_ALIAS_NODES:,} nodes; refusing to read it",
                *_pos(node),
            )

    def build(self, node: Node, path: Path, depth: int = 0) -> Any:
        self._tick(node)
        if depth > MAX_DEPTH:  # only through aliases: the composer bounds what is written
            raise YamlError(f"YAML nesting through aliases ('*name') or merge keys ('<<') is deeper "
                            f"than {MAX_DEPTH} levels", *_pos(node))
        if isinstance(node, ScalarNode):
            return self.scalar(node)
        if isinstance(node, SequenceNode):
            if node.tag != SEQ:
                raise YamlError(f"tag '{_tag_name(node.tag)}' is not allowed on a list", *_pos(node))
            out = []
            for i, item in enumerate(node.value):
                self.positions.setdefault(path + (i,), _pos(item))
                out.append(self.build(item, path + (i,), depth + 1))
            return out
        if isinstance(node, MappingNode):
            if node.tag != MAP:
                raise YamlError(f"tag '{_tag_name(node.tag)}' is not allowed on a mapping",
                                *_pos(node))
            return self.mapping(node, path, depth)
        raise YamlError("unsupported YAML node", *_pos(node))  # pragma: no cover

    def mapping(self, node: MappingNode, path: Path, depth: int) -> dict:
        if depth > MAX_DEPTH:
            raise YamlError(f"merge keys ('<<') nest deeper than {MAX_DEPTH} levels", *_pos(node))
        out: dict = {}
        seen: dict = {}
        merged: list[MappingNode] = []
        for key_node, value_node in node.value:
            self._tick(key_node)
            if key_node.tag == MERGE:
                sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                for src in sources:
                    if not isinstance(src, MappingNode) or src.tag != MAP:
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
            self._tick(src)
            for key, value in self.mapping(src, path, depth + 1).items():
                out.setdefault(key, value)
        return out

    @staticmethod
    def scalar(node: ScalarNode) -> Any:
        """The value of a scalar. A tag, resolved or explicit (`!!bool yes`), is honoured only when
        the text is that type's YAML 1.2 core-schema form; anything else is refused, never misread."""
        v, tag = node.value, node.tag
        if tag == STR:
            return v
        form = _CORE_FORMS.get(tag)
        if form is None:
            if tag in (SEQ, MAP):
                raise YamlError(f"tag '{_tag_name(tag)}' is not allowed on a scalar", *_pos(node))
            raise YamlError(f"tag '{tag}' is not allowed", *_pos(node))
        pattern, what = form
        if pattern.fullmatch(v) is None:
            raise YamlError(f"'{v}' is not {what}", *_pos(node))
        if tag == NULL:
            return None
        if tag == BOOL:
            return v.lower() == "true"
        if tag == INT:
            if v.startswith("0o"):
                return int(v[2:], 8)
            if v.startswith("0x"):
                return int(v[2:], 16)
            return int(v)
        s = v.lower()
        if s.endswith("inf"):
            return -math.inf if s.startswith("-") else math.inf
        if s.endswith("nan"):
            return math.nan
        return float(v)


# Characters YAML allows in a stream (YAML 1.2, 5.1): tab, LF, CR, printable ASCII, NEL and the
# printable Unicode planes. Anything else is binary data (or a lone surrogate).
_NON_PRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

# YAML 1.2, 5.2: the encoding from a byte order mark, else from where the first ASCII character's
# zero bytes are.
_ENCODINGS = [
    (b"\x00\x00\xfe\xff", "utf-32"), (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\xfe\xff", "utf-16"), (b"\xff\xfe", "utf-16"), (b"\xef\xbb\xbf", "utf-8-sig"),
]


def _encoding(data: bytes) -> str:
    for bom, codec in _ENCODINGS:
        if data.startswith(bom):
            return codec
    if len(data) >= 4 and data[:3] == b"\0\0\0" and data[3]:
        return "utf-32-be"
    if len(data) >= 4 and data[0] and data[1:4] == b"\0\0\0":
        return "utf-32-le"
    if len(data) >= 2 and not data[0] and data[1]:
        return "utf-16-be"
    if len(data) >= 2 and data[0] and not data[1] and (len(data) == 2 or data[2]):
        return "utf-16-le"
    return "utf-8"


def _decode(data: bytes) -> str:
    codec = _encoding(data)
    try:
        return data.decode(codec)
    except UnicodeDecodeError as e:
        name = {"utf-8-sig": "UTF-8"}.get(codec, codec.upper().replace("-BE", "").replace("-LE", ""))
        before = data[:e.start]
        if codec.startswith("utf-8"):  # line and column of the bad byte
            line = before.count(b"\n") + 1
            col = len(before[before.rfind(b"\n") + 1:].decode("utf-8", "replace")) + 1
        else:
            line, col = 1, 1
        raise YamlError(f"file is not {name} text: byte 0x{data[e.start]:02x} at offset {e.start} "
                        f"({e.reason}); is this a binary file?", line, col) from None


def _line_col(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def read_yaml(text: str | bytes, *, max_bytes: int = MAX_BYTES) -> YamlDocument:
    """Parse one YAML document safely; raise YamlError with a position on any problem.

    Bytes are decoded as YAML says (UTF-8, or UTF-16/32 by byte order mark or zero bytes)."""
    if isinstance(text, bytes):
        if len(text) > max_bytes:
            raise YamlError(f"file is {len(text):,} bytes, more than the {max_bytes:,} allowed")
        text = _decode(text)
    elif len(text) > max_bytes:
        raise YamlError(f"file is {len(text):,} characters, more than the {max_bytes:,} allowed")
    bad = _NON_PRINTABLE.search(text)
    if bad is not None:
        raise YamlError(f"invalid YAML: character #x{ord(bad.group()):04x} is not allowed (is this "
                        f"a binary file?)", *_line_col(text, bad.start()))
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        written = loader.nodes
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
    builder = _Builder(written)
    builder.positions[()] = _pos(node)
    data = builder.build(node, ())
    return YamlDocument(data, builder.positions)
