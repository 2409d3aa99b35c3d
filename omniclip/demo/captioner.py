"""The describing demo's tiny InstructBLIP: a word-level tokenizer built offline, the model built
from transformers configs, and its training on renderings -> captions of the demo world.

No InstructBLIP checkpoint can be downloaded here, so the demo makes one the way InstructBLIP
was made, at toy scale: a vision tower (the demo's 32-px depth renderings, 4-px patches), a
Q-Former that reads the tower's post-LayerNorm tokens with the instruction, and a small OPT
language model, trained together on freshly drawn renderings of every class with the world's
captions as answers to one question. The weights are cached in the output folder under a hash of
everything they depend on, as the 3D demo caches its tiny CLIP.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from omniclip.demo.clip_pretrain import clip_loss
from omniclip.demo.dataset import Draw
from omniclip.demo.world import SYNONYMS, WorldConfig
from omniclip.optim import build_optimizer, cosine_schedule

PAD, UNK, BOS, EOS, IMAGE = "<pad>", "<unk>", "<bos>", "<eos>", "<image>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, IMAGE)
QUESTION = "what shape is this?"
WEIGHTS_FILE = "captioner.safetensors"
INFO_FILE = "captioner.json"


# --------------------------------------------------------------------------- tokenizer
def _pre_tokenizer() -> Any:
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Whitespace()  # words (\w+) and punctuation runs, as separate tokens


def words(text: str) -> list[str]:
    """The tokenizer's words of ``text``: lower-cased words and punctuation marks."""
    return [piece for piece, _ in _pre_tokenizer().pre_tokenize_str(text.lower())]


def caption_vocabulary(world: WorldConfig, samples: int = 4000, seed: int = 0) -> list[str]:
    """Every word the world's captions use (read off ``samples`` drawn captions, which cover each
    template, synonym and attribute many times over), every synonym's words and the question's."""
    cheap = WorldConfig(classes=world.classes, num_points=1, render_points=1)
    labels = torch.arange(samples) % len(world.classes)
    from omniclip.demo.world import generate

    captions = generate(cheap, labels, torch.Generator().manual_seed(seed)).captions
    found = {w for text in captions for w in words(text)}
    found |= {w for name in world.classes for synonym in SYNONYMS[name] for w in words(synonym)}
    found |= set(words(QUESTION))
    return sorted(found)


