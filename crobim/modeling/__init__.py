"""CroBIM network components, one ``nn.Module`` per file (MODEL.md §3)."""

from crobim.modeling.build import build_from_config, build_model
from crobim.modeling.model import CroBIM, CroBIMOutput, DecodeAux, ImageFeatures, TextFeatures

__all__ = [
    "CroBIM",
    "CroBIMOutput",
    "DecodeAux",
    "ImageFeatures",
    "TextFeatures",
    "build_from_config",
    "build_model",
]
