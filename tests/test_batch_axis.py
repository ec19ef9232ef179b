"""The batch on any one axis (netc issue #9): time-major T×N×… blobs plan, check, run, predict and
export with the batch on axis 1, and losses over the last axis match PyTorch."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import errors_of, netc, warnings_of

import netc as netc_api
from netc.compiler.layer import BatchSize, batch_axis
from netc.runtime.checkpoint import save_checkpoint
from netc.runtime.export import export_model
from netc.runtime.exported import batch_axes, load_exported, run_exported

T, D, V = 7, 4, 5  # steps, input features, classes

# x T×N×D → InnerProduct axis 2 → T×N×V scores; a T×N label with padding −1.
SEQ = f"""
name: seq
layers:
  - name: data
    type: Input
    top: [x, y]
    input_param: {{shape: [{{dim: [{T}, -1, {D}]}}, {{dim: [{T}, -1]}}]}}
  - name: ip
    type: InnerProduct
    bottom: x
    top: s
    inner_product_param:
      num_output: {V}
      axis: 2
      weight_filler: {{type: gaussian, std: 0.5}}
      bias_filler: {{type: uniform, min: -0.5, max: 0.5}}
  - {{name: prob, type: Softmax, bottom: s, top: p, softmax_param: {{axis: -1}}}}
  - name: loss
    type: SoftmaxWithLoss
    bottom: [s, y]
    top: loss
    softmax_param: {{axis: 2}}
    loss_param: {{ignore_label: -1}}
  - name: acc
    type: Accuracy
    bottom: [s, y]
    top: acc
    accuracy_param: {{axis: 2, ignore_label: -1}}
"""

# the deploy half: no label
DEPLOY = f"""
name: seq_deploy
layers:
  - {{name: data, type: Input, top: x, input_param: {{shape: {{dim: [{T}, -1, {D}]}}}}}}
  - name: ip
    type: InnerProduct
    bottom: x
    top: s
    inner_product_param:
      num_output: {V}
      axis: 2
      weight_filler: {{type: gaussian, std: 0.5}}
      bias_filler: {{type: uniform, min: -0.5, max: 0.5}}
  - {{name: prob, type: Softmax, bottom: s, top: p, softmax_param: {{axis: -1}}}}
