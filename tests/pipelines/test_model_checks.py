"""--model checks on the driver (pipelines.model_checks via pipelines.predict.resolve_model): bad checkpoints are
refused with one line naming the file before anything is hashed, loaded or started; tile sizes and queries the model
cannot serve well are warnings. Broken checkpoints are copies of assets/demo-model (never modified)."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from crobim.config import CroBIMConfig
from crobim.errors import CheckpointError
from pipelines.model_checks import MIN_TILE_SIZE_PX, check_checkpoint, check_tile_size, query_findings
from pipelines.predict import resolve_model

DEMO_MODEL = Path(__file__).resolve().parents[2] / "assets" / "demo-model"
WEIGHTS = "model.safetensors"
LONG = (
    "the large red roofed building with a white chimney standing next to the narrow winding road that leads "
    "to the old harbour"
)


@pytest.fixture
def no_hashing(monkeypatch):
    """A refused checkpoint must be refused before its folder is hashed (the hash reads every byte)."""
    import pipelines.provenance

    def refuse(uri):
        raise AssertionError(f"{uri} was hashed before it was checked")

    monkeypatch.setattr(pipelines.provenance, "folder_sha256", refuse)


def _copy(tmp_path: Path, name: str = "model") -> Path:
    folder = tmp_path / name
    shutil.copytree(DEMO_MODEL, folder)
    return folder


def _rewrite_tensors(folder: Path, edit) -> None:
    """Re-save model.safetensors with edited tensors, keeping its metadata (the stored config still matches)."""
    from safetensors import safe_open

    with safe_open(str(folder / WEIGHTS), framework="pt") as handle:
        metadata = handle.metadata()
    save_file(edit(load_file(str(folder / WEIGHTS))), str(folder / WEIGHTS), metadata=metadata)


def _edit_config(folder: Path, edit) -> None:
    data = json.loads((folder / "config.json").read_text())
    edit(data)
    (folder / "config.json").write_text(json.dumps(data))


def _truncate(folder: Path) -> None:
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: len(data) // 2])


def _pickle(folder: Path) -> None:
    (folder / WEIGHTS).write_bytes(pickle.dumps({"backbone.weight": [0.0, 1.0]}))  # never loaded


def _zip(folder: Path) -> None:
    torch.save({"backbone.weight": torch.zeros(2)}, folder / WEIGHTS)  # torch's zip format; never loaded


def _unknown_key(folder: Path) -> None:
    _edit_config(folder, lambda c: c["presence"].update(not_a_key=1))


def _other_depth(folder: Path) -> None:
    _edit_config(folder, lambda c: c["mid"].update(depth=3))


def _module_prefix(folder: Path) -> None:
    _rewrite_tensors(folder, lambda t: {f"module.{k}": v for k, v in t.items()})


def _missing_stage(folder: Path) -> None:
    _rewrite_tensors(
        folder, lambda t: {k: v for k, v in t.items() if not k.startswith("backbone.body.layer3.")}
    )


def _other_shape(folder: Path) -> None:
    _rewrite_tensors(folder, lambda t: t | {"presence_head.mlp.fc1.weight": torch.zeros(2, 2)})


def _no_tokenizer(folder: Path) -> None:
    shutil.rmtree(folder / "tokenizer")


def _bad_text_config(folder: Path) -> None:
    (folder / "text_encoder_config.json").write_text('{"hidden_size": 64}')


def _text_width(folder: Path) -> None:
    fields = json.loads((folder / "text_encoder_config.json").read_text())
    (folder / "text_encoder_config.json").write_text(json.dumps(fields | {"hidden_size": 65}))


def _broken_tokenizer(folder: Path) -> None:
    (folder / "tokenizer" / "tokenizer.json").write_text("{not json")


BROKEN = [
    (
        _truncate,
        WEIGHTS,
        r"is truncated: its header describes [\d,]+ bytes of tensor data but only [\d,]+ follow",
    ),
    (
        _pickle,
        WEIGHTS,
        r"is a PyTorch pickle file, not safetensors: convert it with safetensors.torch.save_file",
    ),
    (_zip, WEIGHTS, r"is a PyTorch zip file \(torch.save\), not safetensors"),
    (
        _unknown_key,
        "config.json",
        r"is not a CroBIM config \(unknown config key\(s\) \['presence.not_a_key'\]",
    ),
    (
        _other_depth,
        "config.json",
        r"does not match the config saved with the weights: \['mid.depth: config.json 3",
    ),
    (_module_prefix, WEIGHTS, r"Every checkpoint key carries the prefix 'module.'"),
    (_missing_stage, WEIGHTS, r"does not match the model: \d+ missing keys \[.backbone.body.layer3."),
    (
        _other_shape,
        WEIGHTS,
        r"1 shape mismatches \['presence_head.mlp.fc1.weight: checkpoint \(2, 2\) vs model",
    ),
    (_no_tokenizer, "tokenizer", r"is missing; a CroBIM checkpoint folder holds"),
    (_bad_text_config, "text_encoder_config.json", r"is not a transformers config"),
    (_broken_tokenizer, "tokenizer", r"is not a readable tokenizer folder"),
    (
        _text_width,
        "",
        r"no model can be built from its config.json and text_encoder_config.json \(The hidden size",
    ),
]


@pytest.mark.parametrize(("breakage", "culprit", "expected"), BROKEN, ids=[b[0].__name__[1:] for b in BROKEN])
def test_a_broken_checkpoint_is_refused_on_the_driver_in_one_line(
    tmp_path, no_hashing, breakage, culprit, expected
):
    folder = _copy(tmp_path)
    breakage(folder)
    start = time.monotonic()
    with pytest.raises(ValueError, match=expected) as info:  # exit 2 in the job: bad input
        resolve_model(str(folder))
    message = str(info.value)
    assert "\n" not in message and str(folder / culprit) in message
    assert time.monotonic() - start < 60
    assert isinstance(info.value, CheckpointError) or breakage is _unknown_key


def test_the_demo_model_passes_and_is_described(caplog):
    with caplog.at_level(logging.WARNING):
        model = resolve_model(str(DEMO_MODEL))
    assert (model.tile_size_px, model.input_size_px, model.warnings) == (96, 96, ())
    assert model.info["kind"] == "checkpoint" and len(model.info["sha256"]) == 64 and not caplog.records


@pytest.mark.parametrize("tile", [0, -96, 7, MIN_TILE_SIZE_PX - 1])
def test_a_tile_size_under_32_px_is_refused(tile):
    with pytest.raises(
        ValueError,
        match=rf"--tile-size {tile} px is too small: tiles must be at least 32 px; use the model's 96 px",
    ):
        resolve_model(str(DEMO_MODEL), tile)
    with pytest.raises(ValueError, match=rf"--tile-size {tile} px is too small"):
        resolve_model("tests.fixtures.predictors:factory", tile)


def test_a_tile_size_other_than_the_models_is_a_logged_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="pipelines.predict"):
        model = resolve_model(str(DEMO_MODEL), 256)
    assert model.tile_size_px == 256 and model.input_size_px == 96
    (warning,) = model.warnings
    assert warning.startswith("--tile-size 256 px differs from the model's input size 96 px")
    assert "objects look 2.67x smaller than in training" in warning
    assert [r.getMessage() for r in caplog.records] == [warning]
    assert check_tile_size(32, 96) == [
        "--tile-size 32 px differs from the model's input size 96 px: every tile is resized to 96 px, so objects "
        "look 3x larger than in training and answers degrade; leave --tile-size out to use 96 px"
    ]
    assert check_tile_size(96, 96) == [] and check_tile_size(None, 96) == []


def test_factories_report_their_own_size_and_are_not_asked_otherwise():
    own = resolve_model("tests.fixtures.predictors:factory")
    assert (own.tile_size_px, own.input_size_px, own.warnings) == (64, 64, ())
    given = resolve_model("tests.fixtures.predictors:factory", 128)
    assert (given.tile_size_px, given.input_size_px, given.warnings) == (128, None, ())
    # A factory has no tokenizer here: its queries are not checked.
    assert resolve_model("tests.fixtures.predictors:factory", queries=["???", LONG]).warnings == ()


def test_query_warnings_name_long_unknown_and_wordless_queries(caplog):
    with caplog.at_level(logging.WARNING, logger="pipelines.predict"):
        model = resolve_model(
            str(DEMO_MODEL), queries=["buildings", LONG, "建筑物", "🏠 near the road", "?!"]
        )
    assert model.warnings == (
        f"query {LONG!r} has 22 tokens; the model reads the first 18 (text.max_len 20, with [CLS] and [SEP]): "
        "'the large red roofed building with a white chimney standing next to the narrow winding road that "
        "leads'; shorten it",
        "query '建筑物': no word of it is in the model's vocabulary ('建', '筑', '物' -> [UNK]); it will not find "
        "anything: reword it in plain English",
        "query '🏠 near the road': words the model does not know (read as [UNK]): '🏠'",
        "query '?!' has no word, only punctuation or symbols; it will not find anything",
    )
    assert [r.getMessage() for r in caplog.records] == list(model.warnings)
    assert resolve_model(str(DEMO_MODEL), queries=["buildings", "red roofs"]).warnings == ()


_APART = """
import json, sys
from crobim.errors import CheckpointError
from pipelines.predict import resolve_model

