import io
import math

import pytest
import torch
from torch import nn

from omniclip.errors import ConfigError
from omniclip.optim import apply_train_only, build_optimizer, cosine_schedule, param_groups, parse_lr_groups


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(4, 8))
        self.pos_emb = nn.Parameter(torch.randn(5, 8))
        self.token_embedding = nn.Embedding(10, 8)
        self.proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))
        self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.token_embedding.weight  # tied: must appear once
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)


def test_param_groups_split_decay_by_rank_and_name():
    model = Toy()
    groups = param_groups(model, weight_decay=0.3)
    assert [g["weight_decay"] for g in groups] == [0.3, 0.0]
    decay, no_decay = groups
    assert decay["param_names"] == ["proj.weight"]
    assert no_decay["param_names"] == [
        "latents",
        "pos_emb",
        "logit_scale",
        "token_embedding.weight",
        "proj.bias",
        "norm.weight",
        "norm.bias",
    ]
    named = dict(model.named_parameters())
    for group in groups:
        assert all(p is named[n] for p, n in zip(group["params"], group["param_names"], strict=True))
    all_params = [p for g in groups for p in g["params"]]
    assert len({id(p) for p in all_params}) == len(all_params)  # tied weight counted once


def test_param_groups_custom_keywords_and_empty_group_omitted():
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False))
    groups = param_groups(model, 0.1, no_decay_names=())
    assert len(groups) == 1 and groups[0]["param_names"] == ["0.weight", "1.weight"]
    # the parameter's own name is matched, not a substring of its path
    mlp = nn.ModuleDict({"pos_embed": nn.Sequential(nn.Linear(3, 4)), "x": nn.Linear(2, 2)})
    mlp.register_parameter("pos_emb", nn.Parameter(torch.zeros(3, 4)))
    groups = param_groups(mlp, 0.1)
    assert [(g["param_names"], g["weight_decay"]) for g in groups] == [
        (["pos_embed.0.weight", "x.weight"], 0.1),
        (["pos_emb", "pos_embed.0.bias", "x.bias"], 0.0),
    ]


def test_build_optimizer_hyper_parameters():
    opt = build_optimizer(Toy(), lr=3e-4)
    assert isinstance(opt, torch.optim.AdamW)
    for group in opt.param_groups:
        assert group["lr"] == 3e-4
        assert group["betas"] == (0.9, 0.98)
        assert group["eps"] == 1e-6
    assert [g["weight_decay"] for g in opt.param_groups] == [0.2, 0.0]
    assert "param_names" in opt.state_dict()["param_groups"][0]
    fused = build_optimizer(Toy(), lr=1e-3, weight_decay=0.05, betas=(0.8, 0.9), eps=1e-8, fused=True)
    assert fused.defaults["fused"] is True
    assert fused.param_groups[0]["weight_decay"] == 0.05
    assert fused.param_groups[0]["betas"] == (0.8, 0.9) and fused.param_groups[0]["eps"] == 1e-8


def test_build_optimizer_errors():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match=r"^Linear has no trainable parameter"):
        build_optimizer(model, lr=1e-3)
    with pytest.raises(ConfigError, match=r"config `lr`: must be positive, got 0"):
        build_optimizer(nn.Linear(2, 2), lr=0)


def _lrs(scheduler, optimizer, steps):
    """Learning rate used by each of ``steps`` optimizer steps."""
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_cosine_schedule_values():
    base, warmup, total, floor = 0.1, 4, 14, 0.2
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    lrs = _lrs(cosine_schedule(opt, warmup, total, min_lr_ratio=floor), opt, 20)
    # Hand-computed points: warm-up (s+1)/4, peak, half-way down the cosine, floor.
    assert lrs[0] == pytest.approx(0.025)
    assert lrs[1] == pytest.approx(0.05)
    assert lrs[3] == pytest.approx(0.1)
    assert lrs[4] == pytest.approx(0.1)
    assert lrs[9] == pytest.approx(0.1 * (0.2 + 0.8 * 0.5))
    assert lrs[14:] == pytest.approx([0.02] * 6)
    expected = [
        base * (s + 1) / warmup
        if s < warmup
        else base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1, (s - 4) / 10))))
        for s in range(20)
    ]
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_cosine_schedule_without_warmup_starts_at_full_lr():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    lrs = _lrs(cosine_schedule(opt, 0, 4), opt, 6)
    c = 0.5 * math.cos(math.pi / 4)
    assert lrs == pytest.approx([1.0, 0.5 + c, 0.5, 0.5 - c, 0.0, 0.0])


def test_cosine_schedule_state_round_trip():
    model = Toy()
    opt = build_optimizer(model, lr=1e-2)
    sched = cosine_schedule(opt, warmup_steps=3, total_steps=12, min_lr_ratio=0.1)
    for _ in range(5):
        model.proj(torch.randn(2, 8)).sum().backward()
        opt.step()
        sched.step()
    buffer = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    model2 = Toy()
    model2.load_state_dict(model.state_dict())
    opt2 = build_optimizer(model2, lr=5.0)
    sched2 = cosine_schedule(opt2, warmup_steps=1, total_steps=100)  # wrong on purpose
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    assert _lrs(sched2, opt2, 10) == _lrs(sched, opt, 10)


