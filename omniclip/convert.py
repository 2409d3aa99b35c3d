"""Import published checkpoints (ViT-Lens, ViFi-CLIP, ILA, ...) into omniclip modules, strictly.

Reference loaders use ``load_state_dict(strict=False)``, which silently leaves weights at their
initialisation when a key is misspelt (ViT-Lens issue #6). Here a checkpoint is read, unwrapped
from its training dict, renamed by a `KeyMap` (data, not code) and loaded only if every module
tensor is matched by exactly one checkpoint tensor of the same shape; otherwise one
`CheckpointMismatchError` lists every problem.

A `Converter` bundles a key map with a function building the target module. Converters register
under ``registry`` kind ``"converter"`` with names ``"<modality>.<variant>"`` (for example
``"pointcloud.vitlens-l"``) so that looking one up imports ``omniclip.modalities.<modality>``.
``omniclip-convert`` (`main`) runs one and writes ``lens.safetensors`` + ``config.json``.

An `ExportConverter` is the other kind: a published *whole model* (ViFi-CLIP, ILA) imported by its
own strict loader and written as the modality's export (``weights.safetensors`` + ``config.json``,
what ``Modality.load_export`` rebuilds), so evaluating it later needs neither pickle nor the
published format. Both kinds register, list and run the same way.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import os
import pickle
import re
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import open_clip
import torch
from torch import Tensor, nn

from omniclip import registry
from omniclip.cli import quiet_dependencies
from omniclip.errors import CheckpointMismatchError, ConfigError, OmniclipError

if TYPE_CHECKING:
    from omniclip.modality import TrunkSpec

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"

#: Wrapper keys descended into, in this order, until none is present: open_clip / ViT-Lens
#: (``state_dict``), the PyTorch tutorial layout (``model_state_dict``), DeiT / MAE / timm
#: (``model``), DeepSpeed (``module``). EMA copies (``ema``, ``model_ema``, ``state_dict_ema``)
#: are never descended into: which weights to import must be an explicit choice.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")
_EMA_KEYS = ("ema", "model_ema", "state_dict_ema", "ema_state_dict")
_DDP_PREFIX = "module."


class CheckpointFileError(OmniclipError, ValueError):
    """A checkpoint file cannot be read (unsupported, corrupt, or unsafe to unpickle)."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class UntrustedPickleError(CheckpointFileError, pickle.UnpicklingError):
    """``torch.load(weights_only=True)`` refused the file; it loads only with ``trust_pickle``."""


# --------------------------------------------------------------------------------------------
# Reading files


