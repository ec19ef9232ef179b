"""The sequence models in models/ check clean with the figures they should have, and a text
source's vocabulary is checked against the layers that read its ids at `netc check` time."""

from __future__ import annotations

import json

from conftest import ROOT, netc


def _check_json(path, *args):
    r = netc("check", str(path), "--format", "json", *args)
    return r, json.loads(r.stdout)


def test_char_lstm_spec_counts():
    r, doc = _check_json(ROOT / "models" / "char_lstm_hamlet.yaml")
    assert r.returncode == 0, r.stderr
    rep = doc["specs"][0]
    # Embed 66×64 + LSTM layer 1 4·(256·(64+256) + 256) + layer 2 4·(256·512 + 256) + IP 256·66+66
    assert rep["params"]["trainable"] == 66 * 64 + 4 * (256 * 320 + 256) + 4 * (256 * 512 + 256) \
        + 256 * 66 + 66 == 875_202


def test_vocabulary_larger_than_the_embedding_is_a_check_error(tmp_path):
    spec = (ROOT / "models" / "char_lstm_hamlet.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(spec.replace("input_dim: 66", "input_dim: 60")
                   .replace("num_output: 66, axis", "num_output: 65, axis"))
    r = netc("check", str(bad))
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if ": error: " in line]
    assert any("layer 'embed' (Embed): bottom: 'data' holds ids 0…65 (the 66 symbols of "
               "netc:hamlet), but the layer takes only 60 classes" in e for e in errors), errors
    assert any("layer 'loss' (SoftmaxWithLoss): bottom: 'label' holds ids 0…65" in e
               and "make it at least 66" in e for e in errors), errors
    assert all(e.startswith(f"{bad}:") for e in errors)  # FILE:LINE:COL


def test_seq2seq_and_caption_specs_plan(tmp_path):
    from netc.models import seq_tasks

    for task, spec in (("reverse", "seq2seq_reverse.yaml"), ("captions", "caption_digits.yaml")):
        seq_tasks.write(task, tmp_path / "data", n_train=32, n_test=8)
        (tmp_path / spec).write_text((ROOT / "models" / spec).read_text())
        r = netc("check", str(tmp_path / spec), "-q")
        assert r.returncode == 0, r.stderr
