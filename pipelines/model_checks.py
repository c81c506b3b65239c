"""Checks of ``--model`` on the driver, before Ray starts and before the output folder is touched (PIPELINE.md §1).

A checkpoint is refused here for everything ``crobim.load_model`` would refuse in each actor: a missing file, a
weights file that is not safetensors or is truncated, a ``config.json`` that differs from the config saved with the
weights, tensors whose names or shapes differ from the model the config builds. Only the weights' header is read
(two small ranged reads on object storage) and the model is built on the meta device. The tile size and the queries
are checked against the model: an impossible tile size is refused, and what still runs but degrades (a tile size
other than the model's, a query longer than ``text.max_len``, words the tokenizer does not know) is a warning.

Building the model and loading the tokenizer import torch, timm and transformers (~0.7 GB resident) which the
driver never needs again: ``inspect_checkpoint_apart`` runs the checks in a short-lived child interpreter.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common import storage

if TYPE_CHECKING:
    from crobim.config import CroBIMConfig
    from crobim.safetensors_header import SafetensorsHeader
    from crobim.transforms import TextReport

__all__ = [
    "MIN_TILE_SIZE_PX",
    "check_checkpoint",
    "check_tile_size",
    "inspect_checkpoint",
    "inspect_checkpoint_apart",
    "query_findings",
    "read_checkpoint_config",
]

#: Smallest accepted ``--tile-size``: the backbones downsample by 32, so a smaller tile holds less than one feature.
MIN_TILE_SIZE_PX = 32


def read_checkpoint_config(folder: str) -> tuple[dict[str, Any], CroBIMConfig]:
    """``config.json`` of a checkpoint folder as stored and parsed, its input size square.

    Raises:
        FileNotFoundError: The folder has no ``config.json``.
        ValueError: It is not a CroBIM config (an unknown key, a bad value) or its input is not square.
    """
    from crobim.config import CroBIMConfig

    config_uri = storage.join(folder, "config.json")
    if not storage.exists(config_uri):
        raise FileNotFoundError(
            f"--model {folder} has no config.json; give a folder written by crobim.save_model"
        )
    try:
        stored = storage.read_json(config_uri)
        config = CroBIMConfig.from_dict(stored)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"--model {folder}: {config_uri} is not a CroBIM config ({exc})") from exc
    height, width = (int(v) for v in config.input.size)
    if height != width:
        raise ValueError(
            f"--model {folder}: input.size {(height, width)} in {config_uri} is not square; region tiles are "
            "square, use a checkpoint with input.size (S, S)"
        )
    return stored, config


def check_tile_size(tile_size_px: int | None, input_size_px: int | None) -> list[str]:
    """Refuse an impossible ``--tile-size``; warn when it differs from the model's input size.

    Args:
        tile_size_px: ``--tile-size`` (None: the model's own).
        input_size_px: The model's input side S (None when unknown: a factory asked for another tile size).

    Returns:
        Warnings (empty when the tile size is the model's).

    Raises:
        ValueError: A tile size that is not positive or below ``MIN_TILE_SIZE_PX``.
    """
    if tile_size_px is None:
        return []
    if tile_size_px < MIN_TILE_SIZE_PX:
        model = f"the model's {input_size_px} px" if input_size_px else "the model's own size"
        raise ValueError(
            f"--tile-size {tile_size_px} px is too small: tiles must be at least {MIN_TILE_SIZE_PX} px; use {model} "
            "(leave --tile-size out)"
        )
    if input_size_px is None or tile_size_px == input_size_px:
        return []
    scale = input_size_px / tile_size_px
    looks = f"{scale:.3g}x larger" if scale > 1 else f"{1 / scale:.3g}x smaller"
    return [
        f"--tile-size {tile_size_px} px differs from the model's input size {input_size_px} px: every tile is "
        f"resized to {input_size_px} px, so objects look {looks} than in training and answers degrade; leave "
        f"--tile-size out to use {input_size_px} px"
    ]


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (library messages often span several)."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())


@contextlib.contextmanager
def _local_tokenizer(checkpoint: str) -> Iterator[Path]:
    """The checkpoint's ``tokenizer/`` folder on local disk (an object-store one is copied to a temporary folder)."""
    from common import storage_adapters
    from crobim.weights import TOKENIZER_DIR

    uri = storage.join(checkpoint, TOKENIZER_DIR)
    if not storage.is_remote(checkpoint):
        yield Path(uri).expanduser()
        return
    with tempfile.TemporaryDirectory(prefix="crobim-tokenizer-") as tmp:
        storage_adapters.download_dir(uri, tmp)
        yield Path(tmp)


def _load_tokenizer(folder: Path, uri: str, config: CroBIMConfig) -> Any:  # noqa: ANN401
    """The checkpoint's tokenizer, or a ``CheckpointError`` naming its folder."""
    from crobim.errors import CheckpointError
    from crobim.pretrained import build_tokenizer

    try:
        return build_tokenizer(config.text, config.weights, directory=folder)
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"{uri} is not a readable tokenizer folder ({_one_line(exc)}); re-save it with crobim.save_model"
        ) from exc


def _text_config(checkpoint: str) -> Any:  # noqa: ANN401
    """The transformers config of ``text_encoder_config.json``, or a ``CheckpointError`` naming the file."""
    from crobim.errors import CheckpointError
    from crobim.weights import TEXT_CONFIG_NAME, text_encoder_config

    uri = storage.join(checkpoint, TEXT_CONFIG_NAME)
    try:
        return text_encoder_config(storage.read_json(uri))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{uri} is not a transformers config ({_one_line(exc)}); re-save the checkpoint with crobim.save_model"
        ) from exc