model = resolve_model(sys.argv[1], queries=["buildings", "?!"])
try:
    resolve_model(sys.argv[2])
    error = None
except CheckpointError as exc:
    error = str(exc)
print(json.dumps({"warnings": model.warnings, "error": error, "torch": "torch" in sys.modules}))
"""


def test_a_driver_without_torch_checks_in_a_child_process_and_stays_without_it(tmp_path):
    """The checks import torch, timm and transformers (~0.7 GB): a job's driver runs them apart and never loads them."""
    broken = _copy(tmp_path)
    _rewrite_tensors(broken, lambda tensors: dict(list(tensors.items())[1:]))
    proc = subprocess.run(
        [sys.executable, "-c", _APART, str(DEMO_MODEL), str(broken)],
        capture_output=True, text=True, cwd=DEMO_MODEL.parents[1], timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.splitlines()[-1])
    assert found["torch"] is False
    assert found["warnings"] == [
        "query '?!' has no word, only punctuation or symbols; it will not find anything"
    ]
    assert str(broken / WEIGHTS) in found["error"] and "\n" not in found["error"]


def test_a_non_square_model_is_refused_on_the_driver(tmp_path, no_hashing):
    folder = _copy(tmp_path)
    _edit_config(folder, lambda c: c["input"].update(size=[96, 128]))
    with pytest.raises(ValueError, match=r"input.size \(96, 128\) in .*config.json is not square"):
        resolve_model(str(folder))


