"""ILA: masks, frame alignment, MIT, prompts and the published-checkpoint import, checked against
independent computations written here from raw tensors in the published (X-CLIP) layout.

The reference computations follow the ILA repository's semantics step by step (explicit loops over
clips, pairs and mask cells; BatchNorm written out), reading every weight by its published name,
so they also check the import's key map.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from omniclip.backbone import load_backbone
from omniclip.convert import load_state_dict_strict
from omniclip.errors import CheckpointMismatchError
from omniclip.ila import (FrameAlignment, ILABlock, MultiframeIntegrationTransformer, VideoPromptGenerator,
                          alignment_loss, alignment_masks, build_ila_model, trapezoid)
from omniclip.ila_checkpoint import KEYMAP, load_ila
from omniclip.losses import LogitScale
from omniclip.modality import default_collate
from omniclip.text_trunk import TextTrunk
from omniclip.trainer import Trainer, TrainerConfig
from omniclip.video_model import VideoClipModel
from omniclip.video_objective import ClassObjective, ClassText

D, GRID, HIDDEN, T = 64, 4, 16, 3  # tiny backbone: width 64, 32 px / 8 px patches
OFFSETS = [(0, 0), (0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (-1, -1), (1, -1), (-1, 1)]


# ------------------------------------------------------------------ published-layout tensors
def _bn(prefix: str, n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {prefix + "weight": 1 + 0.2 * torch.randn(n, generator=g), prefix + "bias": 0.2 * torch.randn(n, generator=g),
            prefix + "running_mean": 0.1 * torch.randn(n, generator=g),
            prefix + "running_var": 0.5 + torch.rand(n, generator=g), prefix + "num_batches_tracked": torch.tensor(7)}


def _w(g: torch.Generator, *shape: int) -> torch.Tensor:
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    return torch.randn(*shape, generator=g) / math.sqrt(fan_in)


def published_ila_block(prefix: str, width: int, hidden: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Random tensors of one block's ILA keys, named and shaped as in the ILA repository."""
    half, a = hidden // 2, prefix + "message_attn."
    sd = {}
    for name in ("message_fc", "temporal_skip_fc", "temporal_skip_align_fc"):
        sd[f"{prefix}{name}.weight"], sd[f"{prefix}{name}.bias"] = _w(g, width, width), 0.1 * torch.randn(width, generator=g)
    sd[prefix + "message_ln.weight"] = 1 + 0.1 * torch.randn(width, generator=g)
    sd[prefix + "message_ln.bias"] = 0.1 * torch.randn(width, generator=g)
    convs = {
        "interactive_block.0.depthwise_conv.0.": (2 * width, 1, 3, 3),
        "interactive_block.0.pointwise_conv.0.": (hidden, 2 * width, 1, 1),
        "interactive_block.1.": (hidden, hidden, 3, 3),
        "prediction_block.0.": (half, hidden, 3, 3),
        "prediction_block.4.": (half, half, 3, 3),
        "prediction_block.10.": (half // 2, half // 2, 1),
        "prediction_block.12.": (4, half // 4, 1),
        "conv.": (half, half, 3, 1, 1),
        "fc.": (width, half),
    }
    for name, shape in convs.items():
        sd[a + name + "weight"] = _w(g, *shape)
        sd[a + name + "bias"] = 0.1 * torch.randn(shape[0], generator=g)
    for name, n in (("interactive_block.0.depthwise_conv.1.", 2 * width), ("interactive_block.0.pointwise_conv.1.", hidden),
                    ("interactive_block.2.", hidden), ("prediction_block.1.", half), ("prediction_block.5.", half)):
        sd.update(_bn(a + name, n, g))
    return sd


def published_checkpoint(clip: nn.Module, hidden: int, frames: int, g: torch.Generator,
                         prompt_layers: int = 2) -> dict[str, torch.Tensor]:
    """A whole ILA / X-CLIP ``model`` state dict for ``clip``'s shapes, every value random."""
    sd = {}
    for key, value in clip.state_dict().items():
        if key.endswith(("ln_pre.weight", "ln_post.weight", "ln_1.weight", "ln_2.weight", "ln_final.weight")):
            sd[key] = 1 + 0.1 * torch.randn(value.shape, generator=g)
        elif key == "logit_scale":
            sd[key] = torch.tensor(math.log(30.0))
        else:
            sd[key] = 0.05 * torch.randn(value.shape, generator=g) if value.ndim < 2 else _w(g, *value.shape)
    width, embed = clip.visual.class_embedding.shape[0], clip.text_projection.shape[1]
    for i in range(len(clip.visual.transformer.resblocks)):
        sd.update(published_ila_block(f"visual.transformer.resblocks.{i}.", width, hidden, g))
    sd["mit.positional_embedding"] = 0.1 * torch.randn(1, frames, embed, generator=g)
    m = "mit.resblocks.0."
    sd.update({m + "attn.in_proj_weight": _w(g, 3 * embed, embed), m + "attn.in_proj_bias": 0.1 * torch.randn(3 * embed, generator=g),
               m + "attn.out_proj.weight": _w(g, embed, embed), m + "attn.out_proj.bias": 0.1 * torch.randn(embed, generator=g),
               m + "mlp.c_fc.weight": _w(g, 4 * embed, embed), m + "mlp.c_fc.bias": 0.1 * torch.randn(4 * embed, generator=g),
               m + "mlp.c_proj.weight": _w(g, embed, 4 * embed), m + "mlp.c_proj.bias": 0.1 * torch.randn(embed, generator=g)})
    for ln in ("ln_1", "ln_2"):
        sd[f"{m}{ln}.weight"], sd[f"{m}{ln}.bias"] = 1 + 0.1 * torch.randn(embed, generator=g), 0.1 * torch.randn(embed, generator=g)
    sd.update(published_prompts(width, embed, prompt_layers, g))
    return sd


def published_prompts(width: int, embed: int, layers: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Random X-CLIP prompt-generator tensors (``prompts_generator.*``, ``prompts_visual_*``)."""
    sd = {}
    p = "prompts_generator."
    sd[p + "norm.weight"], sd[p + "norm.bias"] = 1 + 0.1 * torch.randn(embed, generator=g), 0.1 * torch.randn(embed, generator=g)
    sd[p + "alpha"] = 0.5 + 0.1 * torch.randn(embed, generator=g)
    for i in range(layers):
        d = f"{p}decoder.{i}."
        for name in ("q_proj", "k_proj", "v_proj"):
            sd[f"{d}cross_attn.{name}.weight"] = _w(g, embed, embed)
        sd[d + "cross_attn.proj.weight"], sd[d + "cross_attn.proj.bias"] = _w(g, embed, embed), 0.1 * torch.randn(embed, generator=g)
        for ln in ("norm1", "norm3"):
            sd[f"{d}{ln}.weight"], sd[f"{d}{ln}.bias"] = 1 + 0.1 * torch.randn(embed, generator=g), 0.1 * torch.randn(embed, generator=g)
        sd[d + "mlp.0.weight"], sd[d + "mlp.0.bias"] = _w(g, 4 * embed, embed), 0.1 * torch.randn(4 * embed, generator=g)
        sd[d + "mlp.3.weight"], sd[d + "mlp.3.bias"] = _w(g, embed, 4 * embed), 0.1 * torch.randn(embed, generator=g)
    sd["prompts_visual_ln.weight"], sd["prompts_visual_ln.bias"] = 1 + 0.1 * torch.randn(width, generator=g), 0.1 * torch.randn(width, generator=g)
    sd["prompts_visual_proj"] = _w(g, width, embed)
    return sd


# ------------------------------------------------------------------ reference computations
def ref_profile(e: float) -> float:
    """ILA's trapezoid: 1 on [-0.25, 0.25], then 1 - (|e| - 0.25) * 1.5, never below 0."""
    return 1.0 if -0.25 <= e <= 0.25 else max(0.0, 1.0 - (abs(e) - 0.25) * 1.5)


def ref_mask(px: float, py: float, grid: int, training: bool) -> torch.Tensor:
    coords = [k / (grid - 1) * 2 - 1 for k in range(grid)]
    offsets = [(0.2 * ox, 0.2 * oy) for ox, oy in OFFSETS] if training else [(0.0, 0.0)]
    mask = torch.zeros(grid, grid, dtype=torch.float64)
    for i in range(grid):  # rows: y
        for j in range(grid):  # columns: x
            mask[i, j] = sum(ref_profile(coords[j] - (px + ox)) * ref_profile(coords[i] - (py + oy))
                             for ox, oy in offsets) / len(offsets)
    return mask.float()


def ref_batch_norm(x: torch.Tensor, sd: dict, prefix: str, training: bool) -> torch.Tensor:
    if training:  # batch statistics over (N, H, W), biased variance
        mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
    else:
        mean, var = sd[prefix + "running_mean"], sd[prefix + "running_var"]
    shape = (1, -1, 1, 1)
    return (x - mean.view(shape)) / torch.sqrt(var.view(shape) + 1e-5) * sd[prefix + "weight"].view(shape) \
        + sd[prefix + "bias"].view(shape)


def ref_ila(sd: dict, prefix: str, x: torch.Tensor, frames: int, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One block's ILA residuals as the reference computes them: (x + skips, alignment loss)."""
    def w(name: str) -> torch.Tensor:
        return sd[prefix + name]

    a = "message_attn."
    bt, length, width = x.shape
    clips, grid = bt // frames, math.isqrt(length - 1)
    m = F.layer_norm(x @ w("message_fc.weight").T + w("message_fc.bias"), (width,),
                     w("message_ln.weight"), w("message_ln.bias"), 1e-5).view(clips, frames, length, width)

    def fmap(b: int, t: int) -> torch.Tensor:  # patch tokens are row-major: token 1 + r*grid + c
        return m[b, t, 1:].T.reshape(width, grid, grid)

    pairs = torch.stack([torch.cat([fmap(b, p), fmap(b, p + 1)]) for b in range(clips) for p in range(frames - 1)])
    h = F.conv2d(pairs, w(a + "interactive_block.0.depthwise_conv.0.weight"), w(a + "interactive_block.0.depthwise_conv.0.bias"),
                 padding=1, groups=2 * width)
    h = F.relu(ref_batch_norm(h, sd, prefix + a + "interactive_block.0.depthwise_conv.1.", training))
    h = F.conv2d(h, w(a + "interactive_block.0.pointwise_conv.0.weight"), w(a + "interactive_block.0.pointwise_conv.0.bias"))
    h = F.relu(ref_batch_norm(h, sd, prefix + a + "interactive_block.0.pointwise_conv.1.", training))
    h = F.conv2d(h, w(a + "interactive_block.1.weight"), w(a + "interactive_block.1.bias"), padding=1)
    h = F.relu(ref_batch_norm(h, sd, prefix + a + "interactive_block.2.", training))  # [N, hidden, g, g]
    q = F.conv2d(h, w(a + "prediction_block.0.weight"), w(a + "prediction_block.0.bias"), padding=1)
    q = F.relu(F.max_pool2d(ref_batch_norm(q, sd, prefix + a + "prediction_block.1.", training), 2))
    q = F.conv2d(q, w(a + "prediction_block.4.weight"), w(a + "prediction_block.4.bias"), padding=1)
    q = F.relu(F.max_pool2d(ref_batch_norm(q, sd, prefix + a + "prediction_block.5.", training), 2))
    q = q.amax(dim=(2, 3))  # [N, half]
    w10, b10 = w(a + "prediction_block.10.weight")[:, :, 0], w(a + "prediction_block.10.bias")
    w12, b12 = w(a + "prediction_block.12.weight")[:, :, 0], w(a + "prediction_block.12.bias")
    half, quarter = q.shape[1], w10.shape[0] // 2
    points = {}
    for n in range(q.shape[0]):  # grouped 1x1 convs: group 0 -> the pair's first point, group 1 -> second
        v = q[n]
        hid = torch.cat([w10[:quarter] @ v[: half // 2], w10[quarter:] @ v[half // 2:]]) + b10
        hid = F.relu(hid)
        out = torch.cat([w12[:2] @ hid[:quarter], w12[2:] @ hid[quarter:]]) + b12
        points[divmod(n, frames - 1)] = torch.tanh(out) * 0.75  # key (clip, pair)

    def masked(b: int, t: int, point: torch.Tensor) -> torch.Tensor:
        mask = ref_mask(float(point[0]), float(point[1]), grid, training).flatten()
        return torch.cat([m[b, t, :1], m[b, t, 1:] * mask[:, None]])

    aligned = torch.zeros(clips, frames, length, width)
    pooled_first, pooled_second = [], []
    for b in range(clips):
        for p in range(frames - 1):
            pooled_first.append(masked(b, p, points[b, p][:2])[1:].sum(0))
            pooled_second.append(masked(b, p + 1, points[b, p][2:])[1:].sum(0))
        for t in range(frames):
            parts = []
            if t <= frames - 2:
                parts.append(masked(b, t, points[b, t][:2]))
            if t >= 1:
                parts.append(masked(b, t, points[b, t - 1][2:]))
            aligned[b, t] = sum(parts) / len(parts)
    # interactive features: the first half describes a pair's first frame, the second half its second
    hid_half = h.shape[1] // 2
    per_frame = torch.zeros(clips, frames, hid_half, grid, grid)
    for b in range(clips):
        for t in range(frames):
            parts = []
            if t <= frames - 2:
                parts.append(h[b * (frames - 1) + t, :hid_half])
            if t >= 1:
                parts.append(h[b * (frames - 1) + t - 1, hid_half:])
            per_frame[b, t] = sum(parts) / len(parts)
    conv_w, conv_b = w(a + "conv.weight")[:, :, :, 0, 0], w(a + "conv.bias")
    interactive = torch.zeros(clips, frames, length, width)
    for b in range(clips):
        for t in range(frames):
            acc = conv_b[:, None, None].expand(-1, grid, grid).clone()
            for k in range(3):  # kernel 3 over time, zero padding
                if 0 <= t + k - 1 < frames:
                    acc = acc + torch.einsum("oi,ihw->ohw", conv_w[:, :, k], per_frame[b, t + k - 1])
            tokens = acc.reshape(hid_half, grid * grid).T @ w(a + "fc.weight").T + w(a + "fc.bias")
            interactive[b, t] = torch.cat([m[b, t, :1], tokens])
    out = x + aligned.view(bt, length, width) @ w("temporal_skip_align_fc.weight").T + w("temporal_skip_align_fc.bias")
    out = out + interactive.view(bt, length, width) @ w("temporal_skip_fc.weight").T + w("temporal_skip_fc.bias")
    first, second = torch.stack(pooled_first), torch.stack(pooled_second)
    loss = (1 - (first * second).sum(-1) / (first.norm(dim=-1) * second.norm(dim=-1))).mean()
    return out, loss


def ref_attention(q_in, kv_in, wq, bq, wk, bk, wv, bv, wo, bo, heads):
    q, k, v = q_in @ wq.T + bq, kv_in @ wk.T + bk, kv_in @ wv.T + bv
    outs = []
    for hd in range(heads):
        s = slice(hd * q.shape[-1] // heads, (hd + 1) * q.shape[-1] // heads)
        att = torch.softmax(q[..., s] @ k[..., s].transpose(-1, -2) / math.sqrt(s.stop - s.start), dim=-1)
        outs.append(att @ v[..., s])
    return torch.cat(outs, -1) @ wo.T + bo


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def ref_mit(sd: dict, frames: torch.Tensor, prefix: str = "mit.") -> torch.Tensor:
    """mean_T(x + layer(x + pos)), one pre-LN layer (E // 64 heads, QuickGELU)."""
    e = frames.shape[-1]
    r = prefix + "resblocks.0."
    x = frames + sd[prefix + "positional_embedding"]
    win, bin_ = sd[r + "attn.in_proj_weight"], sd[r + "attn.in_proj_bias"]
    y = F.layer_norm(x, (e,), sd[r + "ln_1.weight"], sd[r + "ln_1.bias"])
    x = x + ref_attention(y, y, win[:e], bin_[:e], win[e:2 * e], bin_[e:2 * e], win[2 * e:], bin_[2 * e:],
                          sd[r + "attn.out_proj.weight"], sd[r + "attn.out_proj.bias"], max(1, e // 64))
    y = F.layer_norm(x, (e,), sd[r + "ln_2.weight"], sd[r + "ln_2.bias"])
    x = x + quick_gelu(y @ sd[r + "mlp.c_fc.weight"].T + sd[r + "mlp.c_fc.bias"]) @ sd[r + "mlp.c_proj.weight"].T \
        + sd[r + "mlp.c_proj.bias"]
    return (x + frames).mean(1)


def ref_prompts(sd: dict, text: torch.Tensor, context: torch.Tensor, heads: int) -> torch.Tensor:
    """X-CLIP: text [C, E] + alpha * decoder(text, norm(context)) for every clip -> [B, C, E]."""
    e, p = text.shape[-1], "prompts_generator."
    visual = F.layer_norm(context, (e,), sd[p + "norm.weight"], sd[p + "norm.bias"])
    out = []
    for b in range(context.shape[0]):
        t = text.clone()
        i = 0
        while f"{p}decoder.{i}.norm1.weight" in sd:
            d = f"{p}decoder.{i}."
            q = F.layer_norm(t, (e,), sd[d + "norm1.weight"], sd[d + "norm1.bias"])
            zero = torch.zeros(e)
            t = t + ref_attention(q, visual[b], sd[d + "cross_attn.q_proj.weight"], zero, sd[d + "cross_attn.k_proj.weight"],
                                  zero, sd[d + "cross_attn.v_proj.weight"], zero, sd[d + "cross_attn.proj.weight"],
                                  sd[d + "cross_attn.proj.bias"], heads)
            y = F.layer_norm(t, (e,), sd[d + "norm3.weight"], sd[d + "norm3.bias"])
            t = t + quick_gelu(y @ sd[d + "mlp.0.weight"].T + sd[d + "mlp.0.bias"]) @ sd[d + "mlp.3.weight"].T + sd[d + "mlp.3.bias"]
            i += 1
        out.append(text + sd[p + "alpha"] * t)
    return torch.stack(out)


def ref_clip_block(sd: dict, prefix: str, x: torch.Tensor, heads: int) -> torch.Tensor:
    """A CLIP ViT block (the tiny backbone's activation is exact GELU)."""
    e = x.shape[-1]
    win, bin_ = sd[prefix + "attn.in_proj_weight"], sd[prefix + "attn.in_proj_bias"]
    y = F.layer_norm(x, (e,), sd[prefix + "ln_1.weight"], sd[prefix + "ln_1.bias"])
    x = x + ref_attention(y, y, win[:e], bin_[:e], win[e:2 * e], bin_[e:2 * e], win[2 * e:], bin_[2 * e:],
                          sd[prefix + "attn.out_proj.weight"], sd[prefix + "attn.out_proj.bias"], heads)
    y = F.layer_norm(x, (e,), sd[prefix + "ln_2.weight"], sd[prefix + "ln_2.bias"])
    return x + F.gelu(y @ sd[prefix + "mlp.c_fc.weight"].T + sd[prefix + "mlp.c_fc.bias"]) @ sd[prefix + "mlp.c_proj.weight"].T \
        + sd[prefix + "mlp.c_proj.bias"]


def ref_video(sd: dict, clips: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole ILA image side in eval mode: (MIT video embedding [B, E], prompt context [B, N, E])."""
    b, t = clips.shape[:2]
    patch = sd["visual.conv1.weight"].shape[-1]
    x = F.conv2d(clips.flatten(0, 1), sd["visual.conv1.weight"], stride=patch).flatten(2).transpose(1, 2)
    width = x.shape[-1]
    x = torch.cat([sd["visual.class_embedding"].expand(x.shape[0], 1, width), x], 1) + sd["visual.positional_embedding"]
    x = F.layer_norm(x, (width,), sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
    i = 0
    while f"visual.transformer.resblocks.{i}.ln_1.weight" in sd:
        prefix = f"visual.transformer.resblocks.{i}."
        x, _ = ref_ila(sd, prefix, x, t, training=False)
        x = ref_clip_block(sd, prefix, x, heads)
        i += 1
    cls = F.layer_norm(x[:, 0], (width,), sd["visual.ln_post.weight"], sd["visual.ln_post.bias"]) @ sd["visual.proj"]
    video = ref_mit(sd, cls.view(b, t, -1))
    patches = F.layer_norm(x[:, 1:], (width,), sd["prompts_visual_ln.weight"], sd["prompts_visual_ln.bias"])
    context = (patches @ sd["prompts_visual_proj"]).view(b, t, patches.shape[1], -1).mean(1)
    return video, context


def load_block(sd: dict, block: ILABlock, index: int = 0) -> None:
    """Load one block's published tensors into ``block`` through the import's key map."""
    target = nn.Module()
    target.ila = nn.ModuleDict({str(index): block})
    load_state_dict_strict(target, sd, KEYMAP)


# ------------------------------------------------------------------ masks
def test_trapezoid_masks_match_hand_computed_values():
    # 4x4 grid: patch centres at -1, -1/3, 1/3, 1 on each axis; point x = 0.5 (columns), y = -1/3 (rows)
    mask = alignment_masks(torch.tensor([0.5, -1 / 3]), (4, 4))
    cols = torch.tensor([0.0, 0.125, 1.0, 0.625])  # |d| = 1.5, 0.833, 0.167, 0.5
    rows = torch.tensor([0.375, 1.0, 0.375, 0.0])  # |d| = 0.667, 0, 0.667, 1.333
    torch.testing.assert_close(mask, rows[:, None] * cols[None, :], rtol=0, atol=1e-6)
    assert mask[1, 3] == pytest.approx(0.625) and mask[3, 1] == 0.0  # x picks the column, y the row
    torch.testing.assert_close(trapezoid(torch.tensor([0.0, 0.25, -0.25, 0.5, 0.9, 0.95])),
                               torch.tensor([1.0, 1.0, 1.0, 0.625, 0.025, 0.0]), rtol=0, atol=1e-6)


def test_mask_jitter_follows_train_and_eval():
    align = FrameAlignment(D, (GRID, GRID), hidden=HIDDEN)
    centre = torch.zeros(1, 1, 2)
    align.eval()
    # eval: the single point (0, 0); cell (1, 1) is at (-1/3, -1/3): profile 1 - (1/3 - 1/4) * 1.5 = 0.875
    assert float(align.masks(centre)[0, 0, 1, 1]) == pytest.approx(0.875 ** 2, abs=1e-6)
    align.train()
    # train: the 9 offsets {-0.2, 0, 0.2}^2 average to (mean of 1, 0.875, 0.575)^2
    assert float(align.masks(centre)[0, 0, 1, 1]) == pytest.approx(((1 + 0.875 + 0.575) / 3) ** 2, abs=1e-6)
    point = torch.tensor([[[0.3, -0.6]]])
    torch.testing.assert_close(align.masks(point)[0, 0], ref_mask(0.3, -0.6, GRID, True), rtol=0, atol=1e-6)
    align.eval()
    torch.testing.assert_close(align.masks(point)[0, 0], ref_mask(0.3, -0.6, GRID, False), rtol=0, atol=1e-6)
    align.train()
    align.decay_jitter()  # 0.1 steps now: the reference halves the jitter every epoch from 30 on
    offsets = [(0.1 * ox, 0.1 * oy) for ox, oy in OFFSETS]
    expected = sum(ref_mask(0.3 + ox, -0.6 + oy, GRID, False) for ox, oy in offsets) / 9
    torch.testing.assert_close(align.masks(point)[0, 0], expected, rtol=0, atol=1e-6)


def test_alignment_loss_is_mean_one_minus_cosine():
    first = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [3.0, 4.0]]])
    second = torch.tensor([[[0.0, 2.0], [2.0, 2.0], [4.0, 3.0]]])
    expected = ((1 - 0.0) + (1 - 1.0) + (1 - 24 / 25)) / 3
    assert float(alignment_loss(first, second)) == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------------ the block hook
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_ila_block_equals_the_reference_computation(training):
    g = torch.Generator().manual_seed(1)
    sd = published_ila_block("visual.transformer.resblocks.0.", D, HIDDEN, g)
    block = ILABlock(D, (GRID, GRID), num_frames=T, hidden=HIDDEN)
    load_block(sd, block)
    block.train(training)
    x = torch.randn(2 * T, 1 + GRID * GRID, D, generator=g)
    expected, expected_loss = ref_ila(sd, "visual.transformer.resblocks.0.", x, T, training)
    losses = []
    with torch.no_grad():
        out = block(x, align_losses=losses)
    tol = 1e-4 if training else 1e-5  # batch statistics add rounding
    torch.testing.assert_close(out, expected, rtol=tol, atol=tol)
    assert len(losses) == 1
    torch.testing.assert_close(losses[0], expected_loss, rtol=tol, atol=tol)
    # the other mode differs (jitter and BatchNorm statistics): the comparison above is not vacuous
    other, _ = ref_ila(sd, "visual.transformer.resblocks.0.", x, T, not training)
    assert (other - expected).abs().max() > 1e-2
    if training:
        # batch statistics also update the running ones, as BatchNorm does in training
        assert not torch.equal(block.message_attn.pair_bn.running_mean, sd[
            "visual.transformer.resblocks.0.message_attn.interactive_block.2.running_mean"])


def test_ila_block_takes_frames_from_hook_kwargs():
    g = torch.Generator().manual_seed(2)
    sd = published_ila_block("visual.transformer.resblocks.0.", D, HIDDEN, g)
    block = ILABlock(D, (GRID, GRID), num_frames=T, hidden=HIDDEN).eval()
    load_block(sd, block)
    x = torch.randn(2 * 4, 1 + GRID * GRID, D, generator=g)  # two 4-frame clips given to a 3-frame block
    with torch.no_grad():
        torch.testing.assert_close(block(x, num_frames=4), ref_ila(sd, "visual.transformer.resblocks.0.", x, 4, False)[0],
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not a whole number of 3-frame clips"):
        block(x)


def test_fresh_ila_model_is_per_frame_clip_and_mit_pools(tiny_backbone):
    torch.manual_seed(3)
    model = build_ila_model(tiny_backbone, T, hidden=HIDDEN)
    clips = torch.randn(2, T, 3, 32, 32)
    with torch.no_grad():
        per_frame = tiny_backbone.model.encode_image(clips.flatten(0, 1)).view(2, T, -1)
        for mode in (True, False):
            model.train(mode)
            torch.testing.assert_close(model.encode_frames(clips), per_frame, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(model.encode(clips, normalize=False), model.temporal(per_frame),
                                       rtol=1e-5, atol=1e-5)
        model.train()
        embeddings, aux = model({"inputs": clips})
    assert set(aux) == {"align"} and float(aux["align"]) > 0  # two blocks' losses, summed
    assert embeddings.shape == (2, 1 + GRID * GRID, tiny_backbone.model.text_projection.shape[1])
    torch.testing.assert_close(embeddings[:, 0], F.normalize(model.temporal(per_frame), dim=-1), rtol=1e-5, atol=1e-5)
    # trainable: only ILA's own modules (tower frozen); BatchNorm statistics are saved with them
    state = model.trainable_state_dict()
    assert not any(k.startswith("trunk.blocks.") for k in state)
    assert "trunk.block_hooks.1.message_attn.pair_bn.running_var" in state
    assert {k.split(".")[0] for k in state} == {"trunk", "temporal", "prompts"}


def test_mit_equals_hand_computation():
    g = torch.Generator().manual_seed(4)
    mit = MultiframeIntegrationTransformer(num_frames=5, embed_dim=128, layers=1)  # 2 heads
    sd = {}
    for key, value in mit.state_dict().items():
        published = key.replace("layers.", "resblocks.")
        sd["mit." + published] = (1 + 0.1 * torch.randn(value.shape, generator=g)) if "ln_" in key and key.endswith(
            "weight") else 0.2 * torch.randn(value.shape, generator=g)
    target = nn.Module()
    target.mit = mit
    load_state_dict_strict(target, sd, KEYMAP)
    frames = torch.randn(3, 5, 128, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(mit(frames), ref_mit(sd, frames), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="5"):
        mit(frames[:, :4])


def test_prompt_generator_equals_hand_computation():
    g = torch.Generator().manual_seed(5)
    gen = VideoPromptGenerator(vision_width=D, embed_dim=128, layers=2, heads=2)
    full = published_prompts(D, 128, 2, g)
    target = nn.Module()
    target.prompts = gen
    load_state_dict_strict(target, full, KEYMAP)
    text, patches = torch.randn(4, 128, generator=g), torch.randn(2, T, GRID * GRID, D, generator=g)
    with torch.no_grad():
        context = gen.visual_context(patches)
        expected_context = (F.layer_norm(patches, (D,), full["prompts_visual_ln.weight"], full["prompts_visual_ln.bias"])
                            @ full["prompts_visual_proj"]).mean(1)
        torch.testing.assert_close(context, expected_context, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gen(text, context), ref_prompts(full, text, context, heads=2), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ import
def test_published_checkpoint_loads_strictly_and_equals_the_reference():
    backbone = load_backbone("omniclip-tiny")
    g = torch.Generator().manual_seed(6)
    sd = published_checkpoint(backbone.model, HIDDEN, T, g)
    loaded = load_ila({"model": sd, "epoch": 3, "max_accuracy": 0.5}, backbone)
    assert loaded.report.loaded == len(sd) and loaded.report.ignored == 0  # every key mapped, once
    clip_state = backbone.model.state_dict()
    for key in clip_state:  # text and image towers now hold the checkpoint's values
        assert torch.equal(clip_state[key], sd[key]), key
    assert loaded.logit_scale == pytest.approx(30.0)
    clips = torch.randn(2, T, 3, 32, 32, generator=g)
    names = ["archery", "bowling", "juggling balls"]
    with torch.no_grad():
        video, context = ref_video(sd, clips, heads=2)
        torch.testing.assert_close(loaded.model.encode(clips, normalize=False), video, rtol=1e-5, atol=1e-5)
        text = backbone.model.encode_text(backbone.tokenizer(names))
        classes = F.normalize(ref_prompts(sd, text, context, heads=1), dim=-1)
        expected = 30.0 * torch.einsum("be,bce->bc", F.normalize(video, dim=-1), classes)
        torch.testing.assert_close(loaded.logits(clips, names), expected, rtol=1e-4, atol=1e-4)
        assert not loaded.model.training  # loaded for evaluation: no jitter, running statistics


def test_import_names_every_missing_extra_or_misshaped_key():
    backbone = load_backbone("omniclip-tiny")
    g = torch.Generator().manual_seed(7)
    sd = published_checkpoint(backbone.model, HIDDEN, T, g, prompt_layers=1)
    bad = dict(sd)
    del bad["visual.transformer.resblocks.1.message_attn.prediction_block.5.running_var"]
    bad["visual.transformer.resblocks.0.message_attn.extra.weight"] = torch.zeros(3)
    bad["mit.resblocks.0.mlp.c_fc.weight"] = torch.zeros(5, 5)
    with pytest.raises(CheckpointMismatchError) as error:
        load_ila(bad, backbone)
    text = str(error.value)
    assert "1 missing, 1 unexpected, 1 shape mismatches" in text
    assert "ila.1.message_attn.point_bn2.running_var" in text
    assert "visual.transformer.resblocks.0.message_attn.extra.weight" in text
    assert "mit.resblocks.0.mlp.c_fc.weight -> mit.layers.0.mlp.c_fc.weight: (5, 5) vs (256, 64)" in text
    with pytest.raises(CheckpointMismatchError, match="has no `mit.positional_embedding`"):
        load_ila({k: v for k, v in sd.items() if not k.startswith("mit.")}, backbone)
    # deliberately skipping keys is explicit, and a module tensor left unfilled is still an error
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(1\).*\n  logit_scale"):
        load_ila(sd, backbone, ignore=(r"logit_scale$",))


def test_import_reads_a_pickled_training_file_only_when_trusted(tmp_path):
    import argparse

    backbone = load_backbone("omniclip-tiny")
    sd = published_checkpoint(backbone.model, HIDDEN, T, torch.Generator().manual_seed(8), prompt_layers=1)
    path = tmp_path / "ila.pth"
    torch.save({"model": sd, "config": argparse.Namespace(T=T), "epoch": 1}, path)  # stands in for yacs
    with pytest.raises(Exception, match="trust_pickle"):
        load_ila(path, backbone)
    assert load_ila(path, backbone, trust_pickle=True).report.loaded == len(sd)


# ------------------------------------------------------------------ training
CLASSES = ["archery", "bowling", "juggling balls"]


class Clips(Dataset):
    """Clips whose colour says the class: frames [T, 3, 32, 32]."""

    def __len__(self):
        return 8

    def __getitem__(self, index):
        label = index % len(CLASSES)
        frames = 0.3 * torch.randn(T, 3, 32, 32)
        frames[:, label] += 1.0
        return {"inputs": frames, "label": label, "path": f"clip_{index}.mp4"}


def test_ila_trains_through_the_trainer_with_its_alignment_loss(tmp_path):
    backbone = load_backbone("omniclip-tiny")
    torch.manual_seed(9)
    model = build_ila_model(backbone, T, hidden=HIDDEN, align_weight=0.5)
    objective = ClassObjective(ClassText(CLASSES, model), LogitScale(backbone.logit_scale), conditioner=model.prompts)
    cfg = TrainerConfig(max_steps=3, batch_size=4, lr=1e-3, warmup_steps=0, num_workers=0, checkpoint_every=3,
                        log_every=1, progress_bar=False, tensorboard=False)
    trainer = Trainer(cfg, model, objective, Clips(), default_collate, tmp_path)
    # one step by hand: the alignment loss reaches the message layers and the point head, the class
    # loss the skips. The interactive convs get none yet: at init both of their outlets (the
    # point head's last layer and temporal_skip_fc) are zero, as in ILA; they train from step 2.
    batch = default_collate([Clips()[i] for i in range(4)])
    embeddings, aux = model(batch)
    loss, _ = objective(embeddings, batch)
    (loss + aux["align"]).backward()
    hook = model.trunk.block_hooks["0"]
    for name in ("message_fc.weight", "message_ln.weight", "message_attn.point_fc2.weight",
                 "temporal_skip_fc.weight", "temporal_skip_align_fc.weight"):
        assert hook.get_parameter(name).grad.abs().sum() > 0, name
    assert hook.get_parameter("message_attn.pair_pw.weight").grad.abs().sum() == 0
    assert model.prompts.alpha.grad.abs().sum() > 0 and model.temporal.positional_embedding.grad.abs().sum() > 0
    model.zero_grad()

    before = {k: v.clone() for k, v in trainer.trainable_weights().items()}
    assert not any(k.startswith("objective.") for k in before)  # the prompts are the model's, saved once
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "aux/align" in r]
    assert len(train) == 3
    for record in train:
        assert 0 < record["aux/align"] <= 0.5 * 2 * 2  # weight 0.5, two blocks, each 1 - cos in [0, 2]
        assert record["loss"] == pytest.approx(record["class/loss"] + record["aux/align"], abs=1e-5)
    after = trainer.trainable_weights()
    for key in ("model.trunk.block_hooks.1.message_fc.weight", "model.trunk.block_hooks.1.message_attn.out_fc.weight",
                "model.trunk.block_hooks.0.message_attn.pair_pw.weight", "model.trunk.block_hooks.0.message_attn.point_fc1.weight",
                "model.trunk.block_hooks.0.temporal_skip_fc.weight", "model.temporal.positional_embedding",
                "model.prompts.alpha", "model.trunk.block_hooks.0.message_attn.pair_bn.running_mean"):
        assert not torch.equal(after[key], before[key]), key


def test_class_objective_scores_each_clip_against_its_own_conditioned_classes(tiny_backbone):
    torch.manual_seed(10)
    text = TextTrunk(tiny_backbone.model)
    gen = VideoPromptGenerator(vision_width=D, embed_dim=64, layers=1, alpha=0.5)
    model = VideoClipModel(tiny_backbone.trunk(), text, tokenizer=tiny_backbone.tokenizer)
    objective = ClassObjective(ClassText(CLASSES, model), LogitScale(20.0), label_smoothing=0.1, conditioner=gen)
    assert not list(objective.parameters()) or all(not p.requires_grad for p in objective.parameters())
    video, context = F.normalize(torch.randn(2, 64), dim=-1), torch.randn(2, 5, 64)
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        raw = tiny_backbone.model.encode_text(tiny_backbone.tokenizer(CLASSES))  # un-normalised, as X-CLIP feeds them
        logits = torch.stack([20.0 * F.normalize(gen(raw, context[b:b + 1])[0], dim=-1) @ video[b] for b in range(2)])
        smooth = torch.full((2, 3), 0.1 / 3) + 0.9 * F.one_hot(labels, 3)
        expected = -(smooth * logits.log_softmax(-1)).sum(-1).mean()
        loss, logs = objective(torch.cat([video[:, None], context], dim=1), {"labels": labels})
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-5)
    assert logs["class/acc"] == pytest.approx(float((logits.argmax(-1) == labels).float().mean()))
    with pytest.raises(ValueError, match=r"\[B, 1 \+ N, E\]"):
        objective(video, {"labels": labels})


def test_ila_resumes_exactly_batchnorm_statistics_included(tmp_path):
    backbone = load_backbone("omniclip-tiny")

    def trainer(out):
        torch.manual_seed(11)
        model = build_ila_model(backbone, T, hidden=HIDDEN, use_prompts=False)
        objective = ClassObjective(ClassText(CLASSES, model), LogitScale(backbone.logit_scale))
        cfg = TrainerConfig(max_steps=3, batch_size=4, lr=1e-3, warmup_steps=0, num_workers=0, checkpoint_every=2,
                            log_every=1, progress_bar=False, tensorboard=False)
        return Trainer(cfg, model, objective, Clips(), default_collate, out)

    full_trainer = trainer(tmp_path / "full")
    full = full_trainer.fit()
    first = trainer(tmp_path / "part").fit(stop_at=2)
    resumed = trainer(tmp_path / "part")
    second = resumed.fit()
    assert first.losses + second.losses == pytest.approx(full.losses, abs=1e-6)
    # training uses batch statistics, so equal losses do not show the running ones were restored
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        got = getattr(resumed.model.trunk.block_hooks["0"].message_attn.pair_bn, name)
        want = getattr(full_trainer.model.trunk.block_hooks["0"].message_attn.pair_bn, name)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
