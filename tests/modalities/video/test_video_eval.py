"""Video evaluation protocols end to end on generated frame folders with the tiny backbone:
multi-view score fusion, class embeddings from a model's own text tower, class subsets and
few-shot draws through the dataset recipe keys, the shipped class splits and the eval recipes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from omniclip.anchors import AnchorStore
from omniclip.errors import ConfigError
from omniclip.evaluation import collect_view_embeddings, fuse_view_scores, score_metrics
from omniclip.modalities.video.datasets import build_dataset, shipped_class_names
from omniclip.modalities.video.splits import BASE_NOVEL_DATASETS, base_novel_ids, k600_zero_shot_classes
from omniclip.modality import get_modality
from omniclip.protocols import check_summaries
from omniclip.text_trunk import TextTrunk
from omniclip.video_model import VideoClipModel
from omniclip.zeroshot import evaluate_task, make_evaluators, task_classifier
from tests.modalities.video import media

CLASSES = ["archery", "juggling balls", "tai chi"]
VIEWS = {"num_frames": 2, "size": 32, "short_side": 32, "num_clips": 2, "num_crops": 3}


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory):
    """root/test/<class>/<video>/ frame folders: 3 classes x 3 videos of unequal lengths."""
    root = tmp_path_factory.mktemp("folder")
    for c, name in enumerate(CLASSES):
        for v in range(3):
            media.write_frame_folder(root / "test" / name.replace(" ", "_") / f"v{v}", 6 + 5 * v + c)
    return root


def task_for(root, **extra):
    return {"type": "classification", "templates": "default",
            "dataset": {"name": "folder", "root": str(root), "split": "test", **VIEWS, **extra}}


def video_model(backbone, text: TextTrunk | None = None) -> VideoClipModel:
    torch.manual_seed(0)
    return VideoClipModel(backbone.trunk(), text)


def test_multi_view_scores_equal_the_hand_computation(folder_root, tiny_backbone):
    video = get_modality("video")
    task = task_for(folder_root)
    dataset = video.build_dataset(task["dataset"], "test")
    anchors = AnchorStore(tiny_backbone)
    model = video_model(tiny_backbone)
    classifier = task_classifier(video, dataset, task, anchors)
    scale = tiny_backbone.logit_scale
    with torch.no_grad():
        per_video = [model.encode(dataset[i]["inputs"]) for i in range(len(dataset))]  # [6 views, E] each
    assert per_video[0].shape[0] == 6
    hand_scores = torch.stack([(scale * v @ classifier.T).softmax(-1).mean(0) for v in per_video])
    hand_means = torch.stack([F.normalize(v.mean(0), dim=-1) @ classifier.T for v in per_video])
    labels = torch.tensor([dataset.items[i].label for i in range(len(dataset))])

    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=video.collate)
    views, view_labels, groups, paths = collect_view_embeddings(model, loader, "cpu")
    assert views.shape[0] == 6 * len(dataset) and groups.tolist() == [i for i in range(len(dataset)) for _ in range(6)]
    scores, fused_labels = fuse_view_scores(views, view_labels, groups, classifier, scale, paths)
    torch.testing.assert_close(scores, hand_scores, rtol=1e-4, atol=1e-5)
    assert fused_labels.tolist() == labels.tolist()
    assert not torch.allclose(hand_scores, (scale * hand_means).softmax(-1), atol=1e-4)  # two different rules

    by_scores = evaluate_task(model, video, {**task, "view_fusion": "scores"}, anchors, "cpu", batch_size=2,
                              dataset=dataset)
    assert by_scores == score_metrics(hand_scores, labels)
    by_embeddings = evaluate_task(model, video, task, anchors, "cpu", batch_size=4, dataset=dataset)
    assert by_embeddings == score_metrics(hand_means, labels)
    with pytest.raises(ConfigError) as err:
        make_evaluators(video, {"tasks": {"x": {**task, "view_fusion": "max"}}}, anchors, "cpu",
                        datasets={"x": dataset})
    assert err.value.key == "eval.tasks.x.view_fusion"


def test_classifier_from_the_models_own_text_tower(folder_root, tiny_backbone):
    video = get_modality("video")
    dataset = video.build_dataset(task_for(folder_root)["dataset"], "test")
    anchors = AnchorStore(tiny_backbone)
    text = TextTrunk(tiny_backbone.model, unlocked_blocks=-1)  # its own copy of the whole tower
    noise = torch.randn(text.text_projection.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # "fine-tuned": the copy's projection moves, the frozen tower's does not
        text.text_projection.add_(0.5 * noise)
    model = video_model(tiny_backbone, text)
    model.train()
    tokenizer = tiny_backbone.tokenizer

    def by_hand(encode, prompts):  # per class: the renormalised mean of its normalised prompts
        with torch.no_grad():
            return torch.stack([F.normalize(F.normalize(encode(tokenizer([t.replace("{}", name) for t in prompts])),
                                                        dim=-1).mean(0), dim=-1) for name in CLASSES])

    for templates in ("default", "video"):
        task = {**task_for(folder_root), "templates": templates}
        prompts = video.template_set(templates)
        own = task_classifier(video, dataset, task, anchors, model=model, device="cpu")
        frozen = task_classifier(video, dataset, task, anchors)
        hand, hand_frozen = by_hand(text, prompts), by_hand(tiny_backbone.model.encode_text, prompts)
        torch.testing.assert_close(own, hand, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(frozen, hand_frozen, rtol=1e-5, atol=1e-6)
        assert (own - frozen).abs().max() > 1e-2
    assert model.training and model.text.training  # the modes are restored


def test_class_subset_and_shots_through_the_dataset_keys(folder_root):
    base = {"name": "folder", "root": str(folder_root), **VIEWS}
    full = build_dataset(base, "test")
    view = build_dataset({**base, "class_subset": ["tai chi", "archery"]}, "test")
    assert view.class_names == ["tai chi", "archery"] and len(view) == 6
    sample = view[0]
    assert sample["label"] == 1 and full[sample["group_id"]]["label"] == 0  # archery, renumbered
    assert sample["inputs"].shape == (6, 2, 3, 32, 32)
    draws = {seed: build_dataset({**base, "shots": 2, "shot_seed": seed}, "test").indices for seed in range(3)}
    assert all(len(d) == 6 for d in draws.values()) and len({tuple(d) for d in draws.values()}) > 1
    assert build_dataset({**base, "shots": 2, "shot_seed": 1}, "test").indices == draws[1]
    both = build_dataset({**base, "class_subset": ["juggling balls"], "shots": 2, "shot_seed": 0}, "test")
    assert both.class_names == ["juggling balls"] and both.labels == [0, 0] and len(both) == 2
    for extra, key, message in [({"shots": 4}, "shots", r"class `archery` \(label 0\) has 3 samples"),
                                ({"shots": 0}, "shots", "positive integer"),
                                ({"shot_seed": 3}, "shot_seed", "only used with `shots`"),
                                ({"class_subset": ["archery", "curling"]}, "class_subset", "first: `curling`"),
                                ({"class_subset": "hmdb51_base"}, "class_subset", "26 classes are not classes")]:
        with pytest.raises(ConfigError, match=message) as err:
            build_dataset({**base, **extra}, "test")
        assert err.value.key == key


def test_shipped_class_splits_partition_their_datasets():
    sizes = {name: (len(s.base), len(s.novel)) for name in BASE_NOVEL_DATASETS for s in [base_novel_ids(name)]}
    assert sizes == {"k400": (200, 200), "hmdb51": (26, 25), "ucf101": (51, 50), "ssv2": (87, 87)}
    assert shipped_class_names("hmdb51_base")[:2] == ["pour", "pullup"]
    assert shipped_class_names("hmdb51_novel")[:2] == ["brush hair", "cartwheel"]
    k400, k600 = set(shipped_class_names("k400")), set(shipped_class_names("k600"))
    sets = [k600_zero_shot_classes(i) for i in (1, 2, 3)]
    assert [len(s) for s in sets] == [160] * 3 and len({tuple(s) for s in sets}) == 3
    assert all(set(s) <= k600 - k400 for s in sets)
    assert get_modality("video").class_names("ucf101_novel") == shipped_class_names("ucf101_novel")


@pytest.mark.parametrize("eval_name, tasks, summary", [
    ("ucf101", ["ucf101_split1", "ucf101_split2", "ucf101_split3"], {"ucf101": "splits"}),
    ("hmdb51", ["hmdb51_split1", "hmdb51_split2", "hmdb51_split3"], {"hmdb51": "splits"}),
    ("kinetics600", ["kinetics600_split1", "kinetics600_split2", "kinetics600_split3"], {"kinetics600": "splits"}),
    ("ucf101_few_shot", ["ucf101_split1"], {}),
    ("hmdb51_few_shot", ["hmdb51_split1"], {}),
    ("kinetics400_base_novel", ["kinetics400_base", "kinetics400_novel"], {"kinetics400_base_novel": "base"}),
    ("hmdb51_base_novel", ["hmdb51_base", "hmdb51_novel"], {"hmdb51_base_novel": "base"}),
    ("ucf101_base_novel", ["ucf101_base", "ucf101_novel"], {"ucf101_base_novel": "base"}),
    ("ssv2_base_novel", ["ssv2_base", "ssv2_novel"], {"ssv2_base_novel": "base"}),
])
def test_eval_recipes(eval_name, tasks, summary):
    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        cfg = OmegaConf.to_container(compose("zeroshot", [f"eval={eval_name}", "checkpoint=x"]).eval, resolve=True)
    assert list(cfg["tasks"]) == tasks
    check_summaries(cfg.get("summaries"), tasks)
    assert {name: next(iter(spec)) for name, spec in (cfg.get("summaries") or {}).items()} == summary
    for task in cfg["tasks"].values():
        assert task["dataset"]["num_frames"] == 32 and task["dataset"].get("num_clips", 1) == 1
        assert task["dataset"]["normalize"] == "imagenet" and task["templates"] == "default"
    subsets = [t["dataset"].get("class_subset") for t in cfg["tasks"].values()]
    if "base" in summary.values():
        short = {"kinetics400": "k400"}.get(eval_name.split("_")[0], eval_name.split("_")[0])
        assert subsets == [f"{short}_base", f"{short}_novel"]
    if eval_name == "kinetics600":
        assert subsets == ["k600_zs_split1", "k600_zs_split2", "k600_zs_split3"]


@pytest.mark.parametrize("data_name, subset, seed", [
    ("ucf101_few_shot", None, 0), ("hmdb51_few_shot", None, 0), ("ssv2_few_shot", None, 0),
    ("kinetics400_base_novel", "k400_base", 1), ("hmdb51_base_novel", "hmdb51_base", 1),
    ("ucf101_base_novel", "ucf101_base", 1), ("ssv2_base_novel", "ssv2_base", 1),
])
def test_training_data_recipes(data_name, subset, seed):
    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        train = OmegaConf.to_container(compose("train", ["modality=video", f"data={data_name}",
                                                         "data.train.shots=4"]).data.train, resolve=True)
    assert (train["shots"], train["shot_seed"], train.get("class_subset")) == (4, seed, subset)
    assert train["num_frames"] == 32 and train["normalize"] == "imagenet"


def test_classifier_from_learned_text_prompts(folder_root, tiny_backbone):
    """A model holding text prompts (bridge-and-prompt) scores against its "<context> <name>."
    embeddings; the templates do not apply."""
    from omniclip.prompts import TextPrompts

    video = get_modality("video")
    dataset = video.build_dataset(task_for(folder_root)["dataset"], "test")
    anchors = AnchorStore(tiny_backbone)
    text = TextTrunk(tiny_backbone.model)
    model = video_model(tiny_backbone, text)
    model.text_prompts = TextPrompts(text, tiny_backbone.tokenizer, init="a photo of a", depth=2)
    with torch.no_grad():
        model.text_prompts.context.add_(torch.randn(model.text_prompts.context.shape,
                                                    generator=torch.Generator().manual_seed(2)))
        hand = F.normalize(model.text_prompts.class_embeddings(CLASSES), dim=-1)
    classifier = task_classifier(video, dataset, {**task_for(folder_root), "templates": "video"}, anchors,
                                 model=model, device="cpu")
    torch.testing.assert_close(classifier, hand)
    model.text_prompts = None  # the same model without learned prompts: its text tower with the templates
    plain = task_classifier(video, dataset, task_for(folder_root), anchors, model=model, device="cpu")
    assert (plain - hand).abs().max() > 1e-2


class DesignedViews(torch.nn.Module):
    """A stand-in video model with its own "text tower": class k's prompt embeds as the basis
    vector e_k; of every video's 6 views, 2 point squarely at the next class (cosine 1) and 4
    mildly at the video's own (cosine 0.4). The mean embedding then favours the wrong class
    (cosine 1/3 against 4 x 0.4 / 6 = 0.27), the mean of the views' softmax scores at scale 10
    the right one (about 0.64)."""

    def __init__(self, labels: list[int], class_tokens: list[int]) -> None:
        super().__init__()
        self.text = torch.nn.Identity()
        self.labels = labels
        self.class_tokens = class_tokens
        self.basis = torch.eye(8)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.basis[[self.class_tokens.index(int(t)) for t in ids[:, 1]]]

    def forward(self, batch) -> torch.Tensor:
        rows, seen = [], {}
        for group in batch["group_ids"]:
            view = seen[group] = seen.get(group, -1) + 1
            label = self.labels[group]
            if view < 2:
                rows.append(self.basis[(label + 1) % 3])
            else:
                rows.append(0.4 * self.basis[label] + 0.84 ** 0.5 * self.basis[7])
        return torch.stack(rows)


def test_score_fusion_and_embedding_fusion_disagree_where_they_should(folder_root, tiny_backbone):
    video = get_modality("video")
    task = task_for(folder_root)
    dataset = video.build_dataset(task["dataset"], "test")
    tokens = [int(tiny_backbone.tokenizer([name])[0, 1]) for name in CLASSES]
    assert len(set(tokens)) == 3
    model = DesignedViews([item.label for item in dataset.items], tokens)
    anchors = AnchorStore(tiny_backbone)
    scores = evaluate_task(model, video, {**task, "view_fusion": "scores", "logit_scale": 10.0}, anchors, "cpu",
                           batch_size=2, dataset=dataset)
    means = evaluate_task(model, video, task, anchors, "cpu", batch_size=2, dataset=dataset)
    assert scores["top1"] == 100.0 and means["top1"] == 0.0 and scores["num_samples"] == means["num_samples"] == 9
    with pytest.raises(ConfigError) as err:
        evaluate_task(model, video, {**task, "logit_scale": 10.0}, anchors, "cpu", dataset=dataset)
    assert err.value.key == "eval.logit_scale"
