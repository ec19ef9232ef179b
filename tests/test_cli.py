"""The command line end to end — exit codes, stdout/stderr, JSON. The commands run in-process
(click's runner, the same group the console script calls); test_console_script_* run the installed
`netc` in a subprocess, as a user does."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT, run_netc
from conftest import netc as netc_in_process

from netc.compiler.catalogue import units

LENET = "models/lenet.yaml"
LENET_TOPS = {
    "conv1": [64, 20, 24, 24],
    "pool1": [64, 20, 12, 12],
    "conv2": [64, 50, 8, 8],
    "pool2": [64, 50, 4, 4],
    "ip1": [64, 500],
    "ip2": [64, 10],
}

# Two errors, on lines 8 and 12 (a misspelt field and a misspelt blob).
BAD = """\
name: bad
layers:
  - {name: data, type: Input, top: data, input_param: {shape: {dim: [1, 3, 32, 32]}}}
  - name: conv
    type: Convolution
    bottom: data
    top: conv
    convolution_param: {num_output: 4, kernal_size: 3}
  - name: relu
    type: ReLU
    bottom: dta
    top: relu
"""
BAD_ERRORS = [
    (8, 40, "layer 'conv' (Convolution): convolution_param.kernal_size: unknown field "
            "(did you mean 'kernel_size'?)"),
    (11, 5, "layer 'relu' (ReLU): bottom: unknown blob 'dta' (did you mean 'data'?)"),
]


def netc(*args):
    return netc_in_process(*args, cwd=ROOT)


@pytest.fixture
def bad_spec(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    return path


# --- the installed console script, in a subprocess -------------------------------------------------


def test_console_script_help_and_version():
    r = run_netc("--help")
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert r.stdout.startswith("Usage: netc [OPTIONS] COMMAND [ARGS]...")
    for command in ("check", "layers", "schema", "train", "test", "predict", "export"):
        assert f"\n  {command} " in r.stdout, command
    r = run_netc("--version")
    assert r.returncode == 0 and r.stdout.startswith("netc, version "), r.stdout


def test_console_script_check_good_and_bad(bad_spec):
    r = run_netc("check", LENET, bad_spec, "--format", "json", cwd=ROOT)
    assert r.returncode == 1, r.stderr
    assert r.stdout == netc("check", LENET, bad_spec, "--format", "json").stdout
    good, bad = json.loads(r.stdout)["specs"]
    assert good["ok"] and good["params"] == {"trainable": 431080, "non_trainable": 0}
    assert [(e["line"], e["col"], e["message"]) for e in bad["errors"]] == BAD_ERRORS


def test_in_process_runner_reports_an_escaping_exception_as_a_traceback(monkeypatch):
    """conftest.netc: an exception a command does not handle reads as the console script's
    traceback, so the suite's `"Traceback" not in r.stderr` checks keep their meaning."""
    def boom(*a, **k):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr("netc.spec.net.parse_spec", boom)
    r = netc("check", LENET)
    assert r.returncode == 1
    assert "Traceback" in r.stderr and "ZeroDivisionError: boom" in r.stderr


# --- netc check: the good path -------------------------------------------------------------------


def test_check_lenet_json():
    r = netc("check", LENET, "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert len(doc["specs"]) == 1
    spec = doc["specs"][0]
    assert spec["file"] == LENET and spec["name"] == "LeNet" and spec["ok"] is True
    assert spec["errors"] == [] and spec["warnings"] == []
    assert spec["phase"] == "TRAIN"
    assert spec["params"] == {"trainable": 431080, "non_trainable": 0}
    assert spec["macs"] == 2293000
    tops = {t: s for layer in spec["layers"] for t, s in layer["tops"].items()}
    for name, shape in LENET_TOPS.items():
        assert tops[name] == shape, name
    assert spec["inputs"] == {"data": [64, 1, 28, 28], "label": [64]}


def test_check_lenet_text_table():
    r = netc("check", LENET)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    out = r.stdout
    assert out.splitlines()[0] == "models/lenet.yaml: LeNet — TRAIN phase, batch 64"
    assert "431,080" in out and "2,293,000" in out
    assert "64×20×24×24" in out and "64×50×4×4" in out
    assert "accuracy" not in out  # a TEST-only layer


def test_check_test_phase_shows_its_batch_and_accuracy():
    r = netc("check", LENET, "--phase", "TEST")
    assert r.returncode == 0, r.stderr
    assert "TEST phase, batch 100" in r.stdout
    assert "100×20×24×24" in r.stdout
    assert any(line.split()[:2] == ["accuracy", "Accuracy"] for line in r.stdout.splitlines())
    # the phase name is case-insensitive
    assert netc("check", LENET, "--phase", "test").stdout == r.stdout


def test_check_batch_overrides_every_input():
    r = netc("check", LENET, "--batch", "8")
    assert r.returncode == 0, r.stderr
    assert "TRAIN phase, batch 8" in r.stdout
    assert "8×20×24×24" in r.stdout and "64×" not in r.stdout
    doc = json.loads(netc("check", LENET, "--batch", "8", "--format", "json").stdout)
    assert doc["specs"][0]["inputs"] == {"data": [8, 1, 28, 28], "label": [8]}


def test_check_quiet_and_github_print_nothing_for_a_good_spec():
    for args in (["-q"], ["--format", "github"]):
        r = netc("check", LENET, *args)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), args


