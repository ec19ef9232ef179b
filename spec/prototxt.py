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

Legacy forms and forks (spec/caffe_v1.py): V1 nets (top-level ``layers { type: CONVOLUTION
blobs_lr: 1 weight_decay: 1 }``) are upgraded as Caffe's upgrade_proto.cpp does (string types,
``param { lr_mult decay_mult }``); ``pooling_param.ceil_mode`` becomes ``round_mode``; SegNet's
``BN`` becomes BatchNorm + Scale (or Scale alone in INFERENCE mode). A ``*_param`` block on a
type that does not read it is dropped with a warning; layer types and fields netc does not know
are kept and reported as warnings with line:col (`netc check` then refuses them). ``#``
comments are kept in the YAML next to the layer or field they sit in or before.

Out of scope, reported as errors with line:col: V0 nets, extensions (``[ext.name]``), ``Any``
messages. A solver file given beside the net becomes the ``solver:`` section (its ``net``
/ ``train_net`` / ``test_net`` paths are dropped: the net is this document).

The way back: ``data_to_prototxt(data)`` writes netc data as a Caffe net (``solver_to_prototxt``
its solver), refusing netc extensions by name (NotCaffeError).

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
    "PrototxtWarning",
    "NotCaffeError",
    "data_to_prototxt",
    "solver_to_prototxt",
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


def _tokens(text: str, source: str | None, comments: list | None = None) -> list[_Tok]:
    """The tokens of `text`; `comments` (if given) receives (line, text after '#') for each
    comment."""
    out: list[_Tok] = []
    pos, line, line_start, n = 0, 1, 0, len(text)

    def fail(msg: str, at: int) -> PrototxtError:
        return PrototxtError(msg, line, at - line_start + 1, source)

    while pos < n:
        m = _SPACE.match(text, pos)
        if m:
            chunk = m.group()
            if comments is not None and "#" in chunk:
                for c in re.finditer(r"#([^\n]*)", chunk):
                    comments.append((line + chunk.count("\n", 0, c.start()), c.group(1)))
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
        self.spans: list[tuple[str, int, int]] = []  # top-level fields: (name, first, last line)

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
            if depth == 0:
                self.spans.append((str(tok.text), tok.line, self.toks[self.i - 1].line))
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


class _Parsed:
    """A parse: the raw fields, the top-level spans and the comments."""

    def __init__(self, fields: dict, spans: list, comments: list):
        self.fields, self.spans, self.comments = fields, spans, comments


def _parse_full(text: str | bytes, source: str | None) -> _Parsed:
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
    comments: list = []
    parser = _Parser(_tokens(text, source, comments), source)
    fields = parser.message(None, 0)
    return _Parsed(fields, parser.spans, comments)


def _parse(text: str | bytes, source: str | None) -> dict[str, list]:
    return _parse_full(text, source).fields


def parse_prototxt(text: str | bytes, *, source: str | None = None) -> dict:
    """Any text-format message as plain data (no netc renaming): fields given once are
    scalars or mappings, fields given several times lists. Raises PrototxtError."""
    return _collapse(_parse(text, source))


class PrototxtWarning:
    """A problem the import does not stop for (a stray `*_param`, a layer type netc lacks)."""

    def __init__(self, message: str, line: int, col: int, source: str | None):
        self.message, self.line, self.col, self.source = message, line, col, source

    def __str__(self) -> str:
        where = f"{self.source}:" if self.source else ""
        return f"{where}{self.line}:{self.col}: warning: {self.message}"

    __repr__ = __str__


