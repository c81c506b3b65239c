"""Staging the paper family's pretrained weights for an offline cluster (MODEL.md §8; keys `weights.backbone`,
`text.name_or_path`): download exactly the files into one folder with a ``manifest.json``.

Run where the internet is (``jobs/fetch_weights.py``); the cluster then reads the folder with the loaders'
offline paths (a local backbone file, a local text folder). Plain HTTPS from the Hugging Face hub's ``resolve``
URLs (``<base_url>/<repo>/resolve/main/<file>``), streamed to ``<target>.part``, hashed (SHA-256) and renamed into
place, so a target is either complete or absent. An interrupted ``.part`` resumes with a ``Range`` request; a target
whose hash matches the manifest is skipped. No ray, no geo packages: this runs on any machine with the project.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from crobim.pretrained import PAPER_BACKBONE_TAGS

__all__ = [
    "DEFAULT_BASE_URL",
    "MANIFEST_NAME",
    "PAPER_WEIGHTS",
    "PlannedFile",
    "StagedComponent",
    "StagingResult",
    "WeightStagingError",
    "config_overrides",
    "plan_staging",
    "stage_weights",
]

logger = logging.getLogger(__name__)

#: The Hugging Face hub; ``--base-url`` (or a mirror) replaces it.
DEFAULT_BASE_URL = "https://huggingface.co"
#: The file that lists every staged file with its SHA-256, size and source URL.
MANIFEST_NAME = "manifest.json"
_USER_AGENT = "crobim-geo-fetch-weights"
_CHUNK_BYTES = 1 << 20


class WeightStagingError(RuntimeError):
    """A weight file could not be staged: HTTP error, unreachable host, truncated body or hash mismatch."""


@dataclass(frozen=True)
class StagedComponent:
    """One pretrained component the paper family starts from, as files of one hub repository.

    Attributes:
        key: the short name ``--only`` selects (``swin-b``, ``convnext-b``, ``bert-base-uncased``).
        repo: the hub repository (``timm/<model>.<tag>`` for timm's backbones).
        files: ``(file in the repository, target path relative to the staging folder)`` pairs.
        what: what the component is and where it is used.
        config_key: the model config key pointing at it (``weights.backbone`` or ``text.name_or_path``).
        config_target: the path, relative to the staging folder, that ``config_key`` names.
        backbone_name: the ``backbone.name`` it initialises (``None`` for the text encoder).
        sha256: pinned hashes by target (none pinned yet: the first manifest written locks them).
    """

    key: str
    repo: str
    files: tuple[tuple[str, str], ...]
    what: str
    config_key: str
    config_target: str
    backbone_name: str | None = None
    sha256: tuple[tuple[str, str], ...] = ()


_BERT_FILES = ("config.json", "model.safetensors", "vocab.txt", "tokenizer.json", "tokenizer_config.json")


def _timm_backbone(key: str, backbone_name: str, what: str) -> StagedComponent:
    """A timm hub backbone: ``timm/<name>.<tag>``'s ``model.safetensors``, staged as ``<name>.<tag>.safetensors``."""
    tag = PAPER_BACKBONE_TAGS[backbone_name]
    return StagedComponent(
        key=key,
        repo=f"timm/{tag}",
        files=(("model.safetensors", f"{tag}.safetensors"),),
        what=f"{what} (timm safetensors, {tag})",
        config_key="weights.backbone",
        config_target=f"{tag}.safetensors",
        backbone_name=backbone_name,
    )


#: Exactly the weights the paper family (LAVT, RMSIN, CroBIM) starts from; the backbone tags are
#: ``crobim.pretrained.PAPER_BACKBONE_TAGS`` (Swin-B: the same file as Microsoft's
#: ``swin_base_patch4_window12_384_22k.pth``; ConvNeXt-B 22k is [I], the paper does not say).
PAPER_WEIGHTS: dict[str, StagedComponent] = {
    "swin-b": _timm_backbone(
        "swin-b", "swin_base_patch4_window12_384", "Swin-B backbone, ImageNet-22k, 384 px, window 12"
    ),
    "convnext-b": _timm_backbone("convnext-b", "convnext_base", "ConvNeXt-B backbone, ImageNet-22k"),
    "bert-base-uncased": StagedComponent(
        key="bert-base-uncased",
        # The canonical id of the legacy name ``bert-base-uncased`` (the hub redirects one to the other).
        repo="google-bert/bert-base-uncased",
        files=tuple((name, f"bert-base-uncased/{name}") for name in _BERT_FILES),
        what="bert-base-uncased text encoder and tokenizer (transformers folder)",
        config_key="text.name_or_path",
        config_target="bert-base-uncased",
    ),
}


@dataclass(frozen=True)
class PlannedFile:
    """One file to stage: where it comes from and where it goes."""

    component: str
    url: str
    target: Path
    what: str
    expected_sha256: str | None
    exists: bool


@dataclass(frozen=True)
class StagingResult:
    """What ``stage_weights`` did."""

    out: Path
    manifest: Path
    fetched: list[str]
    skipped: list[str]
    overrides: list[str]


class _Bar(Protocol):
    def update(self, n: int) -> Any: ...  # noqa: ANN401, D102

    def close(self) -> Any: ...  # noqa: ANN401, D102


#: ``progress(description, total_bytes_or_None, initial_bytes) -> bar`` with ``update(n)`` and ``close()`` (tqdm's).
ProgressFactory = Callable[[str, int | None, int], _Bar]


class _NoBar:
    def update(self, n: int) -> None:
        return None

    def close(self) -> None:
        return None


def _select(only: Iterable[str] | None) -> list[StagedComponent]:
    keys = list(only) if only else list(PAPER_WEIGHTS)
    unknown = [k for k in keys if k not in PAPER_WEIGHTS]
    if unknown:
        raise ValueError(f"unknown weight component(s) {unknown}; choose from {list(PAPER_WEIGHTS)}")
    return [PAPER_WEIGHTS[k] for k in dict.fromkeys(keys)]


def _read_manifest(out: Path) -> dict[str, dict[str, Any]]:
    """The existing manifest's entries by target file (empty when there is none)."""
    path = out / MANIFEST_NAME
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text())["files"]
        return {str(e["file"]): dict(e) for e in entries}
    except (ValueError, KeyError, TypeError) as exc:
        raise WeightStagingError(
            f"{path} is not a manifest written by jobs/fetch_weights.py ({exc}); move it away and rerun"
        ) from exc