"""


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, n, D)).astype(np.float32)
    y = rng.integers(0, V, (T, n)).astype(np.float32)
    y[rng.random((T, n)) < 0.3] = -1  # padded / ignored positions
    y[0, 0] = 2  # at least one counted label
    return x, y


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# --- planning -----------------------------------------------------------------------------------


def test_plan_keeps_the_batch_on_axis_1(check_spec):
    spec, plans, diags = check_spec(SEQ, phase="TRAIN")
    assert not spec.diagnostics.errors, diags
    p = plans["TRAIN"]
    assert p.blobs["x"] == (T, "N", D) and p.blobs["y"] == (T, "N") and p.blobs["s"] == (T, "N", V)
    assert {b: p.batch_axis(b) for b in ("x", "y", "s", "p")} == {"x": 1, "y": 1, "s": 1, "p": 1}
    assert p.batch_axis("loss") is None and p.batch_size == "N"
    ip = next(pl for pl in p.layers if pl.name == "ip")
    assert ip.macs == T * D * V  # per sample: T products of D×V
    assert ip.params["weight"].shape == (V, D)
    # per sample: x T·D, y T, s and p T·V floats (the scalars are not counted)
    assert p.activation_bytes() == 4 * (T * D + T + 2 * T * V)
    loss = next(pl for pl in p.layers if pl.name == "loss")
    fact = loss.unit.label_fact(loss.bottom_shapes)
    assert (fact.shape, fact.classes, fact.ignore_label) == ((T,), V, -1)


def test_a_fixed_batch_lands_on_the_batch_axis(check_spec):
    spec, plans, diags = check_spec(SEQ, phase="TRAIN", batch=3)
    assert not spec.diagnostics.errors, diags
    p = plans["TRAIN"]
    assert p.blobs["x"] == (T, 3, D) and p.blobs["y"] == (T, 3) and p.blobs["p"] == (T, 3, V)
    assert isinstance(p.blobs["s"][1], BatchSize) and not isinstance(p.blobs["s"][0], BatchSize)
    assert p.batch_axis("s") == 1 and p.batch_size == 3
    assert p.activation_bytes() == 4 * (T * D + T + 2 * T * V)  # still per sample
    loss = next(pl for pl in p.layers if pl.name == "loss")
    assert loss.unit.label_fact(loss.bottom_shapes).shape == (T,)
    # parameters never carry the batch mark
    assert all(type(d) is int for decl in p.params.values() for d in decl.shape)
    from netc.compiler.memory import estimate

    est = estimate(p)
    assert est.batch == 3 and est.inputs == 4 * (T * 3 * D + T * 3)


def test_a_concrete_time_major_input_marks_its_batch(check_spec):
    # no −1 anywhere: the Input's batch is axis 0, as before (Caffe's rule)
    text = SEQ.replace(f"[{T}, -1, {D}]", f"[{T}, 3, {D}]").replace(f"[{T}, -1]", f"[{T}, 3]")
    spec, plans, diags = check_spec(text, phase="TRAIN", batch=2)
    assert not spec.diagnostics.errors, diags
    p = plans["TRAIN"]
    assert p.blobs["x"] == (2, 3, D) and p.batch_axis("x") == 0


def test_check_text_and_json_say_the_batch_axis(write_spec):
    path = write_spec(SEQ)
    r = netc("check", path, "--batch", 4)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].endswith("seq — TRAIN phase, batch 4 on axis 1")
    row = next(line for line in lines if " x " in line)
    assert f"{T}×4×{D}" in row and row.rstrip().endswith("batch axis 1")
    assert any(f"{T}×4" in line and line.rstrip().endswith("batch axis 1") for line in lines
               if " y " in line)
    assert any(f"s     {T}×4×{V}" in line for line in lines)
    r = netc("check", path, "--format", "json")
    doc = json.loads(r.stdout)["specs"][0]
    assert doc["inputs"] == {"x": [T, "N", D], "y": [T, "N"]}
    assert doc["batch_axes"] == {"x": 1, "y": 1, "p": 1, "loss": None, "acc": None}
    r = netc("check", path, "--format", "json", "--batch", 4)
    doc = json.loads(r.stdout)["specs"][0]
    assert doc["inputs"] == {"x": [T, 4, D], "y": [T, 4]} and doc["memory"]["batch"] == 4
    # a batch-major net says nothing new
    r = netc("check", write_spec(DEPLOY.replace(f"[{T}, -1, {D}]", f"[-1, {T}, {D}]"), "bm.yaml"))
    assert r.stdout.splitlines()[0].endswith("batch N") and "batch axis" not in r.stdout


def test_mixed_batch_axes_are_said_per_input(write_spec):
    path = write_spec(f"""
        name: mixed
        layers:
          - {{name: data, type: Input, top: [x, lengths], input_param: {{shape: [{{dim: [{T}, -1, {D}]}}, {{dim: [-1]}}]}}}}
          - {{name: ip, type: InnerProduct, bottom: x, top: s, inner_product_param: {{num_output: 2, axis: 2}}}}
        """)
    r = netc("check", path, "--batch", 2)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].endswith("batch 2 (its axis per input below)")
    x_row, lengths_row = r.stdout.splitlines()[2:4]
    assert x_row.split() == ["data", "Input", "x", f"{T}×2×{D}", "batch", "axis", "1"]
    assert lengths_row.split() == ["lengths", "2", "batch", "axis", "0"]


# --- errors -------------------------------------------------------------------------------------


def _two_layouts(layer: str, batch: str = "") -> str:
    return f"""
        layers:
          - {{name: a, type: Input, top: tm, input_param: {{shape: {{dim: [4, -1, 8]}}}}}}
          - {{name: b, type: Input, top: bm, input_param: {{shape: {{dim: [-1, 4, 8]}}}}}}
          - {layer}
        """


@pytest.mark.parametrize("batch", [None, 4])
def test_inputs_with_the_batch_on_different_axes_do_not_join(check_spec, batch):
    # at --batch 4 both are 4×4×8: only the batch axes tell them apart
    for layer in ("{name: c, type: Concat, bottom: [tm, bm], top: c, concat_param: {axis: 2}}",
                  "{name: c, type: Eltwise, bottom: [tm, bm], top: c}"):
        errs = errors_of(check_spec, _two_layouts(layer), batch=batch)
        assert len(errs) == 1, errs
        assert "input 1 (bm: " in errs[0] and "holds the batch on axis 0, input 0 (tm: " in errs[0]
        assert "on axis 1: join blobs of one layout" in errs[0]


def test_an_output_with_two_batch_axes_is_an_error_not_a_crash():
    """The planner's guard for any layer (none of today's joins dimensions of two inputs so):
    an output that would hold the batch on two axes is a SpecError naming the inputs' axes."""
    from types import SimpleNamespace

    from netc.compiler.plan import _one_batch_axis
    from netc.spec.errors import SpecError

    unit = SimpleNamespace(spec=SimpleNamespace(bottom=["bm", "tm", "w"]))
    b = BatchSize(4)
    bottoms = [(b, 4, 8), (4, b, 8), (3, 3)]
    _one_batch_axis(unit, bottoms, (4, b, 8))  # one batch axis: fine
    with pytest.raises(SpecError) as e:
        _one_batch_axis(unit, bottoms, (b, b, 8))
    assert e.value.message.startswith("output 4×4×8 would hold the batch on axes 0 and 1: the "
                                      "inputs carry the batch on different axes (bm 4×4×8 on "
                                      "axis 0, tm 4×4×8 on axis 1)")


