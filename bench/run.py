"""netc's benchmark, one command: every workload's train step side by side — netc's compiled spec
(and netc-xla: the same without its oneDNN kernels, compiler/kernels/onednn.py), the best
hand-written JAX program of the same network (bench/hand_jax.py, char_lstm.py,
lenet_train.py), PyTorch eager NCHW and channels_last, and torch.compile — on the same work in one
process, alternating repeats (bench/harness.py), plus:

- the machine's matmul peak measured in the same run (XLA, 4096² float32 and bfloat16), and each
  contender's achieved FLOP/s as a fraction of it (a train step ≈ 6 × the plan's MACs per sample);
- netc's time to first step, cold and with the persistent compile cache warm (LeNet, `netc train`
  in a fresh process: bench/first_step.py);
- each contender's peak memory: the peak RSS of a fresh process running three steps, less the
  same process's RSS after importing its framework;
- `netc check` of ResNet-50 (models/resnet50_caffe.yaml): wall time of the whole command.

Writes RESULTS.json and RESULTS.md into --out (default bench/results/<machine kind>).

    python bench/run.py                       # everything (about 20-30 minutes on 2 cores)
    python bench/run.py --quick               # a smoke run: tiny steps, small batches
    python bench/run.py --workloads lenet,char_lstm --contenders netc,jax,torch
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import char_lstm  # noqa: E402
import lenet_train  # noqa: E402
import resnet18_cifar  # noqa: E402
from harness import compare, netc_train_run, torch_threads  # noqa: E402

TORCH_MODES = {"torch": "nchw", "torch-cl": "channels_last", "torch-compile": "compile"}
# mixed precision, each against the other's bfloat16 step: netc's `precision: bfloat16`, PyTorch's
# autocast (channels_last for the CNNs, its fastest float32 mode)
BF16 = ("netc-bf16", "torch-bf16", "torch-cl-bf16")


@dataclass
class Workload:
    name: str
    title: str
    batch: int
    input_shape: tuple          # per sample, NCHW or (T,) for tokens
    classes: int
    spec: str                   # netc spec text (TRAIN net with a loss)
    steps: int
    repeats: int
    unit: str = "samples/s"
    time_major: bool = False
    makers: dict = field(default_factory=dict)   # contender -> () -> run(x, y)

    def inputs(self, rng):
        if self.time_major:
            t = self.input_shape[0]
            x = rng.integers(0, self.classes, (t, self.batch)).astype(np.int32)
            return x, rng.integers(0, self.classes, (t, self.batch)).astype(np.int32)
        x = rng.random((self.batch, *self.input_shape), dtype=np.float32)
        return x, rng.integers(0, self.classes, self.batch).astype(np.int32)


def with_loss(model_yaml: str, batch: int, size: int, classes: int) -> str:
    """A zoo spec as a TRAIN net: an Input of batch×3×size×size plus labels, `classes` outputs,
    SoftmaxWithLoss on the last layer, SGD (momentum 0.9, weight decay 5e-4)."""
    data = yaml.safe_load((ROOT / "models" / model_yaml).read_text())
    layers = data["layers"]
    layers[0] = {"name": layers[0]["name"], "type": "Input", "top": [layers[0]["top"], "label"],
                 "input_param": {"shape": [{"dim": [batch, 3, size, size]}, {"dim": [batch]}]}}
    layers[-1]["inner_product_param"]["num_output"] = classes
    layers.append({"name": "loss", "type": "SoftmaxWithLoss", "top": "loss",
                   "bottom": [layers[-1]["top"], "label"]})
    data["solver"] = {"type": "SGD", "base_lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4,
                      "lr_policy": "fixed", "max_iter": 1}
    return yaml.safe_dump(data, sort_keys=False)


def netc_maker(spec_text: str, batch: int):
    return lambda: netc_train_run(spec_text, batch)


def cnn_makers(w: Workload, jax_fns, torch_model) -> dict:
    import hand_jax

    def torch_maker(mode, bf16=False):
        def make():
            import torch_nets

            return torch_nets.train_step(lambda: getattr(torch_nets, torch_model)(w.classes),
                                         mode, bf16)
        return make

    init, apply = jax_fns
    makers = {"netc": netc_maker(w.spec, w.batch),
              "netc-xla": lambda: netc_train_run(w.spec, w.batch, kernels=False),
              "jax": lambda: hand_jax.train_step(lambda: getattr(hand_jax, init)(w.classes),
                                                 getattr(hand_jax, apply))}
    makers.update({name: torch_maker(mode) for name, mode in TORCH_MODES.items()})
    makers["netc-bf16"] = lambda: netc_train_run(w.spec, w.batch, "bfloat16")
    makers["torch-cl-bf16"] = torch_maker("channels_last", bf16=True)
    return makers


def workloads(quick: bool) -> dict[str, Workload]:
    def q(full, small):
        return small if quick else full

    lenet = Workload("lenet", "Caffe LeNet", q(64, 16), (1, 28, 28), 10,
                     (ROOT / "models" / "lenet.yaml").read_text(), q(50, 3), q(5, 2))
    lenet.makers = {"netc": lambda: lenet_train.netc_step(lenet.batch),
                    "netc-xla": lambda: lenet_train.netc_step(lenet.batch, kernels=False),
                    "jax": lambda: lenet_train.jax_step(lenet.batch),
                    "torch": lambda: lenet_train.torch_step(lenet.batch),
                    "netc-bf16": lambda: lenet_train.netc_step(lenet.batch, "bfloat16"),
                    "torch-bf16": lambda: lenet_train.torch_step(lenet.batch, bf16=True)}
    rb = q(128, 8)
    resnet = Workload("resnet18_cifar", "CIFAR ResNet-18", rb, (3, 32, 32), 10,
                      resnet18_cifar.cifar_spec(rb), q(3, 1), q(3, 2))
    resnet.makers = cnn_makers(resnet, ("resnet18_init", "resnet18_apply"), "resnet18_cifar")
    mb = q(64, 4)
    mobile = Workload("mobilenet_v2_96", "MobileNet v2 at 96×96", mb, (3, 96, 96), 1000,
                      with_loss("mobilenet_v2_torchvision.yaml", mb, 96, 1000), q(5, 1), q(3, 2))
    mobile.makers = cnn_makers(mobile, ("mobilenet_v2_init", "mobilenet_v2_apply"), "mobilenet_v2")
    t, n = q(100, 20), q(32, 4)
    lstm = Workload("char_lstm", "char-LSTM (Embed 128, LSTM 256, T 100)", n, (t,), char_lstm.V,
                    char_lstm.spec_text(t, n), q(20, 2), q(3, 2), unit="sequences/s",
                    time_major=True)
    lstm.makers = {"netc": lambda: char_lstm.netc_step(t, n, 256),
                   "netc-bf16": lambda: char_lstm.netc_step(t, n, 256, "bfloat16"),
                   "jax": lambda: char_lstm.jax_step(t, n, 256),
                   "torch": lambda: char_lstm.torch_step(t, n, 256)}
    return {w.name: w for w in (lenet, resnet, mobile, lstm)}


def macs_per_sample(spec_text: str) -> int:
    import netc

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        fh.write(spec_text)
    return netc.load(fh.name, phase="TRAIN", batch=1).plan.macs


def matmul_peak(n: int, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of an n×n×n matmul under jit, float32 and bfloat16 (best of `repeats`)."""
    import jax
    import jax.numpy as jnp

    out = {}
    for dtype in ("float32", "bfloat16"):
        a = jnp.ones((n, n), dtype)
        f = jax.jit(lambda x: x @ x)
        f(a).block_until_ready()
        best = min(_timed(f, a) for _ in range(repeats))
        out[dtype] = 2 * n ** 3 / best / 1e9
    return out


