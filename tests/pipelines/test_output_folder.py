"""``--out`` safety: ``--overwrite`` deletes only what a region run wrote, checks everything first, never a file.

No Ray: the refusals happen on the driver before anything is written, and the resume case stops after
``prepare_run``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from jobs.infer_region import main
from pipelines.provenance import (
    RUN_FILES,
    RUN_FOLDERS,
    STATE_DIR,
    check_output,
    claim_output,
    is_run_entry,
    stored_fingerprint,
    write_fingerprint,
)
from tests.fixtures.region_scenes import Square, write_scene

MODEL = "tests.fixtures.predictors:factory"


def _tree(path: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``path`` (folders as '/')."""
    return {
        p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/"
        for p in sorted(path.rglob("*"))
    }


def _fake_run(out: Path, with_state: bool = True) -> None:
    """Every top-level entry a finished run (with --html and --demo) writes, plus a leftover temporary file."""
    for folder in sorted(RUN_FOLDERS):
        (out / folder).mkdir(parents=True, exist_ok=True)
    (out / "masks.zarr" / "zarr.json").write_text("{}")
    (out / "_parts" / "polygons").mkdir()
    (out / "_parts" / "polygons" / "r00000c00000.parquet").write_bytes(b"PAR1")
    (out / "inputs" / "items.parquet").write_bytes(b"PAR1")
    if with_state:
        write_fingerprint(str(out), {"threshold": 0.5})
        (out / STATE_DIR / "done").mkdir()
        (out / STATE_DIR / "done" / "r00000c00000.json").write_text("{}")
    else:
        (out / "inputs" / "items.parquet").unlink()
    for name in sorted(RUN_FILES):
        (out / name).write_bytes(b"x")
    (out / ".run.json.a1b2c3d4.tmp").write_bytes(b"{")  # an atomic write cut short


@pytest.fixture
def catalog(tmp_path: Path) -> tuple[Path, tuple[float, float, float, float]]:
    """A one-item catalog file over a local COG."""
    scene = write_scene(tmp_path / "www", lambda p: str(p), squares=[Square("red", 10, 10, 8, 8)])
    path = tmp_path / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [scene.item]}))
    return path, scene.lonlat_bbox()


def _argv(catalog: tuple[Path, tuple[float, ...]], out: Path | str, *extra: str) -> list[str]:
    path, bbox = catalog
    argv = ["--bbox", *map(str, bbox), "--catalog", str(path), "--model", MODEL, "--query", "red"]
    return [*argv, "--out", str(out), "--chunk-size", "128", "--no-progress", *extra]


def test_run_entries_are_known_by_name_and_kind():
    assert is_run_entry("masks.zarr", True) and is_run_entry("run.json", False)
    assert is_run_entry(".polygons.parquet.0f3a9c1e2b4d4e5f.tmp", False)
    assert not is_run_entry("masks.zarr", False)  # a file where the run writes a folder is not ours
    assert not is_run_entry("run.json", True)
    assert not is_run_entry("important.txt", False) and not is_run_entry(".important.txt.abc.tmp", False)


def test_overwrite_refuses_a_folder_with_foreign_files_and_deletes_nothing(tmp_path, catalog, capsys):
    out = tmp_path / "out"
    _fake_run(out)
    (out / "important.txt").write_text("my notes")
    (out / "stuff").mkdir()
    (out / "stuff" / "data.csv").write_text("1,2")
    before = _tree(out)
    with pytest.raises(FileExistsError, match=r"important\.txt, stuff/") as err:
        claim_output(str(out), overwrite=True)
    assert "nothing was deleted" in str(err.value) and "another --out" in str(err.value)
    assert _tree(out) == before
    # The job: exit 2, one message naming the files, every file intact.
    assert main(_argv(catalog, out, "--overwrite")) == 2
    msg = capsys.readouterr().err
    assert "important.txt" in msg and "stuff/" in msg and "move those files" in msg
    assert _tree(out) == before