def _weights_header(checkpoint: str) -> SafetensorsHeader:
    """The checked header of ``model.safetensors``, reading only its header bytes (no read-ahead on object stores)."""
    from crobim.safetensors_header import read_safetensors_header
    from crobim.weights import WEIGHTS_NAME

    uri = storage.join(checkpoint, WEIGHTS_NAME)
    options = {"cache_type": "none"} if storage.is_remote(uri) else {}
    with storage.open_file(uri, "rb", **options) as fh:
        return read_safetensors_header(fh, source=uri)


def check_checkpoint(checkpoint: str, config: CroBIMConfig) -> None:
    """Refuse a checkpoint folder that ``crobim.load_model`` would refuse, without reading its tensors.

    Args:
        checkpoint: The folder (local or object storage), written by ``crobim.save_model``.
        config: Its ``config.json``, parsed (``CroBIMConfig``).

    Raises:
        crobim.errors.CheckpointError: One line naming the file, what is wrong and the fix.
    """
    from crobim.errors import CheckpointError
    from crobim.weights import (
        CONFIG_NAME,
        TEXT_CONFIG_NAME,
        TOKENIZER_DIR,
        WEIGHTS_NAME,
        check_checkpoint_header,
    )

    for name in (WEIGHTS_NAME, TEXT_CONFIG_NAME, TOKENIZER_DIR):
        if not storage.exists(storage.join(checkpoint, name)):
            raise CheckpointError(
                f"{storage.join(checkpoint, name)} is missing; a CroBIM checkpoint folder holds {CONFIG_NAME}, "
                f"{WEIGHTS_NAME}, {TEXT_CONFIG_NAME} and {TOKENIZER_DIR}/ (written by crobim.save_model)"
            )
    header = _weights_header(checkpoint)
    text_config = _text_config(checkpoint)
    with _local_tokenizer(checkpoint) as folder:
        _load_tokenizer(folder, storage.join(checkpoint, TOKENIZER_DIR), config)
        check_checkpoint_header(
            config, header, source=checkpoint.rstrip("/"), text_config=text_config, tokenizer_dir=folder
        )


def _query_warning(query: str, report: TextReport, max_len: int) -> list[str]:
    """The warnings about one query's ``crobim.transforms.TextReport``."""
    out = []
    if report.truncated:
        out.append(
            f"query {query!r} has {report.num_tokens} tokens; the model reads the first {report.max_tokens} "
            f"(text.max_len {max_len}, with [CLS] and [SEP]): {report.kept!r}; shorten it"
        )
    unknown = ", ".join(repr(w) for w in report.unknown_words)
    if report.known_words == 0 and unknown:
        out.append(
            f"query {query!r}: no word of it is in the model's vocabulary ({unknown} -> [UNK]); it will not find "
            "anything: reword it in plain English"
        )
    elif report.known_words == 0:
        out.append(f"query {query!r} has no word, only punctuation or symbols; it will not find anything")
    elif unknown:
        out.append(f"query {query!r}: words the model does not know (read as [UNK]): {unknown}")
    return out


