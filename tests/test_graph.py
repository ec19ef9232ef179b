"""netc graph: the folded, phase-marked graph; DOT, SVG, PNG and the HTML page (driven in headless
Chromium over the DevTools protocol); the layout's speed on the zoo's big nets."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from netc.runtime.commands import graph as command
from netc.runtime.graph import GraphError, load_graph, to_dot
from netc.runtime.graph_draw import draw, to_png, to_svg
from netc.runtime.graph_layout import layout
from netc.runtime.graph_page import script_json, to_html

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
SVG_NS = "{http://www.w3.org/2000/svg}"


# --- a small headless Chromium driver (Chrome DevTools Protocol over a websocket) ----------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-allow-origins=*",
    "--remote-debugging-port=0",
    "--window-size=1280,860",
]


class Browser:
    """One Chromium process and one page, driven by CDP commands (`call`).

    Every wait has a deadline: a browser that does not come up, or stops answering, fails the test
    with its own log instead of hanging the suite. Chromium runs in its own session (process group)
    and the whole group is killed at the end, so no renderer or zygote outlives the test. Its
    stderr goes to a file (a pipe nobody drained could fill and stall it). The launch is tried up
    to LAUNCHES times: what is under test is netc's page, not Chromium's start-up."""

    LAUNCHES = 3
    START_S = 30.0  # for DevToolsActivePort to appear
    REPLY_S = 60.0  # for the answer to one command, or one awaited event

    def __init__(self):
        failures = []
        for _ in range(self.LAUNCHES):
            try:
                self._launch()
                return
            except Exception as e:  # noqa: BLE001 - reported with every attempt's log below
                failures.append(f"{type(e).__name__}: {e}\n--- chromium's stderr ---\n"
                                f"{self._log_tail()}")
                self.close()
        raise RuntimeError(f"chromium did not start in {self.LAUNCHES} tries:\n"
                           + "\n".join(failures))

    def _launch(self) -> None:
        import websocket  # the test extra's websocket-client

        self.ws = None
        self.profile = tempfile.mkdtemp(prefix="netc_chromium_")
        self.log = Path(self.profile + ".log")
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                [CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                start_new_session=True,
            )
        port = self._port()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=self.REPLY_S)
        self.next_id = 0
        self.call("Page.enable")
        self.call("Runtime.enable")

    def _port(self) -> int:
        """The DevTools port, from the DevToolsActivePort file Chromium writes in its profile."""
        marker = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with status {self.proc.returncode}")
            try:
                first = marker.read_text().splitlines()[0]
                return int(first)
            except (OSError, IndexError, ValueError):
                time.sleep(0.05)  # not there yet, or half written
        raise RuntimeError(f"no DevTools endpoint after {self.START_S:.0f} s")

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except (AttributeError, OSError):
            return "(none)"

    def _messages(self, what: str):
        """The page's messages until `what` is found (the caller returns), within REPLY_S."""
        deadline = time.monotonic() + self.REPLY_S
        while time.monotonic() < deadline:
            yield json.loads(self.ws.recv())  # each recv is bounded by the socket's timeout
        raise TimeoutError(f"chromium: no {what} within {self.REPLY_S:.0f} s")

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        for msg in self._messages(f"answer to {method}"):
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def wait_event(self, method: str):
        for msg in self._messages(f"event {method}"):
            if msg.get("method") == method:
                return msg["params"]

    def open(self, path: Path) -> None:
        self.call("Page.navigate", url=path.resolve().as_uri())
        self.wait_event("Page.loadEventFired")

    def js(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(r["exceptionDetails"])
        return r["result"].get("value")

    def click(self, x: float, y: float) -> None:
        """A real mouse click at page coordinates (the browser hit-tests it)."""
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])

    def close(self) -> None:
        """Closes the socket and kills Chromium's whole process group; removes its files."""
        try:
            if getattr(self, "ws", None) is not None:
                self.ws.close()
        finally:
            proc = getattr(self, "proc", None)
            if proc is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            shutil.rmtree(self.profile, ignore_errors=True)
            with contextlib.suppress(OSError):
                self.log.unlink()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    b = Browser()
    yield b
    b.close()


