import copy
import json
import logging
import pickle

import numpy as np
import pytest

from crobim.data import (
    RRSISD,
    DatasetNotFoundError,
    RefSegRS,
    RISBench,
    Sample,
    SampleReadError,
)
from tests.fixtures.crobim_data import load_generator


def _check(sample: Sample, exp: dict) -> None:
    assert isinstance(sample, Sample)
    assert sample.text == exp["text"]
    assert sample.mask.dtype == np.bool_ and sample.image.dtype == np.uint8
    assert sample.image.shape == (*sample.mask.shape, 3)
    np.testing.assert_array_equal(sample.mask, exp["mask"])


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_rrsisd_masks_texts_meta(rrsisd_fake, split):
    root, expected = rrsisd_fake
    ds = RRSISD(root, split)
    exp = [e for e in expected if e["split"] == split and not e["skip"]]
    assert len(ds) == len(exp)
    for sample, e in zip(ds, exp, strict=True):
        _check(sample, e)
        assert sample.meta["category"] == e["category"]
        assert sample.meta["file_name"] == e["file_name"]
        assert sample.meta["sample_id"] == e["sample_id"]
        assert sample.meta["bbox_xyxy"] == e["bbox"]
        assert sample.meta["split"] == split and sample.meta["dataset"] == "rrsisd"
        assert sample.meta["no_target"] is False
    ids = [s.meta["sample_id"] for s in ds]
    assert len(set(ids)) == len(ids)


def test_rrsisd_overlapping_parts_follow_family_rule(rrsisd_fake):
    root, expected = rrsisd_fake
    ds = RRSISD(root, "test")
    sample = next(s for s in ds if s.meta["file_name"] == "00006.jpg")
    e = next(e for e in expected if e["file_name"] == "00006.jpg")
    np.testing.assert_array_equal(sample.mask, e["mask"])


def test_rrsisd_skip_list_train_only_counted_and_logged(rrsisd_fake, caplog):
    root, expected = rrsisd_fake
    with caplog.at_level(logging.WARNING, logger="crobim.data.base"):
        ds = RRSISD(root, "train")
    assert ds.num_skipped == 1
    assert "skipped 1 samples" in caplog.text
    assert "01072.jpg" not in [ds.record(i)["file_name"] for i in range(len(ds))]
    kept = RRSISD(root, "train", skip_known_bad=False)
    assert len(kept) == len(ds) + 1 and kept.num_skipped == 0


def test_rrsisd_size_mismatch_resized_or_refused(rrsisd_fake, caplog):
    root, _ = rrsisd_fake
    ds = RRSISD(root, "test")
    idx = next(i for i in range(len(ds)) if ds.record(i)["file_name"] == "00003.jpg")
    with caplog.at_level(logging.WARNING):
        s = ds[idx]
    assert s.image.shape[:2] == s.mask.shape == (64, 64)
    assert "62x64" in caplog.text and "00003.jpg" in caplog.text
    strict = RRSISD(root, "test", size_mismatch="error")
    with pytest.raises(SampleReadError, match=r"00003\.jpg.*62x64.*64x64"):
        strict[idx]


def test_rrsisd_unreadable_image_names_sample(tmp_path):
    load_generator("rrsisd").write(tmp_path, seed=1, bad_image=True)
    ds = RRSISD(tmp_path, "test")
    idx = next(i for i in range(len(ds)) if ds.record(i)["file_name"] == "00005.jpg")
    with pytest.raises(SampleReadError, match="00005.jpg"):
        ds[idx]
    problems = ds.verify()
    assert len(problems) == 1 and "00005.jpg" in problems[0]


def test_rrsisd_missing_files(tmp_path, rrsisd_fake):
    with pytest.raises(DatasetNotFoundError) as err:
        RRSISD(tmp_path, "test")
    assert str(tmp_path) in str(err.value) and "refs(unc).p" in str(err.value)
    load_generator("rrsisd").write(tmp_path / "d", seed=0)
    (tmp_path / "d" / "images" / "rrsisd" / "JPEGImages" / "00005.jpg").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"00005\.jpg"):
        RRSISD(tmp_path / "d", "test")


