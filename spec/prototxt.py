"""Caffe's protobuf TEXT format (``.prototxt``) → netc's YAML mapping.

    data = prototxt_to_data(net_text, solver_text=None)   # plain dicts / lists / scalars
    text = prototxt_to_yaml(net_text, solver_text=None, comment="...")

The reader knows no schema: it turns text-format syntax into plain data the way netc's YAML
mapping spells it, and leaves validation to `netc check`:

- a message ``name { ... }`` (also ``name: { ... }`` and ``name < ... >``) becomes a mapping;
- ``name: value``: double- or single-quoted strings (C escapes; adjacent strings concatenate),
  integers (decimal, ``0x`` hex, leading-``0`` octal), floats (``1e-4``, ``.5``, ``2f``,
  ``inf``/``nan``), ``true``/``false``, and enum identifiers (kept as their name, e.g. ``MAX``);
- a field given several times becomes a list in the order written; a field given once stays a
  scalar (both are valid netc); the list syntax ``name: [1, 2]`` is accepted too;
- ``#`` starts a comment; ``,`` or ``;`` may separate fields;
- NetParameter's repeated ``layer`` is spelled ``layers``; the old ``input:`` / ``input_dim:`` /
  ``input_shape`` header is kept as it is (netc reads it).

Out of scope, reported as errors with line:col: V1 nets (top-level ``layers { type: CONVOLUTION
}``: upgrade them with Caffe's ``upgrade_net_proto_text`` first), extensions (``[ext.name]``),
``Any`` messages. A solver file given beside the net becomes the ``solver:`` section (its ``net``
/ ``train_net`` / ``test_net`` paths are dropped: the net is this document).

Safety: pure Python text processing; nothing is evaluated or imported. The input size, message
nesting depth, number of fields, string and number token lengths are bounded, so a hostile file
costs at most linear time in MAX_BYTES.
"""

from __future__ import annotations

import math
import re
from typing import Any

import yaml

MAX_BYTES = 8 * 1024 * 1024
MAX_DEPTH = 64
MAX_FIELDS = 1_000_000
MAX_NUMBER_CHARS = 64

__all__ = [
    "PrototxtError",
    "parse_prototxt",
    "prototxt_to_data",
    "prototxt_to_yaml",
    "dump_yaml",
]


class PrototxtError(ValueError):
    """Malformed or unsupported text; `line` and `col` are 1-based."""

    def __init__(self, message: str, line: int = 1, col: int = 1, source: str | None = None):
        self.message, self.line, self.col, self.source = message, line, col, source
        where = f"{source}:" if source else ""
        super().__init__(f"{where}{line}:{col}: {message}")


# --- tokens ---------------------------------------------------------------------------------------

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A number as protobuf's tokenizer reads it (sign handled by the parser).
_NUMBER = re.compile(
    r"0[xX][0-9A-Fa-f]+"
    r"|(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?[fF]?"
)
_SPACE = re.compile(r"(?:[ \t\r\n\f\v]+|#[^\n]*)+")
_PUNCT = set("{}<>:;,[]-./")  # "." and "/" only occur in extension names
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v",
                   "\\": "\\", "'": "'", '"': '"', "?": "?"}


class _Tok:
    __slots__ = ("kind", "text", "value", "line", "col")

    def __init__(self, kind: str, text: str, value: Any, line: int, col: int):
        self.kind, self.text, self.value, self.line, self.col = kind, text, value, line, col

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"_Tok({self.kind}, {self.text!r}, {self.line}:{self.col})"


class _Ident(str):
    """An unquoted identifier (an enum name, or a boolean before conversion)."""


