"""netc's command line: a thin click group. `netc check` never imports JAX; commands that need it
import it when they run."""

from __future__ import annotations

import json
import sys

import click

from netc.__main__ import COMPILING

PHASES = click.Choice(["TRAIN", "TEST"], case_sensitive=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="netc")
@click.option("--no-compile-cache", "no_compile_cache", is_flag=True,
              help="Do not use the persistent compilation cache (also NETC_NO_COMPILE_CACHE=1). "
                   "By default compiled programs are kept in $NETC_CACHE_DIR, else "
                   "$XDG_CACHE_HOME/netc/jax (~/.cache/netc/jax), and reused by later runs.")
@click.pass_context
def main(ctx: click.Context, no_compile_cache: bool) -> None:
    """netc: describe a network in Caffe-style YAML, check its shapes, train it with JAX.

    \b
    netc check models/lenet.yaml      shapes, parameters, MACs, receptive fields; errors as FILE:LINE:COL
    netc import-caffe NET.prototxt -o NET.yaml    a Caffe net (protobuf text format) as netc YAML
    netc import-weights SPEC STATE.safetensors    PyTorch weights (safetensors) as a netc checkpoint
    netc layers [TYPE]                the layer catalogue with fields, defaults and examples
    netc schema                       a JSON Schema of the spec language for editors
    netc train models/lenet.yaml      train with the spec's solver (Caffe semantics), snapshots, resume
    netc runs                         the runs under runs/: progress, best test, status
    netc plot RUN_DIR... -o curves.png   loss, test metrics and learning rate of runs, overlaid
    netc test SPEC --weights CKPT     the TEST net's accuracy/loss over its Data layer
    netc predict SPEC --weights CKPT IN.npz -o OUT.npz   a forward pass on given input blobs
    netc time models/lenet.yaml       per-layer forward/backward milliseconds and the whole step
    netc graph SPEC -o net.html       the net drawn: SVG, PNG, Graphviz DOT, or a clickable page
    netc inspect saliency SPEC --weights RUN -o s.png   filters, feature maps, top patches,
                                      occlusion, saliency, t-SNE of a trained net (PNG)

    Commands that compile keep the compiled programs in a persistent cache (~/.cache/netc/jax,
    or $NETC_CACHE_DIR), so a second run of a net starts sooner; --no-compile-cache opts out.
    """
    if ctx.invoked_subcommand in COMPILING:
        from netc.runtime.compile_cache import configure

        configure(enabled=not no_compile_cache)


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)  # pragma: no cover


def _rf_text(rf) -> str:
    if not rf:
        return ""
    return "×".join(str(r) for r, _ in rf) + " /" + "×".join(str(j) for _, j in rf)


def _check_one(path: str, phase: str | None, stages, level: int, batch: int | None,
               input_shapes=None):
    """Validate and plan one spec: (spec, the plan to show or None)."""
    from netc.compiler.report import check_file

    return check_file(path, phase=phase, stages=stages, level=level, batch=batch,
                      input_shapes=input_shapes)


def _input_shapes(ctx, param, values) -> dict:
    """--input-shape BLOB=N,C,H,W (repeatable) as {blob: shape}; a bad value is a usage error."""
    from netc.compiler.input_shapes import InputShapeError, parse_input_shape

    shapes: dict = {}
    for text in values:
        try:
            blob, shape = parse_input_shape(text)
        except InputShapeError as e:
            raise click.BadParameter(str(e), ctx=ctx, param=param) from None
        if blob in shapes:
            raise click.BadParameter(f"'{blob}' is declared twice", ctx=ctx, param=param)
        shapes[blob] = shape
    return shapes


INPUT_SHAPE = click.option(
    "--input-shape", "input_shapes", multiple=True, callback=_input_shapes,
    metavar="BLOB=N,C,H,W",
    help="Declare the shape of a data layer's top whose sizes live outside the spec: an LMDB "
         "Data layer without its database, ImageData without new_height/new_width, SegNet's "
         "DenseImageData (repeatable). The first dimension is the batch: the layer's "
         "batch_size, or N for any.")


def _report_json(spec, plan) -> dict:
    from netc.compiler.report import check_report

    return check_report(spec, plan)


