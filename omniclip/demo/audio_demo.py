"""Audio demo: zero-shot sound classification through a frozen tiny CLIP ViT, end to end, offline.

1. pretrain a tiny CLIP on spectrogram images + captions of every synthetic sound class
   (`omniclip.demo.sounds`; cached in the output folder);
2. train an audio lens (the modality's `AudioTokenizer`, which computes the Kaldi fbank of the
   waveforms itself, + a Perceiver whose latents are the ViT's patch positions) into the frozen
   ViT on the seen classes only, with text (caption) and image (the clip's own spectrogram)
   anchors, through the framework's `Trainer`;
3. classify clips of all classes zero-shot against class-name prompts, seen and held-out classes
   reported apart, beside chance, the image tower on the clips' spectrograms (what a perfect lens
   would reach), and two controls: the same lens into a random frozen ViT, and the same lens
   pooled straight to the embedding with no ViT;
4. write ``results.json``, ``confusion.png`` and print the table.

``--quick`` is a smoke test of the whole pipeline (tiny sizes, numbers mean nothing);
``--study`` repeats steps 2-3 over several held-out splits.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from omniclip.modalities.audio import AudioTokenizer
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import Dataset

from omniclip.anchors import AnchorStore
from omniclip.backbone import MODEL_CONFIG_DIR, ClipBackbone, load_backbone
from omniclip.demo.clip_pretrain import (
    INFO_FILE,
    WEIGHTS_FILE,
    ClipPretrainConfig,
    clip_loss,
)
from omniclip.demo.experiment import evaluate, held_out_mask
from omniclip.demo.lens import PooledHead
from omniclip.demo.sounds import (
    IMAGE_LEVELS,
    PROMPT_TEMPLATES,
    RANGES,
    SoundConfig,
    generate,
    log_mel,
    spectrogram_image,
)
from omniclip.demo.world import balanced_labels
from omniclip.evaluation import build_classifier, collect_embeddings
from omniclip.lens.perceiver import Perceiver
from omniclip.losses import LogitScale
from omniclip.modality import default_collate
from omniclip.model import LensModel
from omniclip.objective import ContrastiveObjective
from omniclip.optim import build_optimizer, cosine_schedule
from omniclip.trainer import Trainer, TrainerConfig
from omniclip.trunk import ViTTrunk

VARIANTS = ("vit", "random_vit", "no_vit")

#: Held-out class triples (indices into `sounds.CLASS_NAMES`); the first is the default run's.
#: Each leaves a relative among the seen classes (rising chirp for falling, tone for beeps,
#: hiss for rumble, ...), so that what transfers is a spectrogram concept, not a copy.
SPLITS: tuple[tuple[int, ...], ...] = ((2, 4, 8), (1, 3, 7), (0, 5, 9), (3, 6, 8))


# --------------------------------------------------------------------------- data
@dataclass
class SoundSet:
    """Clips, their spectrogram images and captions, drawn once (``name`` keys the image anchors)."""

    name: str
    waves: Tensor  # [N, T]
    images: Tensor  # [N, 3, S, S]
    captions: list[str]
    labels: Tensor  # [N] indices into SoundConfig.classes

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def make_sound_set(sounds: SoundConfig, classes: Sequence[int], per_class: int, seed: int, name: str,
                   image_size: int = 32, chunk: int = 256) -> SoundSet:
    """``per_class`` clips of each class in ``classes`` (class-major), drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    labels = balanced_labels(classes, per_class)
    waves, images, captions = [], [], []
    for start in range(0, len(labels), chunk):  # bounded memory for the float64 synthesis
        batch = generate(sounds, labels[start : start + chunk], generator)
        waves.append(batch.waves)
        images.append(spectrogram_image(log_mel(batch.waves, sounds), image_size))
        captions += batch.captions
    return SoundSet(name, torch.cat(waves), torch.cat(images), captions, labels)


class SoundDataset(Dataset):
    """Sample dicts (``inputs`` = waveform, ``label``, ``text``, ``image``, ``image_key``, ``path``)."""

    def __init__(self, clips: SoundSet) -> None:
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        key = f"{self.clips.name}/{index}"
        return {
            "inputs": self.clips.waves[index],
            "label": int(self.clips.labels[index]),
            "text": self.clips.captions[index],
            "image": self.clips.images[index],
            "image_key": key,
            "path": key,
        }