def _timed(f, a) -> float:
    t0 = time.perf_counter()
    f(a).block_until_ready()
    return time.perf_counter() - t0


def run_workload(w: Workload, contenders: list[str]) -> dict:
    chosen = {n: m for n, m in w.makers.items() if n in contenders}
    rng = np.random.default_rng(0)
    x, y = w.inputs(rng)
    results, failed = {}, {}
    for name, make in chosen.items():   # a contender that cannot build (torch.compile) is noted
        try:
            results.update(compare({name: make}, (x, y), w.batch, 1, 1))
        except Exception as e:  # noqa: BLE001
            failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    ok = {n: chosen[n] for n in results}
    results = compare(ok, (x, y), w.batch, w.steps, w.repeats) if ok else {}
    return {"results": results, "failed": failed}


CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import run as bench
w = bench.workloads(sys.argv[4] == "quick")[sys.argv[2]]
name = sys.argv[3]
if name.startswith("torch"):
    import torch
else:
    import jax, jax.numpy as jnp
    jax.jit(lambda v: v + 1)(jnp.ones(3)).block_until_ready()
base = int(open("/proc/self/statm").read().split()[1]) * 4096
x, y = w.inputs(np.random.default_rng(0))
step = w.makers[name]()
for _ in range(3):
    out = step(x, y)