def _print_table(spec, plan) -> None:
    from netc.compiler.layer import fmt_shape
    from netc.compiler.memory import estimate_for, fmt_bytes

    trainable, frozen = plan.param_counts()
    batch = plan.batch_size
    axes = {plan.batch_axis(b) for b in plan.inputs}
    # the batch axis is said wherever an input does not hold it on axis 0 (time-major T×N×…)
    where = axes != {0} and bool(axes)
    on = axes - {None}
    at = (f" on axis {next(iter(on))}" if len(on) == 1 and None not in axes
          else " (its axis per input below)") if where else ""
    click.echo(f"{spec.diagnostics.file}: {spec.name or '(unnamed net)'} — {plan.state.phase} phase, "
               f"batch {'?' if batch is None else batch}{at}")
    rows = [("layer", "type", "top", "shape", "params", "MACs/sample", "rf /jump", "")]
    for pl in plan.layers:
        own = sum(d.count for r, d in pl.params.items()
                  if pl.param_owner[r][0] == pl.name and not d.carry)
        for j, (t, s) in enumerate(zip(pl.tops, pl.top_shapes)):
            first = j == 0
            detail = pl.unit.describe() if first else ""
            if where and pl.unit.is_data:
                axis = plan.batch_axis(t)
                said = "no batch axis" if axis is None else f"batch axis {axis}"
                detail = f"{said}; {detail}" if detail else said
            rows.append((pl.name if first else "", pl.type if first else "", t, fmt_shape(s),
                         _fmt_int(own) if first and own else "", _fmt_int(pl.macs) if first and pl.macs else "",
                         _rf_text(pl.rf) if first else "", detail))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {4, 5}
    for r in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        click.echo("  " + "  ".join(cells).rstrip())
    click.echo(f"  trainable parameters {_fmt_int(trainable)}; non-trainable {_fmt_int(frozen)}; "
               f"MACs/sample {_fmt_int(plan.macs)}; activations/sample {_fmt_bytes(plan.activation_bytes())}")
    mem = estimate_for(spec, plan)
    click.echo(f"  {mem.summary()}; inference alone ≈ {fmt_bytes(mem.inference)}")


@main.command()
@click.argument("specs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--phase", type=PHASES, default=None,
              help="Check only this NetState phase (default: check TRAIN and TEST, show TRAIN).")
@click.option("--stage", "stages", multiple=True, help="A NetState stage (repeatable).")
@click.option("--level", type=int, default=0, show_default=True, help="The NetState level.")
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="Fix the batch size of every input blob.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "github", "sarif"]),
              default="text", show_default=True,
              help="json: one JSON document; github: Actions annotations; sarif: a SARIF 2.1.0 "
                   "log for code scanning.")
@click.option("-q", "--quiet", is_flag=True, help="Print only problems.")
@INPUT_SHAPE
def check(specs, phase, stages, level, batch, fmt, quiet, input_shapes) -> None:
    """Validate specs and infer every blob's shape, without JAX.

    Prints, per spec, each layer's output shapes, parameter count, multiply-accumulates per sample
    and receptive field / jump, then the totals. Errors and warnings are printed as
    FILE:LINE:COL: error: ... A problem found in both phases is printed once; where the phases
    differ (e.g. their batch) the message names them. A spec that looks meant for training (it
    has a solver or a loss layer) is also warned about what `netc train` would reject: no solver,
    no loss in the TRAIN net. A Caffe .prototxt is recognised: convert it with `netc import-caffe`.
    Exit status: 0 all good, 1 any spec has an error, 2 usage error.
    """
    phase = phase.upper() if phase else None
    failed = False
    docs = []
    for path in specs:
        spec, plan = _check_one(path, phase, stages, level, batch, input_shapes)
        failed |= bool(spec.diagnostics.errors)
        if fmt == "json":
            docs.append(_report_json(spec, plan))
            continue
        if fmt == "sarif":
            docs.append(spec)
            continue
        for d in spec.diagnostics.sorted():
            if fmt == "github":
                click.echo(f"::{d.severity} file={d.file},line={d.line},col={d.col}::{d.message}")
            else:
                click.echo(d.format(), err=True)
        if fmt == "text" and plan is not None and not spec.diagnostics.errors and not quiet:
            _print_table(spec, plan)
    if fmt == "json":
        click.echo(json.dumps({"specs": docs}, indent=2))
    elif fmt == "sarif":
        from netc.compiler.report import sarif_log

        click.echo(json.dumps(sarif_log(docs), indent=2))
    sys.exit(1 if failed else 0)


@main.command(name="import-caffe")
@click.argument("net", type=click.Path(dir_okay=False))
@click.option("--solver", type=click.Path(dir_okay=False), default=None,
              help="A Caffe solver .prototxt: becomes the YAML's solver: section.")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="A .caffemodel (binary NetParameter): its blobs become a netc checkpoint.")
@click.option("--weights-out", type=click.Path(dir_okay=False), default=None,
              help="The checkpoint's name (default: the YAML's path without .yaml, plus "
                   ".weights: OUT.weights.json + OUT.weights.safetensors).")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), default=None,
              help="Where to write the YAML (default: standard output; required with --weights).")
def import_caffe(net, solver, weights, weights_out, output) -> None:
    """Translate a Caffe net from protobuf text format (.prototxt) to netc YAML, and optionally
    its trained weights (.caffemodel) to a netc checkpoint.

    \b
    netc import-caffe lenet_train_test.prototxt --solver lenet_solver.prototxt -o lenet.yaml
    netc import-caffe deploy.prototxt --weights bvlc_alexnet.caffemodel -o alexnet.yaml
    netc predict alexnet.yaml in.npz --weights alexnet.weights.json -o out.npz

    V1 nets (layers { type: CONVOLUTION blobs_lr: 1 }) are upgraded as Caffe upgrades them, and
    forks' additions that have a clear meaning are translated (pooling ceil_mode, SegNet's BN);
    comments are kept. Problems that do not stop the import (a *_param block the layer's type
    does not read, which is dropped; a layer type or field netc does not know, which is kept for
    `netc check` to refuse) are printed as FILE:LINE:COL: warning: ... Weights are matched to
    layers by name (Caffe's CopyTrainedLayersFrom); a mis-shaped blob is an error naming the
    layer and blob index. Exit status 0, or 1 on an error.
    """
    if weights and output is None:
        raise click.UsageError("--weights needs -o: the checkpoint is made for the written YAML")
    yaml_text = _caffe_to_yaml(net, solver)
    if output is None:
        click.echo(yaml_text, nl=False)
        return
    try:
        with open(output, "w", encoding="utf-8") as f:
            f.write(yaml_text)
    except OSError as e:
        click.echo(f"{output}: error: cannot write file: {e.strerror}", err=True)
        sys.exit(1)
    click.echo(f"wrote {output}", err=True)
    if weights is not None:
        _import_caffemodel(weights, output, weights_out)