# --------------------------------------------------------------------------- tiny CLIP
def sound_clip_hash(sounds: SoundConfig, cfg: ClipPretrainConfig) -> str:
    """Hash of everything the pretrained weights depend on: sound config, class parameter ranges,
    image levels, pretraining recipe and architecture file."""
    architecture = (MODEL_CONFIG_DIR / f"{cfg.model}.json").read_text()
    payload = json.dumps({"sounds": asdict(sounds), "ranges": RANGES, "levels": IMAGE_LEVELS, "clip": asdict(cfg),
                          "arch": architecture}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


@torch.no_grad()
def spectrogram_zero_shot_accuracy(backbone: ClipBackbone, sounds: SoundConfig, per_class: int, seed: int,
                                   image_size: int) -> float:
    """Top-1 of the image tower against class-name prompts on fresh clips of every class (0-1)."""
    clips = make_sound_set(sounds, range(len(sounds.classes)), per_class, seed, "clip-eval", image_size)
    classifier = build_classifier(backbone.encode_text, sounds.classes, PROMPT_TEMPLATES)
    features = backbone.encode_image(clips.images)
    return float(((features @ classifier.T).argmax(dim=1) == clips.labels).float().mean())


def pretrain_sound_clip(sounds: SoundConfig, cfg: ClipPretrainConfig, out_dir: str | Path,
                        report: Callable[[str], None] = print) -> tuple[ClipBackbone, dict]:
    """The frozen tiny CLIP for ``sounds``: loaded from ``out_dir`` when cached, else trained on
    fresh spectrogram images + captions every step (CLIP's symmetric InfoNCE) and saved.

    Returns the backbone (frozen, eval mode) and its record (hash, accuracy, seconds).
    """
    folder = Path(out_dir) / f"sound-clip-{sound_clip_hash(sounds, cfg)}"
    weights, info_path = folder / WEIGHTS_FILE, folder / INFO_FILE
    if weights.is_file() and info_path.is_file():
        report(f"tiny CLIP: reusing {weights}")
        return load_backbone(cfg.model, str(weights)), json.loads(info_path.read_text())

    torch.manual_seed(cfg.seed)
    backbone = load_backbone(cfg.model, None, freeze=False, init_seed=cfg.seed)
    model = backbone.model.train()
    model.token_embedding.requires_grad_(False)  # random rows are distinct already; spares a 6M update
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    schedule = cosine_schedule(optimizer, cfg.warmup_steps, cfg.steps)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    token_cache: dict[str, Tensor] = {}
    start = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        labels = torch.randint(len(sounds.classes), (cfg.batch_size,), generator=generator)
        batch = generate(sounds, labels, generator)
        images = spectrogram_image(log_mel(batch.waves, sounds), cfg.image_size)
        missing = [c for c in dict.fromkeys(batch.captions) if c not in token_cache]
        if missing:
            token_cache.update(zip(missing, backbone.tokenizer(missing)))
        tokens = torch.stack([token_cache[c] for c in batch.captions])
        loss = clip_loss(model.encode_image(images), model.encode_text(tokens), model.logit_scale.exp().clamp(max=100))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == cfg.steps:
            report(f"tiny CLIP step {step}/{cfg.steps}  loss {loss.item():.3f}  {time.perf_counter() - start:.0f} s")
    seconds = time.perf_counter() - start
    model.requires_grad_(False)
    model.eval()
    accuracy = spectrogram_zero_shot_accuracy(backbone, sounds, cfg.eval_per_class, cfg.seed + 2, cfg.image_size)
    info = {"hash": folder.name, "seconds": round(seconds, 1), "image_zero_shot_top1": accuracy,
            "config": asdict(cfg)}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{WEIGHTS_FILE}.tmp"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(weights)
    info_path.write_text(json.dumps(info, indent=2))
    report(f"tiny CLIP: {seconds:.0f} s, spectrogram zero-shot top-1 {accuracy:.3f}; saved {weights}")
    return backbone, info


# --------------------------------------------------------------------------- lens
@dataclass(frozen=True)
class AudioLensConfig:
    """Sizes of the audio tokenizer and the Perceiver, and the tokenizer's training augmentation."""

    token_dim: int = 128
    stride: int = 8  # the patch is the trunk's (8): non-overlapping 8 x 8 fbank patches, 8 x 12 tokens
    depth: int = 1
    self_per_cross_attn: int = 1
    cross_dim_head: int = 64
    latent_dim_head: int = 32
    # SpecAugment band widths (mel bins, frames). Off: a masked band is still in the clip's
    # spectrogram anchor, and with masks 8 / 16 seen accuracy fell from 0.98 to 0.84 and calibrated
    # held-out accuracy from 0.53 to 0.31 (/tmp/audio_demo_experiments.md).
    freq_mask: int = 0
    time_mask: int = 0
    noise: bool = False  # ViT-Lens' noise + time roll; the roll would misalign clip and spectrogram anchor


def build_audio_lens(variant: str, backbone: ClipBackbone, sounds: SoundConfig, cfg: AudioLensConfig,
                     seed: int) -> LensModel:
    """``vit`` (ViT-Lens), ``random_vit`` (the same into a random frozen ViT of the same
    architecture) or ``no_vit`` (the lens latents mean-pooled and projected, `PooledHead`).
    The tokenizer and Perceiver weights are drawn from ``seed``, the same for every variant."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown lens variant `{variant}` (one of: {', '.join(VARIANTS)})")
    source = load_backbone(backbone.name, None, init_seed=seed + 1) if variant == "random_vit" else backbone
    trunk = ViTTrunk(source.visual)
    num_latents = trunk.num_positions - 1
    torch.manual_seed(seed)
    tokenizer = AudioTokenizer(
        cfg.token_dim, trunk.patch_size, cfg.stride, sounds.sample_rate, sounds.num_mel_bins, sounds.frames,
        freq_mask=cfg.freq_mask, time_mask=cfg.time_mask, noise=cfg.noise,
    )
    lens = Perceiver(
        input_dim=cfg.token_dim, latent_dim=trunk.width, num_latents=num_latents, depth=cfg.depth,
        cross_dim_head=cfg.cross_dim_head, latent_heads=trunk.width // cfg.latent_dim_head,
        latent_dim_head=cfg.latent_dim_head, self_per_cross_attn=cfg.self_per_cross_attn,
    )
    head = PooledHead(trunk.width, trunk.embed_dim, num_latents) if variant == "no_vit" else trunk
    return LensModel(tokenizer, lens, head)


@dataclass(frozen=True)
class AudioTrainConfig:
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.05
    text_weight: float = 1.0  # captions of the training clips
    image_weight: float = 1.0  # the frozen CLIP embedding of each clip's own spectrogram


def train_audio_lens(model: LensModel, backbone: ClipBackbone, train: SoundSet, cfg: AudioTrainConfig,
                     out_dir: str | Path, seed: int) -> dict[str, Any]:
    """Fit ``model`` with `Trainer` + `ContrastiveObjective` (temperature = the CLIP's own)."""
    objective = ContrastiveObjective(
        AnchorStore(backbone), LogitScale(backbone.logit_scale), text_weight=cfg.text_weight,
        image_weight=cfg.image_weight,
    )
    trainer_cfg = TrainerConfig(
        max_steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay, num_workers=0, seed=seed, checkpoint_every=cfg.steps, keep_last=1,
        log_every=max(cfg.steps // 10, 1), resume="never", tensorboard=False, progress_bar=False,
    )
    trainer = Trainer(trainer_cfg, model, objective, SoundDataset(train), default_collate, out_dir)
    start = time.perf_counter()
    result = trainer.fit()
    tail = result.losses[-max(len(result.losses) // 10, 1) :]
    return {"seconds": round(time.perf_counter() - start, 1), "final_loss": sum(tail) / len(tail)}


def embed_clips(model: LensModel, clips: SoundSet, batch_size: int = 128) -> Tensor:
    """Normalised lens embeddings [N, E] of every clip (eval mode: no augmentation)."""
    batches = [
        {"inputs": clips.waves[i : i + batch_size], "labels": clips.labels[i : i + batch_size]}
        for i in range(0, len(clips), batch_size)
    ]
    embeddings, _ = collect_embeddings(model, batches, "cpu")
    return embeddings


# --------------------------------------------------------------------------- the experiment
@dataclass(frozen=True)
class AudioDemoConfig:
    sounds: SoundConfig = field(default_factory=SoundConfig)
    clip: ClipPretrainConfig = field(default_factory=lambda: ClipPretrainConfig(
        steps=600, batch_size=128, lr=3e-3, weight_decay=0.1, warmup_steps=60, image_size=32, eval_per_class=40))
    lens: AudioLensConfig = field(default_factory=AudioLensConfig)
    train: AudioTrainConfig = field(default_factory=AudioTrainConfig)
    train_per_class: int = 200
    test_per_class: int = 60
    splits: tuple[tuple[int, ...], ...] = SPLITS[:1]
    variants: tuple[str, ...] = VARIANTS
    seed: int = 0


def preset(name: str, seed: int = 0, splits: Sequence[Sequence[int]] | None = None) -> AudioDemoConfig:
    """``quick`` (smoke test), ``default`` (one split, < 10 min on 2 cores) or ``study`` (all `SPLITS`);
    ``splits`` replaces the preset's held-out splits."""
    base = AudioDemoConfig(seed=seed)
    base = replace(base, clip=replace(base.clip, seed=seed))
    if name == "quick":
        cfg = replace(
            base,
            clip=replace(base.clip, steps=4, batch_size=16, warmup_steps=1, eval_per_class=2),
            train=replace(base.train, steps=2, batch_size=8, warmup_steps=1),
            train_per_class=2,
            test_per_class=2,
        )
    elif name == "default":
        cfg = base
    elif name == "study":
        cfg = replace(base, splits=SPLITS)
    else:
        raise ValueError(f"unknown preset `{name}` (quick, default, study)")
    if splits is not None:
        cfg = replace(cfg, splits=tuple(tuple(s) for s in splits))
    return cfg


def run_split(cfg: AudioDemoConfig, backbone: ClipBackbone, held_out: Sequence[int], out_dir: Path,
              report: Callable[[str], None]) -> dict[str, Any]:
    """Train every variant on the seen classes of one split and score all of them on all classes."""
    classes = cfg.sounds.classes
    seen = [c for c in range(len(classes)) if c not in held_out]
    split_name = "-".join(classes[c].replace(" ", "_") for c in held_out)
    size = cfg.clip.image_size
    train = make_sound_set(cfg.sounds, seen, cfg.train_per_class, cfg.seed * 1000 + 11, f"train-{split_name}", size)
    test = make_sound_set(cfg.sounds, range(len(classes)), cfg.test_per_class, cfg.seed * 1000 + 12, "test", size)
    classifier = build_classifier(backbone.encode_text, classes, PROMPT_TEMPLATES)
    mask = held_out_mask(len(classes), held_out)
    with torch.no_grad():
        image_tower = backbone.encode_image(test.images)
    record: dict[str, Any] = {
        "held_out": [classes[c] for c in held_out],
        # What a perfect lens would reach: the image tower on the test clips' own spectrograms.
        "image_tower": evaluate(image_tower, test.labels, classifier, mask),
        "variants": {},
    }
    for variant in cfg.variants:
        model = build_audio_lens(variant, backbone, cfg.sounds, cfg.lens, cfg.seed)
        training = train_audio_lens(model, backbone, train, cfg.train, out_dir / f"lens-{split_name}-{variant}",
                                    cfg.seed)
        result = evaluate(embed_clips(model, test), test.labels, classifier, mask)
        result["train"] = training
        record["variants"][variant] = result
        report(f"  held out {split_name:>32}  {variant:>10}: held-out {result['raw']['held_out']:.3f} raw, "
               f"{result['calibrated']['held_out']:.3f} calibrated; seen {result['raw']['seen']:.3f}  "
               f"({training['seconds']:.0f} s)")
    return record


METRICS = ("all", "seen", "held_out", "held_out_among_held_out")
LABELS = {
    "vit": "lens -> frozen pretrained ViT",
    "random_vit": "control: lens -> frozen random ViT",
    "no_vit": "control: lens pooled, no ViT",
    "image_tower": "reference: CLIP image tower on spectrograms",
}


def summarise(splits: list[dict[str, Any]], variants: Sequence[str]) -> dict[str, Any]:
    """Mean over splits of every metric, per variant (and for the image tower), raw and calibrated."""
    rows = {v: [s["variants"][v] for s in splits] for v in variants}
    rows["image_tower"] = [s["image_tower"] for s in splits]
    return {
        name: {mode: {m: sum(r[mode][m] for r in records) / len(records) for m in METRICS}
               for mode in ("raw", "calibrated")}
        for name, records in rows.items()
    }


def markdown_table(results: dict[str, Any]) -> str:
    """Mean accuracies over the splits, calibrated and raw, chance in the first row."""
    chance, summary = results["chance"], results["summary"]
    lines = [
        (f"| model (mean of {len(results['splits'])} held-out split(s)) | all classes | seen | held-out "
         "| held-out (raw) | seen (raw) | held-out among held-out |"),
        "|---|---|---|---|---|---|---|",
        (f"| chance | {chance['all']:.2f} | {chance['seen']:.2f} | {chance['held_out']:.2f} "
         f"| {chance['held_out']:.2f} | {chance['seen']:.2f} | {chance['held_out_among_held_out']:.2f} |"),
    ]
    for name in [*results["variants"], "image_tower"]:
        cal, raw = summary[name]["calibrated"], summary[name]["raw"]
        lines.append(f"| {LABELS[name]} | {cal['all']:.2f} | {cal['seen']:.2f} | {cal['held_out']:.2f} "
                     f"| {raw['held_out']:.2f} | {raw['seen']:.2f} | {cal['held_out_among_held_out']:.2f} |")
    return "\n".join(lines)


def plot_confusion(split: dict[str, Any], classes: Sequence[str], variants: Sequence[str], path: Path) -> None:
    """One calibrated confusion matrix (row-normalised) per variant; held-out classes starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{c}*" if c in split["held_out"] else c for c in classes]
    fig, axes = plt.subplots(1, len(variants), figsize=(4.6 * len(variants), 4.6), squeeze=False)
    for ax, variant in zip(axes[0], variants):
        result = split["variants"][variant]["calibrated"]
        counts = torch.tensor(result["confusion"], dtype=torch.float32)
        rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
        ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{variant}: held-out {result['held_out']:.2f}, seen {result['seen']:.2f}", fontsize=9)
    fig.suptitle("zero-shot sound classification (* = held out of lens training)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(cfg: AudioDemoConfig, out_dir: str | Path, report: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole demo; returns what it writes to ``results.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    backbone, clip_info = pretrain_sound_clip(cfg.sounds, cfg.clip, out_dir, report)
    clip_seconds = time.perf_counter() - start
    splits = [run_split(cfg, backbone, held_out, out_dir, report) for held_out in cfg.splits]
    num_classes = len(cfg.sounds.classes)
    results = {
        "classes": list(cfg.sounds.classes),
        "chance": {"all": 1 / num_classes, "seen": 1 / num_classes, "held_out": 1 / num_classes,
                   "held_out_among_held_out": 1 / len(cfg.splits[0])},
        "clip": clip_info,
        "variants": list(cfg.variants),
        "splits": splits,
        "summary": summarise(splits, cfg.variants),
        "seconds": {"clip": round(clip_seconds, 1), "total": round(time.perf_counter() - start, 1)},
        "config": asdict(cfg),
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    plot_confusion(splits[0], cfg.sounds.classes, cfg.variants, out_dir / "confusion.png")
    return results


def _held_out(text: str, classes: Sequence[str]) -> tuple[int, ...]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [n for n in names if n not in classes]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown classes {unknown or [text]} (known: {', '.join(classes)})")
    if len(names) >= len(classes):
        raise argparse.ArgumentTypeError("at least one class must stay seen")
    return tuple(classes.index(n) for n in names)


def main(argv: Sequence[str] | None = None) -> int:
    classes = SoundConfig().classes
    parser = argparse.ArgumentParser(prog="python -m omniclip.demo.audio_demo", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smoke test of the pipeline (< 1 min; not evidence)")
    mode.add_argument("--study", action="store_true", help=f"all {len(SPLITS)} held-out splits")
    parser.add_argument("--held-out", type=lambda text: _held_out(text, classes), action="append",
                        help="comma-separated held-out class names (repeat for several splits); "
                             f"default: {', '.join(classes[c] for c in SPLITS[0])}")
    parser.add_argument("--out", default="omniclip-audio-demo-out", help="output folder (the tiny CLIP is cached here)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is fastest for these small tensors on a busy machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = preset("quick" if args.quick else "study" if args.study else "default", args.seed, args.held_out)
    results = run(cfg, args.out)
    print()
    print(markdown_table(results))
    print(f"\nwrote {Path(args.out) / 'results.json'} and {Path(args.out) / 'confusion.png'} "
          f"in {results['seconds']['total']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
