"""Shape configurations (tests/test_eval_shape.py format) for the normalisation, affine and extra
activation layers of compiler/layers/norm.py and compiler/layers/activations.py."""

from __future__ import annotations


def inp(name: str, *shape: int) -> dict:
    return {"name": f"in_{name}", "type": "Input", "top": [name],
            "input_param": {"shape": {"dim": list(shape)}}}


X4 = inp("x", 2, 3, 9, 8)


def _one(kind: str, field: str | None = None, top: str = "y", bottom=("x",), **param) -> dict:
    layer = {"name": "l", "type": kind, "bottom": list(bottom), "top": [top]}
    if field is not None:
        layer[field] = param
    return layer


CONFIGS: dict[str, list[list[dict]]] = {
    "BatchNorm": [
        [X4, _one("BatchNorm", top="x")],
        [inp("x", 4, 5), _one("BatchNorm", "batch_norm_param", use_global_stats=True)],
        [inp("x", 2, 3, 4, 5, 2), _one("BatchNorm", "batch_norm_param", use_global_stats=False,
                                       moving_average_fraction=0.9, eps=1e-3)],
        [inp("x", 7), _one("BatchNorm")],
    ],
    "Scale": [
        [X4, _one("Scale", top="x")],
        [X4, _one("Scale", "scale_param", bias_term=True, axis=2, num_axes=-1)],
        [X4, _one("Scale", "scale_param", num_axes=0, bias_term=True)],
        [X4, inp("s", 3, 9), _one("Scale", "scale_param", bottom=("x", "s"), bias_term=True,
                                  num_axes=2)],
        [X4, inp("s", 8), _one("Scale", "scale_param", bottom=("x", "s"), axis=-1)],
    ],
    "Bias": [
        [X4, _one("Bias", top="x")],
        [X4, _one("Bias", "bias_param", axis=0, num_axes=0)],
        [X4, inp("b", 2, 3), _one("Bias", "bias_param", bottom=("x", "b"), axis=0)],
    ],
    "LRN": [
        [X4, _one("LRN")],
        [X4, _one("LRN", "lrn_param", local_size=3, alpha=1e-4, beta=0.75, k=2.0)],
        [X4, _one("LRN", "lrn_param", local_size=3, norm_region="WITHIN_CHANNEL")],
        [inp("x", 2, 4, 5), _one("LRN", "lrn_param", local_size=5, norm_region="WITHIN_CHANNEL")],
    ],
    "MVN": [
        [X4, _one("MVN")],
        [X4, _one("MVN", "mvn_param", across_channels=True, normalize_variance=False)],
    ],
    "PReLU": [
        [X4, _one("PReLU", top="x")],
        [inp("x", 2, 5), _one("PReLU", "prelu_param", channel_shared=True)],
    ],
    "ELU": [[X4, _one("ELU", "elu_param", alpha=0.5)]],
    "AbsVal": [[X4, _one("AbsVal", top="x")]],
    "BNLL": [[X4, _one("BNLL")]],
    "Power": [[X4, _one("Power", "power_param", power=2.0, scale=0.5, shift=1.0)],
              [X4, _one("Power", "power_param", power=0.0)]],
    "Exp": [[X4, _one("Exp", "exp_param", base=2.0, scale=0.5, shift=1.0)], [X4, _one("Exp")]],
    "Log": [[X4, _one("Log", "log_param", base=10.0, shift=5.0)]],
    "Threshold": [[X4, _one("Threshold", "threshold_param", threshold=0.2)]],
    "Clip": [[X4, _one("Clip", "clip_param", min=-0.5, max=0.5, top="x")]],
    "Swish": [[X4, _one("Swish", "swish_param", beta=2.0)]],
    "GELU": [[X4, _one("GELU")], [X4, _one("GELU", "gelu_param", approximate=True)]],
    "ReLU6": [[X4, _one("ReLU6", top="x")]],
    "Maxout": [
        [inp("x", 2, 6, 4, 4), _one("Maxout", "maxout_param", num_pieces=3)],
        [X4, _one("Maxout", "maxout_param", num_pieces=4, axis=-1)],
        [inp("x", 3, 10), _one("Maxout")],
    ],
}
