"""Video datasets on mini copies of the published layouts: exact labels and class names per format,
training and evaluation samples, bad items as SampleErrors (also in workers, under both policies),
multi-view averaging through evaluation, per-sample seeding, the shared clip pipeline on bytes."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from omniclip.data import ResumableSampler, SafeDataset, SeededDataset, Skipped, collate_skipping
from omniclip.errors import ConfigError, SampleError
from omniclip.evaluation import collect_embeddings
from omniclip.modalities.video import collate_views
from omniclip.modalities.video.datasets import build_dataset, build_pipeline
from omniclip.modalities.video.loader import GpuBatch, build_video_loader
from tests.modalities.video import layouts, media
from tests.modalities.video.layouts import CLIP, FRAMES


def labels_of(dataset) -> list[tuple[str, int]]:
    return [(item.path, item.label) for item in dataset.items]


def test_path_label_list_with_an_id_name_csv(tmp_path):
    root = layouts.make_list(tmp_path / "list")
    data = build_dataset({"name": "list", "root": str(root), "list_file": "train.txt", "video_dir": "videos",
                          "classes": "classes.csv", **CLIP}, "train")
    assert labels_of(data) == [("a.mp4", 2), ("sub/b.mp4", 0), ("c_frames", 1)]
    assert data.class_names == ["archery", "bowling", "playing cello"]
    sample = data[0]
    assert sample["inputs"].shape == (4, 3, 32, 32) and sample["inputs"].dtype == torch.float32
    assert sample["label"] == 2 and sample["text"] == "a photo of a playing cello."
    assert sample["path"] == str(root / "videos" / "a.mp4")
    frames = data[2]  # the frame folder reads through the same pipeline
    assert frames["inputs"].shape == (4, 3, 32, 32) and frames["label"] == 1
    shipped = build_dataset({"name": "list", "root": str(root), "list_file": "train.txt", "classes": "k400"}, "val")
    assert len(shipped.class_names) == 400 and shipped.class_names[2] == "answering questions"


def test_list_lines_must_be_path_label(tmp_path):
    (tmp_path / "bad.txt").write_text("a.mp4 2\njust_a_path.mp4\n")
    with pytest.raises(ConfigError, match=r"config `list_file`: .*bad.txt line 2: expected `path label`"):
        build_dataset({"name": "list", "root": str(tmp_path), "list_file": "bad.txt"}, "train")


def test_kinetics_csv_and_file_names(tmp_path, caplog):
    root = layouts.make_kinetics(tmp_path / "k400")
    data = build_dataset({"name": "kinetics", "root": str(root), "classes": "k400", **CLIP}, "train")
    names = data.class_names
    assert [(names[i], p.rsplit("/", 1)[-1]) for p, i in labels_of(data)] == [
        ("abseiling", "-3B32lodo2M_000059_000069.mp4"), ("air drumming", "--nQbRBEz2s_000104_000114.mp4"),
        ("passing American football (in game)", "ab_cd-EF12_000000_000010.mp4")]
    assert [label for _, label in labels_of(data)] == [0, 1, 208]  # k400 ids (line 209 of k400.txt)
    assert data.missing == ["zzzNotThere_000005_000015"] and "1 of 4 clips" in caplog.text
    assert data[2]["label"] == 208 and data[2]["text"] == "a photo of a passing American football (in game)."
    flat = layouts.make_kinetics(tmp_path / "flat", per_class=False)
    own = build_dataset({"name": "kinetics", "root": str(flat)}, "train")  # classes: the CSV's sorted labels
    assert own.class_names == ["abseiling", "air drumming", "passing American football (in game)"]
    assert [label for _, label in labels_of(own)] == [0, 1, 2]
    with pytest.raises(ConfigError, match=r"config `classes`: .*label `abseiling` is not a class of ucf101"):
        build_dataset({"name": "kinetics", "root": str(root), "classes": "ucf101"}, "train")


def test_ucf101_splits(tmp_path):
    root = layouts.make_ucf101(tmp_path / "ucf")
    train = build_dataset({"name": "ucf101", "root": str(root), **CLIP}, "train")
    assert labels_of(train) == [("Archery/v_Archery_g08_c01.avi", 1), ("YoYo/v_YoYo_g09_c02.avi", 2),
                                ("ApplyEyeMakeup/v_ApplyEyeMakeup_g10_c03.avi", 0)]
    assert train.class_names == layouts.UCF_CLASSES
    test = build_dataset({"name": "ucf101", "root": str(root), "fold": 1, **CLIP}, "test")
    assert labels_of(test) == [("YoYo/v_YoYo_g01_c01.avi", 2), ("ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c04.avi", 0)]
    sample = test[1]
    assert sample["inputs"].shape == (1, 4, 3, 32, 32) and sample["group_id"] == 1 and sample["label"] == 0
    (root / "ucfTrainTestlist" / "trainlist01.txt").write_text("Archery/v_Archery_g08_c01.avi 3\n")
    with pytest.raises(ConfigError, match=r"line 1: label 3 is not the id of Archery"):
        build_dataset({"name": "ucf101", "root": str(root)}, "train")
    with pytest.raises(ConfigError, match=r"config `fold`: UCF101 has splits 1, 2, 3; got 4"):
        build_dataset({"name": "ucf101", "root": str(root), "fold": 4}, "train")


def test_hmdb51_split_marks(tmp_path):
    root = layouts.make_hmdb51(tmp_path / "hmdb")
    train = build_dataset({"name": "hmdb51", "root": str(root), **CLIP}, "train")
    assert labels_of(train) == [("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi", 0),
                                ("ride_bike/Downhill_ride_bike_f_cm_np1_le_med_3.avi", 1)]
    assert train.class_names == ["brush hair", "ride bike"]
    test = build_dataset({"name": "hmdb51", "root": str(root), "fold": 2}, "val")
    assert labels_of(test) == [("brush_hair/Blonde_brush_hair_f_nm_np1_fr_med_1.avi", 0),
                               ("ride_bike/Bike_riding_ride_bike_f_cm_np1_ba_med_0.avi", 1)]
    assert train[1]["inputs"].shape == (4, 3, 32, 32)


def test_ssv2_templates_become_classes(tmp_path):
    root = layouts.make_ssv2(tmp_path / "ssv2")
    train = build_dataset({"name": "ssv2", "root": str(root), **CLIP}, "train")
    assert labels_of(train) == [("78687.webm", 0), ("42326.webm", 2)]
    assert train.class_names == list(layouts.SSV2_LABELS)
    assert train[0]["text"] == "Holding something next to something"  # the class itself is the caption
    val = build_dataset({"name": "ssv2", "root": str(root), **CLIP}, "test")  # test labels are withheld
    assert labels_of(val) == [("74225.webm", 1)] and val[0]["inputs"].shape == (1, 4, 3, 32, 32)


def test_folder_per_class(tmp_path):
    root = layouts.make_folder(tmp_path / "folder")
    train = build_dataset({"name": "folder", "root": str(root), **CLIP}, "train")
    assert labels_of(train) == [("juggling/x.mp4", 0), ("juggling/y", 0), ("tai_chi/z.webm", 1)]
    assert train.class_names == ["juggling", "tai chi"]
    assert [train[i]["inputs"].shape for i in range(3)] == [(4, 3, 32, 32)] * 3
    val = build_dataset({"name": "folder", "root": str(root)}, "val")
    assert labels_of(val) == [("tai_chi/w.mp4", 0)]


def test_unknown_names_and_options(tmp_path):
    with pytest.raises(ConfigError, match=r"config `name`: unknown video dataset `k400`"):
        build_dataset({"name": "k400", "root": str(tmp_path)}, "train")
    with pytest.raises(ConfigError, match=r"config `frames`: unknown option for video dataset `folder`"):
        build_dataset({"name": "folder", "root": str(tmp_path), "frames": 8}, "train")
    with pytest.raises(ConfigError, match=r"config `root`: folder .*nowhere does not exist"):
        build_dataset({"name": "folder", "root": str(tmp_path / "nowhere")}, "train")
    with pytest.raises(ConfigError, match=r"config `sampling`: unknown sampling `random`"):
        build_dataset({"name": "list", "root": str(tmp_path), "sampling": "random"}, "train")


# ------------------------------------------------------------------------------ evaluation views


def test_multi_view_samples_flatten_and_average_per_video(tmp_path):
    root = layouts.make_list(tmp_path / "list")
    data = build_dataset({"name": "list", "root": str(root), "list_file": "train.txt", "video_dir": "videos",
                          "classes": "classes.csv", "num_clips": 2, "num_crops": 3, "normalize": "none", **CLIP},
                         "test")
    sample = data[0]
    assert sample["inputs"].shape == (6, 4, 3, 32, 32) and sample["inputs"].dtype == torch.uint8
    # view order: temporal view 0's three crops, then view 1's; view 0 takes earlier frames
    first = [media.frame_index(sample["inputs"][v, 0].permute(1, 2, 0).numpy(), FRAMES) for v in (0, 3)]
    assert first == [1, 4]  # TSN segments of 6 frames, offsets 6 * 1/4 and 6 * 3/4
    loader = DataLoader(data, batch_size=2, collate_fn=collate_views)
    batch = next(iter(loader))
    assert batch["inputs"].shape == (12, 4, 3, 32, 32) and batch["group_ids"] == [0] * 6 + [1] * 6
    assert batch["labels"].tolist() == [2] * 6 + [0] * 6
    views = torch.randn(18, 5)

    def model(b):  # a fixed row per view, shifted by its video's group id
        return views[: b["inputs"].shape[0]] + torch.tensor(b["group_ids"])[:, None].float()

    embeddings, labels = collect_embeddings(model, DataLoader(data, batch_size=3, collate_fn=collate_views), "cpu")
    assert embeddings.shape == (3, 5) and labels.tolist() == [2, 0, 1]
    expected = torch.nn.functional.normalize(views[:6].mean(0), dim=0)
    torch.testing.assert_close(embeddings[0], expected)


# ------------------------------------------------------------------------------------ bad items


def bad_list(tmp_path):
    root = tmp_path / "bad"
    layouts.video(root / "good.mp4")
    media.write_video(root / "short.mp4", 3)
    (root / "corrupt.mp4").write_bytes(b"\x00" * 4096)
    (root / "list.txt").write_text("good.mp4 0\nmissing.mp4 1\ngood.mp4 7\n../outside.mp4 0\n/etc/passwd 0\n"
                                   "short.mp4 1\ncorrupt.mp4 0\n")
    (root / "names.txt").write_text("cat\ndog\n")
    return build_dataset({"name": "list", "root": str(root), "list_file": "list.txt", "classes": "names.txt",
                          "short_clip": "error", **CLIP}, "train")


@pytest.mark.parametrize("index, file, problem", [
    (1, "missing.mp4", r"file not found \(list.txt line 2\)"),
    (2, "good.mp4", r"label 7 is outside the 2 classes \(list.txt line 3\)"),
    (3, "../outside.mp4", r"climbs out of the folder with '\.\.'.*must stay inside the dataset root.*list.txt line 4"),
    (4, "/etc/passwd", r"is absolute.*list.txt line 5"),
    (5, "short.mp4", r"clip too short: the clip needs 4 frames but the video holds 3"),
    (6, "corrupt.mp4", r"cannot open as a video"),
])
def test_bad_items_are_sample_errors_naming_the_file(tmp_path, index, file, problem):
    data = bad_list(tmp_path)
    with pytest.raises(SampleError, match=problem) as caught:
        data[index]
    assert caught.value.path.endswith(file.lstrip("/"))
    assert data[0]["label"] == 0


def test_skip_policy_counts_bad_items_in_worker_processes(tmp_path):
    data = bad_list(tmp_path)
    loader = DataLoader(SafeDataset(data, "skip"), batch_size=7, num_workers=1,
                        collate_fn=collate_skipping(collate_views))
    (batch,) = list(loader)
    assert batch["inputs"].shape == (1, 4, 3, 32, 32) and batch["labels"].tolist() == [0]
    assert [path.rsplit("/", 1)[-1] for path, _ in batch["skipped"]] == [
        "missing.mp4", "good.mp4", "outside.mp4", "passwd", "short.mp4", "corrupt.mp4"]
    stop = DataLoader(SafeDataset(data, "stop"), batch_size=7, num_workers=1, collate_fn=collate_views)
    with pytest.raises(Exception, match=r"missing.mp4: file not found"):
        list(stop)
    assert isinstance(SafeDataset(data, "skip")[1], Skipped)


# ----------------------------------------------------------------------- seeding and loading


def test_augmentation_is_seeded_per_sample_whatever_the_workers(tmp_path):
    root = layouts.make_list(tmp_path / "list")
    data = build_dataset({"name": "list", "root": str(root), "list_file": "train.txt", "video_dir": "videos",
                          "classes": "classes.csv", "normalize": "none", **CLIP}, "train")
    seeded = SeededDataset(data, seed=3)
    assert torch.equal(seeded[(0, 1)]["inputs"], seeded[(0, 1)]["inputs"])
    assert not torch.equal(seeded[(0, 1)]["inputs"], seeded[(1, 1)]["inputs"])

    def run(workers: int) -> list[torch.Tensor]:
        sampler = ResumableSampler(len(data), seed=3, batch_size=3)
        loader = build_video_loader(data, collate_views, 3, sampler, workers, seed=3, prefetch_factor=2,
                                    pin_memory=False)
        return [b["inputs"] for b in loader]

    inline, two = run(0), run(2)
    assert len(inline) == 1 and inline[0].shape == (3, 4, 3, 32, 32) and inline[0].dtype == torch.uint8
    assert torch.equal(inline[0], two[0])
    on_device = GpuBatch("cpu", "clip")({"inputs": inline[0], "labels": torch.zeros(3)})
    assert on_device["inputs"].dtype == torch.float32 and on_device["inputs"].shape == (3, 4, 3, 32, 32)


def test_the_clip_pipeline_reads_bytes_as_a_shard_reader_would(tmp_path):
    path = layouts.video(tmp_path / "v.mp4")
    pipeline = build_pipeline({**CLIP, "num_clips": 2, "backend": "pyav"}, train=False)
    from_file = pipeline(path)
    assert torch.equal(pipeline(path.read_bytes(), name="shard-0/v.mp4"), from_file)
    assert from_file.shape == (2, 4, 3, 32, 32)
    with pytest.raises(SampleError, match=r"<in-memory video>: cannot open as a video"):
        pipeline(b"garbage" * 100)


def test_paths_outside_the_root_are_read_only_when_allowed(tmp_path):
    outside = layouts.video(tmp_path / "elsewhere" / "v.mp4")
    root = tmp_path / "root"
    root.mkdir()
    (root / "list.txt").write_text(f"../elsewhere/v.mp4 0\n{outside} 0\n")
    cfg = {"name": "list", "root": str(root), "list_file": "list.txt", "num_classes": 1, **CLIP}
    with pytest.raises(SampleError, match=r"allow_outside_root: true"):
        build_dataset(cfg, "train")[0]
    allowed = build_dataset({**cfg, "allow_outside_root": True}, "train")
    assert allowed[0]["inputs"].shape == allowed[1]["inputs"].shape == (4, 3, 32, 32)
