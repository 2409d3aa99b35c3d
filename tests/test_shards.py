"""WebDataset shards (omniclip.shards): written from generated data, read back exactly; split
between ranks and workers; resumed at the right position; errors that name the file."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pytest
import torch

from omniclip.anchors import AnchorStore
from omniclip.data import SeededDataset
from omniclip.losses import LogitScale
from omniclip.model import build_lens_model
from omniclip.objective import ContrastiveObjective
from omniclip.errors import ConfigError, SampleError
from omniclip.modality import get_modality
from omniclip.shards import (
    INDEX_NAME,
    EpochPlan,
    ShardDataset,
    ShardError,
    ShardLoader,
    build_shard_dataset,
    read_shard,
    resolve_shards,
    write_shards,
)
from tests.modalities.pointcloud.test_datasets import identity_transform, make_modelnet40, make_ulip_shapenet
from omniclip.trainer import Trainer, TrainerConfig
from tests.test_trainer import DROPOUT, assert_same_weights
from tests.toy_modality import ToyDataset, ToyModality

pytest.importorskip("webdataset")


# ------------------------------------------------------------------------------ a test-only codec


class ToyRecords(ToyDataset):
    """The toy dataset with the record / sample split the shard writer needs."""

    def record(self, index: int) -> int:
        if index in self.bad:
            raise SampleError(f"toy/{index}.bin", "corrupt on purpose")
        return index


class ToyCodec:
    """Shard members of a toy item: its index (and a tag to corrupt); decode is the toy's own
    ``__getitem__``, so a toy sample from shards equals the map-style one under the same key."""

    modality = "toy"

    def __init__(self, size: int, bad: tuple[int, ...] = (), decode_bad: tuple[int, ...] = ()):
        self.dataset = ToyRecords(size, 10, 32, bad)
        self.decode_bad = set(decode_bad)

    def encode(self, record: int) -> dict[str, bytes]:
        return {"json": json.dumps({"index": record}).encode()}

    def decode(self, members: Mapping[str, bytes], where: str) -> dict[str, Any]:
        try:
            index = json.loads(members["json"])["index"]
        except (ValueError, KeyError) as err:
            raise SampleError(where, f"unreadable json member ({err})") from None
        if index in self.decode_bad:
            raise SampleError(where, "bad on purpose")
        return self.dataset[index]


def toy_shards(tmp_path: Path, size: int, per_shard: int, decode_bad: tuple[int, ...] = (), **options: Any
               ) -> ShardDataset:
    codec = ToyCodec(size, decode_bad=decode_bad)
    folder = tmp_path / "shards"
    if not (folder / INDEX_NAME).exists():  # several trainers of one test share the shards
        write_shards(codec.dataset, codec, folder, dataset_cfg={"size": size}, samples_per_shard=per_shard,
                     progress=False)
    index, paths = resolve_shards(str(folder))
    return ShardDataset(index, paths, codec, **{"shuffle_buffer": 3, **options})


def epoch_keys(loader: ShardLoader) -> list[tuple[int, int]]:
    return [tuple(k) for batch in loader for k in batch["sample_keys"]]


def batch_values(batches: list[dict[str, Any]]) -> list[tuple[list, torch.Tensor]]:
    return [(batch["sample_keys"], batch["inputs"]) for batch in batches]


# ------------------------------------------------------------------------------ point clouds: exact read-back


def test_pointcloud_shards_read_back_exactly_the_map_style_samples(tmp_path):
    """ULIP triplets (clouds, 60 rendered views, templated captions), train split with
    augmentation: the sample under key (epoch, index) is the map-style dataset's, tensor for tensor."""
    root = make_ulip_shapenet(tmp_path / "ulip", per_synset=3, points=48)
    modality = get_modality("pointcloud")
    cfg = {"name": "ulip_shapenet", "root": str(root), "num_points": 32, "min_points": 8, "sampling": "fps",
           "augment": {"jitter": [0.01, 0.05]}}
    dataset = modality.build_dataset(cfg, "train", image_transform=identity_transform)
    codec = modality.shard_codec(cfg, "train", identity_transform)
    index, skips = write_shards(dataset, codec, tmp_path / "shards", dataset_cfg=cfg, samples_per_shard=2,
                                progress=False)
    assert [s.count for s in index.shards] == [2, 2, 2] and index.total == len(dataset) == 6 and not skips.skipped
    with tarfile.open(tmp_path / "shards" / "shard-000000.tar") as tar:
        names = tar.getnames()
    assert "000000000.npy" in names and "000000000.json" in names and "000000000.img59.png" in names

    source = build_shard_dataset(modality, {"shards": str(tmp_path / "shards"), "shuffle_buffer": 4}, "train",
                                 image_transform=identity_transform)
    loader = ShardLoader(source, modality.collate, batch_size=2, seed=5)
    reference = SeededDataset(dataset, seed=5)
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        seen = []
        for batch in loader:
            for row, key in enumerate(batch["sample_keys"]):
                expected = reference[key]
                assert torch.equal(batch["inputs"][row], expected["inputs"]), key
                assert batch["texts"][row] == expected["text"]
                assert batch["image_keys"][row] == expected["image_key"]
                assert torch.equal(batch["images"][row], expected["image"])
                seen.append(key)
        assert sorted(seen) == [(epoch, i) for i in range(6)]  # every sample once


