"""common.storage on the local filesystem and on a real S3-compatible server (moto) on loopback."""

from __future__ import annotations

import builtins
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common import storage, storage_adapters


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path) -> str:
    """A writable folder URI: a local temp folder or a prefix in a fresh bucket on the moto server."""
    if request.param == "local":
        return str(tmp_path / "out")
    server = request.getfixturevalue("s3_server")
    return server.uri("run")


def test_bytes_json_round_trip(root: str) -> None:
    uri = storage.join(root, "_state", "done", "r00000c00001.json")
    assert not storage.exists(uri)
    storage.write_json(uri, {"b": 1, "a": [1, 2]})
    assert storage.exists(uri)
    assert storage.read_json(uri) == {"a": [1, 2], "b": 1}
    # Sorted keys: equal objects give equal bytes.
    assert storage.read_bytes(uri) == b'{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    storage.write_bytes(uri, b"replaced")
    assert storage.read_bytes(uri) == b"replaced"


def test_listdir_exists_remove(root: str) -> None:
    for name in ("b.json", "a.json", "c.json"):
        storage.write_bytes(storage.join(root, "done", name), name.encode())
    storage.write_bytes(storage.join(root, "done", "sub", "x.bin"), b"x")
    assert storage.listdir(storage.join(root, "done")) == ["a.json", "b.json", "c.json", "sub"]
    assert storage.exists(storage.join(root, "done"))
    storage.remove(storage.join(root, "done", "b.json"))
    assert storage.listdir(storage.join(root, "done")) == ["a.json", "c.json", "sub"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        storage.remove(storage.join(root, "done", "b.json"))
    with pytest.raises(IsADirectoryError, match="recursive=True"):
        storage.remove(storage.join(root, "done"))
    storage.remove(storage.join(root, "done"), recursive=True)
    assert not storage.exists(storage.join(root, "done"))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        storage.listdir(storage.join(root, "done"))
    with pytest.raises(FileNotFoundError, match="no file at"):
        storage.read_bytes(storage.join(root, "missing.json"))


def test_open_file_and_makedirs(root: str) -> None:
    storage.makedirs(root)
    uri = storage.join(root, "notes", "a.txt")
    with storage.open_file(uri, "w") as handle:
        handle.write("hello")
    with storage.open_file(uri, "r") as handle:
        assert handle.read() == "hello"
    with storage.open_file(uri, "rb") as handle:
        assert handle.read() == b"hello"


def test_local_writes_are_atomic(tmp_path) -> None:
    target = tmp_path / "marker.json"
    storage.write_bytes(str(target), b"old")
    # A failure inside the with block leaves the previous content and no temporary file.
    with pytest.raises(RuntimeError, match="boom"), storage.open_file(str(target), "wb") as handle:
        handle.write(b"partial")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["marker.json"]
    # Until close, readers see the old content; after close, the new one.
    handle = storage.open_file(str(target), "wb")
    handle.write(b"new")
    assert target.read_bytes() == b"old"
    handle.close()
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["marker.json"]


def test_local_paths_never_import_object_store_packages(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def guarded(name: str, *args, **kwargs):
        if name.split(".")[0] in ("s3fs", "gcsfs", "aiobotocore", "botocore", "boto3"):
            raise AssertionError(f"local path imported {name}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", guarded)
    uri = str(tmp_path / "x" / "y.json")
    storage.write_json(uri, [1])
    assert storage.read_json(uri) == [1]
    assert storage.listdir(str(tmp_path / "x")) == ["y.json"]
    fs, path = storage.get_fs(f"file://{uri}")
    assert fs.protocol[0] == "file" and path == uri
    storage_adapters.zarr_store(str(tmp_path / "z.zarr"))
    storage_adapters.arrow_fs(str(tmp_path))


def test_join_and_is_remote() -> None:
    assert storage.join("s3://bucket/run/", "masks.zarr", "prob") == "s3://bucket/run/masks.zarr/prob"
    assert storage.join("gs://b", "x") == "gs://b/x"
    assert storage.join("/tmp/out", "a", "b") == os.path.join("/tmp/out", "a", "b")
    assert storage.is_remote("s3://b/k") and storage.is_remote("gs://b/k")
    assert not storage.is_remote("/tmp/x") and not storage.is_remote("file:///tmp/x")
    with pytest.raises(ValueError, match="no bucket"):
        storage.get_fs("s3:///key")


def test_gcs_missing_package_names_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # Hide an installed gcsfs, if any: the error must name the package to install.
    monkeypatch.setitem(sys.modules, "gcsfs", None)
    with pytest.raises(ImportError, match=r"pip install gcsfs"):
        storage.get_fs("gs://bucket/run")


def test_zarr_store_round_trip(root: str) -> None:
    import zarr

    uri = storage.join(root, "masks.zarr")
    group = zarr.open_group(storage_adapters.zarr_store(uri), mode="w")
    prob = group.create_array("prob", shape=(2, 64, 64), chunks=(1, 32, 32), dtype="uint8", fill_value=0)
    data = np.arange(2 * 64 * 64, dtype=np.uint8).reshape(2, 64, 64)
    prob[:, 32:, :32] = data[:, 32:, :32]
    group.attrs["queries"] = ["ponds", "roads"]
    reopened = zarr.open_group(storage_adapters.zarr_store(uri, read_only=True), mode="r")
    np.testing.assert_array_equal(reopened["prob"][:, 32:, :32], data[:, 32:, :32])
    assert int(reopened["prob"][:, :32].max()) == 0
    assert reopened.attrs["queries"] == ["ponds", "roads"]
    # Keys land where a plain listing sees them (zarr v3 layout: zarr.json + c/ chunk keys).
    assert "zarr.json" in storage.listdir(uri)
    assert storage.listdir(storage.join(uri, "prob", "c")) == ["0", "1"]


def test_arrow_fs_parquet_round_trip(root: str) -> None:
    fs, path = storage_adapters.arrow_fs(storage.join(root, "polygons.parquet"))
    table = pa.table({"polygon_id": ["a", "b"], "score_mean": [0.5, 0.75]})
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent)
    pq.write_table(table, path, filesystem=fs)
    assert pq.read_table(path, filesystem=fs).equals(table)
    # Written through pyarrow, visible through fsspec (same bytes, same key).
    data = storage.read_bytes(storage.join(root, "polygons.parquet"))
    assert data[:4] == b"PAR1"


def test_upload_download_dir(root: str, tmp_path) -> None:
    src = tmp_path / "ckpt"
    (src / "model").mkdir(parents=True)
    (src / "model" / "model.safetensors").write_bytes(os.urandom(4096))
    (src / "config.json").write_text('{"preset": "crobim-tiny"}')
    written = storage_adapters.upload_dir(src, storage.join(root, "best"))
    assert written == [
        storage.join(root, "best", "config.json"),
        storage.join(root, "best", "model", "model.safetensors"),
    ]
    dst = tmp_path / "copy"
    files = storage_adapters.download_dir(storage.join(root, "best"), dst)
    assert sorted(p.relative_to(dst).as_posix() for p in files) == ["config.json", "model/model.safetensors"]
    for rel in ("config.json", "model/model.safetensors"):
        assert (dst / rel).read_bytes() == (src / rel).read_bytes()
    with pytest.raises(FileNotFoundError, match="no files under it"):
        storage_adapters.download_dir(storage.join(root, "nothing"), tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        storage_adapters.upload_dir(tmp_path / "absent", storage.join(root, "x"))


def test_s3_objects_are_visible_to_other_clients(s3_server) -> None:
    # What storage writes is a plain object on the server (checked with boto3, bypassing fsspec).
    storage.write_json(s3_server.uri("run", "_state", "fingerprint.json"), {"v": 1})
    body = (
        s3_server.client()
        .get_object(Bucket=s3_server.bucket, Key="run/_state/fingerprint.json")["Body"]
        .read()
    )
    assert body == b'{\n  "v": 1\n}\n'
    # ... and objects written by another client are listed immediately (no stale listing cache).
    storage.listdir(s3_server.uri("run", "_state"))
    s3_server.client().put_object(Bucket=s3_server.bucket, Key="run/_state/done.json", Body=b"{}")
    assert storage.listdir(s3_server.uri("run", "_state")) == ["done.json", "fingerprint.json"]
    with pytest.raises(FileNotFoundError, match="bucket s3://no-such-bucket does not exist"):
        storage.makedirs("s3://no-such-bucket")


def test_local_atomic_write_gives_the_usual_file_mode(tmp_path):
    import os

    from common import storage

    target = tmp_path / "out.json"
    storage.write_json(str(target), {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == (0o666 & ~umask)
