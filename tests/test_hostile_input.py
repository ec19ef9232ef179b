"""Hostile input (issue 8 §1, §2, §5): any bytes give a located error, explicit YAML tags mean what
they say or are refused, non-regular files are refused before they are read, bounds hold while
composing, and a duplicate layer name cites the first one."""

from __future__ import annotations

import os
import re
import time

import pytest

from netc.compiler.report import check_file
from netc.spec.yaml_io import YamlError, read_yaml

LOCATED = re.compile(r"^.+:\d+:\d+: (error|warning): .+")


def errors(path) -> list[str]:
    spec, _ = check_file(str(path))
    lines = [d.format() for d in spec.diagnostics.sorted()]
    assert all(LOCATED.match(x) for x in lines), lines
    return [x for x in lines if ": error: " in x]


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x08", "\x0b", "\x1b", "\x1f", "\x7f", "\x9f"])
def test_control_characters_anywhere_are_located(tmp_path, char):
    f = tmp_path / "s.yaml"
    f.write_bytes(f"name: n\n# comment {char} here\n".encode())
    assert errors(f) == [f"{f}:2:11: error: invalid YAML: character #x{ord(char):04x} is not "
                         f"allowed (is this a binary file?)"]


def test_invalid_utf8_and_surrogates_are_located(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_bytes(b"name: n\nab: \xed\xa0\x80\n")  # an encoded lone surrogate
    [e] = errors(f)
    assert e.startswith(f"{f}:2:5: error: file is not UTF-8 text: byte 0xed at offset 12")
    with pytest.raises(YamlError, match="#xd800") as info:
        read_yaml("a: \ud800\n")
    assert (info.value.line, info.value.col) == (1, 4)


@pytest.mark.parametrize("codec", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_bom_and_utf16_32_are_read_as_yaml_says(codec):
    assert read_yaml("name: n\nx: 1e-3\n".encode(codec)).data == {"name": "n", "x": 0.001}


@pytest.mark.parametrize("text, value", [
    ("!!bool true", True), ("!!bool FALSE", False), ("!!int 0x1f", 31), ("!!int -3", -3),
    ("!!float 1", 1.0), ("!!float 1e-3", 0.001), ("!!str 1", "1"), ("!!str true", "true"),
    ("!!null ~", None), ("!!null", None), ("! 1", "1"), ("!!seq [1]", [1]), ("!!map {a: 1}", {"a": 1}),
    ("!<tag:yaml.org,2002:bool> true", True),
    ("1e-3", 0.001), ("NO", "NO"), ("on", "on"), ("y", "y"),  # YAML 1.2 plain scalars
])
def test_explicit_tags_are_honoured(text, value):
    assert read_yaml(f"a: {text}\n").data == {"a": value}


@pytest.mark.parametrize("text, message", [
    ("!!bool yes", "'yes' is not a boolean"), ("!!bool 1", "'1' is not a boolean"),
    ("!<tag:yaml.org,2002:bool> on", "'on' is not a boolean"),
    ("!!int 1.5", "'1.5' is not an integer"), ("!!int 1_000", "'1_000' is not an integer"),
    ("!!int ١٢", "is not an integer"), ("!!float 0x1", "'0x1' is not a number"),
    ("!!null x", "'x' is not null"), ("!!seq x", "'!!seq' is not allowed on a scalar"),
    ("!!str {a: 1}", "'!!str' is not allowed on a mapping"),
    ("!!binary aGk=", "binary' is not allowed"), ("!!timestamp 2001-01-01", "timestamp' is not allowed"),
    ("!!set {x}", "set' is not allowed"), ("!!omap [x: 1]", "omap' is not allowed"),
    ("!!pairs [x: 1]", "pairs' is not allowed"), ("!local 1", "'!local' is not allowed"),
])
def test_other_tags_are_refused_where_written(text, message):
    with pytest.raises(YamlError, match=re.escape(message)) as info:
        read_yaml(f"name: n\na: {text}\n")
    assert (info.value.line, info.value.col) == (2, 4)


def test_bool_tag_cannot_drop_a_bias(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("name: n\nlayers:\n"
                 "  - {name: d, type: Input, top: x, input_param: {shape: {dim: [1, 3]}}}\n"
                 "  - {name: ip, type: InnerProduct, bottom: x, top: y,\n"
                 "     inner_product_param: {num_output: 2, bias_term: !!bool yes}}\n")
    assert errors(f) == [f"{f}:5:54: error: 'yes' is not a boolean (true or false)"]


def test_merge_chains_and_cycles_are_bounded():
    chain = "a0: &a0 {x: 1}\n" + "".join(f"a{i}: &a{i} {{<<: *a{i - 1}}}\n" for i in range(1, 3000))
    with pytest.raises(YamlError, match="deeper than 64 levels"):
        read_yaml(chain)
    doubling = "a0: &a0 {}\n" + "".join(f"a{i}: &a{i} {{<<: [*a{i - 1}, *a{i - 1}]}}\n"
                                        for i in range(1, 60))
    start = time.process_time()
    with pytest.raises(YamlError, match=r"aliases \('\*name'\) and merge keys .* 200,000 nodes"):
        read_yaml(doubling)
    assert time.process_time() - start < 2.0
    for cyclic in ("a: &a [*a]\n", "a: &a {<<: *a}\n", "a: &a {b: *a}\n"):
        with pytest.raises(YamlError, match="deeper than 64 levels"):
            read_yaml(cyclic)
    assert read_yaml("d: &d {x: 1, y: 2}\ne: {<<: *d, y: 3}\n").data["e"] == {"x": 1, "y": 3}


def test_node_limit_is_applied_while_composing(monkeypatch):
    from netc.spec import yaml_io

    monkeypatch.setattr(yaml_io, "MAX_NODES", 1000)
    text = "layers:\n" + "".join(f"  - {{name: l{i}, type: ReLU}}\n" for i in range(10_000))
    start = time.process_time()
    with pytest.raises(YamlError, match=r"more than 1,000 YAML nodes \(keys, values and list "
                                        r"items\)") as info:
        read_yaml(text)
    assert time.process_time() - start < 1.0  # stopped at the limit, not after composing it all
    assert info.value.line == 201 and "alias" not in info.value.message


def test_large_legitimate_spec_checks_quickly(tmp_path):
    n = 3000
    lines = ["name: big", "layers:",
             "  - {name: data, type: Input, top: x0, input_param: {shape: {dim: [1, 8]}}}"]
    lines += [f"  - {{name: l{i}, type: ReLU, bottom: x{i - 1}, top: x{i}}}" for i in range(1, n)]
    f = tmp_path / "big.yaml"
    f.write_text("\n".join(lines) + "\n")
    start = time.process_time()
    spec, plan = check_file(str(f))
    assert not spec.diagnostics.errors and len(plan.layers) == n
    assert time.process_time() - start < 10.0


def test_non_regular_spec_files_are_refused(tmp_path):
    fifo = tmp_path / "net.yaml"
    os.mkfifo(fifo)
    assert errors(fifo) == [f"{fifo}:1:1: error: cannot read this file: it is a named pipe (FIFO), "
                            f"not a regular file"]
    assert errors("/dev/zero") == ["/dev/zero:1:1: error: cannot read this file: it is a character "
                                   "device, not a regular file"]
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(9 * 1024 * 1024)  # sparse: costs no disk
    assert errors(big) == [f"{big}:1:1: error: cannot read this file: it is 9,437,184 bytes, more "
                           f"than the 8,388,608 allowed"]


DATA_SPEC = """name: n
layers:
  - name: d
    type: Data
    top: [data, label]
    data_param: {{source: "{source}", batch_size: 2}}
"""


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_non_regular_data_sources_are_refused(tmp_path, kind):
    from netc.runtime.data import DataError, load_source

    source = {"fifo": tmp_path / "d.npz", "device": "/dev/zero", "directory": tmp_path / "dir"}[kind]
    if kind == "fifo":
        os.mkfifo(source)
    if kind == "directory":
        os.mkdir(source)
    spec = tmp_path / "s.yaml"
    spec.write_text(DATA_SPEC.format(source=source))
    [e] = errors(spec)
    assert e.startswith(f"{spec}:6:") and f"source '{source}'" in e
    assert ("is a directory" if kind == "directory" else "not a regular file") in e
    with pytest.raises(DataError, match="not a regular file|is a directory"):
        load_source(str(source))


def test_duplicate_layer_name_cites_the_first(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("name: n\nlayers:\n"
                 "  - {name: d, type: Input, top: x, input_param: {shape: {dim: [1, 3]}}}\n"
                 "  - {name: fc, type: InnerProduct, bottom: x, top: y, inner_product_param: {num_output: 2}}\n"
                 "  - {name: fc, type: InnerProduct, bottom: y, top: z, inner_product_param: {num_output: 2}}\n")
    assert errors(f) == [f"{f}:5:6: error: layer 'fc' (InnerProduct): name: another layer is also "
                         f"called 'fc' (first at {f}:4); parameters are keyed by layer name"]


# --- every other file a user names: weights, predict inputs, checkpoints, artifacts -------------


def test_named_pipes_are_refused_wherever_a_file_is_named(tmp_path, trained_mlp_run):
    import shutil

    from conftest import MLP, netc

    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    for args in (("predict", MLP, fifo, "--weights", trained_mlp_run, "-o", tmp_path / "o.npz"),
                 ("test", MLP, "--weights", fifo, "--iterations", 1),
                 ("import-caffe", fifo)):
        r = netc(*args)
        assert r.returncode == 1 and "Traceback" not in r.stderr, (args, r.stderr)
        assert f"{fifo}: " in r.stderr and "it is a named pipe (FIFO), not a regular file" in r.stderr
    # a checkpoint whose tensors file was replaced by a pipe: refused, the older one is used
    run = tmp_path / "run"
    shutil.copytree(trained_mlp_run, run)
    (run / "mlp_iter_200.safetensors").unlink()
    os.mkfifo(run / "mlp_iter_200.safetensors")
    r = netc("test", MLP, "--weights", run, "--iterations", 1)
    assert r.returncode == 0, r.stderr
    assert "named pipe (FIFO)" in r.stderr and "using mlp_iter_100.json instead" in r.stderr
