"""The ViFi-CLIP few-shot and base-to-novel training experiments (recipes/experiment/video/vificlip_few_shot,
vificlip_base2novel, vificlip_bridge_prompt_base2novel) compose with every dataset they name, carry the
reference's settings, and train through `omniclip.train.run` on a generated HMDB-51 layout.

The training runs use ``debug=default`` (the 2-block tiny CLIP) and 4-frame 32-px clips; what they check is
what the protocol promises: the training set holds exactly K clips of every class (of the base half, for
base-to-novel), and two optimizer steps run end to end (mixing, prompts, export).
"""

from __future__ import annotations

import math
import shutil
from collections import Counter

import pytest
from hydra import compose, initialize_config_module

from omniclip import train
from omniclip.modality import get_modality
from omniclip.protocols import sample_labels
from tests.modalities.video import layouts

# (experiment, data, eval, the eval tasks, base classes or None = every class)
COMPOSITIONS = [
    ("vificlip_few_shot", "hmdb51_few_shot", "hmdb51_few_shot", ["hmdb51_split1"], None),
    ("vificlip_few_shot", "ucf101_few_shot", "ucf101_few_shot", ["ucf101_split1"], None),
    ("vificlip_few_shot", "ssv2_few_shot", "ssv2", None, None),
    ("vificlip_base2novel", "kinetics400_base_novel", "kinetics400_base_novel",
     ["kinetics400_base", "kinetics400_novel"], "k400_base"),
    ("vificlip_base2novel", "hmdb51_base_novel", "hmdb51_base_novel", ["hmdb51_base", "hmdb51_novel"], "hmdb51_base"),
    ("vificlip_base2novel", "ucf101_base_novel", "ucf101_base_novel", ["ucf101_base", "ucf101_novel"], "ucf101_base"),
    ("vificlip_base2novel", "ssv2_base_novel", "ssv2_base_novel", ["ssv2_base", "ssv2_novel"], "ssv2_base"),
    ("vificlip_bridge_prompt_base2novel", "hmdb51_base_novel", "hmdb51_base_novel",
     ["hmdb51_base", "hmdb51_novel"], "hmdb51_base"),
    ("vificlip_bridge_prompt_base2novel", "ucf101_base_novel", "ucf101_base_novel",
     ["ucf101_base", "ucf101_novel"], "ucf101_base"),
    ("vificlip_bridge_prompt_base2novel", "ssv2_base_novel", "ssv2_base_novel", ["ssv2_base", "ssv2_novel"], "ssv2_base"),
]
#: The reference configs' optimiser: lr, warm-up epochs / epochs, per-GPU batch, accumulation.
REFERENCE = {"vificlip_few_shot": (2e-6, 5 / 50), "vificlip_base2novel": (2e-6, 5 / 11),
             "vificlip_bridge_prompt_base2novel": (4e-2, 5 / 11)}


@pytest.mark.parametrize("experiment, data, eval_name, tasks, subset", COMPOSITIONS)
def test_protocol_experiments_compose_with_each_dataset(experiment, data, eval_name, tasks, subset):
    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        cfg = compose("train", [f"experiment=video/{experiment}", f"data={data}", f"eval={eval_name}",
                                "data.train.shots=4"])
    lr, warmup_share = REFERENCE[experiment]
    assert cfg.modality.name == "video" and cfg.data.train.num_frames == 32
    assert cfg.data.train.shots == 4 and cfg.data.train.get("class_subset") == subset
    assert (cfg.trainer.lr, cfg.trainer.batch_size, cfg.trainer.grad_accum_steps) == (lr, 4, 2)
    assert cfg.trainer.warmup_steps / cfg.trainer.max_steps == pytest.approx(warmup_share, rel=0.05)
    assert cfg.trainer.weight_decay == 0.001 and cfg.trainer.grad_clip is None
    assert dict(cfg.data.mixing) == {"mixup": 0.8, "cutmix": 1.0, "switch_prob": 0.5, "label_smoothing": 0.1}
    if tasks is not None:
        assert list(cfg.eval.tasks) == tasks
    if experiment.startswith("vificlip_bridge_prompt"):
        assert cfg.model.name == "vificlip_bridge_prompt" and list(cfg.trainer.train_only)
        assert cfg.model.vision_prompts.depth == 9 and cfg.loss.learnable_scale is False
    else:
        assert cfg.model.name == "vificlip" and cfg.trainer.train_only is None and cfg.loss.learnable_scale


