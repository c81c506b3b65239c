"""Flags and logging set-up shared by the command-line jobs (`jobs/*.py`)."""

from __future__ import annotations

import argparse
import logging

__all__ = ["LOG_LEVELS", "add_console_arguments", "configure_logging"]

#: Accepted values of ``--log-level``.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def add_console_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, progress: bool = True
) -> None:
    """Add ``--log-level`` and, with ``progress``, ``--no-progress`` to a job's parser (or one of its groups)."""
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--log-level", default="INFO", choices=LOG_LEVELS, help="console log level")


def configure_logging(level: str) -> None:
    """Log to stderr at ``level`` with timestamps, one format for every job."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
