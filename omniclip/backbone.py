"""Loading the CLIP model that every lens sits on.

`load_backbone` takes any open_clip architecture name and one of:

* ``None`` / ``""``: random weights (tests, the embedded demo's own pretraining);
* a local ``.safetensors`` / ``.pt`` / ``.pth`` / ``.bin`` file;
* a pretrained tag known to open_clip (``"datacomp_xl_s13b_b90k"``), taken from the Hugging Face
  cache when present;
* a model name ``local-dir:/path`` or ``hf-hub:org/repo`` (the name carries the weights).

A name ``instructblip:<folder or hub id>`` loads an InstructBLIP model instead
(`omniclip.blip_backbone`): its vision tower is the trunk, so lenses trained on it save and load
through the same config entry as lenses on a CLIP.

Offline, a download that cannot happen fails at once with a message saying which file to fetch
and how to point omniclip at it, instead of hanging on retries.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from omniclip.blip_backbone import InstructBlipBackbone, is_instructblip, load_instructblip
from omniclip.errors import ConfigError, WeightsUnavailableError
from omniclip.trunk import ViTTrunk

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
HF_HOST = "huggingface.co"


@dataclass
class ClipBackbone:
    """A loaded CLIP model with its text and image towers and preprocessing."""

    model: nn.Module
    name: str
    pretrained: str | None
    tokenizer: Callable[[list[str]], torch.Tensor]
    preprocess: Callable[[Any], torch.Tensor]
    _fingerprints: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def logit_scale(self) -> float:
        """CLIP's learned temperature, as the scale itself (exp of the stored log)."""
        return float(self.model.logit_scale.detach().exp())

    @property
    def visual(self) -> nn.Module:
        return self.model.visual

    @torch.no_grad()
    def encode_text(self, texts: list[str], normalize: bool = True) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        features = self.model.encode_text(tokens)
        return F.normalize(features, dim=-1) if normalize else features

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.model.encode_image(images.to(self.device))
        return F.normalize(features, dim=-1) if normalize else features

    def trunk(self, **options: Any) -> ViTTrunk:
        """A `ViTTrunk` over this model's image tower (options as in `ViTTrunk`)."""
        return ViTTrunk(self.model.visual, **options)

    def fingerprint(self, tower: str) -> str:
        """Hash of the architecture and every weight of ``tower`` ("text" or "image").

        Anchor caches are keyed by it, so cached features can never outlive the weights
        that produced them, whatever the weights' origin (tag, file, random init). It is
        computed once per tower and set of weight dtypes: frozen weights change only by being
        cast (``trainer.frozen_dtype``), and a sharded tower (fsdp2) keeps the key it had.
        """
        params = _tower_state(self.model, tower)
        # The weights' dtypes are part of the key: a tower cast in place (trainer.frozen_dtype)
        # computes other features, so its hash is recomputed and its anchors go elsewhere.
        dtypes = ",".join(sorted({str(t.dtype) for t in params.values()}))
        if (tower, dtypes) not in self._fingerprints:
            digest = hashlib.sha256(self.name.encode())
            for key in sorted(params):
                tensor = params[key].detach()
                digest.update(key.encode())
                digest.update(str(tuple(tensor.shape)).encode())
                if tensor.dtype != torch.float32:  # float32 towers keep the keys of caches written before
                    digest.update(str(tensor.dtype).encode())
                digest.update(tensor.to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._fingerprints[(tower, dtypes)] = digest.hexdigest()[:16]
        return self._fingerprints[(tower, dtypes)]


def _tower_state(model: nn.Module, tower: str) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    if tower == "image":
        return {k: v for k, v in state.items() if k.startswith("visual.")}
    if tower == "text":
        return {k: v for k, v in state.items() if not k.startswith("visual.")}
    raise ValueError(f"tower must be 'text' or 'image', not {tower!r}")


def load_backbone(
    name: str,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    cache_dir: str | None = None,
    freeze: bool = True,
    init_seed: int = 0,
) -> ClipBackbone | InstructBlipBackbone:
    """Build an open_clip model and its weights; see the module docstring for ``pretrained``.

    Random initialisation (``pretrained=None``) draws from a generator seeded with
    ``init_seed``, so a run with random weights is reproducible and can be resumed (the frozen
    trunk is the same in every process), and the anchor cache stays valid across runs.

    ``instructblip:`` names return an `InstructBlipBackbone` (no text tower: a lens for it is
    aligned to a CLIP's anchors); their name carries the weights, so ``pretrained`` must be unset.
    """
    if is_instructblip(name):
        if pretrained:
            raise ConfigError("backbone.pretrained", f"`{pretrained}`: an InstructBLIP backbone names its weights "
                              "itself (instructblip:<folder or hub id>); leave backbone.pretrained unset")
        return load_instructblip(name, device, precision, cache_dir, freeze)
    model_name, weights = _resolve(name, pretrained or None, cache_dir)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=weights, device=device, precision=precision, cache_dir=cache_dir
            )
    except RuntimeError as exc:
        if "Unknown model" in str(exc) or "Model config" in str(exc):
            raise ConfigError("backbone.name", f"unknown open_clip model `{name}`") from exc
        raise
    tokenizer = open_clip.get_tokenizer(model_name, cache_dir=cache_dir)
    if freeze:
        model.requires_grad_(False)
        model.eval()
    return ClipBackbone(model, name, pretrained or None, tokenizer, preprocess)


