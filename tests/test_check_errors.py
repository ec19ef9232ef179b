"""Every error class a user can make: full message text and line:column, several at once."""

import time

from conftest import errors_of, warnings_of

HEADER = """
name: t
layers:
  - name: data
    type: Input
    top: data
    input_param: {shape: {dim: [1, 3, 32, 32]}}
"""




def test_misspelt_field_type_enum_and_blob_all_reported_together(check_spec):
    text = HEADER + """
  - name: conv1
    type: Convolutin
    bottom: data
    top: conv1
  - name: conv2
    type: Convolution
    bottom: data
    top: conv2
    convolution_param:
      num_output: 10
      kernal_size: 5
  - name: pool1
    type: Pooling
    bottom: data
    top: pool1
    pooling_param: {pool: MAXX, kernel_size: 2}
  - name: relu
    type: ReLU
    bottom: dta
    top: r
"""
    assert errors_of(check_spec, text) == [
        "spec.yaml:9:5: error: layer 'conv1' (Convolutin): type: unknown layer type 'Convolutin' "
        "(did you mean 'Convolution'?)",
        "spec.yaml:18:7: error: layer 'conv2' (Convolution): convolution_param.kernal_size: "
        "unknown field (did you mean 'kernel_size'?)",
        "spec.yaml:23:21: error: layer 'pool1' (Pooling): pooling_param.pool: 'MAXX' is not one of "
        "MAX, AVE, STOCHASTIC, L2 (did you mean 'MAX'?)",
        "spec.yaml:26:5: error: layer 'relu' (ReLU): bottom: unknown blob 'dta' (did you mean 'data'?)",
    ]


def test_missing_required_and_bounds(check_spec):
    text = HEADER + """
  - name: conv1
    type: Convolution
    bottom: data
    top: conv1
    convolution_param: {kernel_size: 3}
  - name: conv2
    type: Convolution
    bottom: data
    top: conv2
    convolution_param: {num_output: 0, kernel_size: -3}
"""
    assert errors_of(check_spec, text) == [
        "spec.yaml:12:5: error: layer 'conv1' (Convolution): convolution_param.num_output: "
        "missing required field",
        "spec.yaml:17:25: error: layer 'conv2' (Convolution): convolution_param.num_output: "
        "must be ≥ 1, got 0",
        "spec.yaml:17:40: error: layer 'conv2' (Convolution): convolution_param.kernel_size: "
        "must be ≥ 1, got -3",
    ]


def test_non_finite_and_wrong_types(check_spec):
    text = HEADER + """
  - name: relu
    type: ReLU
    bottom: data
    top: relu
    relu_param: {negative_slope: .nan}
  - name: drop
    type: Dropout
    bottom: relu
    top: relu
    dropout_param: {dropout_ratio: "0.5"}
  - name: ip
    type: InnerProduct
    bottom: relu
    top: ip
    inner_product_param: {num_output: 10, bias_term: yes}
"""
    assert errors_of(check_spec, text) == [
        "spec.yaml:12:18: error: layer 'relu' (ReLU): relu_param.negative_slope: must be a finite "
        "number, got nan",
        "spec.yaml:17:21: error: layer 'drop' (Dropout): dropout_param.dropout_ratio: expected a "
        "number, got a string '0.5'",
        "spec.yaml:22:43: error: layer 'ip' (InnerProduct): inner_product_param.bias_term: expected "
        "true or false, got a string 'yes'",
    ]


def test_wrong_param_block_for_the_type(check_spec):
    text = HEADER + """
  - name: ip
    type: InnerProduct
    bottom: data
    top: ip
    inner_product_param: {num_output: 10}
    pooling_param: {pool: MAX}
"""
    assert errors_of(check_spec, text) == [
        "spec.yaml:13:5: error: layer 'ip' (InnerProduct): pooling_param: unknown field "
        "(this layer type takes inner_product_param)",
    ]


def test_unknown_top_level_field_suggests(check_spec):
    text = """
name: t
layer:
  - {name: data, type: Input, top: data, input_param: {shape: {dim: [1, 2]}}}
"""
    assert errors_of(check_spec, text)[0] == (
        "spec.yaml:2:1: error: layer: unknown field (did you mean 'layers'?)")


def test_yaml_safety_errors(check_spec, write_spec):
    laughs = "\n".join(
        ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
        + [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]) + "\n"
    start = time.process_time()
    assert errors_of(check_spec, laughs) == [
        "spec.yaml:1:16: error: aliases ('*name') and merge keys ('<<') expand the document by "
        "more than 200,000 nodes; refusing to read it"]
    assert time.process_time() - start < 2.0
    assert errors_of(check_spec, "name: a\nname: b\n") == [
        "spec.yaml:2:1: error: duplicate key 'name' (first given on line 1)"]
    assert errors_of(check_spec, "a: " + "[" * 100 + "]" * 100 + "\n") == [
        "spec.yaml:1:67: error: YAML nesting is deeper than 64 levels"]
    assert errors_of(check_spec, "name: !!python/object:os.system x\n") == [
        "spec.yaml:1:7: error: tag 'tag:yaml.org,2002:python/object:os.system' is not allowed"]
    # libyaml's wording when PyYAML has it (the pure-Python parser says "expected ... but got")
    [unclosed] = errors_of(check_spec, "name: [unclosed\n")
    assert unclosed.startswith("spec.yaml:2:1: error: invalid YAML: while parsing a flow sequence ")
    assert "expected ',' or ']'" in unclosed