def _caffe_to_yaml(net: str, solver: str | None) -> str:
    """import-caffe's YAML for the net (and solver) .prototxt; its warnings printed, and exit
    status 1 on an error."""
    from netc.files import FileRefused, read_regular
    from netc.spec.prototxt import PrototxtError, prototxt_to_yaml

    warnings: list = []
    path = net
    try:
        text = read_regular(net, 64 << 20)  # a regular file only, and bounded
        solver_text = None
        if solver is not None:
            path = solver
            solver_text = read_regular(solver, 64 << 20)
        path = net
        yaml_text = prototxt_to_yaml(text, solver_text, net_source=net, solver_source=solver,
                                     warnings=warnings,
                                     comment=f"Translated from {net} by netc import-caffe.")
    except FileRefused as e:
        click.echo(f"{path}: error: cannot read this file: it {e.message}", err=True)
        sys.exit(1)
    except OSError as e:
        click.echo(f"{path}: error: cannot read file: {e.strerror}", err=True)
        sys.exit(1)
    except PrototxtError as e:
        click.echo(f"{e.source or net}:{e.line}:{e.col}: error: {e.message}", err=True)
        sys.exit(1)
    for w in warnings:
        click.echo(str(w), err=True)
    return yaml_text


def _import_caffemodel(weights: str, output: str, weights_out: str | None) -> None:
    """import-caffe --weights: the .caffemodel's blobs as a checkpoint for the YAML `output`."""
    from netc.errors import NetcError
    from netc.runtime.caffemodel import import_caffemodel

    if weights_out is None:
        stem = output[:-5] if output.endswith(".yaml") else output
        weights_out = stem + ".weights"
    try:
        written, _ = import_caffemodel(weights, output, weights_out, err=sys.stderr)
    except NetcError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    click.echo(f"wrote {written}", err=True)


@main.command(name="import-weights")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.argument("state", type=click.Path(dir_okay=False))
@click.option("--map", "map_name", default="torchvision", show_default=True, metavar="NAME|FILE",
              help="How state-dict keys become the net's layer/role blobs: a built-in map "
                   "(torchvision) or a mapping file (YAML; format in README.md).")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), default=None,
              help="The checkpoint's name (default: STATE without .safetensors, plus .weights: "
                   "STATE.weights.json + STATE.weights.safetensors).")
def import_weights(spec, state, map_name, output) -> None:
    """Import a PyTorch state dict saved with safetensors into a netc checkpoint for SPEC.

    \b
    netc import-weights models/resnet18_torchvision.yaml resnet18.safetensors -o r18.weights
    netc predict models/resnet18_torchvision.yaml in.npz --weights r18.weights.json -o out.npz

    BatchNorm running statistics go to Caffe's BatchNorm (scale factor 1), its weight/bias to the
    following Scale layer. Tensors no rule maps, blobs of the net no tensor fills, and shape
    mismatches are listed by name with their shapes, and nothing is written. .pt / .pth files
    (pickles) are refused: convert them with torch.load(..., weights_only=True) and
    safetensors' save_file. Exit status 0, or 1 on an error.
    """
    from netc.runtime.torch_weights import import_torch_weights

    def run():
        path, _ = import_torch_weights(spec, state, map_name, output, err=sys.stderr)
        click.echo(f"wrote {path}", err=True)

    _run_command(run)


@main.command()
@click.argument("types", nargs=-1)
def layers(types) -> None:
    """List the layer catalogue: each type's fields, defaults and a YAML example."""
    from netc.compiler.catalogue import describe_fields, layer_models, units
    from netc.spec.errors import did_you_mean

    catalogue = units()
    for t in types:
        if t not in catalogue:
            raise click.UsageError(f"unknown layer type '{t}'{did_you_mean(t, catalogue)}")
    for kind, unit in catalogue.items():
        if types and kind not in types:
            continue
        click.echo(click.style(kind, bold=True) + f" — {unit.summary}")
        arity = lambda lo, hi: f"{lo}" if lo == hi else (f"{lo}+" if hi is None else f"{lo}-{hi}")  # noqa: E731
        click.echo(f"  bottoms {arity(*unit.bottoms)}, tops {arity(*unit.tops)}")
        model = layer_models()[kind]
        for field in [unit.param_field, *unit.extra_params]:
            if not field:
                continue
            click.echo(f"  {field}:")
            for name, ann, default in describe_fields(model.model_fields[field].annotation):
                click.echo(f"    {name}: {ann} = {default}")
        click.echo("  example:")
        for line in unit.example.rstrip().splitlines():
            click.echo(f"    {line}")
        click.echo()


