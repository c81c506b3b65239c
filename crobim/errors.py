"""Exceptions specific to the ``crobim`` package."""

from __future__ import annotations

__all__ = ["CheckpointError", "ImageFeaturesUnavailableError"]


class CheckpointError(ValueError):
    """A CroBIM checkpoint folder is missing files, is corrupt, or does not match the model it is loaded into."""


class ImageFeaturesUnavailableError(RuntimeError):
    """``encode_image`` was called on a model whose backbone needs the text (``backbone.in_fusion = 'pwam'``)."""
