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
    refs = ReferenceSet(
        SampleSource("synrs", "/x", "train"),
        np.arange(100, 123),
        np.zeros(23, dtype=bool),
        np.arange(23) // 3,
    )

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


def test_image_groups_follow_the_scenes(synrs_root):
    from crobim.data import SynRS

    data = DataSettings(dataset="synrs", root=str(synrs_root))
    refs = build_reference_set(data, "train", limit=None, keep_no_target=True)
    reader = SynRS(synrs_root, "train")
    scenes = [reader.record(i)["synrs"]["scene"] for i in range(len(reader))]
    first_seen = list(dict.fromkeys(scenes))
    assert refs.image_groups.tolist() == [first_seen.index(s) for s in scenes]
    assert len(set(scenes)) < len(scenes)  # several expressions per scene
    # samples of one scene really show the same pixels, and the decoded rows say so
    batch = decode_references(refs, model_config_json=build_model_config(TrainConfig(data=data)).to_json())
    for a in range(len(refs)):
        for b in range(a + 1, len(refs)):
            same = scenes[a] == scenes[b]
            assert (batch["image_key"][a] == batch["image_key"][b]) == same
            if same:
                np.testing.assert_array_equal(batch["image"][a], batch["image"][b])


def test_epoch_indices_grouped_by_image():
    groups = np.repeat(np.arange(10), [3, 2, 3, 1, 3, 3, 2, 3, 3, 1])  # 24 references of 10 images
    refs = ReferenceSet(SampleSource("synrs", "/x", "train"), np.arange(24), np.zeros(24, dtype=bool), groups)

    def ids(epoch, rank, world):
        out = epoch_indices(
            refs, epoch=epoch, seed=3, step_rows=8, rank=rank, world_size=world, group_by_image=True
        )
        return [int(i) for i in out]

    one = ids(0, 0, 1)
    assert sorted(one) == list(range(24))
    runs = [groups[one[0]]] + [
        groups[b] for a, b in zip(one, one[1:], strict=False) if groups[a] != groups[b]
    ]
    assert len(runs) == 10 and runs != sorted(
        runs
    )  # each image once, its references together, images shuffled
    assert all(
        one.index(i) < one.index(j)
        for i, j in zip(range(23), range(1, 24), strict=True)
        if groups[i] == groups[j]
    )
    assert ids(1, 0, 1) != one and ids(0, 0, 1) == one
    two = [ids(0, r, 2) for r in range(2)]
    for step in range(3):
        assert (
            two[0][4 * step : 4 * step + 4] + two[1][4 * step : 4 * step + 4] == one[8 * step : 8 * step + 8]
        )


def test_forward_batch_encodes_each_image_once(synrs_root):
    import crobim
    from crobim.scoring import forward_batch

    data = DataSettings(dataset="synrs", root=str(synrs_root))
    model_cfg = build_model_config(TrainConfig(data=data, model_overrides={"input.size": [64, 64]}))
    refs = build_reference_set(data, "train", limit=9, keep_no_target=True)
    batch = {
        k: torch.from_numpy(v)
        for k, v in decode_references(refs, model_config_json=model_cfg.to_json()).items()
    }
    torch.manual_seed(0)
    model = crobim.build_model(model_cfg).eval()
    seen = []
    model.backbone.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    with torch.no_grad():
        shared = forward_batch(model, batch)
        plain = model(batch["image"], batch["input_ids"], batch["attention_mask"])
    assert seen == [len(np.unique(refs.image_groups)), 9] and seen[0] < 9
    torch.testing.assert_close(shared.logits, plain.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(shared.presence_logit, plain.presence_logit, atol=1e-5, rtol=0)


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
        ReferenceSet(refs.source, order, refs.no_target[::-1][:10], refs.image_groups[::-1][:10]),
        model_config_json=model_json,
    )
    for row, image, mask in zip(got, expected["image"], expected["mask"], strict=True):
        np.testing.assert_array_equal(row["image"], image)
        np.testing.assert_array_equal(row["mask"], mask)
    with pytest.raises(ValueError, match="no references"):
        to_dataset(refs.source, np.array([], dtype=np.int64), model_config_json=model_json)
