"""Pretrained backbone weights checked against the model before they load (MODEL.md §8, `weights.backbone`).

A backbone file is read as safetensors (never unpickled; a truncated copy is named from its header), mapped to
timm's key layout by the family's own ``checkpoint_filter_fn`` (timm 1.0: the Microsoft Swin release and the Facebook
ConvNeXt release both map, see ``ORIGINAL_LAYOUTS``), compared with the full timm model built on the meta device, and
then loaded strictly into the ``features_only`` body. Missing or unexpected keys beyond the classifier (and the
final norms ``features_only`` drops) raise ``CheckpointError`` naming the keys, a stray prefix, and the fix.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from crobim.errors import CheckpointError
from crobim.safetensors_header import read_safetensors_header

__all__ = [
    "ORIGINAL_LAYOUTS",
    "body_key_map",
    "describe_mismatch",
    "detect_layout",
    "family_filter",
    "listed_keys",
    "load_backbone_state",
    "read_backbone_file",
    "stray_prefix",
    "to_timm_layout",
]

#: Original (non-timm) releases that timm's ``checkpoint_filter_fn`` of the family maps to timm's keys (read in the
#: installed timm): timm module -> (the release, a key only that layout has).
ORIGINAL_LAYOUTS: dict[str, tuple[str, str]] = {
    # layers.N.downsample sits at the end of stage N (timm: start of N + 1); head.* -> head.fc.*; the
    # relative_position_index / attn_mask buffers are dropped.
    "swin_transformer": (
        "Microsoft Swin release (SwinTransformer/storage, e.g. swin_base_patch4_window12_384_22k.pth)",
        "layers.0.downsample.reduction.weight",
    ),
    # downsample_layers.0 -> stem, downsample_layers.N -> stages.N.downsample, stages.N.M -> stages.N.blocks.M,
    # dwconv/pwconv -> conv_dw/mlp.fc, norm -> head.norm, head -> head.fc.
    "convnext": (
        "Facebook ConvNeXt release (facebookresearch/ConvNeXt, e.g. convnext_base_22k_224.pth)",
        "downsample_layers.0.0.weight",
    ),
}
#: Keys listed by name in a message; the rest are counted.
_KEYS_SHOWN = 5


def listed_keys(keys: Iterable[str], label: str) -> str:
    """``"3 missing keys ['a', 'b', 'c']"``: the first few keys by name, the rest counted."""
    keys = sorted(keys)
    more = f" and {len(keys) - _KEYS_SHOWN} more" if len(keys) > _KEYS_SHOWN else ""
    return f"{len(keys)} {label} {keys[:_KEYS_SHOWN]}{more}"


def describe_mismatch(missing: Iterable[str], unexpected: Iterable[str], shapes: Iterable[str]) -> str:
    """``"26 missing keys [...] and 21 more, 1 unexpected keys [...]"``: the non-empty lists only."""
    lists = (
        (list(missing), "missing keys"),
        (list(unexpected), "unexpected keys"),
        (list(shapes), "shape mismatches"),
    )
    return ", ".join(listed_keys(keys, label) for keys, label in lists if keys)


def stray_prefix(keys: Iterable[str], top_level: Iterable[str]) -> str | None:
    """The prefix every key carries when it is not one of the model's top-level modules (``module.``, ``model.``,
    ``backbone.``, ``encoder.`` from a wrapper), else None."""
    firsts = {key.split(".", 1)[0] for key in keys}
    if len(firsts) != 1:
        return None
    first = firsts.pop()
    return None if first in set(top_level) else f"{first}."


def read_backbone_file(path: str | Path, *, key: str = "weights.backbone") -> dict[str, Tensor]:
    """The tensors of a safetensors backbone file; a truncated, pickled or foreign file raises ``CheckpointError``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    source = f"{path} ({key})"
    with open(path, "rb") as fh:
        read_safetensors_header(fh, source=source)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{source} could not be read as safetensors: {exc}; copy the file again"
        ) from exc


def family_filter(name: str) -> Callable[..., dict[str, Tensor]] | None:
    """timm's ``checkpoint_filter_fn`` of the module that defines model ``name`` (what timm's own pretrained load
    runs), or None when the family has none."""
    import timm

    module = importlib.import_module(timm.models.model_entrypoint(name).__module__)
    return getattr(module, "checkpoint_filter_fn", None)


def detect_layout(name: str, state: Mapping[str, Any]) -> str:
    """``"timm"`` or the original release ``state`` is in (``ORIGINAL_LAYOUTS``), for messages."""
    import timm

    family = timm.models.model_entrypoint(name).__module__.rsplit(".", 1)[-1]
    release, marker = ORIGINAL_LAYOUTS.get(family, ("", ""))
    return release if marker and marker in state else "timm"


