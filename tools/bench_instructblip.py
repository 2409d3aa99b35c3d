"""Benchmark InstructBLIP generation through omniclip's `InstructBlipHead`, stage by stage.

    python tools/bench_instructblip.py                    # the "small" config below, CPU
    python tools/bench_instructblip.py --tiny             # the tests' tiny config (seconds)
    python tools/bench_instructblip.py --device cuda --dtype bf16

A batch of ``--batch-size`` (8) random images and prompts goes through three stages, each timed
with explicit wall-clock timers (``torch.cuda.synchronize`` around each on CUDA):

- **vision trunk**: ``model.vision_model(pixel_values).last_hidden_state``, the post-LayerNorm
  tokens `InstructBlipHead` reads (what `omniclip.blip_trunk.BlipVisionTrunk` produces);
- **Q-Former + projection**: `InstructBlipHead.query_outputs` (query tokens + instruction
  cross-attending to the features, then ``language_projection``), timed inside the head's own
  ``generate`` call;
- **language model**: the rest of `InstructBlipHead.generate` (placeholder embeddings replaced
  by the projected queries, then the language model's greedy ``generate``), i.e. the head's
  ``generate`` time minus its Q-Former time.

Exactly ``--new-tokens`` tokens are generated per prompt (``min_new_tokens`` = ``max_new_tokens``,
so a random model's early end-of-sequence cannot shorten the run). Figures are the median over
``--repeats`` timed runs after one warm-up run; shares are of the total (sum of the three
stages) measured in the same run; tokens/s is ``batch x new tokens`` over the language-model time
(generation) and over the total (end to end).

The weights are random (nothing is downloaded), and neither size is the real model:

- ``--tiny``: the tests' tiny config (`tiny_config`: vision 32
  wide x 2 layers at 30 px / patch 2, Q-Former 32 x 2, a 2-layer OPT 16 wide, 10 queries);
- default "small": a ViT-B/14-shaped vision tower (768 x 12 layers, 224 px, patch 14: 257
  tokens), a 768 x 6 Q-Former with 32 queries, and an OPT-125m-shaped language model (768 x 12
  layers, vocabulary 50272); about 0.3B parameters, a CPU-sized stand-in. InstructBLIP-7B
  (ViT-g/14 1408 x 39, Q-Former 768 x 12, Vicuna-7B 4096 x 32) needs a GPU and the released
  weights; its shares differ (the language model dominates far more).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omniclip.heads import InstructBlipHead  # noqa: E402

STAGES = ("vision trunk", "Q-Former + projection", "language model")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def tiny_config(**overrides: Any) -> Any:
    """The tiny InstructBLIP of the tests too (tests/heads/): transformers' own test sizes, 10 query
    tokens, image token 98.

    A wide init (0.5, not 0.02): with transformers' default the tiny model's output ignores the
    image, and a head that dropped the features would still match.
    """
    from transformers import InstructBlipConfig

    init = 0.5
    vision = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
              "image_size": 30, "patch_size": 2, "initializer_range": init}
    qformer = {"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
               "intermediate_size": 37, "encoder_hidden_size": 32, "initializer_range": init}
    text = {"model_type": "opt", "vocab_size": 99, "hidden_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 4, "ffn_dim": 64, "max_position_embeddings": 512, "bos_token_id": 2,
            "eos_token_id": 2, "pad_token_id": 1, "word_embed_proj_dim": 16, "init_std": init}
    return InstructBlipConfig(vision_config=vision, qformer_config=qformer, text_config=text,
                              num_query_tokens=10, image_token_index=98, initializer_range=init, **overrides)


def small_config():
    """A CPU-sized InstructBLIP: ViT-B/14 vision, 768 x 6 Q-Former, OPT-125m-shaped language model."""
    from transformers import InstructBlipConfig

    vision = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
              "image_size": 224, "patch_size": 14}
    qformer = {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 6, "num_attention_heads": 12,
               "intermediate_size": 3072, "encoder_hidden_size": 768}
    vocab = 50272
    text = {"model_type": "opt", "vocab_size": vocab + 1, "hidden_size": 768, "num_hidden_layers": 12,
            "num_attention_heads": 12, "ffn_dim": 3072, "max_position_embeddings": 2048, "bos_token_id": 2,
            "eos_token_id": 2, "pad_token_id": 1, "word_embed_proj_dim": 768}
    return InstructBlipConfig(vision_config=vision, qformer_config=qformer, text_config=text,
                              num_query_tokens=32, image_token_index=vocab)


def build(tiny: bool, device: torch.device, dtype: torch.dtype):
    from transformers import InstructBlipForConditionalGeneration

    torch.manual_seed(0)
    model = InstructBlipForConditionalGeneration(tiny_config() if tiny else small_config()).eval()
    with torch.no_grad():
        model.query_tokens.normal_(std=0.5 if tiny else 0.02)  # initialised to zeros
    model.requires_grad_(False)
    return model.to(device=device, dtype=dtype)


def inputs(model, batch: int, prompt_length: int, instruction_length: int, device: torch.device):
    """Pixels, LM prompts ``<image>*Q <bos> text`` and Q-Former instructions, all random."""
    config = model.config
    generator = torch.Generator().manual_seed(1)
    size = config.vision_config.image_size
    pixels = torch.randn(batch, 3, size, size, generator=generator)
    queries = config.num_query_tokens
    image_token = int(config.image_token_id if hasattr(config, "image_token_id") else config.image_token_index)
    text_vocab = min(config.text_config.vocab_size, image_token)
    text = torch.randint(3, text_vocab, (batch, max(prompt_length - 1, 0)), generator=generator)
    input_ids = torch.cat([torch.full((batch, queries), image_token), torch.full((batch, 1), 2), text], dim=1)
    qformer_ids = torch.randint(3, config.qformer_config.vocab_size, (batch, instruction_length), generator=generator)
    return pixels.to(device), input_ids.to(device), qformer_ids.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_once(model, head: InstructBlipHead, pixels, input_ids, qformer_ids, new_tokens: int,
             device: torch.device) -> dict[str, float]:
    """Seconds per stage for one batch (see the module docstring for what each stage covers)."""
    seconds: dict[str, float] = {}
    query_time = [0.0]
    query_outputs: Callable[..., torch.Tensor] = type(head).query_outputs.__get__(head)

    def timed_query_outputs(*args: Any, **kwargs: Any) -> torch.Tensor:
        _sync(device)
        start = time.perf_counter()
        out = query_outputs(*args, **kwargs)
        _sync(device)
        query_time[0] += time.perf_counter() - start
        return out

    with torch.no_grad():
        _sync(device)
        start = time.perf_counter()
        features = model.vision_model(pixel_values=pixels.to(model.dtype)).last_hidden_state
        _sync(device)
        seconds[STAGES[0]] = time.perf_counter() - start

        head.query_outputs = timed_query_outputs  # the head's own generate calls self.query_outputs
        try:
            _sync(device)
            start = time.perf_counter()
            out = head.generate(features, qformer_ids, input_ids, do_sample=False, num_beams=1,
                                max_new_tokens=new_tokens, min_new_tokens=new_tokens)
            _sync(device)
            total = time.perf_counter() - start
        finally:
            del head.query_outputs
    generated = out.shape[1] - (input_ids.shape[1] if not head.language_model.config.is_encoder_decoder else 1)
    if generated != new_tokens:
        raise RuntimeError(f"generated {generated} tokens per prompt, asked for {new_tokens}")
    seconds[STAGES[1]] = query_time[0]
    seconds[STAGES[2]] = total - query_time[0]
    return seconds


def table(seconds: dict[str, float], tokens: int) -> str:
    total = sum(seconds.values())
    lines = [f"{'stage':24s} {'seconds':>9s} {'share':>7s}"]
    for stage in STAGES:
        lines.append(f"{stage:24s} {seconds[stage]:9.4f} {seconds[stage] / total:7.3f}")
    lines.append(f"{'total':24s} {total:9.4f} {1.0:7.3f}")
    lines.append(f"generated tokens/s (language model): {tokens / seconds[STAGES[2]]:.1f}")
    lines.append(f"generated tokens/s (end to end):     {tokens / total:.1f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Random weights; the default size is not InstructBLIP-7B (see the "
                                            "module docstring).")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="weights and activations")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny config (seconds) instead of 'small'")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per prompt (exactly)")
    parser.add_argument("--prompt-length", type=int, default=16, help="text tokens after the image tokens")
    parser.add_argument("--instruction-length", type=int, default=16, help="Q-Former instruction tokens")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build(args.tiny, device, DTYPES[args.dtype])
    head = InstructBlipHead(model)
    pixels, input_ids, qformer_ids = inputs(model, args.batch_size, args.prompt_length, args.instruction_length,
                                            device)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"InstructBLIP {'tiny' if args.tiny else 'small'} (random weights, {params:.1f}M parameters; not the 7B "
          f"model), {device} {args.dtype}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"prompt {input_ids.shape[1]} tokens, {args.new_tokens} new tokens, median of {args.repeats} "
          f"after 1 warm-up")
    run_once(model, head, pixels, input_ids, qformer_ids, args.new_tokens, device)
    runs = [run_once(model, head, pixels, input_ids, qformer_ids, args.new_tokens, device)
            for _ in range(max(args.repeats, 1))]
    # the median run by total, so the shares stay those of one run
    runs.sort(key=lambda run: sum(run.values()))
    print()
    print(table(runs[len(runs) // 2], args.batch_size * args.new_tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main())
