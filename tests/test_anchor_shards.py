"""The sharded anchor cache: values, bounded reads, crash leftovers, old caches, key collisions.

References are computed independently of the cache: features straight from the tower, shard
contents read back with `safetensors.safe_open`, and the format-1 shard written here the way the
code before the index wrote it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from omniclip import anchor_shards
from omniclip.anchor_shards import INDEX, AnchorCacheError, ShardFolder, digests
from omniclip.anchors import AnchorStore, _owned, content_key

TEXTS = [f"a photo of toy number {i}" for i in range(10)]


class _NoTowers:
    """A backbone whose towers raise: a lookup that should be a cache hit must never run one."""

    def __init__(self, backbone):
        self.name = backbone.name
        self._backbone = backbone

    def fingerprint(self, tower):
        return self._backbone.fingerprint(tower)

    def encode_text(self, texts):
        raise AssertionError(f"text tower ran for {texts[:2]}")

    def encode_image(self, images):
        raise AssertionError("image tower ran")


def _folder(store: AnchorStore, tower: str = "text") -> Path:
    return store.shards(tower).folder


def test_a_cache_in_many_shards_returns_exactly_the_tower_features(tmp_path, tiny_backbone):
    reference = tiny_backbone.encode_text(TEXTS)  # the same batch the store computes
    store = AnchorStore(tiny_backbone, tmp_path, shard_size=3)
    assert torch.equal(store.text(TEXTS), reference)
    store.flush()
    store.merge_index()
    shards = sorted(_folder(store).glob("shard-*.safetensors"))
    assert sorted(_rows(p) for p in shards) == [1, 3, 3, 3]  # 10 rows in shards of at most 3
    assert (_folder(store) / INDEX).is_file()

    fresh = AnchorStore(_NoTowers(tiny_backbone), tmp_path, shard_size=3)
    order = [7, 2, 9, 0, 2, 5]
    assert torch.equal(fresh.text([TEXTS[i] for i in order]), reference[order])  # bit-exact, float32
    assert fresh.hits["text"] == 6 and len(fresh) == 10


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_half_precision_cache_lives_in_its_own_folder_and_rounds_once(tmp_path, tiny_backbone, dtype):
    reference = tiny_backbone.encode_text(TEXTS[:4])
    half = AnchorStore(tiny_backbone, tmp_path, dtype=dtype)
    half.text(TEXTS[:4])
    half.flush()
    assert _folder(half).name.endswith(f"-{dtype}")
    with safe_open(str(next(_folder(half).glob("shard-*.safetensors"))), framework="pt") as handle:
        assert handle.get_tensor("features").dtype == getattr(torch, dtype)
    again = AnchorStore(_NoTowers(tiny_backbone), tmp_path, dtype=getattr(torch, dtype))
    assert torch.equal(again.text(TEXTS[:4]), reference.to(getattr(torch, dtype)).float())
    full = AnchorStore(tiny_backbone, tmp_path)  # float32 readers never get the rounded copy
    full.text(TEXTS[:4])
    assert full.misses["text"] == 4


def _synthetic_cache(folder: Path, shards: int, rows: int, dim: int) -> tuple[list[str], torch.Tensor]:
    """Random keys and features written as ``shards`` shards, then indexed."""
    generator = torch.Generator().manual_seed(0)
    keys = [content_key(f"caption {i}") for i in range(shards * rows)]
    features = torch.randn(shards * rows, dim, generator=generator)
    disk = ShardFolder(folder)
    for s in range(shards):
        disk.write(digests(keys[s * rows:(s + 1) * rows]), features[s * rows:(s + 1) * rows], f"t{s}")
    disk.merge_index()
    return keys, features


def _mapped_rss(path: Path) -> int:
    """Bytes of ``path`` resident in this process's memory maps (/proc/self/smaps), 0 if unmapped."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            inside = fields[-1] == str(path)
        elif inside and line.startswith("Rss:"):
            total += int(fields[1]) * 1024
    return total


