"""tools/prepare_{kinetics,ucf101,hmdb51,ssv2}.py on mini trees in the published layouts: the lists
they write read back through the ``list`` dataset with the labels of the native parsers; unreadable
videos are reported and left out; re-encoding shrinks the short side and keeps every frame."""

from __future__ import annotations

import csv
import shutil
import zipfile

import torch

from omniclip.modalities.video.datasets import build_dataset
from omniclip.modalities.video.io import probe
from tests.modalities.pointcloud.test_prepare import load_tool
from tests.modalities.video import layouts, media
from tests.modalities.video.layouts import CLIP, FRAMES


def read_list(path) -> list[tuple[str, int]]:
    return [(p, int(label)) for p, label in (line.rsplit(" ", 1) for line in path.read_text().splitlines())]


def listed(out, list_file: str, split: str = "test"):
    return build_dataset({"name": "list", "root": str(out), "video_dir": "videos", "list_file": list_file,
                          "classes": "classes.csv", **CLIP}, split)


def test_kinetics_lists_share_the_training_classes_and_leave_out_unreadable_clips(tmp_path, capsys):
    src = layouts.make_kinetics(tmp_path / "k400")
    with (src / "validate.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["label", "youtube_id", "time_start", "time_end", "split"],
                                      ["air drumming", "valClip0001", 3, 13, "val"]])
    layouts.video(src / "val" / "valClip0001_000003_000013.mp4")
    broken = src / "train" / "abseiling" / "-3B32lodo2M_000059_000069.mp4"
    broken.write_bytes(broken.read_bytes()[:200])
    out = tmp_path / "out"
    assert load_tool("prepare_kinetics").main([str(src), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "train: 1 clips of the CSV were never downloaded (first: zzzNotThere_000005_000015)" in printed
    assert "3 classes; train: 2, val: 1; 1 unreadable" in printed
    assert read_list(out / "train.txt") == [
        ("train/air drumming/--nQbRBEz2s_000104_000114.mp4", 1),
        ("train/passing American football (in game)/ab_cd-EF12_000000_000010.mp4", 2)]
    assert read_list(out / "val.txt") == [("val/valClip0001_000003_000013.mp4", 1)]  # training's id, not 0
    assert (out / "unreadable.txt").read_text().startswith("train/abseiling/-3B32lodo2M_000059_000069.mp4\t")
    ours = listed(out, "train.txt")
    assert ours.class_names == ["abseiling", "air drumming", "passing American football (in game)"]
    native = build_dataset({"name": "kinetics", "root": str(src), "csv_file": "train.csv", "video_dir": "train",
                            **CLIP}, "test")
    assert torch.equal(ours[0]["inputs"], native[1]["inputs"]) and ours[0]["label"] == native[1]["label"] == 1


def test_reencoding_shrinks_the_short_side_and_keeps_every_frame(tmp_path, capsys):
    src = layouts.make_kinetics(tmp_path / "k400", per_class=False)
    out = tmp_path / "out"
    assert load_tool("prepare_kinetics").main([str(src), str(out), "--short-side", "32", "--classes", "k400"]) == 0
    assert "400 classes; train: 3" in capsys.readouterr().out
    entries = read_list(out / "train.txt")
    assert [label for _, label in entries] == [0, 1, 208]
    first = out / "videos" / entries[0][0]
    assert not (out / "videos").is_symlink() and first.suffix == ".mp4"
    info = probe(first)
    assert (info.width, info.height, info.num_frames) == (42, 32, FRAMES)  # 64x48 -> short side 32, even width
    frames = media.all_frames(first)
    assert [media.frame_index(f, FRAMES) for f in frames] == list(range(FRAMES))


def test_ucf101_from_the_split_zip(tmp_path, capsys):
    src = layouts.make_ucf101(tmp_path / "ucf")
    with zipfile.ZipFile(src / "UCF101TrainTestSplits-RecognitionTask.zip", "w") as archive:
        for path in sorted((src / "ucfTrainTestlist").iterdir()):
            archive.write(path, f"ucfTrainTestlist/{path.name}")
    shutil.rmtree(src / "ucfTrainTestlist")
    out = tmp_path / "out"
    assert load_tool("prepare_ucf101").main([str(src), str(out), "--folds", "1"]) == 0
    assert "3 classes; train_split1: 3, test_split1: 2" in capsys.readouterr().out
    assert read_list(out / "train_split1.txt") == [("Archery/v_Archery_g08_c01.avi", 1),
                                                    ("YoYo/v_YoYo_g09_c02.avi", 2),
                                                    ("ApplyEyeMakeup/v_ApplyEyeMakeup_g10_c03.avi", 0)]
    assert read_list(out / "test_split1.txt") == [("YoYo/v_YoYo_g01_c01.avi", 2),
                                                   ("ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c04.avi", 0)]
    assert listed(out, "test_split1.txt").class_names == layouts.UCF_CLASSES
    assert (out / "videos").is_symlink() and (out / "unreadable.txt").read_text() == ""


def test_hmdb51_all_three_folds(tmp_path, capsys):
    src = layouts.make_hmdb51(tmp_path / "hmdb", video_dir="hmdb51_org")
    out = tmp_path / "out"
    assert load_tool("prepare_hmdb51").main([str(src), str(out)]) == 0
    assert "2 classes; train_split1: 2, test_split1: 2, train_split2: 2" in capsys.readouterr().out
    assert read_list(out / "test_split3.txt") == [("brush_hair/Blonde_brush_hair_f_nm_np1_fr_med_1.avi", 0),
                                                   ("ride_bike/Bike_riding_ride_bike_f_cm_np1_ba_med_0.avi", 1)]
    data = listed(out, "train_split2.txt", "train")
    assert data.class_names == ["brush hair", "ride bike"] and data[1]["text"] == "a photo of a ride bike."


def test_ssv2_train_and_validation(tmp_path, capsys):
    src = layouts.make_ssv2(tmp_path / "ssv2")
    out = tmp_path / "out"
    assert load_tool("prepare_ssv2").main([str(src), str(out)]) == 0
    assert "3 classes; train: 2, val: 1" in capsys.readouterr().out
    assert read_list(out / "train.txt") == [("78687.webm", 0), ("42326.webm", 2)]
    assert read_list(out / "val.txt") == [("74225.webm", 1)]
    assert listed(out, "val.txt")[0]["inputs"].shape == (1, 4, 3, 32, 32)


def test_wrong_sources_fail_with_a_message(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert load_tool("prepare_kinetics").main([str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
    assert "no Kinetics CSV in" in capsys.readouterr().err
    assert load_tool("prepare_ucf101").main([str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
    assert "neither ucfTrainTestlist/classInd.txt nor UCF101TrainTestSplits" in capsys.readouterr().err
    assert load_tool("prepare_hmdb51").main([str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
    assert "no videos/ or hmdb51_org/ folder" in capsys.readouterr().err