def _resolve(name: str, pretrained: str | None, cache_dir: str | None) -> tuple[str, str | None]:
    """Return (model name, weights argument for open_clip), failing fast when offline."""
    if name.startswith("hf-hub:"):
        repo = name[len("hf-hub:") :]
        if _cached_hf_file(repo, "open_clip_config.json", cache_dir) is None:
            _require_network(f"the model `{name}`", f"the repository https://{HF_HOST}/{repo}",
                             "then use `local-dir:<that folder>` as the backbone name")
        return name, None
    if name.startswith("local-dir:"):
        folder = Path(name[len("local-dir:") :]).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"backbone `{name}`: folder {folder} does not exist")
        return name, None
    if name not in open_clip.list_models():
        raise ConfigError("backbone.name", f"unknown open_clip model `{name}` (see open_clip.list_models())")
    if pretrained is None:
        return name, None
    path = Path(pretrained).expanduser()
    if path.suffix in _WEIGHT_SUFFIXES or os.sep in pretrained:
        if not path.is_file():
            raise FileNotFoundError(f"backbone.pretrained: weights file {path} does not exist")
        return name, str(path)
    return name, _resolve_tag(name, pretrained, cache_dir)


def _resolve_tag(name: str, tag: str, cache_dir: str | None) -> str:
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise ConfigError("backbone.pretrained", f"`{tag}` is not a pretrained tag of `{name}` (known: {tags})")
    hub = cfg.get("hf_hub", "")
    if hub:
        repo, filename = os.path.split(hub)
        candidates = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for candidate in candidates:
            cached = _cached_hf_file(repo, candidate, cache_dir)
            if cached is not None:
                return cached
        source = f"https://{HF_HOST}/{repo} (file {' or '.join(candidates)})"
    else:
        source = cfg.get("url", "the URL in open_clip's pretrained table")
    _require_network(f"the weights `{name}` / `{tag}`", source,
                     "then pass its path as the backbone's weights: backbone.pretrained=/path/to/file "
                     "(omniclip-train), backbone_pretrained=/path/to/file (omniclip-zeroshot) or "
                     "--set pretrained=/path/to/file (omniclip-convert)")
    return tag


def _cached_hf_file(repo: str, filename: str, cache_dir: str | None) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - open_clip depends on huggingface_hub
        return None
    found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
    return found if isinstance(found, str) else None


def network_available(host: str = HF_HOST, timeout: float = 3.0) -> bool:
    """True when a TCP connection to ``host``:443 opens within ``timeout`` seconds.

    DNS lookups have no timeout of their own, so the probe runs in a thread we stop waiting for.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _require_network(what: str, source: str, then: str) -> None:
    if not network_available():
        raise WeightsUnavailableError(
            f"{what} are not in the local cache and {HF_HOST} cannot be reached (offline). "
            f"Download {source} on a machine with network access, copy it here, {then}."
        )