def test_modelnet_txt_clouds_are_written_as_npy_and_read_back_exactly(tmp_path):
    root = make_modelnet40(tmp_path / "mn40", per_split=5, points=40)
    modality = get_modality("pointcloud")
    cfg = {"name": "modelnet40", "root": str(root), "num_points": 24, "min_points": 8}
    dataset = modality.build_dataset(cfg, "train")
    write_shards(dataset, modality.shard_codec(cfg, "train"), tmp_path / "shards", dataset_cfg=cfg,
                 samples_per_shard=3, progress=False)
    source = build_shard_dataset(modality, {"shards": str(tmp_path / "shards" / "shard-{000000..000001}.tar")},
                                 "train")
    loader = ShardLoader(source, modality.collate, batch_size=5, seed=1)
    reference = SeededDataset(dataset, seed=1)
    batches = list(loader)
    assert sum(len(b["sample_keys"]) for b in batches) == 5
    for batch in batches:
        for row, key in enumerate(batch["sample_keys"]):
            assert torch.equal(batch["inputs"][row], reference[key]["inputs"])
            assert int(batch["labels"][row]) == reference[key]["label"]


def _read_back(tmp_path: Path, modality_name: str, cfg: dict, per_shard: int, seed: int = 0):
    """Write the map-style dataset of ``cfg`` to shards; yield (shard batch row, map-style sample)."""
    modality = get_modality(modality_name)
    dataset = modality.build_dataset(cfg, "train")
    index, skips = write_shards(dataset, modality.shard_codec(cfg, "train"), tmp_path / "shards", dataset_cfg=cfg,
                                samples_per_shard=per_shard, progress=False)
    assert index.total == len(dataset) and not skips.skipped
    loader = ShardLoader(build_shard_dataset(modality, {"shards": str(tmp_path / "shards")}, "train"),
                         modality.collate, batch_size=2, seed=seed)
    reference = SeededDataset(dataset, seed=seed)
    for batch in loader:
        for row, key in enumerate(batch["sample_keys"]):
            yield {k: v[row] for k, v in batch.items() if k not in ("skipped", "sample_keys")}, reference[key]


def test_audio_shards_hold_flac_and_read_back_exactly(tmp_path):
    """ESC-50 PCM-16 WAVs are re-encoded as FLAC; clips (random offsets) and templated captions
    under each key equal the map-style dataset's."""
    from tests.modalities.audio.test_datasets import make_esc50

    root = make_esc50(tmp_path / "esc50")
    cfg = {"name": "esc50", "root": str(root), "clip_seconds": 0.5}
    pairs = list(_read_back(tmp_path, "audio", cfg, per_shard=4))
    assert len(pairs) == 6
    for got, expected in pairs:
        assert torch.equal(got["inputs"], expected["inputs"]) and got["texts"] == expected["text"]
        assert got["paths"] == expected["path"]
    names = [name for _, members in read_shard(tmp_path / "shards" / "shard-000000.tar") for name in members]
    assert names.count("flac") == 4 and "wav" not in names