# --- netc check: errors -----------------------------------------------------------------------------


def test_check_bad_spec_text(bad_spec):
    r = netc("check", bad_spec)
    assert r.returncode == 1
    assert r.stdout == ""  # no table for a spec with errors
    assert r.stderr.splitlines() == [f"{bad_spec}:{line}:{col}: error: {msg}" for line, col, msg in BAD_ERRORS]


def test_check_bad_spec_github(bad_spec):
    r = netc("check", bad_spec, "--format", "github")
    assert r.returncode == 1
    assert r.stdout.splitlines() == [
        f"::error file={bad_spec},line={line},col={col}::{msg}" for line, col, msg in BAD_ERRORS]


def test_check_bad_spec_json(bad_spec):
    r = netc("check", bad_spec, "--format", "json")
    assert r.returncode == 1
    spec = json.loads(r.stdout)["specs"][0]
    assert spec["ok"] is False
    assert spec["errors"] == [
        {"file": str(bad_spec), "line": line, "col": col, "message": msg} for line, col, msg in BAD_ERRORS]
    assert spec["warnings"] == []


def test_check_several_specs_reports_all(bad_spec):
    r = netc("check", LENET, bad_spec)
    assert r.returncode == 1
    assert "models/lenet.yaml: LeNet — TRAIN phase, batch 64" in r.stdout
    assert len([line for line in r.stderr.splitlines() if ": error: " in line]) == 2
    assert all(line.startswith(f"{bad_spec}:") for line in r.stderr.splitlines())

    r = netc("check", LENET, bad_spec, "--format", "json")
    assert r.returncode == 1
    specs = json.loads(r.stdout)["specs"]
    assert [(s["file"], s["ok"], len(s["errors"])) for s in specs] == [
        (LENET, True, 0), (str(bad_spec), False, 2)]


def test_check_missing_file_is_a_spec_error(tmp_path):
    missing = tmp_path / "nope.yaml"
    r = netc("check", missing)
    assert r.returncode == 1
    assert r.stderr == f"{missing}:1:1: error: cannot read file: No such file or directory\n"