@pytest.mark.parametrize(
    "args, message",
    [
        ((-1, 10, 0.0), r"config `warmup_steps`: must be >= 0, got -1"),
        ((10, 10, 0.0), r"config `max_steps`: must exceed `warmup_steps` \(10\), got 10: raise `max_steps` or lower"),
        ((0, 10, 1.5), r"config `min_lr_ratio`: must be in \[0, 1\], got 1.5"),
    ],
)
def test_cosine_schedule_rejects_bad_arguments(args, message):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ConfigError, match=message):
        cosine_schedule(opt, *args)


# ------------------------------------------------------------------ lr groups and train_only
class Net(nn.Module):
    """Names like the trainer's: a model with a new module beside its tower, and an objective."""

    def __init__(self):
        super().__init__()
        self.model = nn.ModuleDict({"tower": nn.Linear(4, 4), "mit": nn.Linear(4, 4)})
        self.objective = nn.ModuleDict({"prompts": nn.Linear(4, 2)})
        self.objective.register_parameter("log_scale", nn.Parameter(torch.tensor(1.0)))


def test_lr_groups_take_matching_parameters_first_match_wins():
    groups = param_groups(Net(), 0.1, lr=1e-3, lr_groups=parse_lr_groups([
        {"match": r"model\.mit\..*", "lr_scale": 10}, {"match": r".*\.(mit|prompts)\..*", "lr_scale": 2}]))
    summary = [(g["group"], g["param_names"], g["weight_decay"], g.get("lr")) for g in groups]
    assert summary == [
        ("default", ["model.tower.weight"], 0.1, None),
        ("default", ["model.tower.bias", "objective.log_scale"], 0.0, None),
        (r"lr_scale=10:model\.mit\..*", ["model.mit.weight"], 0.1, pytest.approx(1e-2)),
        (r"lr_scale=10:model\.mit\..*", ["model.mit.bias"], 0.0, pytest.approx(1e-2)),
        (r"lr_scale=2:.*\.(mit|prompts)\..*", ["objective.prompts.weight"], 0.1, pytest.approx(2e-3)),
        (r"lr_scale=2:.*\.(mit|prompts)\..*", ["objective.prompts.bias"], 0.0, pytest.approx(2e-3)),
    ]
    # a pattern is matched against the whole name: "mit" alone matches nothing
    with pytest.raises(ConfigError, match=r"config `lr_groups\[0\].match`: `mit` matches no trainable parameter"):
        param_groups(Net(), 0.1, lr=1e-3, lr_groups=parse_lr_groups([{"match": "mit", "lr_scale": 10}]))
    # a group whose parameters an earlier group took is refused too
    with pytest.raises(ConfigError, match=r"`lr_groups\[1\].match`: `model\\.mit\\.weight` matches no trainable "
                                          r"parameter that an earlier lr group has not taken"):
        param_groups(Net(), 0.1, lr=1e-3, lr_groups=parse_lr_groups([
            {"match": r"model\.mit\..*"}, {"match": r"model\.mit\.weight", "lr_scale": 3}]))


@pytest.mark.parametrize("spec, message", [
    ([{"match": "(", "lr_scale": 2}], r"`lr_groups\[0\].match`: `\(` is not a regular expression"),
    ([{"match": "x", "lr_scale": 0}], r"`lr_groups\[0\].lr_scale`: must be a positive number, got 0"),
    ([{"match": "x"}, {"match": "y", "lr": 2}],
     r"`lr_groups\[1\].lr`: unknown key \(known: match, lr_scale, weight_decay\)"),
    ([{"match": "x", "weight_decay": -1e-3}], r"`lr_groups\[0\].weight_decay`: must be a non-negative number, got"),
    ([{"match": "x", "weight_decay": "1e-2"}], r"`lr_groups\[0\].weight_decay`: must be a non-negative number, got"),
    ([{"match": "x", "weight_decay": float("nan")}], r"`lr_groups\[0\].weight_decay`: must be a non-negative"),
    ([{"lr_scale": 2}], r"`lr_groups\[0\].match`: must be a non-empty regular expression, got None"),
    (["x"], r"`lr_groups\[0\]`: must be a mapping"),
])
def test_lr_group_spec_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_lr_groups(spec)


