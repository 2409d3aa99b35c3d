"""The trainer's periodic evaluation and `omniclip-zeroshot` report exactly what an independent
computation from the exported lens's embeddings gives (the toy recipe).

The toy lens after 4 steps gives nearly one class for every sample, so this mainly proves that
the in-training evaluator and the CLI compute the same thing as the reference (it catches a
classifier built from the wrong prompts); the known-answer checks that a misordered classifier or
a wrong top-k fails are in tests/modalities/*/test_recipes.py."""

from pathlib import Path

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from omniclip import train, zeroshot
from tests.zeroshot_reference import assert_matches_reference, reference_metrics

TEST_RECIPES = f"hydra.searchpath=[file://{Path(__file__).parent / 'recipes'}]"


def test_periodic_and_cli_evaluation_equal_the_reference(tmp_path):
    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        cfg = compose("train", [TEST_RECIPES, "modality=toy", "data=toy", "debug=default", "eval=toy",
                                f"output_dir={tmp_path / 'run'}", f"anchors.cache_dir={tmp_path / 'anchors'}"])
    result = train.run(cfg)
    assert [e["step"] for e in result.evals] == [2, 4]
    lens_dir = tmp_path / "run" / "lens"
    task = OmegaConf.to_container(cfg.eval, resolve=True)["tasks"]["toy"]
    expected = reference_metrics(lens_dir, task)
    periodic = result.evals[-1]["toy"]  # evaluated at step 4, the exported weights
    for name, value in expected.items():
        assert abs(periodic[name] - value) < 1e-3, (name, periodic[name], value)

    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        zcfg = compose("zeroshot", [TEST_RECIPES, "eval=toy", f"checkpoint={lens_dir}",
                                    f"anchors.cache_dir={tmp_path / 'anchors'}", "num_workers=0"])
    (cli,) = zeroshot.run(zcfg)
    assert_matches_reference(cli, lens_dir, task)