@pytest.mark.parametrize("args, complaint", [
    (["check", LENET, "--bogus"], "--bogus"),
    (["check"], "Missing argument 'SPECS...'"),
    (["check", LENET, "--phase", "FOO"], "Invalid value for '--phase'"),
    (["check", LENET, "--batch", "0"], "Invalid value for '--batch'"),
    (["check", LENET, "--format", "xml"], "Invalid value for '--format'"),
    (["check", "models"], "is a directory"),
    (["frobnicate"], "frobnicate"),
])
def test_usage_errors_exit_2(args, complaint):
    r = netc(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == ""
    assert r.stderr.startswith("Usage: netc")
    error = r.stderr.splitlines()[-1]
    assert error.startswith("Error: ") and complaint in error


# --- netc layers ----------------------------------------------------------------------------------


def test_layers_lists_every_registered_type():
    r = netc("layers")
    assert r.returncode == 0, r.stderr
    listed = [line.split(" — ")[0] for line in r.stdout.splitlines() if line and not line.startswith(" ")]
    assert listed == list(units())
    assert len(listed) >= 19


def test_layers_one_type_shows_fields_and_example():
    r = netc("layers", "Convolution")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("Convolution — ")
    assert "    num_output: int = required" in lines
    assert "  example:" in lines
    example = textwrap.indent(units()["Convolution"].example.rstrip(), "    ")
    assert example in r.stdout
    assert "Pooling" not in r.stdout


def test_layers_unknown_type_suggests():
    r = netc("layers", "Convolutin")
    assert r.returncode == 2
    assert "unknown layer type 'Convolutin' (did you mean 'Convolution'?)" in r.stderr


# --- netc schema ----------------------------------------------------------------------------------


def test_schema():
    from netc.spec.yaml_io import read_yaml

    r = netc("schema")
    assert r.returncode == 0, r.stderr
    schema = json.loads(r.stdout)
    refs = schema["properties"]["layers"]["items"]["oneOf"]
    assert len(refs) == len(units())
    defs = schema["$defs"]
    consts = sorted(defs[ref["$ref"].removeprefix("#/$defs/")]["properties"]["type"]["const"]
                    for ref in refs)
    assert consts == sorted(units())

    lenet = read_yaml((ROOT / LENET).read_bytes()).data
    import jsonschema  # a test dependency (pyproject's test extra): validate for real

    jsonschema.Draft202012Validator.check_schema(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}"
              for e in jsonschema.Draft202012Validator(schema).iter_errors(lenet)]
    assert errors == []
    # and the structure editors rely on
    conv = defs["ConvolutionLayer"]
    assert conv["additionalProperties"] is False
    assert conv["properties"]["type"] == {"const": "Convolution"}
    assert "convolution_param" in conv["properties"]
    assert set(conv["required"]) >= {"name", "type"}
    assert schema["additionalProperties"] is False
    assert "solver" in schema["properties"]
    assert {layer["type"] for layer in lenet["layers"]} <= set(consts)


# --- the check path never loads JAX -----------------------------------------------------------------

NO_JAX = """
import sys
from netc.cli import main
sys.argv = ["netc", "check", "models/lenet.yaml", "--format", "json"]
try:
    main()
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib", "optax"))
assert code == 0, code
assert "netc.compiler.plan" in sys.modules  # it did check something
print("heavy:", heavy, file=sys.stderr)
sys.exit(3 if heavy else 0)
"""


def test_check_does_not_import_jax():
    r = subprocess.run([sys.executable, "-c", NO_JAX], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "heavy: []" in r.stderr


# --- every layer type's example is a valid layer --------------------------------------------------


def example_net(kind: str) -> tuple[str, str]:
    """(YAML of a net around `kind`'s example, the example layer's name): an Input layer provides
    each bottom the example names, then the example follows verbatim."""
    from netc.spec.yaml_io import read_yaml

    example = units()[kind].example
    layer = read_yaml(example).data
    bottoms = layer.get("bottom", [])
    bottoms = list(dict.fromkeys([bottoms] if isinstance(bottoms, str) else bottoms))
    text = f"name: {kind}-example\nlayers:\n"
    if bottoms:
        # Labels are one per sample; the scores beside a label are N×C×1×1, so that Caffe's rule
        # (one label per prediction position) holds. Every other bottom is a small N×C×H×W image.
        score = [2, 3, 1, 1] if "label" in bottoms else [2, 3, 8, 8]
        # a recurrent layer's second bottom: T×N for x 2×3×… time-major, N for batch_first
        seq = {"label": [2], "cont": [2, 3], "lengths": [2]}
        shapes = [{"dim": seq.get(b, score)} for b in bottoms]
        text += "  - " + json.dumps({"name": "example_input", "type": "Input", "top": bottoms,
                                     "input_param": {"shape": shapes}}) + "\n"
    text += "  - " + textwrap.indent(example, "    ").lstrip()
    return text, layer["name"]


@pytest.mark.parametrize("kind", list(units()))
def test_layer_example_validates_and_plans(kind, check_spec):
    assert units()[kind].example.strip(), f"{kind} has no example"
    text, name = example_net(kind)
    spec, plans, diags = check_spec(text, name=f"{kind}.yaml")
    assert [d for d in diags if ": error: " in d] == [], text
    planned = [pl.type for p in plans.values() for pl in p.layers if pl.name == name]
    assert kind in planned, f"the example layer is in no phase's plan:\n{text}"
