"""jobs/fetch_weights.py and crobim.weight_staging against a loopback HTTP server serving small fake files."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from crobim.weight_staging import MANIFEST_NAME, PAPER_WEIGHTS, stage_weights
from jobs.fetch_weights import main
from tests.fixtures.servers import free_port

REPO = Path(__file__).resolve().parents[2]
JOB = REPO / "jobs" / "fetch_weights.py"
HUB = "https://huggingface.co"
EXPECTED_URLS = [
    f"{HUB}/timm/swin_base_patch4_window12_384.ms_in22k/resolve/main/model.safetensors",
    f"{HUB}/timm/convnext_base.fb_in22k/resolve/main/model.safetensors",
    *(
        f"{HUB}/google-bert/bert-base-uncased/resolve/main/{name}"
        for name in (
            "config.json",
            "model.safetensors",
            "vocab.txt",
            "tokenizer.json",
            "tokenizer_config.json",
        )
    ),
]
EXPECTED_TARGETS = [
    "swin_base_patch4_window12_384.ms_in22k.safetensors",
    "convnext_base.fb_in22k.safetensors",
    *(
        f"bert-base-uncased/{name}"
        for name in (
            "config.json",
            "model.safetensors",
            "vocab.txt",
            "tokenizer.json",
            "tokenizer_config.json",
        )
    ),
]


def _publish(root: Path) -> dict[str, bytes]:
    """Fake hub files under ``root`` (``<repo>/resolve/main/<file>``), by target path; sizes differ per file."""
    contents = {}
    for i, comp in enumerate(PAPER_WEIGHTS.values()):
        for j, (remote, target) in enumerate(comp.files):
            data = bytes((i * 31 + j * 7 + k) % 251 for k in range(3000 + 1000 * i + 100 * j))
            path = root / comp.repo / "resolve" / "main" / remote
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            contents[target] = data
    return contents


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_help():
    proc = subprocess.run([sys.executable, str(JOB), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--out", "--only", "--base-url", "--dry-run", "--no-progress", "--log-level"):
        assert flag in proc.stdout


def test_dry_run_lists_the_exact_sources_and_targets_and_downloads_nothing(tmp_path, capsys):
    out = tmp_path / "weights"
    assert main(["--out", str(out), "--dry-run", "--base-url", HUB]) == 0
    lines = capsys.readouterr().out.splitlines()
    pairs = [line.split(" -> ") for line in lines if " -> " in line]
    assert [url for url, _ in pairs] == EXPECTED_URLS
    assert [target.removesuffix(" (to fetch)") for _, target in pairs] == [
        str(out / t) for t in EXPECTED_TARGETS
    ]
    assert f"  --set model_overrides.weights.backbone={out}/{EXPECTED_TARGETS[0]}" in lines
    assert f"  --set model_overrides.text.name_or_path={out}/bert-base-uncased" in lines
    assert not out.exists()


def test_dry_run_of_one_component(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--dry-run", "--base-url", HUB, "--only", "convnext-b"]) == 0
    text = capsys.readouterr().out
    assert EXPECTED_URLS[1] in text and "swin" not in text and "bert" not in text


def test_download_writes_the_files_and_the_manifest_then_skips_them(cog_server, tmp_path, capsys):
    contents = _publish(cog_server.root)
    out = tmp_path / "weights"
    assert main(["--out", str(out), "--base-url", cog_server.url, "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["fetched"] == EXPECTED_TARGETS and summary["skipped"] == []
    assert f"--set model_overrides.text.name_or_path={out}/bert-base-uncased" in summary["train_flags"]
    for target, data in contents.items():
        assert (out / target).read_bytes() == data
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    entries = {e["file"]: e for e in manifest["files"]}
    assert sorted(entries) == sorted(EXPECTED_TARGETS)
    for target, data in contents.items():
        entry = entries[target]
        assert (entry["sha256"], entry["size"]) == (_sha(data), len(data))
        assert (
            entry["url"].startswith(cog_server.url + "/")
            and entry["what"]
            and entry["component"] in PAPER_WEIGHTS
        )
    assert not list(out.rglob("*.part")) and not list(out.rglob("*.tmp"))

    cog_server.reset()
    assert main(["--out", str(out), "--base-url", cog_server.url, "--no-progress"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["fetched"] == [] and again["skipped"] == EXPECTED_TARGETS
    assert cog_server.records() == []  # nothing requested


def test_an_interrupted_download_resumes_with_a_range_request(cog_server, tmp_path):
    contents = _publish(cog_server.root)
    target = EXPECTED_TARGETS[0]
    out = tmp_path / "weights"
    out.mkdir()
    (out / f"{target}.part").write_bytes(contents[target][:1234])
    bars = []

    def progress(desc, total, initial):
        bars.append([desc, total, initial, 0])

        class Bar:
            def update(self, n):
                bars[-1][3] += n

            def close(self):
                pass

        return Bar()

    result = stage_weights(out, base_url=cog_server.url, only=["swin-b"], progress=progress)
    assert result.fetched == [target]
    assert (out / target).read_bytes() == contents[target]
    remote = "/" + EXPECTED_URLS[0].removeprefix(HUB + "/")
    (record,) = cog_server.records(remote)
    assert record.status == 206 and record.ranges[0][0] == 1234
    assert bars == [[target, len(contents[target]), 1234, len(contents[target]) - 1234]]


def test_a_missing_file_is_an_http_error_naming_the_url_and_the_fix(cog_server, tmp_path, capsys):
    _publish(cog_server.root)
    (cog_server.root / "timm/convnext_base.fb_in22k/resolve/main/model.safetensors").unlink()
    out = tmp_path / "weights"
    assert (
        main(["--out", str(out), "--base-url", cog_server.url, "--only", "convnext-b", "--no-progress"]) == 1
    )
    err = capsys.readouterr().err
    assert f"{cog_server.url}/timm/convnext_base.fb_in22k/resolve/main/model.safetensors" in err
    assert "HTTP 404" in err and "--base-url" in err
    assert not (out / EXPECTED_TARGETS[1]).exists() and not list(out.rglob("*.part"))


def test_a_changed_file_is_a_hash_mismatch_and_is_not_installed(cog_server, tmp_path, capsys):
    contents = _publish(cog_server.root)
    out = tmp_path / "weights"
    target = "bert-base-uncased/vocab.txt"
    assert (
        main(
            ["--out", str(out), "--base-url", cog_server.url, "--only", "bert-base-uncased", "--no-progress"]
        )
        == 0
    )
    capsys.readouterr()
    (cog_server.root / "google-bert/bert-base-uncased/resolve/main/vocab.txt").write_bytes(
        b"changed upstream\n"
    )
    (out / target).write_bytes(b"damaged locally")
    assert (
        main(
            ["--out", str(out), "--base-url", cog_server.url, "--only", "bert-base-uncased", "--no-progress"]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "SHA-256" in err and _sha(b"changed upstream\n") in err and _sha(contents[target]) in err
    assert f"{cog_server.url}/google-bert/bert-base-uncased/resolve/main/vocab.txt" in err
    assert (out / target).read_bytes() == b"damaged locally"  # never replaced by an unverified file
    assert not list(out.rglob("*.part"))
    entry = {e["file"]: e for e in json.loads((out / MANIFEST_NAME).read_text())["files"]}[target]
    assert entry["sha256"] == _sha(contents[target])


def test_an_unreachable_host_names_the_url_and_the_fix(tmp_path, capsys):
    base = f"http://127.0.0.1:{free_port()}"
    assert main(["--out", str(tmp_path / "w"), "--base-url", base, "--only", "swin-b", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"{base}/timm/swin_base_patch4_window12_384.ms_in22k/resolve/main/model.safetensors" in err
    assert "unreachable" in err and "--base-url" in err


def test_bad_input_exits_2(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["--out", str(afile), "--base-url", "http://127.0.0.1:9"]) == 2
    assert "is a file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--out", str(tmp_path), "--only", "resnet"])
    assert info.value.code == 2


@pytest.mark.parametrize("preset", ["crobim-swin-b", "crobim-convnext-b", "crobim-region"])
def test_every_paper_preset_backbone_has_staged_weights(preset):
    from crobim.config import get_preset

    name = get_preset(preset).backbone.name
    (comp,) = [c for c in PAPER_WEIGHTS.values() if c.backbone_name == name]
    assert comp.repo.startswith(f"timm/{name}.") and comp.config_target.endswith(".safetensors")