def test_two_symbolic_dims_in_one_input(check_spec):
    errs = errors_of(check_spec, """
        layers:
          - {name: a, type: Input, top: x, input_param: {shape: {dim: [-1, -1, 8]}}}
        """)
    assert len(errs) == 1 and "at most one dimension may be −1" in errs[0]


def test_class_axis_on_the_batch_and_transposed_labels(check_spec):
    errs = errors_of(check_spec, SEQ.replace("softmax_param: {axis: 2}", "softmax_param: {axis: 1}"),
                     phase="TRAIN")
    assert len(errs) == 1 and "the class axis cannot be the batch axis 1 (predictions s are " \
        f"{T}×N×{V}" in errs[0]
    # N×T labels for T×N×V predictions: same count, wrong layout
    text = SEQ.replace(f"{{dim: [{T}, -1]}}", f"{{dim: [-1, {T}]}}")
    errs = errors_of(check_spec, text, phase="TRAIN")
    assert len(errs) == 2 and all(f"label y (N×{T}) must hold one label per prediction" in e
                                  and f"so the label needs {T}×N elements" in e for e in errs)
    # ... which a fixed batch would not show by the shapes alone (T = N)
    errs = errors_of(check_spec, text, phase="TRAIN", batch=T)
    assert len(errs) == 2, errs
    # a T×N×1 label is the same layout
    text = SEQ.replace(f"{{dim: [{T}, -1]}}", f"{{dim: [{T}, -1, 1]}}")
    assert errors_of(check_spec, text, phase="TRAIN") == []


def test_softmax_over_the_batch_axis_warns(check_spec):
    text = SEQ.replace("softmax_param: {axis: -1}", "softmax_param: {}")
    warns = [w for w in warnings_of(check_spec, text, phase="TRAIN") if "batch axis" in w]
    assert len(warns) == 1 and "layer 'prob' (Softmax): softmax_param.axis: axis 1 is the batch " \
        "axis of s" in warns[0]
    assert not [w for w in warnings_of(check_spec, SEQ, phase="TRAIN") if "batch axis" in w]


def test_flatten_and_reshape_keep_the_batch(check_spec):
    def net(layer):
        return f"""
            layers:
              - {{name: a, type: Input, top: x, input_param: {{shape: {{dim: [{T}, -1, 2, 3]}}}}}}
              - {layer}
            """

    _, plans, diags = check_spec(net("{name: f, type: Flatten, bottom: x, top: f, "
                                     "flatten_param: {axis: 2}}"))
    assert plans["TRAIN"].blobs["f"] == (T, "N", 6), diags
    errs = errors_of(check_spec, net("{name: f, type: Flatten, bottom: x, top: f}"))
    assert len(errs) == 1 and "cannot merge axes 1..3" in errs[0] and "axis 1 is the batch" in errs[0]
    for dims, want in (([0, 0, -1], (T, "N", 6)), ([-1, 0, 3, 2], (T, "N", 3, 2)),
                       ([0, 0, 6, 1], (T, "N", 6, 1))):
        _, plans, diags = check_spec(net(f"{{name: r, type: Reshape, bottom: x, top: r, "
                                         f"reshape_param: {{shape: {{dim: {dims}}}}}}}"))
        assert plans["TRAIN"].blobs["r"] == want, (dims, diags)
        assert plans["TRAIN"].batch_axis("r") == want.index("N")
    errs = errors_of(check_spec, net("{name: r, type: Reshape, bottom: x, top: r, "
                                     "reshape_param: {shape: {dim: [0, -1]}}}"))
    assert len(errs) == 1 and "would merge the batch axis" in errs[0]
    errs = errors_of(check_spec, net("{name: r, type: Reshape, bottom: x, top: r, "
                                     "reshape_param: {shape: {dim: [1, 0, -1]}}}"))
    assert len(errs) == 1 and "moves elements across the batch axis" in errs[0]
    # a fixed batch merges like any dimension (Caffe): the mark is gone, the count is right
    _, plans, diags = check_spec(net("{name: r, type: Reshape, bottom: x, top: r, "
                                     "reshape_param: {shape: {dim: [0, -1]}}}"), batch=2)
    assert plans["TRAIN"].blobs["r"] == (T, 12) and plans["TRAIN"].batch_axis("r") is None