def _write_manifest(out: Path, base_url: str, entries: dict[str, dict[str, Any]]) -> Path:
    """Write ``manifest.json`` atomically (temporary file, then rename)."""
    path = out / MANIFEST_NAME
    doc = {
        "format": 1,
        "created_by": "jobs/fetch_weights.py (crobim.weight_staging)",
        "base_url": base_url,
        "files": [entries[k] for k in sorted(entries)],
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def plan_staging(
    out: str | Path, *, base_url: str = DEFAULT_BASE_URL, only: Iterable[str] | None = None
) -> list[PlannedFile]:
    """The exact sources and targets of a staging run; downloads nothing.

    Args:
        out: the staging folder.
        base_url: the hub (or a mirror); URLs are ``<base_url>/<repo>/resolve/main/<file>``.
        only: component keys of ``PAPER_WEIGHTS`` (default: all).

    Returns:
        One ``PlannedFile`` per file, with the hash it must have (pinned or recorded in the manifest) if known.

    Raises:
        ValueError: for an unknown component key.
    """
    root = Path(out).expanduser()
    recorded = _read_manifest(root)
    base = base_url.rstrip("/")
    planned = []
    for comp in _select(only):
        pinned = dict(comp.sha256)
        for remote, rel in comp.files:
            target = root / rel
            expected = pinned.get(rel) or recorded.get(rel, {}).get("sha256")
            url = f"{base}/{comp.repo}/resolve/main/{remote}"
            planned.append(PlannedFile(comp.key, url, target, comp.what, expected, target.is_file()))
    return planned


def config_overrides(out: str | Path, only: Iterable[str] | None = None) -> list[str]:
    """The ``jobs/train.py`` flags that point a run at a staging folder, one per component.

    Args:
        out: the staging folder as the training nodes see it (e.g. ``/weights``).
        only: component keys (default: all; pick one backbone for a run).

    Returns:
        e.g. ``["--set model_overrides.weights.backbone=/weights/swin_...safetensors", ...]``.
    """
    root = str(out).rstrip("/") or "/"
    return [f"--set model_overrides.{c.config_key}={root}/{c.config_target}" for c in _select(only)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _open(url: str, start: int, timeout_s: float) -> Any:  # noqa: ANN401
    """Open ``url`` (from byte ``start`` when resuming); HTTP and network errors become ``WeightStagingError``."""
    headers = {"User-Agent": _USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        hint = {
            401: "the file is gated or private: log in (an HF token) or stage it from your artifact store",
            403: "access is refused: check a proxy or the token, or stage it from your artifact store",
            404: "the file is not there: check --base-url (a mirror must keep the hub's <repo>/resolve/main/ "
            "layout) and that the repository still has it",
        }.get(exc.code, "the server failed; retry later, or use --base-url with a mirror")
        raise WeightStagingError(f"GET {url} failed: HTTP {exc.code} {exc.reason}; {hint}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WeightStagingError(
            f"GET {url} failed: host unreachable ({reason}); run jobs/fetch_weights.py where the internet is "
            "(set HTTPS_PROXY behind a proxy) or give --base-url a mirror you can reach"
        ) from exc


def _stream(url: str, part: Path, progress: ProgressFactory, timeout_s: float) -> None:
    """Download ``url`` into ``part``, continuing a partial file when the server honours ``Range``."""
    start = part.stat().st_size if part.is_file() else 0
    try:
        response = _open(url, start, timeout_s)
    except WeightStagingError as exc:
        if start and isinstance(exc.__cause__, urllib.error.HTTPError) and exc.__cause__.code == 416:
            part.unlink()  # the partial file does not fit the remote one: start over
            return _stream(url, part, progress, timeout_s)
        raise
    with response:
        resumed = start > 0 and response.status == 206
        initial = start if resumed else 0
        length = response.headers.get("Content-Length")
        total = initial + int(length) if length is not None else None
        bar = progress(part.name.removesuffix(".part"), total, initial)
        try:
            with part.open("ab" if resumed else "wb") as fh:
                while chunk := response.read(_CHUNK_BYTES):
                    fh.write(chunk)
                    bar.update(len(chunk))
        except OSError as exc:
            raise WeightStagingError(
                f"GET {url} was interrupted after {part.stat().st_size} bytes ({exc}); rerun the same command to "
                f"resume from {part}"
            ) from exc
        finally:
            bar.close()
    size = part.stat().st_size
    if total is not None and size != total:
        raise WeightStagingError(
            f"GET {url} ended after {size} of {total} bytes; rerun the same command to resume from {part}"
        )
    return None


def _fetch(item: PlannedFile, progress: ProgressFactory, timeout_s: float) -> tuple[str, int]:
    """Stream, hash, check and atomically rename one file; returns its SHA-256 and size."""
    item.target.parent.mkdir(parents=True, exist_ok=True)
    part = item.target.with_name(item.target.name + ".part")
    _stream(item.url, part, progress, timeout_s)
    digest = _sha256(part)
    if item.expected_sha256 and digest != item.expected_sha256:
        part.unlink()
        raise WeightStagingError(
            f"{item.url} has SHA-256 {digest}, but {item.target.name} must have {item.expected_sha256} (pinned, or "
            f"recorded in {MANIFEST_NAME}); the download is corrupt or the file changed upstream. Rerun to retry; "
            f"if the change is intended, delete its entry from {item.target.parent / MANIFEST_NAME} (or the file)"
        )
    os.replace(part, item.target)
    return digest, item.target.stat().st_size


def stage_weights(
    out: str | Path,
    *,
    base_url: str = DEFAULT_BASE_URL,
    only: Iterable[str] | None = None,
    progress: ProgressFactory | None = None,
    timeout_s: float = 60.0,
) -> StagingResult:
    """Download the paper family's weights into ``out`` and write ``out/manifest.json``.

    Files already there with the hash the manifest records (or a pinned one) are skipped; an interrupted
    ``.part`` resumes. The manifest is rewritten after each file, so a rerun after a failure redoes only the rest.

    Args:
        out: the staging folder (created if missing).
        base_url: the hub or a mirror with its ``<repo>/resolve/main/<file>`` layout.
        only: component keys of ``PAPER_WEIGHTS`` (default: all).
        progress: a progress-bar factory (e.g. around ``tqdm``); ``None`` shows nothing.
        timeout_s: socket timeout of each request.

    Returns:
        The folder, the manifest path, the files fetched and skipped, and the training flags that use them.

    Raises:
        ValueError: for an unknown component key.
        NotADirectoryError: if ``out`` exists and is not a folder.
        WeightStagingError: HTTP error, unreachable host, truncated download or hash mismatch (names the URL).
    """
    root = Path(out).expanduser()
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"--out {str(root)!r} is a file; give a folder for the staged weights")
    keys = [c.key for c in _select(only)]
    plan = plan_staging(root, base_url=base_url, only=keys)
    root.mkdir(parents=True, exist_ok=True)
    entries = _read_manifest(root)
    fetched, skipped = [], []
    for item in plan:
        rel = item.target.relative_to(root).as_posix()
        if item.exists and item.expected_sha256 and _sha256(item.target) == item.expected_sha256:
            logger.info("%s: present with the recorded SHA-256, skipped", rel)
            skipped.append(rel)
            continue
        logger.info("%s <- %s", rel, item.url)
        digest, size = _fetch(item, progress or (lambda *_: _NoBar()), timeout_s)
        entries[rel] = {
            "file": rel,
            "sha256": digest,
            "size": size,
            "url": item.url,
            "component": item.component,
            "what": item.what,
        }
        _write_manifest(root, base_url, entries)
        fetched.append(rel)
    manifest = _write_manifest(root, base_url, entries)
    return StagingResult(root, manifest, fetched, skipped, config_overrides(root, keys))
