"""Fuzz the loader and validator (issue 8 §1): whatever the bytes, `netc check`'s path (parse_spec
+ plan_all_phases) ends in netc's own diagnostics, each located FILE:LINE:COL, never another
exception. Seeded with the repository's specs; a bounded, derandomized number of examples."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netc.compiler.report import check_file

ROOT = Path(__file__).resolve().parent.parent
SEEDS = sorted(p.read_bytes() for p in [*ROOT.glob("models/*.yaml"), *ROOT.glob("tests/specs/*.yaml")])
LOCATED = re.compile(r"^[^\n]+:\d+:\d+: (error|warning): [^\n]+$")
INTERESTING = [b"\x00", b"\x01", b"\x7f", b"\xff", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"<<: *a",
               b"&a", b"*a", b"!!bool yes", b"!!int x", b"!!binary", b"!!python/object:os.system",
               b"[", b"{", b"]", b"}", b":", b"- ", b"\t", b"\n", b"'", b'"', b"~", b"-1", b"1e999",
               b"0x", b"nan", b"null", b"true", b"2147483648", b"---\n", b"%YAML 1.1\n", b"? "]


@st.composite
def mutated_spec(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "truncate", "dup_line",
                                   "swap_lines", "token"]))
        at = draw(st.integers(0, len(data)))
        if op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif op == "replace" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[at:]
        elif op == "token":
            data[at:at] = draw(st.sampled_from(INTERESTING))
        else:  # duplicate or swap whole lines: duplicate keys, layers, misplaced blocks
            lines = bytes(data).split(b"\n")
            i, j = (draw(st.integers(0, len(lines) - 1)) for _ in range(2))
            if op == "dup_line":
                lines.insert(j, lines[i])
            else:
                lines[i], lines[j] = lines[j], lines[i]
            data = bytearray(b"\n".join(lines))
    return bytes(data)


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated_spec())
def test_any_bytes_give_located_diagnostics(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "spec.yaml"
    path.write_bytes(text)
    spec, _ = check_file(str(path))  # any exception other than netc's diagnostics fails here
    for d in spec.diagnostics.items:
        assert LOCATED.match(d.format()), d.format()
        assert d.line >= 1 and d.col >= 1, d.format()
