"""Downloaded built-in data sets (runtime/datasets_remote.py), offline: small files in the real
formats (IDX gz, CIFAR-10 binary tar.gz) served from a local HTTP server that honours Range."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import socket
import struct
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from netc.runtime import datasets_remote as R
from netc.runtime.data import DataError, load_source

# --- a local server ------------------------------------------------------------------------------


class Server:
    """Serves `files` ({path: bytes}) on 127.0.0.1; records each request's path and Range."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.ignore_range = False  # answer every request with the whole file (200)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                rng = self.headers.get("Range")
                owner.requests.append((self.path, rng))
                rng = None if owner.ignore_range else rng
                body = owner.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = int(rng[len("bytes=") :].split("-")[0]) if rng else 0
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.close()


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def serve(server, prefix: str, files: dict[str, bytes], mirrors=("",)) -> tuple[R.RemoteFile, ...]:
    """Put `files` on the server under /prefix/ and describe them as a catalogue entry would:
    their own sizes and digests, each tried at every mirror (a path prefix) in order."""
    out = []
    for name, body in files.items():
        server.files[f"/{prefix}/{name}"] = body
        urls = tuple(f"{server.url}/{m}{prefix}/{name}" for m in mirrors)
        out.append(R.RemoteFile(name, len(body), sha256(body), urls))
    return tuple(out)


# --- files in the real formats -------------------------------------------------------------------


def idx_gz(a: np.ndarray) -> bytes:
    """An IDX file (unsigned bytes), gzip-compressed, as MNIST publishes them."""
    head = bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    return gzip.compress(head + a.astype(np.uint8).tobytes(), mtime=0)


def mnist_files(rng, n_train=5, n_test=3):
    arrays = {
        "train_data": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_label": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_data": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_label": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    files = {
        "train-images-idx3-ubyte.gz": idx_gz(arrays["train_data"]),
        "train-labels-idx1-ubyte.gz": idx_gz(arrays["train_label"]),
        "t10k-images-idx3-ubyte.gz": idx_gz(arrays["test_data"]),
        "t10k-labels-idx1-ubyte.gz": idx_gz(arrays["test_label"]),
    }
    return files, arrays


def cifar_tar(rng, per_batch=2, n_test=3) -> tuple[bytes, dict[str, np.ndarray]]:
    """A tar.gz laid out as cifar-10-binary.tar.gz: 5 train batches and a test batch of
    1 label byte + 3,072 pixel bytes per record (plus an entry that must not be extracted)."""
    buf = io.BytesIO()
    xs, ys = {"train": [], "test": []}, {"train": [], "test": []}
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
        for name in ["batches.meta.txt", *names, "../escape.bin"]:
            n = n_test if name == "test_batch.bin" else per_batch
            x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
            y = rng.integers(0, 10, n, dtype=np.uint8)
            body = np.concatenate([y[:, None], x.reshape(n, -1)], axis=1).tobytes()
            if name in names:
                split = "test" if name == "test_batch.bin" else "train"
                xs[split].append(x)
                ys[split].append(y)
            info = tarfile.TarInfo(
                name if name.startswith("..") else f"cifar-10-batches-bin/{name}"
            )
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    arrays = {f"{s}_data": np.concatenate(xs[s]) for s in xs}
    arrays.update({f"{s}_label": np.concatenate(ys[s]) for s in ys})
    return buf.getvalue(), arrays


def catalogue(name: str, files: tuple[R.RemoteFile, ...]) -> dict[str, R.RemoteSet]:
    """The real entry of set `name` (its parser), with the test's files and digests."""
    return {name: dataclasses.replace(R.REMOTE[name], files=files)}


# --- tests ---------------------------------------------------------------------------------------


