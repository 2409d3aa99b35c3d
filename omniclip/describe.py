"""``omniclip-describe``: ask an InstructBLIP model a question about point clouds or sounds.

    omniclip-describe chair.ply table.npy --question "What is this?" \\
        --lens runs/pc_instructblip/lens --instructblip /models/instructblip-flan-t5-xl
    omniclip-describe clouds/ --list more.txt --lens LENS --instructblip DIR --output answers.jsonl

A lens trained on InstructBLIP's vision tower (its ``config.json`` names the backbone
``instructblip:<...>``) turns each file into tokens for that tower; the tower's post-LayerNorm
features go to the model's Q-Former and language model (`omniclip.heads.InstructBlipHead`) with
the question in the prompt InstructBLIP's processor builds. The lens's modality decides how a
file is read (its own readers, so a bad file gives its `SampleError`). Every answer is one JSON
line ``{"file", "question", "answer"}`` on stdout or in ``--output``, written batch by batch.

Errors print one line, ``omniclip-describe: error: ...``, and exit 2 (``--debug`` shows the
traceback): a lens trained on another tower, a model that is missing (offline: at once), an
unreadable file, a video file (not described yet: that needs the video model).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TextIO

import numpy as np
import torch

from omniclip.blip_backbone import PREFIX, InstructBlipBackbone, is_instructblip
from omniclip.cli import EXIT_ERROR, one_line_error, quiet_dependencies
from omniclip.errors import OmniclipError, SampleError
from omniclip.heads.instructblip import InstructBlipHead
from omniclip.modality import get_modality
from omniclip.model import LensModel, load_lens_model

PROG = "omniclip-describe"
#: Points per cloud unless --num-points says otherwise (Point-BERT's 8192, `CloudOptions`' default).
DEFAULT_NUM_POINTS = 8192
#: Seed of the point sampling of each file, so an answer depends on neither batch nor order.
CLOUD_SEED = 0


class DescribeError(OmniclipError, ValueError):
    """A command-line input of omniclip-describe is wrong (no config key to name: the message
    names the argument)."""


# ------------------------------------------------------------------------------------ file readers
@dataclass(frozen=True)
class Reader:
    """How files of a modality become one model input each: ``read(path) -> tensor``."""

    suffixes: tuple[str, ...]
    read: Callable[[Path], torch.Tensor]


def pointcloud_reader(tokenizer_cfg: Mapping[str, Any], num_points: int | None) -> Reader:
    """Clouds as the evaluation datasets make them (`CloudOptions.finish`): ``num_points`` by
    farthest-point sampling, centred and scaled to the unit sphere; xyz+rgb for a tokenizer
    reading 6 channels (the bigG PointNet++ one)."""
    from omniclip.modalities.pointcloud.datasets import CloudOptions, read_cloud
    from omniclip.modalities.pointcloud.io import SUFFIXES
    from omniclip.modalities.pointcloud.lens_configs import TOKENIZERS

    params = {**TOKENIZERS.get(tokenizer_cfg.get("name", "pointbert"), {}), **tokenizer_cfg}
    opts = CloudOptions(num_points=num_points, sampling="fps", with_color=int(params.get("in_channels", 3)) >= 6,
                        min_points=int(params.get("group_size", CloudOptions.min_points)))

    def read(path: Path) -> torch.Tensor:
        with _numpy_seed(CLOUD_SEED):
            return opts.finish(read_cloud(path, opts), str(path), train=False)

    return Reader(SUFFIXES, read)


def audio_reader(tokenizer_cfg: Mapping[str, Any]) -> Reader:
    """The first clip of each file at the tokenizer's rate, as the evaluation datasets cut it
    (`load_clips` with `ClipOptions`' defaults: 5 s, shorter files repeated)."""
    from omniclip.modalities.audio.datasets import AUDIO_SUFFIXES, ClipOptions
    from omniclip.modalities.audio.io import load_clips

    opts = ClipOptions(sample_rate=int(tokenizer_cfg.get("sample_rate", ClipOptions.sample_rate)))

    def read(path: Path) -> torch.Tensor:
        clips, _ = load_clips(path, opts.sample_rate, opts.clip_seconds, 1, train=False, pad=opts.pad,
                              max_decode_seconds=opts.max_decode_seconds, allow_silent=opts.allow_silent,
                              silence_threshold=opts.silence_threshold, max_amplitude=opts.max_amplitude)
        return clips[0]

    return Reader(AUDIO_SUFFIXES, read)


def modality_reader(modality: str, tokenizer_cfg: Mapping[str, Any], num_points: int | None) -> Reader:
    if modality == "pointcloud":
        return pointcloud_reader(tokenizer_cfg, num_points)
    if modality == "audio":
        return audio_reader(tokenizer_cfg)
    if modality == "video":
        raise DescribeError("--lens: a video lens; describing videos is not supported yet (it needs the video "
                            "model's frame path and a per-frame Q-Former)")
    raise DescribeError(f"--lens: a `{modality}` lens; omniclip-describe reads point clouds and audio only")


@contextlib.contextmanager
def _numpy_seed(seed: int) -> Iterator[None]:
    """The point-cloud readers draw from NumPy's global generator: seed it, then put it back."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


# ------------------------------------------------------------------------------------------ inputs
def collect_files(items: Sequence[str], lists: Sequence[str], reader: Reader, modality: str) -> list[Path]:
    """Files named on the command line, every readable file under a named folder (sorted,
    recursively), and the lines of each ``--list`` file (relative to that file's folder;
    blank lines and ``#`` comments skipped). A video file is refused before any model loads."""
    video_suffixes = tuple(get_modality("video").file_suffixes)

    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in reader.suffixes)
            if not found:
                raise DescribeError(f"{path}: no {modality} files in this folder (suffixes "
                                    f"{', '.join(reader.suffixes)})")
            files += found
        else:
            files.append(path)
    for listing in lists:
        list_path = Path(listing)
        if not list_path.is_file():
            raise DescribeError(f"--list {list_path}: no such file")
        lines = [line.strip() for line in list_path.read_text().splitlines()]
        files += [list_path.parent / line for line in lines if line and not line.startswith("#")]
    if not files:
        raise DescribeError("no files to describe: name files or folders, or pass --list")
    for path in files:
        suffix = path.suffix.lower()
        if suffix in video_suffixes and suffix not in reader.suffixes:
            raise SampleError(path, f"a video file: omniclip-describe does not describe videos yet (that needs "
                                    f"the video model); this {modality} lens reads {', '.join(reader.suffixes)}")
    return files


# --------------------------------------------------------------------------------------- describing
@dataclass
class Describer:
    """A lens on an InstructBLIP vision tower and the model's head: files -> answers."""

    backbone: InstructBlipBackbone
    lens_model: LensModel
    reader: Reader
    head: InstructBlipHead = field(init=False)

    def __post_init__(self) -> None:
        self.head = self.backbone.head()

    @torch.no_grad()
    def features(self, files: Sequence[Path]) -> torch.Tensor:
        """Post-LayerNorm tower features [B, 1+L, W] of ``files`` (what the Q-Former reads)."""
        inputs = torch.stack([self.reader.read(path) for path in files]).to(self.backbone.device)
        return self.lens_model.trunk.normed_tokens(self.lens_model.forward_features(inputs))

    def answer(self, features: torch.Tensor, question: str, **generate_kwargs: Any) -> list[str]:
        """Greedy (or beam, ``num_beams``) answers to ``question``, one per row of ``features``."""
        prompt = self.backbone.prompt(question, features.shape[0])
        generated = self.head.generate(features, **prompt, do_sample=False, **generate_kwargs)
        return self.backbone.answers(generated, prompt["input_ids"].shape[1])


def load_describer(lens: str | Path, instructblip: str, device: str | torch.device = "cpu",
                   reader: Reader | None = None) -> Describer:
    """The lens at ``lens`` on the InstructBLIP model ``instructblip`` (a folder or a hub id,
    with or without the ``instructblip:`` prefix); ``reader`` defaults to the lens's modality's."""
    from omniclip.backbone import load_backbone

    model_cfg = read_lens_config(lens)
    if reader is None:
        reader = modality_reader(model_cfg["modality"], model_cfg.get("tokenizer") or {}, DEFAULT_NUM_POINTS)
    name = instructblip if is_instructblip(instructblip) else PREFIX + instructblip
    backbone = load_backbone(name, device=device)
    trained_on = (model_cfg.get("backbone") or {}).get("name", "")
    if not is_instructblip(trained_on):
        # Same widths would load and answer nonsense: a CLIP tower's features are not the EVA tower's.
        width = backbone.model.config.vision_config.hidden_size
        raise DescribeError(f"the lens {lens} was trained on the {model_cfg['lens'].get('latent_dim', '?')}-wide "
                            f"vision tower of {trained_on or 'an unrecorded backbone'}, not on an InstructBLIP one: "
                            f"{name}'s Q-Former reads its own {width}-wide tower; use a lens trained on that tower "
                            "(backbone instructblip:...)")
    lens_model, _, _ = load_lens_model(lens, backbone=backbone, device=device)
    return Describer(backbone, lens_model, reader)


def read_lens_config(lens: str | Path) -> dict[str, Any]:
    config_file = Path(lens) / "config.json"
    if not config_file.is_file():
        problem = "does not exist" if not Path(lens).exists() else "has no config.json"
        raise DescribeError(f"--lens {lens} {problem} (expected a lens export such as runs/<run>/lens)")
    config = json.loads(config_file.read_text())
    return config.get("model", config)


def describe_files(describer: Describer, files: Sequence[Path], question: str, out: TextIO,
                   batch_size: int = 8, **generate_kwargs: Any) -> int:
    """Write one JSON line per file to ``out``, batch by batch (flushed, so a stopped run keeps
    what it answered). Returns the number of files described."""
    for start in range(0, len(files), batch_size):
        batch = list(files[start:start + batch_size])
        answers = describer.answer(describer.features(batch), question, **generate_kwargs)
        for path, answer in zip(batch, answers):
            out.write(json.dumps({"file": str(path), "question": question, "answer": answer}) + "\n")
        out.flush()
    return len(files)


# ------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Ask an InstructBLIP model a question about point-cloud or audio files, through a lens "
                    "trained on its vision tower. One JSON line per file: {\"file\", \"question\", \"answer\"}. "
                    "Video files are not supported yet.",
    )
    parser.add_argument("files", nargs="*", metavar="FILE",
                        help="files, or folders (every file the lens's modality reads, recursively); with an "
                             "audio lens a video container's soundtrack is read")
    parser.add_argument("--list", action="append", default=[], metavar="PATH", dest="lists",
                        help="a text file of paths, one a line, relative to its folder (repeatable)")
    parser.add_argument("--question", required=True, help='the question, e.g. "What is this?"')
    parser.add_argument("--lens", required=True, metavar="PATH",
                        help="a lens trained on the InstructBLIP vision tower (lens.safetensors + config.json)")
    parser.add_argument("--instructblip", required=True, metavar="NAME_OR_DIR",
                        help="the InstructBLIP model: a save_pretrained folder (model + processor) or a hub id "
                             "in the Hugging Face cache (offline, a missing one fails at once)")
    parser.add_argument("--max-new-tokens", type=_positive, default=30, metavar="N",
                        help="longest answer in tokens (default 30)")
    parser.add_argument("--num-beams", type=_positive, default=1, metavar="K",
                        help="beam search width; 1 is greedy (default 1)")
    parser.add_argument("--batch-size", type=_positive, default=8, metavar="B", help="files per batch (default 8)")
    parser.add_argument("--num-points", type=_positive, default=DEFAULT_NUM_POINTS, metavar="N",
                        help="points per cloud, by farthest-point sampling (default 8192, Point-BERT's)")
    parser.add_argument("--output", metavar="PATH", help="write the JSON lines here instead of stdout")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser.add_argument("--verbose", action="store_true",
                        help="also show dependencies' log lines (transformers)")
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _quiet(verbose: bool) -> None:
    """Dependencies' log lines hidden unless ``verbose`` (`omniclip.cli`; tests replace it)."""
    quiet_dependencies(verbose)