@main.command()
def schema() -> None:
    """Print a JSON Schema of the spec language (for editors' YAML validation)."""
    from netc.compiler.catalogue import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


def _run_command(fn) -> None:
    """The one place a user-facing error becomes a message and an exit code: any NetcError
    (spec, run, data, checkpoint, export, artifact) prints its text (FILE:LINE:COL lines, then
    `error: ...`) and exits with its code; Ctrl-C outside training exits 130."""
    from netc.errors import NetcError

    try:
        code = fn()
    except NetcError as e:
        click.echo(e.text(), err=True)
        sys.exit(e.code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(code or 0)


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--solver", "solver", type=click.Path(dir_okay=False), default=None,
              help="A YAML file of SolverParameter fields; replaces the spec's solver: section.")
@click.option("--weights", type=click.Path(), default=None,
              help="Fine-tune: start from the blobs of this checkpoint (or .npz of layer/role "
                   "arrays) whose layer name and shape match; others keep their fillers. "
                   "Iteration 0, fresh solver state.")
@click.option("--resume", default=None, metavar="RUN_DIR|last",
              help="Continue a run from its newest checkpoint, exactly (bit-identical on CPU); "
                   "`last`: the newest run of this spec under runs/.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run directory (default runs/<spec name>-<timestamp>).")
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="Random seed (parameters, data order, dropout); overrides random_seed.")
@click.option("--max-iter", "max_iter", type=click.IntRange(min=0), default=None,
              help="Override the solver's max_iter.")
@click.option("--data", "data", default=None, metavar="SOURCE",
              help="Read the TRAIN Data layer from SOURCE (.npz with data/label, or netc:NAME/SPLIT).")
@click.option("--progress/--no-progress", default=None,
              help="Live progress bar (default: when stdout is a terminal).")
@click.option("--tensorboard/--no-tensorboard", default=True,
              help="Write TensorBoard event files in RUN_DIR/tensorboard/ (losses, test "
                   "metrics, learning rate, throughput; default: on): tensorboard --logdir "
                   "RUN_DIR.")
@click.option("--histograms", type=click.IntRange(min=0), default=0, metavar="N",
              help="With TensorBoard: weight histograms every N iterations (default 0: none).")
@click.option("--devices", type=click.IntRange(min=1), default=None, metavar="N",
              help="Data parallel over N local devices (default: all of them). The spec's "
                   "batch_size stays the global batch, split evenly: it must divide by the "
                   "number of devices.")
@click.option("--coordinator", default=None, metavar="HOST:PORT",
              help="Multi-host: the address of process 0, where the job's coordinator listens "
                   "(with --num-processes and --process-id; or set JAX_COORDINATOR_ADDRESS).")
@click.option("--num-processes", "num_processes", type=click.IntRange(min=1), default=None,
              help="Multi-host: how many processes (one per host) run the job.")
@click.option("--process-id", "process_id", type=click.IntRange(min=0), default=None,
              help="Multi-host: this process's index, 0..N-1; process 0 writes the run "
                   "directory, metrics and checkpoints.")
@click.option("--distributed", is_flag=True, default=False,
              help="Multi-host: join the job the cluster environment describes (SLURM, Open "
                   "MPI: what jax.distributed.initialize detects).")
@click.option("--precision", type=click.Choice(["float32", "bfloat16", "float16"]),
              default=None, help="Override the solver's precision: the dtype the step computes "
              "in (parameters and optimizer state stay float32; float16 scales the loss).")
@INPUT_SHAPE
def train(spec, solver, weights, resume, out, seed, max_iter, data, progress, devices,
          tensorboard, histograms,
          coordinator, num_processes, process_id, distributed, precision, input_shapes) -> None:
    """Train SPEC with its solver, following Caffe's Solver semantics.

    \b
    The run directory holds spec.yaml, solver.json, metrics.jsonl (one JSON object per
    display / test / snapshot event) and checkpoints <snapshot_prefix>_iter_N.{safetensors,json}.
    Tests every test_interval iterations (test_iter batches of the TEST net), snapshots every
    `snapshot` iterations and at the end; Ctrl-C (SIGINT) or SIGTERM finish the current step,
    snapshot and exit.

    \b
    Data parallel: the batch is split over all local devices (--devices N to choose); the
    gradients are all-reduced, the parameters replicated, and batch_size is the GLOBAL batch
    (64 on 8 devices: 8 per device). Several hosts: run one process per host with
    --coordinator HOST0:PORT --num-processes H --process-id I (I = 0..H-1), the same spec,
    data and --out on each; a run resumes on any device count.

    \b
    Exit status: 0 done; 1 spec, data or checkpoint error; 3 the loss became NaN/inf (nothing
    is snapshotted; the last good checkpoint stays); 130 SIGINT; 143 SIGTERM.
    """
    from netc.runtime.commands import train as command
    from netc.runtime.trainer import TrainConfig

    cfg = TrainConfig(spec=spec, solver=solver, weights=weights, resume=resume, out=out, seed=seed,
                      max_iter=max_iter, data=data, progress=progress, devices=devices,
                      tensorboard=tensorboard, histograms=histograms,
                      coordinator=coordinator, num_processes=num_processes,
                      process_id=process_id, distributed=distributed, precision=precision,
                      input_shapes=input_shapes)
    _run_command(lambda: command.run(cfg))