def test_prelu_channels_on_the_batch_axis(check_spec):
    text = f"""
        layers:
          - {{name: a, type: Input, top: x, input_param: {{shape: {{dim: [{T}, -1, 3]}}}}}}
          - {{name: pr, type: PReLU, bottom: x, top: x}}
        """
    errs = errors_of(check_spec, text)
    assert len(errs) == 1 and "the channels are axis 1, which is the batch axis of x" in errs[0]
    assert errors_of(check_spec, text.replace("top: x}", "top: x, prelu_param: {channel_shared: "
                                                         "true}}")) == []
    warns = warnings_of(check_spec, text, batch=2)
    assert any("each sample of the batch gets its own slope" in w for w in warns)


# --- numbers: the loss and its gradients against PyTorch ----------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("seq") / "seq.yaml"
    import textwrap

    path.write_text(textwrap.dedent(SEQ).lstrip())
    m = netc_api.load(str(path), phase="TRAIN")
    m.init(jax.random.PRNGKey(3))
    return m


@pytest.mark.parametrize("n", [1, 3])
def test_loss_and_gradients_match_torch_ignore_index(model, n):
    x, y = _data(n, seed=n)
    params = model.params

    def objective(params, x):
        loss, (blobs, _) = model.loss(params, model.state, {"x": x, "y": y}, train=False)
        return loss, blobs

    (loss, blobs), (g_params, g_x) = jax.jit(jax.value_and_grad(
        objective, argnums=(0, 1), has_aux=True))(params, jnp.asarray(x))
    w = torch.tensor(np.asarray(params["ip"]["weight"]), dtype=torch.float64, requires_grad=True)
    b = torch.tensor(np.asarray(params["ip"]["bias"]), dtype=torch.float64, requires_grad=True)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    logits = xt @ w.T + b  # T×N×V
    target = torch.tensor(y, dtype=torch.int64)  # T×N
    # PyTorch wants the classes on axis 1: N×V×T scores for N×T targets
    ref = torch.nn.CrossEntropyLoss(ignore_index=-1)(logits.permute(1, 2, 0), target.T)
    ref.backward()
    np.testing.assert_allclose(float(loss), ref.item(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g_params["ip"]["weight"]), w.grad.numpy(), rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(g_params["ip"]["bias"]), b.grad.numpy(), rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(g_x), xt.grad.numpy(), rtol=1e-4, atol=1e-6)
    # Accuracy over the last axis, ignoring the padding; Softmax axis −1
    scores = logits.detach().numpy()
    valid = y != -1
    assert float(blobs["acc"]) == pytest.approx(
        ((scores.argmax(-1) == y) & valid).sum() / valid.sum(), abs=1e-6)
    np.testing.assert_allclose(np.asarray(blobs["p"]), _softmax(scores), rtol=1e-5, atol=1e-6)