def test_audio_shards_refuse_mixup_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"config `mixup`: per-sample mixup draws its partner"):
        get_modality("audio").shard_codec({"mixup": 0.5}, "train")


def test_video_shards_hold_the_original_file_and_read_back_exactly(tmp_path):
    pytest.importorskip("av")
    from tests.modalities.video.layouts import CLIP, make_training_list

    root = make_training_list(tmp_path / "videos", num_videos=3, frames=8)
    cfg = {"name": "list", "root": str(root), "list_file": "train.txt", "video_dir": "videos", "classes": "k400",
           **CLIP}
    pairs = list(_read_back(tmp_path, "video", cfg, per_shard=2))
    assert len(pairs) == 3
    for got, expected in pairs:
        assert torch.equal(got["inputs"], expected["inputs"]) and got["texts"] == expected["text"]
        assert int(got["labels"]) == expected["label"]
    members = dict(read_shard(tmp_path / "shards" / "shard-000000.tar"))
    assert members[0]["mp4"] == (root / "videos" / "clip_0.mp4").read_bytes()


# ------------------------------------------------------------------------------ splitting between ranks and workers


@pytest.mark.parametrize("resample", [False, True])
def test_two_ranks_by_two_workers_see_disjoint_samples_that_cover_the_epoch(tmp_path, resample):
    """5 shards of 7, 7, 7, 7, 2 samples: uneven shards and a remainder; each worker of each rank
    reads its own shards (real worker processes), together every sample once per epoch."""
    options = {"train_num_samples": 24} if resample else {}
    source = toy_shards(tmp_path, 30, 7, **options)
    per_rank = []
    for rank in (0, 1):
        loader = ShardLoader(source, ToyModality().collate, batch_size=3, seed=2, rank=rank, world_size=2,
                             num_workers=2)
        loader.set_epoch(3)
        keys = epoch_keys(loader)
        assert len(keys) == len(set(keys))
        assert all(epoch == 3 for epoch, _ in keys)
        per_rank.append({k for _, k in keys})
    assert not per_rank[0] & per_rank[1]
    if resample:
        assert len(per_rank[0]) == len(per_rank[1]) == 12  # 24 // (2 x 2) per worker
    else:
        assert per_rank[0] | per_rank[1] == set(range(30))
        # the shards were split, not the samples: each rank holds whole shards
        shards_of = [{k // 7 for k in ids} for ids in per_rank]
        assert not shards_of[0] & shards_of[1] and shards_of[0] | shards_of[1] == set(range(5))


def test_epochs_reshuffle_and_the_order_is_a_pure_function_of_the_seed(tmp_path):
    source = toy_shards(tmp_path, 20, 4)
    def order(seed: int, epoch: int) -> list:
        loader = ShardLoader(source, ToyModality().collate, batch_size=4, seed=seed, num_workers=0)
        loader.set_epoch(epoch)
        return epoch_keys(loader)
    assert order(0, 0) == order(0, 0)
    assert [k for _, k in order(0, 0)] != [k for _, k in order(0, 1)]
    assert [k for _, k in order(0, 0)] != [k for _, k in order(1, 0)]
    assert sorted(k for _, k in order(0, 1)) == list(range(20))
    # the shards themselves are reordered per epoch, not only the samples inside the shuffle buffer
    plan = ShardLoader(source, ToyModality().collate, batch_size=4, seed=0, num_workers=0).plan
    orders = {tuple(plan(epoch).slot_shards(0)) for epoch in range(4)}
    assert len(orders) > 1 and all(sorted(o) == list(range(5)) for o in orders)


def test_too_few_shards_for_the_workers_is_a_clear_error(tmp_path):
    source = toy_shards(tmp_path, 6, 3)  # 2 shards
    with pytest.raises(ConfigError, match=r"data.train.shards.*2 shard\(s\) cannot feed 2 rank\(s\) x 2 worker"):
        ShardLoader(source, ToyModality().collate, batch_size=2, world_size=2, rank=0, num_workers=2)


# ------------------------------------------------------------------------------ resume position


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("num_workers,resample", [(0, False), (2, False), pytest.param(3, False, marks=pytest.mark.slow),
                                                  (2, True)])
def test_resumed_loader_continues_exactly_where_the_first_stopped(tmp_path, num_workers, resample):
    """Shards of 5, 5, 5, 5, 5, 3 samples, batches of 2: the workers' batch counts differ, so
    the round-robin's tail (one worker already done) is crossed by the resumed part."""
    options = {"train_num_samples": 21} if resample else {}
    source = toy_shards(tmp_path, 28, 5, **options)
    collate = ToyModality().collate
    full = ShardLoader(source, collate, batch_size=2, seed=4, num_workers=num_workers)
    full.set_epoch(1)
    uninterrupted = list(full)
    assert len(uninterrupted) == len(full)
    for consumed in (1, 4, len(uninterrupted) - 2):
        first = ShardLoader(source, collate, batch_size=2, seed=4, num_workers=num_workers)
        first.set_epoch(1)
        stream = iter(first)
        for _ in range(consumed):
            next(stream)
            first.advance()
        state = first.state_dict()
        del stream
        resumed = ShardLoader(source, collate, batch_size=2, seed=4, num_workers=num_workers)
        resumed.load_state_dict(state)
        resumed.set_epoch(1)  # as the trainer does: keeps the position
        assert len(resumed) == len(uninterrupted) - consumed
        rest = list(resumed)
        expected = uninterrupted[consumed:]
        assert [b["sample_keys"] for b in rest] == [b["sample_keys"] for b in expected]
        for a, b in zip(rest, expected):
            assert torch.equal(a["inputs"], b["inputs"])


def test_skipped_batches_are_read_but_not_decoded(tmp_path):
    source = toy_shards(tmp_path, 12, 4)
    calls = []
    decode = source.codec.decode
    source.codec.decode = lambda members, where: calls.append(where) or decode(members, where)
    loader = ShardLoader(source, ToyModality().collate, batch_size=2, seed=0)
    loader.load_state_dict({**loader.state_dict(), "consumed": 4})
    assert sum(len(b["sample_keys"]) for b in loader) == 4
    assert len(calls) == 4


def test_state_from_another_layout_is_refused_naming_what_changed(tmp_path):
    source = toy_shards(tmp_path, 12, 3)
    state = ShardLoader(source, ToyModality().collate, batch_size=2, num_workers=2).state_dict()
    with pytest.raises(ValueError, match=r"workers=2.*this run has workers=1"):
        ShardLoader(source, ToyModality().collate, batch_size=2, num_workers=0).load_state_dict(state)


def test_a_sample_is_rebuilt_from_its_key(tmp_path):
    source = toy_shards(tmp_path, 12, 5, train_num_samples=8)
    loader = ShardLoader(source, ToyModality().collate, batch_size=4, seed=3)
    loader.set_epoch(2)
    batch = next(iter(loader))
    rebuilt = loader.collate_fn([loader.dataset[tuple(k)] for k in batch["sample_keys"]])
    assert rebuilt["sample_keys"] == batch["sample_keys"] and torch.equal(rebuilt["inputs"], batch["inputs"])


# ------------------------------------------------------------------------------ errors


def test_missing_shard_file_is_named(tmp_path):
    toy_shards(tmp_path, 9, 3)
    (tmp_path / "shards" / "shard-000001.tar").unlink()
    with pytest.raises(ConfigError, match=r"shards.*shard .*shard-000001\.tar not found \(listed in .*index\.json\)"):
        resolve_shards(str(tmp_path / "shards"))


def test_index_that_does_not_match_a_shard_is_an_error_naming_it(tmp_path):
    toy_shards(tmp_path, 9, 3)
    path = tmp_path / "shards" / INDEX_NAME
    data = json.loads(path.read_text())
    data["shards"][2]["count"] = 4
    data["total"] = 10
    path.write_text(json.dumps(data))
    index, paths = resolve_shards(str(tmp_path / "shards"))
    source = ShardDataset(index, paths, ToyCodec(9), shuffle_buffer=0, shard_shuffle=False)
    with pytest.raises(ShardError, match=r"shard-000002\.tar: holds 3 samples, its index\.json entry says 4"):
        list(ShardLoader(source, ToyModality().collate, batch_size=3))
    with pytest.raises(ConfigError, match=r"not listed in"):
        resolve_shards(str(tmp_path / "shards" / "shard-00000{0,7}.tar"))


def _corrupt_member(shard: Path, key: str, suffix: str = "json") -> None:
    """Rewrite ``shard`` with member ``<key>.<suffix>`` replaced by garbage."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        for member, data in members:
            if member.name == f"{key}.{suffix}":
                data = b"\x00not json"
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def test_a_corrupt_member_follows_the_skip_policy(tmp_path):
    source = toy_shards(tmp_path, 8, 4, shuffle_buffer=0, shard_shuffle=False)
    _corrupt_member(tmp_path / "shards" / "shard-000001.tar", "000000005")
    skipping = ShardLoader(source, ToyModality().collate, batch_size=4, policy="skip")
    batches = list(skipping)
    assert [k for _, k in batches[1]["sample_keys"]] == [4, 6, 7]
    assert len(batches[1]["skipped"]) == 1
    where, problem = batches[1]["skipped"][0]
    assert where.endswith("shard-000001.tar:000000005") and problem.startswith("unreadable json member")
    with pytest.raises(SampleError, match=r"shard-000001\.tar:000000005.*unreadable json member"):
        list(ShardLoader(source, ToyModality().collate, batch_size=4, policy="stop"))


def test_a_corrupt_point_cloud_member_is_a_counted_skip_naming_the_shard(tmp_path):
    root = make_modelnet40(tmp_path / "mn40", per_split=4, points=40)
    modality = get_modality("pointcloud")
    cfg = {"name": "modelnet40", "root": str(root), "num_points": 24, "min_points": 8}
    write_shards(modality.build_dataset(cfg, "train"), modality.shard_codec(cfg, "train"), tmp_path / "shards",
                 dataset_cfg=cfg, samples_per_shard=4, progress=False)
    _corrupt_member(tmp_path / "shards" / "shard-000000.tar", "000000002", "npy")
    source = build_shard_dataset(modality, {"shards": str(tmp_path / "shards")}, "train")
    batches = list(ShardLoader(source, modality.collate, batch_size=4, policy="skip"))
    assert sorted(k for b in batches for _, k in b["sample_keys"]) == [0, 1, 3]
    ((where, problem),) = [s for b in batches for s in b["skipped"]]
    assert where.endswith("shard-000000.tar:000000002") and problem.startswith("unreadable shard member")


def test_writer_counts_bad_samples_and_writes_atomically(tmp_path):
    codec = ToyCodec(10, bad=(3, 4))
    index, skips = write_shards(codec.dataset, codec, tmp_path / "s", dataset_cfg={}, samples_per_shard=4,
                                progress=False)
    assert [s.count for s in index.shards] == [4, 4] and index.total == 8
    assert [(s.first, s.last) for s in index.shards] == [(0, 5), (6, 9)]
    assert [path for path, _ in skips.skipped] == ["toy/3.bin", "toy/4.bin"]
    assert skips.summary() == "skipped 2 of 10 samples (20.00%): 2 × corrupt on purpose"
    assert [i for i, _ in read_shard(tmp_path / "s" / "shard-000000.tar")] == [0, 1, 2, 5]
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["index.json", "shard-000000.tar",
                                                                  "shard-000001.tar"]
    with pytest.raises(ConfigError, match=r"already holds shards"):
        write_shards(codec.dataset, codec, tmp_path / "s", dataset_cfg={}, progress=False)


def test_max_size_closes_shards_before_they_pass_it(tmp_path):
    codec = ToyCodec(10)
    one = len(codec.encode(0)["json"])
    index, _ = write_shards(codec.dataset, codec, tmp_path / "s", dataset_cfg={}, samples_per_shard=None,
                            max_size=3 * one, progress=False)
    assert [s.count for s in index.shards] == [3, 3, 3, 1]


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_epoch_plan_round_robin_matches_the_dataloader(tmp_path):
    """The resume arithmetic rests on DataLoader's in-order round-robin over workers that run
    out at different times; check the plan's order against what real workers yield."""
    source = toy_shards(tmp_path, 23, 3, shuffle_buffer=0)  # 8 shards: 3 x 7 + 2
    loader = ShardLoader(source, ToyModality().collate, batch_size=2, seed=9, num_workers=3)
    plan = loader.plan()
    slot_of = {}
    for slot in range(3):
        for _, item, _, _ in plan.stream(slot):
            slot_of[item] = slot
    got = [slot_of[batch["sample_keys"][0][1]] for batch in loader]
    assert got == plan.batch_order() and len(set(plan.batch_counts())) > 1
    assert isinstance(plan, EpochPlan)


# ------------------------------------------------------------------------------ the trainer on shards


def shard_trainer(backbone, out_dir: Path, shards_dir: Path, decode_bad=(), **overrides) -> Trainer:
    """tests/test_trainer.py's make_trainer, with the toy data read from shards."""
    torch.manual_seed(0)
    modality = ToyModality()
    model, model_cfg = build_lens_model(modality, backbone.trunk(unlocked_blocks=1), lens_cfg=DROPOUT)
    objective = ContrastiveObjective(AnchorStore(backbone), LogitScale(backbone.logit_scale, learnable=True))
    cfg = TrainerConfig(**{"max_steps": 7, "batch_size": 4, "lr": 1e-3, "warmup_steps": 2, "num_workers": 0,
                           "checkpoint_every": 4, "log_every": 1, "progress_bar": False, "tensorboard": False,
                           **overrides})
    source = toy_shards(shards_dir, 13, 5, decode_bad=decode_bad, shuffle_buffer=3)
    return Trainer(cfg, model, objective, source, modality.collate, out_dir, run_config={"model": model_cfg})


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_run_from_shards_resumes_exactly_like_an_uninterrupted_one(tmp_path, tiny_backbone, num_workers):
    """The map-style exact-resume setting (tests/test_trainer.py: lens dropout, 7 steps, stop at
    4) on 13 toy samples in shards of 5, 5, 3: the workers' short last batches are topped up
    from the next ones, so the checkpoint at step 4 holds a partial batch rebuilt by key."""
    opts = {"num_workers": num_workers}
    full_trainer = shard_trainer(tiny_backbone, tmp_path / "full", tmp_path, **opts)
    full = full_trainer.fit()
    part = shard_trainer(tiny_backbone, tmp_path / "killed", tmp_path, **opts)
    first = part.fit(stop_at=4)
    assert part._carry is not None  # the checkpoint holds a partial batch
    torch.manual_seed(999)
    resumed = shard_trainer(tiny_backbone, tmp_path / "killed", tmp_path, **opts)
    second = resumed.fit()
    assert second.step == 7 and len(first.losses) == 4 and len(second.losses) == 3
    assert first.losses + second.losses == pytest.approx(full.losses, abs=1e-6)
    assert_same_weights(resumed, full_trainer)


def test_shards_with_bad_samples_train_full_batches_and_resume_exactly(tmp_path, tiny_backbone):
    opts = {"bad_samples": "skip", "max_skip_fraction": 0.5, "max_steps": 6, "checkpoint_every": 100,
            "decode_bad": (1, 2, 6)}
    full_trainer = shard_trainer(tiny_backbone, tmp_path / "full", tmp_path, **opts)
    full = full_trainer.fit()
    assert full.skipped_samples > 0 and len(full.losses) == 6
    part = shard_trainer(tiny_backbone, tmp_path / "part", tmp_path, **opts)
    first = part.fit(stop_at=3)
    part.save()
    second = shard_trainer(tiny_backbone, tmp_path / "part", tmp_path, **opts).fit()
    assert first.losses + second.losses == pytest.approx(full.losses, abs=1e-6)
    assert second.skipped_samples == full.skipped_samples


def test_a_checkpoint_from_other_workers_is_refused_naming_the_change(tmp_path, tiny_backbone):
    shard_trainer(tiny_backbone, tmp_path / "run", tmp_path, num_workers=0).fit(stop_at=2)
    with pytest.raises(ConfigError, match=r"trainer.resume.*workers=1.*this run has workers=2"):
        shard_trainer(tiny_backbone, tmp_path / "run", tmp_path, num_workers=2).fit()


# ------------------------------------------------------------------------------ the commands


def test_omniclip_shard_then_omniclip_train_from_the_shards(tmp_path, capsys, monkeypatch):
    """``omniclip-shard`` writes a recipe's dataset; ``data=shards data.train.shards=DIR`` trains
    from it (the debug recipe, 2 steps), the source options coming from the index."""
    from hydra import compose, initialize_config_module

    from omniclip import anchors, shard, train

    root = make_ulip_shapenet(tmp_path / "ulip", per_synset=4, points=48)
    out = tmp_path / "shards"
    shard.main(["experiment=pointcloud/vitlens_l_shapenet", f"data.train.root={root}", "data.train.num_points=32",
                "data.train.min_points=8", "--out", str(out), "--samples-per-shard", "3", "--no-progress"])
    assert "wrote 8 pointcloud samples in 3 shard(s)" in capsys.readouterr().out
    index = json.loads((out / INDEX_NAME).read_text())
    assert [s["count"] for s in index["shards"]] == [3, 3, 2] and index["dataset"]["num_points"] == 32
    common = ["experiment=pointcloud/vitlens_l_shapenet", "debug=default", "modality.tokenizer.num_groups=8",
              "modality.tokenizer.group_size=8", "trainer.max_steps=2", "eval=none", f"output_dir={tmp_path / 'run'}",
              "trainer.seed=3"]
    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        cfg = compose("train", [*common, "data=shards", f"data.train.shards={out}",
                                f"anchors.cache_dir={tmp_path / 'anchors'}"])
        from_files = compose("train", [*common, f"data.train.root={root}", "data.train.num_points=32",
                                       "data.train.min_points=8", f"anchors.cache_dir={tmp_path / 'anchors-files'}"])
    # omniclip-anchors reads the shards as training will: the same captions and images as from the files
    computed = anchors.precompute(cfg)
    assert computed == anchors.precompute(from_files) and computed["text"] > 0 and computed["image"] > 0
    # Training's first epoch draws the captions and views omniclip-anchors cached (same seed): the
    # towers never run (they raise if they do).
    from tests.test_anchor_processes import _disable_towers

    real = train.build_backbone
    monkeypatch.setattr(train, "build_backbone", lambda cfg, device: _disable_towers(real(cfg, device)))
    trainer, _, _ = train.build_trainer(cfg)
    assert isinstance(trainer.loader, ShardLoader) and trainer.loader.source.codec.opts.num_points == 32
    result = trainer.fit()
    assert result.step == 2 and all(loss == loss for loss in result.losses)


def test_omniclip_shard_help_names_its_options(capsys):
    from omniclip import shard

    shard.main(["--help"])
    text = capsys.readouterr().out
    assert "--samples-per-shard" in text and "--max-size" in text and "experiment=NAME" in text


@pytest.mark.slow
def test_bench_shards_measures_loader_and_step_side_by_side():
    """tools/bench_shards.py at tiny sizes: every rate measured, the printed ratio is loader / step."""
    from tests.tools import load_tool

    bench = load_tool("bench_shards")
    result = bench.run(samples=8, per_shard=2, batch_size=2, workers=2, num_points=32, backbone_name="omniclip-tiny",
                       steps=1, repeats=1, num_groups=4, group_size=8)
    assert all(result[k] > 0 for k in ("write", "loader", "step", "pipeline"))
    assert result["ratio"] == pytest.approx(result["loader"] / result["step"])
    text = bench.format_result(result, (1.0,), (2.0,))
    assert f"loader / step = {result['ratio']:.2f}" in text and "load average 1.00 before, 2.00 after" in text