try:
    jax.block_until_ready(out)
except NameError:
    pass
# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over execve, so a child started by a
# big parent would report the parent's peak
peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"peak_rss": peak, "base_rss": base}))
"""


def peak_memory(w: Workload, name: str, quick: bool) -> dict | None:
    r = subprocess.run([sys.executable, "-c", CHILD, str(ROOT / "bench"), w.name, name,
                        "quick" if quick else "full"], capture_output=True, text=True,
                       timeout=1800)
    if r.returncode != 0:
        return None
    m = json.loads(r.stdout.strip().splitlines()[-1])
    return {"peak_mib": m["peak_rss"] / 2**20, "net_mib": (m["peak_rss"] - m["base_rss"]) / 2**20}


def first_step(repeats: int, python: str = sys.executable) -> dict[str, float]:
    import first_step as fs

    cold, warm = [], []
    env = fs.child_env(python)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            cache = Path(tmp) / f"cache{i}"
            for k in range(2):
                marks = fs.one("models/lenet.yaml", cache, Path(tmp) / f"run{i}-{k}", env,
                               python)
                (cold if k == 0 else warm).append(marks["first_step_done"][0])
    return {"cold_s": statistics.median(cold), "warm_s": statistics.median(warm)}


def check_time(repeats: int) -> float:
    import check_speed

    cmd = [*check_speed.netc_command(), "check", "models/resnet50_caffe.yaml", "-q"]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine() -> dict:
    import jax

    torch = torch_threads()
    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "load_average": os.getloadavg(), "python": platform.python_version(),
            "jax": jax.__version__, "backend": jax.default_backend(),
            "torch": torch.__version__ if torch else None,
            "torch_threads": torch.get_num_threads() if torch else None,
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES")}


def summarise(w: Workload, run: dict, peak: dict, macs: int, memory: dict) -> dict:
    flop = 6 * macs  # forward 2 FLOP per MAC, backward twice the forward
    rows = {}
    for name, r in run["results"].items():
        gflops = r["median"] * flop / 1e9
        # a bfloat16 contender is compared with netc's bfloat16 step, the others with float32's
        base = run["results"].get("netc-bf16" if name in BF16 else "netc", {}).get("median")
        rows[name] = {"per_s": r["median"], "runs": r["runs"], "first_call_s": r["first_s"],
                      "netc_over": base / r["median"] if base else None,
                      "gflop_s": gflops, "of_fp32_peak": gflops / peak["float32"],
                      "of_bf16_peak": gflops / peak["bfloat16"], "memory": memory.get(name)}
    return {"title": w.title, "batch": w.batch, "unit": w.unit, "macs_per_sample": macs,
            "flop_per_sample_step": flop, "steps": w.steps, "repeats": w.repeats,
            "contenders": rows, "failed": run["failed"]}


def markdown(report: dict) -> str:
    m = report["machine"]
    peak = report["matmul_peak_gflop_s"]
    lines = [f"# netc benchmark ({report['date']})", "",
             f"{m['cpus']} CPU(s) ({m['processor']}), load average at start "
             f"{m['load_average'][0]:.1f}; Python {m['python']}, jax {m['jax']} "
             f"({m['backend']}), torch {m['torch']} ({m['torch_threads']} threads). Matmul peak "
             f"measured in this run (XLA, 4096³): float32 {peak['float32']:.0f} GFLOP/s, "
             f"bfloat16 {peak['bfloat16']:.0f} GFLOP/s. Every contender ran under "
             f"GLIBC_TUNABLES={m.get('glibc_tunables') or '(unset)'} (runtime/allocator.py).", "",
             "Medians of alternating repeats; `netc ÷` is netc's rate over the contender's "
             "(netc-bf16's for the -bf16 rows: mixed precision, bfloat16 compute); "
             "FLOP/s counts a train step as 6 × the plan's MACs per sample; memory is a fresh "
             "process's peak RSS over three steps, less its RSS after importing the framework.",
             ""]
    for w in report["workloads"].values():
        when = f" (measured {w['measured']})" if w.get("measured", report["date"]) != report["date"] \
            else ""
        lines += [f"## {w['title']}, batch {w['batch']}{when}", "",
                  f"| contender | {w['unit']} | netc ÷ | GFLOP/s | of fp32 peak | first call s "
                  "| memory MiB |", "|---|---:|---:|---:|---:|---:|---:|"]
        for name, r in w["contenders"].items():
            ratio = f"{r['netc_over']:.2f}×" if r["netc_over"] else "—"
            mem = f"{r['memory']['net_mib']:.0f}" if r["memory"] else "—"
            lines.append(f"| {name} | {r['per_s']:.1f} | {ratio} | {r['gflop_s']:.1f} | "
                         f"{r['of_fp32_peak']:.0%} | {r['first_call_s']:.1f} | {mem} |")
        lines += [f"| {n} | failed: {why} | | | | | |" for n, why in w["failed"].items()] + [""]
    extra = report.get("first_step")
    if extra:
        where = ("" if extra.get("python", sys.executable) == sys.executable
                 else f"; netc installed for {extra['python']}")
        lines += [f"Time to first step (`netc train models/lenet.yaml`, fresh process{where}): "
                  f"cold {extra['cold_s']:.2f} s, warm compile cache {extra['warm_s']:.2f} s.", ""]
    if report.get("check_resnet50_s") is not None:
        lines += [f"`netc check models/resnet50_caffe.yaml`: {report['check_resnet50_s']:.2f} s "
                  "(whole command).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny batches and steps (a smoke run)")
    ap.add_argument("--workloads", default="lenet,resnet18_cifar,mobilenet_v2_96,char_lstm")
    ap.add_argument("--contenders", default="netc,netc-xla,jax,torch,torch-cl,torch-compile,"
                                               + ",".join(BF16))
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--first-step-python", default=sys.executable,
                    help="the interpreter whose netc install the time to first step runs "
                         "(bench/first_step.py --python; default: this one)")
    ap.add_argument("--memory-only", action="store_true",
                    help="measure only the memory column again, into --out's RESULTS.json")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--merge", action="store_true",
                    help="keep the workloads already in --out's RESULTS.json that this run skips")
    args = ap.parse_args()
    contenders = args.contenders.split(",")
    if args.memory_only:
        return memory_only(args)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
              "quick": args.quick, "matmul_peak_gflop_s": matmul_peak(512 if args.quick else 4096),
              "workloads": {}}
    all_w = workloads(args.quick)
    out = args.out or ROOT / "bench" / "results" / ("quick" if args.quick else "cpu")
    if args.merge and (out / "RESULTS.json").exists():
        old = json.loads((out / "RESULTS.json").read_text())
        for row in old["workloads"].values():
            row.setdefault("measured", old["date"])
        report["workloads"] = old["workloads"]
    for name in args.workloads.split(","):
        w = all_w[name]
        print(f"== {w.title}", flush=True)
        run = run_workload(w, contenders)
        memory = {} if args.no_memory else {
            n: peak_memory(w, n, args.quick) for n in run["results"]}
        report["workloads"][name] = summarise(w, run, report["matmul_peak_gflop_s"],
                                              macs_per_sample(w.spec), memory)
        report["workloads"][name]["measured"] = report["date"]
        write(report, out)  # after each workload: a long run stopped early keeps what it measured
    report["first_step"] = first_step(1 if args.quick else 2, args.first_step_python)
    report["first_step"]["python"] = args.first_step_python
    report["check_resnet50_s"] = check_time(3 if args.quick else 10)
    write(report, out)
    print(markdown(report))
    print(f"written: {out / 'RESULTS.json'}, {out / 'RESULTS.md'}")


def memory_only(args) -> None:
    out = args.out or ROOT / "bench" / "results" / ("quick" if args.quick else "cpu")
    report = json.loads((out / "RESULTS.json").read_text())
    all_w = workloads(args.quick)
    for name, w in report["workloads"].items():
        for contender, row in w["contenders"].items():
            row["memory"] = peak_memory(all_w[name], contender, args.quick)
            print(name, contender, row["memory"], flush=True)
        write(report, out)


def write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "RESULTS.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "RESULTS.md").write_text(markdown(report))


if __name__ == "__main__":
    main()