class _ByteCounter:
    """Counts the bytes s3fs fetches per object key."""

    def __init__(self, monkeypatch):
        import s3fs.core

        self.by_key: dict[str, int] = {}
        fetch = s3fs.core.S3File._fetch_range

        def counting(file, start, end):
            data = fetch(file, start, end)
            self.by_key[file.key] = self.by_key.get(file.key, 0) + len(data)
            return data

        monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", counting)


def test_an_s3_checkpoint_is_checked_from_its_header_bytes(s3_server, monkeypatch, tmp_path):
    from common.storage_adapters import upload_dir

    uri = s3_server.uri("models", "demo")
    upload_dir(DEMO_MODEL, uri)
    config = CroBIMConfig.from_json(DEMO_MODEL / "config.json")
    counter = _ByteCounter(monkeypatch)
    check_checkpoint(uri, config)
    size = (DEMO_MODEL / WEIGHTS).stat().st_size
    read = counter.by_key["models/demo/model.safetensors"]
    assert 0 < read < size // 50  # the 8-byte length and the JSON header, not the tensors
    warnings = query_findings(uri, config, ["🏠", "roads"])
    assert warnings == [
        "query '🏠': no word of it is in the model's vocabulary ('🏠' -> [UNK]); it will not find anything: reword it in plain English"
    ]

    broken = _copy(tmp_path)
    _truncate(broken)
    bad_uri = s3_server.uri("models", "cut")
    upload_dir(broken, bad_uri)
    with pytest.raises(CheckpointError, match=rf"^{bad_uri}/model.safetensors is truncated"):
        resolve_model(bad_uri)