def test_rrsisd_prefers_converted_json(tmp_path):
    from crobim.data import DatasetFormatError
    from crobim.data.safe_pickle import convert_refs_to_json, load_refs

    load_generator("rrsisd").write(tmp_path, seed=0)
    src = tmp_path / "rrsisd" / "refs(unc).p"
    with pytest.raises(DatasetFormatError, match="set"):  # sets cannot go to JSON: refused, not dropped
        convert_refs_to_json(src)
    refs = load_refs(src)
    for ref in refs:
        ref.pop("flags", None)
    src.write_bytes(pickle.dumps(refs, protocol=2))
    out = convert_refs_to_json(src)
    assert out.name == "refs(unc).json" and load_refs(out) == refs
    refs[-1]["sentences"][0]["raw"] = "edited in the json copy"
    out.write_text(json.dumps(refs))
    ds = RRSISD(tmp_path, "test")
    assert ds[len(ds) - 1].text == "edited in the json copy"


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_refsegrs_masks_texts(refsegrs_fake, split):
    root, expected = refsegrs_fake
    ds = RefSegRS(root, split)
    exp = [e for e in expected if e["split"] == split]
    assert len(ds) == len(exp)
    for sample, e in zip(ds, exp, strict=True):
        _check(sample, e)
        assert sample.meta["file_name"] == e["stem"] + ".tif"
        assert sample.meta["no_target"] is False and sample.meta["dataset"] == "refsegrs"
    ids = [s.meta["sample_id"] for s in ds]
    assert len(set(ids)) == len(ids)


def test_refsegrs_threshold_is_strictly_above_50(refsegrs_fake):
    root, _ = refsegrs_fake
    s = RefSegRS(root, "val")[0]
    assert not s.mask[0:3].any()  # grey 40 -> background
    assert s.mask[-3:, 5:9].all()  # grey 60 -> foreground


def test_refsegrs_size_mismatch_is_an_error(tmp_path):
    load_generator("refsegrs").write(tmp_path, seed=0, mismatch=True)
    ds = RefSegRS(tmp_path, "test")
    with pytest.raises(SampleReadError, match=r"test001_tile\.tif.*48x48.*40x40"):
        ds[len(ds) - 1]


def test_refsegrs_missing_phrase_file_names_root(tmp_path):
    load_generator("refsegrs").write(tmp_path, seed=0)
    (tmp_path / "output_phrase_val.txt").unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        RefSegRS(tmp_path, "val")
    assert "output_phrase_val.txt" in str(err.value) and str(tmp_path) in str(err.value)
    with pytest.raises(ValueError, match="split"):
        RefSegRS(tmp_path, "testA")


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_risbench_masks_texts(risbench_fake, split):
    root, expected = risbench_fake
    ds = RISBench(root, split)
    exp = [e for e in expected if e["split"] == split and not e["skip"]]
    assert len(ds) == len(exp)
    for sample, e in zip(ds, exp, strict=True):
        _check(sample, e)
        assert sample.meta["file_name"] == e["file_name"]
        assert "  " in sample.text  # double spaces kept as written


def test_risbench_skip_list_train_only(risbench_fake):
    root, _ = risbench_fake
    assert RISBench(root, "train").num_skipped == 1
    assert len(RISBench(root, "train", skip_known_bad=False)) == 3


@pytest.mark.parametrize(
    "cls,fixture", [(RRSISD, "rrsisd_fake"), (RefSegRS, "refsegrs_fake"), (RISBench, "risbench_fake")]
)
def test_readers_pickle(cls, fixture, request):
    root, _ = request.getfixturevalue(fixture)
    ds = cls(root, "test")
    assert len(pickle.dumps(ds)) > 0  # serialisable (Ray, DataLoader workers)
    clone = copy.deepcopy(ds)  # rebuilt through the same __reduce_ex__ protocol pickle uses
    assert len(clone) == len(ds)
    np.testing.assert_array_equal(clone[0].mask, ds[0].mask)
    assert clone[0].text == ds[0].text
