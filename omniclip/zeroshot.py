"""Zero-shot evaluation of a lens model: classification by class-name prompts, and retrieval.

    omniclip-zeroshot checkpoint=runs/<run>/lens eval=<tasks>

The same task entries (recipes/eval/*.yaml) drive the trainer's periodic evaluation through
`make_evaluators`. Class embeddings come from the frozen text tower through the anchor cache,
so a classifier is computed once per (model, weights, prompt).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
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
    collect_embeddings,
    format_results_table,
    save_results,
    zero_shot_classification,
)
from omniclip.metrics import retrieval_metrics
from omniclip.modality import Modality, get_modality
from omniclip.recipe import checkpoint_config, eval_datasets, task_dataset

log = logging.getLogger(__name__)


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
    if kind == "classification":
        classifier = task_classifier(modality, dataset, task, anchors, key)
        embeddings, labels = collect_embeddings(model, batches, device)
        if labels is None:
            raise ConfigError(f"{key}.dataset", "a classification dataset must give `label` for each sample")
        metrics = zero_shot_classification(embeddings, labels, classifier.to(embeddings.device),
                                           multilabel=bool(getattr(dataset, "multilabel", False)))
    else:
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


def task_classifier(
    modality: Modality, dataset: Any, task: Mapping[str, Any], anchors: AnchorStore, key: str = "eval"
) -> torch.Tensor:
    """Class embeddings [C, E] of a classification task: its class names x the modality's templates."""
    class_names = getattr(dataset, "class_names", None)
    if class_names is None:
        if "name" not in task["dataset"]:
            raise ConfigError(f"{key}.dataset.name", "needed to look up the class names")
        class_names = modality.class_names(task["dataset"]["name"])
    return build_classifier(anchors.text, list(class_names), modality.template_set(task.get("templates")))


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
    if datasets is None:
        datasets = eval_datasets(modality, eval_cfg)

    def bind(name: str, task: Mapping[str, Any]) -> Callable[[nn.Module], dict[str, Any]]:
        return lambda model: evaluate_task(model, modality, task, anchors, device, batch_size, num_workers,
                                           bad_samples, key=f"eval.tasks.{name}", dataset=datasets[name])

    return {name: bind(name, task) for name, task in tasks.items()}


def run(cfg: DictConfig) -> list[EvalResult]:
    """Evaluate ``cfg.checkpoint`` on every task of ``cfg.eval``; write JSON and print a table."""
    from omniclip.model import load_lens_model

    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    checkpoint = Path(cfg.checkpoint)
    eval_cfg = OmegaConf.to_container(cfg.eval, resolve=True)
    if not eval_cfg.get("tasks"):
        raise ConfigError("eval.tasks", "no evaluation task configured")
    # The data first (the checkpoint's config names the modality): a missing dataset fails
    # before any weights load.
    model_cfg = checkpoint_config(checkpoint)
    modality = get_modality(model_cfg["modality"])
    datasets = eval_datasets(modality, eval_cfg, model_cfg.get("tokenizer") or {})
    model, backbone, _ = load_lens_model(checkpoint, backbone_pretrained=cfg.get("backbone_pretrained"),
                                         device=device)
    anchors = AnchorStore(backbone, cfg.anchors.get("cache_dir"), int(cfg.anchors.get("batch_size", 256)))
    evaluators = make_evaluators(modality, eval_cfg, anchors, device, int(cfg.num_workers), cfg.bad_samples,
                                 datasets)
    results = []
    for name, evaluator in evaluators.items():
        metrics = evaluator(model)
        results.append(EvalResult(
            task=eval_cfg["tasks"][name].get("type", "classification"), dataset=name, modality=modality.name,
            model=f"{backbone.name}:{backbone.pretrained or 'random'}", checkpoint=str(checkpoint),
            metrics=metrics, num_samples=int(metrics.get("num_samples", 0)),
        ))
    output = Path(cfg.output) if cfg.get("output") else checkpoint / "zeroshot.json"
    save_results(results, output)
    print(format_results_table(results))
    print(f"results written to {output}")
    return results


# run checks every dataset before loading the checkpoint: no separate preflight.
main = hydra_entry("zeroshot", run, preflight=None, description=(
    "Zero-shot classification and retrieval with a trained or converted lens (checkpoint=<lens folder>) on "
    "the tasks of an eval group (eval=NAME); prints a table and writes JSON beside the checkpoint."))


if __name__ == "__main__":
    main()
