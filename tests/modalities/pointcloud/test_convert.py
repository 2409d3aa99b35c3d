"""ViT-Lens 3D checkpoint import: published key layouts, strict mapping, and the converted forward.

Checkpoints are built here with random weights in the published layouts: ViT-Lens' three-tower
model (``visual.*`` 3D tower without conv1, ``image.*`` CLIP image tower, text tower at the top
level) wrapped as ``{epoch, state_dict, optimizer}`` with DDP ``module.`` prefixes, and OpenShape's
``CLIPBindWrap`` (``backbone.*``, first 16 bigG blocks removed).
"""

from __future__ import annotations


import open_clip
import pytest
import torch
import torch.nn.functional as F

from omniclip.convert import get_converter, main
from omniclip.model import load_lens_model
from omniclip.modalities.pointcloud.lens_configs import PUBLISHED
from omniclip.trunk import ViTTrunk
from tests.reference import mapped_shapes, perceiver_reference_keys, reference_perceiver, vitlens_three_tower_keys
from tests.modalities.pointcloud.test_tokenizers import (
    pnsa_reference,
    pnsa_reference_keys,
    pointbert_reference_keys,
    random_state,
)


def clip_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.state_dict())


def test_vitlens_l_published_layout_maps_every_key_strictly():
    with torch.device("meta"):
        clip = open_clip.create_model("ViT-L-14", device="meta")
        target = get_converter("pointcloud.vitlens-l").build(PUBLISHED["vitlens-l"])
    keys = vitlens_three_tower_keys(clip, pointbert_reference_keys(256, 384),
                                    perceiver_reference_keys(384, 1024, 256, 4, 64, 16 * 64))
    # 3D tower 295 (no conv1) + image tower 296 + text tower 150 + tokenizer 24 + lens 1 + 4 x 26
    assert len(keys) == 870
    expected = {k: tuple(v.shape) for k, v in target.state_dict().items()}
    assert mapped_shapes("pointcloud.vitlens-l", keys) == expected
    assert not any(k.startswith("trunk.") for k in expected)  # frozen trunk: nothing to import


def test_vitlens_bigg_published_layout_maps_onto_the_trunk_trainable_parts():
    with torch.device("meta"):
        clip = open_clip.create_model("ViT-bigG-14", device="meta")
        target = get_converter("pointcloud.vitlens-bigg").build(PUBLISHED["vitlens-bigg"])
    trunk = ViTTrunk(clip.visual, skip_blocks=16, unlocked_blocks=2, unlock_class_token=True)
    visual = {k[len("visual."):]: tuple(v.shape) for k, v in clip.state_dict().items() if k.startswith("visual.")}
    keys = {}
    for key, shape in visual.items():  # blocks 16..47 renumbered 0..31, conv1 absent (3D tower)
        if key.startswith("conv1"):
            continue
        if key.startswith("transformer.resblocks."):
            index, rest = key[len("transformer.resblocks."):].split(".", 1)
            if int(index) < 16:
                continue
            key = f"transformer.resblocks.{int(index) - 16}.{rest}"
        keys[f"backbone.{key}"] = shape
    keys.update({f"backbone.visual_adapter.{k}": s for k, s in pnsa_reference_keys(6, [64, 64, 256], 256).items()})
    keys.update({f"backbone.perceiver.{k}": s
                 for k, s in perceiver_reference_keys(256, 1664, 256, 4, 104, 16 * 104).items()})
    expected = {k: tuple(v.shape) for k, v in target.state_dict().items()}
    assert mapped_shapes("pointcloud.vitlens-bigg", keys) == expected
    trainable = {f"trunk.{n}": tuple(p.shape) for n, p in trunk.named_parameters() if p.requires_grad}
    assert {k: s for k, s in expected.items() if k.startswith("trunk.")} == trainable
    assert len(trainable) == 1 + 2 * 12


# ---------------------------------------------------------------------------------------------- forward

SMALL = {"num_groups": 8, "group_size": 6, "encoder_dim": 32, "token_dim": 24}
SMALL_LENS = {"latent_dim": 64, "num_latents": 16, "depth": 2, "cross_dim_head": 16, "latent_heads": 2,
              "latent_dim_head": 16, "input_dim": 24}


def small_overrides() -> list[str]:
    sets = ["backbone.name=omniclip-tiny", "backbone.pretrained=null"]
    sets += [f"tokenizer.{k}={v}" for k, v in SMALL.items()] + [f"lens.{k}={v}" for k, v in SMALL_LENS.items()]
    return ["--set", *sets]


