"""The safetensors header check (crobim.safetensors_header): what it reads, what it refuses and how it says so.

Files that are not safetensors are written here and only ever read as bytes: nothing is unpickled.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save, save_file

from crobim.errors import CheckpointError
from crobim.safetensors_header import read_safetensors_header

DEMO_WEIGHTS = Path(__file__).resolve().parents[2] / "assets" / "demo-model" / "model.safetensors"


class CountingReader(io.BytesIO):
    """A seekable in-memory file that counts the bytes handed out by ``read``."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        out = super().read(size)
        self.bytes_read += len(out)
        return out


def _tensors() -> dict[str, torch.Tensor]:
    return {
        "a.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "b.bias": torch.ones(5, dtype=torch.float16),
        "c.steps": torch.tensor(7, dtype=torch.int64),
        "d.empty": torch.zeros(0, 3),
    }


def _raw(header: dict, data: bytes) -> bytes:
    """A safetensors file written by hand (for headers the library would refuse to write)."""
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def test_header_matches_what_safetensors_reads(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(_tensors(), str(path), metadata={"format": "pt", "note": "x"})
    with open(path, "rb") as fh:
        header = read_safetensors_header(fh, source=str(path))
    assert header.tensors == {
        "a.weight": ("F32", (3, 4)),
        "b.bias": ("F16", (5,)),
        "c.steps": ("I64", ()),
        "d.empty": ("F32", (0, 3)),
    }
    with safe_open(str(path), framework="pt") as handle:
        assert header.metadata == handle.metadata() == {"format": "pt", "note": "x"}


def test_only_the_header_is_read():
    """The demo model (7.5 MB): two reads, the 8-byte length and the JSON header, nothing of the tensors."""
    data = DEMO_WEIGHTS.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    fh = CountingReader(data)
    header = read_safetensors_header(fh, source="demo", size=len(data))
    assert len(header.tensors) > 100 and "crobim_config" in header.metadata
    assert fh.bytes_read == 8 + length < len(data) // 50


def test_truncated_file_is_named_truncated():
    data = save(_tensors())
    with pytest.raises(
        CheckpointError, match=r"^cut is truncated: its header describes 66 bytes of tensor data"
    ):
        read_safetensors_header(io.BytesIO(data[:-10]), source="cut")
    with pytest.raises(CheckpointError, match=r"^cut is truncated: its header alone needs"):
        read_safetensors_header(io.BytesIO(data[:40]), source="cut")
    with pytest.raises(CheckpointError, match=r"^cut is 3 bytes long, too short"):
        read_safetensors_header(io.BytesIO(data[:3]), source="cut")


def test_pickle_renamed_to_safetensors_is_named_and_never_unpickled(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"weight": [1.0, 2.0, 3.0]}))

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    with open(path, "rb") as fh, pytest.raises(CheckpointError) as info:
        read_safetensors_header(fh, source=str(path))
    message = str(info.value)
    assert message.startswith(f"{path} is a PyTorch pickle file, not safetensors")
    assert "safetensors.torch.save_file" in message and "never unpickles" in message
    assert "truncated" not in message


def test_torch_save_zip_is_named(tmp_path):
    path = tmp_path / "model.safetensors"
    torch.save({"weight": torch.zeros(3)}, path)  # torch's default zip format; only its bytes are read back
    with (
        open(path, "rb") as fh,
        pytest.raises(CheckpointError, match=r"is a PyTorch zip file \(torch.save\)"),
    ):
        read_safetensors_header(fh, source=str(path))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 1\n", "is a Git LFS pointer"),
        (b"\x1f\x8b\x08\x00" + bytes(40), "is gzip-compressed"),
        (b"hello, these are not weights at all", "is not a safetensors file"),
        (struct.pack("<Q", 4) + b"\xff\xfe{}" + bytes(8), "its header is not JSON"),
        (struct.pack("<Q", 2) + b"[]", "its header is not a JSON object"),
    ],
)
def test_other_formats_are_refused_with_what_they_are(data, expected):
    with pytest.raises(CheckpointError, match=expected):
        read_safetensors_header(io.BytesIO(data), source="f")


def test_spans_must_tile_the_data_exactly():
    f32 = {"dtype": "F32", "shape": [2]}
    gap = {"a": f32 | {"data_offsets": [0, 8]}, "b": f32 | {"data_offsets": [12, 20]}}
    with pytest.raises(
        CheckpointError, match=r"tensor 'b' starts at data byte 12 but the tensor before it ends at 8"
    ):
        read_safetensors_header(io.BytesIO(_raw(gap, bytes(20))), source="f")
    overlap = {"a": f32 | {"data_offsets": [0, 8]}, "b": f32 | {"data_offsets": [4, 12]}}
    with pytest.raises(CheckpointError, match="a gap or an overlap"):
        read_safetensors_header(io.BytesIO(_raw(overlap, bytes(12))), source="f")
    exact = {"a": f32 | {"data_offsets": [0, 8]}}
    assert read_safetensors_header(io.BytesIO(_raw(exact, bytes(8))), source="f").tensors == {
        "a": ("F32", (2,))
    }
    with pytest.raises(CheckpointError, match="4 bytes follow its last tensor"):
        read_safetensors_header(io.BytesIO(_raw(exact, bytes(12))), source="f")


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]},
            r"needs 12 bytes but its data_offsets span 8",
        ),
        ({"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}, r"dtype 'Q7', which torch cannot load"),
        ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, r"has shape \[-2\]"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, r"data_offsets \[8, 0\]"),
        ([1, 2], r"the header entry of tensor 'a' is not an object"),
    ],
)
def test_each_entry_is_checked(entry, expected):
    with pytest.raises(CheckpointError, match=expected):
        read_safetensors_header(io.BytesIO(_raw({"a": entry}, bytes(8))), source="f")


def test_metadata_must_be_strings():
    header = {"__metadata__": {"epoch": 3}, "a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}
    with pytest.raises(CheckpointError, match="__metadata__ is not a map of strings"):
        read_safetensors_header(io.BytesIO(_raw(header, b"\x00")), source="f")


def test_legacy_torch_save_is_a_pickle_and_a_cut_header_starting_like_one_is_truncated(tmp_path):
    legacy = tmp_path / "legacy.safetensors"
    torch.save({"weight": torch.zeros(3)}, legacy, _use_new_zipfile_serialization=False)
    assert legacy.read_bytes()[:2] == b"\x80\x02"
    with open(legacy, "rb") as fh, pytest.raises(CheckpointError, match="is a PyTorch pickle file"):
        read_safetensors_header(fh, source=str(legacy))
    # A real header of 0x0280 bytes starts with b"\x80\x02" too: cut inside it, it is truncated, not a pickle.
    text = json.dumps({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}).encode()
    data = struct.pack("<Q", 0x0280) + text.ljust(0x0280) + b"\x00"
    assert read_safetensors_header(io.BytesIO(data), source="f").tensors == {"a": ("U8", (1,))}
    with pytest.raises(CheckpointError, match="^f is truncated: its header alone needs 648 bytes"):
        read_safetensors_header(io.BytesIO(data[:100]), source="f")