def test_a_lookup_reads_only_the_rows_it_needs(tmp_path, monkeypatch):
    rows, dim = 8192, 512  # 4 shards of 16 MiB: 64 MiB on disk
    keys, features = _synthetic_cache(tmp_path, 4, rows, dim)
    read: list[tuple[str, list[int]]] = []
    real_read = anchor_shards.Shard.read

    def recording(shard, wanted):
        read.append((shard.name, sorted(int(r) for r in wanted)))
        return real_read(shard, wanted)

    monkeypatch.setattr(anchor_shards.Shard, "read", recording)
    disk = ShardFolder(tmp_path)
    wanted = [1 * rows + 5, 3 * rows + 1, 1 * rows + 4000, 3 * rows + rows - 1]
    query = [keys[i] for i in wanted] + [content_key("never cached")]
    found, got = disk.read(digests(query))
    assert found.tolist() == [True] * 4 + [False]
    assert torch.equal(got, features[wanted])
    names = [p.name for p in sorted(tmp_path.glob("shard-*.safetensors"), key=lambda p: p.name.split("-")[1])]
    assert sorted(read) == [(names[1], [5, 4000]), (names[3], [1, rows - 1])]  # two shards of four
    assert disk.rows_read == {names[1]: 2, names[3]: 2}
    # Independently of the hook, the kernel's view: untouched shards are not even mapped, and of
    # the two touched ones (16 MiB each) only pages around the wanted rows are resident.
    resident = {name: _mapped_rss(tmp_path / name) for name in names}
    assert resident[names[0]] == resident[names[2]] == 0, resident
    assert all(0 < resident[names[i]] < 6 * 2**20 for i in (1, 3)), resident
    for path in tmp_path.glob("shard-*"):  # 64 MiB: do not leave it in pytest's kept tmp folders
        path.unlink()


