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


def test_a_new_group_weight_decay_is_applied_like_weight_decay():
    decayed = {**BASE, "lr_groups": [{"match": r"model\.mit\..*", "lr_scale": 10.0, "weight_decay": 1e-3}]}
    changed = check(decayed, {**decayed, "lr_groups": [{"match": r"model\.mit\..*", "lr_scale": 10, "weight_decay": 1e-2}]})
    assert changed.refusal() is None
    assert changed.schedule == {"lr_groups[0].weight_decay": (1e-3, 1e-2)}
    # a checkpoint whose group took the trainer's decay (no key) resumes with one that sets it
    added = check(BASE, decayed)
    assert added.refusal() is None and added.schedule == {"lr_groups[0].weight_decay": ("<absent>", 1e-3)}
    assert check(decayed, BASE).schedule == {"lr_groups[0].weight_decay": (1e-3, "<absent>")}
    # with another grouping the decay means nothing for the checkpoint's groups: only the match is named
    moved = check(decayed, {**BASE, "lr_groups": [{"match": "x", "lr_scale": 10, "weight_decay": 0.5}]})
    assert set(moved.refused) == {"trainer.lr_groups[0].match"} and moved.schedule == {}


def test_a_group_key_the_rules_do_not_know_is_refused_not_ignored():
    result = check(BASE, {**BASE, "lr_groups": [{**BASE["lr_groups"][0], "betas": [0.9, 0.9]}]})
    assert result.refused == {"trainer.lr_groups[0].betas": ("<absent>", [0.9, 0.9])}


def test_resumed_optimizer_groups_take_the_recipes_new_weight_decay(tmp_path, tiny_backbone):
    """End to end: the trainer's optimizer groups carry the group's decay, and after a resume the new one."""
    from tests.test_trainer import make_trainer

    LENS = r"lr_scale=2:model\.lens\..*"

    def groups(decay):
        return [{"match": r"model\.lens\..*", "lr_scale": 2.0, "weight_decay": decay}]

    def decays(trainer):
        return [(g["group"], g["weight_decay"]) for g in trainer.optimizer.param_groups]

    first = make_trainer(tiny_backbone, tmp_path, max_steps=3, weight_decay=0.2, lr_groups=groups(1e-2))
    assert decays(first) == [("default", 0.2), ("default", 0.0),
                             (LENS, 1e-2), (LENS, 0.0)]
    first.fit()
    resumed = make_trainer(tiny_backbone, tmp_path, max_steps=6, weight_decay=0.2, lr_groups=groups(3e-3))
    assert resumed.resume() is not None and resumed.step == 3
    assert decays(resumed) == [("default", 0.2), ("default", 0.0),
                               (LENS, 3e-3), (LENS, 0.0)]
    # the moments are the checkpoint's, not fresh ones
    state = resumed.optimizer.state[resumed.optimizer.param_groups[2]["params"][0]]
    assert int(state["step"]) == 3 and state["exp_avg"].abs().sum() > 0
