"""Zero-shot evaluation of a trained model: classification by class-name prompts, and retrieval.

    omniclip-zeroshot checkpoint=runs/<run>/lens eval=<tasks>
    omniclip-zeroshot checkpoint=runs/<run>/video eval=ucf101          # a trained video model
    omniclip-zeroshot checkpoint=vifi_clip.pth checkpoint_format=vificlip trust_pickle=true eval=hmdb51
    omniclip-zeroshot checkpoint=ila_b16_8f.pth checkpoint_format=ila trust_pickle=true eval=kinetics400

The same task entries (recipes/eval/*.yaml) drive the trainer's periodic evaluation through
`make_evaluators`. Class embeddings come from the frozen text tower through the anchor cache,
so a classifier is computed once per (model, weights, prompt); a model with a text side of its
own (`omniclip.video_model.VideoClipModel`: ``text`` read through ``encode_text``, and learned
``text_prompts``) scores against class embeddings from that text side instead, computed afresh
at every evaluation, so in-training evaluation sees the text side as it trains.

Task keys beyond {type, dataset, templates}: ``view_fusion`` (how the views of one file are
combined: ``embeddings``, their mean embedding, as ViT-Lens does; ``scores``, the mean of the
views' softmax scores, as ViFi-CLIP's multi-view test does) and ``logit_scale`` (the softmax
temperature of ``scores``; default the backbone's). The eval config's ``summaries`` combine
task results into mean / std over splits or base / novel / harmonic mean rows
(`omniclip.protocols.summarize`), written and printed with the tasks.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset

from omniclip.anchors import AnchorStore
from omniclip.cli import hydra_entry
from omniclip.data import SafeDataset, SeededDataset, collate_skipping
from omniclip.errors import ConfigError
from omniclip.evaluation import (
    EvalResult,
    build_classifier,
    collect_class_scores,
    collect_embeddings,
    collect_view_embeddings,
    eval_mode,
    format_results_table,
    fuse_view_scores,
    fuse_view_scores_of,
    save_results,
    score_metrics,
    zero_shot_classification,
)
from omniclip.metrics import retrieval_metrics
from omniclip.modality import Modality, get_modality
from omniclip.protocols import check_summaries, summarize
from omniclip.recipe import checkpoint_config, eval_datasets, task_dataset

log = logging.getLogger(__name__)

VIEW_FUSIONS = ("embeddings", "scores")


def _view_fusion(task: Mapping[str, Any], key: str) -> tuple[str, float | None]:
    """The task's ``view_fusion`` and ``logit_scale`` (None: the backbone's), checked."""
    fusion = task.get("view_fusion") or "embeddings"
    if fusion not in VIEW_FUSIONS:
        raise ConfigError(f"{key}.view_fusion", f"`{fusion}` is not one of {', '.join(VIEW_FUSIONS)}")
    scale = task.get("logit_scale")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise ConfigError(f"{key}.logit_scale", f"must be a positive number, got {scale!r}")
        if fusion != "scores":
            raise ConfigError(f"{key}.logit_scale", "only `view_fusion: scores` uses a logit scale")
        scale = float(scale)
    return fusion, scale


def evaluate_task(
    model: nn.Module,
    modality: Modality,
    task: Mapping[str, Any],
    anchors: AnchorStore,
    device: torch.device | str,
    batch_size: int = 32,
    num_workers: int = 0,
    bad_samples: str = "stop",
    key: str = "eval",
    dataset: Dataset | None = None,
) -> dict[str, Any]:
    """Run one task entry ({type, dataset, templates}) and return its metrics (percent).

    ``dataset`` is the task's dataset when already built (`make_evaluators` builds each once).
    """
    if dataset is None:
        dataset = task_dataset(modality, task, key)
    kind = task.get("type", "classification")
    # Samples seeded by index: any randomness in loading (e.g. a random FPS start) is the same
    # in every evaluation, so periodic evaluations and the CLI agree exactly.
    loader = DataLoader(SeededDataset(SafeDataset(dataset, bad_samples), seed=0), batch_size=batch_size,
                        sampler=[(0, i) for i in range(len(dataset))], num_workers=num_workers,
                        collate_fn=collate_skipping(modality.collate))
    skipped: list[tuple[str, str]] = []
    batches = _usable_batches(loader, skipped)
    fusion, scale = _view_fusion(task, key)
    if kind == "classification" and getattr(model, "conditions_classes", False):
        metrics = _conditioned_classification(model, modality, dataset, task, batches, fusion, scale, key, device,
                                              anchors.backbone.logit_scale)
    elif kind == "classification":
        classifier = task_classifier(modality, dataset, task, anchors, key, model=model, device=device)
        multilabel = bool(getattr(dataset, "multilabel", False))
        if fusion == "scores":
            views, labels, groups, paths = collect_view_embeddings(model, batches, device)
            if labels is None:
                raise ConfigError(f"{key}.dataset", "a classification dataset must give `label` for each sample")
            scale = anchors.backbone.logit_scale if scale is None else scale
            scores, labels = fuse_view_scores(views, labels, groups, classifier, scale, paths)
            metrics = score_metrics(scores, labels, multilabel)
        else:
            embeddings, labels = collect_embeddings(model, batches, device)
            if labels is None:
                raise ConfigError(f"{key}.dataset", "a classification dataset must give `label` for each sample")
            metrics = zero_shot_classification(embeddings, labels, classifier.to(embeddings.device),
                                               multilabel=multilabel)
    else:
        if fusion != "embeddings":
            raise ConfigError(f"{key}.view_fusion", "retrieval averages the embeddings of a file's clips; "
                              "`scores` applies to classification only")
        captions = getattr(dataset, "captions", None)
        if captions is None:
            raise ConfigError(f"{key}.dataset", "a retrieval dataset must expose `captions` (a list per item)")
        embeddings, _ = collect_embeddings(model, batches, device)
        if embeddings.shape[0] != len(captions):
            raise RuntimeError(f"{len(captions)} items have captions but {embeddings.shape[0]} were embedded "
                               f"({len(skipped)} skipped); retrieval needs every item")
        texts = [c for item in captions for c in item]
        text_to_item = torch.tensor([i for i, item in enumerate(captions) for _ in item])
        text_emb = anchors.text(texts).to(embeddings.device)
        metrics = retrieval_metrics(embeddings, text_emb, text_to_item.to(embeddings.device))
        metrics["num_samples"] = embeddings.shape[0]
    anchors.flush()
    if skipped:
        log.warning("%s: skipped %d samples (first: %s)", key, len(skipped), skipped[0])
        metrics["skipped"] = len(skipped)
    return metrics


def task_class_names(modality: Modality, dataset: Any, task: Mapping[str, Any], key: str = "eval") -> list[str]:
    """The class names of a classification task: the dataset's own, else the modality's shipped list."""
    class_names = getattr(dataset, "class_names", None)
    if class_names is None:
        if "name" not in task["dataset"]:
            raise ConfigError(f"{key}.dataset.name", "needed to look up the class names")
        class_names = modality.class_names(task["dataset"]["name"])
    return list(class_names)


def task_classifier(
    modality: Modality, dataset: Any, task: Mapping[str, Any], anchors: AnchorStore, key: str = "eval",
    model: Any = None, device: torch.device | str | None = None,
) -> torch.Tensor:
    """Class embeddings [C, E] of a classification task: its class names x the modality's templates.

    They come from ``model``'s own text side when it has one (learned ``text_prompts``, else
    `own_text_encoder`), else from the frozen text tower through the anchor cache.
    """
    class_names = task_class_names(modality, dataset, task, key)
    templates = modality.template_set(task.get("templates"))
    prompts = getattr(model, "text_prompts", None)
    if prompts is not None:
        # Learned context stands where a template's words would: the templates do not apply.
        with eval_mode(prompts), torch.no_grad():
            return F.normalize(prompts.class_embeddings(class_names).float(), dim=-1)
    encode = own_text_encoder(model, anchors.backbone.tokenizer, device)
    if encode is not None:
        with eval_mode(model.text):
            return build_classifier(encode, class_names, templates)
    return build_classifier(anchors.text, class_names, templates)


def own_text_encoder(
    model: Any, tokenizer: Callable[[list[str]], torch.Tensor], device: torch.device | str | None = None
) -> Callable[[list[str]], torch.Tensor] | None:
    """Prompts -> embeddings through ``model``'s own text tower, or None when it has none.

    A video model carries its text tower (``model.text``, read through ``model.encode_text(ids)``,
    `omniclip.video_model.VideoClipModel`); when it trains, the frozen tower's cached anchors
    would score against the wrong classes, and the cache, keyed by the backbone's weights,
    cannot see the model's changes. Everything else (lens models, plain functions) has no such
    tower.
    """
    if getattr(model, "text", None) is None or not callable(getattr(model, "encode_text", None)):
        return None
    if device is None:
        device = next(model.text.parameters()).device

    def encode(prompts: list[str]) -> torch.Tensor:
        return model.encode_text(tokenizer(list(prompts)).to(device))

    return encode


def _conditioned_classification(
    model: Any, modality: Modality, dataset: Any, task: Mapping[str, Any], batches: Any, fusion: str,
    scale: float | None, key: str, device: torch.device | str, default_scale: float,
) -> dict[str, Any]:
    """Metrics of a model whose class embeddings are conditioned on each clip (ILA / X-CLIP prompts).

    No classifier is shared by the clips, so each view is scored through ``model.class_logits``
    (cosines against its own class embeddings) from the model's raw class text features, the
    mean over the task's templates of ``model.class_features`` (one template, the bare name, is
    X-CLIP's and ILA's protocol). ``view_fusion: scores`` averages the views' softmax scores at
    ``logit_scale`` (default: the backbone's, which a published checkpoint sets); ``embeddings``
    applies only when every video has one view, whose cosines are then its scores.
    """
    class_names = task_class_names(modality, dataset, task, key)
    templates = modality.template_set(task.get("templates"))
    with eval_mode(model), torch.no_grad():
        features = torch.stack([model.class_features(class_names, t).float() for t in templates]).mean(0)
    cosines, labels, groups, paths = collect_class_scores(
        lambda inputs: model.class_logits(inputs, features.to(inputs.device), 1.0), model, batches, device)
    if labels is None:
        raise ConfigError(f"{key}.dataset", "a classification dataset must give `label` for each sample")
    multilabel = bool(getattr(dataset, "multilabel", False))
    if fusion == "scores":
        scores, labels = fuse_view_scores_of(cosines, labels, groups, default_scale if scale is None else scale, paths)
        return score_metrics(scores, labels, multilabel)
    if groups.unique().numel() != groups.numel():
        raise ConfigError(f"{key}.view_fusion", "this model conditions its class text on each clip, so several views "
                          "of a video have no shared embedding to average: use `view_fusion: scores`")
    return score_metrics(cosines, labels, multilabel)


def _usable_batches(loader: DataLoader, skipped: list[tuple[str, str]]):
    """Batches with samples left, recording what the skip policy dropped."""
    for batch in loader:
        skipped.extend(batch.pop("skipped", []))
        if "inputs" in batch:
            yield batch


def make_evaluators(
    modality: Modality,
    eval_cfg: Mapping[str, Any],
    anchors: AnchorStore,
    device: torch.device | str,
    num_workers: int = 0,
    bad_samples: str = "stop",
    datasets: Mapping[str, Dataset] | None = None,
) -> dict[str, Callable[[nn.Module], dict[str, Any]]]:
    """name -> evaluator(model) for every task in an eval config (recipes/eval/*.yaml).

    Every task's dataset is built here, once, so a missing folder fails before training rather
    than at the first evaluation; pass ``datasets`` (from `omniclip.recipe.eval_datasets`) when
    they were built earlier.
    """
    tasks = eval_cfg.get("tasks") or {}
    batch_size = int(eval_cfg.get("batch_size", 32))
    for name, task in tasks.items():
        _view_fusion(task, f"eval.tasks.{name}")
    check_summaries(eval_cfg.get("summaries"), list(tasks))
    if datasets is None:
        datasets = eval_datasets(modality, eval_cfg)

    def bind(name: str, task: Mapping[str, Any]) -> Callable[[nn.Module], dict[str, Any]]:
        return lambda model: evaluate_task(model, modality, task, anchors, device, batch_size, num_workers,
                                           bad_samples, key=f"eval.tasks.{name}", dataset=datasets[name])

    return {name: bind(name, task) for name, task in tasks.items()}


#: ``checkpoint_format`` values: a folder omniclip wrote, or a published training file.
CHECKPOINT_FORMATS = ("export", "vificlip", "ila")
#: The base CLIP of the published ViFi-CLIP and ILA checkpoints (their towers' layout, and the
#: word embedding ViFi-CLIP does not save).
PUBLISHED_BACKBONE = ("ViT-B-16-quickgelu", "openai")


def checkpoint_format(cfg: Mapping[str, Any]) -> str:
    """``cfg.checkpoint_format``, checked, with the checkpoint's existence: offline, a missing file
    must fail before anything loads, on one line."""
    fmt = cfg.get("checkpoint_format") or "export"
    if fmt not in CHECKPOINT_FORMATS:
        raise ConfigError("checkpoint_format", f"`{fmt}` is not one of {', '.join(CHECKPOINT_FORMATS)}")
    path = Path(cfg.checkpoint)
    if fmt != "export" and not path.is_file():
        raise ConfigError("checkpoint", f"{path}: no such file (checkpoint_format={fmt} reads a published "
                                        "training file, e.g. vifi_clip_10_epochs_k400_full_finetuned.pth)")
    return fmt


def load_eval_model(cfg: Mapping[str, Any], device: torch.device) -> tuple[nn.Module, Any, Modality, str]:
    """The model ``cfg.checkpoint`` holds, in eval mode, its backbone, modality and a label for
    records.

    ``checkpoint_format``: ``export`` reads a folder omniclip wrote, whose config.json names the
    modality: a lens (`omniclip.model.load_lens_model`) or a video model (``<run>/video``, rebuilt
    by its modality's ``load_export`` and loaded strictly). ``vificlip`` and ``ila`` read a
    published training file (`omniclip.vificlip.load_vificlip`, `omniclip.ila_checkpoint.load_ila`;
    ``trust_pickle`` for their pickled configs) into the base CLIP ``backbone_name`` /
    ``backbone_pretrained`` (default: OpenAI ViT-B/16); ILA's class text is then conditioned per
    clip and scored through its ``class_logits``.
    """
    from omniclip.backbone import load_backbone
    from omniclip.model import load_lens_model

    fmt = checkpoint_format(cfg)
    pretrained = cfg.get("backbone_pretrained")
    if fmt == "export":
        modality = get_modality(checkpoint_config(cfg.checkpoint)["modality"])
        load_export = getattr(modality, "load_export", None)
        if callable(load_export):
            model, backbone, _ = load_export(cfg.checkpoint, device=device, backbone_pretrained=pretrained)
        else:
            model, backbone, _ = load_lens_model(cfg.checkpoint, backbone_pretrained=pretrained, device=device)
        return model, backbone, modality, f"{backbone.name}:{backbone.pretrained or 'random'}"
    name = cfg.get("backbone_name") or PUBLISHED_BACKBONE[0]
    if pretrained is None and not cfg.get("backbone_name"):
        pretrained = PUBLISHED_BACKBONE[1]
    backbone = load_backbone(name, pretrained, device=device)
    trust = bool(cfg.get("trust_pickle", False))
    if fmt == "vificlip":
        from omniclip.vificlip import load_vificlip

        model = load_vificlip(cfg.checkpoint, backbone, trust_pickle=trust).model
    else:
        from omniclip.ila_checkpoint import load_ila

        model = load_ila(cfg.checkpoint, backbone, trust_pickle=trust).model
    return model.to(device).eval(), backbone, get_modality("video"), f"{fmt}:{Path(cfg.checkpoint).name}"


def run(cfg: DictConfig) -> list[EvalResult]:
    """Evaluate ``cfg.checkpoint`` on every task of ``cfg.eval``; write JSON and print a table."""
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    checkpoint = Path(cfg.checkpoint)
    eval_cfg = OmegaConf.to_container(cfg.eval, resolve=True)
    if not eval_cfg.get("tasks"):
        raise ConfigError("eval.tasks", "no evaluation task configured")
    check_summaries(eval_cfg.get("summaries"), list(eval_cfg["tasks"]))
    # The data first (the checkpoint's config names the modality): a missing dataset fails
    # before any weights load.
    if checkpoint_format(cfg) == "export":
        model_cfg = checkpoint_config(checkpoint)
        modality, tokenizer_cfg = get_modality(model_cfg["modality"]), model_cfg.get("tokenizer") or {}
    else:
        modality, tokenizer_cfg = get_modality("video"), {}
    datasets = eval_datasets(modality, eval_cfg, tokenizer_cfg)
    model, backbone, modality, model_name = load_eval_model(cfg, device)
    for name, task in eval_cfg["tasks"].items():
        modality.check_model_data(model, task.get("dataset") or {}, f"eval.tasks.{name}.dataset")
    anchors = AnchorStore(backbone, cfg.anchors.get("cache_dir"), int(cfg.anchors.get("batch_size", 256)))
    evaluators = make_evaluators(modality, eval_cfg, anchors, device, int(cfg.num_workers), cfg.bad_samples,
                                 datasets)
    results = []
    by_task: dict[str, dict[str, Any]] = {}
    for name, evaluator in evaluators.items():
        metrics = evaluator(model)
        by_task[name] = metrics
        results.append(EvalResult(
            task=eval_cfg["tasks"][name].get("type", "classification"), dataset=name, modality=modality.name,
            model=model_name, checkpoint=str(checkpoint), metrics=metrics,
            num_samples=int(metrics.get("num_samples", 0)),
        ))
    for name, (kind, metrics, parts) in summarize(eval_cfg.get("summaries"), by_task).items():
        results.append(EvalResult(
            task=kind, dataset=name, modality=modality.name, model=model_name, checkpoint=str(checkpoint),
            metrics=metrics, num_samples=int(metrics.get("num_samples", 0)), extras={"of": parts},
        ))
    if cfg.get("output"):
        output = Path(cfg.output)
    elif checkpoint.is_file():  # a published file: results beside it
        output = checkpoint.with_name(f"{checkpoint.stem}.zeroshot.json")
    else:
        output = checkpoint / "zeroshot.json"
    save_results(results, output)
    print(format_results_table(results))
    print(f"results written to {output}")
    return results


# run checks every dataset before loading the checkpoint: no separate preflight.
main = hydra_entry("zeroshot", run, preflight=None, description=(
    "Zero-shot classification and retrieval with a trained or converted lens (checkpoint=<lens folder>), a "
    "trained video model (checkpoint=<run>/video) or a published ViFi-CLIP / ILA file (checkpoint_format=vificlip "
    "or ila) on the tasks of an eval group (eval=NAME); prints a table and writes JSON beside the checkpoint."))


if __name__ == "__main__":
    main()
