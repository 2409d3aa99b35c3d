"""Point-cloud tokenizers: a point cloud [B, N, C] in, a token sequence [B, G, d] out.

Module and parameter names follow the ViT-Lens visual adapters (``PointTokenizer`` for Point-BERT,
``PointNSATokenizer`` for the bigG PointNet++ variant), so their ``visual.visual_adapter.*``
weights load strictly once that prefix is stripped.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from omniclip.modalities.pointcloud.ops import (
    ball_query,
    farthest_point_sample,
    gather_points,
    knn,
)
from omniclip.modalities.pointcloud.projection import depth_map
from omniclip.patch_grid import PatchGridEncoder


def _check_points(points: Tensor, channels: Sequence[int]) -> None:
    if points.dim() != 3 or points.shape[-1] not in channels:
        want = " or ".join(f"[B, N, {c}]" for c in channels)
        raise ValueError(f"point cloud must have shape {want}, got {list(points.shape)}")


def required_points(tokenizer: nn.Module) -> int:
    """Fewest points per cloud ``tokenizer`` can group: FPS picks ``num_groups`` distinct centres
    and each group takes ``group_size`` distinct neighbours."""
    layer = getattr(tokenizer, "sa", tokenizer)
    return max(int(layer.num_groups), int(layer.group_size))


def _check_enough(points: Tensor, tokenizer: nn.Module) -> None:
    need = required_points(tokenizer)
    if points.shape[1] < need:
        layer = getattr(tokenizer, "sa", tokenizer)
        raise ValueError(
            f"clouds of {points.shape[1]} points cannot make {layer.num_groups} groups of {layer.group_size} "
            f"(modality.tokenizer.num_groups / group_size): set the datasets' num_points to at least {need}"
        )


class MiniPointNet(nn.Module):
    """Point-BERT group encoder: shared per-point MLP, max-pool, global+local concat, MLP, max-pool."""

    def __init__(self, out_dim: int = 256):
        super().__init__()
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, 128, 1), nn.BatchNorm1d(128), nn.ReLU(), nn.Conv1d(128, 256, 1)
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(), nn.Conv1d(512, out_dim, 1)
        )

    def forward(self, groups: Tensor) -> Tensor:
        """[B, G, K, 3] centred neighbourhoods -> [B, G, out_dim] group features."""
        batch, num_groups, size, _ = groups.shape
        x = self.first_conv(groups.reshape(batch * num_groups, size, 3).transpose(1, 2))
        pooled = x.amax(dim=2, keepdim=True)
        x = self.second_conv(torch.cat([pooled.expand(-1, -1, size), x], dim=1))
        return x.amax(dim=2).reshape(batch, num_groups, -1)


class PointBertTokenizer(nn.Module):
    """ViT-Lens Point-BERT tokenizer: FPS centres, kNN groups, mini-PointNet, + position MLP.

    Only xyz is used: the reference encoder reads 3 channels, so colour columns of a [B, N, 6]
    input are ignored. ``fps_start`` fixes the first FPS centre in training mode (``None`` draws
    it at random, as the reference does); ``eval_fps_start`` applies in eval mode (0 by default,
    so evaluation is reproducible; ``None`` keeps it random).
    """

    def __init__(
        self,
        num_groups: int = 512,
        group_size: int = 32,
        encoder_dim: int = 256,
        token_dim: int = 384,
        fps_start: int | None = None,
        eval_fps_start: int | None = 0,
    ):
        super().__init__()
        self.num_groups = num_groups
        self.group_size = group_size
        self.out_dim = token_dim
        self.fps_start = fps_start
        self.eval_fps_start = eval_fps_start
        self.encoder = MiniPointNet(encoder_dim)
        self.reduce_dim = nn.Linear(encoder_dim, token_dim)
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, token_dim))

    def group(self, xyz: Tensor) -> tuple[Tensor, Tensor]:
        """Neighbourhoods [B, G, K, 3] relative to their centre, and the centres [B, G, 3]."""
        _check_points(xyz, (3,))
        start = self.fps_start if self.training else self.eval_fps_start
        centres = gather_points(xyz, farthest_point_sample(xyz, self.num_groups, start))
        neighbours = gather_points(xyz, knn(centres, xyz, self.group_size))
        return neighbours - centres.unsqueeze(2), centres

    def forward(self, points: Tensor) -> Tensor:
        """[B, N, 3 or 6] -> tokens plus their position embedding, [B, num_groups, token_dim]."""
        _check_points(points, (3, 6))
        _check_enough(points, self)
        neighbourhood, centres = self.group(points[..., :3])
        return self.reduce_dim(self.encoder(neighbourhood)) + self.pos_embed(centres)


class SetAbstraction(nn.Module):
    """One PointNet++ set-abstraction level: FPS, ball query, shared MLP (conv+BN+ReLU), max-pool."""

    def __init__(
        self,
        num_groups: int,
        group_size: int,
        radius: float,
        in_channels: int,
        mlp: Sequence[int],
    ):
        super().__init__()
        self.num_groups = num_groups
        self.group_size = group_size
        self.radius = radius
        self.mlp_convs = nn.ModuleList()
        self.mlp_bns = nn.ModuleList()
        for out_channels in mlp:
            self.mlp_convs.append(nn.Conv2d(in_channels, out_channels, 1))
            self.mlp_bns.append(nn.BatchNorm2d(out_channels))
            in_channels = out_channels

    def group(
        self, xyz: Tensor, features: Tensor, fps_start: int | None
    ) -> tuple[Tensor, Tensor]:
        """Grouped inputs [B, S, K, 3 + C] (offset from the centre, then features); centres [B, S, 3]."""
        centres = gather_points(xyz, farthest_point_sample(xyz, self.num_groups, fps_start))
        idx = ball_query(xyz, centres, self.radius, self.group_size)
        offsets = gather_points(xyz, idx) - centres.unsqueeze(2)
        return torch.cat([offsets, gather_points(features, idx)], dim=-1), centres

    def forward(
        self, xyz: Tensor, features: Tensor, fps_start: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Centres [B, S, 3] and their features [B, mlp[-1], S]."""
        grouped, centres = self.group(xyz, features, fps_start)
        x = grouped.permute(0, 3, 1, 2)  # [B, C, S, K]
        for conv, bn in zip(self.mlp_convs, self.mlp_bns):
            x = torch.relu(bn(conv(x)))
        return centres, x.amax(dim=3)


