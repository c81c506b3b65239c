"""Provenance and resume state (PIPELINE.md §4 run.json, §5): fingerprint, done/failed manifest, hashes, versions.

Output layout owned here: ``run.json``, ``_state/fingerprint.json``, ``_state/done/<chunk_id>.json`` and
``_state/failed/<chunk_id>.json``; and which top-level entries of ``--out`` a run writes (:data:`RUN_FOLDERS`,
:data:`RUN_FILES`), the only ones ``--overwrite`` deletes (:func:`claim_output`). Every path may be local or an
object-store URI (``common.storage``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from common import storage

if TYPE_CHECKING:
    import pystac

__all__ = [
    "RUN_FILES",
    "RUN_FOLDERS",
    "FingerprintMismatchError",
    "RunManifest",
    "canonical_json",
    "check_output",
    "check_resume",
    "claim_output",
    "diff_settings",
    "file_sha256",
    "fingerprint",
    "folder_sha256",
    "is_run_entry",
    "items_sha256",
    "stored_fingerprint",
    "write_fingerprint",
    "write_run_json",
]

logger = logging.getLogger(__name__)

STATE_DIR = "_state"
FINGERPRINT_FILE = "fingerprint.json"

#: Top-level folders a region run writes into ``--out``; with :data:`RUN_FILES`, all that ``--overwrite`` deletes.
RUN_FOLDERS = frozenset({STATE_DIR, "_parts", "inputs", "masks.zarr"})
#: Top-level files a region run writes (``demo_report.json``: the ``--demo`` report, written beside the run).
RUN_FILES = frozenset(
    {
        "run.json",
        "item.json",
        "polygons.parquet",
        "quicklook.png",
        "map.html",
        "demo_report.json",
        "summary.parquet",
    }
)
#: Files that show a run owns the folder (the first ones a fresh run writes after claiming it).
_RUN_MARKERS = ((STATE_DIR, FINGERPRINT_FILE), ("inputs", "items.parquet"))
_MARKER_ENTRIES = frozenset({STATE_DIR, "inputs"})
#: A temporary file left by an interrupted atomic write (``common.storage``): ``.<name>.<random>.tmp``.
_TMP_FILE = re.compile(r"^\.(.+)\.[A-Za-z0-9_]+\.tmp$")


class FingerprintMismatchError(ValueError):
    """An output folder holds a run with different settings; resuming it would mix two runs."""


def canonical_json(obj: Any) -> bytes:
    """UTF-8 JSON with sorted keys and no whitespace: equal objects give equal bytes."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def fingerprint(settings: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of the settings that determine a run's outputs."""
    return hashlib.sha256(canonical_json(settings)).hexdigest()


def items_sha256(items: Sequence[pystac.Item]) -> str:
    """SHA-256 (hex) of the items' canonical JSON (hrefs as stored): identifies a frozen selection."""
    return hashlib.sha256(canonical_json([it.to_dict(transform_hrefs=False) for it in items])).hexdigest()


def _stream_sha256(fh: Any) -> str:
    digest = hashlib.sha256()
    while block := fh.read(1 << 20):
        digest.update(block)
    return digest.hexdigest()


def file_sha256(uri: str) -> str:
    """SHA-256 (hex) of one file, local or on object storage, read in 1 MiB blocks."""
    with storage.open_file(uri, "rb") as fh:
        return _stream_sha256(fh)


