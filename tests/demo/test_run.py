import json

import pytest
import torch
from safetensors.torch import load_file

from omniclip.demo.run import main, preset, pretrain_world_clip
from tests.demo.results import accuracies


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["--quick", "--out", str(out), "--threads", "2"]) == 0
    return out, json.loads((out / "results.json").read_text())



def test_quick_run_writes_results_and_confusion_png(quick_run):
    out, results = quick_run
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"classes", "chance", "clip", "variants", "splits", "summary", "seconds", "config"} <= set(results)
    assert results["versions"]["torch"] == torch.__version__
    num_classes = len(results["classes"])
    assert num_classes == 10
    assert results["chance"]["all"] == pytest.approx(1 / num_classes)
    assert results["chance"]["held_out"] == pytest.approx(1 / num_classes)
    split = results["splits"][0]
    assert results["chance"]["held_out_among_held_out"] == pytest.approx(1 / len(split["held_out"]))
    assert results["variants"] == ["vit", "random_vit", "no_vit"]
    for record in [split["image_tower"], *split["variants"].values()]:
        assert all(0.0 <= value <= 1.0 for value in accuracies(record))
        confusion = record["raw"]["confusion"]
        assert len(confusion) == num_classes and all(len(row) == num_classes for row in confusion)
        assert sum(map(sum, confusion)) == sum(map(sum, record["calibrated"]["confusion"]))


def test_calibration_gives_held_out_classes_their_share_of_predictions(quick_run):
    _, results = quick_run
    split = results["splits"][0]
    held = [results["classes"].index(name) for name in split["held_out"]]
    for record in split["variants"].values():
        confusion = record["calibrated"]["confusion"]
        total = sum(map(sum, confusion))
        predicted_held = sum(row[c] for row in confusion for c in held)
        assert predicted_held == round(total * len(held) / len(results["classes"]))


def test_clip_weights_are_cached_and_reused(quick_run):
    out, results = quick_run
    weights = out / results["clip"]["hash"] / "model.safetensors"
    cfg = preset("quick")
    messages = []
    backbone, info = pretrain_world_clip(cfg.world, cfg.clip, out, messages.append)
    assert messages == [f"tiny CLIP: reusing {weights}"]
    assert info == results["clip"]
    saved = load_file(str(weights))
    assert all(torch.equal(value, saved[key]) for key, value in backbone.model.state_dict().items())


def test_omniclip_demo_dispatches_audio(tmp_path):
    import json

    from omniclip.demo.run import main as demo_main

    assert demo_main(["--modality", "audio", "--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["chance"]["all"] == 0.1


@pytest.mark.parametrize(("flags", "module", "folder"), [
    ([], "run", "omniclip-demo"),
    (["--modality", "audio"], "audio_demo", "omniclip-audio-demo"),
    (["--modality", "video"], "video_demo", "omniclip-video-demo"),
    (["--describe"], "describe_demo", "omniclip-describe-demo"),
])
def test_a_quick_run_never_writes_where_the_full_run_does(monkeypatch, tmp_path, capsys, flags, module, folder):
    """Without --out, every demo's --quick writes to <name>-quick (a full run's results and cached
    models stay) and says it is a smoke test."""
    import importlib

    from omniclip.demo import experiment

    assert experiment.output_folder(None, "omniclip-demo", quick=True).name == "omniclip-demo-quick"
    assert experiment.output_folder(None, "omniclip-demo", quick=False).name == "omniclip-demo-out"
    assert experiment.output_folder("mine", "omniclip-demo", quick=True).name == "mine"
    demo = importlib.import_module(f"omniclip.demo.{module}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "run", lambda cfg, out: (_ for _ in ()).throw(SystemExit(str(out))))
    with pytest.raises(SystemExit, match=f"^{folder}-quick$"):
        main([*flags, "--quick"])
    assert capsys.readouterr().out.startswith(experiment.SMOKE_TEST)


def test_each_trained_lens_is_exported_with_its_config_and_reloads(quick_run):
    from omniclip.demo.dataset import make_shape_set
    from omniclip.demo.experiment import embed
    from omniclip.demo.lens import LensConfig, build_lens

    out, results = quick_run
    split = results["splits"][0]
    folder = out / f"lens-{'-'.join(split['held_out'])}-{split['train_per_class']}pc-vit" / "lens"
    config = json.loads((folder / "config.json").read_text())
    assert config["variant"] == "vit" and config["held_out"] == split["held_out"]
    assert config["lens"]["tokenizer"] == "projection" and config["clip"] == results["clip"]["hash"]
    cfg = preset("quick")
    backbone, _ = pretrain_world_clip(cfg.world, cfg.clip, out, lambda _: None)
    model = build_lens("vit", backbone, LensConfig(**config["lens"]), seed=99)  # other weights until loaded
    model.load_lens(folder)
    clouds = make_shape_set(cfg.world, range(10), 1, seed=5, name="probe")
    fresh = build_lens("vit", backbone, LensConfig(**config["lens"]), seed=99)
    assert not torch.allclose(embed(fresh, clouds), embed(model, clouds))
    # the token fit ran first and is on record
    assert split["token_fit"]["final_mismatch"] > 0


def test_quick_run_prints_one_table_the_calibration_and_a_conclusion(tmp_path, capsys):
    assert main(["--quick", "--out", str(tmp_path), "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert text.count("| chance |") == 1 and "calibrated: the held-out classes' scores get one bonus" in text
    assert "No conclusion: this is a smoke test." in text and "On held-out classes" not in text