def test_file_size_is_bounded():
    import pytest

    from netc.spec.yaml_io import YamlError, read_yaml

    with pytest.raises(YamlError, match="more than the 1,000 allowed"):
        read_yaml(b"#" * 1001, max_bytes=1000)


def test_yaml_numbers_follow_yaml_1_2():
    from netc.spec.yaml_io import read_yaml

    doc = read_yaml("a: 1e-3\nb: 5e-4\nc: 5E+2\nd: NO\ne: on\nf: 0x10\ng: .inf\nh: 1_000\n")
    assert doc.data == {"a": 0.001, "b": 0.0005, "c": 500.0, "d": "NO", "e": "on", "f": 16,
                        "g": float("inf"), "h": "1_000"}
    assert doc.positions[("c",)] == (3, 1)


def test_graph_errors(check_spec):
    text = HEADER + """
  - name: a
    type: ReLU
    bottom: data
    top: x
  - name: b
    type: ReLU
    bottom: data
    top: x
  - name: c
    type: ReLU
    bottom: later
    top: y
  - name: d
    type: Sigmoid
    bottom: data
    top: later
  - name: e
    type: ReLU
    bottom: data
    top: data2
    include: {phase: TRAIN}
    exclude: {phase: TEST}
"""
    assert errors_of(check_spec, text) == [
        "spec.yaml:15:5: error: layer 'b' (ReLU): top: blob 'x' is already produced by layer 'a' "
        "(only in-place layers, with top == bottom, may write a blob twice)",
        "spec.yaml:18:5: error: layer 'c' (ReLU): bottom: blob 'later' is produced by layer 'd', "
        "which comes later; layers run in the order written",
        "spec.yaml:29:5: error: layer 'e' (ReLU): give include or exclude rules, not both "
        "(Caffe's NetStateRule)",
    ]


def test_cycle(check_spec):
    text = HEADER + """
  - name: a
    type: Concat
    bottom: [data, b_out]
    top: a_out
  - name: b
    type: ReLU
    bottom: a_out
    top: b_out
"""
    assert errors_of(check_spec, text) == [
        "spec.yaml:10:20: error: layer 'a' (Concat): bottom: cycle: a → b → a (blob 'b_out')"]


def test_arity_eltwise_concat_and_losses(check_spec):
    text = HEADER + """
  - name: pool
    type: Pooling
    bottom: data
    top: pool
    pooling_param: {kernel_size: 2, stride: 2}
  - name: e1
    type: Eltwise
    bottom: data
    top: e1
  - name: e2
    type: Eltwise
    bottom: [data, pool]
    top: e2
  - name: cat
    type: Concat
    bottom: [data, pool]
    top: cat
  - name: loss
    type: SoftmaxWithLoss
    bottom: data
    top: loss
"""
    assert errors_of(check_spec, text) == [
        "spec.yaml:15:5: error: layer 'e1' (Eltwise): bottom: takes at least 2 inputs, got 1",
        "spec.yaml:19:5: error: layer 'e2' (Eltwise): bottom: all inputs must have one shape: input 1 (pool) "
        "is 1×3×16×16, input 0 (data) is 1×3×32×32",
        "spec.yaml:23:5: error: layer 'cat' (Concat): bottom: input 1 (pool: 1×3×16×16) does not match input 0 "
        "(data: 1×3×32×32) outside axis 1",
        "spec.yaml:27:5: error: layer 'loss' (SoftmaxWithLoss): bottom: takes 2 inputs "
        "(predictions, label), got 1",
    ]


def test_label_shape_mismatch(check_spec):
    text = """
name: t
layers:
  - name: data
    type: Input
    top: [data, label]
    input_param: {shape: [{dim: [4, 10]}, {dim: [5]}]}
  - name: loss
    type: SoftmaxWithLoss
    bottom: [data, label]
    top: loss
"""
    assert errors_of(check_spec, text) == [
        "spec.yaml:9:5: error: layer 'loss' (SoftmaxWithLoss): bottom: label label (5) must hold one label "
        "per prediction: predictions data are 4×10 with classes on axis 1, so the label needs 4 elements"]


def test_empty_output_names_layer_input_and_numbers(check_spec):
    text = HEADER + """
  - name: pool
    type: Pooling
    bottom: data
    top: pool
    pooling_param: {kernel_size: 40}
"""
    assert errors_of(check_spec, text) == [
        "spec.yaml:12:21: error: layer 'pool' (Pooling): pooling_param.kernel_size: output would be "
        "empty: input 1×3×32×32, on axis H the padded input 32 + 2·0 = 32 is smaller than the kernel 40"]


