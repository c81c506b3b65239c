"""Errors raised by the dataset readers."""

from __future__ import annotations

import os

__all__ = ["DatasetFormatError", "DatasetNotFoundError", "SampleReadError", "UnsafePickleError"]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset folder or one of its required files is missing.

    The message names the ``root`` the user passed, the file that was expected under it and the layout the
    reader wants, so the fix is obvious (point ``root`` at the unpacked folder).
    """

    def __init__(self, dataset: str, root: str | os.PathLike[str], expected: str, layout: str = "") -> None:
        self.dataset = dataset
        self.root = str(root)
        self.expected = expected
        msg = f"{dataset}: expected {expected!r} under root={self.root!r}, but it does not exist."
        if layout:
            msg += f" Pass as root the folder that holds {layout}."
        super().__init__(msg)


class DatasetFormatError(ValueError):
    """A dataset file exists but its content does not follow the documented format."""


class SampleReadError(ValueError):
    """One sample cannot be read (unreadable image, image/mask size mismatch, undecodable mask)."""


class UnsafePickleError(DatasetFormatError):
    """A pickle asked for a global outside the allow-list; nothing from it was executed."""
