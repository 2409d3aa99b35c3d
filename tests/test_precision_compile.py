"""``trainer.frozen_dtype`` (frozen weights stored in bf16, fp32 master weights) and
``trainer.compile`` (torch.compile of the model's forward), on the tiny CLIP and a tiny BLIP-2 tower.

Every test loads its own backbone: casting is in place, and the session's ``tiny_backbone`` must
stay fp32 for the other test files.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

from omniclip.acceleration import cast_frozen
from omniclip.backbone import load_backbone
from omniclip.blip_trunk import BlipVisionTrunk
from omniclip.distributed import DistEnv
from omniclip.errors import ConfigError
from omniclip.resume_rules import ResumeCheck
from omniclip.trainer import TrainerConfig
from tests.test_trainer import make_trainer

BF16 = torch.bfloat16


def fresh_backbone():
    return load_backbone("omniclip-tiny")  # weights from init_seed=0: the same in every call


def frozen_bytes_fp32_reference(model) -> int:
    """What the frozen trunk parameters take in fp32, counted on an uncast model."""
    return sum(p.numel() * 4 for p in model.trunk.parameters() if not p.requires_grad)


# ---------------------------------------------------------------- frozen bf16: what is stored how
def test_frozen_bf16_stores_frozen_weights_in_bf16_and_trains_fp32_master_weights(tmp_path):
    reference = make_trainer(fresh_backbone(), tmp_path / "fp32").model
    backbone = fresh_backbone()
    trainer = make_trainer(backbone, tmp_path / "bf16", frozen_dtype="bf16")
    trunk = trainer.model.trunk
    frozen = {n: p.dtype for n, p in trunk.named_parameters() if not p.requires_grad}
    trainable = {n: p.dtype for n, p in trainer.trainable.named_parameters() if p.requires_grad}
    assert frozen and set(frozen.values()) == {BF16}
    assert any(n.startswith("model.trunk.blocks.0.") for n in trainable)  # the unlocked block
    assert trainable and set(trainable.values()) == {torch.float32}
    optimized = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert optimized and {p.dtype for p in optimized} == {torch.float32}
    # the frozen bytes halve exactly: each frozen element went from 4 bytes to 2
    stored = sum(p.numel() * p.element_size() for p in trunk.parameters() if not p.requires_grad)
    assert stored * 2 == frozen_bytes_fp32_reference(reference)
    # the image tower shares the trunk's frozen tensors: it is cast whole, none of it copied
    assert {p.dtype for p in backbone.model.visual.parameters()} == {BF16}
    assert trunk.blocks[1].mlp.c_fc.weight is backbone.model.visual.transformer.resblocks[1].mlp.c_fc.weight
    assert {p.dtype for p in backbone.model.transformer.parameters()} == {torch.float32}  # text tower untouched


def test_cast_trunk_forward_equals_a_hand_built_mixed_precision_reference():
    """Unlocked block 0 in fp32, block 1 and the norms in bf16, the embedding back in fp32:
    the same ops on independently cast copies of the original modules give the same bits."""
    torch.manual_seed(0)
    original = fresh_backbone().model.visual  # fp32, untouched
    trunk = fresh_backbone().trunk(unlocked_blocks=1)
    trunk.cast_frozen(BF16)
    tokens = torch.randn(3, 16, 64, requires_grad=True)

    b = lambda m: copy.deepcopy(m).to(BF16)  # noqa: E731
    x = torch.cat([original.class_embedding.to(BF16).float().expand(3, 1, 64), tokens], 1)
    x = x + original.positional_embedding.to(BF16).float()
    x = b(original.ln_pre)(x.to(BF16))
    x = copy.deepcopy(original.transformer.resblocks[0])(x.float())
    x = b(original.transformer.resblocks[1])(x.to(BF16))
    expected = (b(original.ln_post)(x[:, 0]) @ original.proj.to(BF16)).float()

    out = trunk(tokens)
    assert out.dtype == torch.float32
    assert torch.equal(out, expected)
    uncast = fresh_backbone().trunk(unlocked_blocks=1)(tokens)
    assert not torch.equal(out, uncast) and torch.allclose(out, uncast, rtol=0.05, atol=0.05)
    out.square().sum().backward()
    assert tokens.grad is not None and tokens.grad.dtype == torch.float32 and tokens.grad.abs().sum() > 0
    grads = {n: p.grad for n, p in trunk.named_parameters() if p.requires_grad}
    assert grads and all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all()
                         for g in grads.values())


def test_cast_image_tower_still_encodes_images_as_pure_bf16_would():
    """Image anchors on a cache miss run the (shared, now bf16) tower: fp32 in, fp32 out."""
    original = fresh_backbone()
    backbone = fresh_backbone()
    backbone.trunk(unlocked_blocks=1).cast_frozen(BF16)
    images = torch.randn(2, 3, 32, 32)
    expected = F.normalize(copy.deepcopy(original.model.visual).to(BF16)(images.to(BF16)).float(), dim=-1)
    got = backbone.encode_image(images)
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    # anchor caches are keyed by the weights' fingerprint: bf16 anchors never mix with fp32 ones
    assert backbone.fingerprint("image") != original.fingerprint("image")
    assert backbone.fingerprint("text") == original.fingerprint("text")


def test_blip_trunk_casts_frozen_layers_and_keeps_its_projection_fp32():
    from transformers import Blip2Config, Blip2VisionModel

    def tower():
        torch.manual_seed(0)
        config = Blip2Config(vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                                            "num_attention_heads": 4, "image_size": 8, "patch_size": 2})
        return Blip2VisionModel(config.vision_config).eval().requires_grad_(False)  # loaded frozen, as backbones are

    original = tower()
    torch.manual_seed(1)
    trunk = BlipVisionTrunk(tower(), unlocked_blocks=1, projection_dim=16)
    trunk.cast_frozen(BF16)
    assert trunk.proj.dtype == torch.float32 and trunk.blocks[0].mlp.fc1.weight.dtype == torch.float32
    assert trunk.blocks[1].mlp.fc1.weight.dtype == BF16 and trunk.ln_post.weight.dtype == BF16
    tokens = torch.randn(2, 16, 32)
    emb = original.embeddings
    with torch.no_grad():
        x = torch.cat([emb.class_embedding.to(BF16).float().expand(2, 1, 32), tokens], 1)
        x = x + emb.position_embedding.to(BF16).float()
        x = copy.deepcopy(original.encoder.layers[0])(x)
        x = copy.deepcopy(original.encoder.layers[1]).to(BF16)(x.to(BF16))
        pooled = copy.deepcopy(original.post_layernorm).to(BF16)(x[:, 0])
        expected = pooled.float() @ trunk.proj
        assert torch.equal(trunk(tokens), expected)


# ---------------------------------------------------------------- frozen bf16: training
def test_frozen_bf16_loss_is_close_to_fp32_reaches_the_lens_resumes_exactly_and_exports(tmp_path):
    """Tolerance: bf16 keeps 8 significant bits (relative rounding <= 2^-9 = 0.2%) for each frozen
    weight and each activation the trunk's frozen blocks emit; the two blocks, their norms and
    the projection round ~10 times in sequence, so the embedding moves by about sqrt(10) * 0.2%
    ~ 0.6% and the loss (logit scale 14.3 times cosines, over 4 samples) by about as much:
    1% relative allows that and no more than a few times more, and a loss equal to fp32's to
    1e-6 would mean bf16 never ran."""
    full = make_trainer(fresh_backbone(), tmp_path / "full", frozen_dtype="bf16")
    bf16 = full.fit().losses
    fp32 = make_trainer(fresh_backbone(), tmp_path / "fp32").fit().losses
    assert len(bf16) == 6 and all(math.isfinite(x) for x in bf16)
    assert bf16 == pytest.approx(fp32, rel=1e-2) and bf16 != pytest.approx(fp32, rel=1e-6, abs=0)
    # gradients reach the lens through the casts, in fp32 and pointing where fp32's do
    grads = {}
    for dtype in ("bf16", "fp32"):
        trainer = make_trainer(fresh_backbone(), tmp_path / f"grad-{dtype}", frozen_dtype=dtype)
        batch = next(trainer._batches())
        loss, _ = trainer.trainable(batch)
        loss.backward()
        grads[dtype] = torch.cat([p.grad.flatten() for n, p in trainer.model.lens.named_parameters()])
    assert grads["bf16"].dtype == torch.float32 and grads["bf16"].abs().sum() > 0
    assert F.cosine_similarity(grads["bf16"], grads["fp32"], dim=0) > 0.99
    # a run stopped at step 3 and resumed repeats the uninterrupted run exactly
    first = make_trainer(fresh_backbone(), tmp_path / "part", frozen_dtype="bf16").fit(stop_at=3)
    resumed = make_trainer(fresh_backbone(), tmp_path / "part", frozen_dtype="bf16")
    second = resumed.fit()
    # to the 1e-6 the fp32 resume tests allow (fp32 runs differ from a resumed one by ~3e-7 too)
    assert first.losses + second.losses == pytest.approx(bf16, rel=0, abs=1e-6)
    for key, value in full.trainable_weights().items():
        torch.testing.assert_close(resumed.trainable_weights()[key], value, rtol=0, atol=1e-6, msg=key)
    # the export holds fp32 trainable weights and loads into a model that was never cast
    full.model.save_lens(tmp_path / "lens", {})
    fresh = make_trainer(fresh_backbone(), tmp_path / "load").model
    fresh.load_lens(tmp_path / "lens")
    for key, value in fresh.trainable_state_dict().items():
        assert value.dtype == torch.float32 and torch.equal(value, full.model.trainable_state_dict()[key]), key


def test_switching_frozen_dtype_on_resume_is_applied_like_precision(tmp_path, caplog):
    make_trainer(fresh_backbone(), tmp_path, max_steps=3).fit()
    resumed = make_trainer(fresh_backbone(), tmp_path, frozen_dtype="bf16")
    with caplog.at_level("WARNING"):
        result = resumed.fit()
    assert result.step == 6 and len(result.losses) == 3 and all(math.isfinite(x) for x in result.losses)
    assert "resuming with the recipe's new schedule from this step on: frozen_dtype: 'fp32' -> 'bf16'" in caplog.text


def test_resume_rules_classify_the_new_keys_and_read_old_checkpoints():
    run = {"model": {}}
    new_keys = ("frozen_dtype", "compile", "compile_backend", "compile_mode")
    now = json.loads(json.dumps(asdict(TrainerConfig())))
    old = {k: v for k, v in now.items() if k not in new_keys}  # a checkpoint written before the keys existed
    assert ResumeCheck(old, now, run, run).refusal() is None and ResumeCheck(old, now, run, run).applied() is None
    changed = {**now, "frozen_dtype": "bf16", "compile": True, "compile_backend": "aot_eager"}
    check = ResumeCheck(old, changed, run, run)
    assert check.refusal() is None
    assert check.schedule == {"compile": (False, True), "compile_backend": ("inductor", "aot_eager"),
                              "frozen_dtype": ("fp32", "bf16")}


# ---------------------------------------------------------------- refusals
@pytest.mark.parametrize("options, key, message", [
    ({"frozen_dtype": "fp16"}, "trainer.frozen_dtype", "`fp16` is not one of ('fp32', 'bf16')"),
    ({"frozen_dtype": "bf16", "precision": "fp16"}, "trainer.frozen_dtype",
     "bf16 frozen weights under fp16 autocast would be recast to fp16 in every op (bf16's range does not fit "
     "fp16's): use trainer.precision=bf16 or fp32 with frozen_dtype=bf16, or frozen_dtype=fp32 with fp16"),
    ({"frozen_dtype": "bf16", "parallel": "fsdp2"}, "trainer.frozen_dtype",
     "`bf16` with trainer.parallel=fsdp2 is not supported yet: use frozen_dtype=fp32 with fsdp2, or "
     "parallel=ddp with frozen_dtype=bf16"),
    ({"compile_mode": "fastest"}, "trainer.compile_mode",
     "`fastest` is not one of (None, 'default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')"),
])
def test_bad_options_are_refused_by_the_config(options, key, message):
    with pytest.raises(ConfigError) as error:
        TrainerConfig(**options)
    assert str(error.value) == f"config `{key}`: {message}"


def test_models_that_cannot_cast_and_bf16_master_weights_are_refused():
    with pytest.raises(ConfigError) as error:
        cast_frozen(torch.nn.Linear(2, 2), "bf16")
    assert str(error.value) == ("config `trainer.frozen_dtype`: Linear cannot store its frozen weights in bf16 "
                                "(it has no cast_frozen; lens models have): set trainer.frozen_dtype=fp32")
    model = make_trainer(fresh_backbone(), "unused").model
    model.lens.to(BF16)  # as a backbone loaded in bf16 would leave an unlocked copy
    with pytest.raises(ConfigError, match=r"trainable parameters are not fp32 \(lens\.latents \(torch\.bfloat16\)"):
        cast_frozen(model, "bf16")


def test_compile_refuses_unknown_backends_inductor_modes_elsewhere_and_several_ranks(tmp_path):
    with pytest.raises(ConfigError, match=r"^config `trainer.compile_backend`: `nope` is not a torch.compile "
                                          r"backend \(known: .*aot_eager"):
        make_trainer(fresh_backbone(), tmp_path, compile=True, compile_backend="nope")
    with pytest.raises(ConfigError) as error:
        make_trainer(fresh_backbone(), tmp_path, compile=True, compile_backend="eager", compile_mode="max-autotune")
    assert str(error.value) == ("config `trainer.compile_mode`: `max-autotune` is an inductor mode; "
                                "trainer.compile_backend is `eager`: set compile_mode=null")
    from omniclip.trainer import Trainer
    two = DistEnv(rank=0, local_rank=0, world_size=2, backend="gloo", device=torch.device("cpu"))
    model = make_trainer(fresh_backbone(), tmp_path).model
    with pytest.raises(ConfigError, match=r"^config `trainer.compile`: is not supported with 2 ranks yet"):
        Trainer(TrainerConfig(compile=True, num_workers=0), model, torch.nn.Identity(), [], lambda b: b,
                tmp_path, env=two)


# ---------------------------------------------------------------- compile
def _compiled(trainer) -> bool:
    return getattr(trainer.model, "_compiled_call_impl", None) is not None


def test_compile_with_the_eager_backend_gives_the_same_run_bit_for_bit(tmp_path):
    """The wiring, without a C++ compiler: dynamo captures the model's forward and replays it."""
    eager = make_trainer(fresh_backbone(), tmp_path / "eager", max_steps=3)
    compiled = make_trainer(fresh_backbone(), tmp_path / "compiled", max_steps=3, compile=True,
                            compile_backend="eager")
    assert _compiled(compiled) and not _compiled(eager)
    assert set(compiled.trainable_weights()) == set(eager.trainable_weights())  # no _orig_mod. prefixes
    assert compiled.fit().losses == eager.fit().losses
    for key, value in eager.trainable_weights().items():
        assert torch.equal(compiled.trainable_weights()[key], value), key


