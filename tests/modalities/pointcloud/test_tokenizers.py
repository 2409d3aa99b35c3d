import math

import pytest
import torch

from omniclip.modalities.pointcloud.tokenizers import PointBertTokenizer, PointNet2Tokenizer


def bn_keys(prefix: str, n: int) -> dict[str, tuple]:
    return {
        f"{prefix}.weight": (n,), f"{prefix}.bias": (n,), f"{prefix}.running_mean": (n,),
        f"{prefix}.running_var": (n,), f"{prefix}.num_batches_tracked": (),
    }  # fmt: skip


def pointbert_reference_keys(enc: int, dim: int) -> dict[str, tuple]:
    """ViT-Lens `PointTokenizer` parameter names and shapes (visual.visual_adapter.* in checkpoints)."""
    return {
        "encoder.first_conv.0.weight": (128, 3, 1), "encoder.first_conv.0.bias": (128,),
        **bn_keys("encoder.first_conv.1", 128),
        "encoder.first_conv.3.weight": (256, 128, 1), "encoder.first_conv.3.bias": (256,),
        "encoder.second_conv.0.weight": (512, 512, 1), "encoder.second_conv.0.bias": (512,),
        **bn_keys("encoder.second_conv.1", 512),
        "encoder.second_conv.3.weight": (enc, 512, 1), "encoder.second_conv.3.bias": (enc,),
        "reduce_dim.weight": (dim, enc), "reduce_dim.bias": (dim,),
        "pos_embed.0.weight": (128, 3), "pos_embed.0.bias": (128,),
        "pos_embed.2.weight": (dim, 128), "pos_embed.2.bias": (dim,),
    }  # fmt: skip


def pnsa_reference_keys(in_ch: int, mlp: list[int], dim: int) -> dict[str, tuple]:
    """ViT-Lens `PointNSATokenizer` parameter names and shapes (bigG)."""
    keys: dict[str, tuple] = {}
    last = in_ch + 3
    for i, out in enumerate(mlp):
        keys[f"sa.mlp_convs.{i}.weight"] = (out, last, 1, 1)
        keys[f"sa.mlp_convs.{i}.bias"] = (out,)
        keys.update(bn_keys(f"sa.mlp_bns.{i}", out))
        last = out
    keys.update({"lift.0.weight": (dim, last + 3, 1), "lift.0.bias": (dim,), "lift.2.weight": (dim,), "lift.2.bias": (dim,)})
    return keys