def _weights_only_reason(exc: Exception) -> str:
    """Short reason out of torch's long weights-only refusal message."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"it contains a pickled `{found.group(1)}` object"
    found = re.search(r"Unsupported operand (\d+)", text)
    if found:
        return f"it uses pickle instruction {found.group(1)}, which the safe loader does not run"
    return text.splitlines()[0] if text else type(exc).__name__


def load_checkpoint_file(path: str | Path, trust_pickle: bool = False) -> dict:
    """Read a checkpoint file into a dict on the CPU.

    ``.safetensors`` is read with safetensors; ``.pt/.pth/.bin/.ckpt`` with
    ``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers. Training
    dicts that pickle other objects (``argparse.Namespace`` args, a whole ``nn.Module``) need
    ``trust_pickle=True``, which unpickles arbitrary objects and so can run arbitrary code.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as exc:
            raise CheckpointFileError(path, f"not a readable safetensors file: {exc}") from exc
    if suffix not in PICKLE_SUFFIXES:
        supported = ", ".join((SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES))
        raise CheckpointFileError(path, f"unsupported suffix `{suffix}` (supported: {supported})")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        if trust_pickle:
            raise CheckpointFileError(path, f"cannot unpickle it: {exc}") from exc
        raise UntrustedPickleError(
            path,
            f"the safe loader (torch.load with weights_only=True) refused it: "
            f"{_weights_only_reason(exc)}. If you trust this file, load it with "
            f"trust_pickle=True (`--trust-pickle` on the command line); unpickling can run "
            f"arbitrary code, so never do that for a file from a source you do not trust",
        ) from exc
    except Exception as exc:  # corrupt zip, truncated file, class missing from this install, ...
        raise CheckpointFileError(
            path, f"cannot read it as a PyTorch checkpoint: {type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(obj, nn.Module):  # torch.save(model): only possible with trust_pickle
        return dict(obj.state_dict())
    if not isinstance(obj, Mapping):
        raise CheckpointFileError(path, f"holds a {type(obj).__name__}, not a dict of tensors")
    return dict(obj)


def read_state_dict(checkpoint: str | Path | Mapping[str, Any], trust_pickle: bool = False) -> tuple[str, dict[str, Tensor]]:
    """(source name for messages, flat state dict) of a checkpoint file (`load_checkpoint_file`)
    or an already loaded mapping, unwrapped the same way (`unwrap_state_dict`)."""
    if isinstance(checkpoint, (str, Path)):
        source = str(checkpoint)
        raw = load_checkpoint_file(checkpoint, trust_pickle=trust_pickle)
    else:
        source, raw = "checkpoint", dict(checkpoint)
    return source, unwrap_state_dict(raw, source)


def unwrap_state_dict(obj: Mapping, source: str = "checkpoint") -> dict[str, Tensor]:
    """The tensors of a training checkpoint, keyed as the model named them.

    Descends through `WRAPPER_KEYS` (first present wins, repeatedly), so sibling entries such as
    ``epoch`` or ``optimizer`` are left behind; drops the remaining non-tensor values; strips the
    DDP prefix ``module.`` once when *every* key has it (a partial prefix is a real name and left
    for the key map). ``source`` names the checkpoint in errors.
    """
    level = obj
    while True:
        inner = next(
            (level[k] for k in WRAPPER_KEYS if isinstance(level.get(k), (Mapping, nn.Module))),
            None,
        )
        if inner is None:
            break
        level = inner.state_dict() if isinstance(inner, nn.Module) else inner
    tensors = {k: v for k, v in level.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if not tensors:
        hint = ""
        ema = [k for k in _EMA_KEYS if k in obj]
        if ema:
            hint = (
                f"; EMA weights under {ema} are never taken implicitly: pass "
                f"unwrap_state_dict(checkpoint[{ema[0]!r}]) to import them"
            )
        raise CheckpointMismatchError(
            f"{source}: no tensors found at the top level or under any of {list(WRAPPER_KEYS)} "
            f"(top-level keys: {sorted(map(str, obj))}){hint}"
        )
    if all(k.startswith(_DDP_PREFIX) for k in tensors):
        tensors = {k[len(_DDP_PREFIX) :]: v for k, v in tensors.items()}
    return tensors


# --------------------------------------------------------------------------------------------
# Key mapping


@dataclass(frozen=True)
class KeyMap:
    """Renaming rules from a checkpoint's key names to a module's, as data.

    Every pattern is a regex matched at the *start* of a key (``re.match``); add ``$`` to match a
    whole key. ``ignore`` patterns are tried first: a key matching one is deliberately skipped.
    Then ``rules`` are tried in order and the first matching rule wins: the matched part of the
    key is replaced by the rule's replacement (``\\1`` group references allowed) and the rest of
    the key is kept. A rule whose replacement is ``None`` or ``""`` drops the key (e.g. the frozen
    CLIP towers when importing only a lens). A key that nothing matches is *unmatched*. To load
    keys unchanged, pass ``keymap=None`` rather than a key map.
    """

    rules: tuple[tuple[str, str | None], ...] = ()
    ignore: tuple[str, ...] = ()
    _compiled_rules: tuple[tuple[re.Pattern, str | None], ...] = field(
        init=False, repr=False, compare=False
    )
    _compiled_ignore: tuple[re.Pattern, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rules = tuple((pattern, repl) for pattern, repl in self.rules)
        ignore = tuple(self.ignore)
        object.__setattr__(self, "rules", rules)
        object.__setattr__(self, "ignore", ignore)
        object.__setattr__(
            self,
            "_compiled_rules",
            tuple((_compile(p, f"keymap rule {i}"), r) for i, (p, r) in enumerate(rules)),
        )
        object.__setattr__(
            self,
            "_compiled_ignore",
            tuple(_compile(p, f"keymap ignore {i}") for i, p in enumerate(ignore)),
        )

    def resolve(self, key: str) -> tuple[bool, str | None]:
        """``(matched, target)``: target is None when the key is ignored or dropped."""
        if any(p.match(key) for p in self._compiled_ignore):
            return True, None
        for index, (pattern, repl) in enumerate(self._compiled_rules):
            found = pattern.match(key)
            if found is None:
                continue
            if not repl:
                return True, None
            try:
                head = found.expand(repl)
            except (re.error, IndexError) as exc:
                raise ConfigError(
                    f"keymap rule {index}",
                    f"replacement {repl!r} does not fit pattern {pattern.pattern!r} "
                    f"on key `{key}`: {exc}",
                ) from exc
            return True, head + key[found.end() :]
        return False, None

    def apply(self, state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
        """Renamed tensors (ignored/dropped keys left out) and the source keys nothing matched.

        Two source keys renamed to the same target raise `CheckpointMismatchError`.
        """
        mapping = _map_keys(state_dict, self)
        if mapping.duplicates:
            lines = ["the key map sends several checkpoint keys to one name:"]
            raise CheckpointMismatchError("\n".join(lines + _duplicate_lines(mapping.duplicates)))
        mapped = {target: state_dict[src] for target, src in mapping.sources.items()}
        return mapped, mapping.unmatched


def _compile(pattern: str, where: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(where, f"invalid regex {pattern!r}: {exc}") from exc


@dataclass
class _Mapping:
    sources: dict[str, str]  # target key -> source key (first source for duplicates)
    duplicates: dict[str, list[str]]  # target key -> every source key sent there
    unmatched: list[str]
    ignored: int


def _map_keys(state_dict: Mapping[str, Tensor], keymap: KeyMap | None) -> _Mapping:
    sources: dict[str, str] = {}
    duplicates: dict[str, list[str]] = {}
    unmatched: list[str] = []
    ignored = 0
    for key in state_dict:
        matched, target = (True, key) if keymap is None else keymap.resolve(key)
        if not matched:
            unmatched.append(key)
        elif target is None:
            ignored += 1
        elif target in sources:
            duplicates.setdefault(target, [sources[target]]).append(key)
        else:
            sources[target] = key
    return _Mapping(sources, duplicates, unmatched, ignored)


def _duplicate_lines(duplicates: Mapping[str, list[str]]) -> list[str]:
    return [f"  {target} <- {', '.join(srcs)}" for target, srcs in duplicates.items()]


# --------------------------------------------------------------------------------------------
# Strict loading


@dataclass
class LoadReport:
    """What a strict load did. ``mapped`` lists the module keys that were filled, in order."""

    what: str
    target: str
    loaded: int
    ignored: int
    mapped: list[str]
    renamed: int = 0

    def __str__(self) -> str:
        return (
            f"loaded {self.loaded} tensors from {self.what} into {self.target} "
            f"({self.renamed} renamed by the key map, {self.ignored} checkpoint keys ignored)"
        )


def _shape(shape: torch.Size) -> str:
    return str(tuple(shape))


def load_state_dict_strict(
    module: nn.Module,
    state_dict: Mapping[str, Tensor],
    keymap: KeyMap | None = None,
    what: str = "checkpoint",
) -> LoadReport:
    """Load ``state_dict`` (renamed by ``keymap``) into ``module`` only if it matches exactly.

    Every module key must receive exactly one checkpoint tensor of its shape and every checkpoint
    key must be used or deliberately ignored; otherwise `CheckpointMismatchError` lists all
    missing keys (with the closest unexpected key as a hint), unexpected keys, shape mismatches
    and duplicate targets. Tensors are cast to the module's dtypes.
    """
    mapping = _map_keys(state_dict, keymap)
    expected = module.state_dict()

    def label(target: str) -> str:
        src = mapping.sources[target]
        return target if src == target else f"{src} -> {target}"

    missing = [k for k in expected if k not in mapping.sources]
    unexpected = {t: label(t) for t in mapping.sources if t not in expected}
    unexpected.update({k: f"{k} (no key-map rule matches)" for k in mapping.unmatched})
    mismatched = [
        (t, state_dict[mapping.sources[t]].shape, expected[t].shape)
        for t in mapping.sources
        if t in expected and state_dict[mapping.sources[t]].shape != expected[t].shape
    ]
    if missing or unexpected or mismatched or mapping.duplicates:
        counts = (
            f"{len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(mismatched)} shape mismatches, {len(mapping.duplicates)} duplicate targets"
        )
        lines = [f"{what} does not match {type(module).__name__}: {counts}"]
        if missing:
            lines.append(f"missing keys ({len(missing)}), in the module but not in {what}:")
            candidates = list(unexpected)
            for key in missing:
                close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.8)
                hint = f"  (closest unexpected: {unexpected[close[0]]})" if close else ""
                lines.append(f"  {key}{hint}")
        if unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}), in {what} but not in the module:")
            lines.extend(f"  {text}" for text in unexpected.values())
        if mismatched:
            lines.append(f"shape mismatches ({len(mismatched)}), {what} vs module:")
            lines.extend(
                f"  {label(t)}: {_shape(got)} vs {_shape(want)}" for t, got, want in mismatched
            )
        if mapping.duplicates:
            lines.append(
                f"duplicate targets ({len(mapping.duplicates)}), several {what} keys "
                f"mapped to one module key:"
            )
            lines.extend(_duplicate_lines(mapping.duplicates))
        raise CheckpointMismatchError("\n".join(lines))

    renamed = {
        key: state_dict[mapping.sources[key]].to(dtype=value.dtype)
        for key, value in expected.items()
    }
    module.load_state_dict(renamed, strict=True)
    return LoadReport(
        what=what,
        target=type(module).__name__,
        loaded=len(renamed),
        ignored=mapping.ignored,
        mapped=list(renamed),
        renamed=sum(src != t for t, src in mapping.sources.items()),
    )


# --------------------------------------------------------------------------------------------
# Converters


@dataclass
class Converter:
    """A published checkpoint layout and the omniclip module it imports into.

    ``build(config)`` returns the target module; ``config`` is ``default_config`` with the user's
    overrides applied (dotted keys reach into nested dicts; unknown keys are refused). For lens
    checkpoints, ``default_config`` is a lens-model config (``modality``, ``backbone``,
    ``tokenizer``, ``lens``, ``trunk``) and ``build`` returns a module whose state dict has the
    `LensModel.trainable_state_dict` keys, so the output loads with `load_lens_model`.
    """

    name: str
    description: str
    keymap: KeyMap
    build: Callable[[dict], nn.Module]
    default_config: dict = field(default_factory=dict)


#: Keys of an open_clip CLIP's text tower, which ViT-Lens models keep at the top level: frozen,
#: so converters of lens checkpoints ignore them.
OPEN_CLIP_TEXT_TOWER = (
    r"transformer\.",
    r"token_embedding\.",
    r"ln_final\.",
    r"(positional_embedding|text_projection|logit_scale)$",
)


def trunk_spec_of(backbone: str, trunk_cfg: Mapping[str, Any]) -> "TrunkSpec":
    """The `TrunkSpec` a trunk over open_clip model ``backbone`` would have, from its config alone."""
    import omniclip.backbone  # noqa: F401  (registers omniclip's own model configs)
    from omniclip.modality import TrunkSpec

    config = open_clip.get_model_config(backbone)
    if config is None:
        raise ConfigError("backbone.name", f"unknown open_clip model `{backbone}`")
    vision = config["vision_cfg"]
    grid = int(vision["image_size"]) // int(vision["patch_size"])
    return TrunkSpec(
        width=int(vision["width"]),
        patch_size=int(vision["patch_size"]),
        num_positions=grid * grid + 1,
        image_size=int(vision["image_size"]),
        num_blocks=int(vision["layers"]) - int(trunk_cfg.get("skip_blocks", 0)),
        embed_dim=int(config["embed_dim"]),
    )


class TrunkTrainedParts(nn.Module):
    """The trainable parameters of a `ViTTrunk` under the same names, without the frozen rest.

    Built from the open_clip config of ``backbone``: ``unlocked_blocks`` residual blocks, and the
    class token / positional embedding when unlocked. Lets a converter load and write the
    ``trunk.*`` keys without instantiating (or downloading) the whole CLIP.
    """

    def __init__(self, backbone: str, trunk_cfg: Mapping[str, Any]) -> None:
        super().__init__()
        spec = trunk_spec_of(backbone, trunk_cfg)
        vision = open_clip.get_model_config(backbone)["vision_cfg"]
        heads = spec.width // int(vision.get("head_width", 64))
        ratio = float(vision.get("mlp_ratio", 4.0))
        self.blocks = nn.ModuleList(
            open_clip.transformer.ResidualAttentionBlock(spec.width, heads, ratio)
            for _ in range(int(trunk_cfg.get("unlocked_blocks", 0)))
        )
        if trunk_cfg.get("unlock_class_token", False):
            self.class_embedding = nn.Parameter(torch.zeros(spec.width))
        if trunk_cfg.get("unlock_positional_embedding", False):
            self.positional_embedding = nn.Parameter(torch.zeros(spec.num_positions, spec.width))


class LensExport(nn.Module):
    """Container whose state dict has exactly the `LensModel.trainable_state_dict` keys."""

    def __init__(self, tokenizer: nn.Module, lens: nn.Module, trunk: nn.Module | None = None) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.lens = lens
        if trunk is not None and any(True for _ in trunk.parameters()):
            self.trunk = trunk


def build_lens_export(config: Mapping[str, Any]) -> LensExport:
    """The `LensExport` of a lens-model config (``modality``, ``tokenizer``, ``lens``, ``trunk``,
    ``backbone``): what a lens converter's ``build`` returns."""
    from omniclip.lens import build_lens
    from omniclip.modality import get_modality

    lens_cfg = dict(config["lens"])
    auto = sorted(k for k, v in lens_cfg.items() if v in ("auto", None))
    if auto:
        raise ConfigError(f"lens.{auto[0]}", "a converter needs explicit lens sizes, not `auto`")
    trunk_cfg = config.get("trunk", {})
    backbone = config["backbone"]["name"]
    spec = trunk_spec_of(backbone, trunk_cfg)
    tokenizer = get_modality(config["modality"]).build_tokenizer(config.get("tokenizer", {}), spec)
    return LensExport(tokenizer, build_lens(lens_cfg), TrunkTrainedParts(backbone, trunk_cfg))


@dataclass
class ExportConverter:
    """A published whole-model checkpoint and the modality export it becomes.

    ``export(src, config, trust_pickle, out_dir)`` reads ``src`` with the format's strict loader,
    builds the model the modality's ``load_export`` would rebuild, fills every tensor of it from
    the loaded model (or raises `CheckpointMismatchError`) and writes the export into
    ``out_dir``; it returns the `LoadReport` of the import. ``config`` is ``default_config``
    with the user's ``--set`` overrides (for example the base CLIP ``backbone``). ``outputs``
    names the files written, for the command's last line.
    """

    name: str
    description: str
    export: Callable[[Path, dict, bool, Path], LoadReport]
    default_config: dict = field(default_factory=dict)
    outputs: tuple[str, ...] = ("weights.safetensors", "config.json")


def register_converter(converter: Converter | ExportConverter) -> Converter | ExportConverter:
    """Register ``converter`` under its name (``"<modality>.<variant>"``)."""
    registry.register("converter", converter.name, converter)
    return converter


def get_converter(name: str) -> Converter | ExportConverter:
    """The converter ``name``, importing its modality package if needed."""
    return registry.get("converter", name)


def _apply_overrides(default: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict:
    config = copy.deepcopy(dict(default))
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = config
        for depth, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                known = ", ".join(sorted(node)) if isinstance(node, dict) else "none"
                where = ".".join(parts[:depth]) or "the converter config"
                raise ConfigError(dotted, f"no such key in {where} (known: {known})")
            if depth == len(parts) - 1:
                node[part] = value
            else:
                node = node[part]
    return config


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the same folder, then rename it over ``path``.

    A reader never sees a half-written file; the temporary name is unique per call so that
    concurrent conversions into one folder cannot clobber each other's partial output.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def convert(
    converter_name: str,
    src_path: str | Path,
    out_dir: str | Path,
    config_overrides: dict | None = None,
    trust_pickle: bool = False,
) -> LoadReport:
    """Import ``src_path`` with converter ``converter_name``; write it to ``out_dir``.

    Writes ``lens.safetensors`` (the module's full state dict) and ``config.json`` (the config
    plus ``converted_from: {converter, source}``), the lens-export layout that
    `omniclip.model.load_lens_model` reads, each atomically, only after a strict load succeeded.
    An `ExportConverter` writes its modality's export instead (see there).
    """
    from safetensors.torch import save_file

    converter = get_converter(converter_name)
    config = _apply_overrides(converter.default_config, config_overrides or {})
    if isinstance(converter, ExportConverter):
        return converter.export(Path(src_path), config, trust_pickle, Path(out_dir))
    record = {**config, "converted_from": {"converter": converter.name, "source": str(src_path)}}
    try:
        config_text = json.dumps(record, indent=2) + "\n"
    except TypeError as exc:
        raise ConfigError("config", f"not JSON-serialisable: {exc}") from exc

    state_dict = unwrap_state_dict(load_checkpoint_file(src_path, trust_pickle), str(src_path))
    module = converter.build(config)
    report = load_state_dict_strict(module, state_dict, converter.keymap, what=str(src_path))

    # Independent contiguous copies: safetensors refuses views and tensors sharing storage
    # (tied weights appear under several names in a state dict).
    tensors = {
        key: value.detach().cpu().clone(memory_format=torch.contiguous_format)
        for key, value in module.state_dict().items()
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", "converter": converter.name}
    _atomic_write(out / "lens.safetensors", lambda tmp: save_file(tensors, tmp, metadata))
    _atomic_write(out / "config.json", lambda tmp: Path(tmp).write_text(config_text))
    return report


# --------------------------------------------------------------------------------------------
# Command line


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are read as JSON when they parse (numbers, bools, lists)."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(item, "--set expects KEY=VALUE")
        try:
            overrides[key] = json.loads(text)
        except json.JSONDecodeError:
            overrides[key] = text
    return overrides


_USAGE = (
    "omniclip-convert list\n"
    "       omniclip-convert CONVERTER SRC OUT_DIR [--trust-pickle] [--set KEY=VALUE ...] [--verbose]"
)


def main(argv: Sequence[str] | None = None) -> int:
    """``omniclip-convert``. Exit status: 0 done, 1 checkpoint mismatch, 2 bad input."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    quiet_dependencies("--verbose" in args_list)
    if "--verbose" in args_list:
        args_list.remove("--verbose")
    if args_list == ["list"]:
        for problem in registry.import_plugins("converter"):
            print(f"note: {problem}", file=sys.stderr)
        names = registry.names("converter")
        if not names:
            print("no converters registered")
        width = max(map(len, names), default=0)
        for name in names:
            print(f"{name.ljust(width)}  {get_converter(name).description}")
        return 0

    parser = argparse.ArgumentParser(
        prog="omniclip-convert",
        usage=_USAGE,
        description="Import a published checkpoint into omniclip, loading every key strictly. "
        "`omniclip-convert list` shows the converters.",
    )
    parser.add_argument("converter", help='converter name, e.g. "pointcloud.vitlens-l"')
    parser.add_argument("src", help="checkpoint file (.safetensors, .pt, .pth, .bin, .ckpt)")
    parser.add_argument("out_dir", help="folder receiving the converted files (lens.safetensors and config.json; "
                                        "a whole-model converter: weights.safetensors and config.json)")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="unpickle arbitrary objects (can run code): only for files you trust",
    )
    parser.add_argument("--verbose", action="store_true",
                        help="also show dependencies' log lines (open_clip's model-building messages)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override a converter config entry (dotted keys for nested entries)",
    )
    args = parser.parse_args(args_list)
    try:
        report = convert(
            args.converter,
            args.src,
            args.out_dir,
            config_overrides=_parse_set(args.overrides),
            trust_pickle=args.trust_pickle,
        )
    except CheckpointMismatchError as exc:
        print(exc, file=sys.stderr)
        return 1
    except (OmniclipError, FileNotFoundError) as exc:
        print(f"omniclip-convert: {exc}", file=sys.stderr)
        return 2
    print(report)
    converter = get_converter(args.converter)
    outputs = converter.outputs if isinstance(converter, ExportConverter) else ("lens.safetensors", "config.json")
    print(f"wrote {Path(args.out_dir) / outputs[0]} and {', '.join(outputs[1:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