def to_timm_layout(
    name: str, state: dict[str, Tensor], reference: nn.Module, *, source: str
) -> dict[str, Tensor]:
    """``state`` mapped to timm's keys by the family's filter; its errors (a wrong layout) become
    ``CheckpointError``."""
    prefix = stray_prefix(state, (n for n, _ in reference.named_children()))
    filter_fn = family_filter(name)
    if filter_fn is None:
        return state
    try:
        return dict(filter_fn(state, reference))
    except (
        Exception
    ) as exc:  # timm's filters raise AttributeError / KeyError / RuntimeError on a foreign layout
        hint = (
            f"every key carries the prefix {prefix!r}; strip it from the keys and save again"
            if prefix
            else f"give a checkpoint of {name!r} in timm's layout or its original release's"
        )
        raise CheckpointError(
            f"{source} is not a {name!r} checkpoint timm can map: {type(exc).__name__}: {exc}. Fix: {hint}."
        ) from exc


def body_key_map(body: nn.Module, reference: nn.Module) -> dict[str, str]:
    """Module path in the full model -> child name in the ``features_only`` body (``stages.0`` -> ``stages_0``:
    timm flattens Sequential children into ``<name>_<child>``)."""
    children = dict(reference.named_children())
    mapping: dict[str, str] = {}
    for child, _ in body.named_children():
        if child in children:
            mapping[child] = child
            continue
        for i, char in enumerate(child):
            head, tail = child[:i], child[i + 1 :]
            if char == "_" and head in children and tail in dict(children[head].named_children()):
                mapping[f"{head}.{tail}"] = child
                break
        else:
            raise CheckpointError(f"timm's feature body has a module {child!r} the full model lacks")
    return mapping


def _body_key(key: str, mapping: Mapping[str, str]) -> str | None:
    """``stages.0.blocks.1.gamma`` -> ``stages_0.blocks.1.gamma``; None for modules the body dropped."""
    parts = key.split(".")
    for depth in (2, 1):
        path = ".".join(parts[:depth])
        if len(parts) > depth and path in mapping:
            return ".".join([mapping[path], *parts[depth:]])
    return None


def _classifier_prefixes(reference: nn.Module) -> tuple[str, ...]:
    """``("head.fc.",)``: the classifier named by the model's pretrained config (never part of a feature body)."""
    cfg = getattr(reference, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{n}." for n in names)


def _mismatch(
    state: Mapping[str, Tensor], expected: Mapping[str, torch.Size], wanted: set[str], known: tuple[str, ...]
) -> tuple[list[str], list[str], list[str]]:
    """Missing body keys, unexpected keys (beyond the classifier) and shape mismatches."""
    missing = sorted(wanted - set(state))
    unexpected = sorted(k for k in state if k not in expected and not k.startswith(known))
    shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k])}"
        for k in state
        if k in expected and not k.startswith(known) and tuple(state[k].shape) != tuple(expected[k])
    )
    return missing, unexpected, shapes


def load_backbone_state(
    body: nn.Module, reference: nn.Module, state: dict[str, Tensor], *, name: str, source: str
) -> None:
    """Check ``state`` (any layout the family filter maps) against the full model ``reference`` (may be on the meta
    device) and load it strictly into the ``features_only`` ``body``.

    Raises:
        CheckpointError: Missing or unexpected keys (beyond the classifier and the norms the body drops), shape
            mismatches, or a layout timm cannot map; the message names the keys, a stray prefix and the fix.
    """
    layout = detect_layout(name, state)
    top_level = [n for n, _ in reference.named_children()]
    prefix = stray_prefix(state, top_level)
    timm_state = to_timm_layout(name, state, reference, source=source)
    expected = {k: v.shape for k, v in reference.state_dict().items()}
    mapping = body_key_map(body, reference)
    to_body = {k: _body_key(k, mapping) for k in expected}
    wanted = {k for k, b in to_body.items() if b is not None}
    missing, unexpected, shapes = _mismatch(timm_state, expected, wanted, _classifier_prefixes(reference))
    if missing or unexpected or shapes:
        fix = (
            f"every key carries the prefix {prefix!r} (saved from a wrapped model): strip it and save again"
            if prefix
            else f"give a complete {name!r} checkpoint (timm's layout or its original release) built with the same "
            "backbone.model_kwargs, e.g. the file jobs/fetch_weights.py stages"
        )
        raise CheckpointError(
            f"{source}, read in the {layout} layout, does not match backbone.name = {name!r}: "
            f"{describe_mismatch(missing, unexpected, shapes)}. Fix: {fix}."
        )
    body_state = {to_body[k]: v for k, v in timm_state.items() if to_body.get(k) is not None}
    try:
        body.load_state_dict(body_state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{source} does not load into the {name!r} feature body: {exc}") from exc
