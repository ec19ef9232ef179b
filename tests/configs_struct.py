"""Shape configs (tests/test_eval_shape.py's CONFIGS format) for Slice, Tile, Reduction, ArgMax,
Silence and the losses beside SoftmaxWithLoss: each plan's shapes must equal jax.eval_shape's."""

from __future__ import annotations


def inp(name: str, *shape: int) -> dict:
    return {"name": f"in_{name}", "type": "Input", "top": [name],
            "input_param": {"shape": {"dim": list(shape)}}}


X4 = inp("x", 2, 3, 9, 8)
X2 = inp("x", 2, 10)
LABEL = inp("label", 2)


def _layer(kind: str, bottom: list[str], top: list[str], **fields) -> dict:
    return {"name": "l", "type": kind, "bottom": bottom, "top": top, **fields}


def _slice(**param) -> dict:
    return _layer("Slice", ["x"], ["a", "b", "c"][:param.pop("tops", 2)], slice_param=param)


def _argmax(bottom_input: dict, **param) -> list[dict]:
    return [bottom_input, _layer("ArgMax", ["x"], ["y"], argmax_param=param)]


CONFIGS: dict[str, list[list[dict]]] = {
    "Slice": [
        [X4, _slice(slice_point=[1])],
        [X4, _slice(tops=3, axis=-1, slice_point=[2, 5])],
        [X4, _slice(tops=3)],  # equal pieces of the 3 channels
        [X4, _slice(slice_dim=2, slice_point=[4])],
        [X4, _slice(tops=1)],
        [X4, _slice(axis=0)],  # the concrete batch of 2, halved
    ],
    "Tile": [
        [X4, _layer("Tile", ["x"], ["y"], tile_param={"tiles": 3})],
        [X4, _layer("Tile", ["x"], ["y"], tile_param={"axis": -1, "tiles": 2})],
        [X2, _layer("Tile", ["x"], ["y"], tile_param={"axis": 0, "tiles": 2})],
    ],
    "Reduction": [
        [X4, _layer("Reduction", ["x"], ["y"])],
        [X4, _layer("Reduction", ["x"], ["y"],
                    reduction_param={"operation": "MEAN", "axis": 1, "coeff": 2.0})],
        [X4, _layer("Reduction", ["x"], ["y"], reduction_param={"operation": "ASUM", "axis": -1})],
        [X2, _layer("Reduction", ["x"], ["y"], reduction_param={"operation": "SUMSQ", "axis": 1})],
    ],
    "ArgMax": [
        _argmax(X4),
        _argmax(X4, top_k=3, out_max_val=True),
        _argmax(X4, axis=1, top_k=2),
        _argmax(X4, axis=-1, top_k=2, out_max_val=True),
        _argmax(X2, top_k=4),
        _argmax(inp("x", 2, 3, 2, 2, 2), top_k=5, out_max_val=True),
    ],
    "Silence": [
        [X4, _layer("Silence", ["x"], [])],
        [X4, X2 | {"name": "in_z", "top": ["z"]}, _layer("Silence", ["x", "z"], [])],
    ],
    "SigmoidCrossEntropyLoss": [
        [X4, inp("t", 2, 216), _layer("SigmoidCrossEntropyLoss", ["x", "t"], ["loss"])],
        [X2, inp("t", 2, 10), _layer("SigmoidCrossEntropyLoss", ["x", "t"], ["loss"],
                                     loss_param={"ignore_label": -1, "normalization": "VALID"})],
    ],
    "HingeLoss": [
        [X2, LABEL, _layer("HingeLoss", ["x", "label"], ["loss"])],
        [X4, inp("label", 2, 1, 1, 1), _layer("HingeLoss", ["x", "label"], ["loss"],
                                             hinge_loss_param={"norm": "L2"})],
    ],
    "InfogainLoss": [
        [X2, LABEL, _layer("InfogainLoss", ["x", "label"], ["loss"])],
        [X2, LABEL, inp("h", 1, 1, 10, 10), _layer("InfogainLoss", ["x", "label", "h"], ["loss"])],
        [X4, inp("label", 2, 9, 8), _layer("InfogainLoss", ["x", "label"], ["loss"])],
    ],
    "MultinomialLogisticLoss": [
        [X2, LABEL, _layer("MultinomialLogisticLoss", ["x", "label"], ["loss"])],
    ],
    "ContrastiveLoss": [
        [X2, inp("z", 2, 10), LABEL, _layer("ContrastiveLoss", ["x", "z", "label"], ["loss"])],
        [inp("x", 2, 4, 1, 1), inp("z", 2, 4, 1, 1), inp("label", 2, 1, 1, 1),
         _layer("ContrastiveLoss", ["x", "z", "label"], ["loss"],
                contrastive_loss_param={"margin": 2.0, "legacy_version": True})],
    ],
}
