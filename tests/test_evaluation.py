import json
import zlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from omniclip.errors import SampleError
from omniclip.evaluation import (
    EvalResult,
    build_classifier,
    collect_embeddings,
    format_results_table,
    zero_shot_classification,
)
from omniclip.metrics import mean_average_precision

TABLE = torch.randn(997, 8, generator=torch.Generator().manual_seed(0))


class FakeTextEncoder:
    """A fixed random embedding per string (crc32 of its text), recording each call's size."""

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, texts: list[str]) -> torch.Tensor:
        self.calls.append(len(texts))
        return 3.0 * TABLE[[zlib.crc32(t.encode()) % 997 for t in texts]]


CLASSES = ["dog", "cat", "air plane", "car{x}"]
TEMPLATES = ["a photo of a {}.", "a point cloud model of {}.", "{c}, in sound"]


def loop_classifier(class_names, templates):
    encode = FakeTextEncoder()
    rows = []
    for name in class_names:
        emb = torch.cat([encode([t.replace("{}", name).replace("{c}", name)]) for t in templates])
        emb = emb / emb.norm(dim=-1, keepdim=True)
        mean = emb.mean(dim=0)
        rows.append(mean / mean.norm())
    return torch.stack(rows)


# --- build_classifier ----------------------------------------------------------------------------


def test_build_classifier_matches_loop_and_is_chunking_invariant():
    expected = loop_classifier(CLASSES, TEMPLATES)
    encode = FakeTextEncoder()
    big = build_classifier(encode, CLASSES, TEMPLATES, batch_size=256)
    assert encode.calls == [12]
    assert big.shape == (4, 8) and big.dtype == torch.float32
    torch.testing.assert_close(big, expected)
    encode = FakeTextEncoder()
    small = build_classifier(encode, CLASSES, TEMPLATES, batch_size=1)
    assert encode.calls == [1] * 12
    assert torch.equal(small, big)
    encode = FakeTextEncoder()
    build_classifier(encode, CLASSES, TEMPLATES, batch_size=5)
    assert encode.calls == [5, 5, 2]


def test_build_classifier_errors():
    encode = FakeTextEncoder()
    with pytest.raises(ValueError, match="class_names is empty"):
        build_classifier(encode, [], TEMPLATES)
    with pytest.raises(ValueError, match="templates is empty"):
        build_classifier(encode, CLASSES, [])
    message = r"templates without a class placeholder \(\{\} or \{c\}\): \['a photo.'\]"
    with pytest.raises(ValueError, match=message):
        build_classifier(encode, CLASSES, ["a photo.", "a {}."])
    with pytest.raises(ValueError, match="not one string"):
        build_classifier(encode, "dog", TEMPLATES)
    with pytest.raises(ValueError, match=r"encode_text returned shape \(8,\) for 1 prompts"):
        build_classifier(lambda texts: TABLE[0], ["dog"], ["{}"])


# --- collect_embeddings --------------------------------------------------------------------------


class Embedder(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 3)
        self.frozen = nn.Dropout(0.5)  # a part a trainer keeps in eval mode
        self.modes: list[bool] = []

    def forward(self, batch: dict) -> torch.Tensor:
        self.modes.append(self.training)
        return self.proj(batch["inputs"])

    def encode(self, batch: dict) -> torch.Tensor:
        return self(batch)


def make_batches(group_ids=None, labels=((0, 0, 1), (1, 2))):
    g = torch.Generator().manual_seed(3)
    batches = []
    for i, batch_labels in enumerate(labels):
        batch = {
            "inputs": torch.randn(len(batch_labels), 4, generator=g),
            "labels": torch.tensor(batch_labels),
            "paths": [f"clip_{i}_{j}.wav" for j in range(len(batch_labels))],
        }
        if group_ids is not None:
            batch["group_ids"] = group_ids[i]
        batches.append(batch)
    return batches


def test_collect_embeddings_plain_in_eval_mode_without_grad():
    model = Embedder().train()
    model.frozen.eval()
    batches = make_batches()
    emb, labels = collect_embeddings(model, batches, "cpu")
    raw = model.proj(torch.cat([b["inputs"] for b in batches]))
    torch.testing.assert_close(emb, raw / raw.norm(dim=-1, keepdim=True))
    assert torch.equal(labels, torch.tensor([0, 0, 1, 1, 2]))
    assert not emb.requires_grad
    # Eval while collecting; every submodule's own mode restored after.
    assert model.modes == [False, False]
    assert model.training and model.proj.training and not model.frozen.training
    model.modes.clear()
    collect_embeddings(model.encode, batches, "cpu")  # a bound method: its module goes to eval too
    assert model.modes == [False, False] and model.training