def random_state(keys: dict[str, tuple], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in keys.items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(3)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[name] = torch.randn(shape, generator=gen) * 0.3
    return state


def loop_fps(cloud: torch.Tensor, npoint: int, start: int) -> list[int]:
    dist = [1e10] * len(cloud)
    chosen, far = [], start
    for _ in range(npoint):
        chosen.append(far)
        d = ((cloud - cloud[far]) ** 2).sum(-1).tolist()
        dist = [min(a, b) for a, b in zip(dist, d)]
        far = max(range(len(dist)), key=lambda n: (dist[n], -n))
    return chosen


def bn_eval(x: torch.Tensor, s: dict, prefix: str) -> torch.Tensor:
    """Eval BatchNorm on channels-last x."""
    scale = s[f"{prefix}.weight"] / torch.sqrt(s[f"{prefix}.running_var"] + 1e-5)
    return (x - s[f"{prefix}.running_mean"]) * scale + s[f"{prefix}.bias"]


def lin(x: torch.Tensor, s: dict, prefix: str) -> torch.Tensor:
    w = s[f"{prefix}.weight"]
    return x @ w.reshape(w.shape[0], w.shape[1]).T + s[f"{prefix}.bias"]


def gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def pointbert_reference(points: torch.Tensor, s: dict, groups: int, size: int) -> torch.Tensor:
    out = []
    for cloud in points:
        tokens = []
        for c in loop_fps(cloud, groups, 0):
            d = ((cloud - cloud[c]) ** 2).sum(-1).tolist()
            near = sorted(range(len(cloud)), key=lambda n: (d[n], n))[:size]
            local = cloud[near] - cloud[c]  # [K, 3]
            f = lin(torch.relu(bn_eval(lin(local, s, "encoder.first_conv.0"), s, "encoder.first_conv.1")), s, "encoder.first_conv.3")
            f = torch.cat([f.max(0).values.expand_as(f), f], dim=1)
            f = lin(torch.relu(bn_eval(lin(f, s, "encoder.second_conv.0"), s, "encoder.second_conv.1")), s, "encoder.second_conv.3")
            pos = lin(gelu(lin(cloud[c], s, "pos_embed.0")), s, "pos_embed.2")
            tokens.append(lin(f.max(0).values, s, "reduce_dim") + pos)
        out.append(torch.stack(tokens))
    return torch.stack(out)


def pnsa_reference(points: torch.Tensor, s: dict, groups: int, size: int, radius: float, layers: int) -> torch.Tensor:
    out = []
    for cloud in points:
        xyz = cloud[:, :3]
        tokens = []
        for c in loop_fps(xyz, groups, 0):
            inside = [n for n in range(len(xyz)) if float(((xyz[n] - xyz[c]) ** 2).sum()) <= radius**2][:size]
            inside += [inside[0]] * (size - len(inside))
            f = torch.cat([xyz[inside] - xyz[c], cloud[inside]], dim=1)  # [K, 3 + C]
            for i in range(layers):
                f = torch.relu(bn_eval(lin(f, s, f"sa.mlp_convs.{i}"), s, f"sa.mlp_bns.{i}"))
            t = lin(torch.cat([xyz[c], f.max(0).values]), s, "lift.0")
            tokens.append(torch.nn.functional.layer_norm(t, t.shape, s["lift.2.weight"], s["lift.2.bias"]))
        out.append(torch.stack(tokens))
    return torch.stack(out)


def test_pointbert_loads_reference_keys_strictly_and_matches_explicit_computation():
    keys = pointbert_reference_keys(enc=16, dim=12)
    tok = PointBertTokenizer(num_groups=6, group_size=5, encoder_dim=16, token_dim=12, fps_start=0)
    assert {k: tuple(v.shape) for k, v in tok.state_dict().items()} == keys
    state = random_state(keys, seed=0)
    tok.load_state_dict(state, strict=True)
    tok.eval()
    points = torch.randn(2, 48, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = tok(points)
    assert got.shape == (2, 6, 12)
    torch.testing.assert_close(got, pointbert_reference(points, state, 6, 5), rtol=1e-4, atol=1e-4)


def test_pointbert_group_centres_and_neighbourhoods():
    tok = PointBertTokenizer(num_groups=4, group_size=3, fps_start=2)
    xyz = torch.rand(1, 30, 3, generator=torch.Generator().manual_seed(2))
    hood, centres = tok.group(xyz)
    assert hood.shape == (1, 4, 3, 3) and centres.shape == (1, 4, 3)
    chosen = loop_fps(xyz[0], 4, 2)
    assert torch.equal(centres[0], xyz[0, chosen])
    for g, c in enumerate(chosen):
        d = ((xyz[0] - xyz[0, c]) ** 2).sum(-1)
        assert torch.equal(hood[0, g], xyz[0, d.argsort()[:3]] - xyz[0, c])
    assert torch.equal(hood[0, :, 0], torch.zeros(4, 3))  # each centre is its own first neighbour


def test_pointbert_ignores_colour_and_is_deterministic_with_fps_start():
    tok = PointBertTokenizer(num_groups=8, group_size=4, encoder_dim=32, token_dim=16, fps_start=0).eval()
    gen = torch.Generator().manual_seed(3)
    xyz, rgb = torch.randn(2, 64, 3, generator=gen), torch.rand(2, 64, 3, generator=gen)
    with torch.no_grad():
        a = tok(xyz)
        assert torch.equal(a, tok(torch.cat([xyz, rgb], dim=-1)))
        assert torch.equal(a, tok(xyz))


def test_random_fps_start_draws_from_torch_rng():
    tok = PointBertTokenizer(num_groups=4, group_size=3)
    xyz = torch.rand(2, 40, 3, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(11)
    _, centres = tok.group(xyz)
    torch.manual_seed(11)
    start = torch.randint(0, 40, (2,))
    for b in range(2):
        assert torch.equal(centres[b], xyz[b, loop_fps(xyz[b], 4, int(start[b]))])


def test_pointnet2_loads_reference_keys_strictly_and_matches_explicit_computation():
    mlp = [8, 8, 16]
    keys = pnsa_reference_keys(6, mlp, dim=10)
    tok = PointNet2Tokenizer(in_channels=6, num_groups=5, group_size=6, radius=0.4, mlp=mlp, token_dim=10, fps_start=0)
    assert {k: tuple(v.shape) for k, v in tok.state_dict().items()} == keys
    state = random_state(keys, seed=5)
    tok.load_state_dict(state, strict=True)
    tok.eval()
    gen = torch.Generator().manual_seed(6)
    points = torch.cat([torch.rand(2, 50, 3, generator=gen), torch.rand(2, 50, 3, generator=gen)], dim=-1)
    with torch.no_grad():
        got = tok(points)
    assert got.shape == (2, 5, 10)
    torch.testing.assert_close(got, pnsa_reference(points, state, 5, 6, 0.4, 3), rtol=1e-4, atol=1e-4)


def test_pointnet2_default_matches_published_bigG_shapes():
    keys = pnsa_reference_keys(6, [64, 64, 256], dim=256)
    assert {k: tuple(v.shape) for k, v in PointNet2Tokenizer().state_dict().items()} == keys


def test_tokenizers_reject_wrong_channel_count():
    with pytest.raises(ValueError, match=r"shape \[B, N, 3\] or \[B, N, 6\], got \[1, 40, 4\]"):
        PointBertTokenizer(num_groups=4, group_size=2)(torch.rand(1, 40, 4))
    with pytest.raises(ValueError, match=r"shape \[B, N, 6\], got \[1, 40, 3\]"):
        PointNet2Tokenizer(num_groups=4, group_size=2)(torch.rand(1, 40, 3))