def test_mnist_download_check_parse_and_cache(server, tmp_path):
    files, want = mnist_files(np.random.default_rng(0))
    # the first mirror has none of the files: the second one is tried next
    remote = serve(server, "mnist", files, mirrors=("gone/", ""))
    log = io.StringIO()
    got = R.load_remote("mnist", root=tmp_path, catalogue=catalogue("mnist", remote), out=log)
    for split in ("train", "test"):
        np.testing.assert_array_equal(got[f"{split}_data"], want[f"{split}_data"][:, None])
        np.testing.assert_array_equal(got[f"{split}_label"], want[f"{split}_label"])
        assert got[f"{split}_data"].dtype == np.uint8
        assert got[f"{split}_label"].dtype == np.int32
    folder = tmp_path / "mnist"
    for name, body in files.items():
        assert (folder / name).read_bytes() == body
        assert not (folder / f"{name}.part").exists()
    tried = [p for p, _ in server.requests if p.endswith("train-images-idx3-ubyte.gz")]
    assert tried == ["/gone/mnist/train-images-idx3-ubyte.gz", "/mnist/train-images-idx3-ubyte.gz"]
    assert "downloading " + server.url + "/mnist/train-images-idx3-ubyte.gz" in log.getvalue()
    assert len(list(folder.glob("mnist-*.npz"))) == 1
    # a second load reads the parsed .npz: no request, the same arrays
    before = len(server.requests)
    again = R.load_remote(
        "mnist",
        root=tmp_path,
        catalogue=catalogue("mnist", remote),
        keys=("test_label",),
        out=io.StringIO(),
    )
    assert len(server.requests) == before
    assert list(again) == ["test_label"]
    np.testing.assert_array_equal(again["test_label"], want["test_label"])


def test_cifar10_binary_tar_is_parsed_in_memory(server, tmp_path):
    body, want = cifar_tar(np.random.default_rng(1))
    remote = serve(server, "cifar", {"cifar-10-binary.tar.gz": body})
    got = R.load_remote(
        "cifar10", root=tmp_path, catalogue=catalogue("cifar10", remote), out=io.StringIO()
    )
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value)
    assert got["train_data"].shape == (10, 3, 32, 32) and got["test_data"].shape == (3, 3, 32, 32)
    # nothing is extracted: the folder holds the archive, the parsed arrays and the lock only
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cifar10").iterdir()) == [
        ".lock",
        "cifar",
        "cifar10",
    ]
    assert not (tmp_path / "escape.bin").exists()


def test_a_corrupted_download_is_refused_and_removed(server, tmp_path):
    files, _ = mnist_files(np.random.default_rng(2))
    remote = serve(server, "bad", files)
    name = remote[0].name
    server.files[f"/bad/{name}"] = files[name][:-1] + bytes([files[name][-1] ^ 1])  # one bit
    with pytest.raises(DataError) as e:
        R.load_remote(
            "mnist", root=tmp_path, catalogue=catalogue("mnist", remote), out=io.StringIO()
        )
    msg = str(e.value)
    assert f"could not download {name}" in msg and remote[0].sha256 in msg
    assert "refused and removed" in msg
    assert not (tmp_path / "mnist" / name).exists()
    assert not (tmp_path / "mnist" / f"{name}.part").exists()


def test_a_partial_download_resumes_with_a_range_request(server, tmp_path):
    files, want = mnist_files(np.random.default_rng(3), n_train=40)
    remote = serve(server, "resume", files)
    name = "train-images-idx3-ubyte.gz"
    folder = tmp_path / "mnist"
    folder.mkdir()
    half = len(files[name]) // 2
    (folder / f"{name}.part").write_bytes(files[name][:half])
    log = io.StringIO()
    got = R.load_remote("mnist", root=tmp_path, catalogue=catalogue("mnist", remote), out=log)
    assert (f"/resume/{name}", f"bytes={half}-") in server.requests
    assert f"resuming {server.url}/resume/{name} at byte {half:,}" in log.getvalue()
    assert (folder / name).read_bytes() == files[name]
    np.testing.assert_array_equal(got["train_data"][:, 0], want["train_data"])