def small_vitlens_checkpoint(tiny_clip: torch.nn.Module, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    tok = random_state(pointbert_reference_keys(SMALL["encoder_dim"], SMALL["token_dim"]), seed)
    lens_keys = perceiver_reference_keys(24, 64, 16, 2, 16, 2 * 16)
    lens = {k: torch.randn(s, generator=gen) * (0.15 if len(s) > 1 else 0.1) for k, s in lens_keys.items()}
    lens.update({k: 1 + 0.1 * torch.randn(s, generator=gen) for k, s in lens_keys.items() if k.endswith("norm.weight")
                 or k.endswith("norm_context.weight")})
    state = {f"visual.visual_adapter.{k}": v for k, v in tok.items()}
    state.update({f"visual.perceiver.{k}": v for k, v in lens.items()})
    clip = clip_state(tiny_clip)
    state.update({k: v.clone() for k, v in clip.items() if k.startswith("visual.") and not k.startswith("visual.conv1")})
    state.update({f"image.{k[7:]}": v.clone() for k, v in clip.items() if k.startswith("visual.")})
    state.update({k: v.clone() for k, v in clip.items() if not k.startswith("visual.")})
    return {"epoch": 7, "name": "pc/vitlensL", "state_dict": {f"module.{k}": v for k, v in state.items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}}


def reference_fps(xyz: torch.Tensor, npoint: int) -> list[int]:
    dist = torch.full((len(xyz),), 1e10, dtype=torch.float64)
    chosen, far = [], 0
    for _ in range(npoint):
        chosen.append(far)
        dist = torch.minimum(dist, ((xyz.double() - xyz[far].double()) ** 2).sum(-1))
        far = int(dist.argmax())
    return chosen


def reference_tokens(points: torch.Tensor, s: dict[str, torch.Tensor]) -> torch.Tensor:
    """Point-BERT tokenizer by explicit ops (eval-mode BatchNorm, FPS from point 0)."""
    def conv(x, name):  # 1x1 Conv1d on [C, K]
        return s[f"{name}.weight"][:, :, 0] @ x + s[f"{name}.bias"][:, None]

    def bn(x, name):
        return (x - s[f"{name}.running_mean"][:, None]) / torch.sqrt(s[f"{name}.running_var"][:, None] + 1e-5) \
            * s[f"{name}.weight"][:, None] + s[f"{name}.bias"][:, None]

    out = []
    for xyz in points:
        tokens = []
        for c in reference_fps(xyz, SMALL["num_groups"]):
            near = ((xyz - xyz[c]) ** 2).sum(-1).argsort()[: SMALL["group_size"]]
            group = (xyz[near] - xyz[c]).T  # [3, K]
            f = conv(torch.relu(bn(conv(group, "encoder.first_conv.0"), "encoder.first_conv.1")), "encoder.first_conv.3")
            f = torch.cat([f.max(1, keepdim=True).values.expand_as(f), f])
            f = conv(torch.relu(bn(conv(f, "encoder.second_conv.0"), "encoder.second_conv.1")), "encoder.second_conv.3")
            feat = s["reduce_dim.weight"] @ f.max(1).values + s["reduce_dim.bias"]
            pos = s["pos_embed.2.weight"] @ F.gelu(s["pos_embed.0.weight"] @ xyz[c] + s["pos_embed.0.bias"]) \
                + s["pos_embed.2.bias"]
            tokens.append(feat + pos)
        out.append(torch.stack(tokens))
    return torch.stack(out)


def reference_clip_head(latents: torch.Tensor, visual: torch.nn.Module) -> torch.Tensor:
    """open_clip's own visual modules: class token, positions, ln_pre, blocks, ln_post(cls), proj."""
    cls = visual.class_embedding.expand(latents.shape[0], 1, -1)
    x = visual.ln_pre(torch.cat([cls, latents], 1) + visual.positional_embedding)
    for block in visual.transformer.resblocks:
        x = block(x)
    return F.normalize(visual.ln_post(x[:, 0]) @ visual.proj, dim=-1)


def reference_block(x: torch.Tensor, s: dict[str, torch.Tensor], prefix: str, heads: int) -> torch.Tensor:
    """open_clip's pre-norm residual block (MHA + GELU MLP) by explicit ops from raw tensors."""
    def ln(t, name):
        return F.layer_norm(t, t.shape[-1:], s[f"{prefix}.{name}.weight"], s[f"{prefix}.{name}.bias"])

    width = x.shape[-1]
    qkv = ln(x, "ln_1") @ s[f"{prefix}.attn.in_proj_weight"].T + s[f"{prefix}.attn.in_proj_bias"]
    q, k, v = qkv.split(width, dim=-1)
    dim_head = width // heads
    outs = []
    for h in range(heads):
        sl = slice(h * dim_head, (h + 1) * dim_head)
        weights = torch.softmax(q[..., sl] @ k[..., sl].transpose(-1, -2) / dim_head ** 0.5, dim=-1)
        outs.append(weights @ v[..., sl])
    x = x + torch.cat(outs, -1) @ s[f"{prefix}.attn.out_proj.weight"].T + s[f"{prefix}.attn.out_proj.bias"]
    hidden = ln(x, "ln_2") @ s[f"{prefix}.mlp.c_fc.weight"].T + s[f"{prefix}.mlp.c_fc.bias"]
    hidden = 0.5 * hidden * (1 + torch.erf(hidden / 2 ** 0.5))
    return x + hidden @ s[f"{prefix}.mlp.c_proj.weight"].T + s[f"{prefix}.mlp.c_proj.bias"]


def reference_skipped_trunk(latents: torch.Tensor, ckpt: dict[str, torch.Tensor], clip: dict[str, torch.Tensor],
                            heads: int) -> torch.Tensor:
    """The bigG-style trunk of the test checkpoint: class token and block 0 from the OpenShape
    checkpoint (``backbone.*``), positions / ln_pre / ln_post / proj from the CLIP state."""
    def ln(t, name):
        return F.layer_norm(t, t.shape[-1:], clip[f"visual.{name}.weight"], clip[f"visual.{name}.bias"])

    cls = ckpt["backbone.class_embedding"].expand(latents.shape[0], 1, -1)
    x = ln(torch.cat([cls, latents], 1) + clip["visual.positional_embedding"], "ln_pre")
    x = reference_block(x, ckpt, "backbone.transformer.resblocks.0", heads)
    return F.normalize(ln(x[:, 0], "ln_post") @ clip["visual.proj"], dim=-1)


def test_convert_cli_writes_a_lens_export_whose_forward_matches_the_raw_tensors(tmp_path, tiny_backbone, capsys):
    ckpt = small_vitlens_checkpoint(tiny_backbone.model)
    src = tmp_path / "Datacomp_L14_ShapeNet.pt"
    torch.save(ckpt, src)
    assert main(["pointcloud.vitlens-l", str(src), str(tmp_path / "out"), *small_overrides()]) == 0
    assert "loaded" in capsys.readouterr().out
    model, _, config = load_lens_model(tmp_path / "out", backbone=tiny_backbone)
    assert config["converted_from"]["converter"] == "pointcloud.vitlens-l"
    raw = {k[len("module."):]: v for k, v in ckpt["state_dict"].items()}
    tok = {k[len("visual.visual_adapter."):]: v for k, v in raw.items() if k.startswith("visual.visual_adapter.")}
    lens = {k[len("visual.perceiver."):]: v for k, v in raw.items() if k.startswith("visual.perceiver.")}
    points = torch.randn(2, 40, 3, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got = model.encode(points)
        tokens = reference_tokens(points, tok)
        torch.testing.assert_close(model.tokenizer(points), tokens, rtol=1e-4, atol=1e-4)
        latents = reference_perceiver(lens, tokens, SMALL_LENS)
        torch.testing.assert_close(model.lens(tokens), latents, rtol=1e-4, atol=1e-4)
        expected = reference_clip_head(latents, tiny_backbone.model.visual)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_convert_reports_every_missing_and_unexpected_key(tmp_path, tiny_backbone, capsys):
    ckpt = small_vitlens_checkpoint(tiny_backbone.model)
    state = ckpt["state_dict"]
    del state["module.visual.perceiver.layers.1.0.fn.to_q.weight"]
    state["module.visual.perceiver.layers.9.0.fn.to_q.weight"] = torch.zeros(16, 64)
    state["module.visual.point_head.weight"] = torch.zeros(3)
    torch.save(ckpt, tmp_path / "bad.pt")
    assert main(["pointcloud.vitlens-l", str(tmp_path / "bad.pt"), str(tmp_path / "out"), *small_overrides()]) == 1
    err = capsys.readouterr().err
    assert "1 missing, 2 unexpected" in err
    assert "lens.layers.1.0.fn.to_q.weight  (closest unexpected: visual.perceiver.layers.9.0.fn.to_q.weight" in err
    assert "visual.point_head.weight (no key-map rule matches)" in err
    assert not (tmp_path / "out" / "lens.safetensors").exists()


def test_bigg_converter_imports_unlocked_blocks_and_class_token(tmp_path, tiny_backbone):
    gen = torch.Generator().manual_seed(9)
    tok = random_state(pnsa_reference_keys(6, [8, 8, 16], 24), 3)
    lens_keys = perceiver_reference_keys(24, 64, 16, 2, 16, 2 * 16)
    clip = clip_state(tiny_backbone.model)
    state = {f"backbone.visual_adapter.{k}": v for k, v in tok.items()}
    state.update({f"backbone.perceiver.{k}": torch.randn(s, generator=gen) * 0.3 for k, s in lens_keys.items()})
    for key, value in clip.items():  # tiny CLIP: skip 1 of its 2 blocks, train the other one and the cls token
        if not key.startswith("visual.") or key.startswith("visual.conv1") or ".resblocks.0." in key:
            continue
        key = key.replace("resblocks.1.", "resblocks.0.")
        state[f"backbone.{key[7:]}"] = value + 0.5 * torch.randn(value.shape, generator=gen)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "logit_scale": {}, "text_proj": None,
                "image_proj": None, "optimizer": {}, "epoch": 1}, tmp_path / "bigG.pt")
    sets = ["backbone.name=omniclip-tiny", "trunk.skip_blocks=1", "trunk.unlocked_blocks=1",
            "tokenizer.num_groups=8", "tokenizer.group_size=6", "tokenizer.mlp=[8,8,16]", "tokenizer.token_dim=24",
            "tokenizer.radius=0.8", *[f"lens.{k}={v}" for k, v in SMALL_LENS.items()]]
    assert main(["pointcloud.vitlens-bigg", str(tmp_path / "bigG.pt"), str(tmp_path / "out"), "--set", *sets]) == 0
    model, _, _ = load_lens_model(tmp_path / "out", backbone=tiny_backbone)
    trunk = model.trunk
    assert len(trunk.blocks) == 1
    torch.testing.assert_close(trunk.class_embedding.detach(), state["backbone.class_embedding"])
    torch.testing.assert_close(trunk.blocks[0].attn.in_proj_weight.detach(),
                               state["backbone.transformer.resblocks.0.attn.in_proj_weight"])
    # ignored keys stay the CLIP's own: positions come from the backbone, not the checkpoint
    torch.testing.assert_close(trunk.positional_embedding, clip["visual.positional_embedding"])
    torch.testing.assert_close(model.tokenizer.sa.mlp_convs[1].weight.detach(), tok["sa.mlp_convs.1.weight"])
    points = torch.cat([torch.randn(2, 30, 3, generator=gen), torch.rand(2, 30, 3, generator=gen)], -1)
    raw_tok = {k[len("backbone.visual_adapter."):]: v for k, v in state.items()
               if k.startswith("backbone.visual_adapter.")}
    raw_lens = {k[len("backbone.perceiver."):]: v for k, v in state.items() if k.startswith("backbone.perceiver.")}
    with torch.no_grad():
        got = model.encode(points)
        # Every stage from the raw checkpoint tensors by explicit ops: the PointNet++ tokenizer
        # (FPS from point 0, ball query radius 0.8), the Perceiver, then the trunk with the
        # checkpoint's class token and block and the CLIP's own positions, ln_pre, ln_post, proj.
        tokens = pnsa_reference(points, raw_tok, 8, 6, 0.8, 3)
        torch.testing.assert_close(model.tokenizer(points), tokens, rtol=1e-4, atol=1e-4)
        latents = reference_perceiver(raw_lens, tokens, SMALL_LENS)
        torch.testing.assert_close(model.lens(tokens), latents, rtol=1e-4, atol=1e-4)
        expected = reference_skipped_trunk(latents, state, clip, heads=2)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # the trained block matters: the frozen CLIP block in its place gives another embedding
    with torch.no_grad():
        frozen = {**state, **{f"backbone.transformer.resblocks.0.{k[len('visual.transformer.resblocks.1.'):]}": v
                              for k, v in clip.items() if k.startswith("visual.transformer.resblocks.1.")}}
        assert (reference_skipped_trunk(latents, frozen, clip, heads=2) - got).abs().max() > 1e-2


def test_converters_are_listed(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "pointcloud.vitlens-l" in out and "pointcloud.vitlens-bigg" in out


@pytest.mark.parametrize("name", ["pointcloud.vitlens-l", "pointcloud.vitlens-bigg"])
def test_converter_refuses_auto_sizes(name):
    config = {**PUBLISHED[name.split(".")[1]], "lens": {**PUBLISHED[name.split(".")[1]]["lens"], "num_latents": "auto"}}
    with pytest.raises(Exception, match=r"config `lens.num_latents`: a converter needs explicit lens sizes"):
        get_converter(name).build(config)