def test_lr_groups_carry_their_own_weight_decay_on_decayed_parameters_only():
    """ILA's groups: alignment 1e-2, temporal 1e-3, the rest of the trainer's; norms / biases / the
    scale stay undecayed in every group, whatever the group's decay."""
    opt = build_optimizer(Net(), lr=1e-3, weight_decay=3e-3, lr_groups=[
        {"match": r"model\.mit\..*", "lr_scale": 10, "weight_decay": 1e-2},
        {"match": r"objective\.prompts\..*", "weight_decay": 0},  # 0 is a decay, not "absent"
        {"match": r"model\.tower\..*", "lr_scale": 2}])  # no decay given: the trainer's
    summary = [(g["param_names"], g["weight_decay"]) for g in opt.param_groups]
    assert summary == [
        (["objective.log_scale"], 0.0),
        (["model.mit.weight"], 1e-2), (["model.mit.bias"], 0.0),
        (["objective.prompts.weight"], 0.0), (["objective.prompts.bias"], 0.0),
        (["model.tower.weight"], 3e-3), (["model.tower.bias"], 0.0),
    ]
    assert opt.param_groups[1]["group"] == r"lr_scale=10:model\.mit\..*"  # the decay is no part of the label
    # AdamW applies it: one step on zero gradients shrinks the weights by lr * decay
    before = {n: p.detach().clone() for g in opt.param_groups for n, p in zip(g["param_names"], g["params"])}
    for group in opt.param_groups:
        for param in group["params"]:
            param.grad = torch.zeros_like(param)
    opt.step()
    after = {n: p for g in opt.param_groups for n, p in zip(g["param_names"], g["params"])}
    for name, decay, lr in (("model.mit.weight", 1e-2, 1e-2), ("model.tower.weight", 3e-3, 2e-3),
                            ("objective.prompts.weight", 0.0, 1e-3)):
        assert torch.allclose(after[name], before[name] * (1 - lr * decay), rtol=0, atol=1e-9), name
    assert torch.equal(after["model.mit.bias"], before["model.mit.bias"])


def test_unknown_lr_group_key_is_named_under_trainer():
    from omniclip.trainer import TrainerConfig

    with pytest.raises(ConfigError, match=r"config `trainer\.lr_groups\[1\]\.decay`: unknown key"):
        TrainerConfig(lr_groups=[{"match": "x", "weight_decay": 0.1}, {"match": "y", "decay": 0.1}])
    with pytest.raises(ConfigError, match=r"config `trainer\.lr_groups\[0\]\.weight_decay`: must be a non-negative"):
        TrainerConfig(lr_groups=[{"match": "x", "weight_decay": -1}])


def test_lr_groups_follow_the_schedule_at_their_scale():
    model = Net()
    opt = build_optimizer(model, lr=0.1, lr_groups=[{"match": r"model\.mit\..*", "lr_scale": 10}])
    sched = cosine_schedule(opt, warmup_steps=2, total_steps=6, min_lr_ratio=0.1)
    for step in range(8):
        factor = (step + 1) / 2 if step < 2 else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1, (step - 2) / 4)))
        for group in opt.param_groups:
            expected = 0.1 * factor * group.get("lr_scale", 1)  # the default groups carry no lr_scale
            assert group["lr"] == pytest.approx(expected, rel=1e-12), (step, group["group"])
        assert {g.get("lr_scale", 1) for g in opt.param_groups} == {1, 10}
        opt.step()
        sched.step()


def test_train_only_freezes_every_other_parameter():
    model = Net()
    model.model.tower.requires_grad_(False)
    kept = apply_train_only(model, [r"model\..*\.bias", r"objective\.prompts\..*"])
    assert kept == ["model.mit.bias", "objective.prompts.weight", "objective.prompts.bias"]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == kept
    assert [n for g in param_groups(model, 0.1) for n in g["param_names"]] == ["objective.prompts.weight",
                                                                              "model.mit.bias", "objective.prompts.bias"]
    assert apply_train_only(model, None) == kept  # null: everything trainable stays so


@pytest.mark.parametrize("patterns, message", [
    # model.tower is frozen already: a pattern that matches only frozen parameters trains nothing
    ([r"objective\..*", r"model\.tower\..*"], r"`train_only\[1\]`: `model\\.tower\\..\*` matches no trainable "
                                               r"parameter \(trainable: model.mit.weight, model.mit.bias"),
    ([], r"`train_only`: is empty, so nothing would train"),
    (["[a-"], r"`train_only\[0\]`: `\[a-` is not a regular expression"),
])
def test_train_only_errors_name_the_pattern(patterns, message):
    model = Net()
    model.model.tower.requires_grad_(False)
    before = [n for n, p in model.named_parameters() if p.requires_grad]
    with pytest.raises(ConfigError, match=message):
        apply_train_only(model, patterns)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == before  # nothing frozen on error


@pytest.mark.parametrize("experiment", ["ila_k400_8f", "ila_k400_16f", "ila_ssv2", "ila_debug"])
def test_ila_recipes_decay_each_group_as_the_reference(experiment):
    """ILA's utils/optimizer.py: alignment (message_*) 1e-2, temporal skips 1e-3, MIT 3e-3."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        cfg = compose("train", [f"experiment=video/{experiment}"])
    groups = parse_lr_groups(OmegaConf.to_container(cfg.trainer.lr_groups))
    assert [(g.lr_scale, g.weight_decay) for g in groups] == [(62.5, 1e-2), (10.0, 1e-3), (50.0, 3e-3)]
    assert "message_" in groups[0].match and "temporal_" in groups[1].match and groups[2].match == r"model\.temporal\..*"
    assert cfg.trainer.weight_decay == pytest.approx(3e-3)  # TRAIN.WEIGHT_DECAY