def test_a_server_that_ignores_the_range_restarts_the_file(server, tmp_path):
    files, want = mnist_files(np.random.default_rng(4))
    remote = serve(server, "norange", files)
    name = "t10k-images-idx3-ubyte.gz"
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / f"{name}.part").write_bytes(b"stale bytes")
    server.ignore_range = True
    try:
        got = R.load_remote(
            "mnist", root=tmp_path, catalogue=catalogue("mnist", remote), out=io.StringIO()
        )
    finally:
        server.ignore_range = False
    assert (f"/norange/{name}", "bytes=11-") in server.requests
    assert (tmp_path / "mnist" / name).read_bytes() == files[name]
    np.testing.assert_array_equal(got["test_data"][:, 0], want["test_data"])


def test_offline_says_which_url_failed_and_where_to_put_the_file(tmp_path):
    with socket.socket() as s:  # a port nothing listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    f = R.RemoteFile(
        "t10k-labels-idx1-ubyte.gz",
        10,
        "0" * 64,
        (f"http://127.0.0.1:{port}/a/t10k-labels-idx1-ubyte.gz",),
    )
    remote = {"mnist": dataclasses.replace(R.REMOTE["mnist"], files=(f,))}
    with pytest.raises(DataError) as e:
        R.load_remote("mnist", root=tmp_path, catalogue=remote, out=io.StringIO())
    msg = str(e.value)
    assert f"http://127.0.0.1:{port}/a/t10k-labels-idx1-ubyte.gz: " in msg
    assert "refused" in msg.lower()
    assert f"put it at {tmp_path / 'mnist' / 't10k-labels-idx1-ubyte.gz'}" in msg
    assert "NETC_DATA_DIR" in msg


def test_builtin_sources_read_the_data_folder(tmp_path, monkeypatch):
    """`netc:mnist/test` goes through NETC_DATA_DIR: the parsed arrays when there; a file
    there that is not the published one is refused with its digest (no download)."""
    from netc.runtime.data import _load_builtin

    monkeypatch.setenv("NETC_DATA_DIR", str(tmp_path))
    assert R.data_dir() == tmp_path
    x = np.zeros((2, 1, 28, 28), np.uint8)
    cached = R.parsed_file("mnist")
    assert cached.parent == tmp_path / "mnist"
    cached.parent.mkdir()
    np.savez(cached, test_data=x, test_label=np.array([3, 4], np.int32))
    _load_builtin.cache_clear()
    try:
        ds = load_source("netc:mnist/test")
        assert ds.name == "netc:mnist/test" and ds.label.tolist() == [3, 4]
        cached.unlink()
        (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"not mnist")
        with pytest.raises(DataError, match="sha256|bytes where") as e:
            load_source("netc:mnist/train")
        assert "delete it and netc downloads it again" in str(e.value)
    finally:
        _load_builtin.cache_clear()


def test_idx_errors(tmp_path):
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x07\x01" + b"\0" * 8))
    with pytest.raises(DataError, match="not an IDX file"):
        R.read_idx(bad)
    short = tmp_path / "short.gz"
    short.write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\1" * 4))
    with pytest.raises(DataError, match="truncated"):
        R.read_idx(short)


def test_catalogue_shapes_match_the_downloaded_sets():
    """`netc check` knows the downloaded sets' shapes from compiler/layers/data.py's catalogue;
    they must be those of the published files."""
    from netc.compiler.layers.data import BUILTIN

    for name in R.REMOTE:
        assert BUILTIN[name].resource is None
    assert BUILTIN["cifar10"].splits["train"].sample_shape == (3, 32, 32)
    assert BUILTIN["mnist"].splits["train"].samples == 60000
    assert [f.name for f in R.REMOTE["cifar10"].files] == ["cifar-10-binary.tar.gz"]