@main.command(name="test")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--weights", type=click.Path(), required=True,
              help="A checkpoint (a run's snapshot .json; a run directory: early stopping's best, "
                   "else its newest) or .npz.")
@click.option("--iterations", type=click.IntRange(min=1), default=None,
              help="Batches to average over (default: the solver's test_iter, else 50).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead.")
def test_cmd(spec, weights, iterations, as_json) -> None:
    """Score trained weights on the TEST net (Caffe's `caffe test`).

    Reads the TEST phase's Data layer in order and prints every scalar net output (accuracy,
    loss) averaged over the batches; for a classifier (a metric or loss reading class labels)
    also the confusion matrix and per-class precision, recall and F1 (more than 20 classes: the
    most frequent confusions and the lowest F1s). Exit status 0, or 1 on a spec, data or
    weights error.
    """
    from netc.runtime.commands import test as command

    _run_command(lambda: command.run(spec, weights, iterations, sys.stdout, sys.stderr,
                                     as_json=as_json))


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, metavar="RUN_DIR...")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), required=True,
              help="The picture to write: .png, .svg or .pdf.")
@click.option("--metric", "metrics", multiple=True, metavar="NAME",
              help="Plot only this quantity (repeatable): loss, lr, or a TEST-net output such "
                   "as accuracy. Default: all of them.")
@click.option("--log-y", "log_y", is_flag=True, help="A logarithmic y axis on every panel.")
def plot(run_dirs, output, metrics, log_y) -> None:
    """Training curves of one or more runs, read from their metrics.jsonl.

    \b
    netc plot runs/lenet-20260101-120000 -o curves.png
    netc plot runs/a runs/b --metric loss --log-y -o loss.png

    One panel per quantity: the loss (train: the displayed loss, solid; test: the TEST net's
    loss, dashed with a dot per test), each other TEST-net output (accuracy...), the learning
    rate. Runs are told apart by colour, their directory names in the legend. Exit status 0, or
    1 when a folder is not a run or a --metric is unknown.
    """
    from netc.runtime.commands import plot as command

    _run_command(lambda: command.run(run_dirs, output, metrics, log_y, sys.stderr))


@main.command()
@click.argument("root", default="runs", metavar="[DIR]")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
def runs(root, as_json) -> None:
    """List the runs under DIR (default: runs/, where `netc train` puts them), oldest first.

    One line per run directory: its name, the spec's name, when it started, iterations done /
    max_iter, the best test value of its main metric (early stopping's, else the first that is
    not a loss, e.g. accuracy) and its iteration, the last displayed train loss, its status
    (running, finished, early-stopped, diverged, interrupted: resumable when it has a
    checkpoint) and its wall time. DIR may also be one run directory.
    """
    from netc.runtime.commands import runs as command

    _run_command(lambda: command.run(root, as_json, sys.stdout))


@main.command()
@click.argument("args", nargs=-1, required=True, metavar="[SPEC] INPUT.npz")
@click.option("--weights", type=click.Path(), default=None,
              help="A checkpoint (a run's snapshot .json; a run directory: early stopping's best, "
                   "else its newest) or .npz.")
@click.option("--exported", type=click.Path(file_okay=False), default=None,
              help="Run an artifact written by `netc export` instead of SPEC + --weights "
                   "(its sha256 digests are verified before it is loaded).")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), required=True,
              help="Where to write the requested blobs (.npz).")
@click.option("--blobs", default=None, metavar="A,B",
              help="Blobs to write (default: the net's outputs computable from the inputs).")
def predict(args, weights, exported, output, blobs) -> None:
    """Run the TEST-phase (deploy) net forward on INPUT.npz.

    \b
    netc predict SPEC INPUT.npz --weights CKPT -o OUT.npz
    netc predict --exported DIR INPUT.npz -o OUT.npz

    INPUT.npz holds one array per input blob, keyed by blob name (e.g. `data`), batch first,
    as the net sees it (no transform_param is applied). Inputs the requested blobs do not need
    may be left out. Exit status 0, or 1 on a spec, input, weights or artifact error.
    """
    if exported is not None:
        if len(args) != 1 or weights or blobs:
            raise click.UsageError("with --exported give only INPUT.npz (no SPEC, --weights, --blobs)")
        from netc.runtime.commands import predict as command

        _run_command(lambda: command.run_exported(exported, args[0], output, sys.stderr))
    if len(args) != 2:
        raise click.UsageError("give SPEC and INPUT.npz (or --exported DIR INPUT.npz)")
    if not weights:
        raise click.UsageError("--weights is required with SPEC")
    from netc.runtime.commands import predict as command

    spec, input_npz = args
    names = [b.strip() for b in blobs.split(",") if b.strip()] if blobs else None
    _run_command(lambda: command.run(spec, weights, input_npz, output, names, sys.stderr))


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["stablehlo", "onnx", "safetensors", "prototxt"]),
              default="stablehlo", show_default=True,
              help="stablehlo: a jax.export artifact; onnx: model.onnx (opset 17, symbolic "
                   "batch); safetensors: the weights keyed layer/blob; prototxt: the spec in "
                   "Caffe's text format (no weights).")