def test_leftover_temporary_files_and_unindexed_shards(tmp_path, tiny_backbone, caplog):
    store = AnchorStore(tiny_backbone, tmp_path)
    reference = torch.cat([store.text(TEXTS[:3]), tiny_backbone.encode_text(TEXTS[3:5])])
    store.flush()
    store.merge_index()
    store.text(TEXTS[3:5])  # written after the merge, as training does: in no index yet
    store.flush()
    folder = _folder(store)
    (folder / ".shard-r0-p1-deadbeef.safetensors.tmp").write_bytes(b"half a shard")  # a crashed writer
    with caplog.at_level(logging.INFO, logger="omniclip.anchor_shards"):
        fresh = AnchorStore(_NoTowers(tiny_backbone), tmp_path)
        assert torch.equal(fresh.text(TEXTS[:5]), reference)
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "ignoring 1 unfinished write(s) (.shard-r0-p1-deadbeef.safetensors.tmp)" in messages
    assert f"1 shard(s) not in {INDEX} yet" in messages

    # A listed shard that disappeared makes the index stale: it is ignored, the rest still reads.
    listed = json.loads(_metadata(folder / INDEX)["shards"])
    (folder / listed[0][0]).unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="omniclip.anchor_shards"):
        stale = AnchorStore(tiny_backbone, tmp_path)
        assert torch.equal(stale.text(TEXTS[3:5]), reference[3:5])
        assert stale.tower_calls["text"] == 0
    assert f"{INDEX} lists shard(s) missing or changed on disk ({listed[0][0]})" in caplog.text

    (folder / "shard-junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(AnchorCacheError, match=r"shard-junk.safetensors: not a safetensors file .*delete it"):
        AnchorStore(tiny_backbone, tmp_path).text(TEXTS[:1])


def test_a_cache_written_before_the_index_still_reads(tmp_path, tiny_backbone):
    old = AnchorStore(tiny_backbone, tmp_path)  # only for the folder name
    folder = old.shards("text").folder
    folder.mkdir(parents=True)
    reference = tiny_backbone.encode_text(TEXTS[:3])
    # Format 1, as `flush` wrote it before the index: float32 features, hex keys in the metadata.
    save_file({"features": reference.contiguous()}, str(folder / "shard-0123456789ab.safetensors"),
              metadata={"keys": json.dumps([content_key(t) for t in TEXTS[:3]])})

    store = AnchorStore(tiny_backbone, tmp_path)
    got = store.text(TEXTS[:4])
    assert torch.equal(got[:3], reference)  # read from the old shard
    assert torch.equal(got[3:], tiny_backbone.encode_text(TEXTS[3:4])) and store.misses["text"] == 1
    store.flush()
    store.merge_index()  # indexes the old shard with the new one
    index = _metadata(folder / INDEX)
    assert sorted(name for name, _, _ in json.loads(index["shards"]))[0] == "shard-0123456789ab.safetensors"
    fresh = AnchorStore(_NoTowers(tiny_backbone), tmp_path)
    assert torch.equal(fresh.text(TEXTS[:4][::-1]), store.text(TEXTS[:4])[[3, 2, 1, 0]])


def test_a_key_in_two_shards_is_indexed_once_and_prefix_collisions_are_told_apart(tmp_path):
    disk = ShardFolder(tmp_path)
    key = np.frombuffer(bytes(range(20)), np.uint8)[None]
    twin = key.copy()
    twin[0, 19] ^= 0xFF  # same first 8 bytes (the index's uint64 hash), another key
    disk.write(key, torch.ones(1, 4), "a")
    found, _ = ShardFolder(tmp_path).read(twin)
    assert not found.any()  # the 64-bit hash matches one row, the full key does not
    disk.write(np.concatenate([twin, key]), torch.stack([torch.full((4,), 2.0), torch.full((4,), 3.0)]), "b")
    disk.merge_index()
    with safe_open(str(tmp_path / INDEX), framework="np") as handle:
        assert handle.get_tensor("hash").tolist() == [int.from_bytes(bytes(range(8)), "big")] * 2  # key once
    fresh = ShardFolder(tmp_path)
    assert len(fresh) == 2
    found, got = fresh.read(np.concatenate([twin, key, twin]))
    assert found.all()
    first = sorted(tmp_path.glob("shard-*.safetensors"))[0].name  # the first shard by name wins
    expect_key = 1.0 if first.startswith("shard-a-") else 3.0
    assert got[:, 0].tolist() == [2.0, expect_key, 2.0]


def test_survey_ownership_goes_to_the_lowest_item_index_then_the_lowest_rank(monkeypatch):
    from omniclip import distributed

    a, b, c = (content_key(x) for x in "abc")
    # Rank 0 saw a at item 4 and c at 2; rank 1 saw a at item 1, b at 3 and c at 2.
    ranks = [{a: (4, "a"), c: (2, "c")}, {a: (1, "a"), b: (3, "b"), c: (2, "c")}]
    gathered = [(digests(list(r)), np.array([v[0] for v in r.values()], np.int64)) for r in ranks]
    monkeypatch.setattr(distributed, "all_gather_object", lambda obj: gathered)
    assert _owned(ranks[0], 0) == [c]  # the tie at item 2 goes to rank 0
    assert _owned(ranks[1], 1) == [a, b]  # by item index


def test_writes_are_visible_to_the_writer_and_rows_keep_their_keys(tmp_path, tiny_backbone):
    store = AnchorStore(tiny_backbone, tmp_path, shard_size=4)
    first = store.text(TEXTS)
    store.flush(full_only=True)  # two full shards; two rows stay pending
    assert sorted(_rows(p) for p in _folder(store).glob("shard-*.safetensors")) == [4, 4]
    assert len(store) == 10
    store.flush()
    on_disk = {}
    for shard in _folder(store).glob("shard-*.safetensors"):
        with safe_open(str(shard), framework="pt") as handle:
            for key, row in zip(handle.get_tensor("keys"), handle.get_tensor("features")):
                on_disk[bytes(key.tolist()).hex()] = row
    assert sorted(on_disk) == sorted(content_key(t) for t in TEXTS)
    for text, feature in zip(TEXTS, first):
        assert torch.equal(on_disk[content_key(text)], feature)
    # Flushed features leave memory (a long precompute stays bounded) and are read back from disk.
    store.backbone = _NoTowers(tiny_backbone)
    assert torch.equal(store.text(TEXTS), first)
    assert sum(store.shards("text").rows_read.values()) == 10


def _rows(path: Path) -> int:
    with safe_open(str(path), framework="pt") as handle:
        return handle.get_slice("features").get_shape()[0]


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="np") as handle:
        return handle.metadata()


def test_flush_indexes_the_folder_once_enough_shards_are_unindexed(tmp_path, tiny_backbone, monkeypatch):
    from omniclip import anchors

    monkeypatch.setattr(anchors, "MERGE_AFTER", 3)
    store = AnchorStore(tiny_backbone, tmp_path)
    for i in range(2):
        store.text([TEXTS[i]])
        store.flush()
    assert not (_folder(store) / INDEX).exists()  # two unindexed shards: below the threshold
    store.text([TEXTS[2]])
    store.flush()
    listed = json.loads(_metadata(_folder(store) / INDEX)["shards"])
    assert sorted(n for n, _, _ in listed) == sorted(p.name for p in _folder(store).glob("shard-*.safetensors"))
    assert len(listed) == 3 and store.shards("text").unindexed == 0
