"""ILA: implicit learnable alignment of neighbouring frames inside CLIP's image tower (ICCV 2023).

ILA is built on X-CLIP. Every frame of a clip ``[B, T, 3, H, W]`` runs through the image tower as
one image of a batch of ``B*T``; before each block an `ILABlock` (a `ViTTrunk` block hook) lets
neighbouring frames talk:

1. ``message_fc`` then ``message_ln`` turn the block input into message features;
2. for every consecutive pair of frames, an interactive conv block reads both frames' patch maps
   and a point predictor places one point per frame (``tanh * 0.75``, in [-1, 1] image
   coordinates, x along columns, y along rows);
3. a separable trapezoid mask around each point (`alignment_masks`; jittered over 9 offsets and
   averaged in training mode) weights that frame's patches; the masked frames, class token
   unmasked, become one aligned token map per frame, and the masked patches summed over space
   give one token per frame of each pair, which a cosine loss pulls together (`alignment_loss`);
4. the aligned maps and the interactive features (through a temporal conv and a linear layer)
   are added back to the block input through the zero-initialised ``temporal_skip_align_fc`` and
   ``temporal_skip_fc``: a fresh ILA model is plain per-frame CLIP;
5. the block's own attention and MLP run unchanged.

Frame embeddings are pooled by `MultiframeIntegrationTransformer` (MIT, one pre-norm layer with
learned frame positions and a residual around it, then the mean). X-CLIP's
`VideoPromptGenerator` conditions the class text on the clip's last-block patch tokens, so
class embeddings are per video ``[B, C, E]``; `omniclip.video_objective.ClassObjective` takes
them through its ``conditioner`` (see `ILAVideoModel.forward` for the packed output).

Unlike the reference, the mask jitter follows ``.train()`` / ``.eval()`` (the reference switches
it with a separate flag that ``.eval()`` leaves on). Published checkpoints load with
`omniclip.ila_checkpoint.load_ila`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from open_clip.transformer import LayerNorm, QuickGELU
from torch import nn

from omniclip.backbone import ClipBackbone
from omniclip.errors import ConfigError
from omniclip.text_trunk import TextTrunk
from omniclip.trunk import ViTTrunk
from omniclip.video_model import VideoClipModel

#: Flat half-width and slope of the trapezoid masks (ILA's published values).
MASK_FLAT = 0.25
MASK_SLOPE = 1.5
#: Points are ``tanh(.) * POINT_RANGE``: they stay inside the frame.
POINT_RANGE = 0.75
#: The 9 jitter directions (x, y): the centre, 4 axis and 4 diagonal neighbours; scaled by
#: `FrameAlignment.jitter` (0.2) and averaged in training mode.
JITTER_DIRECTIONS = ((0, 0), (0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (-1, -1), (1, -1), (-1, 1))


# ------------------------------------------------------------------------------------ masks
def trapezoid(offset: torch.Tensor) -> torch.Tensor:
    """ILA's 1-D mask profile: 1 for ``|d| <= 0.25``, then falling with slope 1.5 to 0 (at ~0.917)."""
    return (1.0 - MASK_SLOPE * (offset.abs() - MASK_FLAT).clamp(min=0)).clamp(min=0)