@click.option("--weights", type=click.Path(), default=None,
              help="A checkpoint (a run's snapshot .json or its stem), or a run directory (early "
                   "stopping's best checkpoint, else its newest). Required except for --format "
                   "prototxt.")
@click.option("-o", "--output", "out_dir", type=click.Path(), required=True,
              help="Artifact folder (created; must be empty or hold a previous export of the "
                   "same format); for prototxt the .prototxt file to write.")
@click.option("--platform", "platforms", multiple=True,
              type=click.Choice(["cpu", "cuda", "rocm", "tpu"]),
              help="StableHLO: lower for these platforms (repeatable; default cpu, cuda and tpu "
                   "if possible).")
@click.option("--platforms", "platform_list", default=None, metavar="LIST",
              help="StableHLO: the platforms as one comma-separated list (cpu,cuda,rocm,tpu).")
@click.option("--output-blob", "outputs", multiple=True, metavar="BLOB",
              help="Export these blobs as outputs (default: the deploy net's final outputs).")
@click.option("--phase", type=PHASES, default="TEST", show_default=True)
@click.option("--stage", "stages", multiple=True, help="A NetState stage (repeatable).")
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="StableHLO: fix the batch size (default: symbolic, any batch).")
def export(spec, fmt, weights, out_dir, platforms, platform_list, outputs, phase, stages,
           batch) -> None:
    """Export the deploy-phase forward (or the weights, or the spec) in another format.

    stablehlo (default): a folder with model.jaxexport (jax.export, weights baked in) and
    manifest.json; loading it needs only jax (`netc predict --exported`, netc.runtime.exported).
    onnx: model.onnx (opset 17, batch axis symbolic `N`, checked by onnx.checker) and
    manifest.json; layers without a faithful ONNX form are refused by name. safetensors:
    weights.safetensors keyed layer/blob and manifest.json. Every manifest records the sha256 of
    its files; loaders refuse a file that does not match. prototxt: the spec as Caffe text
    format (netc extensions refused by name); a solver section goes to OUT_solver.prototxt.
    """
    from netc.runtime.commands import export as command

    chosen = list(platforms)
    if platform_list:
        allowed = {"cpu", "cuda", "rocm", "tpu"}
        for name in (x.strip() for x in platform_list.split(",")):
            if name not in allowed:
                raise click.BadParameter(f"unknown platform {name!r} (choose from cpu, cuda, "
                                         f"rocm, tpu)", param_hint="--platforms")
            chosen.append(name)
    if fmt != "stablehlo" and (chosen or batch is not None):
        raise click.UsageError(f"--platform(s) and --batch are for --format stablehlo, not {fmt}")
    if fmt == "prototxt":
        if weights is not None or outputs or stages or phase.upper() != "TEST":
            raise click.UsageError("--format prototxt writes the spec itself: it takes no "
                                   "--weights, --output-blob, --phase or --stage")
    elif weights is None:
        raise click.UsageError(f"--weights is required for --format {fmt}")
    _run_command(lambda: command.run(spec, weights, out_dir, fmt=fmt,
                                     platforms=list(dict.fromkeys(chosen)) or None,
                                     phase=phase.upper(), stages=stages,
                                     outputs=list(outputs) or None, batch=batch, out=sys.stdout))


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--weights", type=click.Path(), required=True,
              help="A checkpoint, or a run directory (its newest checkpoint and vocab.json).")
@click.option("--prime", default="", help="Text (or token ids) the generated text continues.")
@click.option("--length", type=click.IntRange(min=1, max=100_000), default=200, show_default=True,
              help="Tokens to generate.")
@click.option("--temperature", type=float, default=1.0, show_default=True,
              help="Sampling temperature (0: greedy, the most likely token each step).")
@click.option("--top-k", "top_k", type=click.IntRange(min=0), default=0,
              help="Sample only among the k most likely tokens (0: all).")
@click.option("--beam", type=click.IntRange(min=0, max=1000), default=0,
              help="Beam search with this many beams instead of sampling (1: greedy).")
@click.option("--length-penalty", "length_penalty", type=click.FloatRange(min=0), default=0.0,
              help="Beam search: choose the best beam by score / length**alpha (0: by score).")
@click.option("--end", default=None, help="The end symbol: a sequence stops when it emits it.")
@click.option("--count", type=click.IntRange(min=1, max=10_000), default=1, show_default=True,
              help="How many sequences to generate.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--input", "token", default=None, metavar="BLOB",
              help="The token input blob (default: the text source's data top).")
@click.option("--output", "scores", default=None, metavar="BLOB",
              help="The next-token scores blob (default: what the loss reads as predictions).")
@click.option("--inputs", type=click.Path(dir_okay=False), default=None, metavar="NPZ",
              help="The net's other inputs (an image to caption, ...): first sample of each array.")
@click.option("--vocab", type=click.Path(dir_okay=False), default=None,
              help="vocab.json to use instead of the run's.")