def test_overwrite_refuses_a_users_folder_without_a_run(tmp_path, catalog, capsys):
    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    (out / "important.txt").write_text("keep me")
    (out / "sub" / "b.txt").write_text("me too")
    before = _tree(out)
    assert main(_argv(catalog, out, "--overwrite")) == 2
    assert "important.txt, sub/" in capsys.readouterr().err
    assert main(_argv(catalog, out)) == 2
    assert "holds no finished run state" in capsys.readouterr().err
    assert _tree(out) == before


def test_run_names_without_run_state_are_not_deleted(tmp_path):
    out = tmp_path / "out"
    _fake_run(out, with_state=False)
    before = _tree(out)
    with pytest.raises(FileExistsError, match="no state of a region run"):
        claim_output(str(out), overwrite=True)
    assert _tree(out) == before


def test_a_file_as_out_is_refused_and_kept(tmp_path, catalog, capsys):
    afile = tmp_path / "afile.txt"
    afile.write_text("precious")
    for extra in ((), ("--overwrite",)):
        assert main(_argv(catalog, afile, *extra)) == 2
        assert "is a file, not a folder" in capsys.readouterr().err
        assert afile.read_text() == "precious"
    with pytest.raises(FileExistsError, match="is a file"):
        claim_output(str(afile), overwrite=True)
    assert afile.read_text() == "precious"


def test_overwrite_cleans_a_folder_of_our_own_run(tmp_path):
    out = tmp_path / "out"
    _fake_run(out)
    assert check_output(str(out), overwrite=True)[-2:] == ["inputs", STATE_DIR]  # run state deleted last
    assert (out / "run.json").exists()  # checking deletes nothing
    claim_output(str(out), overwrite=True)
    assert out.is_dir() and list(out.iterdir()) == []
    claim_output(str(out))  # an empty folder is claimed as it is
    claim_output(str(tmp_path / "new" / "deeper"))
    assert (tmp_path / "new" / "deeper").is_dir()


def test_overwrite_on_object_storage_deletes_only_run_objects(s3_server):
    from common import storage

    out = s3_server.uri("runs", "a")
    storage.write_json(storage.join(out, STATE_DIR, "fingerprint.json"), {"fingerprint": "x", "settings": {}})
    storage.write_bytes(storage.join(out, "masks.zarr", "zarr.json"), b"{}")
    storage.write_bytes(storage.join(out, "polygons.parquet"), b"PAR1")
    storage.write_bytes(storage.join(out, "notes.txt"), b"mine")
    storage.write_bytes(s3_server.uri("runs", "a-sibling.txt"), b"not under --out")
    with pytest.raises(FileExistsError, match=r"notes\.txt"):
        claim_output(out, overwrite=True)
    assert storage.exists(storage.join(out, "polygons.parquet"))
    storage.remove(storage.join(out, "notes.txt"))
    claim_output(out, overwrite=True)
    assert not storage.exists(out)
    assert storage.read_bytes(s3_server.uri("runs", "a-sibling.txt")) == b"not under --out"
    with pytest.raises(FileExistsError, match="is a file"):
        claim_output(s3_server.uri("runs", "a-sibling.txt"), overwrite=True)
    assert storage.exists(s3_server.uri("runs", "a-sibling.txt"))


def test_resume_keeps_foreign_files(tmp_path, catalog):
    """A folder with our state and the same settings resumes; files a user added there are never touched."""
    from jobs.infer_region import config_from_args, parse_args
    from pipelines.region import prepare_run

    out = tmp_path / "out"
    config = config_from_args(parse_args(_argv(catalog, out))[0])
    _, settings, resumed = prepare_run(config)
    assert not resumed and stored_fingerprint(str(out))["settings"] == settings
    (out / "important.txt").write_text("added later")
    _, settings_again, resumed = prepare_run(config)
    assert resumed and settings_again == settings
    assert (out / "important.txt").read_text() == "added later"
