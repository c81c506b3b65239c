"""Local and object-store paths (s3://, gs://) behind one small API, on fsspec (adapters: ``storage_adapters``).

Every job output path (``--out``, ``--storage-path``, ``--catalog``, ``--model``) may be a local path or a URI.
Local paths use the plain local filesystem (never s3fs/gcsfs) and write atomically (temporary file in the same
folder, then ``os.replace``). Object stores write each object with one PUT, so a reader sees either the old or the
new object, never a partial one. S3 endpoint and credentials come from the environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``) or the instance profile; GCS from Application
Default Credentials or workload identity. Nothing here reads credentials from files of this project.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import posixpath
import tempfile
import uuid
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import fsspec

__all__ = [
    "exists",
    "get_fs",
    "is_remote",
    "join",
    "listdir",
    "makedirs",
    "open_file",
    "read_bytes",
    "read_json",
    "remove",
    "write_bytes",
    "write_json",
]

logger = logging.getLogger(__name__)

#: Protocols handled by a dedicated package, with the pip name to install when it is missing.
_PROTOCOL_PACKAGES: dict[str, str] = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}


def _split(uri: str | os.PathLike[str]) -> tuple[str | None, str]:
    """Return ``(protocol, path)``; protocol is None for local paths (plain or ``file://``)."""
    text = os.fspath(uri)
    if "://" not in text:
        return None, text
    protocol, rest = text.split("://", 1)
    protocol = protocol.lower()
    if protocol in ("file", "local"):
        return None, rest
    if not rest or rest.startswith("/"):
        raise ValueError(
            f"URI {text!r} has no bucket or host after '{protocol}://'; expected {protocol}://BUCKET/KEY"
        )
    return protocol, rest.rstrip("/")


def _s3_options() -> dict[str, Any]:
    """s3fs options from the environment: custom endpoint (MinIO, moto, Ceph) and region."""
    client_kwargs: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        client_kwargs["region_name"] = region
    # Listings must not be cached: done markers written by Ray workers are listed by the driver.
    return {"client_kwargs": client_kwargs, "use_listings_cache": False}


def _import_backend(protocol: str) -> None:
    """Import the fsspec backend for ``protocol`` or raise ImportError naming the pip package."""
    package = _PROTOCOL_PACKAGES.get(protocol)
    if package is None:
        return
    try:
        __import__(package)
    except ImportError as exc:
        raise ImportError(
            f"{protocol}:// paths need the '{package}' package, which is not installed; "
            f"run `pip install {package}` (or use a local path)"
        ) from exc


def _remote_fs(protocol: str, asynchronous: bool = False) -> fsspec.AbstractFileSystem:
    import fsspec

    _import_backend(protocol)
    options: dict[str, Any] = _s3_options() if protocol in ("s3", "s3a") else {}
    if asynchronous:
        options["asynchronous"] = True
    return fsspec.filesystem("s3" if protocol == "s3a" else protocol, **options)


def is_remote(uri: str | os.PathLike[str]) -> bool:
    """True when ``uri`` names an object store or other non-local filesystem (``s3://``, ``gs://``, ...)."""
    return _split(uri)[0] is not None


def get_fs(uri: str | os.PathLike[str]) -> tuple[fsspec.AbstractFileSystem, str]:
    """Resolve ``uri`` to an fsspec filesystem and the path inside it.

    Args:
        uri: Local path, ``file://`` URI, ``s3://bucket/key``, ``gs://bucket/key`` or any fsspec URI.

    Returns:
        ``(filesystem, path)``: a ``LocalFileSystem`` and an absolute path for local input, else the
        protocol's filesystem and ``bucket/key`` without the scheme.

    Raises:
        ImportError: The protocol's package (s3fs, gcsfs) is missing; the message gives the pip command.
        ValueError: The URI has no bucket.
    """
    protocol, path = _split(uri)
    if protocol is None:
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem(), os.path.abspath(path)
    return _remote_fs(protocol), path


def join(uri: str | os.PathLike[str], *parts: str) -> str:
    """Join path components onto ``uri`` with ``/`` and keep its scheme (``join("s3://b/run", "x")``)."""
    text = os.fspath(uri)
    protocol, _ = _split(text)
    if protocol is None:
        return os.path.join(text, *parts)
    return posixpath.join(text.rstrip("/"), *parts)


def exists(uri: str | os.PathLike[str]) -> bool:
    """True when ``uri`` is an existing file or folder (on object stores: an object or a non-empty prefix)."""
    fs, path = get_fs(uri)
    return bool(fs.exists(path))


def makedirs(uri: str | os.PathLike[str]) -> None:
    """Create the folder ``uri`` and its parents; a no-op where folders are implicit (object stores)."""
    protocol, path = _split(uri)
    if protocol is None:
        os.makedirs(path, exist_ok=True)
        return
    # Object stores have no folders: a prefix exists once an object is written under it.
    if "/" not in path.strip("/"):
        fs, _ = get_fs(uri)
        if not fs.exists(path):
            raise FileNotFoundError(
                f"bucket {protocol}://{path} does not exist; create it before writing there"
            )


def listdir(uri: str | os.PathLike[str]) -> list[str]:
    """Sorted entry names (not paths) directly under the folder ``uri``.

    Raises:
        FileNotFoundError: ``uri`` is not an existing folder (no object under that prefix).
    """
    fs, path = get_fs(uri)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"cannot list {os.fspath(uri)!r}: no such folder") from exc
    names = sorted({posixpath.basename(str(entry).rstrip("/")) for entry in entries})
    if not names and not fs.isdir(path):
        raise FileNotFoundError(f"cannot list {os.fspath(uri)!r}: no such folder")
    return [name for name in names if name]


