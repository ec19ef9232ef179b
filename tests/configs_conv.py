"""eval_shape configurations for the convolutional catalogue (merged into tests/test_eval_shape.py's
CONFIGS): padding modes, pooling methods and masks, SPP, Upsample, Crop."""

import netc.compiler.layers.crop  # noqa: F401 - registers Crop until the catalogue imports it
import netc.compiler.layers.upsample  # noqa: F401 - registers Upsample until the catalogue imports it


def inp(name: str, *shape: int) -> dict:
    return {"name": f"in_{name}", "type": "Input", "top": [name],
            "input_param": {"shape": {"dim": list(shape)}}}


X4 = inp("x", 2, 3, 9, 8)


def _conv(kind="Convolution", **param):
    return {"name": "c", "type": kind, "bottom": ["x"], "top": ["y"],
            "convolution_param": {"num_output": 6, **param}}


def _pool(tops=("y",), bottom="x", name="p", **param):
    return {"name": name, "type": "Pooling", "bottom": [bottom], "top": list(tops),
            "pooling_param": param}


CONFIGS: dict[str, list[list[dict]]] = {
    "Convolution": [
        [X4, _conv(kernel_size=[3], stride=[2], pad_mode="SAME")],
        [X4, _conv(kernel_size=[4, 3], stride=[3, 2], dilation=[2, 1], pad_mode="SAME", group=3)],
        [X4, _conv(kernel_size=[3], pad_mode="VALID")],
        [inp("x", 2, 4, 11), _conv(kernel_size=[2], dilation=[4], pad_mode="CAUSAL")],
        [X4, _conv(kernel_size=[3], pad_begin=[2, 0], pad_end=[0, 1], stride=[2])],
        [inp("x", 1, 2, 5, 6, 4), _conv(kernel_size=[2], pad_begin=[1], pad_end=[0, 2, 1])],
    ],
    "Pooling": [
        [X4, _pool(pool="L2", kernel_size=[3], stride=[2], pad=[1])],
        [X4, _pool(tops=("y", "mask"), pool="MAX", kernel_size=[3], stride=[2], pad=[1])],
        [inp("x", 1, 2, 7), _pool(pool="MAX", kernel_size=[1], stride=[3])],  # last window outside
        [X4, _pool(pool="STOCHASTIC", kernel_size=[2], stride=[2])],
        [inp("x", 1, 2, 5, 6, 7), _pool(tops=("y", "m"), pool="MAX", kernel_size=[2], stride=[2])],
    ],
    "SPP": [
        [X4, {"name": "s", "type": "SPP", "bottom": ["x"], "top": ["y"],
              "spp_param": {"pyramid_height": 3}}],
        [inp("x", 2, 3, 13, 7), {"name": "s", "type": "SPP", "bottom": ["x"], "top": ["y"],
                                 "spp_param": {"pyramid_height": 2, "pool": "AVE"}}],
        [X4, {"name": "s", "type": "SPP", "bottom": ["x"], "top": ["y"],
              "spp_param": {"pyramid_height": 1}}],
        [inp("x", 2, 3, 8, 4), {"name": "s", "type": "SPP", "bottom": ["x"], "top": ["y"],
                                "spp_param": {"pyramid_height": 3, "pool": "STOCHASTIC"}}],
    ],
    "Upsample": [
        [X4, _pool(tops=("p", "m"), kernel_size=[2], stride=[2]),
         {"name": "u", "type": "Upsample", "bottom": ["p", "m"], "top": ["y"],
          "upsample_param": {"upsample_h": 9, "upsample_w": 8}}],
        [X4, _pool(tops=("p", "m"), kernel_size=[2], stride=[2]),
         {"name": "u", "type": "Upsample", "bottom": ["p", "m"], "top": ["y"],
          "upsample_param": {"scale": 2, "pad_out_h": True}}],
        [X4, {"name": "u", "type": "Upsample", "bottom": ["x"], "top": ["y"],
              "upsample_param": {"scale_h": 2, "scale_w": 3, "mode": "BILINEAR"}}],
        [inp("x", 1, 2, 3, 4, 5), {"name": "u", "type": "Upsample", "bottom": ["x"], "top": ["y"],
                                   "upsample_param": {"scale": 2}}],
    ],
    "Crop": [
        [X4, inp("r", 1, 1, 5, 4),
         {"name": "c", "type": "Crop", "bottom": ["x", "r"], "top": ["y"],
          "crop_param": {"offset": [3, 1]}}],
        [X4, inp("r", 2, 2, 8, 7),
         {"name": "c", "type": "Crop", "bottom": ["x", "r"], "top": ["y"],
          "crop_param": {"axis": 1, "offset": 1}}],
        [X4, inp("r", 7, 7, 7, 7),
         {"name": "c", "type": "Crop", "bottom": ["x", "r"], "top": ["y"],
          "crop_param": {"axis": -1}}],
    ],
}