def folder_sha256(uri: str) -> str:
    """SHA-256 of a folder (a checkpoint): the hash of the sorted ``relative/path sha256`` lines of its files.

    Raises:
        FileNotFoundError: If the folder holds no file.
    """
    fs, base = storage.get_fs(uri)
    base = base.rstrip("/")
    files = sorted(str(p) for p in fs.find(base))
    if not files:
        raise FileNotFoundError(
            f"folder {uri} holds no file; expected a checkpoint written by crobim.save_model"
        )
    lines = []
    for path in files:
        rel = path[len(base) :].lstrip("/")
        with fs.open(path, "rb") as fh:
            lines.append(f"{rel} {_stream_sha256(fh)}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def diff_settings(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Human-readable differences between two JSON-like settings trees (``key: old -> new``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        lines: list[str] = []
        for key in sorted(set(old) | set(new)):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                lines.append(f"{name}: (absent) -> {_short(new[key])}")
            elif key not in new:
                lines.append(f"{name}: {_short(old[key])} -> (absent)")
            else:
                lines.extend(diff_settings(old[key], new[key], name))
        return lines
    if old != new:
        return [f"{prefix or '(root)'}: {_short(old)} -> {_short(new)}"]
    return []


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def stored_fingerprint(out: str) -> dict[str, Any] | None:
    """The ``{"fingerprint", "settings"}`` record of the run in ``out``, or None when there is none."""
    uri = storage.join(out, STATE_DIR, FINGERPRINT_FILE)
    return dict(storage.read_json(uri)) if storage.exists(uri) else None


def check_resume(out: str, stored: dict[str, Any], settings: dict[str, Any]) -> None:
    """Refuse to resume ``out`` unless its stored fingerprint equals that of ``settings``.

    Raises:
        FingerprintMismatchError: Listing the settings that differ and the ways out.
    """
    if stored.get("fingerprint") == fingerprint(settings):
        return
    changes = diff_settings(stored.get("settings", {}), settings)
    raise FingerprintMismatchError(
        f"{out} holds a run with different settings ({len(changes)} differ):\n  "
        + "\n  ".join(changes[:20])
        + "\nuse another --out, rerun with the same settings to resume, or pass --overwrite to delete it"
    )


def _entries(out: str) -> dict[str, bool]:
    """Top-level names under the folder ``out`` -> whether each is a folder (object stores: a prefix)."""
    fs, path = storage.get_fs(out)
    base = path.rstrip("/")
    entries: dict[str, bool] = {}
    for entry in fs.ls(base, detail=True):
        name = str(entry["name"]).rstrip("/")
        if name != base and posixpath.basename(name):
            entries[posixpath.basename(name)] = entry.get("type") == "directory"
    return entries


def is_run_entry(name: str, is_folder: bool) -> bool:
    """True when a top-level entry of ``--out`` is one a region run writes (or the temporary file of one)."""
    if is_folder:
        return name in RUN_FOLDERS
    if name in RUN_FILES:
        return True
    match = _TMP_FILE.match(name)
    return bool(match and match.group(1) in RUN_FILES)


def _listing(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_output(out: str, overwrite: bool = False) -> list[str]:
    """What :func:`claim_output` would delete in ``out``, checked without touching anything.

    Without ``overwrite`` only a missing or empty folder passes. With it, a folder passes when everything in it was
    written by a region run (:data:`RUN_FOLDERS`, :data:`RUN_FILES`) and it holds a run's state.

    Returns:
        The top-level names to delete (empty for a missing or empty folder).

    Raises:
        FileExistsError: ``out`` is a file; or it is not empty and ``overwrite`` is False; or it holds anything a
            region run does not write (named in the message); or it holds no run state.
    """
    fs, path = storage.get_fs(out)
    if fs.isfile(path):
        raise FileExistsError(
            f"--out {out} is a file, not a folder; choose a folder path for --out (the file was left as it is)"
        )
    entries = _entries(out) if storage.exists(out) else {}
    if not entries:
        return []
    if not overwrite:
        raise FileExistsError(
            f"{out} is not empty and holds no finished run state ({STATE_DIR}/{FINGERPRINT_FILE}); "
            "choose an empty or new --out folder, or pass --overwrite to delete an earlier run's files"
        )
    foreign = sorted(
        name + ("/" if folder else "") for name, folder in entries.items() if not is_run_entry(name, folder)
    )
    if foreign:
        raise FileExistsError(
            f"{out} holds {len(foreign)} entries that a region run does not write: {_listing(foreign)}; "
            "--overwrite deletes only a run's own files, so nothing was deleted; use another --out, "
            "or move those files out of the folder"
        )
    if not any(storage.exists(storage.join(out, *marker)) for marker in _RUN_MARKERS):
        raise FileExistsError(
            f"{out} holds {_listing(sorted(entries))} but no state of a region run ({STATE_DIR}/{FINGERPRINT_FILE}); "
            "--overwrite deletes only a run's own files, so nothing was deleted; use another --out, "
            "or move those files out of the folder"
        )
    return sorted(entries, key=lambda name: (name in _MARKER_ENTRIES, name == STATE_DIR, name))


def claim_output(out: str, overwrite: bool = False) -> None:
    """Make ``out`` an empty folder for a fresh run; with ``overwrite``, delete an earlier run's files first.

    Everything is checked before anything is deleted (:func:`check_output`). The deletion order keeps the folder
    safe if it is itself interrupted: done markers first (a resume then redoes every chunk), the run state last
    (a later ``--overwrite`` still recognises the folder as a run's).

    Raises:
        FileExistsError: See :func:`check_output`; nothing is deleted then.
    """
    names = check_output(out, overwrite)
    if names:
        logger.info("--overwrite: deleting the earlier run's %s in %s", ", ".join(names), out)
    for kind in ("done", "failed"):
        marker_dir = storage.join(out, STATE_DIR, kind)
        if storage.exists(marker_dir):
            storage.remove(marker_dir, recursive=True)
    for name in names:
        uri = storage.join(out, name)
        if storage.exists(uri):
            storage.remove(uri, recursive=True)
    try:
        storage.makedirs(out)
    except (FileExistsError, NotADirectoryError) as exc:
        raise FileExistsError(f"cannot create the --out folder {out}: {exc}; choose another --out") from exc


def write_fingerprint(out: str, settings: dict[str, Any]) -> str:
    """Record the run's settings and fingerprint in ``out``; returns the fingerprint."""
    fp = fingerprint(settings)
    storage.write_json(
        storage.join(out, STATE_DIR, FINGERPRINT_FILE), {"fingerprint": fp, "settings": settings}
    )
    return fp


@dataclass(frozen=True)
class RunManifest:
    """Per-chunk done and failed markers under ``<out>/_state`` (single objects, written atomically)."""

    out: str

    def _dir(self, kind: str) -> str:
        return storage.join(self.out, STATE_DIR, kind)

    def _ids(self, kind: str) -> list[str]:
        folder = self._dir(kind)
        if not storage.exists(folder):
            return []
        return sorted(n[: -len(".json")] for n in storage.listdir(folder) if n.endswith(".json"))

    def done_ids(self) -> list[str]:
        """Ids of the chunks whose outputs are complete, sorted."""
        return self._ids("done")

    def failed_ids(self) -> list[str]:
        """Ids of the chunks whose last attempt failed, sorted."""
        return self._ids("failed")

    def mark_done(self, chunk_id: str, summary: dict[str, Any]) -> None:
        """Write the done marker (last step of a chunk) and clear a failure left by an earlier attempt."""
        storage.write_json(storage.join(self._dir("done"), f"{chunk_id}.json"), summary)
        failed = storage.join(self._dir("failed"), f"{chunk_id}.json")
        if storage.exists(failed):
            storage.remove(failed)

    def mark_failed(self, chunk_id: str, reason: str, stage: str) -> None:
        """Record why a chunk failed; a later run retries it."""
        storage.write_json(
            storage.join(self._dir("failed"), f"{chunk_id}.json"),
            {"chunk_id": chunk_id, "stage": stage, "reason": reason},
        )

    def read_done(self, chunk_id: str) -> dict[str, Any]:
        """The summary stored with a done marker."""
        return dict(storage.read_json(storage.join(self._dir("done"), f"{chunk_id}.json")))

    def read_failed(self, chunk_id: str) -> dict[str, Any]:
        """The failure record of a chunk."""
        return dict(storage.read_json(storage.join(self._dir("failed"), f"{chunk_id}.json")))


def write_run_json(out: str, document: dict[str, Any]) -> str:
    """Write ``run.json`` (sorted keys, indented) into ``out``; returns its URI."""
    uri = storage.join(out, "run.json")
    storage.write_json(uri, document)
    return uri
