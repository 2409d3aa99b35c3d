"""Pretrain a demo's tiny CLIP on images and captions of every class of its synthetic data.

No pretrained CLIP can be downloaded on an offline machine, so each demo makes its own: both
towers train from scratch with the symmetric InfoNCE of CLIP on freshly drawn samples (a new
batch every step, so nothing is seen twice): depth renderings of 3D shapes, or spectrograms of
sound clips. The weights are saved as safetensors under ``<out>/<name>-<hash>/`` where the hash
covers everything that determines them (the data's settings, recipe, architecture); a later run
with the same settings loads them instead of training again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from omniclip.backbone import MODEL_CONFIG_DIR, ClipBackbone, load_backbone
from omniclip.demo.dataset import Draw, make_paired_set
from omniclip.evaluation import build_classifier
from omniclip.optim import build_optimizer, cosine_schedule

WEIGHTS_FILE = "model.safetensors"
INFO_FILE = "clip.json"


@dataclass(frozen=True)
class ClipPretrainConfig:
    model: str = "omniclip-demo-vit"
    steps: int = 400
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup_steps: int = 40
    image_size: int = 32
    seed: int = 0
    eval_per_class: int = 40  # held-aside samples per class for the image zero-shot check


def config_hash(payload: dict[str, Any], cfg: ClipPretrainConfig) -> str:
    """Hash of everything the pretrained weights depend on: ``payload`` (the data's settings), the
    recipe and the architecture file."""
    architecture = (MODEL_CONFIG_DIR / f"{cfg.model}.json").read_text()
    text = json.dumps({**payload, "clip": asdict(cfg), "arch": architecture}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]

def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the batch (CLIP): row i of each tower is the positive pair."""
    logits = logit_scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T
    targets = torch.arange(logits.shape[0])
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


@torch.no_grad()
def image_zero_shot_accuracy(backbone: ClipBackbone, classes: Sequence[str], prompts: Sequence[str], draw: Draw,
                             per_class: int, seed: int, chunk: int | None = None) -> float:
    """Top-1 of the image tower against class-name prompts on fresh samples of every class (0-1)."""
    samples = make_paired_set(draw, range(len(classes)), per_class, seed, "clip-eval", chunk)
    classifier = build_classifier(backbone.encode_text, classes, prompts)
    features = backbone.encode_image(samples.images)
    return float(((features @ classifier.T).argmax(dim=1) == samples.labels).float().mean())


def pretrain_clip(name: str, classes: Sequence[str], prompts: Sequence[str], draw: Draw, payload: dict[str, Any],
                  cfg: ClipPretrainConfig, out_dir: str | Path, report: Callable[[str], None] = print,
                  eval_chunk: int | None = None) -> tuple[ClipBackbone, dict]:
    """The frozen tiny CLIP for the data ``draw`` makes (images at ``cfg.image_size`` px): loaded from
    ``out_dir/<name>-<hash of payload and cfg>`` when cached, else trained and saved.

    ``eval_chunk`` is how many samples the zero-shot check draws at a time (None: all at once; the
    draws depend on it, so it is fixed per demo to keep its recorded accuracy reproducible).
    Returns the backbone (frozen, eval mode) and its record (hash, accuracy, seconds).
    """
    folder = Path(out_dir) / f"{name}-{config_hash(payload, cfg)}"
    weights, info_path = folder / WEIGHTS_FILE, folder / INFO_FILE
    if weights.is_file() and info_path.is_file():
        report(f"tiny CLIP: reusing {weights}")
        return load_backbone(cfg.model, str(weights)), json.loads(info_path.read_text())

    backbone = load_backbone(cfg.model, None, freeze=False, init_seed=cfg.seed)
    model = backbone.model.train()
    # Random token vectors are already distinct; keeping the 49408-row table fixed spares a dense
    # 6M-parameter gradient and AdamW update every step (about a third of a step on 2 cores).
    model.token_embedding.requires_grad_(False)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    schedule = cosine_schedule(optimizer, cfg.warmup_steps, cfg.steps)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    token_cache: dict[str, torch.Tensor] = {}
    start = time.perf_counter()
    from tqdm.auto import tqdm

    bar = tqdm(range(1, cfg.steps + 1), desc="tiny CLIP pretraining", dynamic_ncols=True)
    for step in bar:
        labels = torch.randint(len(classes), (cfg.batch_size,), generator=generator)
        _, images, captions = draw(labels, generator)
        missing = [c for c in dict.fromkeys(captions) if c not in token_cache]
        if missing:
            token_cache.update(zip(missing, backbone.tokenizer(missing)))
        tokens = torch.stack([token_cache[c] for c in captions])
        loss = clip_loss(model.encode_image(images), model.encode_text(tokens), model.logit_scale.exp().clamp(max=100))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 10 == 0 or step == cfg.steps:
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    seconds = time.perf_counter() - start
    model.requires_grad_(False)
    model.eval()
    accuracy = image_zero_shot_accuracy(backbone, classes, prompts, draw, cfg.eval_per_class, cfg.seed + 2,
                                        eval_chunk)
    info = {"hash": folder.name, "seconds": round(seconds, 1), "image_zero_shot_top1": accuracy,
            "config": asdict(cfg)}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{WEIGHTS_FILE}.tmp"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(weights)
    info_path.write_text(json.dumps(info, indent=2))
    report(f"tiny CLIP: {seconds:.0f} s, image zero-shot top-1 {accuracy:.3f}; saved {weights}")
    return backbone, info
