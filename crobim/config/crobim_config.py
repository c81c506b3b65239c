"""``CroBIMConfig``: the whole model configuration, one dataclass tree of the sections in ``sections.py``, and
its JSON/YAML round trip (``to_dict``/``from_dict``, ``to_json``/``from_json``, ``to_yaml``/``from_yaml``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from crobim.config.sections import (
    SECTION_TYPES,
    BackboneConfig,
    CAPMConfig,
    HeadConfig,
    InputConfig,
    LGFAConfig,
    LossConfig,
    MIDConfig,
    OptimConfig,
    PresenceConfig,
    RuntimeConfig,
    TextConfig,
    WeightsConfig,
)

__all__ = ["CroBIMConfig"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Keys that older configs (and the configs stored in older checkpoints) may still carry but nothing reads any
#: more. ``from_dict`` drops exactly these, by name and with a log line; every other unknown key stays an error.
_RETIRED_KEYS: dict[str, tuple[str, ...]] = {
    # The presence-negative sampling settings were validated but never used by training; retired in issue 20.
    "presence": ("neg_ratio", "swap_negatives"),
}


def _drop_retired_keys(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` without the ``_RETIRED_KEYS`` entries (the input is not modified)."""
    out = dict(data)
    for section, keys in _RETIRED_KEYS.items():
        if not isinstance(out.get(section), dict):
            continue
        present = [k for k in keys if k in out[section]]
        if present:
            logger.info("ignoring retired config key(s) %s", [f"{section}.{k}" for k in present])
            out[section] = {k: v for k, v in out[section].items() if k not in present}
    return out


def _from_mapping(cls: type[_T], data: dict[str, Any], where: str) -> _T:
    if not isinstance(data, dict):
        raise ValueError(f"config section {where!r} must be a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"unknown config key(s) {[f'{where}.{k}' for k in unknown]}; allowed: {sorted(names)}"
        )
    return cls(**data)


@dataclass
class CroBIMConfig:
    """The whole model configuration. Build a model with ``crobim.build_model(config)``."""

    name: str = "custom"
    input: InputConfig = field(default_factory=InputConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    text: TextConfig = field(default_factory=TextConfig)
    capm: CAPMConfig = field(default_factory=CAPMConfig)
    lgfa: LGFAConfig = field(default_factory=LGFAConfig)
    mid: MIDConfig = field(default_factory=MIDConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    presence: PresenceConfig = field(default_factory=PresenceConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        for key, cls in SECTION_TYPES.items():
            value = getattr(self, key)
            if isinstance(value, dict):
                setattr(self, key, _from_mapping(cls, value, key))
            elif not isinstance(value, cls):
                raise ValueError(
                    f"config section {key!r} must be a {cls.__name__} or a mapping, got {value!r}"
                )
        if self.head.product == "tokens" and self.capm.prompt_position != "after_padding":
            raise ValueError(
                "config key head.product = 'tokens' needs capm.prompt_position = 'after_padding' "
                "(the per-token 1x1 needs a fixed token order); allowed pairs: pooled + any, tokens + after_padding"
            )
        if self.text.name_or_path is None:
            needed = self.text.max_len + self.capm.num_prompts
            if self.text.max_position_embeddings < needed:
                raise ValueError(
                    f"config key text.max_position_embeddings = {self.text.max_position_embeddings} is too small; "
                    f"expected at least text.max_len + capm.num_prompts = {needed}"
                )

    # ----------------------------------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples become lists), suitable for JSON/YAML."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CroBIMConfig:
        """Inverse of ``to_dict``; unknown keys raise ``ValueError`` naming them (retired keys are dropped)."""
        return _from_mapping(cls, _drop_retired_keys(dict(data)), "<root>")

    def to_json(self, path: str | Path | None = None) -> str:
        """Serialise to JSON; also write it to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> CroBIMConfig:
        """Parse a JSON string or a path to a JSON file."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text()
        return cls.from_dict(json.loads(text))

    def to_yaml(self, path: str | Path | None = None) -> str:
        """Serialise to YAML; also write it to ``path`` when given."""
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, text_or_path: str | Path) -> CroBIMConfig:
        """Parse a YAML string or a path to a YAML file."""
        import yaml

        text = str(text_or_path)
        if "\n" not in text and Path(text).is_file():
            text = Path(text).read_text()
        data = yaml.safe_load(text)
        return cls.from_dict(data or {})

    def replace(self, **sections: dict[str, Any]) -> CroBIMConfig:
        """Copy with some fields overridden, e.g. ``cfg.replace(input={"size": (512, 512)}, name="x")``."""
        data = self.to_dict()
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key].update(value)
            else:
                data[key] = value
        return CroBIMConfig.from_dict(data)