def query_findings(checkpoint: str, config: CroBIMConfig, queries: Sequence[str]) -> list[str]:
    """Warnings about queries the checkpoint's tokenizer cuts or cannot read (the job still runs).

    Args:
        checkpoint: The checkpoint folder (local or object storage; only ``tokenizer/`` is copied).
        config: Its ``config.json``, parsed (``CroBIMConfig``; ``text.max_len``).
        queries: The job's queries.

    Returns:
        One line per finding: a query longer than ``max_len`` tokens (and what the model reads of it), a query
        with no word the vocabulary knows, a query with words it does not know.
    """
    from crobim.transforms import inspect_text
    from crobim.weights import TOKENIZER_DIR

    with _local_tokenizer(checkpoint) as folder:
        tokenizer = _load_tokenizer(folder, storage.join(checkpoint, TOKENIZER_DIR), config)
    max_len = int(config.text.max_len)
    out = []
    for query in queries:
        out += _query_warning(query, inspect_text(tokenizer, query, max_len=max_len), max_len)
    return out


def inspect_checkpoint(checkpoint: str, queries: Sequence[str] = ()) -> list[str]:
    """``check_checkpoint``, then ``query_findings`` for ``queries``: what a job asks of a checkpoint before it starts.

    Raises:
        FileNotFoundError, ValueError: See ``read_checkpoint_config``.
        crobim.errors.CheckpointError: See ``check_checkpoint``.
    """
    _, config = read_checkpoint_config(checkpoint)
    check_checkpoint(checkpoint, config)
    return query_findings(checkpoint, config, queries) if queries else []


#: Errors the child process reports by name and ``inspect_checkpoint_apart`` raises again as they were.
_CHILD_ERRORS: dict[str, type[Exception]] = {
    e.__name__: e for e in (FileNotFoundError, ValueError, TypeError, OSError)
}


def inspect_checkpoint_apart(checkpoint: str, queries: Sequence[str] = ()) -> list[str]:
    """``inspect_checkpoint`` in a child interpreter (``python -m pipelines.model_checks``), keeping torch out of this one.

    Where torch is loaded already (a notebook, a test session, a process that predicts) there is nothing to keep
    out, and the checks run here. The child answers in JSON (never a pickle); its errors are raised here with their
    type (``CheckpointError``, ``FileNotFoundError``, ``ValueError`` ...) and message.
    """
    if "torch" in sys.modules:
        return inspect_checkpoint(checkpoint, tuple(queries))
    request = json.dumps({"checkpoint": checkpoint, "queries": list(queries)})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.model_checks"],
        input=request, capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    try:
        answer = json.loads(proc.stdout.splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(
            f"the process checking --model {checkpoint} ended with exit code {proc.returncode} before it "
            f"answered (out of memory?); the job did not start: {proc.stderr.strip()[-2000:]}"
        ) from None
    if "error" in answer:
        from crobim.errors import CheckpointError

        kind = {"CheckpointError": CheckpointError, **_CHILD_ERRORS}.get(
            answer["error"]["type"], RuntimeError
        )
        raise kind(answer["error"]["message"])
    return list(answer["warnings"])


def _child_main() -> None:
    """Answer one ``inspect_checkpoint`` request (JSON on stdin) with one JSON line on stdout."""
    request = json.loads(sys.stdin.read())
    try:
        answer: dict[str, Any] = {"warnings": inspect_checkpoint(request["checkpoint"], request["queries"])}
    except Exception as exc:  # noqa: BLE001 - every error goes back to the parent, which raises it
        answer = {"error": {"type": type(exc).__name__, "message": str(exc)}}
    print(json.dumps(answer))


if __name__ == "__main__":
    _child_main()