def remove(uri: str | os.PathLike[str], recursive: bool = False) -> None:
    """Delete the file ``uri``, or the folder and everything below it when ``recursive``.

    Raises:
        FileNotFoundError: Nothing exists at ``uri``.
        IsADirectoryError: ``uri`` is a non-empty folder and ``recursive`` is False.
    """
    fs, path = get_fs(uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"cannot remove {os.fspath(uri)!r}: it does not exist")
    if fs.isdir(path) and not recursive:
        if fs.ls(path, detail=False):
            raise IsADirectoryError(
                f"{os.fspath(uri)!r} is a non-empty folder; pass recursive=True to delete it"
            )
        if not is_remote(uri):
            os.rmdir(path)
        return
    fs.rm(path, recursive=recursive)


def read_bytes(uri: str | os.PathLike[str]) -> bytes:
    """Whole content of the file ``uri``.

    Raises:
        FileNotFoundError: No file at ``uri``.
    """
    fs, path = get_fs(uri)
    try:
        return bytes(fs.cat_file(path))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no file at {os.fspath(uri)!r}") from exc


@functools.cache
def _new_file_mode() -> int:
    """The mode ``open()`` gives new files under the process umask (mkstemp alone would give 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic_local_write(path: str, data: bytes) -> None:
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, _new_file_mode())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(uri: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``uri``: temporary file + rename locally, one PUT on object stores."""
    protocol, path = _split(uri)
    if protocol is None:
        _atomic_local_write(os.path.abspath(path), bytes(data))
        return
    fs, rpath = get_fs(uri)
    fs.pipe_file(rpath, bytes(data))


def read_json(uri: str | os.PathLike[str]) -> Any:
    """Parse the JSON file ``uri``."""
    return json.loads(read_bytes(uri).decode("utf-8"))


def write_json(uri: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as UTF-8 JSON (sorted keys, so equal objects give equal bytes), atomically."""
    text = json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=False)
    write_bytes(uri, (text + "\n").encode("utf-8"))


class _AtomicLocalFile:
    """A local file opened for writing under a temporary name, renamed onto its target on a clean close."""

    def __init__(self, path: str, mode: str, **kwargs: Any) -> None:
        folder = os.path.dirname(path) or "."
        os.makedirs(folder, exist_ok=True)
        self._path = path
        self._tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
        self._handle: IO[Any] = open(self._tmp, mode, **kwargs)  # noqa: SIM115 (closed in close())
        self._closed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> _AtomicLocalFile:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()

    @property
    def closed(self) -> bool:
        return self._closed

    def write(self, data: Any) -> int:
        return self._handle.write(data)

    def close(self) -> None:
        """Flush, close and move the file onto its target name."""
        if self._closed:
            return
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self._tmp, self._path)
        self._closed = True

    def discard(self) -> None:
        """Close and delete the temporary file; the target is left as it was."""
        if self._closed:
            return
        self._handle.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)
        self._closed = True


def open_file(uri: str | os.PathLike[str], mode: str = "rb", **kwargs: Any) -> IO[Any]:
    """Open ``uri`` like ``open()``; use it as a context manager.

    Local writes (``w``/``wb``/``x``) go to a temporary file that replaces the target when the ``with`` block
    exits cleanly (an exception leaves the target untouched). Object-store writes upload on close.

    Args:
        uri: Local path or URI.
        mode: ``"rb"``, ``"r"``, ``"wb"``, ``"w"`` (append modes are refused on object stores by fsspec).
        **kwargs: Passed to ``open`` (e.g. ``encoding``) or to the fsspec filesystem's ``open``.

    Returns:
        A file object.
    """
    protocol, path = _split(uri)
    if protocol is None:
        path = os.path.abspath(path)
        if mode.startswith(("w", "x")) and "+" not in mode:
            if mode.startswith("x") and os.path.exists(path):
                raise FileExistsError(f"{path!r} exists and mode is {mode!r}")
            return _AtomicLocalFile(path, mode.replace("x", "w"), **kwargs)  # type: ignore[return-value]
        if mode.startswith("a"):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        return open(path, mode, **kwargs)  # noqa: SIM115 (returned to the caller)
    fs, rpath = get_fs(uri)
    return fs.open(rpath, mode, **kwargs)  # type: ignore[no-any-return]