def alignment_masks(points: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Separable trapezoid masks around ``points`` [..., 2] = (x, y) -> [..., rows, cols].

    Patch centres sit at ``linspace(-1, 1, n)`` along each axis; ``mask[i, j] =
    trapezoid(y_i - y) * trapezoid(x_j - x)`` with rows i (y) and columns j (x).
    """
    rows, cols = grid
    ys = torch.linspace(-1.0, 1.0, rows, device=points.device, dtype=points.dtype)
    xs = torch.linspace(-1.0, 1.0, cols, device=points.device, dtype=points.dtype)
    mask_y = trapezoid(ys - points[..., 1:2])  # [..., rows]
    mask_x = trapezoid(xs - points[..., 0:1])  # [..., cols]
    return mask_y.unsqueeze(-1) * mask_x.unsqueeze(-2)


def merge_pairs(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Per-pair values [B, T-1, ...] of a pair's first and second frame -> per-frame [B, T, ...].

    Frame 0 only belongs to pair 0 and frame T-1 only to pair T-2; every other frame k is the
    mean of its value as the first frame of pair k and as the second frame of pair k-1.
    """
    inner = (first[:, 1:] + second[:, :-1]) / 2
    return torch.cat([first[:, :1], inner, second[:, -1:]], dim=1)


def alignment_loss(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Mean of ``1 - cos`` between the pooled aligned tokens of every pair's two frames [B, T-1, D]."""
    return (1.0 - F.cosine_similarity(first.flatten(0, -2).float(), second.flatten(0, -2).float(), dim=-1)).mean()


# ------------------------------------------------------------------------------------ alignment
@dataclass
class AlignmentOutput:
    """What `FrameAlignment` computes for a clip (B clips, T frames, L = 1 + rows*cols tokens)."""

    aligned: torch.Tensor  #: [B, T, L, D] masked message features per frame (class token unmasked)
    interactive: torch.Tensor  #: [B, T, L, D] interactive features per frame (class token: the message's)
    pooled_first: torch.Tensor  #: [B, T-1, D] masked patches of each pair's first frame, summed over space
    pooled_second: torch.Tensor  #: [B, T-1, D] the same for each pair's second frame
    points: torch.Tensor  #: [B, T-1, 4] (x, y) of the first frame's point, then the second's


class FrameAlignment(nn.Module):
    """ILA's alignment of neighbouring frames (``message_attn`` in the published checkpoints).

    Args:
        width: token width D of the tower.
        grid: the patch grid (rows, cols).
        hidden: channels of the interactive features (256 published); the first half describes
            a pair's first frame, the second half its second frame.
        jitter: step of the 9-offset mask jitter in training mode (0.2 published;
            `decay_jitter` halves it, as the reference does every epoch from epoch 30).
    """

    def __init__(self, width: int, grid: tuple[int, int], hidden: int = 256, jitter: float = 0.2) -> None:
        super().__init__()
        if hidden % 4:
            raise ConfigError("model.ila.hidden", f"must be a multiple of 4, got {hidden}")
        if min(grid) < 4:
            raise ConfigError("model.ila", f"the patch grid {grid} is too small for ILA's two 2x2 poolings")
        half = hidden // 2
        self.width, self.grid, self.hidden, self.jitter = width, (int(grid[0]), int(grid[1])), hidden, float(jitter)
        # interactive block: depthwise 3x3 over both frames' channels, 1x1 to `hidden`, 3x3
        self.pair_dw = nn.Conv2d(2 * width, 2 * width, 3, padding=1, groups=2 * width)
        self.pair_dw_bn = nn.BatchNorm2d(2 * width)
        self.pair_pw = nn.Conv2d(2 * width, hidden, 1)
        self.pair_pw_bn = nn.BatchNorm2d(hidden)
        self.pair_conv = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.pair_bn = nn.BatchNorm2d(hidden)
        # point predictor: two conv stages with 2x2 max-pooling, a global max, then per pair two
        # grouped 1x1 convolutions (group 0 -> the first frame's point, group 1 -> the second's)
        self.point_conv1 = nn.Conv2d(hidden, half, 3, padding=1)
        self.point_bn1 = nn.BatchNorm2d(half)
        self.point_conv2 = nn.Conv2d(half, half, 3, padding=1)
        self.point_bn2 = nn.BatchNorm2d(half)
        self.point_fc1 = nn.Conv1d(half, half // 2, 1, groups=2)
        self.point_fc2 = nn.Conv1d(half // 2, 4, 1, groups=2)
        nn.init.zeros_(self.point_fc2.weight)  # points start at the centre
        nn.init.zeros_(self.point_fc2.bias)
        # interactive features back to tokens: a temporal conv over frames, then to the width
        self.temporal_conv = nn.Conv3d(half, half, (3, 1, 1), padding=(1, 0, 0))
        self.out_fc = nn.Linear(half, width)
        self.register_buffer("jitter_directions", torch.tensor(JITTER_DIRECTIONS, dtype=torch.float32),
                             persistent=False)

    def decay_jitter(self, factor: float = 0.5) -> None:
        """Scale the jitter step (the reference halves it at the start of every epoch from 30 on)."""
        self.jitter *= factor

    def pair_features(self, pairs: torch.Tensor) -> torch.Tensor:
        """Frame pairs [N, 2D, rows, cols] (first frame's channels first) -> [N, hidden, rows, cols]."""
        x = F.relu(self.pair_dw_bn(self.pair_dw(pairs)))
        x = F.relu(self.pair_pw_bn(self.pair_pw(x)))
        return F.relu(self.pair_bn(self.pair_conv(x)))

    def predict_points(self, features: torch.Tensor, clips: int) -> torch.Tensor:
        """Interactive features [B*(T-1), hidden, rows, cols] -> points [B, T-1, 4] in [-0.75, 0.75]."""
        x = F.relu(F.max_pool2d(self.point_bn1(self.point_conv1(features)), 2))
        x = F.relu(F.max_pool2d(self.point_bn2(self.point_conv2(x)), 2))
        x = x.amax(dim=(-2, -1)).view(clips, -1, x.shape[1]).transpose(1, 2)  # [B, half, T-1]
        x = self.point_fc2(F.relu(self.point_fc1(x)))
        return torch.tanh(x).transpose(1, 2) * POINT_RANGE

    def masks(self, points: torch.Tensor) -> torch.Tensor:
        """Points [B, P, 2] -> masks [B, P, rows, cols]; averaged over the 9 jittered points in training."""
        points = points.float().unsqueeze(2)  # masks in fp32 even under autocast
        if self.training and self.jitter:
            points = points + self.jitter * self.jitter_directions.to(points.dtype)
        return alignment_masks(points, self.grid).mean(dim=2)

    def interactive_tokens(self, features: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """Pair features [B, T-1, hidden, rows, cols] + class tokens [B, T, 1, D] -> tokens [B, T, L, D]."""
        half = self.hidden // 2
        frames = merge_pairs(features[:, :, :half], features[:, :, half:])  # [B, T, half, rows, cols]
        frames = self.temporal_conv(frames.transpose(1, 2)).transpose(1, 2)  # temporal conv over T
        tokens = self.out_fc(frames.flatten(3).transpose(2, 3))  # [B, T, rows*cols, D]
        return torch.cat([cls, tokens], dim=2)

    def forward(self, messages: torch.Tensor) -> AlignmentOutput:
        """Message features [B, T, L, D] (class token first, patches row-major) -> `AlignmentOutput`."""
        clips, steps, length, width = messages.shape
        rows, cols = self.grid
        if length != 1 + rows * cols:
            raise ValueError(f"ILA expects 1 + {rows}x{cols} tokens per frame, got {length} (extra prompt "
                             "tokens cannot be aligned)")
        cls = messages[:, :, :1]
        maps = messages[:, :, 1:].transpose(2, 3).reshape(clips, steps, width, rows, cols)
        first, second = maps[:, :-1], maps[:, 1:]  # the two frames of every consecutive pair
        features = self.pair_features(torch.cat([first, second], dim=2).flatten(0, 1))
        points = self.predict_points(features, clips)
        interactive = self.interactive_tokens(features.view(clips, steps - 1, *features.shape[1:]), cls)
        first = first * self.masks(points[..., :2]).unsqueeze(2).to(first.dtype)
        second = second * self.masks(points[..., 2:]).unsqueeze(2).to(second.dtype)
        first_tokens = torch.cat([cls[:, :-1], first.flatten(3).transpose(2, 3)], dim=2)
        second_tokens = torch.cat([cls[:, 1:], second.flatten(3).transpose(2, 3)], dim=2)
        return AlignmentOutput(
            aligned=merge_pairs(first_tokens, second_tokens),
            interactive=interactive,
            pooled_first=first.sum(dim=(-2, -1)),
            pooled_second=second.sum(dim=(-2, -1)),
            points=points,
        )


class ILABlock(nn.Module):
    """The ILA module of one block of the image tower: a `ViTTrunk` block hook.

    Called as ``hook(x, num_frames=T, align_losses=list)`` with ``x`` [B*T, L, D] (frames of a
    clip consecutive); returns ``x`` plus the two zero-initialised skips and appends this block's
    `alignment_loss` to ``align_losses`` when given. ``num_frames`` defaults to the one it was
    built with.
    """

    def __init__(self, width: int, grid: tuple[int, int], num_frames: int, hidden: int = 256,
                 jitter: float = 0.2) -> None:
        super().__init__()
        if num_frames < 2:
            raise ConfigError("model.num_frames", f"ILA aligns neighbouring frames: needs >= 2, got {num_frames}")
        self.num_frames = num_frames
        self.message_fc = nn.Linear(width, width)
        self.message_ln = LayerNorm(width)
        self.message_attn = FrameAlignment(width, grid, hidden, jitter)
        self.temporal_skip_fc = nn.Linear(width, width)
        self.temporal_skip_align_fc = nn.Linear(width, width)
        for layer in (self.temporal_skip_fc, self.temporal_skip_align_fc):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, num_frames: int | None = None, align_losses: list[torch.Tensor] | None = None,
                **_: Any) -> torch.Tensor:
        steps = int(num_frames or self.num_frames)
        if steps < 2 or x.shape[0] % steps:
            raise ValueError(f"ILA got {x.shape[0]} frames, not a whole number of {steps}-frame clips")
        frames, length, width = x.shape
        messages = self.message_ln(self.message_fc(x)).view(frames // steps, steps, length, width)
        out = self.message_attn(messages)
        if align_losses is not None:
            align_losses.append(alignment_loss(out.pooled_first, out.pooled_second))
        x = x + self.temporal_skip_align_fc(out.aligned.reshape(frames, length, width))
        return x + self.temporal_skip_fc(out.interactive.reshape(frames, length, width))


def add_ila(trunk: ViTTrunk, num_frames: int, hidden: int = 256, jitter: float = 0.2) -> list[ILABlock]:
    """Hook an `ILABlock` before every block of ``trunk``, as ILA does; returns them in block order."""
    blocks = [ILABlock(trunk.width, trunk.grid_size, num_frames, hidden, jitter) for _ in trunk.blocks]
    for index, block in enumerate(blocks):
        trunk.register_block_hook(index, block)
    return blocks


# ------------------------------------------------------------------------------------ MIT
class _PreNormBlock(nn.Module):
    """Pre-LN transformer layer, batch first: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))`` (QuickGELU)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(
            c_fc=nn.Linear(width, 4 * width), gelu=QuickGELU(), c_proj=nn.Linear(4 * width, width)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


def _init_linear_and_norm(module: nn.Module) -> None:
    """X-CLIP's initialisation of its new heads: truncated normal (std 0.02) linears, unit norms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class MultiframeIntegrationTransformer(nn.Module):
    """X-CLIP's MIT: frame embeddings [B, T, E] -> video embedding [B, E].

    ``mean_T(x + layers(x + positions))``: learned frame positions, ``layers`` pre-LN transformer
    layers (``E // 64`` heads), a residual around them, the mean over frames. A `VideoClipModel`
    ``temporal`` module.
    """

    def __init__(self, num_frames: int, embed_dim: int, layers: int = 1, heads: int | None = None) -> None:
        super().__init__()
        heads = heads or max(1, embed_dim // 64)
        self.num_frames = num_frames
        self.positional_embedding = nn.Parameter(torch.empty(1, num_frames, embed_dim))
        nn.init.trunc_normal_(self.positional_embedding, std=0.02)
        self.layers = nn.ModuleList([_PreNormBlock(embed_dim, heads) for _ in range(layers)])
        self.apply(_init_linear_and_norm)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.ndim != 3 or frames.shape[1] != self.num_frames:
            raise ValueError(f"MIT expects frame embeddings [B, {self.num_frames}, E], got {tuple(frames.shape)}")
        x = frames + self.positional_embedding.to(frames.dtype)
        for layer in self.layers:
            x = layer(x)
        return (x.to(frames.dtype) + frames).mean(dim=1)


# ------------------------------------------------------------------------------------ prompts
class _CrossAttention(nn.Module):
    """Multi-head attention of text queries over visual tokens (no q/k/v biases, as X-CLIP)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ConfigError("model.prompts", f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.out_proj = nn.Linear(width, width)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2)

        q, k, v = split(self.q_proj(queries)), split(self.k_proj(context)), split(self.v_proj(context))
        mixed = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(mixed.transpose(1, 2).flatten(2))


class _PromptLayer(nn.Module):
    """``t + attn(ln_1(t), visual)``, then ``t + mlp(ln_2(t))`` (QuickGELU)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = _CrossAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(
            c_fc=nn.Linear(width, 4 * width), gelu=QuickGELU(), c_proj=nn.Linear(4 * width, width)))

    def forward(self, text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        text = text + self.attn(self.ln_1(text), visual)
        return text + self.mlp(self.ln_2(text))


class VideoPromptGenerator(nn.Module):
    """X-CLIP's video-specific prompts: class text embeddings conditioned on a clip's patch tokens.

    `visual_context`: last-block patch tokens [B, T, N, W] -> ``visual_ln`` -> ``@ visual_proj``
    -> mean over frames -> [B, N, E]. `forward`: ``text + alpha * layers(text, norm(context))``
    with ``layers`` cross-attention decoder layers; ``text`` [C, E] is expanded per clip, so the
    class embeddings become [B, C, E] (not normalised).
    """

    def __init__(self, vision_width: int, embed_dim: int, layers: int = 2, alpha: float = 0.1,
                 heads: int | None = None) -> None:
        super().__init__()
        heads = heads or max(1, embed_dim // 64)
        self.visual_ln = LayerNorm(vision_width)
        self.norm = nn.LayerNorm(embed_dim)
        self.layers = nn.ModuleList([_PromptLayer(embed_dim, heads) for _ in range(layers)])
        self.alpha = nn.Parameter(torch.full((embed_dim,), float(alpha)))
        self.apply(_init_linear_and_norm)
        # X-CLIP draws this projection from a unit normal (its other inits leave it alone)
        self.visual_proj = nn.Parameter(torch.randn(vision_width, embed_dim))

    def visual_context(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens of the last block [B, T, N, W] -> frame-averaged context [B, N, E]."""
        return (self.visual_ln(patch_tokens) @ self.visual_proj.to(patch_tokens.dtype)).mean(dim=1)

    def forward(self, text: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Class embeddings [C, E] (or [B, C, E]) + context [B, N, E] -> per-clip class embeddings [B, C, E]."""
        if text.ndim == 2:
            text = text.unsqueeze(0).expand(context.shape[0], -1, -1)
        text = text.to(context.dtype)
        visual = self.norm(context)
        prompts = text
        for layer in self.layers:
            prompts = layer(prompts, visual)
        return text + self.alpha.to(prompts.dtype) * prompts


# ------------------------------------------------------------------------------------ model
@dataclass(frozen=True)
class JitterSchedule:
    """The mask jitter step as a function of the optimizer step.

    ILA halves the jitter at the start of every epoch from epoch 30 (``align_decay``); in steps:
    ``base`` before ``start_step``, then ``base * factor ** (1 + (step - start_step) // every)``.
    A pure function of the step, so a resumed run jitters exactly as one that never stopped.
    ``start_step=None`` keeps ``base`` throughout.
    """

    base: float = 0.2
    start_step: int | None = None
    every: int = 1
    factor: float = 0.5

    def __post_init__(self) -> None:
        if self.start_step is not None and (self.start_step < 0 or self.every < 1):
            raise ConfigError("model.jitter_decay", f"start_step must be >= 0 and every >= 1, got {self.start_step} "
                                                    f"and {self.every}")
        if not 0 < self.factor <= 1:
            raise ConfigError("model.jitter_decay.factor", f"must be in (0, 1], got {self.factor}")

    def __call__(self, step: int) -> float:
        if self.start_step is None or step < self.start_step:
            return self.base
        return self.base * self.factor ** (1 + (step - self.start_step) // self.every)


class ILAVideoModel(VideoClipModel):
    """ILA's video model: an image tower with `ILABlock` hooks, MIT pooling, optional X-CLIP prompts.

    `forward(batch)` (the trainer's entry) returns the normalised video embeddings [B, E]; with
    a prompt generator, ``[B, 1 + N, E]``: the normalised video embedding, then the N context
    tokens the class text is conditioned on (`VideoPromptGenerator.visual_context`), which
    `ClassObjective` with ``conditioner=model.prompts`` splits again. In training mode the
    output is ``(embeddings, {"align": align_weight * sum of the blocks' alignment losses})``,
    as `omniclip.trainer` adds model losses. `encode` gives [B, E] in any mode; `class_logits`
    scores clips against class text with the prompts applied.
    """

    def __init__(self, trunk: ViTTrunk, num_frames: int, temporal: nn.Module,
                 prompts: VideoPromptGenerator | None = None, align_weight: float = 1.0,
                 text: TextTrunk | None = None, tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
                 jitter_schedule: JitterSchedule | None = None, micro_batches: int = 1) -> None:
        super().__init__(trunk, text, temporal, tokenizer=tokenizer)
        hooks = [h for h in trunk.block_hooks.values() if isinstance(h, ILABlock)]
        if not hooks:
            raise ConfigError("model.ila", "the trunk has no ILA blocks: build it with `add_ila`")
        if micro_batches < 1:
            raise ConfigError("trainer.grad_accum_steps", f"must be >= 1, got {micro_batches}")
        self.num_frames = num_frames
        self.prompts = prompts
        self.align_weight = float(align_weight)
        self.jitter_schedule = jitter_schedule
        self.micro_batches = int(micro_batches)
        if jitter_schedule is not None:
            # Training forwards so far (micro_batches per optimizer step): the step the schedule
            # reads. Saved with the trained tensors, so resume continues the schedule exactly.
            self.register_buffer("train_forwards", torch.zeros((), dtype=torch.long))
        self.mark_own_tensors()

    @property
    def conditions_classes(self) -> bool:
        """Whether class embeddings are per clip (X-CLIP prompts): scoring then goes through
        `class_logits`, not through one shared classifier."""
        return self.prompts is not None

    def ila_blocks(self) -> list[ILABlock]:
        """The trunk's ILA hooks in block order."""
        return [h for _, h in sorted(self.trunk.block_hooks.items(), key=lambda kv: int(kv[0]))
                if isinstance(h, ILABlock)]

    def decay_jitter(self, factor: float = 0.5) -> None:
        """Scale every block's mask jitter (ILA halves it every epoch from epoch 30)."""
        for block in self.ila_blocks():
            block.message_attn.decay_jitter(factor)

    def run(self, frames: torch.Tensor, align_losses: list[torch.Tensor] | None = None
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Clips [B, T, 3, H, W] -> (video embedding [B, E] not normalised, context [B, N, E] or None).

        Every block's alignment loss is appended to ``align_losses`` when it is given.
        """
        if frames.ndim != 5 or frames.shape[1] != self.num_frames:
            raise ValueError(f"expected clips [B, {self.num_frames}, 3, H, W], got {tuple(frames.shape)}")
        clips, steps = frames.shape[:2]
        tokens = self.trunk.patch_embed(frames.flatten(0, 1))
        features = self.trunk.forward_features(tokens, num_frames=steps, align_losses=align_losses)
        video = self.temporal(self.trunk.forward_head(features).view(clips, steps, -1))
        context = None
        if self.prompts is not None:
            patches = features[:, 1:]
            context = self.prompts.visual_context(patches.reshape(clips, steps, *patches.shape[1:]))
        return video, context

    def encode_frames(self, frames: torch.Tensor, **hook_kwargs: Any) -> torch.Tensor:
        """Clips [B, T, 3, H, W] -> frame embeddings [B, T, E] (not normalised), ILA blocks included."""
        return super().encode_frames(frames, num_frames=frames.shape[1], **hook_kwargs)

    def encode(self, frames: torch.Tensor, normalize: bool = True, **_: Any) -> torch.Tensor:
        """Clips [B, T, 3, H, W] -> video embeddings [B, E] (MIT-pooled)."""
        video, _ = self.run(frames)
        return F.normalize(video, dim=-1) if normalize else video

    def class_logits(self, frames: torch.Tensor, class_features: torch.Tensor,
                     logit_scale: torch.Tensor | float) -> torch.Tensor:
        """Clips and class text features [C, E] (as the text tower gives them, not normalised,
        which the prompt generator reads) -> logits [B, C] = scale * cosine."""
        video, context = self.run(frames)
        classes = class_features.to(video.dtype)
        if self.prompts is not None:
            classes = self.prompts(classes, context)
        else:
            classes = classes.unsqueeze(0).expand(video.shape[0], -1, -1)
        cosine = torch.einsum("be,bce->bc", F.normalize(video, dim=-1), F.normalize(classes, dim=-1))
        return logit_scale * cosine

    def schedule_step(self) -> int:
        """The optimizer step the jitter schedule is at (training forwards // micro-batches per step)."""
        return int(self.train_forwards) // self.micro_batches

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.training and self.jitter_schedule is not None:
            jitter = self.jitter_schedule(self.schedule_step())
            for block in self.ila_blocks():
                block.message_attn.jitter = jitter
            self.train_forwards += 1
        losses: list[torch.Tensor] | None = [] if self.training else None
        video, context = self.run(batch["inputs"], losses)
        embeddings = F.normalize(video, dim=-1)
        if context is not None:
            embeddings = torch.cat([embeddings.unsqueeze(1), context.to(embeddings.dtype)], dim=1)
        if losses is None:
            return embeddings
        return embeddings, {"align": self.align_weight * torch.stack(losses).sum()}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Trainable parameters, the ILA blocks' BatchNorm statistics and the jitter schedule's
        forward count (they are trained state too)."""
        state = super().trainable_state_dict()
        if self.jitter_schedule is not None:
            state["train_forwards"] = self.train_forwards.detach()
        for name, buffer in self.named_buffers():
            if ".message_attn." in name and name.rsplit(".", 1)[-1] in (
                    "running_mean", "running_var", "num_batches_tracked"):
                state[name] = buffer.detach()
        return state


def build_ila_model(backbone: ClipBackbone, num_frames: int, hidden: int = 256, mit_layers: int = 1,
                    prompts_layers: int = 2, prompts_alpha: float = 0.1, use_prompts: bool = True,
                    align_weight: float = 1.0, jitter: float = 0.2,
                    trunk_options: Mapping[str, Any] | None = None, text: TextTrunk | None = None,
                    jitter_schedule: JitterSchedule | None = None, micro_batches: int = 1) -> ILAVideoModel:
    """ILA on ``backbone``'s image tower with the published defaults (X-CLIP: ``mit_layers=1``,
    ``prompts_layers=2``, ``prompts_alpha=0.1``; ILA blocks of 256 hidden channels, jitter 0.2).

    Trainable: the ILA blocks, MIT and the prompt generator (X-CLIP trains its prompts; ILA's own
    optimizer leaves them, ``prompts_visual_*`` and the logit scale at their initial values, and
    gives ``message_*`` lr 5e-4 / wd 1e-2, ``temporal_*`` 10x the base lr / wd 1e-3, MIT lr 4e-4).
    The tower stays frozen (ILA trains only its own modules; ``trunk_options`` such as
    ``unlocked_blocks`` are passed to `ClipBackbone.trunk`). ``use_prompts=False`` drops X-CLIP's
    prompt generator: the model then gives plain [B, E] video embeddings for any class objective.
    The model's text side is ``text``, by default CLIP's text tower, frozen (ILA keeps it fixed).
    ``jitter_schedule`` sets the jitter from the optimizer step in training (`JitterSchedule`,
    counted as training forwards // ``micro_batches``, the trainer's gradient accumulation).
    """
    trunk = backbone.trunk(**dict(trunk_options or {}))
    add_ila(trunk, num_frames, hidden, jitter)
    embed_dim = trunk.embed_dim
    temporal = MultiframeIntegrationTransformer(num_frames, embed_dim, mit_layers)
    prompts = VideoPromptGenerator(trunk.width, embed_dim, prompts_layers, prompts_alpha) if use_prompts else None
    # ILA keeps CLIP's text tower fixed (FIX_TEXT): the backbone's own, shared, as the model's text side
    return ILAVideoModel(trunk, num_frames, temporal, prompts, align_weight,
                         text=text if text is not None else TextTrunk(backbone.model), tokenizer=backbone.tokenizer,
                         jitter_schedule=jitter_schedule, micro_batches=micro_batches)


__all__ = [
    "AlignmentOutput",
    "FrameAlignment",
    "ILABlock",
    "ILAVideoModel",
    "JitterSchedule",
    "MultiframeIntegrationTransformer",
    "VideoPromptGenerator",
    "add_ila",
    "alignment_loss",
    "alignment_masks",
    "build_ila_model",
    "merge_pairs",
    "trapezoid",
]