def test_collect_embeddings_averages_groups_across_batches():
    model = Embedder()
    # Groups 5, 7, 9; group 7 is split over the two batches (ids as a list, then a tensor).
    batches = make_batches(group_ids=[[5, 5, 7], torch.tensor([7, 9])], labels=((0, 0, 1), (1, 2)))
    emb, labels = collect_embeddings(model, batches, "cpu")
    raw = model.proj(torch.cat([b["inputs"] for b in batches])).detach()
    expected = torch.stack([raw[0:2].mean(0), raw[2:4].mean(0), raw[4]])
    torch.testing.assert_close(emb, expected / expected.norm(dim=-1, keepdim=True))
    assert torch.equal(labels, torch.tensor([0, 1, 2]))
    # Order of first appearance, not sorted ids.
    batches = make_batches(group_ids=[[9, 2, 9], [4, 2]], labels=((0, 1, 0), (2, 1)))
    emb, labels = collect_embeddings(model, batches, "cpu")
    raw = model.proj(torch.cat([b["inputs"] for b in batches])).detach()
    expected = torch.stack([raw[[0, 2]].mean(0), raw[[1, 4]].mean(0), raw[3]])
    torch.testing.assert_close(emb, expected / expected.norm(dim=-1, keepdim=True))
    assert torch.equal(labels, torch.tensor([0, 1, 2]))