def main(argv: Sequence[str] | None = None) -> int:
    """``omniclip-describe``. Exit status: 0 done, 2 a bad argument, model, lens or file."""
    args = build_parser().parse_args(argv)
    _quiet(args.verbose)
    try:
        run(args)
        return 0
    except (OmniclipError, FileNotFoundError) as exc:  # a model folder or lens file that is not there
        report = traceback.format_exc().rstrip("\n") if args.debug else _one_line(exc)
    print(report, file=sys.stderr)
    raise SystemExit(EXIT_ERROR)


def _one_line(exc: Exception) -> str:
    # omniclip.cli's hint for a bad sample names the recipes' bad_samples key, which this
    # command does not have: a bad file is reported as it is.
    if isinstance(exc, SampleError):
        return f"{PROG}: error: {' '.join(str(exc).split())}"
    return one_line_error(PROG, exc)


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DescribeError(f"--device {args.device}: no CUDA device is available here (use --device cpu)")
    model_cfg = read_lens_config(args.lens)
    # The files first: a typo or a video fails before any weights load.
    reader = modality_reader(model_cfg["modality"], model_cfg.get("tokenizer") or {}, args.num_points)
    files = collect_files(args.files, args.lists, reader, model_cfg["modality"])
    describer = load_describer(args.lens, args.instructblip, device, reader)
    generate = {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams}
    with contextlib.ExitStack() as stack:
        out = sys.stdout
        if args.output:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            out = stack.enter_context(open(args.output, "w"))
        return describe_files(describer, files, args.question, out, args.batch_size, **generate)


if __name__ == "__main__":
    sys.exit(main())
