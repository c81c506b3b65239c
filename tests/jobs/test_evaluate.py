import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from crobim.data import RefSegRS, SynRS

JOB = Path(__file__).resolve().parents[2] / "jobs" / "evaluate.py"


def _job():
    spec = importlib.util.spec_from_file_location("evaluate_job", JOB)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """crobim-tiny (presence head on, 64 px input) saved with crobim.save_model."""
    from crobim import build_model, get_preset, save_model

    cfg = get_preset("crobim-tiny").replace(input={"size": (64, 64)}, presence={"enabled": True})
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "crobim-tiny"
    save_model(build_model(cfg), path)
    return path


def test_help(capsys):
    with pytest.raises(SystemExit) as err:
        _job().main(["--help"])
    assert err.value.code == 0
    assert "--gate-presence" in capsys.readouterr().out


def test_evaluate_synrs_writes_reports(tiny_checkpoint, synrs_small, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = _job().main(["--checkpoint", str(tiny_checkpoint), "--dataset", "synrs", "--root", str(synrs_small),
                      "--split", "test", "--out", str(out), "--no-progress", "--examples", "2"])  # fmt: skip
    assert rc == 0
    doc = json.loads((out / "metrics.json").read_text())
    m = doc["metrics"]
    ds = SynRS(synrs_small, "test")
    assert m["count"] == len(ds) == 16
    n_nt = sum(ds.record(i)["synrs"]["no_target"] for i in range(len(ds)))
    assert m["n_no_target"] == n_nt
    for key in ("oIoU", "mIoU", "Pr@0.5", "Pr@0.9", "giou_gres"):
        assert 0.0 <= m[key] <= 1.0
    assert doc["protocol"]["input_size"] == [64, 64] and doc["protocol"]["batch_size"] == 1
    assert doc["protocol"]["gate_presence"] is False
    md = (out / "metrics.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Pr@0.5"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols[:7] == ["Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9", "oIoU", "mIoU"]
    if n_nt:
        assert cols[7:] == ["N-acc", "T-acc", "gIoU (GRES)"]
    assert "not comparable with published tables" in md
    # The presence head is on: both gating modes are reported from the same passes.
    assert set(doc["variants"]) == {"gated", "ungated"} and doc["variants"]["ungated"] == m
    assert doc["variants"]["gated"]["count"] == 16 and "| gated |" in md
    assert doc["variants"]["gated"]["T-acc"] <= m["T-acc"]  # gating can only empty masks
    values = md.splitlines()[md.splitlines().index(header) + 2]
    assert f"{100 * m['mIoU']:.2f}" in values
    png = (out / "examples.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    rows = [json.loads(x) for x in (out / "per_sample.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and np.mean([r["iou"] for r in rows]) == pytest.approx(m["mIoU"], abs=1e-12)
    assert "oIoU" in capsys.readouterr().out
    # Refuses to overwrite, then the gated variant runs.
    assert _job().main(["--checkpoint", str(tiny_checkpoint), "--dataset", "synrs", "--root", str(synrs_small),
                        "--out", str(out), "--no-progress"]) == 2  # fmt: skip
    rc = _job().main(["--checkpoint", str(tiny_checkpoint), "--dataset", "synrs", "--root", str(synrs_small),
                      "--out", str(out), "--no-progress", "--overwrite", "--gate-presence", "--limit", "3"])  # fmt: skip
    assert rc == 0
    gated = json.loads((out / "metrics.json").read_text())
    assert gated["protocol"]["gate_presence"] is True and gated["metrics"]["count"] == 3
    assert "partial run: 3 of 16" in (out / "metrics.md").read_text()


def test_protocol_resizes_truth_to_the_input_grid(tiny_checkpoint, synrs_small):
    from crobim import load_model
    from crobim.evaluation import evaluate
    from crobim.inference import binary_mask
    from crobim.transforms import resize_mask

    model = load_model(tiny_checkpoint)
    ds = SynRS(synrs_small, "val")
    result = evaluate(model, ds, limit=3, progress=False)
    assert result.metrics["count"] == 3
    for r in result.samples:
        s = ds[r.index]
        with torch.inference_mode():
            tok = model.tokenize([s.text])
            pred = binary_mask(model(model.preprocess(s.image), tok["input_ids"], tok["attention_mask"]))[
                0
            ].numpy()
        gt = resize_mask(s.mask, (64, 64))
        assert gt.shape == pred.shape == (64, 64) and r.gt_area == int(gt.sum())
        union = np.count_nonzero(pred | gt)
        assert r.iou == pytest.approx(np.count_nonzero(pred & gt) / union if union else 0.0, abs=1e-12)


def test_real_benchmark_count_is_enforced(tiny_checkpoint, refsegrs_fake, tmp_path, capsys):
    root, _ = refsegrs_fake
    rc = _job().main(["--checkpoint", str(tiny_checkpoint), "--dataset", "refsegrs", "--root", str(root),
                      "--out", str(tmp_path / "e"), "--no-progress"])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert "expects 1817" in err and f"has {len(RefSegRS(root, 'test'))} samples" in err
    # A smoke test with --limit is allowed and labelled partial only if it is.
    assert _job().main(["--checkpoint", str(tiny_checkpoint), "--dataset", "refsegrs", "--root", str(root),
                        "--out", str(tmp_path / "e"), "--no-progress", "--limit", "2"]) == 0  # fmt: skip


def test_bad_inputs_exit_2(tiny_checkpoint, synrs_small, tmp_path, capsys):
    assert _job().main(["--checkpoint", str(tmp_path / "nope"), "--dataset", "synrs", "--root", str(synrs_small),
                        "--out", str(tmp_path / "o"), "--no-progress"]) == 2  # fmt: skip
    assert _job().main(["--checkpoint", str(tiny_checkpoint), "--dataset", "synrs", "--root", str(tmp_path / "x"),
                        "--out", str(tmp_path / "o"), "--no-progress"]) == 2  # fmt: skip
    assert "root=" in capsys.readouterr().err
