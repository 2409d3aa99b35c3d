"""The hydra apps end to end on the test-only toy modality (tests/recipes adds its config)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from omniclip import train, zeroshot
from omniclip.errors import ConfigError

TEST_RECIPES = f"hydra.searchpath=[file://{Path(__file__).parent / 'recipes'}]"


def compose_train(tmp_path, *overrides):
    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        return compose("train", [TEST_RECIPES, "modality=toy", "data=toy", "debug=default",
                                 f"output_dir={tmp_path / 'run'}", f"anchors.cache_dir={tmp_path / 'anchors'}",
                                 *overrides])


def test_train_resume_and_zeroshot(tmp_path):
    cfg = compose_train(tmp_path, "eval=toy")
    result = train.run(cfg)
    assert result.step == 4 and len(result.losses) == 4
    assert [e["step"] for e in result.evals] == [2, 4]
    assert 0 <= result.evals[-1]["toy"]["top1"] <= 100
    run_dir = tmp_path / "run"
    assert (run_dir / "lens" / "lens.safetensors").is_file()
    assert json.loads((run_dir / "lens" / "config.json").read_text())["modality"] == "toy"
    assert len(list((tmp_path / "anchors" / "text").glob("*/shard-*.safetensors"))) >= 1

    again = train.run(compose_train(tmp_path))  # same command again: resumes, nothing left to do
    assert again.step == 4 and again.losses == []

    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        zcfg = compose("zeroshot", [TEST_RECIPES, "eval=toy", f"checkpoint={run_dir / 'lens'}",
                                    f"anchors.cache_dir={tmp_path / 'anchors'}", "num_workers=0"])
    results = zeroshot.run(zcfg)
    assert results[0].dataset == "toy" and results[0].num_samples == 8
    # the periodic evaluation at the last step and the CLI see the same model and data
    assert results[0].metrics["top1"] == pytest.approx(result.evals[-1]["toy"]["top1"])
    saved = json.loads((run_dir / "lens" / "zeroshot.json").read_text())
    assert saved[0]["metrics"]["top1"] == results[0].metrics["top1"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("modality.name=nope", r"config `modality`: unknown modality `nope`"),
        ("lens.latent_dim=32", r"config `lens.latent_dim`: the lens gives 32-wide tokens but the trunk is 64 wide"),
        ("+data.train.root=/no/such/dir", r"config `data.train.root`: folder /no/such/dir does not exist"),
        ("trainer.precision=fp8", r"config `trainer.precision`: `fp8` is not one of"),
        ("+trainer.bogus=1", r"config `trainer.bogus`: unknown trainer option"),
        ("eval=toy eval.tasks.toy.type=ranking", r"config `eval.tasks.toy.type`: `ranking` is not one of"),
    ],
)
def test_misconfigured_recipe_fails_before_training(tmp_path, override, message):
    cfg = compose_train(tmp_path, *override.split())
    with pytest.raises(ConfigError, match=message):
        train.build_trainer(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_console_entry_point_runs(tmp_path):
    code = (
        "import sys; from omniclip import registry; from tests.toy_modality import ToyModality;"
        "registry.register('modality', 'toy', ToyModality);"
        "from omniclip.train import main; main()"
    )
    args = [TEST_RECIPES, "modality=toy", "data=toy", "debug=default", f"output_dir={tmp_path / 'run'}",
            f"anchors.cache_dir={tmp_path / 'anchors'}", "trainer.max_steps=2"]
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=Path(__file__).parents[1],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "lens" / "lens.safetensors").is_file()
    assert (tmp_path / "run" / ".hydra" / "config.yaml").is_file()
    assert (tmp_path / "run" / "train.log").is_file()  # hydra names the log after the command's module
    # omniclip's own lines stay; open_clip's model-building INFO lines and its warning do not
    assert "step 1/2" in proc.stdout and "lens exported to" in proc.stdout
    for chatter in ("Parsing model identifier", "Loaded built-in omniclip-tiny", "No pretrained weights loaded"):
        assert chatter not in proc.stdout + proc.stderr


def test_precomputed_anchors_mean_training_never_runs_a_tower(tmp_path):
    from omniclip.anchors import precompute

    cfg = compose_train(tmp_path, "eval=toy", "trainer.max_steps=2")
    counts = precompute(cfg)
    assert counts["text"] == 4 + 4 * 2  # 4 captions + 4 classes x 2 templates
    assert counts["image"] == 4  # one image per class in the toy data
    trainer, _, _ = train.build_trainer(cfg)
    trainer.fit()
    assert trainer.objective.anchors.tower_calls == {"text": 0, "image": 0}
    assert trainer.objective.anchors.hits["text"] > 0
