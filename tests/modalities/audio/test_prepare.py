"""tools/prepare_{esc50,audioset,clotho}.py on small files in the published layouts, generated here."""

from __future__ import annotations

import shutil

import torch

from omniclip.modalities.audio.datasets import build_dataset
from tests.modalities.audio.test_datasets import make_audioset, make_clotho, make_esc50
from tests.modalities.pointcloud.test_prepare import load_tool, zip_tree


def test_esc50_from_the_github_zip(tmp_path, capsys):
    tool = load_tool("prepare_esc50")
    src = make_esc50(tmp_path / "src")
    (src / "README.md").write_text("ESC-50")
    archive = zip_tree(src, tmp_path / "ESC-50-master.zip", "ESC-50-master")
    assert tool.main([str(archive), str(tmp_path / "out")]) == 0
    assert "6 clips (fold 1: 2, fold 2: 2, fold 3: 1, fold 4: 1)" in capsys.readouterr().out
    assert not (tmp_path / "out" / "README.md").exists()
    ours, theirs = (build_dataset({"name": "esc50", "root": str(r), "clip_seconds": 0.5}, "test")
                    for r in (tmp_path / "out", src))
    assert torch.equal(ours[4]["inputs"], theirs[4]["inputs"]) and ours[4]["label"] == theirs[4]["label"] == 41


def test_esc50_reports_missing_clips_and_wrong_archives(tmp_path, capsys):
    tool = load_tool("prepare_esc50")
    src = make_esc50(tmp_path / "src")
    (src / "audio" / "3-1004-A-41.wav").unlink()
    assert tool.main([str(src), str(tmp_path / "out")]) == 2
    assert "names 1 clips missing from audio/ (first: 3-1004-A-41.wav)" in capsys.readouterr().err
    assert tool.main([str(tmp_path / "nothing.zip"), str(tmp_path / "out")]) == 2
    assert "nothing.zip not found; download https://github.com/karolpiczak/ESC-50" in capsys.readouterr().err


def test_audioset_manifest_lists_available_clips_and_reports_missing(tmp_path, capsys):
    tool = load_tool("prepare_audioset")
    root = make_audioset(tmp_path / "as")
    assert tool.main([str(root), "--segments", "eval_segments.csv"]) == 0
    out = capsys.readouterr().out
    assert "eval_segments.csv: 4 of 5 segments have a clip (1 missing, listed in eval_segments_missing.txt)" in out
    assert (root / "eval_segments_missing.txt").read_text() == "notDownload\n"
    from_manifest = build_dataset({"name": "audioset", "root": str(root), "segments": "eval_segments_manifest.csv",
                                   "clip_seconds": 0.5}, "test")
    from_csv = build_dataset({"name": "audioset", "root": str(root), "segments": "eval_segments.csv",
                              "clip_seconds": 0.5}, "test")
    assert [i.path for i in from_manifest.items] == [i.path for i in from_csv.items] and from_manifest.missing == []
    assert torch.equal(from_manifest[1]["label"], from_csv[1]["label"])
    assert torch.equal(from_manifest[1]["inputs"], from_csv[1]["inputs"])
    assert tool.main([str(tmp_path / "empty")]) == 2
    assert "no segment CSV in" in capsys.readouterr().err


def test_clotho_from_extracted_zenodo_downloads(tmp_path, capsys):
    tool = load_tool("prepare_clotho")
    made = make_clotho(tmp_path / "made", splits=("evaluation", "development"))
    src = tmp_path / "downloads"
    src.mkdir()
    shutil.copy(made / "clotho_captions_evaluation.csv", src)
    shutil.copy(made / "clotho_captions_development.csv", src)
    shutil.copytree(made / "evaluation", src / "evaluation")
    shutil.copytree(made / "development", src / "clotho_audio_development")
    (src / "evaluation" / "city street.wav").unlink()
    assert tool.main([str(src), str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert "development: 3 files" in out and "evaluation: 3 files, 1 missing (first: city street.wav)" in out
    ds = build_dataset({"name": "clotho", "root": str(tmp_path / "out"), "clip_seconds": 0.5}, "train")
    assert len(ds) == 3 and ds.items[0].path.is_file()
    (src / "clotho_captions_validation.csv").write_text("file_name,caption_1\n")
    (src / "clotho_audio_validation.7z").write_bytes(b"7z")
    assert tool.main([str(src), str(tmp_path / "out2")]) == 2
    assert "extract clotho_audio_validation.7z first (7z x clotho_audio_validation.7z)" in capsys.readouterr().err


def test_esc50_tool_names_the_line_of_a_non_integer_target(tmp_path, capsys):
    tool = load_tool("prepare_esc50")
    src = make_esc50(tmp_path / "src", rows=((1, 0), (2, 1)))
    meta = src / "meta" / "esc50.csv"
    meta.write_text(meta.read_text().replace(",2,1,rooster,", ",2,one,rooster,"))
    assert tool.main([str(src), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == "prepare_esc50: meta/esc50.csv line 3: `target` is 'one', not an integer\n"
