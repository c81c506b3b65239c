"""The safetensors header of a weights file, read and checked without reading a tensor (MODEL.md §8).

``read_safetensors_header`` reads the 8-byte header length and the JSON header (two reads, so an object-store file
costs two small ranged requests), checks every tensor's dtype and byte span against its shape, and that the spans
tile the rest of the file exactly: a truncated copy is found from its size alone. Files often mistaken for
safetensors (``torch.save`` pickles and zips, Git LFS pointers, gzip) are named by their leading bytes; nothing is
ever unpickled.
"""

from __future__ import annotations

import io
import json
import math
import struct
from dataclasses import dataclass
from typing import IO, Any, TypeGuard

from crobim.errors import CheckpointError

__all__ = ["SafetensorsHeader", "read_safetensors_header"]

#: Bytes per element of every dtype that ``safetensors.torch`` loads.
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "C64": 8,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E4M3FNUZ": 1, "F8_E5M2": 1, "F8_E5M2FNUZ": 1,
}  # fmt: skip
#: safetensors refuses JSON headers larger than this.
MAX_HEADER_BYTES = 100_000_000
_NOT_UNPICKLED = "convert it with safetensors.torch.save_file (this project never unpickles weights)"
#: Leading bytes of files often mistaken for safetensors, and what to say about them.
_FOREIGN_FORMATS = (
    (b"PK\x03\x04", f"is a PyTorch zip file (torch.save), not safetensors: {_NOT_UNPICKLED}"),
    *(
        (b"\x80" + bytes([protocol]), f"is a PyTorch pickle file, not safetensors: {_NOT_UNPICKLED}")
        for protocol in (2, 3, 4, 5)
    ),
    (
        b"version https://git-lfs",
        "is a Git LFS pointer, not the weights: fetch them (git lfs pull) and copy again",
    ),
    (b"\x1f\x8b", "is gzip-compressed, not safetensors: decompress it (gunzip)"),
)
#: Leading bytes read to recognise those formats (only when the file is not safetensors).
_SNIFF_BYTES = 32


@dataclass(frozen=True)
class SafetensorsHeader:
    """What a safetensors header says, checked against the file's size.

    Attributes:
        tensors: ``{name: (dtype, shape)}`` of every tensor, e.g. ``("F32", (64, 3, 7, 7))``.
        metadata: The string metadata (``__metadata__``; ``crobim_config`` when ``crobim.save_model`` wrote it).
    """

    tensors: dict[str, tuple[str, tuple[int, ...]]]
    metadata: dict[str, str]


def _foreign_format(fh: IO[bytes], source: str) -> CheckpointError | None:
    """The error naming the format of a file that starts like a known non-safetensors format, else None."""
    fh.seek(0)
    lead = fh.read(_SNIFF_BYTES)
    if lead[8:9] == b"{":
        return None  # a header length then JSON: a damaged safetensors file, whatever its first byte
    for magic, what in _FOREIGN_FORMATS:
        if lead.startswith(magic):
            return CheckpointError(f"{source} {what}")
    return None


def _not_safetensors(fh: IO[bytes], source: str, why: str) -> CheckpointError:
    return _foreign_format(fh, source) or CheckpointError(
        f"{source} is not a safetensors file ({why}); re-save it with crobim.save_model or safetensors.torch.save_file"
    )


def _is_dims(value: Any, length: int | None = None) -> TypeGuard[list[int]]:  # noqa: ANN401
    """A list of non-negative ints (of ``length`` items when given)."""
    if not isinstance(value, list) or (length is not None and len(value) != length):
        return False
    return all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


def _parse_tensor(name: str, entry: Any, source: str) -> tuple[str, tuple[int, ...], int, int]:  # noqa: ANN401
    """``(dtype, shape, begin, end)`` of one header entry, its byte span consistent with its shape and dtype."""
    if not isinstance(entry, dict):
        raise CheckpointError(
            f"{source} is corrupt: the header entry of tensor {name!r} is not an object; re-save it"
        )
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise CheckpointError(
            f"{source}: tensor {name!r} has dtype {dtype!r}, which torch cannot load; re-save it as one of "
            f"{sorted(DTYPE_BYTES)}"
        )
    if not _is_dims(shape) or not _is_dims(offsets, 2) or offsets[0] > offsets[1]:
        raise CheckpointError(
            f"{source} is corrupt: tensor {name!r} has shape {shape!r} and data_offsets {offsets!r}; re-save it"
        )
    nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
    if offsets[1] - offsets[0] != nbytes:
        raise CheckpointError(
            f"{source} is corrupt: tensor {name!r} ({dtype} {tuple(shape)}) needs {nbytes} bytes but its "
            f"data_offsets span {offsets[1] - offsets[0]}; re-save it"
        )
    return dtype, tuple(shape), offsets[0], offsets[1]


def _check_coverage(spans: list[tuple[int, int, str]], data_bytes: int, source: str) -> None:
    """The tensors must tile the data area exactly: no gap, no overlap, nothing missing at the end, nothing after."""
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise CheckpointError(
                f"{source} is corrupt: tensor {name!r} starts at data byte {begin} but the tensor before it ends at "
                f"{end} (a gap or an overlap); re-save it"
            )
        end = stop
    if end > data_bytes:
        raise CheckpointError(
            f"{source} is truncated: its header describes {end:,} bytes of tensor data but only {data_bytes:,} "
            "follow; copy the file again (or re-save it with crobim.save_model)"
        )
    if end < data_bytes:
        raise CheckpointError(
            f"{source} is corrupt: {data_bytes - end:,} bytes follow its last tensor; copy the file again"
        )


def _header_length(fh: IO[bytes], size: int, source: str) -> int:
    """The JSON header's length from the first 8 bytes, refused when it cannot fit in the file."""
    fh.seek(0)
    head = fh.read(8)
    if len(head) < 8:
        raise _foreign_format(fh, source) or CheckpointError(
            f"{source} is {len(head)} bytes long, too short for a safetensors file; copy it again"
        )
    (length,) = struct.unpack("<Q", head)
    if length <= min(MAX_HEADER_BYTES, size - 8):
        return int(length)
    if length <= MAX_HEADER_BYTES and _foreign_format(fh, source) is None:
        raise CheckpointError(
            f"{source} is truncated: its header alone needs {8 + length:,} bytes but the file has {size:,}; "
            "copy the file again"
        )
    raise _not_safetensors(fh, source, f"its first 8 bytes {head!r} are not a header length")


def read_safetensors_header(fh: IO[bytes], *, source: str, size: int | None = None) -> SafetensorsHeader:
    """Read and check a safetensors header without reading any tensor.

    Args:
        fh: The file, opened for binary reading and seekable (a local file or an object-store file).
        source: The file's name for messages (path or URI).
        size: The file's size in bytes (default: found by seeking to the end).

    Returns:
        The tensors' dtypes and shapes and the string metadata.

    Raises:
        CheckpointError: One line naming ``source``, what is wrong and the fix.
    """
    if size is None:
        size = fh.seek(0, io.SEEK_END)
    length = _header_length(fh, size, source)
    try:
        header = json.loads(fh.read(length).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _not_safetensors(fh, source, f"its header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise _not_safetensors(fh, source, "its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{source} is corrupt: its __metadata__ is not a map of strings; re-save it")
    tensors, spans = {}, []
    for name, entry in header.items():
        dtype, shape, begin, stop = _parse_tensor(name, entry, source)
        tensors[name] = (dtype, shape)
        spans.append((begin, stop, name))
    _check_coverage(spans, size - 8 - length, source)
    return SafetensorsHeader(tensors, dict(metadata))
