"""``omniclip-describe``: ask an InstructBLIP model a question about point clouds, sounds or videos.

    omniclip-describe chair.ply table.npy --question "What is this?" \\
        --lens runs/pc_instructblip/lens --instructblip /models/instructblip-flan-t5-xl
    omniclip-describe clouds/ --list more.txt --lens LENS --instructblip DIR --output answers.jsonl
    omniclip-describe clip.mp4 --question "What happens?" --instructblip /models/instructblip-video-vicuna-7b

A lens trained on InstructBLIP's vision tower (its ``config.json`` names the backbone
``instructblip:<...>``) turns each file into tokens for that tower; the tower's post-LayerNorm
features go to the model's Q-Former and language model (`omniclip.heads.InstructBlipHead`) with
the question in the prompt InstructBLIP's processor builds. The lens's modality decides how a
file is read (its own readers, so a bad file gives its `SampleError`). Every answer is one JSON
line ``{"file", "question", "answer"}`` on stdout or in ``--output``, written batch by batch.

Videos need no lens: ``--instructblip`` names an InstructBlipVideo checkpoint, whose own vision
tower reads T uniformly sampled frames (T: ``--num-frames``, else the checkpoint's, else 4 as
InstructBLIP-video uses) preprocessed by its own video processor; the Q-Former reads each frame
and the frames' query outputs are concatenated, as ``InstructBlipVideoForConditionalGeneration``
does (`VideoDescriber`, token-exact with its ``generate``). Such a checkpoint holds InstructBLIP's
whole model, so a lens trained on InstructBLIP's tower reads through it too: one list may mix
clouds (or sounds) and videos, and each file goes its own way. A file whose suffix the lens's
modality reads goes to the lens (an audio lens reads a video container's soundtrack).

Errors print one line, ``omniclip-describe: error: ...``, and exit 2 (``--debug`` shows the
traceback): a lens trained on another tower, a model that is missing (offline: at once), an
unreadable file, a video with an image-only InstructBLIP checkpoint, a ``--lens`` with nothing
but videos (they do not use it), a cloud or sound without ``--lens``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence, TextIO

import numpy as np
import torch
from torch import nn

from omniclip.blip_backbone import PREFIX, InstructBlipBackbone, image_token_text, is_instructblip
from omniclip.cli import EXIT_ERROR, one_line_error, quiet_dependencies
from omniclip.errors import OmniclipError, SampleError
from omniclip.heads.instructblip import InstructBlipHead
from omniclip.model import LensModel, load_lens_model

PROG = "omniclip-describe"
#: Points per cloud unless --num-points says otherwise (Point-BERT's 8192, `CloudOptions`' default).
DEFAULT_NUM_POINTS = 8192
#: Seed of the point sampling of each file, so an answer depends on neither batch nor order.
CLOUD_SEED = 0
#: Frames per video when neither --num-frames nor the checkpoint says: InstructBLIP-video's 4
#: (its processor always puts 4 x num_query_tokens video tokens in a prompt).
DEFAULT_NUM_FRAMES = 4
VIDEO_MODEL_TYPE = "instructblipvideo"


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
        raise DescribeError("--lens: a video lens; videos need no lens here (an InstructBlipVideo checkpoint's "
                            "own vision tower reads their frames): drop --lens")
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
def video_suffixes() -> tuple[str, ...]:
    from omniclip.modality import get_modality

    return tuple(get_modality("video").file_suffixes)


def is_video_file(path: Path, reader: Reader | None) -> bool:
    """Whether ``path`` goes to the video model rather than through the lens: a video suffix the
    lens's modality does not read (an audio lens reads a container's soundtrack). Every other
    file goes to the lens, whose reader reports a file it cannot read."""
    suffix = path.suffix.lower()
    return suffix in video_suffixes() and (reader is None or suffix not in reader.suffixes)


def collect_files(items: Sequence[str], lists: Sequence[str], reader: Reader | None, modality: str | None) -> list[Path]:
    """Files named on the command line, every readable file under a named folder (sorted,
    recursively: the lens's modality's files and videos), and the lines of each ``--list`` file
    (relative to that file's folder; blank lines and ``#`` comments skipped).

    Checked before any model loads, so a wrong command fails at once: a file that is neither a
    video nor the lens's needs ``--lens``, and a ``--lens`` given with videos alone would be unused.
    """
    videos = video_suffixes()
    readable = tuple(dict.fromkeys((*(reader.suffixes if reader else ()), *videos)))

    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in readable)
            if not found:
                what = f"{modality} or video" if reader else "video"
                raise DescribeError(f"{path}: no {what} files in this folder (suffixes {', '.join(readable)})")
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
    if reader is None:
        for path in files:
            if not is_video_file(path, None):
                raise DescribeError(f"{path}: not a video ({', '.join(videos)}); point clouds and sounds are read "
                                    "through a lens trained on InstructBLIP's vision tower: pass --lens")
    elif all(is_video_file(path, reader) for path in files):
        raise DescribeError("--lens: every file is a video, and videos need no lens (the InstructBlipVideo "
                            "checkpoint's own vision tower reads their frames); drop --lens")
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
        prompt = build_prompt(self.backbone.processor, self.head.num_query_tokens, question, features.shape[0],
                              self.backbone.device)
        generated = self.head.generate(features, **prompt, do_sample=False, **generate_kwargs)
        return self.backbone.answers(generated, prompt["input_ids"].shape[1])


class Answerer(Protocol):
    """Files -> features -> answers (`Describer` through a lens, `VideoDescriber` from frames)."""

    def features(self, files: Sequence[Path]) -> torch.Tensor: ...

    def answer(self, features: torch.Tensor, question: str, **generate_kwargs: Any) -> list[str]: ...


def placeholder_text(processor: Any) -> str:
    """The token the processor puts where the query outputs go: the video processor's video
    token, else the image token."""
    token = getattr(processor, "video_token", None)
    return str(getattr(token, "content", token)) if token is not None else image_token_text(processor)


def build_prompt(processor: Any, placeholders: int, question: str, batch: int,
                 device: torch.device) -> dict[str, torch.Tensor]:
    """The head's inputs for ``question``, ``batch`` times, as InstructBLIP's processors build
    them: ``placeholders`` image (or video) tokens, not padded and without BOS, before the
    tokenized question for the language model; the question alone for the Q-Former.

    The processors add those tokens only when given pixels (a lens has none), and the video
    processor always adds ``4 x num_query_tokens`` of them whatever the frame count, so their
    text path is followed here with their own tokenizers and token; for 4 frames it is theirs.
    """
    tokens = processor.tokenizer(placeholder_text(processor) * placeholders, add_special_tokens=False,
                                 return_tensors="pt")
    text = processor.tokenizer([question], return_tensors="pt")
    qformer = processor.qformer_tokenizer([question], return_tensors="pt")
    inputs = {"input_ids": torch.cat([tokens["input_ids"], text["input_ids"]], dim=1),
              "attention_mask": torch.cat([tokens["attention_mask"], text["attention_mask"]], dim=1),
              "qformer_input_ids": qformer["input_ids"], "qformer_attention_mask": qformer["attention_mask"]}
    # One question for every file: the rows are equal, so no padding side can change an answer.
    return {k: v.expand(batch, -1).to(device) for k, v in inputs.items()}


@dataclass
class VideoDescriber:
    """An InstructBlipVideo model and processor: video files -> answers, no lens.

    Each video gives ``num_frames`` uniformly sampled frames (first and last included), the
    checkpoint's video processor makes them pixels, its vision tower features; the head runs
    the Q-Former per frame and concatenates the query outputs (``frames=num_frames``).
    """

    model: nn.Module
    processor: Any
    name: str
    num_frames: int = DEFAULT_NUM_FRAMES
    head: InstructBlipHead = field(init=False)

    def __post_init__(self) -> None:
        self.head = InstructBlipHead(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def frames(self, path: Path) -> torch.Tensor:
        """``num_frames`` frames of ``path`` [T, 3, H, W] uint8 (short videos repeat their last);
        an unreadable file raises the video modality's `SampleError`, naming it."""
        from omniclip.modality import get_modality

        return get_modality("video").read_clip(path, self.num_frames)  # the core imports no video code

    @torch.no_grad()
    def features(self, files: Sequence[Path]) -> torch.Tensor:
        """Post-LayerNorm tower features [B*T, 1+L, W] of the files' frames, video by video."""
        videos = [self.frames(path) for path in files]
        pixels = self.processor.video_processor(videos, return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.device, next(self.model.vision_model.parameters()).dtype)
        return self.model.vision_model(pixel_values=pixels.flatten(0, 1)).last_hidden_state

    def answer(self, features: torch.Tensor, question: str, **generate_kwargs: Any) -> list[str]:
        """Greedy (or beam) answers to ``question``, one per ``num_frames`` rows of ``features``."""
        batch = features.shape[0] // self.num_frames
        prompt = build_prompt(self.processor, self.num_frames * self.head.num_query_tokens, question, batch,
                              self.device)
        generated = self.head.generate(features, **prompt, frames=self.num_frames, do_sample=False,
                                       **generate_kwargs)
        return self.backbone().answers(generated, prompt["input_ids"].shape[1])

    def backbone(self) -> InstructBlipBackbone:
        """The same model as a lens backbone: its vision tower, Q-Former and language model are
        InstructBLIP's, so a lens trained on InstructBLIP's tower reads through it as through
        an image checkpoint (one frame, the video token as the placeholder)."""
        return InstructBlipBackbone(self.model, self.processor, self.name)


def model_type(instructblip: str) -> str:
    """``model_type`` of the checkpoint ``instructblip`` names (resolving a hub id as loading
    does: offline, a missing one fails at once naming what to download)."""
    from omniclip.blip_backbone import read_config

    name = instructblip if is_instructblip(instructblip) else PREFIX + instructblip
    return str(read_config(name)[1].model_type)


def load_video_describer(instructblip: str, device: str | torch.device = "cpu",
                         num_frames: int | None = None) -> VideoDescriber:
    """The InstructBlipVideo checkpoint ``instructblip`` (a folder or a hub id, with or without
    the ``instructblip:`` prefix), frozen; ``num_frames`` defaults to the checkpoint's (config
    ``num_frames``, else its video processor's), else `DEFAULT_NUM_FRAMES`."""
    from transformers import InstructBlipVideoForConditionalGeneration, InstructBlipVideoProcessor

    from omniclip.blip_backbone import load_pretrained

    name = instructblip if is_instructblip(instructblip) else PREFIX + instructblip

    def wrong_type(model_type: str) -> Exception:
        return DescribeError(f"--instructblip {instructblip}: a `{model_type}` model; videos need an "
                             f"InstructBlipVideo checkpoint (model_type `{VIDEO_MODEL_TYPE}`)")

    model, processor = load_pretrained(name, InstructBlipVideoForConditionalGeneration, InstructBlipVideoProcessor,
                                       VIDEO_MODEL_TYPE, wrong_type, "video processor")
    token = processor.tokenizer.convert_tokens_to_ids(placeholder_text(processor))
    if token != model.config.video_token_id:
        raise DescribeError(f"--instructblip {instructblip}: the processor's video token `{placeholder_text(processor)}` "
                            f"is id {token} but the model's video_token_id is {model.config.video_token_id}")
    if num_frames is None:
        num_frames = (getattr(model.config, "num_frames", None)
                      or getattr(processor.video_processor, "num_frames", None) or DEFAULT_NUM_FRAMES)
    model = model.to(device).requires_grad_(False).eval()
    return VideoDescriber(model, processor, name, int(num_frames))


def load_describer(lens: str | Path, instructblip: str, device: str | torch.device = "cpu",
                   reader: Reader | None = None, backbone: InstructBlipBackbone | None = None) -> Describer:
    """The lens at ``lens`` on the InstructBLIP model ``instructblip`` (a folder or a hub id,
    with or without the ``instructblip:`` prefix); ``reader`` defaults to the lens's modality's;
    ``backbone`` reuses a loaded model (an InstructBlipVideo one's `VideoDescriber.backbone`)."""
    from omniclip.backbone import load_backbone

    model_cfg = read_lens_config(lens)
    if reader is None:
        reader = modality_reader(model_cfg["modality"], model_cfg.get("tokenizer") or {}, DEFAULT_NUM_POINTS)
    name = instructblip if is_instructblip(instructblip) else PREFIX + instructblip
    if backbone is None:
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


def describe_files(describer: Answerer | Callable[[Path], Answerer], files: Sequence[Path], question: str,
                   out: TextIO, batch_size: int = 8, **generate_kwargs: Any) -> int:
    """Write one JSON line per file to ``out``, in the files' order, batch by batch (flushed, so a
    stopped run keeps what it answered). ``describer`` is one `Answerer`, or a function giving
    each file's (a mixed list): a batch holds consecutive files of one answerer. Returns the
    number of files described."""
    route = describer if not hasattr(describer, "answer") else (lambda path: describer)
    batches: list[tuple[Answerer, list[Path]]] = []
    for path in files:
        answerer = route(path)
        if batches and batches[-1][0] is answerer and len(batches[-1][1]) < batch_size:
            batches[-1][1].append(path)
        else:
            batches.append((answerer, [path]))
    for answerer, batch in batches:
        answers = answerer.answer(answerer.features(batch), question, **generate_kwargs)
        for path, answer in zip(batch, answers):
            out.write(json.dumps({"file": str(path), "question": question, "answer": answer}) + "\n")
        out.flush()
    return len(files)


# ------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Ask an InstructBLIP model a question about point-cloud or audio files, through a lens "
                    "trained on its vision tower, or about video files, through an InstructBlipVideo checkpoint's "
                    "own tower (no lens). One JSON line per file: {\"file\", \"question\", \"answer\"}.",
    )
    parser.add_argument("files", nargs="*", metavar="FILE",
                        help="files, or folders (every video and every file the lens's modality reads, "
                             "recursively); with an audio lens a video container's soundtrack is read")
    parser.add_argument("--list", action="append", default=[], metavar="PATH", dest="lists",
                        help="a text file of paths, one a line, relative to its folder (repeatable)")
    parser.add_argument("--question", required=True, help='the question, e.g. "What is this?"')
    parser.add_argument("--lens", metavar="PATH",
                        help="a lens trained on the InstructBLIP vision tower (lens.safetensors + config.json), "
                             "for point clouds and sounds; videos need none")
    parser.add_argument("--instructblip", required=True, metavar="NAME_OR_DIR",
                        help="the InstructBLIP model: a save_pretrained folder (model + processor) or a hub id "
                             "in the Hugging Face cache (offline, a missing one fails at once); for videos an "
                             "InstructBlipVideo checkpoint, which also serves a lens")
    parser.add_argument("--max-new-tokens", type=_positive, default=30, metavar="N",
                        help="longest answer in tokens (default 30)")
    parser.add_argument("--num-beams", type=_positive, default=1, metavar="K",
                        help="beam search width; 1 is greedy (default 1)")
    parser.add_argument("--batch-size", type=_positive, default=8, metavar="B", help="files per batch (default 8)")
    parser.add_argument("--num-points", type=_positive, default=DEFAULT_NUM_POINTS, metavar="N",
                        help="points per cloud, by farthest-point sampling (default 8192, Point-BERT's)")
    parser.add_argument("--num-frames", type=_positive, default=None, metavar="T",
                        help="frames per video, sampled uniformly (default: the checkpoint's, else 4 as "
                             "InstructBLIP-video uses)")
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
    reader, modality = None, None
    if args.lens is not None:
        model_cfg = read_lens_config(args.lens)
        modality = model_cfg["modality"]
        reader = modality_reader(modality, model_cfg.get("tokenizer") or {}, args.num_points)
    # The files first: a typo or a missing --lens fails before any weights load.
    files = collect_files(args.files, args.lists, reader, modality)
    videos = any(is_video_file(path, reader) for path in files)
    video: VideoDescriber | None = None
    if videos:
        kind = model_type(args.instructblip)
        if kind != VIDEO_MODEL_TYPE:
            raise DescribeError(f"--instructblip {args.instructblip}: a `{kind}` model, and videos need an "
                                f"InstructBlipVideo checkpoint (model_type `{VIDEO_MODEL_TYPE}`, e.g. "
                                "Salesforce/instructblip-vicuna-7b's video conversion); it also serves a lens")
        video = load_video_describer(args.instructblip, device, args.num_frames)
    lensed: Describer | None = None
    if args.lens is not None:
        lensed = load_describer(args.lens, args.instructblip, device, reader,
                                backbone=video.backbone() if video is not None else None)
    generate = {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams}
    with contextlib.ExitStack() as stack:
        out = sys.stdout
        if args.output:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            out = stack.enter_context(open(args.output, "w"))
        return describe_files(lambda path: video if is_video_file(path, reader) else lensed, files, args.question,
                              out, args.batch_size, **generate)


if __name__ == "__main__":
    sys.exit(main())