def test_collect_embeddings_multi_hot_labels_and_no_labels():
    model = Embedder()
    batches = make_batches(group_ids=[[1, 1, 2], [2, 3]])
    multi_hot = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    batches[0]["labels"], batches[1]["labels"] = multi_hot[:3], multi_hot[3:]
    _, labels = collect_embeddings(model, batches, "cpu")
    assert torch.equal(labels, torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    for batch in batches:
        del batch["labels"]
    emb, labels = collect_embeddings(model, batches, "cpu")
    assert labels is None and emb.shape == (3, 3)


def test_collect_embeddings_errors():
    model = Embedder()
    batches = make_batches(group_ids=[[5, 5, 7], [7, 9]], labels=((0, 1, 1), (1, 2)))
    message = r"clip_0_1.wav: label differs from the other clips of group 5"
    with pytest.raises(SampleError, match=message):
        collect_embeddings(model, batches, "cpu")
    batches = make_batches(group_ids=[[5, 5, 7], [7, 9]])
    del batches[1]["group_ids"]
    with pytest.raises(ValueError, match="batch 1 lacks `group_ids`, unlike the batches before it"):
        collect_embeddings(model, batches, "cpu")
    batches = make_batches()
    del batches[0]["labels"]
    with pytest.raises(ValueError, match="batch 1 has `labels`, unlike the batches before it"):
        collect_embeddings(model, batches, "cpu")
    batches = make_batches(group_ids=[[5, 5], [7, 9]])
    with pytest.raises(ValueError, match="batch 0: 2 group_ids for 3 embeddings"):
        collect_embeddings(model, batches, "cpu")
    batches = make_batches()
    batches[1]["labels"] = torch.tensor([1, 2, 2])
    with pytest.raises(ValueError, match="batch 1: 3 labels for 2 embeddings"):
        collect_embeddings(model, batches, "cpu")
    with pytest.raises(ValueError, match="loader yielded no batches"):
        collect_embeddings(model, [], "cpu")
    with pytest.raises(ValueError, match=r"embed_fn returned shape \(3,\) for batch 0"):
        collect_embeddings(lambda b: b["inputs"].sum(-1), make_batches(), "cpu")
    assert model.training  # restored even after an error


# --- zero_shot_classification --------------------------------------------------------------------


def test_zero_shot_single_label_matches_loop_reference():
    g = torch.Generator().manual_seed(4)
    emb = torch.randn(30, 8, generator=g) * 5  # unnormalised on purpose
    classifier = torch.randn(7, 8, generator=g)
    labels = torch.randint(0, 6, (30,), generator=g)  # class 6 never occurs
    result = zero_shot_classification(emb, labels, classifier)
    cos = [[F.cosine_similarity(e, c, dim=0).item() for c in classifier] for e in emb]
    ranked = [sorted(range(7), key=lambda c: -row[c]) for row in cos]
    top1 = sum(r[0] == int(y) for r, y in zip(ranked, labels)) / 30
    top5 = sum(int(y) in r[:5] for r, y in zip(ranked, labels)) / 30
    recalls = []
    for c in labels.unique().tolist():
        members = [i for i in range(30) if labels[i] == c]
        recalls.append(sum(ranked[i][0] == c for i in members) / len(members))
    expected = {
        "top1": 100 * top1,
        "top5": 100 * top5,
        "mean_per_class_recall": 100 * sum(recalls) / len(recalls),
        "num_samples": 30,
    }
    assert result == pytest.approx(expected)
    assert isinstance(result["num_samples"], int)


def test_zero_shot_multilabel():
    g = torch.Generator().manual_seed(5)
    emb = torch.randn(20, 8, generator=g)
    classifier = torch.randn(4, 8, generator=g)
    targets = (torch.rand(20, 4, generator=g) < 0.4).float()
    result = zero_shot_classification(emb, targets, classifier, multilabel=True)
    cos = F.normalize(emb, dim=-1) @ F.normalize(classifier, dim=-1).T
    assert result == pytest.approx({"mAP": mean_average_precision(cos, targets), "num_samples": 20})


def test_zero_shot_shape_errors():
    emb, classifier = torch.randn(5, 8), torch.randn(3, 8)
    with pytest.raises(ValueError, match=r"multi-hot labels must have shape \(5, 3\), got \(5,\)"):
        zero_shot_classification(emb, torch.zeros(5, dtype=torch.long), classifier, multilabel=True)
    message = r"class-index labels must have shape \(5,\), got \(5, 3\)"
    with pytest.raises(ValueError, match=message):
        zero_shot_classification(emb, torch.zeros(5, 3), classifier)
    with pytest.raises(ValueError, match="must share D"):
        zero_shot_classification(emb, torch.zeros(5, dtype=torch.long), torch.randn(3, 4))


# --- EvalResult ----------------------------------------------------------------------------------


def make_result(dataset="esc50", metrics=None, **kwargs):
    fields = dict(
        task="zero_shot_classification",
        dataset=dataset,
        modality="audio",
        model="ViT-L-14",
        checkpoint="ckpt/audio.safetensors",
        metrics={"top1": 75.912, "top5": 95.0} if metrics is None else metrics,
        num_samples=2000,
        extras={"templates": "default", "clips": 3},
    )
    fields.update(kwargs)
    return EvalResult(**fields)


def test_eval_result_json_round_trip_is_atomic(tmp_path):
    path = tmp_path / "out" / "esc50.json"
    result = make_result()
    result.save_json(path)
    assert EvalResult.load_json(path) == result
    assert json.loads(path.read_text())["metrics"] == {"top1": 75.912, "top5": 95.0}
    # A failed write leaves the previous file untouched and no temporary file behind.
    with pytest.raises(TypeError):
        make_result(extras={"bad": object()}).save_json(path)
    assert EvalResult.load_json(path) == result
    assert sorted(p.name for p in path.parent.iterdir()) == ["esc50.json"]
    make_result(checkpoint=None).save_json(path)
    assert EvalResult.load_json(path).checkpoint is None


def test_format_results_table():
    table = format_results_table(
        [
            make_result(),
            make_result(
                dataset="audioset",
                metrics={"mAP": 26.7, "num_samples": 17000, "classes": 527},
                num_samples=17000,
            ),
        ]
    )
    # num_samples is the N column, not a metric column; integers stay integers.
    assert table.splitlines() == [
        "dataset   task                      model         N   top1   top5    mAP  classes",
        "--------  ------------------------  --------  -----  -----  -----  -----  -------",
        "esc50     zero_shot_classification  ViT-L-14   2000  75.91  95.00      -        -",
        "audioset  zero_shot_classification  ViT-L-14  17000      -      -  26.70      527",
    ]
    with pytest.raises(ValueError, match="no results to format"):
        format_results_table([])
