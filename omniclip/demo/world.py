"""A small synthetic 3D world: parametric shape classes, posed point clouds and captions.

Every shape is sampled on its analytic surface (area-weighted over its parts), given a random
aspect (one elongation ratio), then posed: scaled so that it fits the unit ball, optionally laid
on its side, turned about the vertical axis, tilted and rolled a little, resized and shifted.
Canonical shapes have their axis along z; the pose maps that axis to y, the image's vertical,
so that an upright object stands up in a rendering (the camera looks along -z).

Captions name the class (or a synonym) with attributes read from the same random draws (size,
elongation, lying on its side), so a caption always describes its own cloud and rendering.
Everything is batched over shapes and drawn from one `torch.Generator`: same seed, same world.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

#: Class names, the first synonym of each entry being the name zero-shot prompts use.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "box": ("box", "cube", "block", "crate"),
    "sphere": ("sphere", "ball", "orb", "globe"),
    "cylinder": ("cylinder", "can", "drum", "column"),
    "cone": ("cone", "spire", "traffic cone"),
    "torus": ("torus", "donut", "ring", "bagel"),
    "pyramid": ("pyramid", "square pyramid", "obelisk tip"),
    "capsule": ("capsule", "pill", "lozenge"),
    "dome": ("dome", "hemisphere", "half sphere"),
    "prism": ("prism", "triangular prism", "wedge", "tent"),
    "tube": ("tube", "pipe", "hollow cylinder", "sleeve"),
}
CLASS_NAMES: tuple[str, ...] = tuple(SYNONYMS)

#: Zero-shot prompt templates; captions use the same phrasings, so prompts are in-distribution.
PROMPT_TEMPLATES: tuple[str, ...] = ("a {}.", "a depth image of a {}.", "a rendering of a {}.", "a 3d model of a {}.")
_CAPTION_TEMPLATES = PROMPT_TEMPLATES + ("a {} seen from the side.", "{}")

# Elongation e (log-uniform in [1/E, E]) sets the height-to-width ratio of each class; E per class.
_ELONGATION = {"sphere": 1.25, "torus": 1.6, "dome": 1.5}
_DEFAULT_ELONGATION = 2.0


@dataclass(frozen=True)
class WorldConfig:
    """How shapes are drawn. Lengths are in the unit ball the renderer maps onto the image."""

    classes: tuple[str, ...] = CLASS_NAMES
    num_points: int = 512  # points per cloud (what the lens reads)
    render_points: int = 6144  # noiseless surface samples per shape for the renderer
    noise: float = 0.01  # std of the Gaussian jitter added to cloud points
    scale_range: tuple[float, float] = (0.55, 0.95)
    tilt_range: tuple[float, float] = (-0.2, 0.9)  # radians about the horizontal axis; > 0 shows the top
    max_roll: float = 0.3  # radians, about the viewing axis
    lying_probability: float = 0.25  # chance that a shape lies on its side
    max_offset: float = 0.04

    def __post_init__(self) -> None:
        unknown = [c for c in self.classes if c not in SYNONYMS]
        if unknown:
            raise ValueError(f"unknown shape classes {unknown} (known: {', '.join(CLASS_NAMES)})")
        if self.num_points < 1 or self.render_points < 1:
            raise ValueError("num_points and render_points must be positive")


@dataclass
class ShapeBatch:
    """A batch of posed shapes. ``world = offset + scale * rotation @ canonical``."""

    labels: Tensor  # [B] index into WorldConfig.classes
    points: Tensor  # [B, num_points, 3] noisy cloud
    surface: Tensor  # [B, render_points, 3] noiseless samples of the same posed surface
    params: Tensor  # [B, 3] canonical shape parameters (see `canonical_params`)
    rotation: Tensor  # [B, 3, 3]
    scale: Tensor  # [B]
    offset: Tensor  # [B, 3]
    captions: list[str]


# --------------------------------------------------------------------------- canonical surfaces
def canonical_params(name: str, elongation: Tensor) -> Tensor:
    """[n, 3] shape parameters from the elongation ratio (height over width), axis along z.

    For the torus the ratio sets the thickness of the ring instead.

    box, pyramid, prism: (half width x, half depth y, half height z); sphere, dome: ellipsoid
    radii; cylinder, cone: (radius, radius, half height); capsule: (radius, radius, half length
    of the straight part); torus: (major radius, minor radius, 0); tube: (outer radius, inner
    radius, half height).
    """
    e = elongation
    one = torch.ones_like(e)
    if name in ("box", "pyramid", "prism"):
        return torch.stack([one, 0.8 * one, e], dim=1)
    if name in ("sphere", "dome"):
        return torch.stack([one, one, e], dim=1)
    if name in ("cylinder", "cone"):
        return torch.stack([one, one, e], dim=1)
    if name == "capsule":
        return torch.stack([0.5 * one, 0.5 * one, e], dim=1)
    if name == "torus":
        return torch.stack([one, 0.3 * e, torch.zeros_like(e)], dim=1)
    if name == "tube":
        return torch.stack([one, 0.7 * one, e], dim=1)
    raise ValueError(f"unknown shape class `{name}`")


def _uniform(generator: torch.Generator, *shape: int) -> Tensor:
    return torch.rand(*shape, generator=generator)


def _disk(u: Tensor, v: Tensor, radius: Tensor, z: Tensor, inner: Tensor | float = 0.0) -> Tensor:
    """Uniform points on the annulus inner <= r <= radius at height z (inner = 0: a disk)."""
    r = torch.sqrt(inner**2 + u * (radius**2 - inner**2))
    angle = 2 * math.pi * v
    return torch.stack([r * torch.cos(angle), r * torch.sin(angle), z.expand_as(r)], dim=-1)


def _side(u: Tensor, v: Tensor, radius: Tensor, half_height: Tensor) -> Tensor:
    """Uniform points on the lateral surface of a cylinder."""
    angle = 2 * math.pi * u
    z = (2 * v - 1) * half_height
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle), z], dim=-1)


def _direction(generator: torch.Generator, n: int, m: int) -> Tensor:
    return torch.nn.functional.normalize(torch.randn(n, m, 3, generator=generator), dim=-1)


def _choose(parts: Tensor, areas: Tensor, generator: torch.Generator) -> Tensor:
    """Pick, per sample, one of the candidate points of ``parts`` [P, n, m, 3] with probability ∝ area [n, P]."""
    n, m = parts.shape[1], parts.shape[2]
    index = torch.multinomial(areas, m, replacement=True, generator=generator)  # [n, m]
    stacked = parts.permute(1, 2, 0, 3)  # [n, m, P, 3]
    return stacked.gather(2, index[:, :, None, None].expand(n, m, 1, 3)).squeeze(2)


def _mesh(vertices: Tensor, faces: Sequence[Sequence[int]], m: int, generator: torch.Generator) -> Tensor:
    """Area-weighted uniform samples on triangles: vertices [n, V, 3], faces as vertex triples."""
    tri = vertices[:, torch.tensor(faces)]  # [n, T, 3, 3]
    a, b, c = tri.unbind(2)
    areas = 0.5 * torch.linalg.cross(b - a, c - a).norm(dim=-1)
    n = vertices.shape[0]
    index = torch.multinomial(areas, m, replacement=True, generator=generator)
    a, b, c = (t.gather(1, index[..., None].expand(n, m, 3)) for t in (a, b, c))
    s = torch.sqrt(_uniform(generator, n, m, 1))
    t = _uniform(generator, n, m, 1)
    return a + s * (1 - t) * (b - a) + s * t * (c - a)


def _box(p: Tensor, m: int, g: torch.Generator) -> Tensor:
    signs = torch.tensor([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=p.dtype)
    vertices = signs * p[:, None, :]
    faces = [(0, 1, 3), (0, 3, 2), (4, 6, 7), (4, 7, 5), (0, 4, 5), (0, 5, 1),
             (2, 3, 7), (2, 7, 6), (0, 2, 6), (0, 6, 4), (1, 5, 7), (1, 7, 3)]  # fmt: skip
    return _mesh(vertices, faces, m, g)


def _pyramid(p: Tensor, m: int, g: torch.Generator) -> Tensor:
    x, y, h = p.unbind(1)
    base = torch.stack([torch.stack([sx * x, sy * y, -h], 1) for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))], 1)
    apex = torch.stack([torch.zeros_like(x), torch.zeros_like(x), h], 1)[:, None]
    faces = [(0, 1, 4), (1, 2, 4), (2, 3, 4), (3, 0, 4), (0, 2, 1), (0, 3, 2)]
    return _mesh(torch.cat([base, apex], 1), faces, m, g)


def _prism(p: Tensor, m: int, g: torch.Generator) -> Tensor:
    """Triangular cross-section in the x-z plane (ridge on top), extruded along y."""
    x, y, h = p.unbind(1)
    zero = torch.zeros_like(x)
    corners = [(-x, -h), (x, -h), (zero, h)]
    vertices = torch.stack([torch.stack([cx, sy * y, cz], 1) for sy in (-1, 1) for cx, cz in corners], 1)
    faces = [(0, 2, 1), (3, 4, 5), (0, 1, 4), (0, 4, 3), (1, 2, 5), (1, 5, 4), (2, 0, 3), (2, 3, 5)]
    return _mesh(vertices, faces, m, g)


def _sphere(p: Tensor, m: int, g: torch.Generator) -> Tensor:
    """Ellipsoid: Gaussian directions scaled by the radii (uniform only for a true sphere)."""
    return _direction(g, p.shape[0], m) * p[:, None, :]


def _dome(p: Tensor, m: int, g: torch.Generator) -> Tensor:
    """Upper half ellipsoid plus its base disk, centred on its half height."""
    n = p.shape[0]
    a, c = p[:, 0:1], p[:, 2:3]
    d = _direction(g, n, m)
    cap = torch.stack([d[..., 0], d[..., 1], d[..., 2].abs()], -1) * p[:, None, :]
    base = _disk(_uniform(g, n, m), _uniform(g, n, m), a, torch.zeros(n, 1))
    areas = torch.cat([2 * math.pi * a * (a + c) / 2, math.pi * a**2], 1)
    shape = _choose(torch.stack([cap, base]), areas, g)
    return shape - torch.cat([torch.zeros(n, 2), c / 2], 1)[:, None, :]


def _cylinder(p: Tensor, m: int, g: torch.Generator) -> Tensor:
    n = p.shape[0]
    r, h = p[:, 0:1], p[:, 2:3]
    u, v = _uniform(g, n, m), _uniform(g, n, m)
    parts = torch.stack([_side(u, v, r, h), _disk(u, v, r, h), _disk(u, v, r, -h)])
    areas = torch.cat([4 * math.pi * r * h, math.pi * r**2, math.pi * r**2], 1)
    return _choose(parts, areas, g)


def _cone(p: Tensor, m: int, g: torch.Generator) -> Tensor:
    """Apex at z = +h, base disk of radius r at z = -h."""
    n = p.shape[0]
    r, h = p[:, 0:1], p[:, 2:3]
    u, v = _uniform(g, n, m), _uniform(g, n, m)
    t = torch.sqrt(u)  # fraction of the way from apex to base; area grows with t
    angle = 2 * math.pi * v
    lateral = torch.stack([r * t * torch.cos(angle), r * t * torch.sin(angle), h - 2 * h * t], -1)
    parts = torch.stack([lateral, _disk(u, v, r, -h)])
    areas = torch.cat([math.pi * r * torch.sqrt(r**2 + 4 * h**2), math.pi * r**2], 1)
    return _choose(parts, areas, g)


def _capsule(p: Tensor, m: int, g: torch.Generator) -> Tensor:
    n = p.shape[0]
    r, h = p[:, 0:1], p[:, 2:3]
    side = _side(_uniform(g, n, m), _uniform(g, n, m), r, h)
    d = _direction(g, n, m)
    caps = d * r[..., None] + torch.sign(d[..., 2:3]) * torch.cat([torch.zeros(n, 2), h], 1)[:, None, :]
    areas = torch.cat([4 * math.pi * r * h, 4 * math.pi * r**2], 1)
    return _choose(torch.stack([side, caps]), areas, g)


def _torus(p: Tensor, m: int, g: torch.Generator) -> Tensor:
    """Uniform on the torus: the tube angle phi has density ∝ R + r cos(phi) (inverse CDF by Newton)."""
    n = p.shape[0]
    big, small = p[:, 0:1], p[:, 1:2]
    u = _uniform(g, n, m)
    phi = 2 * math.pi * u
    for _ in range(8):
        phi = phi - (big * phi + small * torch.sin(phi) - 2 * math.pi * big * u) / (big + small * torch.cos(phi))
    theta = 2 * math.pi * _uniform(g, n, m)
    ring = big + small * torch.cos(phi)
    return torch.stack([ring * torch.cos(theta), ring * torch.sin(theta), small * torch.sin(phi)], -1)


def _tube(p: Tensor, m: int, g: torch.Generator) -> Tensor:
    n = p.shape[0]
    outer, inner, h = p[:, 0:1], p[:, 1:2], p[:, 2:3]
    u, v = _uniform(g, n, m), _uniform(g, n, m)
    parts = torch.stack([_side(u, v, outer, h), _side(u, v, inner, h),
                         _disk(u, v, outer, h, inner), _disk(u, v, outer, -h, inner)])  # fmt: skip
    ring = math.pi * (outer**2 - inner**2)
    areas = torch.cat([4 * math.pi * outer * h, 4 * math.pi * inner * h, ring, ring], 1)
    return _choose(parts, areas, g)


_SAMPLERS: dict[str, Callable[[Tensor, int, torch.Generator], Tensor]] = {
    "box": _box, "sphere": _sphere, "cylinder": _cylinder, "cone": _cone, "torus": _torus,
    "pyramid": _pyramid, "capsule": _capsule, "dome": _dome, "prism": _prism, "tube": _tube,
}  # fmt: skip


def sample_surface(name: str, params: Tensor, num: int, generator: torch.Generator) -> Tensor:
    """[n, num, 3] points on the canonical surface of class ``name`` with parameters [n, 3]."""
    if name not in _SAMPLERS:
        raise ValueError(f"unknown shape class `{name}` (known: {', '.join(_SAMPLERS)})")
    return _SAMPLERS[name](params, num, generator)


# --------------------------------------------------------------------------- pose and captions
def _rotation(axis: int, angle: Tensor) -> Tensor:
    """[n, 3, 3] rotations by ``angle`` [n] about coordinate axis 0 (x), 1 (y) or 2 (z)."""
    c, s = torch.cos(angle), torch.sin(angle)
    i, j = [k for k in range(3) if k != axis]
    rot = torch.zeros(angle.shape[0], 3, 3)
    rot[:, axis, axis] = 1.0
    rot[:, i, i], rot[:, i, j], rot[:, j, i], rot[:, j, j] = c, -s, s, c
    return rot


# Canonical z (the shapes' axis) -> world y (the image's vertical).
_Z_TO_Y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def _signed(generator: torch.Generator, n: int, limit: float) -> Tensor:
    return (2 * _uniform(generator, n) - 1) * limit


def _pose(cfg: WorldConfig, n: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Rotation [n, 3, 3], size [n] (radius of the posed shape), offset [n, 3], lying [n] bool."""
    lying = _uniform(g, n) < cfg.lying_probability
    spin = 2 * math.pi * _uniform(g, n)  # about the shape's own axis
    roll = _signed(g, n, cfg.max_roll) + lying * (math.pi / 2)
    turn = _signed(g, n, 0.8)  # swings a lying shape's axis in depth
    tilt = cfg.tilt_range[0] + (cfg.tilt_range[1] - cfg.tilt_range[0]) * _uniform(g, n)
    rotation = _rotation(0, tilt) @ _rotation(1, turn) @ _rotation(2, roll) @ _rotation(1, spin) @ _Z_TO_Y
    low, high = cfg.scale_range
    size = low + (high - low) * _uniform(g, n)
    offset = _signed(g, 3 * n, cfg.max_offset).view(n, 3)
    return rotation, size, offset, lying