def sample(spec, weights, prime, length, temperature, top_k, beam, length_penalty, end, count,
           seed, token, scores, inputs, vocab) -> None:
    """Generate from a trained sequence model: sampling or beam search.

    \b
    netc sample models/char_lstm_hamlet.yaml --weights runs/char_lstm_hamlet --prime "HAMLET."
    netc sample SPEC --weights RUN --beam 5 --end "\n"

    The net is re-planned to run one step at a time (its recurrent layers carry their state
    between steps); the run's vocab.json maps text to ids and back.
    """
    from netc.runtime.commands import sample as command

    cfg = command.SampleConfig(spec, weights, prime, length, temperature, top_k, beam,
                               length_penalty, seed, count, end, token, scores, inputs, vocab)
    _run_command(lambda: command.run(cfg, sys.stdout, sys.stderr))


@main.command(name="time")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--iterations", type=click.IntRange(min=1), default=10, show_default=True,
              help="Timed calls per program (the median is reported), after one warm-up call.")
@click.option("--phase", type=PHASES, default="TRAIN", show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="Fix the batch size (needed when the net's batch is symbolic).")
@click.option("--precision", type=click.Choice(["float32", "bfloat16", "float16"]),
              default="float32", show_default=True,
              help="The compute dtype, as `netc train --precision` runs it (float32 master "
                   "weights).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
def time_cmd(spec, iterations, phase, batch, precision, as_json) -> None:
    """Time each layer's forward and backward, and the whole jitted step (Caffe's `caffe time`).

    Per layer: forward and backward milliseconds (each its own jitted program on random inputs of
    the planned shapes, median of --iterations calls), their share of the sum, and the algorithm
    the lowering chose (im2col+matmul or lax.conv, lax.scan...). Then the whole net forward and
    the whole train step (forward + backward + update), as `netc train` runs it: XLA fuses across
    layers, so the whole step is the real cost. Exit status 0, or 1 on a spec error.
    """
    from netc.runtime.commands import time as command

    _run_command(lambda: command.run(spec, phase=phase.upper(), batch=batch,
                                     iterations=iterations, as_json=as_json, out=sys.stdout,
                                     err=sys.stderr, precision=precision))


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), required=True,
              help="The file to write: .svg, .png, .dot (Graphviz) or .html (an interactive page).")
@click.option("--format", "fmt", type=click.Choice(["svg", "png", "dot", "html"]), default=None,
              help="The format (default: from the output's suffix).")
@click.option("--phase", type=click.Choice(["TRAIN", "TEST", "both"], case_sensitive=False),
              default="both", show_default=True,
              help="The phase to draw; both: the union, phase-only layers dashed (TRAIN) or "
                   "dotted (TEST).")
@click.option("--stage", "stages", multiple=True, help="A NetState stage (repeatable).")
@click.option("--level", type=int, default=0, show_default=True, help="The NetState level.")
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="Fix the batch size of every input blob.")
@INPUT_SHAPE
def graph(spec, output, fmt, phase, stages, level, batch, input_shapes) -> None:
    """Draw the net: layers, and blobs with their shapes (Netscope for netc), without JAX.

    \b
    netc graph models/lenet.yaml -o lenet.html     a page: click a layer for its details
    netc graph models/bvlc_googlenet.yaml -o googlenet.svg

    In-place layers (ReLU, BatchNorm, Scale, Dropout writing their bottom) are folded into the
    node of the layer that made the blob, and listed on it. The page shows, per layer, its type,
    YAML fields, bottom and top shapes, parameter count and multiply-accumulates per sample.
    Exit status 0, or 1 when the spec has errors (printed as FILE:LINE:COL; nothing is written).
    """
    from netc.runtime.commands import graph as command

    phase = "both" if phase.lower() == "both" else phase.upper()
    _run_command(lambda: command.run(spec, output, fmt=fmt, phase=phase, stages=stages,
                                     level=level, batch=batch, input_shapes=input_shapes,
                                     out=sys.stdout))


# --- netc inspect: looking inside a trained network -----------------------------------------------


def _inspect_args(source: str | None = None, index: bool = False):
    """SPEC, --weights and -o for every `netc inspect` command; `source` adds that source
    option (--input or --data), `index` adds --index."""
    def deco(f):
        if index:
            f = click.option("--index", type=click.IntRange(min=0), default=0, show_default=True,
                             help="Which sample of the source.")(f)
        if source:
            f = click.option(f"--{source}", "source", default=None, metavar="SOURCE",
                             help="A data set source (netc:digits/test, an .npz with data and "
                                  "label) or an image file (default: the TEST Data layer's "
                                  "source); transformed as the TEST Data layer transforms.")(f)
        f = click.option("-o", "--output", "output", type=click.Path(dir_okay=False),
                         required=True, help="The picture to write (.png).")(f)
        f = click.option("--weights", type=click.Path(), required=True,
                         help="A checkpoint (a run's snapshot .json, a run directory: its "
                              "newest) or .npz.")(f)
        return click.argument("spec", type=click.Path(dir_okay=False))(f)
    return deco


@main.group(name="inspect")
def inspect_group() -> None:
    """Look inside a trained network: pictures (PNG) of what its TEST net computes.

    \b
    netc inspect filters SPEC --weights RUN -o filters.png           first conv's kernels
    netc inspect features SPEC --weights RUN --blob conv1 --index 3 -o maps.png
    netc inspect top-patches SPEC --weights RUN --blob conv2 --channel 5 -o patches.png
    netc inspect occlusion SPEC --weights RUN --index 3 -o occlusion.png
    netc inspect saliency SPEC --weights RUN --index 3 -o saliency.png
    netc inspect embedding SPEC --weights RUN --blob ip1 -n 1000 -o tsne.png
    """


