"""Commands that need JAX report every spec problem at once, like `netc check`."""

from conftest import netc

SPEC = """name: t
layers:
  - {name: d, type: Input, top: data, input_param: {shape: {dim: [1, 3, 8, 8]}}}
  - {name: a, type: Convolutin, bottom: data, top: a}
  - {name: b, type: Pooling, bottom: data, top: b, pooling_param: {kernel_size: 20}}
"""


def test_train_reports_validation_and_plan_errors_together(write_spec):
    path = write_spec(SPEC)
    r = netc("train", path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ": error: " in ln]
    assert [ln.split(": error: ")[0] for ln in lines] == [f"{path}:4:15", f"{path}:5:68"]
    assert "unknown layer type 'Convolutin'" in lines[0] and "output would be empty" in lines[1]
