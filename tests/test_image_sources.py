"""Image and table sources (runtime/image_sources.py): Caffe's ImageData list files, class
folders with a train/test split, CSV tables; tiny nets trained from each; `netc data inspect`."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from conftest import netc as run_cli
from PIL import Image

from netc.compiler.report import check_file
from netc.runtime.data import DataError, load_source
from netc.runtime.image_sources import split_indices
from netc.runtime.trainer import TrainConfig, train

CLASSES = ("cat", "dog", "eel")
COLOURS = ((200, 30, 30), (30, 200, 30), (30, 30, 200))  # one colour per class
PER_CLASS = 4


def picture(c: int, i: int, h: int = 16, w: int = 12) -> np.ndarray:
    """An h×w RGB image: sample i's number in its top 8 rows (grey level 40·i, one row of JPEG
    blocks, so it survives JPEG), its class's colour below."""
    a = np.empty((h, w, 3), np.uint8)
    a[:] = COLOURS[c]
    a[:8] = 40 * i
    return a


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """class folders of PNG (and one JPEG per class), a list file naming them, and a CSV."""
    root = tmp_path_factory.mktemp("images")
    lines = []
    for c, name in enumerate(CLASSES):
        (root / "folder" / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            jpeg = i == PER_CLASS - 1
            file = root / "folder" / name / f"{i}.{'jpg' if jpeg else 'png'}"
            extra = {"quality": 95, "subsampling": 0} if jpeg else {}  # 4:4:4: no chroma bleed
            Image.fromarray(picture(c, i)).save(file, **extra)
            lines.append(f"folder/{name}/{file.name} {c}")
    (root / "folder" / "cat" / "notes.txt").write_text("not an image")
    (root / "list.txt").write_text("\n".join(lines) + "\n\n")
    rows = ["x1,label,x2"] + [f"{c + 0.1 * i},{c},{-c}" for c in range(3) for i in range(4)]
    (root / "table.csv").write_text("\n".join(rows) + "\n")
    return root


def test_list_file_reads_images_and_labels_as_caffe(tree):
    ds = load_source(str(tree / "list.txt"), options={"new_height": 0, "new_width": 0})
    assert ds.data.shape == (12, 3, 16, 12) and ds.data.dtype == np.uint8
    assert ds.label.tolist() == [c for c in range(3) for _ in range(PER_CLASS)]
    for k, (c, i) in enumerate((c, i) for c in range(3) for i in range(PER_CLASS)):
        got = ds.data[k].transpose(1, 2, 0).astype(int)
        tol = 8 if i == PER_CLASS - 1 else 0  # the JPEG is lossy
        assert np.abs(got[8:] - np.array(COLOURS[c])).max() <= tol, (c, i)
        assert np.abs(got[:8] - 40 * i).max() <= tol, (c, i)
    gray = load_source(
        str(tree / "list.txt"), options={"new_height": 4, "new_width": 6, "is_color": False}
    )
    assert gray.data.shape == (12, 1, 4, 6)
    # Pillow's luminance of the class colour (ITU-R 601-2): 200*.299 + 30*.587 + 30*.114 ≈ 81
    assert abs(int(gray.data[0, 0, 3, 3]) - 81) <= 1


def test_list_file_errors_name_the_line(tree, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{tree}/folder/cat/0.png 0\n{tree}/folder/cat/1.png\n")
    with pytest.raises(DataError, match=r"bad.txt:2: expected `PATH LABEL`"):
        load_source(str(bad), options={})
    bad.write_text("missing.png 1\n")
    with pytest.raises(DataError, match=r"bad.txt:1: no such image file 'missing.png'"):
        load_source(str(bad), options={})
    bad.write_text(f"{tree}/list.txt 1\n")
    with pytest.raises(DataError, match="cannot be read as an image"):
        load_source(str(bad), options={})
    mixed = tmp_path / "mixed.png"
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(mixed)
    bad.write_text(f"{tree}/folder/cat/0.png 0\n{mixed} 1\n")
    with pytest.raises(DataError, match="set new_height and new_width"):
        load_source(str(bad), options={})


def test_folder_classes_and_a_stratified_deterministic_split(tree):
    whole = load_source(f"folder:{tree / 'folder'}")
    assert whole.label.tolist() == [c for c in range(3) for _ in range(PER_CLASS)]
    opts = {"new_height": 0, "new_width": 0}  # as stored: the marker pixel stays exact
    train_part = load_source(f"folder:{tree / 'folder'}", options={**opts, "split": (0, 0.75)})
    test_part = load_source(f"folder:{tree / 'folder'}", options={**opts, "split": (0.75, 1)})
    assert np.bincount(train_part.label).tolist() == [3, 3, 3]
    assert np.bincount(test_part.label).tolist() == [1, 1, 1]
    # disjoint and complete: the sample numbers written in the first row
    ids = {
        (int(lab), round(int(x[0, 3, 5]) / 40))
        for ds in (train_part, test_part)
        for x, lab in zip(ds.data, ds.label)
    }
    assert len(ids) == 12
    labels = np.repeat(np.arange(5), 20)
    a, b = split_indices(labels, (0, 0.7)), split_indices(labels, (0.7, 1))
    assert np.array_equal(a, split_indices(labels, (0, 0.7)))  # deterministic
    assert not set(a) & set(b) and len(a) + len(b) == 100
    assert np.bincount(labels[b]).tolist() == [6] * 5
    first = np.concatenate([np.arange(c * 20, c * 20 + 14) for c in range(5)])
    assert not np.array_equal(a, first)  # a permutation, not each class's first 70%


def test_csv_table(tree, tmp_path):
    ds = load_source(f"csv:{tree / 'table.csv'}")
    assert ds.data.dtype == np.float32 and ds.data.shape == (12, 2)
    assert ds.label.dtype == np.int32 and ds.label.tolist() == [
        c for c in range(3) for _ in range(4)
    ]
    np.testing.assert_allclose(ds.data[5], [1.1, -1.0], rtol=1e-6)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,label\n1,0\nx,1\n")
    with pytest.raises(DataError, match=r"bad.csv:3: column 'a': 'x' is not a number"):
        load_source(f"csv:{bad}")
    bad.write_text("a,b\n1,0\n")
    with pytest.raises(DataError, match="one of them 'label'"):
        load_source(f"csv:{bad}")


NET = """\
name: tiny
layers:
  - name: data
    type: {kind}
    top: [data, label]
    {extra}
  - {{name: ip, type: InnerProduct, bottom: data, top: ip,
     inner_product_param: {{num_output: 3, weight_filler: {{type: xavier}}}}}}
  - {{name: loss, type: SoftmaxWithLoss, bottom: [ip, label], top: loss}}
solver: {{base_lr: 0.05, lr_policy: fixed, max_iter: 12, display: 1, snapshot_prefix: tiny}}
"""
IMAGES = (
    "transform_param: {{scale: 0.00390625}}\n    image_data_param: {{source: '{src}', "
    "new_height: 8, new_width: 8, batch_size: 4, shuffle: true}}"
)
SOURCES = {
    "list": ("ImageData", IMAGES, "list.txt"),
    "folder": ("ImageData", IMAGES, "folder:folder"),
    "csv": (
        "Data",
        "data_param: {{source: '{src}', batch_size: 4, shuffle: true}}",
        "csv:table.csv",
    ),
}


@pytest.mark.parametrize("kind", list(SOURCES))
def test_a_tiny_net_trains_from_each_source(tree, tmp_path, kind):
    layer, extra, src = SOURCES[kind]
    spec = tree / f"{kind}.yaml"
    spec.write_text(NET.format(kind=layer, extra=extra.format(src=src)))
    _, plan = check_file(str(spec))
    assert plan is not None
    want = (4, 3, 8, 8) if layer == "ImageData" else (4, 2)
    assert tuple(plan.blobs["data"]) == want
    out = io.StringIO()
    code = train(
        TrainConfig(spec=str(spec), out=str(tmp_path / "run"), progress=False), out=out, err=out
    )
    assert code == 0, out.getvalue()
    events = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e.get("event") == "train"]
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3])  # the labels belong to the samples