def build_tokenizer(vocabulary: Sequence[str]) -> Any:
    """A `PreTrainedTokenizerFast` over a `tokenizers` WordLevel model: the special tokens
    (`SPECIAL_TOKENS`, ids 0-4) then ``vocabulary``; built offline, no hub."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    duplicates = sorted({w for w in vocabulary if list(vocabulary).count(w) > 1} | set(vocabulary) & set(SPECIAL_TOKENS))
    if duplicates:
        raise ValueError(f"the vocabulary repeats or shadows tokens {duplicates}")
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *vocabulary])}
    model = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    model.normalizer = normalizers.Lowercase()
    model.pre_tokenizer = _pre_tokenizer()
    model.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, no space before . ?
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=model, unk_token=UNK, pad_token=PAD, bos_token=BOS,
                                        eos_token=EOS, additional_special_tokens=[IMAGE])
    return tokenizer


# --------------------------------------------------------------------------- model
@dataclass(frozen=True)
class CaptionerConfig:
    """Sizes of the tiny InstructBLIP and its training recipe."""

    width: int = 64  # vision tower, Q-Former and language model
    vision_layers: int = 4
    qformer_layers: int = 2
    text_layers: int = 2
    heads: int = 4
    num_query_tokens: int = 8
    image_size: int = 32
    patch_size: int = 8
    # A0: the vision tower pretrained contrastively against a bag-of-words caption encoder (as
    # InstructBLIP's EVA tower was pretrained as a CLIP), then frozen while A1 trains the Q-Former
    # and the language model on captions (InstructBLIP freezes its tower too). 0: no A0, and A1
    # trains the tower with the rest.
    tower_steps: int = 300
    tower_batch_size: int = 128
    tower_lr: float = 3e-3
    steps: int = 600
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    seed: int = 0


def instructblip_config(cfg: CaptionerConfig, tokenizer: Any) -> Any:
    """An `InstructBlipConfig` of ``cfg``'s sizes whose Q-Former and OPT share ``tokenizer``'s vocabulary."""
    from transformers import InstructBlipConfig

    w, vocab = cfg.width, len(tokenizer)
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (("pad", PAD), ("bos", BOS), ("eos", EOS))}
    vision = {"hidden_size": w, "intermediate_size": 4 * w, "num_hidden_layers": cfg.vision_layers,
              "num_attention_heads": cfg.heads, "image_size": cfg.image_size, "patch_size": cfg.patch_size}
    qformer = {"vocab_size": vocab, "hidden_size": w, "num_hidden_layers": cfg.qformer_layers,
               "num_attention_heads": cfg.heads, "intermediate_size": 4 * w, "encoder_hidden_size": w,
               "pad_token_id": ids["pad"], "max_position_embeddings": 64}
    text = {"model_type": "opt", "vocab_size": vocab, "hidden_size": w, "num_hidden_layers": cfg.text_layers,
            "num_attention_heads": cfg.heads, "ffn_dim": 4 * w, "max_position_embeddings": 128,
            "bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "pad_token_id": ids["pad"],
            "word_embed_proj_dim": w}
    return InstructBlipConfig(vision_config=vision, qformer_config=qformer, text_config=text,
                              num_query_tokens=cfg.num_query_tokens,
                              image_token_index=tokenizer.convert_tokens_to_ids(IMAGE))


def build_captioner(cfg: CaptionerConfig, tokenizer: Any) -> Any:
    """A randomly initialised `InstructBlipForConditionalGeneration` (weights drawn from ``cfg.seed``)."""
    from transformers import InstructBlipForConditionalGeneration

    torch.manual_seed(cfg.seed)
    model = InstructBlipForConditionalGeneration(instructblip_config(cfg, tokenizer))
    with torch.no_grad():  # transformers initialises the query tokens to zeros: all queries alike
        model.query_tokens.normal_(std=0.02)
    return model


@dataclass
class Prompt:
    """The head's inputs for one question, ``batch`` rows: ``num_query_tokens`` image tokens, BOS
    and the question for the language model (as InstructBLIP's processor lays them out), the
    question alone for the Q-Former."""

    input_ids: Tensor  # [B, Q + 1 + S]
    qformer_input_ids: Tensor  # [B, S]

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])


def make_prompt(tokenizer: Any, num_query_tokens: int, batch: int, question: str = QUESTION) -> Prompt:
    asked = tokenizer(question, add_special_tokens=False)["input_ids"]
    image, bos = tokenizer.convert_tokens_to_ids(IMAGE), tokenizer.bos_token_id
    row = [image] * num_query_tokens + [bos] + asked
    return Prompt(torch.tensor([row] * batch), torch.tensor([asked] * batch))


def training_batch(tokenizer: Any, num_query_tokens: int, captions: Sequence[str],
                   question: str = QUESTION) -> dict[str, Tensor]:
    """Prompt + caption + EOS per row (right-padded), labels only on the caption and EOS."""
    prompt = make_prompt(tokenizer, num_query_tokens, 1, question)
    head = prompt.input_ids[0].tolist()
    answers = [tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for c in captions]
    longest = max(map(len, answers))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([head + a + [pad] * (longest - len(a)) for a in answers])
    mask = torch.tensor([[1] * (len(head) + len(a)) + [0] * (longest - len(a)) for a in answers])
    labels = ids.clone()
    labels[:, : len(head)] = -100
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels,
            "qformer_input_ids": prompt.qformer_input_ids.expand(len(captions), -1)}


# --------------------------------------------------------------------------- training and cache
def captioner_hash(payload: dict[str, Any], cfg: CaptionerConfig, vocabulary: Sequence[str]) -> str:
    import transformers

    text = json.dumps({**payload, "captioner": asdict(cfg), "vocabulary": list(vocabulary), "question": QUESTION,
                       "transformers": transformers.__version__}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def train_captioner(world: WorldConfig, draw: Draw, cfg: CaptionerConfig, out_dir: str | Path,
                    report: Callable[[str], None] = print) -> tuple[Any, Any, dict[str, Any]]:
    """The frozen tiny InstructBLIP trained on fresh renderings -> captions of every class of
    ``world`` (``draw`` gives them), loaded from ``out_dir/captioner-<hash>`` when cached.

    Returns (model in eval mode, frozen; tokenizer; record with hash, seconds, final loss).
    """
    vocabulary = caption_vocabulary(world)
    tokenizer = build_tokenizer(vocabulary)
    folder = Path(out_dir) / f"captioner-{captioner_hash({'world': asdict(world)}, cfg, vocabulary)}"
    model = build_captioner(cfg, tokenizer)
    weights, info_path = folder / WEIGHTS_FILE, folder / INFO_FILE
    if weights.is_file() and info_path.is_file():
        report(f"captioner: reusing {weights}")
        model.load_state_dict(load_file(str(weights)))
        return _frozen(model), tokenizer, json.loads(info_path.read_text())
    start = time.perf_counter()
    tower_info = pretrain_tower(model, tokenizer, world, draw, cfg, report) if cfg.tower_steps else {}
    model.train()
    if cfg.tower_steps:
        model.vision_model.requires_grad_(False)
        model.vision_model.eval()
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    schedule = cosine_schedule(optimizer, cfg.warmup_steps, cfg.steps)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    losses = []
    for step in range(1, cfg.steps + 1):
        labels = torch.randint(len(world.classes), (cfg.batch_size,), generator=generator)
        _, images, captions = draw(labels, generator)
        batch = training_batch(tokenizer, cfg.num_query_tokens, captions)
        loss = model(pixel_values=images, **batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % max(cfg.steps // 10, 1) == 0 or step == cfg.steps:
            report(f"captioner step {step}/{cfg.steps}  loss {loss.item():.3f}  {time.perf_counter() - start:.0f} s")
    tail = losses[-max(len(losses) // 10, 1):]
    info = {"hash": folder.name, "seconds": round(time.perf_counter() - start, 1),
            "final_loss": sum(tail) / len(tail), "tower": tower_info, "vocabulary_size": len(tokenizer), "config": asdict(cfg)}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{WEIGHTS_FILE}.tmp"
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(weights)
    info_path.write_text(json.dumps(info, indent=2))
    report(f"captioner: {info['seconds']:.0f} s, final loss {info['final_loss']:.3f}; saved {weights}")
    return _frozen(model), tokenizer, info


class BagOfWords(nn.Module):
    """A caption encoder for the tower's contrastive pretraining: the mean of learned word vectors
    (padding excluded), projected. The demo's captions need no more than which words they hold."""

    def __init__(self, vocab_size: int, width: int, pad_id: int) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(vocab_size, width, mode="mean", padding_idx=pad_id)
        self.proj = nn.Linear(width, width)

    def forward(self, ids: Tensor) -> Tensor:
        return self.proj(self.embed(ids))


def pretrain_tower(model: Any, tokenizer: Any, world: WorldConfig, draw: Draw, cfg: CaptionerConfig,
                   report: Callable[[str], None]) -> dict[str, Any]:
    """Stage A0: CLIP's symmetric InfoNCE between the tower's normalised class token (through a
    linear projection) and `BagOfWords` of the caption, on fresh renderings of every class."""
    width = cfg.width
    text = BagOfWords(len(tokenizer), width, tokenizer.pad_token_id)
    image_proj = nn.Linear(width, width)
    log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    parts = nn.ModuleDict({"tower": model.vision_model, "text": text, "image_proj": image_proj})
    parts.register_parameter("log_scale", log_scale)
    parts.train()
    optimizer = build_optimizer(parts, cfg.tower_lr, cfg.weight_decay)
    schedule = cosine_schedule(optimizer, max(cfg.tower_steps // 10, 1), cfg.tower_steps)
    generator = torch.Generator().manual_seed(cfg.seed + 2)
    start = time.perf_counter()
    for step in range(1, cfg.tower_steps + 1):
        labels = torch.randint(len(world.classes), (cfg.tower_batch_size,), generator=generator)
        _, images, captions = draw(labels, generator)
        ids = tokenizer(list(captions), add_special_tokens=False, padding=True, return_tensors="pt")["input_ids"]
        pooled = model.vision_model(pixel_values=images).pooler_output  # the post-LN class token
        loss = clip_loss(image_proj(pooled), text(ids), log_scale.exp().clamp(max=100))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % max(cfg.tower_steps // 5, 1) == 0 or step == cfg.tower_steps:
            report(f"tower (contrastive) step {step}/{cfg.tower_steps}  loss {loss.item():.3f}  "
                   f"{time.perf_counter() - start:.0f} s")
    return {"seconds": round(time.perf_counter() - start, 1), "final_loss": loss.item()}


def _frozen(model: Any) -> Any:
    model.requires_grad_(False)
    return model.eval()


__all__ = ["CaptionerConfig", "Prompt", "QUESTION", "build_captioner", "build_tokenizer", "caption_vocabulary",
           "make_prompt", "train_captioner", "training_batch", "words"]