def test_aot_eager_with_frozen_bf16_and_checkpointing_equals_eager(tmp_path):
    """AOTAutograd traces forward and backward (the path inductor compiles) through the dtype casts
    and the checkpointed blocks; with no kernel fusion the numbers equal eager's to fp32 rounding."""
    opts = {"max_steps": 2, "warmup_steps": 1, "frozen_dtype": "bf16", "grad_checkpointing": True}
    eager = make_trainer(fresh_backbone(), tmp_path / "eager", **opts)
    compiled = make_trainer(fresh_backbone(), tmp_path / "aot", compile=True, compile_backend="aot_eager", **opts)
    assert compiled.fit().losses == pytest.approx(eager.fit().losses, rel=0, abs=1e-6)
    for key, value in eager.trainable_weights().items():
        torch.testing.assert_close(compiled.trainable_weights()[key], value, rtol=0, atol=1e-6, msg=key)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("clang++") is None,
                    reason="inductor's CPU backend needs a C++ compiler (g++ or clang++); none is installed")
def test_inductor_compile_equals_eager_within_fp32_tolerance(tmp_path):
    """Inductor fuses and reorders float arithmetic, so equality is to fp32 rounding accumulated
    over three AdamW steps (seen: 2e-7 on the loss), not bit for bit. A cold inductor cache takes
    ~2 min on the 2-core machine, a warm one ~10 s."""
    eager = make_trainer(fresh_backbone(), tmp_path / "eager", max_steps=3)
    compiled = make_trainer(fresh_backbone(), tmp_path / "inductor", max_steps=3, compile=True)
    assert compiled.fit().losses == pytest.approx(eager.fit().losses, rel=1e-5)
    for key, value in eager.trainable_weights().items():
        torch.testing.assert_close(compiled.trainable_weights()[key], value, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_frozen_bf16_with_bf16_autocast_on_cuda(tmp_path):
    from omniclip.anchors import AnchorStore
    from omniclip.losses import LogitScale
    from omniclip.model import build_lens_model
    from omniclip.objective import ContrastiveObjective
    from omniclip.trainer import Trainer
    from tests.toy_modality import ToyModality

    env = DistEnv(rank=0, local_rank=0, world_size=1, backend=None, device=torch.device("cuda"))

    def cuda_trainer(out, **overrides):
        backbone = load_backbone("omniclip-tiny", device="cuda")
        torch.manual_seed(0)
        modality = ToyModality()
        model, _ = build_lens_model(modality, backbone.trunk(unlocked_blocks=1))
        objective = ContrastiveObjective(AnchorStore(backbone), LogitScale(backbone.logit_scale, learnable=True))
        cfg = TrainerConfig(max_steps=4, batch_size=4, lr=1e-3, warmup_steps=2, num_workers=0, log_every=1,
                            progress_bar=False, tensorboard=False, **overrides)
        return Trainer(cfg, model, objective, modality.build_dataset({"size": 12}, "train"), modality.collate, out,
                       env=env)

    mixed = cuda_trainer(tmp_path / "mixed", frozen_dtype="bf16", precision="bf16")
    assert {p.dtype for p in mixed.model.trunk.blocks[1].parameters()} == {BF16}
    losses = mixed.fit().losses
    fp32 = cuda_trainer(tmp_path / "fp32").fit().losses
    assert all(math.isfinite(x) for x in losses) and losses == pytest.approx(fp32, rel=5e-2)


# ---------------------------------------------------------------- recipes
def test_recipe_keys_train_with_frozen_bf16_and_compile_and_the_export_serves_zeroshot(tmp_path, caplog):
    """``trainer.frozen_dtype`` / ``trainer.compile*`` from the command line, through omniclip-train
    (defaults in recipes/trainer/default.yaml), and the exported lens read by omniclip-zeroshot."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    from omniclip import train, zeroshot
    from tests.test_cli import TEST_RECIPES, compose_train

    defaults = OmegaConf.load("recipes/trainer/default.yaml")
    assert (defaults.frozen_dtype, defaults.compile, defaults.compile_backend, defaults.compile_mode) == \
        ("fp32", False, "inductor", None)
    overrides = ["eval=toy", "trainer.frozen_dtype=bf16", "trainer.compile=true", "trainer.compile_backend=eager"]
    with caplog.at_level("INFO", logger="omniclip.trainer"):
        result = train.run(compose_train(tmp_path, *overrides))
    assert "frozen weights stored in bf16: 0.2 MiB (0.4 MiB in fp32)" in caplog.text  # the trunk, halved
    assert "model forward compiled with torch.compile (backend eager, mode default)" in caplog.text
    assert result.step == 4 and all(math.isfinite(x) for x in result.losses)
    lens = tmp_path / "run" / "lens"
    assert {t.dtype for t in load_file(str(lens / "lens.safetensors")).values()} == {torch.float32}
    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        zcfg = compose("zeroshot", [TEST_RECIPES, "eval=toy", f"checkpoint={lens}",
                                    f"anchors.cache_dir={tmp_path / 'anchors'}", "num_workers=0"])
    results = zeroshot.run(zcfg)
    assert results[0].dataset == "toy" and results[0].num_samples == 8
