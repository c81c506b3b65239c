"""Region predictors (PIPELINE.md §2): the ``RegionPredictor`` protocol, the CroBIM predictor and model loading.

Any object with a ``tile_size`` and a ``predict`` method can answer a region job:

    predict(tiles uint8 (B, S, S, 3), queries list[str]) -> float32 (B, Q, S, S) in [0, 1]

``--model`` names either a CroBIM checkpoint folder (``crobim.save_model`` layout, local or object storage) or
``package.module:factory``, a zero-argument callable returning such an object. :class:`CroBIMPredictor` encodes each
query once (cached per predictor, i.e. once per Ray actor), encodes each tile image once per micro-batch, then
decodes every (tile, query) pair on the cached features: one pass over the imagery serves all queries. Models whose
image features depend on the query (``backbone.in_fusion = 'pwam'``), or whose config turns
``runtime.cache_image_features`` off, run one paired forward per (tile, query) pair instead.
"""

from __future__ import annotations

import importlib
import logging
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "CroBIMPredictor",
    "ModelSpec",
    "RegionPredictor",
    "ResolvedModel",
    "check_predictor",
    "import_factory",
    "load_predictor",
    "parse_model_spec",
    "resolve_model",
]

logger = logging.getLogger(__name__)

_FACTORY_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")


@runtime_checkable
class RegionPredictor(Protocol):
    """What the region pipeline needs from a model.

    Attributes:
        tile_size: Side S in pixels of the square tiles ``predict`` takes.
    """

    tile_size: int

    def predict(self, tiles: np.ndarray, queries: list[str]) -> np.ndarray:
        """Foreground probability of every query on every tile.

        Args:
            tiles: uint8 ``(B, S, S, 3)`` RGB tiles; invalid pixels are 0.
            queries: Q plain-language queries (the same list on every call of one job).

        Returns:
            float32 ``(B, Q, S, S)`` in [0, 1].
        """
        ...


@dataclass(frozen=True)
class ModelSpec:
    """A parsed ``--model`` value: a checkpoint folder or a ``module:factory`` reference."""

    kind: str  # "checkpoint" or "factory"
    value: str


def parse_model_spec(value: str) -> ModelSpec:
    """Decide whether ``--model`` names a checkpoint folder or a ``package.module:factory``.

    An existing local path or a URI (``s3://...``) is a checkpoint; ``name.name:attr`` is a factory.

    Raises:
        ValueError: If the value is neither.
    """
    text = str(value).strip()
    if not text:
        raise ValueError("--model is empty; give a checkpoint folder or package.module:factory")
    if "://" in text or Path(text).expanduser().exists():
        return ModelSpec("checkpoint", text)
    if _FACTORY_RE.match(text):
        return ModelSpec("factory", text)
    raise ValueError(
        f"--model {text!r} is neither an existing checkpoint folder nor package.module:factory; "
        "give the folder written by crobim.save_model (local or s3://...) or e.g. mypkg.models:build"
    )


def import_factory(reference: str) -> Any:  # noqa: ANN401
    """The callable that ``package.module:factory`` names.

    Raises:
        ValueError: The module cannot be imported or has no such callable.
    """
    module_name, _, attr = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"--model {reference!r}: module {module_name!r} cannot be imported ({exc}); "
            "install it or run from the folder that contains it (PYTHONPATH)"
        ) from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ValueError(f"--model {reference!r}: {module_name} has no callable {attr!r}")
    return factory


def check_predictor(obj: Any, origin: str) -> RegionPredictor:  # noqa: ANN401
    """``obj`` if it follows :class:`RegionPredictor`.

    Raises:
        TypeError: Naming ``origin`` and what the protocol needs.
    """
    size = getattr(obj, "tile_size", None)
    if not isinstance(obj, RegionPredictor) or not isinstance(size, int) or size <= 0:
        raise TypeError(
            f"{origin} returned {type(obj).__name__}, which does not follow RegionPredictor: it needs an int "
            "attribute tile_size > 0 and predict(tiles uint8 (B, S, S, 3), queries) -> float32 (B, Q, S, S)"
        )
    return obj


