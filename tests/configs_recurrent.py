"""Shape configurations (tests/test_eval_shape.py format) for the sequence layers of
compiler/layers/recurrent.py: Embed, RNN, LSTM, GRU."""

from __future__ import annotations


def inp(name: str, *shape: int) -> dict:
    return {"name": f"in_{name}", "type": "Input", "top": [name],
            "input_param": {"shape": {"dim": list(shape)}}}


def _rec(kind: str, bottom, top=("y",), **param) -> dict:
    return {"name": "l", "type": kind, "bottom": list(bottom), "top": list(top),
            "recurrent_param": {"num_output": 3, **param}}


def _configs(kind: str) -> list[list[dict]]:
    states = ["hT", "cT"] if kind == "LSTM" else ["hT"]
    h0 = ["h0", "c0"] if kind == "LSTM" else ["h0"]
    return [
        # Caffe's form: time-major x, cont; a carried state (concrete N)
        [inp("x", 5, 2, 4), inp("cont", 5, 2), _rec(kind, ["x", "cont"])],
        # trailing axes flattened, x_static, stacked bidirectional SUM, mask
        [inp("x", 4, 2, 2, 3), inp("m", 4, 2), inp("s", 2, 5),
         _rec(kind, ["x", "m", "s"], sequence_input="MASK", num_layers=2, bidirectional=True,
              merge_mode="SUM", dropout=0.5)],
        # batch_first, lengths, output LAST, bidirectional concat
        [inp("x", 2, 6, 3), inp("len", 2),
         _rec(kind, ["x", "len"], sequence_input="LENGTHS", batch_first=True, bidirectional=True,
              output="LAST")],
        # expose_hidden: h0 (c0) bottoms and hT (cT) tops, (L·D)×N×H
        [inp("x", 3, 2, 4), inp("cont", 3, 2), *[inp(b, 2, 2, 3) for b in h0],
         _rec(kind, ["x", "cont", *h0], top=["y", *states], expose_hidden=True, num_layers=2)],
        # no second bottom, bptt cut
        [inp("x", 6, 1, 2), _rec(kind, ["x"], sequence_input="NONE", bptt_steps=2)],
    ]


CONFIGS: dict[str, list[list[dict]]] = {
    "Embed": [
        [inp("ids", 5, 2), {"name": "l", "type": "Embed", "bottom": ["ids"], "top": ["y"],
                            "embed_param": {"num_output": 4, "input_dim": 7}}],
        [inp("ids", 3), {"name": "l", "type": "Embed", "bottom": ["ids"], "top": ["y"],
                         "embed_param": {"num_output": 2, "input_dim": 3, "bias_term": False}}],
    ],
    "LSTM": _configs("LSTM"),
    "GRU": _configs("GRU") + [[inp("x", 3, 2, 4), inp("cont", 3, 2),
                               _rec("GRU", ["x", "cont"], reset_after=False)]],
    "RNN": _configs("RNN") + [[inp("x", 3, 2, 4), inp("cont", 3, 2),
                               _rec("RNN", ["x", "cont"], output_layer=False, bidirectional=True)]],
}
