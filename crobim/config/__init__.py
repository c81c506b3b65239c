"""CroBIM configuration: one dataclass tree holding every architecture choice (MODEL.md §2-§8, flags A1-A10).

The tree round-trips through JSON and YAML (``to_dict``/``from_dict``, ``to_json``/``from_json``,
``to_yaml``/``from_yaml``). Every section validates itself in ``__post_init__`` and raises ``ValueError`` naming the
key, the value and the allowed set. Presets are YAML files in ``crobim/presets/`` that only set fields.
"""

from crobim.config.crobim_config import CroBIMConfig
from crobim.config.presets import get_preset, list_presets
from crobim.config.sections import (
    MINILM_PACKAGE,
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

__all__ = [
    "BackboneConfig",
    "CAPMConfig",
    "CroBIMConfig",
    "HeadConfig",
    "InputConfig",
    "LGFAConfig",
    "LossConfig",
    "MIDConfig",
    "MINILM_PACKAGE",
    "OptimConfig",
    "PresenceConfig",
    "RuntimeConfig",
    "TextConfig",
    "WeightsConfig",
    "get_preset",
    "list_presets",
]