class ChannelsLast(nn.Module):
    """[B, C, L] -> [B, L, C]; a module so that it can sit inside ``nn.Sequential``."""

    def forward(self, x: Tensor) -> Tensor:
        return x.transpose(1, 2)


class PointNet2Tokenizer(nn.Module):
    """ViT-Lens bigG tokenizer (``PointNSATokenizer``): one set abstraction, then a lift to tokens.

    Input [B, N, in_channels] with xyz first (xyz+rgb for the published model, 10k points); every
    group feeds [offset xyz, xyz, rgb] (3 + in_channels) to the shared MLP. The centres are
    concatenated to the pooled features and lifted by a 1x1 conv + LayerNorm to ``token_dim``.
    No position embedding is added: the centres enter through that concatenation.
    ``fps_start`` / ``eval_fps_start``: the first FPS centre in training / eval mode, as for
    `PointBertTokenizer`.
    """

    def __init__(
        self,
        in_channels: int = 6,
        num_groups: int = 512,
        group_size: int = 64,
        radius: float = 0.2,
        mlp: Sequence[int] = (64, 64, 256),
        token_dim: int = 256,
        fps_start: int | None = None,
        eval_fps_start: int | None = 0,
    ):
        super().__init__()
        if in_channels < 3:
            raise ValueError(f"in_channels must include xyz (>= 3), got {in_channels}")
        self.in_channels = in_channels
        self.out_dim = token_dim
        self.fps_start = fps_start
        self.eval_fps_start = eval_fps_start
        self.sa = SetAbstraction(num_groups, group_size, radius, in_channels + 3, mlp)
        self.lift = nn.Sequential(
            nn.Conv1d(mlp[-1] + 3, token_dim, 1), ChannelsLast(), nn.LayerNorm(token_dim)
        )

    def forward(self, points: Tensor) -> Tensor:
        """[B, N, in_channels] -> [B, num_groups, token_dim]."""
        _check_points(points, (self.in_channels,))
        _check_enough(points, self)
        start = self.fps_start if self.training else self.eval_fps_start
        centres, features = self.sa(points[..., :3], points, start)
        return self.lift(torch.cat([centres.transpose(1, 2), features], dim=1))


class ProjectionTokenizer(nn.Module):
    """Points projected onto the ViT's patch grid, then a small learned per-patch encoder.

    A cloud in the unit frame is z-buffered onto an ``image_size`` x ``image_size`` grid (the
    camera of `projection.depth_map`: looking along -z), each pixel holding the nearest point's
    depth and whether any point fell in it; the grid is cut into the trunk's ``patch_size``
    patches, row-major, and an MLP maps each patch (2 x p x p values) to a token. There is one
    token per patch position, in the order a ViT's patch embedding gives them, so what the
    frozen ViT reads has the spatial layout of its own input; the lens between may be the
    identity. The view is fixed: clouds must be posed in the frame the trunk's images were.
    """

    def __init__(self, image_size: int, patch_size: int, token_dim: int, hidden_dim: int = 256) -> None:
        super().__init__()
        self.image_size = image_size
        self.encoder = PatchGridEncoder(2, image_size, patch_size, token_dim, hidden_dim)
        self.out_dim = token_dim
        self.num_tokens = self.encoder.num_tokens

    def project(self, points: Tensor) -> Tensor:
        """[B, N, 3 or 6] -> [B, 2, S, S]: depth in [-1, 1] where a point fell (0 elsewhere), and the hit mask."""
        _check_points(points, (3, 6))
        if points.shape[1] == 0:
            raise ValueError("point cloud has no points; the projection tokenizer needs at least one")
        depth, hit = depth_map(points[..., :3], self.image_size)
        depth = torch.where(hit, depth.clamp(-1, 1), torch.zeros_like(depth))
        return torch.stack([depth, hit.to(depth.dtype)], dim=1)

    def forward(self, points: Tensor) -> Tensor:
        """[B, N, 3 or 6] -> one token per patch position, [B, (image_size / patch_size)^2, token_dim]."""
        return self.encoder(self.project(points))