def test_overflowing_dimensions(check_spec):
    text = """
name: t
layers:
  - name: data
    type: Input
    top: data
    input_param: {shape: {dim: [1, 3, 2000000, 2000000]}}
  - name: big
    type: Input
    top: big
    input_param: {shape: {dim: [1, 99999999999]}}
"""
    assert errors_of(check_spec, text) == [
        "spec.yaml:3:5: error: layer 'data' (Input): output 1×3×2000000×2000000 would hold "
        "12,000,000,000,000 elements, more than netc allows (1,099,511,627,776)",
        "spec.yaml:10:36: error: layer 'big' (Input): input_param.shape.dim[1]: must be ≤ "
        "2147483647, got 99999999999",
    ]


def test_geometry_field_conflicts(check_spec):
    text = HEADER + """
  - name: c1
    type: Convolution
    bottom: data
    top: c1
    convolution_param: {num_output: 4, kernel_size: [3, 3, 3]}
  - name: c2
    type: Convolution
    bottom: data
    top: c2
    convolution_param: {num_output: 4, kernel_size: 3, kernel_h: 3, kernel_w: 3}
  - name: c3
    type: Convolution
    bottom: data
    top: c3
    convolution_param: {num_output: 4, kernel_size: 3, group: 2}
"""
    assert errors_of(check_spec, text) == [
        "spec.yaml:12:40: error: layer 'c1' (Convolution): convolution_param.kernel_size: kernel_size "
        "has 3 values, but the input has 2 spatial axes (give 1 or 2)",
        "spec.yaml:17:40: error: layer 'c2' (Convolution): convolution_param.kernel_size: give either "
        "kernel_size or kernel_h/kernel_w, not both",
        "spec.yaml:22:56: error: layer 'c3' (Convolution): convolution_param.group: group 2 does not "
        "divide the 3 input channels",
    ]


def test_warnings_unconsumed_output_and_untiled_windows(check_spec):
    text = """
name: t
layers:
  - name: data
    type: Input
    top: [data, label]
    input_param: {shape: [{dim: [2, 1, 7, 7]}, {dim: [2]}]}
  - name: conv
    type: Convolution
    bottom: data
    top: conv
    convolution_param: {num_output: 2, kernel_size: 3, stride: 3, weight_filler: {type: xavier}}
  - name: side
    type: ReLU
    bottom: conv
    top: side
  - name: ip
    type: InnerProduct
    bottom: conv
    top: ip
    inner_product_param: {num_output: 3, weight_filler: {type: xavier}}
  - name: loss
    type: SoftmaxWithLoss
    bottom: [ip, label]
    top: loss
"""
    assert warnings_of(check_spec, text) == [
        "spec.yaml:11:56: warning: layer 'conv' (Convolution): convolution_param.stride: 1 of 7 input "
        "positions on axis H and 1 of 7 on axis W are never read by any window (past the last window)",
        "spec.yaml:15:5: warning: layer 'side' (ReLU): top: blob 'side' is not used by any layer "
        "(it is computed only to be a net output)",
    ]


def test_errors_from_both_phases(check_spec):
    text = """
name: t
layers:
  - {name: d, type: Input, top: data, input_param: {shape: {dim: [1, 4]}}}
  - {name: a, type: ReLU, bottom: nope, top: a, include: {phase: TRAIN}}
  - {name: b, type: ReLU, bottom: nada, top: b, include: {phase: TEST}}
"""
    errs = errors_of(check_spec, text)
    assert errs == [
        "spec.yaml:4:27: error: layer 'a' (ReLU): bottom: unknown blob 'nope'",
        "spec.yaml:5:27: error: layer 'b' (ReLU): bottom: unknown blob 'nada'",
    ]


def test_unset_weight_filler_warns_in_trainable_nets(check_spec):
    text = """
name: t
layers:
  - {name: d, type: Input, top: [x, y], input_param: {shape: [{dim: [2, 4]}, {dim: [2]}]}}
  - {name: ip, type: InnerProduct, bottom: x, top: ip, inner_product_param: {num_output: 3}}
  - {name: l, type: SoftmaxWithLoss, bottom: [ip, y], top: l}
"""
    assert warnings_of(check_spec, text) == [
        "spec.yaml:4:56: warning: layer 'ip' (InnerProduct): inner_product_param.weight_filler: not set, "
        "so Caffe fills the weights with constant 0 and they start equal (set e.g. weight_filler: "
        "{type: xavier})"]
    # A deploy net (no loss) is not trained: no warning.
    assert warnings_of(check_spec, text.replace("  - {name: l, type: SoftmaxWithLoss, bottom: [ip, y], top: l}\n", "")) == []


def test_net_state_header_selects_stages(check_spec):
    text = """
name: t
state: {stage: deploy}
layers:
  - {name: d, type: Input, top: x, input_param: {shape: {dim: [2, 4]}}}
  - {name: a, type: ReLU, bottom: x, top: a, include: {stage: deploy}}
"""
    _, plans, _ = check_spec(text)
    assert [pl.name for pl in plans["TRAIN"].layers] == ["d", "a"]
