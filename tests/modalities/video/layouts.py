"""Mini copies of the published dataset layouts, written with PyAV (shared by the dataset and the
prepare-tool tests). Every video holds ``FRAMES`` frames whose pictures identify their index."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tests.modalities.video import media

FRAMES = 24
#: Small clips for fast tests: 4 frames, 32-px crops of a 40-px short side.
CLIP = {"num_frames": 4, "size": 32, "short_side": 40}


def video(path: Path, codec: str = "libx264", frames: int = FRAMES) -> Path:
    fmt = {".avi": "avi", ".webm": "webm"}.get(path.suffix)
    return media.write_video(path, frames, codec=codec, fmt=fmt)


def make_list(root: Path) -> Path:
    """``videos/`` + ``train.txt`` (``path label``) + ``classes.csv`` (``id,name``) + a frame folder."""
    video(root / "videos" / "a.mp4")
    video(root / "videos" / "sub" / "b.mp4")
    media.write_frame_folder(root / "videos" / "c_frames", FRAMES)
    (root / "train.txt").write_text("a.mp4 2\nsub/b.mp4 0\n\n# a comment\nc_frames 1\n")
    (root / "classes.csv").write_text("id,name\n0,archery\n1,bowling\n2,\"playing cello\"\n")
    return root


def make_training_list(root: Path, num_videos: int = 8, num_classes: int = 4, frames: int = 12) -> Path:
    """``videos/clip_<i>.mp4`` + ``train.txt`` with labels ``i % num_classes``: the Kinetics-style
    ``path label`` list that training recipes read (``data.train.root=<root>``)."""
    lines = []
    for index in range(num_videos):
        video(root / "videos" / f"clip_{index}.mp4", frames=frames)
        lines.append(f"clip_{index}.mp4 {index % num_classes}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return root


KINETICS_ROWS = [  # label, youtube_id, start, end, split; the last clip was never downloaded
    ("abseiling", "-3B32lodo2M", 59, 69, "train"),
    ("air drumming", "--nQbRBEz2s", 104, 114, "train"),
    ("passing American football (in game)", "ab_cd-EF12", 0, 10, "train"),
    ("air drumming", "zzzNotThere", 5, 15, "train"),
]


def make_kinetics(root: Path, per_class: bool = True) -> Path:
    """``train.csv`` with the official columns; clips ``train/<label>/<ytid>_<start:06d>_<end:06d>.mp4``
    (or flat in ``train/``)."""
    (root / "train").mkdir(parents=True, exist_ok=True)
    with (root / "train.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        for label, ytid, start, end, split in KINETICS_ROWS:
            writer.writerow([label, ytid, start, end, split])
    for label, ytid, start, end, _ in KINETICS_ROWS[:3]:
        folder = root / "train" / label if per_class else root / "train"
        video(folder / f"{ytid}_{start:06d}_{end:06d}.mp4")
    return root


UCF_CLASSES = ["ApplyEyeMakeup", "Archery", "YoYo"]


def make_ucf101(root: Path, lists_dir: str = "ucfTrainTestlist") -> Path:
    lists = root / lists_dir
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "classInd.txt").write_text("".join(f"{i} {c}\r\n" for i, c in enumerate(UCF_CLASSES, 1)))
    train = [("Archery", "g08_c01"), ("YoYo", "g09_c02"), ("ApplyEyeMakeup", "g10_c03")]
    test = [("YoYo", "g01_c01"), ("ApplyEyeMakeup", "g02_c04")]
    for fold in (1, 2, 3):  # the same videos in each split here; the real ones differ
        (lists / f"trainlist0{fold}.txt").write_text(
            "".join(f"{c}/v_{c}_{g}.avi {UCF_CLASSES.index(c) + 1}\r\n" for c, g in train))
        (lists / f"testlist0{fold}.txt").write_text("".join(f"{c}/v_{c}_{g}.avi\r\n" for c, g in test))
    for c, g in train + test:
        video(root / "UCF-101" / c / f"v_{c}_{g}.avi", codec="mpeg4")
    return root


HMDB_SPLIT = {  # class -> [(file, 1 train | 2 test | 0 unused)]
    "brush_hair": [("April_09_brush_hair_u_nm_np1_ba_goo_0.avi", 1), ("Blonde_brush_hair_f_nm_np1_fr_med_1.avi", 2),
                   ("Brushing_hair_u_nm_np1_le_bad_2.avi", 0)],
    "ride_bike": [("Bike_riding_ride_bike_f_cm_np1_ba_med_0.avi", 2), ("Downhill_ride_bike_f_cm_np1_le_med_3.avi", 1)],
}


def make_hmdb51(root: Path, splits_dir: str = "testTrainMulti_7030_splits", video_dir: str = "videos") -> Path:
    lists = root / splits_dir
    lists.mkdir(parents=True, exist_ok=True)
    for cls, rows in HMDB_SPLIT.items():
        for fold in (1, 2, 3):
            (lists / f"{cls}_test_split{fold}.txt").write_text("".join(f"{name} {mark} \n" for name, mark in rows))
        for name, _ in rows:
            video(root / video_dir / cls / name, codec="mpeg4")
    return root


SSV2_LABELS = {"Holding something next to something": "0", "Pushing something from left to right": "1",
               "Putting something on a surface": "2"}


def make_ssv2(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "something-something-v2-labels.json").write_text(json.dumps(SSV2_LABELS))
    train = [{"id": "78687", "label": "holding potato next to vicks vaporub bottle",
              "template": "Holding [something] next to [something]", "placeholders": ["potato", "vicks vaporub bottle"]},
             {"id": "42326", "label": "putting a cup on a surface", "template": "Putting [something] on a surface",
              "placeholders": ["a cup"]}]
    validation = [{"id": "74225", "label": "pushing a pen from left to right",
                   "template": "Pushing [something] from left to right", "placeholders": ["a pen"]}]
    (root / "something-something-v2-train.json").write_text(json.dumps(train))
    (root / "something-something-v2-validation.json").write_text(json.dumps(validation))
    (root / "something-something-v2-test.json").write_text(json.dumps([{"id": "1420"}]))
    for entry in train + validation:
        video(root / "20bn-something-something-v2" / f"{entry['id']}.webm", codec="libvpx")
    return root


def make_folder(root: Path) -> Path:
    video(root / "train" / "juggling" / "x.mp4")
    media.write_frame_folder(root / "train" / "juggling" / "y", FRAMES)
    video(root / "train" / "tai_chi" / "z.webm", codec="libvpx")
    (root / "train" / "tai_chi" / "notes.txt").write_text("not a video")
    video(root / "val" / "tai_chi" / "w.mp4")
    return root