def _tokens(text: str, source: str | None) -> list[_Tok]:
    out: list[_Tok] = []
    pos, line, line_start, n = 0, 1, 0, len(text)

    def fail(msg: str, at: int) -> PrototxtError:
        return PrototxtError(msg, line, at - line_start + 1, source)

    while pos < n:
        m = _SPACE.match(text, pos)
        if m:
            chunk = m.group()
            newlines = chunk.count("\n")
            if newlines:
                line += newlines
                line_start = pos + chunk.rindex("\n") + 1
            pos = m.end()
            continue
        col = pos - line_start + 1
        c = text[pos]
        if c in "\"'":
            value, end = _string(text, pos, fail)
            out.append(_Tok("str", text[pos:end], value, line, col))
            pos = end
        elif c.isdigit() or (c == "." and pos + 1 < n and text[pos + 1].isdigit()):
            m = _NUMBER.match(text, pos)
            end = m.end() if m else pos + 1
            # a number must not run into an identifier (`12abc`, `1.2.3`)
            if end < n and (text[end].isalnum() or text[end] in "_."):
                raise fail(f"malformed number '{text[pos:_word_end(text, end)]}'", pos)
            if end - pos > MAX_NUMBER_CHARS:
                raise fail(f"number longer than {MAX_NUMBER_CHARS} characters", pos)
            try:
                value = _number(text[pos:end])
            except ValueError:
                raise fail(f"malformed number '{text[pos:end]}'", pos) from None
            out.append(_Tok("num", text[pos:end], value, line, col))
            pos = end
        elif c.isalpha() or c == "_":
            m = _IDENT.match(text, pos)
            out.append(_Tok("ident", m.group(), _Ident(m.group()), line, col))
            pos = m.end()
        elif c in _PUNCT:
            out.append(_Tok(c, c, None, line, col))
            pos += 1
        else:
            raise fail(f"unexpected character {c!r}", pos)
        if len(out) > 4 * MAX_FIELDS:
            raise fail(f"more than {4 * MAX_FIELDS:,} tokens", pos)
    out.append(_Tok("eof", "", None, line, pos - line_start + 1))
    return out


def _word_end(text: str, pos: int) -> int:
    while pos < len(text) and (text[pos].isalnum() or text[pos] in "_."):
        pos += 1
    return pos


def _number(tok: str) -> int | float:
    if tok[:2] in ("0x", "0X"):
        return int(tok, 16)
    if re.fullmatch(r"[0-9]+", tok):
        if len(tok) > 1 and tok[0] == "0":  # protobuf reads a leading 0 as octal
            return int(tok, 8)  # ValueError for `09`, which protobuf refuses too
        return int(tok)
    return float(tok.rstrip("fF"))


