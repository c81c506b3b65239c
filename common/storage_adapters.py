"""Zarr, pyarrow and folder-copy adapters over :mod:`common.storage` paths (local, ``s3://``, ``gs://``)."""

from __future__ import annotations

import logging
import os
import posixpath
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from common.storage import _atomic_local_write, _remote_fs, _split, get_fs, is_remote, join, write_bytes

if TYPE_CHECKING:
    import pyarrow.fs
    from zarr.abc.store import Store

__all__ = ["arrow_fs", "download_dir", "upload_dir", "zarr_store"]

logger = logging.getLogger(__name__)


def zarr_store(uri: str | os.PathLike[str], read_only: bool = False) -> Store:
    """A Zarr 3 store for ``uri``: ``LocalStore`` for local paths, ``FsspecStore`` (async fsspec) otherwise.

    Args:
        uri: Folder of the Zarr hierarchy (e.g. ``out/masks.zarr`` or ``s3://bucket/run/masks.zarr``).
        read_only: Open the store read-only.

    Returns:
        A ``zarr.abc.store.Store`` usable by ``zarr.open_group`` and ``xarray.open_zarr``/``to_zarr``.
    """
    from zarr.storage import FsspecStore, LocalStore

    protocol, path = _split(uri)
    if protocol is None:
        return LocalStore(os.path.abspath(path), read_only=read_only)
    fs = _remote_fs(protocol, asynchronous=True)
    return FsspecStore(fs, path=path, read_only=read_only)


def _arrow_s3(path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    import pyarrow.fs as pafs

    kwargs: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parts.netloc
        kwargs["scheme"] = parts.scheme or "https"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs), path


def arrow_fs(uri: str | os.PathLike[str]) -> tuple[pyarrow.fs.FileSystem, str]:
    """A pyarrow filesystem and path for ``uri`` (Parquet I/O, Ray Train ``storage_filesystem``).

    S3 uses Arrow's native ``S3FileSystem`` configured from the same environment variables as s3fs (so a custom
    ``AWS_ENDPOINT_URL`` works); other protocols use ``FileSystem.from_uri`` and fall back to the fsspec
    filesystem wrapped in ``PyFileSystem(FSSpecHandler(...))``.

    Returns:
        ``(filesystem, path)`` with the path in the filesystem's own form (absolute for local, ``bucket/key``).
    """
    import pyarrow.fs as pafs

    protocol, path = _split(uri)
    if protocol is None:
        return pafs.LocalFileSystem(), os.path.abspath(path)
    if protocol in ("s3", "s3a"):
        return _arrow_s3(path)
    try:
        return pafs.FileSystem.from_uri(os.fspath(uri))  # type: ignore[no-any-return]
    except (pafs.ArrowInvalid, pafs.ArrowNotImplementedError, OSError) as exc:  # type: ignore[attr-defined]
        logger.debug("pyarrow has no native filesystem for %s (%s); wrapping fsspec", protocol, exc)
    fs, rpath = get_fs(uri)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), rpath


def upload_dir(local_dir: str | os.PathLike[str], uri: str | os.PathLike[str]) -> list[str]:
    """Copy every file under ``local_dir`` to the folder ``uri`` (same relative layout); returns the URIs written.

    Raises:
        FileNotFoundError: ``local_dir`` is not a folder.
    """
    root = Path(local_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"cannot upload {str(root)!r}: not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    rel = [p.relative_to(root).as_posix() for p in files]
    targets = [join(uri, r) for r in rel]
    if not is_remote(uri):
        for src, dst in zip(files, targets, strict=True):
            write_bytes(dst, src.read_bytes())
        return targets
    fs, base = get_fs(uri)
    if files:
        fs.put([str(p) for p in files], [posixpath.join(base, r) for r in rel])
    logger.info("uploaded %d files from %s to %s", len(files), root, os.fspath(uri))
    return targets


def download_dir(uri: str | os.PathLike[str], local_dir: str | os.PathLike[str]) -> list[Path]:
    """Copy every file under the folder ``uri`` into ``local_dir`` (created); returns the local files written.

    Raises:
        FileNotFoundError: Nothing exists under ``uri``.
    """
    fs, base = get_fs(uri)
    found = sorted(str(p) for p in fs.find(base))
    if not found:
        raise FileNotFoundError(f"cannot download {os.fspath(uri)!r}: no files under it")
    root = Path(local_dir)
    root.mkdir(parents=True, exist_ok=True)
    base_clean = base.rstrip("/")
    rel = [posixpath.relpath(str(p), base_clean) for p in found]
    targets = [root.joinpath(*r.split("/")) for r in rel]
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
    if not is_remote(uri):
        for src, dst in zip(found, targets, strict=True):
            _atomic_local_write(str(dst), Path(src).read_bytes())
    else:
        fs.get(found, [str(t) for t in targets])
    logger.info("downloaded %d files from %s to %s", len(found), os.fspath(uri), root)
    return targets
