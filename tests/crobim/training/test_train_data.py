"""Training input: references without pixels, negatives policy, and the decode stage matching the model's own
tokenisation and preprocessing."""

import numpy as np
import pytest
import torch

from crobim.training.config import DataSettings, TrainConfig, build_model_config
from crobim.training.data import (
    DecodeBatch,
    ReferenceSet,
    SampleSource,
    build_reference_set,
    decode_references,
    epoch_indices,
    to_dataset,
)


@pytest.fixture(scope="module")
def synrs_root(tmp_path_factory):
    from crobim.data.synrs.writer import write_dataset

    root = tmp_path_factory.mktemp("synrs-data")
    write_dataset(root, seed=1, counts={"train": 24, "val": 8}, size=64, overwrite=True)
    return root


def test_references_and_negatives(synrs_root):
    data = DataSettings(dataset="synrs", root=str(synrs_root))
    every = build_reference_set(data, "train", limit=None, keep_no_target=True)
    targets = build_reference_set(data, "train", limit=None, keep_no_target=False)
    assert len(every) == 24 and every.num_no_target > 0
    assert len(targets) == every.num_target and targets.num_no_target == 0
    assert every.source == SampleSource("synrs", str(synrs_root), "train", True)
    assert every.indices.dtype == np.int64 and list(every.indices) == list(range(24))
    assert list(targets.indices) == [i for i in range(24) if not every.no_target[i]]
    assert len(build_reference_set(data, "val", limit=3, keep_no_target=True)) == 3


def test_decode_matches_the_model(synrs_root):
    import crobim
    from crobim.data import SynRS
    from crobim.transforms import resize_mask

    cfg = TrainConfig(
        data=DataSettings(dataset="synrs", root=str(synrs_root)), model_overrides={"input.size": [64, 64]}
    )
    model_cfg = build_model_config(cfg)
    refs = build_reference_set(cfg.data, "val", limit=4, keep_no_target=True)
    batch = decode_references(refs, model_config_json=model_cfg.to_json())
    assert batch["image"].shape == (4, 3, 64, 64) and batch["image"].dtype == np.float32
    assert batch["input_ids"].shape == (4, model_cfg.text.max_len)
    model = crobim.build_model(model_cfg)
    reader = SynRS(synrs_root, "val")
    samples = [reader[i] for i in range(4)]
    expected = model.tokenize([s.text for s in samples])
    np.testing.assert_array_equal(batch["input_ids"], expected["input_ids"].numpy())
    np.testing.assert_array_equal(batch["attention_mask"], expected["attention_mask"].numpy())
    torch.testing.assert_close(torch.from_numpy(batch["image"]), model.preprocess([s.image for s in samples]))
    for i, s in enumerate(samples):
        np.testing.assert_array_equal(batch["mask"][i].astype(bool), resize_mask(s.mask, (64, 64)))
        assert bool(batch["no_target"][i]) == s.no_target
    assert DecodeBatch(refs.source, model_cfg.to_json()).max_len == model_cfg.text.max_len


def test_epoch_indices_give_every_world_size_the_same_global_batches():
    # Reader indices 100..122: the epoch order permutes positions and returns the reader's indices.
    refs = ReferenceSet(SampleSource("synrs", "/x", "train"), np.arange(100, 123), np.zeros(23, dtype=bool))

    def ids(epoch, rank, world, seed=7):
        out = epoch_indices(refs, epoch=epoch, seed=seed, step_rows=4, rank=rank, world_size=world)
        assert out.dtype == np.int64
        return [int(i) - 100 for i in out]

    one = ids(0, 0, 1)
    assert len(one) == 20 and len(set(one)) == 20  # 5 full steps of 4; the incomplete last step is dropped
    two = [ids(0, r, 2) for r in range(2)]
    four = [ids(0, r, 4) for r in range(4)]
    for step in range(5):
        global_batch = one[4 * step : 4 * step + 4]
        assert two[0][2 * step : 2 * step + 2] + two[1][2 * step : 2 * step + 2] == global_batch
        assert [four[r][step] for r in range(4)] == global_batch
    assert ids(1, 0, 1) != one and ids(0, 0, 1) == one  # a fresh, reproducible order per epoch
    assert ids(0, 0, 1, seed=None) == list(range(20))  # no seed: file order
    with pytest.raises(ValueError, match="multiple of world_size"):
        epoch_indices(refs, epoch=0, seed=0, step_rows=4, rank=0, world_size=3)


def test_to_dataset_streams_the_given_indices_in_order(ray_local, synrs_root):
    from ray.data import ExecutionOptions

    cfg = TrainConfig(
        data=DataSettings(dataset="synrs", root=str(synrs_root)), model_overrides={"input.size": [64, 64]}
    )
    model_json = build_model_config(cfg).to_json()
    refs = build_reference_set(cfg.data, "train", limit=None, keep_no_target=True)
    order = refs.indices[::-1][:10]
    ds = to_dataset(refs.source, order, model_config_json=model_json, rows_per_block=4, decode_batch_size=3)
    ds.context.execution_options = ExecutionOptions(preserve_order=True)
    got = ds.take_all()
    assert [int(r["index"]) for r in got] == [int(i) for i in order]
    expected = decode_references(
        ReferenceSet(refs.source, order, refs.no_target[::-1][:10]), model_config_json=model_json
    )
    for row, image, mask in zip(got, expected["image"], expected["mask"], strict=True):
        np.testing.assert_array_equal(row["image"], image)
        np.testing.assert_array_equal(row["mask"], mask)
    with pytest.raises(ValueError, match="no references"):
        to_dataset(refs.source, np.array([], dtype=np.int64), model_config_json=model_json)