# --- the graph: folding and phases -------------------------------------------------------------

TINY = """
name: tiny
layers:
  - {name: data, type: Input, top: [data, label],
     input_param: {shape: [{dim: [2, 3, 8, 8]}, {dim: [2]}]}}
  - name: conv
    type: Convolution
    bottom: data
    top: conv
    convolution_param: {num_output: 4, kernel_size: 3, weight_filler: {type: xavier}}
  - {name: bn, type: BatchNorm, bottom: conv, top: conv}
  - {name: scale, type: Scale, bottom: conv, top: conv, scale_param: {bias_term: true}}
  - {name: relu, type: ReLU, bottom: conv, top: conv}
  - {name: drop, type: Dropout, bottom: conv, top: conv, include: {phase: TRAIN}}
  - {name: act, type: Sigmoid, bottom: conv, top: act}
  - name: ip
    type: InnerProduct
    bottom: act
    top: ip
    inner_product_param: {num_output: 5, weight_filler: {type: xavier}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip, label], top: loss}
  - {name: acc, type: Accuracy, bottom: [ip, label], top: acc, include: {phase: TEST}}
"""


def write_spec(tmp_path: Path, text: str, name: str = "net.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def layer_node(graph, name: str):
    return next(n for n in graph.layer_nodes() if n.layer.name == name)


def test_in_place_layers_fold_into_the_writer_with_their_phases(tmp_path):
    graph = load_graph(write_spec(tmp_path, TINY))
    names = [n.layer.name for n in graph.layer_nodes()]
    assert names == ["data", "conv", "act", "ip", "loss", "acc"]  # bn..drop folded, act is not
    conv = layer_node(graph, "conv")
    assert [f.name for f in conv.folded] == ["bn", "scale", "relu", "drop"]
    assert conv.folded[3].phases == ["TRAIN"] and conv.phases == {"TRAIN", "TEST"}
    assert conv.folded[0].params == 9 and conv.folded[1].params == 8  # BatchNorm 3×4 + 1 - ...
    assert layer_node(graph, "acc").phases == {"TEST"}
    # the Sigmoid reads the folded node's blob; the blob keeps its shape and name
    edge = next(
        e
        for e in graph.edges
        if graph.nodes[e.dst].kind == "layer" and graph.nodes[e.dst].layer.name == "act"
    )
    assert (edge.blob, edge.shape, graph.nodes[edge.src].holder) == ("conv", "2×4×6×6", conv.key)
    acc_edges = [e for e in graph.edges if e.dst == layer_node(graph, "acc").key]
    assert {e.blob for e in acc_edges} == {"ip", "label"}
    assert all(e.phases == {"TEST"} for e in acc_edges)
    dot = to_dot(graph)
    assert "Dropout (TRAIN)" in dot and '"bn' not in dot and "relu" not in dot
    assert re.search(r'L9 \[label="acc\\nAccuracy".*dotted', dot)


def test_one_phase_draws_only_its_layers(tmp_path):
    graph = load_graph(write_spec(tmp_path, TINY), phase="TEST")
    assert graph.phases == ["TEST"]
    assert [f.name for f in layer_node(graph, "conv").folded] == ["bn", "scale", "relu"]
    assert "acc" in [n.layer.name for n in graph.layer_nodes()]
    assert "dashed" not in to_dot(graph) and "dotted" not in to_dot(graph)
    train = load_graph(write_spec(tmp_path, TINY), phase="TRAIN")
    assert "acc" not in [n.layer.name for n in train.layer_nodes()]


def test_lenet_dot_has_nodes_shapes_and_the_folded_relu():
    dot = to_dot(load_graph(str(MODELS / "lenet.yaml")))
    nodes = dict(re.findall(r'^  (L\d+) \[label="([^"]*)"', dot, re.M))
    labels = {v.split("\\n")[0] for v in nodes.values()}
    assert labels == {"mnist", "conv1", "pool1", "conv2", "pool2", "ip1", "ip2", "accuracy", "loss"}
    assert len(nodes) == 10  # two mnist Data layers: one per phase
    ip1 = next(v for v in nodes.values() if v.startswith("ip1"))
    assert ip1 == "ip1\\nInnerProduct\\n+ ReLU" and "relu1" not in dot
    edges = {
        (a, b): lab for a, b, lab in re.findall(r'^  (L\d+) -> (L\d+) \[label="([^"]*)"', dot, re.M)
    }
    by_name = {v.split("\\n")[0]: k for k, v in nodes.items() if not v.startswith("mnist")}
    assert edges[(by_name["conv1"], by_name["pool1"])] == "64|100×20×24×24"  # TRAIN|TEST batch
    assert edges[(by_name["ip1"], by_name["ip2"])] == "64|100×500"
    assert edges[("L0", by_name["conv1"])] == "data  64×1×28×28"  # the TRAIN Data layer
    assert re.search(r'^  L0 -> L2 \[label="data  64×1×28×28", style="dashed"\];$', dot, re.M)
    assert dot.startswith('digraph "LeNet" {') and dot.rstrip().endswith("}")


def test_spec_errors_are_reported_not_drawn(tmp_path):
    bad = write_spec(tmp_path, TINY.replace("bottom: act", "bottom: atc"))
    with pytest.raises(GraphError) as e:
        load_graph(bad)
    text = e.value.text()
    assert re.search(r"net\.yaml:\d+:\d+: error: .*unknown blob 'atc'", text)
    assert text.endswith("the spec has errors; nothing drawn")


# --- SVG, PNG, layout ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def googlenet():
    return draw(load_graph(str(MODELS / "bvlc_googlenet.yaml")))


def svg_texts(svg: str) -> list[str]:
    root = ET.fromstring(svg)
    return [t.text for t in root.iter(f"{SVG_NS}text")]


def test_svg_is_xml_naming_every_layer(googlenet):
    graph = googlenet.graph
    texts = svg_texts(to_svg(googlenet))
    for node in graph.layer_nodes():
        assert node.layer.name in texts and node.layer.type in texts
    folded = [f for n in graph.layer_nodes() for f in n.folded]
    assert [f.type for f in folded].count("ReLU") == 57  # every convolution's ReLU...
    assert sum(t == "+ ReLU" for t in texts) == 57  # ... drawn on its node
    assert "+ Dropout" in texts and len(folded) == 58
    assert "10×256×28×28" in texts  # inception_3a/output's blob, drawn once


def test_layout_keeps_nodes_apart_and_edges_downward(googlenet):
    lay = googlenet.lay
    by_rank: dict = {}
    for n in lay.x:
        by_rank.setdefault(lay.rank[n], []).append(n)
    for nodes in by_rank.values():
        nodes.sort(key=lambda n: lay.x[n])
        for a, b in zip(nodes, nodes[1:]):
            assert lay.x[b] - lay.x[a] >= (lay.size[a][0] + lay.size[b][0]) / 2 + 19.9
    for (u, v), pts in lay.routes.items():
        assert lay.rank[u] < lay.rank[v]
        assert pts[0] == (lay.x[u], lay.y[u] + lay.size[u][1]) and pts[-1] == (lay.x[v], lay.y[v])
        assert all(p[1] <= q[1] for p, q in zip(pts, pts[1:]))
    assert lay.crossings == 0  # inception blocks draw without crossings
    # the nine inception blocks stack on one axis rather than drifting sideways (1,313 px when
    # every node weighed the same; the widest block is ~700 px)
    assert lay.width < 900


def test_layout_sorts_out_crossings():
    # a and b feed c and d the other way round from how they are listed
    sizes = {k: (40, 20) for k in ["a", "b", "c", "d"]}
    lay = layout(sizes, [("a", "d"), ("b", "c")])
    assert lay.crossings == 0 and lay.rank == {"a": 0, "b": 0, "c": 1, "d": 1}
    assert (lay.x["a"] < lay.x["b"]) == (lay.x["d"] < lay.x["c"])


def test_resnet50_lays_out_fast():
    start = time.process_time()
    graph = load_graph(str(MODELS / "resnet50_caffe.yaml"))
    planned = time.process_time()
    drawing = draw(graph)
    to_svg(drawing)
    drawn = time.process_time()
    # 229 layers; every BatchNorm, Scale and ReLU is folded into its convolution or sum
    assert len(graph.layer_nodes()) == 74
    assert sum(len(n.folded) for n in graph.layer_nodes()) == 229 - 74
    assert drawn - planned < 1.0, f"layout and SVG took {drawn - planned:.2f} s of CPU"
    assert drawn - start < 2.0, f"netc graph's work took {drawn - start:.2f} s of CPU"


def test_png_draws_the_layout():
    from PIL import Image

    drawing = draw(load_graph(str(MODELS / "lenet.yaml")))
    img = Image.open(io.BytesIO(to_png(drawing)))
    assert img.format == "PNG"
    assert img.size == (round(drawing.lay.width * 2), round((drawing.lay.height + 22) * 2))
    colours = {c for _, c in img.getcolors(maxcolors=1 << 20)}
    assert (0xD6, 0xE4, 0xF5) in colours  # a learned layer's fill: the boxes are drawn


# --- the page -------------------------------------------------------------------------------------

HOSTILE = "</script><script>window.pwned = 1</script><!--"


def test_script_json_cannot_close_the_script():
    data = {"name": HOSTILE, "note": "a\u2028b & <c>"}
    text = script_json(data)
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == data


def hostile_spec(tmp_path: Path) -> str:
    return write_spec(
        tmp_path, TINY.replace("name: ip\n", f"name: {json.dumps(HOSTILE)}\n"), "hostile.yaml"
    )


def test_html_escapes_a_hostile_layer_name(tmp_path):
    page = to_html(draw(load_graph(hostile_spec(tmp_path))))
    assert page.count("</script>") == 2 and page.count("<script") == 2  # ours only
    assert "window.pwned" in page and "<script>window.pwned" not in page
    assert "&lt;/script&gt;&lt;script&gt;window.pwned" in page  # the SVG's text


def test_page_renders_and_a_click_shows_the_details(browser, tmp_path):
    path = tmp_path / "lenet.html"
    assert command.run(str(MODELS / "lenet.yaml"), str(path), out=io.StringIO()) == 0
    browser.open(path)
    names = browser.js(
        "[...document.querySelectorAll('g.node.layer .name')].map(t => t.textContent)"
    )
    assert sorted(names) == sorted(
        ["mnist", "mnist", "conv1", "pool1", "conv2", "pool2", "ip1", "ip2", "accuracy", "loss"]
    )
    assert browser.js("document.getElementById('panel').hidden") is True
    x, y = browser.js(
        "(() => { const g = [...document.querySelectorAll('g.node.layer')].find("
        "g => g.querySelector('.name').textContent === 'conv1');"
        "const r = g.getBoundingClientRect(); return [r.x + r.width / 2, "
        "r.y + r.height / 2]; })()"
    )
    browser.click(x, y)
    assert browser.js("document.getElementById('panel').hidden") is False
    text = browser.js("document.getElementById('details').innerText")
    assert "conv1" in text and "Convolution" in text
    assert re.search(r"Parameters\s+520\b", text), text  # 20×1×5×5 + 20
    assert re.search(r"MACs/sample\s+288,000\b", text), text
    assert "20×1×5×5" in text and "64|100×20×24×24" in text and "num_output: 20" in text
    hover_an_edge_shows_its_blob(browser)
    shot = browser.screenshot()
    assert shot.startswith(b"\x89PNG") and len(shot) > 20_000


def hover_an_edge_shows_its_blob(browser):
    x, y = browser.js(
        "(() => { const e = [...document.querySelectorAll('g.edge')].find("
        "e => e.querySelector('.line').getAttribute('d').length > 0 && "
        "document.querySelector('svg').contains(e));"
        "const p = e.querySelector('.line'); const L = p.getTotalLength();"
        "const pt = p.getPointAtLength(L / 2); const m = p.getScreenCTM();"
        "return [pt.x * m.a + m.e, pt.y * m.d + m.f]; })()"
    )
    browser.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
    assert browser.js("document.getElementById('tip').hidden") is False
    assert re.match(r"data\s+64×1×28×28", browser.js("document.getElementById('tip').textContent"))


def test_page_with_a_hostile_name_runs_no_injected_script(browser, tmp_path):
    path = tmp_path / "hostile.html"
    command.run(hostile_spec(tmp_path), str(path), out=io.StringIO())
    browser.open(path)
    assert browser.js("window.pwned === undefined") is True
    names = browser.js(
        "[...document.querySelectorAll('g.node.layer .name')].map(t => t.textContent)"
    )
    assert HOSTILE in names
    assert browser.js(
        "JSON.parse(document.getElementById('netc-data').textContent)"
        ".nodes.some(n => n.layer && n.layer.name === " + json.dumps(HOSTILE) + ")"
    )


# --- the command ----------------------------------------------------------------------------------


def test_cli_writes_each_format_and_refuses_bad_input(tmp_path):
    from click.testing import CliRunner

    from netc.cli import main

    spec = write_spec(tmp_path, TINY)
    runner = CliRunner()
    for suffix, magic in [
        ("dot", b"digraph"),
        ("svg", b"<svg"),
        ("png", b"\x89PNG"),
        ("html", b"<!DOCTYPE html>"),
    ]:
        out = tmp_path / f"tiny.{suffix}"
        r = runner.invoke(main, ["graph", spec, "-o", str(out)])
        assert r.exit_code == 0, r.output
        assert out.read_bytes().startswith(magic)
    r = runner.invoke(main, ["graph", spec, "-o", str(tmp_path / "x.txt")])
    assert r.exit_code == 1 and "use .svg, .png, .dot or .html" in r.output
    assert not (tmp_path / "x.txt").exists()
    r = runner.invoke(main, ["graph", spec, "-o", str(tmp_path / "x.txt"), "--format", "dot"])
    assert r.exit_code == 0 and (tmp_path / "x.txt").read_text().startswith('digraph "tiny"')
    r = runner.invoke(main, ["graph", spec, "-o", str(tmp_path / "no" / "such.svg")])
    assert r.exit_code == 1 and "such.svg: cannot write" in r.output and "Traceback" not in r.output
    bad = write_spec(tmp_path, TINY.replace("kernel_size: 3", "kernel_size: 30"), "bad.yaml")
    r = runner.invoke(main, ["graph", bad, "-o", str(tmp_path / "bad.svg")])
    assert r.exit_code == 1 and re.search(r"bad\.yaml:\d+:\d+: error:", r.output)
    assert not (tmp_path / "bad.svg").exists()


LMDB = """
name: lmdb_net
layers:
  - name: mnist
    type: Data
    top: [data, label]
    data_param: {source: no_such_lmdb, backend: LMDB, batch_size: 64}
  - name: ip
    type: InnerProduct
    bottom: data
    top: ip
    inner_product_param: {num_output: 10, weight_filler: {type: xavier}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip, label], top: loss}
"""


def test_input_shape_draws_a_net_whose_data_is_elsewhere(tmp_path):
    from click.testing import CliRunner

    from netc.cli import main

    spec, out = write_spec(tmp_path, LMDB), str(tmp_path / "lmdb.dot")
    r = CliRunner().invoke(main, ["graph", spec, "-o", out])
    assert r.exit_code == 1 and "--input-shape data=N,C,H,W" in r.output
    r = CliRunner().invoke(main, ["graph", spec, "-o", out, "--input-shape", "data=N,1,28,28"])
    assert r.exit_code == 0, r.output
    assert 'L0 -> L1 [label="data  64×1×28×28"]' in Path(out).read_text(encoding="utf-8")


NO_JAX = """
import sys
from netc.cli import main
sys.argv = ["netc", "graph", "models/lenet.yaml", "-o", sys.argv[1]]
try:
    main()
except SystemExit as e:
    assert e.code == 0, e.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib", "optax"))
print("heavy:", heavy)
"""


def test_graph_does_not_import_jax(tmp_path):
    r = subprocess.run(
        [sys.executable, "-c", NO_JAX, str(tmp_path / "lenet.html")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "heavy: []" in r.stdout
    assert (tmp_path / "lenet.html").stat().st_size > 10_000