def test_batch_size_normalization_divides_by_t_times_n(write_spec):
    """Caffe's BATCH_SIZE for SoftmaxWithLoss is the count of the axes before the class axis:
    T·N for T×N×V scores, whatever the ignored positions."""
    path = write_spec(SEQ.replace("loss_param: {ignore_label: -1}",
                                  "loss_param: {ignore_label: -1, normalization: BATCH_SIZE}"))
    m = netc_api.load(str(path), phase="TRAIN")
    params, state = m.init(jax.random.PRNGKey(0))
    x, y = _data(2)
    blobs, _ = jax.jit(m.apply)(params, state, {"x": x, "y": y})
    z = np.asarray(blobs["s"], np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    valid = y != -1
    picked = np.take_along_axis(logp, np.where(valid, y, 0).astype(int)[..., None], -1)[..., 0]
    assert float(blobs["loss"]) == pytest.approx(-(picked * valid).sum() / (T * 2), rel=1e-5)


# --- predict and export with the batch on axis 1 -------------------------------------------------


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    path = root / "deploy.yaml"
    import textwrap

    path.write_text(textwrap.dedent(DEPLOY).lstrip())
    m = netc_api.load(str(path))
    params, state = m.init(jax.random.PRNGKey(5))
    ckpt = save_checkpoint(root / "run", "seq_iter_0", {"params": params, "state": state}, {},
                           iteration=0)
    w = np.asarray(params["ip"]["weight"])
    b = np.asarray(params["ip"]["bias"])
    return {"path": path, "model": m, "ckpt": ckpt, "root": root,
            "reference": lambda x: _softmax(x.astype(np.float64) @ w.T + b)}


def test_predict_takes_the_batch_on_axis_1(deployed, tmp_path):
    m = deployed["model"]
    assert m.batch_axes["x"] == 1 and m.batch_axes["p"] == 1
    for n in (2, 5):
        x, _ = _data(n)
        out = m.predict({"x": x})
        assert list(out) == ["p"] and out["p"].shape == (T, n, V)
        np.testing.assert_allclose(out["p"], deployed["reference"](x), rtol=1e-5, atol=1e-6)
    x, _ = _data(3)
    np.savez(tmp_path / "in.npz", x=x)
    r = netc("predict", deployed["path"], "--weights", deployed["ckpt"], tmp_path / "in.npz", "-o",
             tmp_path / "out.npz")
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["p"], deployed["reference"](x),
                               rtol=1e-5, atol=1e-6)
    # the batch-free axes are checked, the batch axis is free
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, T, D), np.float32))
    r = netc("predict", deployed["path"], "--weights", deployed["ckpt"], tmp_path / "bad.npz",
             "-o", tmp_path / "o.npz")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"array 'x' has shape (3, {T}, {D}), but the net's blob 'x' is {T}×N×{D}, batch on " \
        f"axis 1 ({T}×N×{D} in the spec)" in r.stderr


def test_predict_refuses_inconsistent_batches(tmp_path, write_spec):
    m = netc_api.load(str(write_spec(SEQ)))
    m.init()
    x, y = _data(3)
    with pytest.raises(netc_api.NetcError, match=r"different batch sizes: 2 \(y\); 3 \(x\)"):
        m.predict({"x": x, "y": y[:, :2]})
    out = m.predict({"x": x, "y": y}, outputs=["loss", "acc"])
    assert np.isfinite(out["loss"]) and 0 <= out["acc"] <= 1


def test_export_with_the_batch_on_axis_1_runs_at_two_batch_sizes(deployed):
    out = deployed["root"] / "art"
    manifest = json.loads(export_model(deployed["path"], deployed["ckpt"], out,
                                       platforms=("cpu",)).read_text())
    assert manifest["inputs"] == [{"name": "x", "shape": [T, "b", D], "dtype": "float32"}]
    assert manifest["outputs"] == [{"name": "p", "shape": [T, "b", V], "dtype": "float32"}]
    assert manifest["batch"] == {"axis": 1, "axes": {"x": 1}, "symbol": "b"}
    loaded = load_exported(out)
    assert batch_axes(loaded[1]) == {"x": 1}
    for n in (2, 5):
        x, _ = _data(n, seed=n)
        got = run_exported(loaded, {"x": x})["p"]
        assert got.shape == (T, n, V)
        np.testing.assert_allclose(got, deployed["reference"](x), rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="axis 0 must be 7"):
        run_exported(loaded, {"x": np.zeros((3, T, D), np.float32)})
    # a fixed batch: the size on axis 1
    fixed = json.loads(export_model(deployed["path"], deployed["ckpt"], deployed["root"] / "fixed",
                                    platforms=("cpu",), batch=3).read_text())
    assert fixed["inputs"][0]["shape"] == [T, 3, D]
    assert fixed["batch"] == {"axis": 1, "axes": {"x": 1}, "size": 3}


def test_batch_axes_of_an_older_manifest():
    old = {"inputs": [{"name": "data", "shape": ["b", 1, 28, 28]}],
           "batch": {"axis": 0, "symbol": "b"}}
    assert batch_axes(old) == {"data": 0}
    assert batch_axes({**old, "batch": {"axis": 0, "size": 4}}) == {"data": 0}


def test_batch_axis_helper():
    assert batch_axis((T, "N", 3)) == 1 and batch_axis((BatchSize(4), 3)) == 0
    assert batch_axis((4, 3)) is None
    b = BatchSize(4)
    assert b == 4 and str(b) == "4" and json.dumps([b]) == "[4]" and type(b * 2) is int
