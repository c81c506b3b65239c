import importlib.util
import json
from pathlib import Path

import pytest

from crobim.data import SynRS

JOB = Path(__file__).resolve().parents[2] / "jobs" / "make_synthetic.py"


def _job():
    spec = importlib.util.spec_from_file_location("make_synthetic_job", JOB)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_help(capsys):
    with pytest.raises(SystemExit) as err:
        _job().main(["--help"])
    assert err.value.code == 0
    assert "--train" in capsys.readouterr().out


def test_writes_dataset_and_summary(tmp_path, capsys):
    out = tmp_path / "synrs"
    rc = _job().main(["--out", str(out), "--seed", "2", "--train", "9", "--val", "3", "--test", "4", "--size", "64",
                      "--no-progress"])  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["samples"] == {"train": 9, "val": 3, "test": 4}
    assert len(SynRS(out, "test")) == 4
    info = json.loads((out / "synrs_info.json").read_text())
    assert info["generator_version"] == summary["generator_version"]
    assert _job().main(["--out", str(out), "--test", "2", "--size", "64", "--no-progress"]) == 2
    assert "overwrite" in capsys.readouterr().err


def test_set_changes_generator_parameters(tmp_path, capsys):
    out = tmp_path / "synrs"
    rc = _job().main(["--out", str(out), "--train", "6", "--size", "64", "--no-progress", "--set", "p_multi=0.5",
                      "--set", "template_weights={multi/near: 4}"])  # fmt: skip
    assert rc == 0
    params = json.loads((out / "synrs_info.json").read_text())["params"]
    assert params["p_multi"] == 0.5 and params["template_weights"] == [["multi/near", 4.0]]
    capsys.readouterr()
    for bad, message in (
        ("nearness=0.1", "unknown SynRS parameter"),
        ("template_weights={multi/nope: 1}", "unknown templates"),
    ):
        assert (
            _job().main(["--out", str(out), "--train", "2", "--size", "64", "--overwrite", "--set", bad]) == 2
        )
        assert message in capsys.readouterr().err
    assert (out / "synrs_info.json").is_file()  # the refused runs left the existing dataset alone