def _upgraded(parsed: _Parsed, source: str | None, warnings: list | None) -> tuple[dict, list]:
    """Raw net fields with V1 layers upgraded and fork additions translated; returns
    (fields, origin) where origin[k] is the index of the written layer k in the file's layers."""
    from netc.compiler.catalogue import layer_models
    from netc.spec.caffe_v1 import UpgradeError, fork_fixes, layer_problems, upgrade_v1_layer
    from netc.spec.net import CAFFE_LAYER_TYPES

    fields = parsed.fields

    def fail(e: UpgradeError) -> PrototxtError:
        return PrototxtError(e.message, e.tok.line, e.tok.col, source)

    if "layers" in fields and "layer" in fields:
        tok = fields["layers"][0][1]
        raise PrototxtError("the net has both 'layer' (current) and 'layers' (V1) blocks; Caffe "
                            "refuses such an inconsistent NetParameter too", tok.line, tok.col,
                            source)
    v1 = "layers" in fields
    raw = fields.get("layers" if v1 else "layer", [])
    layers: list = []
    origin: list[int] = []
    models = layer_models()
    for index, (value, tok) in enumerate(raw):
        if not isinstance(value, dict):
            raise PrototxtError(f"'{'layers' if v1 else 'layer'}' must be a message: "
                                f"{'layers' if v1 else 'layer'} {{ ... }}", tok.line, tok.col,
                                source)
        if v1:
            try:
                value = upgrade_v1_layer(value)
            except UpgradeError as e:
                raise fail(e) from None
        else:
            for kind, ktok in value.get("type", []):
                if isinstance(kind, _Ident):
                    raise PrototxtError(
                        f"layer type {kind} is unquoted: V1 enum types (CONVOLUTION, ...) belong "
                        "in V1 'layers' blocks; LayerParameter's type is a string such as "
                        "\"Convolution\"", ktok.line, ktok.col, source)
        try:
            produced = fork_fixes(value, _Ident)
        except UpgradeError as e:
            raise fail(e) from None
        for layer in produced:
            for _severity, ptok, message in layer_problems(layer, models, CAFFE_LAYER_TYPES):
                ptok = ptok or tok
                if warnings is not None:
                    warnings.append(PrototxtWarning(message, ptok.line, ptok.col, source))
            layers.append((layer, tok))
            origin.append(index)
    out = {}
    for key, items in fields.items():
        if key in ("layer", "layers"):
            out["layer"] = layers
        else:
            out[key] = items
    return out, origin


def _net_data(text: str | bytes, source: str | None, warnings: list | None = None,
              parsed: _Parsed | None = None) -> tuple[dict, list]:
    parsed = parsed or _parse_full(text, source)
    fields, origin = _upgraded(parsed, source, warnings)
    data = _collapse(fields)
    out: dict = {}
    for key, value in data.items():
        if key == "layer":
            out["layers"] = value if isinstance(value, list) else [value]
        else:
            out[key] = value
    return out, origin


_NET_PATH_FIELDS = ("net", "train_net", "test_net")


def _add_solver(data: dict, solver_text, solver_source) -> None:
    solver = parse_prototxt(solver_text, source=solver_source)
    for key in ("net_param", "train_net_param", "test_net_param"):
        if key in solver:
            raise PrototxtError(f"solver: inline nets ({key}) are not supported; give the "
                                "net as its own file", source=solver_source)
    data["solver"] = {k: v for k, v in solver.items() if k not in _NET_PATH_FIELDS}


def prototxt_to_data(net_text: str | bytes, solver_text: str | bytes | None = None, *,
                     net_source: str | None = None, solver_source: str | None = None,
                     warnings: list | None = None) -> dict:
    """A NetParameter in text format (and optionally its SolverParameter) as netc's YAML data.
    V1 nets are upgraded and forks' additions translated (spec/caffe_v1.py). Raises
    PrototxtError (with line:col, and the source name when given); what the import does not stop
    for is appended to `warnings` as PrototxtWarning (file:line:col)."""
    data, _ = _net_data(net_text, net_source, warnings)
    if solver_text is not None:
        _add_solver(data, solver_text, solver_source)
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
                     solver_source: str | None = None, warnings: list | None = None,
                     keep_comments: bool = True) -> str:
    """Translate a Caffe net (and optionally its solver) from text format to netc YAML. The
    files' ``#`` comments are kept (unless `keep_comments` is false): a comment inside or before a
    layer goes before that layer, one before a header or solver field before that field, the rest
    at the end. Warnings go to `warnings` (see prototxt_to_data)."""
    parsed = _parse_full(net_text, net_source)
    data, origin = _net_data(None, net_source, warnings, parsed)
    anchors = _anchors(parsed, origin, "top") if keep_comments else []
    if solver_text is not None:
        sparsed = _parse_full(solver_text, solver_source)
        solver = _collapse(sparsed.fields)
        for key in ("net_param", "train_net_param", "test_net_param"):
            if key in solver:
                raise PrototxtError(f"solver: inline nets ({key}) are not supported; give the "
                                    "net as its own file", source=solver_source)
        data["solver"] = {k: v for k, v in solver.items() if k not in _NET_PATH_FIELDS}
        if keep_comments:
            anchors += [(a, t) for a, t in _anchors(sparsed, None, "solver")
                        if a[0] != "solver" or a[1] not in _NET_PATH_FIELDS]
    return _insert_comments(dump_yaml(data, comment), anchors)


