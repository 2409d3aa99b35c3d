"""The frozen CLIP ViT trunk that reads images or lens tokens.

`ViTTrunk` re-drives the submodules of an open_clip `VisionTransformer` so that the same
weights serve two entry points:

* images: patch embedding (conv1) -> tokens, exactly `encode_image`;
* a token sequence [B, L, D] from a lens: the class token is prepended, the positional
  embedding added (interpolated when L differs from the trunk's grid and that is allowed), then
  ln_pre, blocks, pooling, ln_post and projection as for images.

Frozen parameters are shared with the CLIP model they come from (no copy). Parameters that are
*unlocked* for training (class token, positional embedding, first blocks) are copied first, so
training never alters the image tower that produces the frozen anchors.

`ViTTrunk.cast_frozen` stores the frozen parts in bf16 (``trainer.frozen_dtype``) while what
trains stays fp32: the forward then casts the token stream into each module's dtype at its
boundary and returns the embedding in fp32.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from omniclip.errors import ConfigError
from omniclip.modality import TrunkSpec

BlockHook = Callable[..., torch.Tensor]


def interpolate_positions(pos: torch.Tensor, grid: tuple[int, int], num_tokens: int) -> torch.Tensor:
    """Resample a [1 + H*W, D] positional table to [1 + num_tokens, D].

    The class row is kept. Square targets are resampled in 2D (bicubic, as timm/open_clip do
    for new image sizes); other lengths are resampled along the flattened sequence (linear).
    """
    cls_row, grid_rows = pos[:1], pos[1:]
    if grid_rows.shape[0] == num_tokens:
        return pos
    width = pos.shape[-1]
    side = math.isqrt(num_tokens)
    if side * side == num_tokens:
        table = grid_rows.reshape(1, grid[0], grid[1], width).permute(0, 3, 1, 2)
        table = F.interpolate(table.float(), size=(side, side), mode="bicubic", align_corners=False)
        rows = table.permute(0, 2, 3, 1).reshape(num_tokens, width)
    else:
        table = grid_rows.t().unsqueeze(0)
        rows = F.interpolate(table.float(), size=num_tokens, mode="linear", align_corners=False)[0].t()
    return torch.cat([cls_row, rows.to(pos.dtype)], dim=0)


class ViTTrunk(nn.Module):
    """A CLIP ViT that accepts images or token sequences.

    Args:
        visual: an open_clip ``VisionTransformer`` (``model.visual``).
        skip_blocks: drop the first n blocks (tokens enter block n); the kept blocks are
            renumbered from 0, as ViT-Lens does for its bigG model.
        unlocked_blocks: train the first n kept blocks (copied from ``visual``).
        unlock_class_token: train the class token (copied).
        unlock_positional_embedding: train the positional embedding (copied).
        interpolate_positions: allow token sequences whose length differs from the trunk's
            patch grid; the positional embedding is resampled. Otherwise such input is an error.
        projection_dim: None, or the tower's own projection width (the key is shared with
            `omniclip.blip_trunk.BlipVisionTrunk`, whose towers have no projection).
    """

    def __init__(
        self,
        visual: nn.Module,
        skip_blocks: int = 0,
        unlocked_blocks: int = 0,
        unlock_class_token: bool = False,
        unlock_positional_embedding: bool = False,
        interpolate_positions: bool = False,
        projection_dim: int | None = None,
    ) -> None:
        super().__init__()
        _check_supported(visual)
        own = int(visual.proj.shape[1]) if getattr(visual, "proj", None) is not None else None
        if projection_dim is not None and projection_dim != own:
            raise ConfigError("projection_dim", f"is {projection_dim}, but this CLIP tower has its own "
                              f"projection ({own}); a trained projection is for towers without one (InstructBLIP's)")
        blocks = select_blocks(list(visual.transformer.resblocks), skip_blocks, unlocked_blocks)

        self.conv1 = visual.conv1
        self.class_embedding = maybe_copy(visual.class_embedding, unlock_class_token)
        self.positional_embedding = maybe_copy(visual.positional_embedding, unlock_positional_embedding)
        self.ln_pre = visual.ln_pre
        self.blocks = nn.ModuleList(blocks)
        self.ln_post = visual.ln_post
        self.proj = visual.proj
        self.pool_type: str = visual.pool_type
        self.final_ln_after_pool: bool = bool(visual.final_ln_after_pool)
        self.grid_size: tuple[int, int] = tuple(visual.grid_size)
        self.patch_size: int = int(visual.patch_size[0])
        self.image_size: int = int(visual.image_size[0])
        self.skip_blocks = skip_blocks
        self.unlocked_blocks = unlocked_blocks
        self.allow_interpolation = interpolate_positions
        self.grad_checkpointing = False
        #: Modules run before block i (key str(i)), e.g. ILA temporal alignment. They receive
        #: (x, **hook_kwargs) and return x; their parameters are trainable.
        self.block_hooks = nn.ModuleDict()
        self._set_trainable(unlock_class_token, unlock_positional_embedding)
        self._init_frozen_dtype(visual)

    def _init_frozen_dtype(self, tower: nn.Module) -> None:
        """Remember the tower the frozen weights are shared with (not a submodule: never saved
        or moved with the trunk) for `cast_frozen`; until then the forward casts nothing."""
        self._source_tower: tuple[nn.Module, ...] = (tower,)
        self.frozen_dtype: torch.dtype | None = None

    def _set_trainable(self, unlock_class_token: bool, unlock_positional_embedding: bool) -> None:
        """Freeze everything but the unlocked blocks and the unlocked embeddings."""
        for p in self.parameters():
            p.requires_grad_(False)
        for block in self.blocks[: self.unlocked_blocks]:
            block.requires_grad_(True)
        self.class_embedding.requires_grad_(unlock_class_token)
        self.positional_embedding.requires_grad_(unlock_positional_embedding)

    # ---------------------------------------------------------------- description
    @property
    def width(self) -> int:
        return int(self.class_embedding.shape[-1])

    @property
    def embed_dim(self) -> int:
        return int(self.proj.shape[1]) if self.proj is not None else self.width

    @property
    def num_positions(self) -> int:
        return int(self.positional_embedding.shape[0])

    def spec(self) -> TrunkSpec:
        return TrunkSpec(
            width=self.width,
            patch_size=self.patch_size,
            num_positions=self.num_positions,
            image_size=self.image_size,
            num_blocks=len(self.blocks),
            embed_dim=self.embed_dim,
        )

    # ---------------------------------------------------------------- configuration
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def register_block_hook(self, index: int, hook: nn.Module) -> None:
        """Run ``hook(x, **hook_kwargs)`` before block ``index`` (counted among kept blocks)."""
        if not 0 <= index < len(self.blocks):
            raise IndexError(f"block {index} does not exist (the trunk runs {len(self.blocks)} blocks)")
        self.block_hooks[str(index)] = hook

    def cast_frozen(self, dtype: torch.dtype) -> None:
        """Store every frozen parameter and buffer in ``dtype`` (bf16) in place; trainable ones stay.

        The frozen weights are the image tower's own tensors (shared, not copied), so the whole
        tower is cast with them, and its forward (``encode_image``: image anchors, the video
        models' frames) gets a hook that casts its input to ``dtype`` and its output back to
        fp32; a tower with trainable parameters of its own is refused (it would be half cast).
        Norm layers are cast too (open_clip's ``pure_bf16`` rule): PyTorch's LayerNorm kernels
        accumulate the statistics in fp32 for bf16 input, and the output is rounded to bf16 as
        open_clip's ``LayerNormFp32`` rounds it, so only the affine weights lose bits (2^-9).
        From then on the forward casts the tokens into each module's dtype at its boundary
        (fp32 lens output -> bf16 frozen blocks -> fp32 unlocked blocks and hooks) and returns
        fp32 from `forward_head`. Gradients flow through the casts into what trains.
        """
        if self.frozen_dtype is not None:
            if self.frozen_dtype != dtype:
                raise ValueError(f"the trunk's frozen weights are already {self.frozen_dtype}; cannot cast to {dtype}")
            return
        for tower in self._source_tower:
            done = getattr(tower, "_omniclip_frozen_dtype", None)  # another trunk on this tower cast it
            if done is not None:
                if done != dtype:
                    raise ValueError(f"the image tower is already stored in {done}; cannot cast it to {dtype}")
                continue
            trainable = [n for n, p in tower.named_parameters() if p.requires_grad]
            if trainable:
                raise ConfigError("trainer.frozen_dtype", f"the image tower has trainable parameters of its own "
                                  f"({', '.join(trainable[:3])}): a frozen dtype needs a frozen tower (load the "
                                  "backbone frozen), or set trainer.frozen_dtype=fp32")
            tower.to(dtype)  # in place: the Parameter objects the trunk shares keep their identity
            tower.register_forward_pre_hook(_cast_inputs_hook(dtype), with_kwargs=True)
            tower.register_forward_hook(_float_output_hook)
            tower._omniclip_frozen_dtype = dtype
        with torch.no_grad():
            for param in self.parameters():
                if not param.requires_grad and param.is_floating_point():
                    param.data = param.data.to(dtype)
            for module in self._frozen_modules():
                for name, buffer in module.named_buffers(recurse=False):
                    if buffer is not None and buffer.is_floating_point():
                        setattr(module, name, buffer.to(dtype))
        self.frozen_dtype = dtype

    def _frozen_modules(self) -> list[nn.Module]:
        """Modules none of whose parameters train (their buffers are cast with them)."""
        return [m for m in self.modules() if not any(p.requires_grad for p in m.parameters())]

    def _into(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``x`` in ``module``'s parameter dtype once the frozen parts are cast; else unchanged
        (autocast runs keep their dtypes exactly as before)."""
        if self.frozen_dtype is None:
            return x
        return x.to(_param_dtype(module, x.dtype))

    def train(self, mode: bool = True) -> "ViTTrunk":
        """Trainable parts follow ``mode``; frozen parts always stay in eval mode."""
        super().train(mode)
        for module in (self.ln_pre, self.ln_post, self.conv1, *self.blocks[self.unlocked_blocks :]):
            module.eval()
        return self

    # ---------------------------------------------------------------- forward
    def patch_embed(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] -> patch tokens [B, H*W/p^2, D] (no class token, no positions)."""
        x = self.conv1(self._into(self.conv1, images))
        return x.flatten(2).transpose(1, 2)

    def check_num_tokens(self, num_tokens: int) -> None:
        """Raise a ConfigError when ``num_tokens`` cannot be given positions."""
        expected = self.num_positions - 1
        if num_tokens != expected and not self.allow_interpolation:
            raise ConfigError(
                "trunk.interpolate_positions",
                f"the input gives {num_tokens} tokens but the trunk's positional embedding has "
                f"{expected} patch positions (+1 class token); match the lens latents (or the image "
                f"size) to {expected} positions or set interpolate_positions=true",
            )

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Prepend the class token, add positions and apply ln_pre: [B, L, D] -> [B, 1+L, D]."""
        batch, num_tokens, width = tokens.shape
        if width != self.width:
            raise ValueError(f"tokens have width {width}, the trunk expects {self.width}")
        self.check_num_tokens(num_tokens)
        pos = self.positional_embedding
        if num_tokens != self.num_positions - 1:
            pos = interpolate_positions(pos, self.grid_size, num_tokens)
        cls = self.class_embedding.to(tokens.dtype).expand(batch, 1, width)
        x = torch.cat([cls, tokens], dim=1) + pos.to(tokens.dtype)
        return self.ln_pre(self._into(self.ln_pre, x))

    def forward_features(self, tokens: torch.Tensor, depth: int | None = None, **hook_kwargs: Any) -> torch.Tensor:
        """Token sequence [B, L, D] -> block outputs [B, 1+L, D] (before pooling and ln_post);
        ``depth`` stops after that many blocks (0: the embedded tokens; None: all)."""
        x = self.embed_tokens(tokens)
        blocks = self.blocks if depth is None else self.blocks[:depth]
        for index, block in enumerate(blocks):
            hook = self.block_hooks[str(index)] if str(index) in self.block_hooks else None
            if hook is not None:
                x = hook(self._into(hook, x), **hook_kwargs)
            x = self._into(block, x)
            if self.grad_checkpointing and torch.is_grad_enabled() and x.requires_grad:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Block outputs [B, 1+L, D] -> pooled, projected embedding [B, E] (not normalised;
        fp32 once the frozen parts are cast)."""
        features = self._into(self.ln_post, features)
        if self.final_ln_after_pool:
            pooled = self.ln_post(self._pool(features))
        else:
            pooled = self._pool(self.ln_post(features))
        return self._project(pooled)

    def _project(self, pooled: torch.Tensor) -> torch.Tensor:
        """``pooled @ proj`` (when the trunk has one), in fp32 once the frozen parts are cast."""
        if self.proj is not None:
            pooled = (pooled.to(self.proj.dtype) if self.frozen_dtype is not None else pooled) @ self.proj
        return pooled.float() if self.frozen_dtype is not None else pooled

    def normed_tokens(self, features: torch.Tensor) -> torch.Tensor:
        """ln_post over every token: what a Q-Former reads (InstructBLIP-style heads)."""
        return self.ln_post(self._into(self.ln_post, features))

    def forward(self, tokens: torch.Tensor, **hook_kwargs: Any) -> torch.Tensor:
        """Token sequence [B, L, D] -> embedding [B, E] (not normalised)."""
        return self.forward_head(self.forward_features(tokens, **hook_kwargs))

    def forward_image(self, images: torch.Tensor, **hook_kwargs: Any) -> torch.Tensor:
        """Images [B, 3, H, W] -> embedding [B, E]; equals open_clip's ``encode_image``."""
        return self(self.patch_embed(images), **hook_kwargs)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "tok":
            return x[:, 0]
        if self.pool_type == "avg":
            return x[:, 1:].mean(dim=1)
        raise ConfigError("backbone", f"pool_type `{self.pool_type}` is not supported by the trunk")


def select_blocks(blocks: list[nn.Module], skip_blocks: int, unlocked_blocks: int) -> list[nn.Module]:
    """The blocks a trunk runs: the first ``skip_blocks`` dropped, then the first
    ``unlocked_blocks`` of the rest deep-copied (they train; the tower they come from must not)."""
    if not 0 <= skip_blocks < len(blocks):
        raise ConfigError("trunk.skip_blocks", f"{skip_blocks} is outside [0, {len(blocks) - 1}]")
    blocks = blocks[skip_blocks:]
    if not 0 <= unlocked_blocks <= len(blocks):
        raise ConfigError("trunk.unlocked_blocks", f"{unlocked_blocks} exceeds the {len(blocks)} blocks that run")
    return [copy.deepcopy(b) if i < unlocked_blocks else b for i, b in enumerate(blocks)]


def _param_dtype(module: nn.Module, default: torch.dtype) -> torch.dtype:
    """The dtype of ``module``'s first floating parameter (``default`` for a module without)."""
    for param in module.parameters():
        if param.is_floating_point():
            return param.dtype
    return default


def _cast_inputs_hook(dtype: torch.dtype) -> Callable[..., Any]:
    """A forward pre-hook casting floating tensor arguments to ``dtype`` (a cast tower's input)."""

    def cast(value: Any) -> Any:
        return value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}

    return hook


def _float_output_hook(module: nn.Module, args: Any, output: Any) -> Any:
    """A forward hook returning a cast tower's tensor output(s) in fp32, as callers expect."""
    if isinstance(output, torch.Tensor):
        return output.float() if output.is_floating_point() else output
    if isinstance(output, tuple) and all(isinstance(o, torch.Tensor) for o in output):
        return tuple(o.float() if o.is_floating_point() else o for o in output)
    return output  # a structured output (transformers' ModelOutput) is left as the tower made it


def maybe_copy(param: nn.Parameter, unlocked: bool) -> nn.Parameter:
    return nn.Parameter(param.detach().clone()) if unlocked else param


def _check_supported(visual: nn.Module) -> None:
    needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post")
    missing = [name for name in needed if not hasattr(visual, name)]
    if missing:
        raise ConfigError(
            "backbone",
            f"{type(visual).__name__} is not an open_clip VisionTransformer (missing {missing}); "
            "the lens trunk needs a ViT image tower",
        )
    if getattr(visual, "attn_pool", None) is not None:
        raise ConfigError("backbone", "attentional pooling (CoCa) towers are not supported by the trunk")
    if not getattr(visual.transformer, "batch_first", True):
        raise ConfigError("backbone", "the ViT must run batch-first (open_clip >= 2.24)")