@dataclass(frozen=True)
class ResolvedModel:
    """A ``--model`` identified and checked without loading weights.

    Attributes:
        info: Provenance record (``run.json`` "model", hashed into the fingerprint): kind, path or reference,
            folder SHA-256, and for checkpoints the name and the whole config.
        tile_size_px: Tile side S the job cuts (``--tile-size``, else the model's own).
        input_size_px: The model's own input side (None for a factory given a ``--tile-size``: not asked).
        warnings: What still runs but degrades (a tile size other than the model's, queries the tokenizer cuts or
            cannot read); logged once when resolved.
    """

    info: dict[str, Any]
    tile_size_px: int
    input_size_px: int | None = None
    warnings: tuple[str, ...] = ()

    @property
    def sha256(self) -> str | None:
        """Checkpoint folder hash that every actor's copy must match (None for factories)."""
        return self.info.get("sha256")


def _resolve_factory(reference: str, tile_size_px: int | None) -> ResolvedModel:
    """A factory's provenance record; the factory is called only to ask its tile size when none is given."""
    from pipelines.model_checks import check_tile_size

    info: dict[str, Any] = {"kind": "factory", "reference": reference, "sha256": None}
    check_tile_size(tile_size_px, None)
    if tile_size_px is not None:
        return ResolvedModel(info, tile_size_px)
    size = int(check_predictor(import_factory(reference)(), f"factory {reference}").tile_size)
    return ResolvedModel(info, size, input_size_px=size)


def resolve_model(model: str, tile_size_px: int | None = None, queries: Sequence[str] = ()) -> ResolvedModel:
    """Identify and check ``--model``, the tile size and the queries against it, on the driver, without loading weights.

    A checkpoint is checked for everything ``crobim.load_model`` would refuse in each actor (files, the weights'
    header and tensors against its config; ``pipelines.model_checks.check_checkpoint``) before its folder is hashed,
    in a child process (``inspect_checkpoint_apart``). A tile size other than the model's, and queries its tokenizer
    cuts or cannot read (``query_findings``), are warnings (logged, and kept in ``ResolvedModel.warnings``).

    Args:
        model: Checkpoint folder (local or object storage) or ``package.module:factory``.
        tile_size_px: ``--tile-size``; None takes the model's (a factory is then called once to ask it).
        queries: The expressions the model will read (a factory's are not checked: it has no tokenizer here).

    Raises:
        FileNotFoundError: The checkpoint folder has no ``config.json``.
        ValueError: A bad spec, a config that is not a CroBIM config, a tile size under 32 px, or a checkpoint
            ``crobim.load_model`` would refuse (``crobim.errors.CheckpointError``).
        TypeError: A factory that does not return a :class:`RegionPredictor`.
    """
    from pipelines.model_checks import check_tile_size, inspect_checkpoint_apart, read_checkpoint_config
    from pipelines.provenance import folder_sha256

    spec = parse_model_spec(model)
    if spec.kind == "factory":
        return _resolve_factory(spec.value, tile_size_px)
    stored, config = read_checkpoint_config(spec.value)
    size = int(config.input.size[0])
    warnings = (*check_tile_size(tile_size_px, size), *inspect_checkpoint_apart(spec.value, queries))
    for warning in warnings:
        logger.warning(warning)
    info = {
        "kind": "checkpoint",
        "path": spec.value,
        "sha256": folder_sha256(spec.value),
        "name": stored.get("name"),
        "config": stored,
    }
    tile = size if tile_size_px is None else int(tile_size_px)
    return ResolvedModel(info, tile, input_size_px=size, warnings=warnings)


