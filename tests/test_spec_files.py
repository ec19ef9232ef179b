"""The document forms: a net with a `solver:` section, a separate solver file naming its `net`."""

from netc.compiler.catalogue import layer_models
from netc.spec.net import parse_spec

NET = """
name: tiny
layers:
  - {name: d, type: Input, top: [x, y], input_param: {shape: [{dim: [4, 3]}, {dim: [4]}]}}
  - {name: ip, type: InnerProduct, bottom: x, top: ip, inner_product_param: {num_output: 2}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip, y], top: loss}
"""


def test_solver_section_is_validated(write_spec):
    path = write_spec(NET + "solver: {base_lr: 1e-2, lr_policy: step, gamma: 0.1, max_iter: 10}\n")
    spec = parse_spec(str(path), layer_models(), display_name="spec.yaml")
    assert [d.format() for d in spec.diagnostics.errors] == [
        "spec.yaml:6:25: error: solver.lr_policy: lr_policy 'step' needs stepsize"]


def test_solver_section_ok_and_numbers(write_spec):
    path = write_spec(NET + "solver: {base_lr: 1e-2, lr_policy: fixed, momentum: 0.9, weight_decay: 5e-4}\n")
    spec = parse_spec(str(path), layer_models())
    assert not spec.diagnostics.items
    assert spec.solver.base_lr == 0.01 and spec.solver.weight_decay == 0.0005


def test_separate_solver_file_names_its_net(write_spec):
    write_spec(NET, "net.yaml")
    path = write_spec("net: net.yaml\nbase_lr: 0.1\nlr_policy: fixed\nmax_iter: 5\n", "solver.yaml")
    spec = parse_spec(str(path), layer_models())
    assert not spec.diagnostics.items
    assert spec.name == "tiny" and spec.solver.base_lr == 0.1 and spec.solver_file == str(path)
    missing = write_spec("net: nowhere.yaml\nbase_lr: 0.1\nlr_policy: fixed\n", "s2.yaml")
    spec = parse_spec(str(missing), layer_models(), display_name="s2.yaml")
    assert spec.diagnostics.errors[0].format().startswith(
        "s2.yaml:1:1: error: net: no such file 'nowhere.yaml'")


def test_solver_field_misspelt(write_spec):
    path = write_spec(NET + "solver: {base_lr: 0.1, lr_policy: fixed, momentun: 0.9}\n")
    spec = parse_spec(str(path), layer_models(), display_name="spec.yaml")
    assert [d.format() for d in spec.diagnostics.errors] == [
        "spec.yaml:6:42: error: solver.momentun: unknown field (did you mean 'momentum'?)"]