def _anchors(parsed: _Parsed, origin: list | None, where: str) -> list:
    """(anchor, text) per comment: ("layer", k) for written layer k, (where, key) for a header or
    solver field, ("end",) after everything."""
    first_out: dict[int, int] = {}
    for k, i in enumerate(origin or []):
        first_out.setdefault(i, k)
    spans = []
    count = 0
    for name, _start, end in parsed.spans:
        if name in ("layer", "layers") and origin is not None:
            spans.append((end, ("layer", first_out.get(count, -1))))
            count += 1
        else:
            spans.append((end, (where, name)))
    out = []
    for line, text in parsed.comments:
        anchor = next((a for end, a in spans if end >= line), ("end",))
        if anchor == ("layer", -1):
            anchor = ("end",)
        out.append((anchor, text))
    return out


_TOP_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):")
_SOLVER_KEY = re.compile(r"^  ([A-Za-z_][A-Za-z0-9_]*):")


def _insert_comments(body: str, anchors: list) -> str:
    if not anchors:
        return body
    pending: dict = {}
    for anchor, text in anchors:
        pending.setdefault(anchor, []).append("#" + text.rstrip())
    out: list[str] = []
    section, layer = None, -1
    for line in body.splitlines(keepends=True):
        m = _TOP_KEY.match(line)
        if m:
            section = m.group(1)
            out += [c + "\n" for c in pending.pop(("top", section), [])]
            if section == "solver":
                out += [c + "\n" for c in pending.pop(("solver", None), [])]
        elif section == "layers" and line.startswith("  - "):
            layer += 1
            out += ["  " + c + "\n" for c in pending.pop(("layer", layer), [])]
        elif section == "solver":
            m = _SOLVER_KEY.match(line)
            if m:
                out += ["  " + c + "\n" for c in pending.pop(("solver", m.group(1)), [])]
        out.append(line)
    rest = [c for cs in pending.values() for c in cs]
    return "".join(out) + "".join(c + "\n" for c in rest)


# --- netc data → text format ------------------------------------------------------------------------


class NotCaffeError(ValueError):
    """The data uses a netc extension that Caffe's schema cannot express."""


# Fork layer types the importer reads and the writer may write back.
FORK_LAYER_TYPES = frozenset({"Upsample"})
# netc extensions (spec/messages.py marks them): field → None (any value) or the values that are.
_EXTENSIONS: dict[str, dict[str, Any]] = {
    "convolution_param": {"pad_mode": lambda v: v != "CAFFE", "pad_begin": None, "pad_end": None},
    "data_param": {"shuffle": None, "seq_len": None, "batch_first": None, "split": None,
                   "workers": lambda v: v != 0},
    "transform_param": dict.fromkeys(
        "random_resized_crop flip rotate90 rotate translate color_jitter color_drop gaussian_blur "
        "gaussian_noise cutout sobel".split()),
    "image_data_param": {"split": None},
    "pooling_param": {"pool": lambda v: v == "L2"},
    "recurrent_param": dict.fromkeys(
        "sequence_input batch_first bidirectional merge_mode num_layers dropout output reset_after "
        "output_layer recurrent_weight_filler bptt_steps weight_dropout".split()),
    "upsample_param": {"mode": None},
    "dropout_param": {"spatial": lambda v: v is True},
    "loss_param": {"label_smoothing": lambda v: v != 0},
    "param": {"max_norm": None, "weight_noise": lambda v: v != 0},
    "solver": {"early_stopping": None},
    "*filler": {"gain": None, "type": lambda v: v == "orthogonal"},
}
# Literal-typed fields that caffe.proto declares as strings, not enums.
_STRING_FIELDS = frozenset({"regularization_type", "type", "lr_policy"})
_ENUM_VALUE = re.compile(r"^[A-Z][A-Z0-9_]*$")


