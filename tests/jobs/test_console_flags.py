"""Every job takes the same console flags (crobim.cli), parsed the same way."""

import importlib.util
import logging
from pathlib import Path

import pytest

from crobim.cli import LOG_LEVELS, configure_logging

JOBS = Path(__file__).resolve().parents[2] / "jobs"


def _parser(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_job_flags", JOBS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_parser()


@pytest.mark.parametrize("name", ["evaluate", "fetch_weights", "infer_region", "make_synthetic", "train"])
def test_every_job_takes_log_level(name):
    parser = _parser(name)
    options = {o for a in parser._actions for o in a.option_strings}
    assert "--log-level" in options
    # train reports progress through Ray Train's callbacks; the other jobs draw bars that can be turned off
    assert ("--no-progress" in options) == (name != "train")
    level = parser._option_string_actions["--log-level"]
    assert tuple(level.choices) == LOG_LEVELS and level.default == "INFO"


def test_configure_logging_sets_the_level():
    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)
    try:
        root.handlers = []
        configure_logging("WARNING")
        assert root.level == logging.WARNING and root.handlers
        assert "%(asctime)s" in root.handlers[0].formatter._fmt
    finally:
        root.handlers, root.level = saved_handlers, saved_level
