"""Which recipe changes a resumed run applies, which it refuses (omniclip.resume_rules)."""

from __future__ import annotations

from omniclip.resume_rules import ResumeCheck

BASE = {"lr": 1e-3, "max_steps": 100, "batch_size": 4, "num_workers": 2,
        "lr_groups": [{"match": r"model\.mit\..*", "lr_scale": 10.0}], "train_only": None}
RUN = {"model": {"modality": "video"}, "recipe": {"trainer": {"lr": 1e-3}}}


def check(saved: dict, current: dict) -> ResumeCheck:
    return ResumeCheck(saved, current, RUN, RUN)


def test_schedule_free_and_refused_trainer_keys():
    result = check(BASE, {**BASE, "lr": 2e-3, "num_workers": 8, "batch_size": 8})
    assert result.schedule == {"lr": (1e-3, 2e-3)}
    assert result.free == {"num_workers": (2, 8)}
    assert result.refused == {"trainer.batch_size": (4, 8)}
    assert "trainer.batch_size: 4 -> 8" in result.refusal()


def test_a_new_lr_scale_is_applied_like_lr():
    result = check(BASE, {**BASE, "lr_groups": [{"match": r"model\.mit\..*", "lr_scale": 5}]})
    assert result.refusal() is None
    assert result.schedule == {"lr_groups[0].lr_scale": (10.0, 5.0)}
    assert "lr_groups[0].lr_scale: 10.0 -> 5.0" in result.applied()


def test_another_grouping_is_refused():
    moved = check(BASE, {**BASE, "lr_groups": [{"match": r"model\.prompts\..*", "lr_scale": 5}]})
    # the scale of another grouping means nothing for the checkpoint's groups: only the match is named
    assert moved.refused == {"trainer.lr_groups[0].match": (r"model\.mit\..*", r"model\.prompts\..*")}
    assert moved.schedule == {}
    added = check(BASE, {**BASE, "lr_groups": [*BASE["lr_groups"], {"match": "x", "lr_scale": 2}]})
    assert set(added.refused) == {"trainer.lr_groups[1].match"}
    removed = check(BASE, {**BASE, "lr_groups": []})
    assert removed.refused == {"trainer.lr_groups[0].match": (r"model\.mit\..*", "<absent>")}


def test_train_only_is_refused():
    result = check(BASE, {**BASE, "train_only": [r"objective\..*"]})
    assert result.refused == {"trainer.train_only": (None, [r"objective\..*"])}


def test_checkpoints_older_than_the_optimiser_keys_resume_with_their_defaults():
    old = {k: v for k, v in BASE.items() if k not in ("lr_groups", "train_only")}
    assert check(old, {**BASE, "lr_groups": []}).refusal() is None
    refused = check(old, BASE).refused
    assert refused == {"trainer.lr_groups[0].match": ("<absent>", r"model\.mit\..*")}
    assert check(old, {**BASE, "lr_groups": [], "train_only": ["x"]}).refused == {"trainer.train_only": (None, ["x"])}