def test_imagedata_without_a_size_names_the_fields(tmp_path):
    spec = tmp_path / "n.yaml"
    spec.write_text(
        NET.format(
            kind="ImageData",
            extra="image_data_param: {source: l.txt, new_height: 8, batch_size: 4}",
        )
    )
    s, _ = check_file(str(spec))
    text = "\n".join(d.format() for d in s.diagnostics.errors)
    assert "n.yaml:6:5: error: layer 'data' (ImageData): image_data_param: set new_width" in text
    assert "--input-shape data=N,3,H,W" in text


def test_data_inspect_prints_the_balance_and_writes_the_grid(tree, tmp_path):
    grid = tmp_path / "grid.png"
    r = run_cli(
        "data",
        "inspect",
        f"folder:{tree / 'folder'}",
        "--size",
        "8x8",
        "--split",
        "0,0.75",
        "-o",
        grid,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"folder:{tree / 'folder'}: 9 samples"
    assert lines[1].startswith("  data: uint8, 3×8×8 per sample, values ")
    assert "classes: 3 (samples per class)" in r.stdout
    assert [ln.split() for ln in lines[4:7]] == [
        ["0", "3", "33.3%", "cat"],
        ["1", "3", "33.3%", "dog"],
        ["2", "3", "33.3%", "eel"],
    ]
    with Image.open(grid) as im:  # 8 tiles to a row: 2 rows of 8×8 with 1-pixel borders
        assert im.size == (8 * 9 + 1, 2 * 9 + 1) and im.mode == "RGB"
        tile = np.asarray(im)[1:9, 1:9]
    assert np.abs(tile[6, 4].astype(int) - COLOURS[0]).max() <= 2  # the first cat, in colour
    r = run_cli("data", "inspect", f"csv:{tree / 'table.csv'}", "-o", tmp_path / "no.png")
    assert r.returncode == 1 and "are not images" in r.stderr and "Traceback" not in r.stderr