class CroBIMPredictor:
    """CroBIM behind the ``RegionPredictor`` protocol, with per-query text caching and presence gating.

    Args:
        model: A built CroBIM model (any device); it is put in eval mode.
        device: Torch device (default: the model's); on CUDA uint8 tiles move pinned, non-blocking (``preprocess``).
        gate_presence: Zero the mask of a tile-query pair whose presence probability is below
            ``model.config.presence.threshold`` (only when the model has the presence head).
        pairs_per_pass: Tile-query pairs whose pixel side (LGFA, MID, heads) is decoded at a time
            (``CroBIM.decode``); default one on CPU, where a pair's pixel activations then stay in cache (1.2-1.4x
            faster per pair than one pass over 4-16 pairs, docs/benchmarks.md), and all of a micro-batch's pairs
            in one pass on GPU. Without feature caching: the pairs of one paired forward, at most a tile's Q.
        channels_last: Run in the channels-last memory layout (opt-in; benchmarks/fast_paths.py measures it).
        compile: ``torch.compile`` the model's parts (``CroBIM.compile_parts``; opt-in, the first batches compile).
    """

    def __init__(
        self,
        model: Any,
        device: str | None = None,
        gate_presence: bool = True,
        pairs_per_pass: int | None = None,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        import torch

        height, width = (int(s) for s in model.config.input.size)
        if height != width:
            raise ValueError(
                f"model input size {(height, width)} is not square; region tiles are square, "
                "use a checkpoint with input.size (S, S)"
            )
        self.tile_size = height
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.channels_last = channels_last
        layout = torch.channels_last if channels_last else torch.preserve_format
        self.model = model.to(self.device, memory_format=layout).eval()
        if compile:
            self.model.compile_parts()
        self.gate_presence = gate_presence and bool(model.config.presence.enabled)
        self.cache_image_features = (  # shared by a tile's queries unless the backbone fuses each query in
            model.config.runtime.cache_image_features and not model.backbone.needs_text
        )
        self.presence_threshold = float(model.config.presence.threshold)
        if pairs_per_pass is None and self.device.type == "cpu":
            pairs_per_pass = 1
        self.pairs_per_pass = pairs_per_pass
        self._text_cache: dict[str, Any] = {}
        self.counts = {"text_encodes": 0, "image_encodes": 0, "decodes": 0}

    def _text_features(self, queries: list[str]) -> Any:
        """Text features of ``queries``, encoded once per distinct query list and cached."""
        key = "\x00".join(queries)
        if key not in self._text_cache:
            import torch

            tokens = self.model.tokenize(list(queries))  # on the model's device
            with torch.inference_mode():
                feats = self.model.encode_text(tokens["input_ids"], tokens["attention_mask"])
            self._text_cache[key] = feats
            self.counts["text_encodes"] += len(queries)
        return self._text_cache[key]

    def predict(self, tiles: np.ndarray, queries: list[str]) -> np.ndarray:
        """Foreground probability (B, Q, S, S) of every query on every tile (see :class:`RegionPredictor`)."""
        import torch

        from crobim.inference import foreground_probability, gate_by_presence
        from crobim.precision import autocast

        if tiles.ndim != 4 or tiles.shape[-1] != 3 or tiles.dtype != np.uint8:
            raise ValueError(f"tiles must be uint8 (B, S, S, 3); got {tiles.dtype} {tiles.shape}")
        txt = self._text_features(queries)
        b, s = tiles.shape[0], tiles.shape[1]
        with torch.inference_mode(), autocast(self.device):
            pixels = self.model.preprocess(tiles)  # (B, S, S, 3) uint8 -> (B, 3, H, W) float on the device
            if self.channels_last:
                pixels = pixels.contiguous(memory_format=torch.channels_last)
            logits, presence = self._logits(pixels, txt, (s, s))  # (B, Q, C, S, S), (B, Q) or None
            prob = foreground_probability(logits.float())  # (B, Q, C, S, S) -> (B, Q, S, S)
            if self.gate_presence and presence is not None:
                prob = gate_by_presence(prob, presence, self.presence_threshold)
            prob = prob.clamp(0.0, 1.0).cpu()
        self.counts["image_encodes"] += b if self.cache_image_features else b * len(queries)
        self.counts["decodes"] += b * len(queries)
        return prob.numpy().astype(np.float32, copy=False)

    def _logits(self, pixels: Any, txt: Any, size: tuple[int, int]) -> tuple[Any, Any]:
        """Mask logits (B, Q, C, S, S) at the tiles' ``size`` and presence logits (B, Q) or None."""
        import torch

        if self.cache_image_features:
            out = self.model.decode(
                self.model.encode_image(pixels), txt, pairs_per_pass=self.pairs_per_pass, output_size=size
            )
            return out.logits, out.presence_logit
        # Paired forwards over copies of each tile (each pair encodes the image), pairs_per_pass pairs at a time.
        num_queries = len(txt)
        step = self.pairs_per_pass or num_queries
        logits, presence = [], []
        for i in range(pixels.shape[0]):
            for start in range(0, num_queries, step):
                rows = slice(start, start + step)
                ids = txt.input_ids[rows]
                out = self.model(
                    pixels[i : i + 1].expand(len(ids), -1, -1, -1),
                    ids,
                    txt.attention_mask[rows],
                    output_size=size,
                )
                logits.append(out.logits)  # (q, C, H, W)
                presence.append(out.presence_logit)  # (q,) or None
        b = pixels.shape[0]
        stacked = torch.cat(logits).reshape(b, num_queries, *logits[0].shape[1:])
        if presence[0] is None:
            return stacked, None
        return stacked, torch.cat(presence).reshape(b, num_queries)


def _local_checkpoint(uri: str) -> Path:
    """A local folder holding the checkpoint: the path itself, or a node-local copy of an object-store URI."""
    from common import storage, storage_adapters

    if not storage.is_remote(uri):
        path = Path(uri).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"checkpoint folder {uri} does not exist; give the folder crobim.save_model wrote"
            )
        return path
    local = Path(tempfile.mkdtemp(prefix="crobim-ckpt-"))
    storage_adapters.download_dir(uri, local)
    return local


