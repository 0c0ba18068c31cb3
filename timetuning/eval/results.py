"""One evaluation set, all models: which splits are scored and fitted, every protocol per model, the comparison
of each model with the starting model, and the ``results.json`` document of the fit_probes stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from timetuning.eval.clustering import TIMET, VARIANTS
from timetuning.eval.comparison import compare_models
from timetuning.eval.evaluation import evaluate_model
from timetuning.eval.protocol_result import ProtocolResult
from timetuning.eval.scores import summary
from timetuning.eval.split_source import SplitSource
from timetuning.infra.config import FitProbesParams, scoring_splits  # one rule for evaluation and selection

KMEANS_BACKEND = "timetuning.eval.kmeans: batched torch Lloyd, faiss-style sampling and restarts"


def protocol_statement(p: FitProbesParams, input_size: int) -> dict[str, Any]:
    """Every protocol choice, as recorded in results.json and stated in the report."""
    return {
        "features": f"backbone patch features of frames resized to {input_size}x{input_size}",
        "reduction": f"StandardScaler + PCA to {p.pca_dim} dims, fitted once on the scored split (per model)",
        "cluster_eval_size": p.cluster_eval_size or input_size,
        "dataset_eval_size": p.dataset_eval_size,
        "clustering": "reduced features bilinearly upsampled to the evaluation size, k-means per pixel; "
                      "ground-truth masks resized there by nearest neighbour",
        "k": "classes present in the group's ground truth (ignore label excluded)",
        "matching": "Hungarian on IoU, unmatched clusters = background; overclustering: each cluster to its "
                    "highest-precision class",
        "miou": "mean over the classes present in the ground truth, background included, 255 ignored",
        "kmeans": {"backend": KMEANS_BACKEND, "iterations": p.kmeans_iterations, "restarts": p.kmeans_restarts,
                   "points_per_centroid": p.kmeans_points_per_centroid, "switches": "none (one backend for all sizes)"},
        "linear": f"1x1 conv, trained on {p.linear_train_size}x{p.linear_train_size} masks, scored per pixel at "
                  "each frame's stored mask size",
        "hummingbird": f"k={p.hummingbird_k}, softmax(cos/{p.hummingbird_temperature}), memory "
                       f"{p.hummingbird_memory} train patches, scored at the stored mask size",
        "hummingbird_search": p.hummingbird_search,
        "seeds": list(p.seeds),
        "bootstrap": f"{p.bootstrap_samples} resamples of videos, paired, {round(100 * p.confidence)}% percentile "
                     "interval",
        "variants": {TIMET.name: TIMET.description,
                     **{name: VARIANTS[name].description for name in p.robustness_variants}},
    }


def _model_document(ev: ProtocolResult) -> dict[str, Any]:
    return {"protocols": {name: summary(s) for name, s in ev.scores.items()},
            "variants": {v: {name: summary(s) for name, s in scores.items()}
                         for v, scores in ev.variant_scores.items()},
            "not_applicable": ev.not_applicable, "facts": ev.facts}


def evaluate_set(set_name: str, set_dir: Path, features_dir: Path, splits: list[str], models: list[str],
                 baseline: str | None, classes: list[str], p: FitProbesParams, num_examples: int = 3
                 ) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """results.json of one set and the example predictions per model (for the report's pictures)."""
    if not models:
        raise ValueError(f"{set_name}: extract_features.models is empty: no model to evaluate")
    scored, fitted = scoring_splits(splits)
    evaluations: dict[str, ProtocolResult] = {}
    videos: list[str] = []
    for model in models:
        val = SplitSource(features_dir / model / f"{scored}.parquet", set_dir, scored)
        train = SplitSource(features_dir / model / f"{fitted}.parquet", set_dir, fitted) if fitted else None
        try:
            evaluations[model] = evaluate_model(val, train, len(classes), p, num_examples)
        finally:  # the decoded copies of this model's features are not needed by the next
            for source in (val, train):
                if source is not None:
                    source.close()
        videos = val.videos
    doc: dict[str, Any] = {
        "set": set_name, "classes": classes, "scored_on": scored, "fitted_on": fitted,
        "image_set": bool(evaluations) and "cluster_per_clip" in next(iter(evaluations.values())).not_applicable,
        "protocol": protocol_statement(p, next(iter(evaluations.values())).facts["input_size"]),
        "models": {m: _model_document(ev) for m, ev in evaluations.items()},
        "comparisons": {},
    }
    if baseline in evaluations:
        base = evaluations[baseline]
        for model, ev in evaluations.items():
            if model != baseline:
                doc["comparisons"][model] = {"baseline": baseline, **compare_models(
                    base.scores, ev.scores, base.variant_scores, ev.variant_scores, len(videos),
                    samples=p.bootstrap_samples, confidence=p.confidence, seed=p.seeds[0])}
    examples = {m: ev.examples for m, ev in evaluations.items()}
    return doc, examples