def _literal_values(annotation) -> tuple | None:
    from typing import Literal, get_args, get_origin

    stack = [annotation]
    while stack:
        a = stack.pop()
        if get_origin(a) is Literal:
            return get_args(a)
        stack.extend(get_args(a))
    return None


def _is_enum(model, key: str, value: str) -> bool:
    if key in _STRING_FIELDS or not _ENUM_VALUE.match(value):
        return False
    if model is not None and key in model.model_fields:
        values = _literal_values(model.model_fields[key].annotation)
        return bool(values) and all(isinstance(v, str) and _ENUM_VALUE.match(v) for v in values)
    return True  # a field netc does not model: an upper-case identifier was an enum


def _scalar_text(value: Any, enum: bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        if enum:
            return value
        escaped = []
        for c in value:
            if c in "\\\"":
                escaped.append("\\" + c)
            elif c == "\n":
                escaped.append("\\n")
            elif ord(c) < 32 or ord(c) == 127:
                escaped.append(f"\\{ord(c):03o}")
            else:
                escaped.append(c)
        return '"' + "".join(escaped) + '"'
    raise NotCaffeError(f"a value of type {type(value).__name__} has no text-format spelling")


def _message_text(msg: dict, model, indent: int, path: str, out: list[str]) -> None:
    from netc.spec.caffe_v1 import _message_class

    pad = "  " * indent
    section = path.rsplit(".", 1)[-1]
    ext = _EXTENSIONS.get("*filler" if section.endswith("filler") else section, {})
    for key, value in msg.items():
        if key in ext and (ext[key] is None or ext[key](value)):
            raise NotCaffeError(f"{path}.{key}: {value!r} is a netc extension; Caffe has no such "
                                "field or value")
        items = value if isinstance(value, list) else [value]
        sub = None
        if model is not None and key in model.model_fields:
            sub = _message_class(model.model_fields[key].annotation)
        for item in items:
            if isinstance(item, dict):
                out.append(f"{pad}{key} {{")
                _message_text(item, sub, indent + 1, f"{path}.{key}", out)
                out.append(f"{pad}}}")
            elif item is None:
                raise NotCaffeError(f"{path}.{key}: null has no text-format spelling")
            else:
                enum = isinstance(item, str) and _is_enum(model, key, item)
                out.append(f"{pad}{key}: {_scalar_text(item, enum)}")


_HEADER_ORDER = ("name", "input", "input_shape", "input_dim", "force_backward", "state",
                 "debug_info")


def data_to_prototxt(data: dict) -> str:
    """netc YAML data (a net) → Caffe's text format, the inverse of prototxt_to_data for what
    Caffe can express. Raises NotCaffeError naming a netc extension (a layer type Caffe lacks,
    pad_mode, L2 pooling, ...). A `solver:` section is not written here: see
    solver_to_prototxt."""
    from netc.compiler.catalogue import layer_models
    from netc.spec.net import CAFFE_LAYER_TYPES, NetHeader

    out: list[str] = []
    extra = [k for k in data if k not in _HEADER_ORDER and k not in ("layers", "solver")]
    if extra:
        raise NotCaffeError(f"{extra[0]}: not a NetParameter field")
    header = {k: data[k] for k in _HEADER_ORDER if k in data}
    _message_text(header, NetHeader, 0, "net", out)
    layers = data.get("layers") or []
    models = layer_models()
    for i, layer in enumerate(layers if isinstance(layers, list) else [layers]):
        if not isinstance(layer, dict):
            raise NotCaffeError(f"layers[{i}]: not a mapping")
        kind, name = layer.get("type"), layer.get("name", f"#{i + 1}")
        if kind not in CAFFE_LAYER_TYPES and kind not in FORK_LAYER_TYPES:
            raise NotCaffeError(f"layer '{name}': type {kind} is a netc extension; Caffe has no "
                                "such layer type")
        out.append("layer {")
        _message_text(layer, models.get(kind), 1, f"layer '{name}'", out)
        out.append("}")
    return "\n".join(out) + "\n"


def solver_to_prototxt(solver: dict) -> str:
    """A netc `solver:` section → a Caffe solver text (without the `net` path)."""
    from netc.spec.solver import SolverParameter

    out: list[str] = []
    _message_text(solver, SolverParameter, 0, "solver", out)
    return "\n".join(out) + "\n"