def load_predictor(
    model: str,
    device: str | None = None,
    expected_sha256: str | None = None,
    gate_presence: bool = True,
    **options: Any,
) -> RegionPredictor:
    """Build the predictor that ``--model`` names.

    Args:
        model: Checkpoint folder (local or ``s3://``/``gs://``; copied to a node-local folder first) or
            ``package.module:factory``.
        device: Torch device for a CroBIM checkpoint (default: CUDA when available, else CPU).
        expected_sha256: Checkpoint folder hash (:func:`pipelines.provenance.folder_sha256`) that the copy
            must match; checked before loading.
        gate_presence: Passed to :class:`CroBIMPredictor`, as are ``options`` (``channels_last``, ``compile``).

    Returns:
        An object following :class:`RegionPredictor`.

    Raises:
        ValueError: For a bad spec or a checkpoint whose hash differs from ``expected_sha256``.
        TypeError: If a factory returns something that is not a ``RegionPredictor``.
    """
    spec = parse_model_spec(model)
    if spec.kind == "factory":
        return check_predictor(import_factory(spec.value)(), f"factory {spec.value}")
    import torch

    from crobim.weights import load_model
    from pipelines.provenance import folder_sha256

    folder = _local_checkpoint(spec.value)
    if expected_sha256 is not None:
        actual = folder_sha256(str(folder))
        if actual != expected_sha256:
            raise ValueError(
                f"checkpoint {spec.value} has SHA-256 {actual}, expected {expected_sha256}: it changed since the "
                "job started; restore it or start a new output folder"
            )
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    net = load_model(str(folder), map_location=dev)
    return CroBIMPredictor(net, device=dev, gate_presence=gate_presence, **options)