def _string(text: str, start: int, fail) -> tuple[str, int]:
    quote = text[start]
    pos, n = start + 1, len(text)
    parts: list[str] = []
    while True:
        if pos >= n or text[pos] == "\n":
            raise fail("unterminated string", start)
        c = text[pos]
        if c == quote:
            return "".join(parts), pos + 1
        if c != "\\":
            parts.append(c)
            pos += 1
            continue
        if pos + 1 >= n:
            raise fail("unterminated string", start)
        e = text[pos + 1]
        if e in _SIMPLE_ESCAPES:
            parts.append(_SIMPLE_ESCAPES[e])
            pos += 2
        elif e in "01234567":
            m = re.compile(r"[0-7]{1,3}").match(text, pos + 1)
            parts.append(chr(int(m.group(), 8)))
            pos = m.end()
        elif e in "xX":
            m = re.compile(r"[0-9A-Fa-f]{1,2}").match(text, pos + 2)
            if not m:
                raise fail("\\x escape without hex digits", pos)
            parts.append(chr(int(m.group(), 16)))
            pos = m.end()
        elif e in "uU":
            width = 4 if e == "u" else 8
            digits = text[pos + 2: pos + 2 + width]
            if not re.fullmatch("[0-9A-Fa-f]{" + str(width) + "}", digits):
                raise fail(f"\\{e} escape needs {width} hex digits", pos)
            code = int(digits, 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise fail(f"\\{e}{digits} is not a Unicode character", pos)
            parts.append(chr(code))
            pos += 2 + width
        else:
            raise fail(f"unknown escape '\\{e}'", pos)
    # unreachable


# --- parser ----------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, tokens: list[_Tok], source: str | None):
        self.toks, self.i, self.source, self.fields = tokens, 0, source, 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def next(self) -> _Tok:
        tok = self.toks[self.i]
        if tok.kind != "eof":
            self.i += 1
        return tok

    def error(self, msg: str, tok: _Tok) -> PrototxtError:
        return PrototxtError(msg, tok.line, tok.col, self.source)

    def expect(self, kind: str, what: str) -> _Tok:
        tok = self.next()
        if tok.kind != kind:
            raise self.error(f"expected {what}, got {_describe(tok)}", tok)
        return tok

    def message(self, close: str | None, depth: int) -> dict:
        """Fields up to `close` ('}' or '>') or the end of the text. Values are kept as lists of
        (value, token) pairs (a message's name token, a scalar's first token); `_collapse` turns
        them into netc's data."""
        if depth > MAX_DEPTH:
            raise self.error(f"messages nested deeper than {MAX_DEPTH} levels", self.peek())
        fields: dict[str, list] = {}
        while True:
            tok = self.peek()
            if close is not None and tok.kind == close:
                self.next()
                return fields
            if tok.kind == "eof":
                if close is not None:
                    raise self.error(f"expected '{close}' to close the message, got the end of "
                                     "the text", tok)
                return fields
            if tok.kind == "[":
                raise self.error("extensions and Any messages ([...] field names) are not "
                                 "supported", tok)
            if tok.kind != "ident":
                raise self.error(f"expected a field name, got {_describe(tok)}", tok)
            self.next()
            self.fields += 1
            if self.fields > MAX_FIELDS:
                raise self.error(f"more than {MAX_FIELDS:,} fields", tok)
            values = fields.setdefault(str(tok.text), [])
            self.field_value(tok, values, depth)
            if self.peek().kind in (",", ";"):
                self.next()

    def field_value(self, name: _Tok, values: list, depth: int) -> None:
        tok = self.peek()
        if tok.kind in ("{", "<"):
            self.next()
            values.append((self.message("}" if tok.kind == "{" else ">", depth + 1), name))
            return
        if tok.kind != ":":
            raise self.error(f"expected ':' or '{{' after field '{name.text}', got "
                             f"{_describe(tok)}", tok)
        self.next()
        tok = self.peek()
        if tok.kind in ("{", "<"):
            self.next()
            values.append((self.message("}" if tok.kind == "{" else ">", depth + 1), name))
            return
        if tok.kind == "[":  # list syntax: name: [v, v, ...] or name: [{...}, {...}]
            self.next()
            if self.peek().kind == "]":
                self.next()
                return
            while True:
                t = self.peek()
                if t.kind in ("{", "<"):
                    self.next()
                    values.append((self.message("}" if t.kind == "{" else ">", depth + 1), name))
                else:
                    values.append((self.scalar(), t))
                sep = self.next()
                if sep.kind == "]":
                    return
                if sep.kind != ",":
                    raise self.error(f"expected ',' or ']' in the list of '{name.text}', got "
                                     f"{_describe(sep)}", sep)
        values.append((self.scalar(), tok))

    def scalar(self) -> Any:
        tok = self.next()
        if tok.kind == "str":
            parts = [tok.value]
            while self.peek().kind == "str":  # "a" "b" is "ab", as in C
                parts.append(self.next().value)
            return "".join(parts)
        negative = False
        if tok.kind == "-":
            negative = True
            tok = self.next()
            if tok.kind == "ident" and tok.text.lower() not in ("inf", "infinity", "nan"):
                raise self.error(f"'-' must be followed by a number, got {_describe(tok)}", tok)
        if tok.kind == "num":
            return -tok.value if negative else tok.value
        if tok.kind == "ident":
            low = tok.text.lower()
            if low in ("inf", "infinity"):
                return -math.inf if negative else math.inf
            if low == "nan":
                return math.nan
            if tok.text in ("true", "True"):
                return True
            if tok.text in ("false", "False"):
                return False
            return tok.value  # an enum name
        raise self.error(f"expected a value, got {_describe(tok)}", tok)


def _describe(tok: _Tok) -> str:
    if tok.kind == "eof":
        return "the end of the text"
    if tok.kind == "str":
        return f"the string {tok.text}"
    if tok.kind == "num":
        return f"the number {tok.text}"
    if tok.kind == "ident":
        return f"'{tok.text}'"
    return f"'{tok.text}'"


def _collapse(fields: dict[str, list]) -> dict:
    out: dict = {}
    for key, items in fields.items():
        values = [_plain(v) for v, _ in items]
        if not values:  # `name: []`
            out[key] = []
        else:
            out[key] = values[0] if len(values) == 1 else values
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return _collapse(value)
    if isinstance(value, _Ident):
        return str(value)
    return value


def _parse(text: str | bytes, source: str | None) -> dict[str, list]:
    if isinstance(text, bytes):
        if len(text) > MAX_BYTES:
            raise PrototxtError(f"file is {len(text):,} bytes, more than the {MAX_BYTES:,} "
                                "allowed", source=source)
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PrototxtError(f"file is not UTF-8 text ({e.reason} at byte {e.start})",
                                source=source) from None
    if len(text) > MAX_BYTES:
        raise PrototxtError(f"text is {len(text):,} characters, more than the {MAX_BYTES:,} "
                            "allowed", source=source)
    if text.startswith("\ufeff"):
        text = text[1:]
    parser = _Parser(_tokens(text, source), source)
    return parser.message(None, 0)


def parse_prototxt(text: str | bytes, *, source: str | None = None) -> dict:
    """Any text-format message as plain data (no netc renaming): fields given once are
    scalars or mappings, fields given several times lists. Raises PrototxtError."""
    return _collapse(_parse(text, source))


def _net_data(text: str | bytes, source: str | None) -> dict:
    fields = _parse(text, source)
    if "layers" in fields:
        first = fields["layers"][0]
        value, tok = first
        kind = value.get("type") if isinstance(value, dict) else None
        shown = f" (type: {kind[0][0]})" if kind else ""
        raise PrototxtError(
            f"V1 net: top-level 'layers'{shown} is Caffe's deprecated V1LayerParameter, which "
            "netc does not read; upgrade the file with Caffe's tools/upgrade_net_proto_text "
            "(it writes 'layer' blocks with string types)", tok.line, tok.col, source)
    for value, tok in fields.get("layer", []):
        if not isinstance(value, dict):
            raise PrototxtError("'layer' must be a message: layer { ... }", tok.line, tok.col,
                                source)
        for kind, ktok in value.get("type", []):
            if isinstance(kind, _Ident):
                raise PrototxtError(
                    f"layer type {kind} is unquoted: V1 enum types (CONVOLUTION, ...) are not "
                    f"supported; LayerParameter's type is a string such as \"Convolution\"",
                    ktok.line, ktok.col, source)
    data = _collapse(fields)
    out: dict = {}
    for key, value in data.items():
        if key == "layer":
            out["layers"] = value if isinstance(value, list) else [value]
        else:
            out[key] = value
    return out


_NET_PATH_FIELDS = ("net", "train_net", "test_net")


def prototxt_to_data(net_text: str | bytes, solver_text: str | bytes | None = None, *,
                     net_source: str | None = None, solver_source: str | None = None) -> dict:
    """A NetParameter in text format (and optionally its SolverParameter) as netc's YAML data.
    Raises PrototxtError (with line:col, and the source name when given)."""
    data = _net_data(net_text, net_source)
    if solver_text is not None:
        solver = parse_prototxt(solver_text, source=solver_source)
        for key in ("net_param", "train_net_param", "test_net_param"):
            if key in solver:
                raise PrototxtError(f"solver: inline nets ({key}) are not supported; give the "
                                    "net as its own file", source=solver_source)
        data["solver"] = {k: v for k, v in solver.items() if k not in _NET_PATH_FIELDS}
    return data


# --- YAML emitter ---------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """SafeDumper that indents list items under their key (netc's style) and quotes every string
    that netc's YAML 1.2 core-schema reader would take for a number, boolean or null."""

    def increase_indent(self, flow: bool = False, indentless: bool = False):
        return super().increase_indent(flow, False)


for _tag, _regexp, _first in [
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    ("float", r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
              r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", "-+0123456789."),
]:
    _Dumper.add_implicit_resolver("tag:yaml.org,2002:" + _tag, re.compile(_regexp), list(_first))


_BREAKS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff\ud800-\udfff]")


def _represent_str(dumper: yaml.SafeDumper, data: str):
    # PyYAML may write NEL, LS, PS raw in plain or single-quoted scalars, where a reader takes
    # them for line breaks: such strings are double-quoted, which escapes them.
    style = '"' if _BREAKS.search(data) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)


