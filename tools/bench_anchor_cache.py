"""Benchmark: 256-key lookups from a sharded anchor cache vs loading the whole cache.

    python tools/bench_anchor_cache.py --rows 1048576 --dim 768 --shard-size 65536 --dir /tmp/anchor-bench

Builds a synthetic float16 cache (random features, sha1 keys) with `ShardFolder`, then, each in
a fresh subprocess so RSS is its own: (a) open + lookups of 256 random keys through the index
and memory maps, cold (the cache's pages evicted with posix_fadvise DONTNEED, our files only)
and warm; (b) safe_open(...).get_slice(...)[rows] per shard for the same keys; (c) the old way:
load every shard (safetensors.torch.load_file) and a dict key -> row, then look up.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def rss() -> dict[str, float]:
    out = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmRSS", "RssAnon", "RssFile", "VmHWM")):
            key, value = line.split(":")
            out[key] = int(value.split()[0]) / 1024
    return out


def cache_rss_mib(folder: Path) -> float:
    """MiB of the cache's files resident in this process's maps (/proc/self/smaps)."""
    total, inside = 0, False
    prefix = str(folder.resolve())
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5:
            inside = fields[-1].startswith(prefix)
        elif inside and line.startswith("Rss:"):
            total += int(fields[1])
    return total / 1024


def evict(folder: Path) -> None:
    for path in folder.glob("*.safetensors"):
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)  # dirty pages (a cache just written) cannot be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def keys_of(rows: int) -> list[str]:
    from omniclip.anchors import content_key

    return [content_key(f"caption {i}") for i in range(rows)]


def build(folder: Path, rows: int, dim: int, shard_size: int) -> dict:
    from omniclip.anchor_shards import ShardFolder, digests

    keys = keys_of(rows)
    disk = ShardFolder(folder)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for s in range(0, rows, shard_size):
        feats = torch.randn(min(shard_size, rows - s), dim, generator=gen).half()
        disk.write(digests(keys[s:s + shard_size]), feats, f"bench-{s // shard_size:05d}")
    written = time.perf_counter() - start
    start = time.perf_counter()
    disk.merge_index()
    merged = time.perf_counter() - start
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    return {"write_s": written, "merge_index_s": merged, "bytes": size,
            "index_bytes": (folder / "index.safetensors").stat().st_size}


def queries(rows: int, batches: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.choice(rows, 256, replace=False) for _ in range(batches)]


def _timed(fn, qs, folder: Path) -> dict:
    """Median seconds of ``fn(q)``: cold (the cache's pages evicted before each batch) and warm
    (the same batch again)."""
    cold, warm = [], []
    for q in qs:
        evict(folder)
        start = time.perf_counter()
        fn(q)
        cold.append(time.perf_counter() - start)
        start = time.perf_counter()
        fn(q)
        warm.append(time.perf_counter() - start)
    return {"cold_lookup_median_s": float(np.median(cold)), "warm_lookup_median_s": float(np.median(warm))}


def run_sharded(folder: Path, rows: int, batches: int) -> dict:
    from omniclip.anchor_shards import ShardFolder, digests

    keys = keys_of(rows)
    qs = [digests([keys[i] for i in q]) for q in queries(rows, batches)]
    evict(folder)
    base = rss()
    start = time.perf_counter()
    disk = ShardFolder(folder)
    disk.refresh()
    opened = time.perf_counter() - start

    def lookup(q):
        found, feats = disk.read(q)
        assert found.all() and feats.shape[0] == 256

    out = {"open_s": opened, **_timed(lookup, qs, folder)}
    after = rss()
    after["cache_files_mapped"] = cache_rss_mib(folder)
    return {**out, "rss_before_mib": base, "rss_after_mib": after}


def run_get_slice(folder: Path, rows: int, batches: int) -> dict:
    """The same rows through safetensors' own reader (the index still finds them)."""
    from safetensors import safe_open

    from omniclip.anchor_shards import ShardFolder, digests

    keys = keys_of(rows)
    disk = ShardFolder(folder)
    located = [disk.locate(digests([keys[i] for i in q])) for q in queries(rows, batches)]

    def lookup(where):
        shard, row = where
        for s in np.unique(shard):
            with safe_open(str(disk.shards[s].path), framework="pt") as handle:
                handle.get_slice("features")[sorted(row[shard == s].tolist())].float()

    return _timed(lookup, located, folder)


def run_load_all(folder: Path, rows: int, batches: int) -> dict:
    from safetensors import safe_open

    from omniclip.anchor_shards import ShardFolder

    keys = keys_of(rows)
    evict(folder)
    base = rss()
    start = time.perf_counter()
    table = {}
    for shard in ShardFolder(folder).shards:
        with safe_open(str(shard.path), framework="pt") as handle:  # as the cache before shards did
            feats = handle.get_tensor("features")
        table.update(zip((bytes(k).hex() for k in shard.keys()), feats))
    loaded = time.perf_counter() - start
    times = []
    for q in queries(rows, batches):
        start = time.perf_counter()
        torch.stack([table[keys[i]] for i in q]).float()
        times.append(time.perf_counter() - start)
    after = rss()
    after["cache_files_mapped"] = cache_rss_mib(folder)
    return {"load_s": loaded, "lookup_median_s": float(np.median(times)), "rss_before_mib": base,
            "rss_after_mib": after}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=524288)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--shard-size", type=int, default=65536)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--dir", default="/tmp/anchor-bench")
    parser.add_argument("--part", default=None)
    args = parser.parse_args()
    folder = Path(args.dir)
    torch.set_num_threads(1)
    if args.part:
        fn = {"sharded": run_sharded, "get_slice": run_get_slice, "load_all": run_load_all}[args.part]
        print(json.dumps(fn(folder, args.rows, args.batches)))
        return
    shutil.rmtree(folder, ignore_errors=True)
    try:
        report = {"cache": build(folder, args.rows, args.dim, args.shard_size)}
        for part in ("sharded", "get_slice", "load_all"):
            out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--part", part], capture_output=True,
                                 text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            report[part] = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(report, indent=1))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