def _elongation_word(name: str, e: float, lying: bool) -> str | None:
    if name == "sphere":
        return None
    if name == "torus":
        return "thick" if e > 1.25 else "thin" if e < 0.8 else None
    if e > 1.4:
        return "long" if lying else "tall"
    if e < 0.7:
        return "short" if lying else "flat"
    return None


def _caption(name: str, size: float, e: float, lying: bool, draws: list[float],
             scale_range: tuple[float, float]) -> str:
    """One caption from six uniform draws (synonym twice, two attributes, lying, template)."""
    synonyms = SYNONYMS[name]
    noun = synonyms[0] if draws[0] < 0.5 else synonyms[1 + int(draws[1] * (len(synonyms) - 1))]
    low, high = scale_range
    size_word = "small" if size < low + 0.3 * (high - low) else "large" if size > low + 0.7 * (high - low) else None
    words = [w for w, d in ((size_word, draws[2]), (_elongation_word(name, e, lying), draws[3])) if w and d < 0.7]
    phrase = " ".join(words + [noun])
    if lying and draws[4] < 0.7:
        phrase += " lying on its side"
    template = _CAPTION_TEMPLATES[int(draws[5] * len(_CAPTION_TEMPLATES))]
    return template.format(phrase)


def generate(cfg: WorldConfig, labels: Tensor, generator: torch.Generator) -> ShapeBatch:
    """Draw one posed shape per label (indices into ``cfg.classes``), with its cloud and caption."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    n, m = labels.shape[0], cfg.render_points + cfg.num_points
    if labels.numel() and (labels.min() < 0 or labels.max() >= len(cfg.classes)):
        raise ValueError(f"labels must lie in [0, {len(cfg.classes)}), got {labels.tolist()}")
    elongation = torch.empty(n)
    canonical = torch.empty(n, m, 3)
    params = torch.empty(n, 3)
    for index, name in enumerate(cfg.classes):  # fixed order: the same seed gives the same world
        rows = (labels == index).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        limit = math.log(_ELONGATION.get(name, _DEFAULT_ELONGATION))
        e = torch.exp(_signed(generator, rows.numel(), limit))
        p = canonical_params(name, e)
        elongation[rows], params[rows] = e, p
        canonical[rows] = sample_surface(name, p, m, generator)
    rotation, size, offset, lying = _pose(cfg, n, generator)
    scale = size / canonical.norm(dim=-1).amax(dim=1)  # posed shape fits a ball of radius `size`
    posed = offset[:, None, :] + scale[:, None, None] * canonical @ rotation.transpose(1, 2)
    cloud = posed[:, : cfg.num_points] + cfg.noise * torch.randn(n, cfg.num_points, 3, generator=generator)
    draws = _uniform(generator, n, 6).tolist()
    captions = [
        _caption(cfg.classes[int(label)], float(s), float(e), bool(ly), d, cfg.scale_range)
        for label, s, e, ly, d in zip(labels, size, elongation, lying, draws)
    ]
    return ShapeBatch(labels, cloud, posed[:, cfg.num_points :], params, rotation, scale, offset, captions)


def balanced_labels(class_indices: Sequence[int], per_class: int) -> Tensor:
    """``per_class`` copies of each class index, class-major."""
    return torch.as_tensor(list(class_indices), dtype=torch.long).repeat_interleave(per_class)