class _Block(dict):
    """A mapping always written in block style (the document, each layer, the solver)."""


_Dumper.add_representer(
    _Block, lambda dumper, data: dumper.represent_mapping("tag:yaml.org,2002:map", data,
                                                          flow_style=False))


def _blocks(data: Any) -> Any:
    if not isinstance(data, dict):
        return data
    out = _Block(data)
    if isinstance(out.get("layers"), list):
        out["layers"] = [_Block(x) if isinstance(x, dict) else x for x in out["layers"]]
    if isinstance(out.get("solver"), dict):
        out["solver"] = _Block(out["solver"])
    return out


def dump_yaml(data: Any, comment: str | None = None) -> str:
    """netc-style YAML for `data` (field order kept), with `comment` as a `#` header: the document,
    each layer and the solver in block style, small leaf mappings and lists in flow style."""
    body = yaml.dump(_blocks(data), Dumper=_Dumper, sort_keys=False, default_flow_style=None,
                     allow_unicode=True, width=100)
    if not comment:
        return body
    head = "".join(f"# {line}".rstrip() + "\n" for line in comment.strip("\n").splitlines())
    return head + body


def prototxt_to_yaml(net_text: str | bytes, solver_text: str | bytes | None = None, *,
                     comment: str | None = None, net_source: str | None = None,
                     solver_source: str | None = None) -> str:
    """Translate a Caffe net (and optionally its solver) from text format to netc YAML."""
    data = prototxt_to_data(net_text, solver_text, net_source=net_source,
                            solver_source=solver_source)
    return dump_yaml(data, comment)