def _inspect(name: str, *args) -> None:
    from netc.runtime.commands import inspect as command

    _run_command(lambda: getattr(command, name)(*args, sys.stdout, sys.stderr))


@inspect_group.command(name="filters")
@_inspect_args()
@click.option("--layer", default=None, help="The layer (default: the first with 2-D kernels).")
def inspect_filters(spec, weights, output, layer) -> None:
    """A convolution's kernels as a grid: one RGB tile per filter when it reads 3 channels,
    else a row of grey tiles (one per input channel) per filter; each filter on its own scale."""
    _inspect("filters", spec, weights, layer, output)


@inspect_group.command(name="features")
@_inspect_args("input", index=True)
@click.option("--blob", required=True, help="The blob (N×C×H×W) whose channels to show.")
def inspect_features(spec, weights, output, source, index, blob) -> None:
    """The feature maps of BLOB for one input: one tile per channel, all on one scale."""
    _inspect("features", spec, weights, blob, source, index, output)


@inspect_group.command(name="top-patches")
@_inspect_args("data")
@click.option("--blob", required=True, help="A convolution or pooling blob (N×C×H×W).")
@click.option("--channel", type=click.IntRange(min=0), required=True, help="Its channel.")
@click.option("-k", "k", type=click.IntRange(min=1), default=9, show_default=True,
              help="How many patches.")
@click.option("-n", "limit", type=click.IntRange(min=1), default=None,
              help="Look at the first N samples of the source (default: all).")
def inspect_top_patches(spec, weights, output, source, blob, channel, k, limit) -> None:
    """The input patches that most activate CHANNEL of BLOB over a data set (Zeiler & Fergus):
    per sample the position of the channel's maximum, its receptive field cropped from the
    input; the k strongest samples, strongest first."""
    _inspect("top_patches", spec, weights, blob, channel, source, k, limit, output)


@inspect_group.command(name="occlusion")
@_inspect_args("input", index=True)
@click.option("--patch", type=click.IntRange(min=1), default=4, show_default=True,
              help="The grey square's side (input pixels).")
@click.option("--stride", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--class", "klass", type=click.IntRange(min=0), default=None,
              help="The class (default: the sample's label, else the predicted class).")
def inspect_occlusion(spec, weights, output, source, index, patch, stride, klass) -> None:
    """Occlusion sensitivity: slide a square of the image's mean value over it and map how much
    the class's probability drops (red: it drops; blue: it rises), beside the input."""
    _inspect("occlusion", spec, weights, source, index, patch, stride, klass, output)


@inspect_group.command(name="saliency")
@_inspect_args("input", index=True)
@click.option("--class", "klass", type=click.IntRange(min=0), default=None,
              help="The class (default: the sample's label, else the predicted class).")
def inspect_saliency(spec, weights, output, source, index, klass) -> None:
    """Gradient saliency: |d class score / d input|, the maximum over channels (Simonyan et
    al.), through netc's compiled forward."""
    _inspect("saliency", spec, weights, source, index, klass, output)


@inspect_group.command(name="embedding")
@_inspect_args("data")
@click.option("--blob", required=True, help="The blob whose features to embed (e.g. ip1).")
@click.option("-n", "limit", type=click.IntRange(min=5), default=1000, show_default=True,
              help="Embed the first N samples of the source.")
def inspect_embedding(spec, weights, output, source, blob, limit) -> None:
    """A 2-D t-SNE of BLOB's features over a data set, coloured by class, with the
    leave-one-out 5-nearest-neighbour accuracy in 2-D (needs scikit-learn: netc[inspect])."""
    _inspect("embedding", spec, weights, blob, source, limit, output)


@main.group(name="data")
def data_group() -> None:
    """Look at data sources: `netc data inspect SOURCE -o grid.png`."""


@data_group.command(name="inspect")
@click.argument("source")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write a grid of the first samples as a PNG image.")
@click.option("--count", type=click.IntRange(min=1, max=1024), default=64, show_default=True,
              help="Samples in the grid (8 to a row).")
@click.option("--size", default=None, metavar="HxW",
              help="Image sources: resize every image to H×W (ImageData's new_height×new_width).")
@click.option("--gray", is_flag=True, help="Image sources: read the images as gray (is_color: false).")
@click.option("--split", default=None, metavar="A,B",
              help="Image sources: the fraction range [A, B) of each class's images.")
def data_inspect(source, output, count, size, gray, split) -> None:
    """Counts, sample shape, dtype, value range and class balance of SOURCE, and a grid of its
    samples as PNG (-o). SOURCE: netc:NAME/SPLIT, an .npz file, csv:PATH, folder:PATH, or an
    ImageData list file of `path label` lines."""
    from netc.runtime.commands import data as command

    _run_command(lambda: command.run(source, output, count, sys.stdout, size=size, gray=gray,
                                     split=split))


if __name__ == "__main__":  # pragma: no cover
    main()