@pytest.fixture(scope="module")
def hmdb51(tmp_path_factory):
    """An HMDB-51 layout with all 51 shipped classes: 3 train clips (mark 1) and 1 test clip (mark 2)
    each, copies of one tiny video."""
    root = tmp_path_factory.mktemp("hmdb51")
    source = layouts.video(root / "source.avi", codec="mpeg4", frames=12)
    lists = root / "testTrainMulti_7030_splits"
    lists.mkdir()
    for name in get_modality("video").class_names("hmdb51"):
        folder = name.replace(" ", "_")
        rows = [(f"{folder}_{i}.avi", 1 if i < 3 else 2) for i in range(4)]
        (lists / f"{folder}_test_split1.txt").write_text("".join(f"{f} {mark} \n" for f, mark in rows))
        for file, _ in rows:
            (root / "videos" / folder).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, root / "videos" / folder / file)
    return root


def debug_recipe(tmp_path, hmdb51, experiment: str, data: str, shots: int, *overrides: str):
    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        return compose("train", [
            f"experiment=video/{experiment}", "debug=default", f"data={data}", f"data.train.shots={shots}",
            f"data.train.root={hmdb51}", "data.train.num_frames=4", "data.train.size=32", "data.train.short_side=40",
            "data.train.limit=null",  # debug's 16-sample cap would undo the K-per-class draw
            "eval=none", f"output_dir={tmp_path / 'run'}", f"anchors.cache_dir={tmp_path / 'anchors'}",
            "trainer.max_steps=2", "trainer.grad_accum_steps=1", *overrides,
        ])


def per_class(cfg) -> tuple[Counter, list[str]]:
    """Clips per class of the training set the trainer iterates (labels only, no decoding), and its classes."""
    trainer, _, _ = train.build_trainer(cfg)
    dataset = trainer.loader.dataset
    while not (hasattr(dataset, "labels") or hasattr(dataset, "items")):  # the trainer's keyed / seeded views
        inner = dataset.dataset
        assert len(inner) == len(dataset)  # a view of every sample, none dropped or added
        dataset = inner
    return Counter(sample_labels(dataset)), list(dataset.class_names)


def test_few_shot_trains_on_exactly_k_clips_per_class(tmp_path, hmdb51):
    cfg = debug_recipe(tmp_path, hmdb51, "vificlip_few_shot", "hmdb51_few_shot", 2)
    counts, names = per_class(cfg)
    # every class of the split files (in their file order), none dropped
    assert len(names) == 51 and sorted(names) == sorted(get_modality("video").class_names("hmdb51"))
    assert counts == Counter({label: 2 for label in range(51)})  # of the 3 train clips, 2; no test clip
    result = train.run(cfg)
    assert result.step == 2 and len(result.losses) == 2 and all(math.isfinite(x) for x in result.losses)


def test_bridge_prompt_base_to_novel_trains_on_the_base_classes_only(tmp_path, hmdb51):
    cfg = debug_recipe(tmp_path, hmdb51, "vificlip_bridge_prompt_base2novel", "hmdb51_base_novel", 1,
                       # the 2-block tiny CLIP: prompts in both blocks, as video/vificlip_bridge_prompt_debug
                       "model.vision_prompts.num_tokens=2", "model.vision_prompts.depth=2",
                       "model.text_prompts.num_tokens=2", "model.text_prompts.depth=2")
    counts, names = per_class(cfg)
    base = get_modality("video").class_names("hmdb51_base")
    assert names == base and len(base) == 26  # renumbered to the base half
    assert counts == Counter({label: 1 for label in range(26)})
    result = train.run(cfg)
    assert result.step == 2 and len(result.losses) == 2 and all(math.isfinite(x) for x in result.losses)
