"""CroBIM: cross-modal bidirectional interaction model for referring remote-sensing image segmentation.

``import crobim`` is light (the config only); the model classes load torch, timm and transformers on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crobim.config import CroBIMConfig, get_preset, list_presets

if TYPE_CHECKING:
    from crobim.modeling.build import build_model
    from crobim.modeling.model import CroBIM, CroBIMOutput, ImageFeatures, TextFeatures
    from crobim.weights import load_model, save_model

__version__ = "0.1.0"

__all__ = [
    "CroBIM",
    "CroBIMConfig",
    "CroBIMOutput",
    "ImageFeatures",
    "TextFeatures",
    "__version__",
    "build_model",
    "get_preset",
    "list_presets",
    "load_model",
    "save_model",
]

_LAZY = {
    "build_model": "crobim.modeling.build",
    "CroBIM": "crobim.modeling.model",
    "CroBIMOutput": "crobim.modeling.model",
    "ImageFeatures": "crobim.modeling.model",
    "TextFeatures": "crobim.modeling.model",
    "load_model": "crobim.weights",
    "save_model": "crobim.weights",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'crobim' has no attribute {name!r}")
