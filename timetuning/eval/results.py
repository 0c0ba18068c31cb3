"""One evaluation set: which splits are scored and fitted, every protocol for one model (a ``fit_probes@<set>-<model>``
stage), and the comparison of each model with the reference model in the ``results.json`` document of the set
(the ``compare@<set>`` stage, from the models' saved statistics)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from timetuning.eval.clustering import TIMET, VARIANTS
from timetuning.eval.comparison import compare_models
from timetuning.eval.evaluation import evaluate_model
from timetuning.eval.progress import EvalProgress
from timetuning.eval.protocol_result import ProtocolResult
from timetuning.eval.scores import Scores, summary
from timetuning.eval.split_source import SplitSource
from timetuning.infra.config import EXAMPLE_CLIPS, FitProbesParams, scoring_splits  # scoring_splits: one rule

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


def evaluate_set_model(set_name: str, set_dir: Path, features_dir: Path, splits: list[str], model: str,
                       classes: list[str], p: FitProbesParams, num_examples: int = EXAMPLE_CLIPS,
                       progress: EvalProgress | None = None) -> tuple[dict[str, Any], ProtocolResult]:
    """One model on one set (its features in ``features_dir/<split>.parquet``): what results.json will say of it
    (the set's facts, the protocol, the model's summary, its scored videos) and its per-video statistics."""
    scored, fitted = scoring_splits(splits)
    val = SplitSource(features_dir / f"{scored}.parquet", set_dir, scored)
    train = SplitSource(features_dir / f"{fitted}.parquet", set_dir, fitted) if fitted else None
    try:
        ev = evaluate_model(val, train, len(classes), p, num_examples, progress)
    finally:  # the decoded copies of the features (timetuning.eval.feature_store.FeatureSpool) are done with
        for source in (val, train):
            if source is not None:
                source.close()
    doc = {"set": set_name, "model": model, "classes": classes, "scored_on": scored, "fitted_on": fitted,
           "image_set": "cluster_per_clip" in ev.not_applicable,
           "protocol": protocol_statement(p, ev.facts["input_size"]), "videos": list(val.videos),
           **_model_document(ev)}
    return doc, ev


def compare_set(models: dict[str, tuple[dict[str, Any], dict[str, Scores], dict[str, dict[str, Scores]]]],
                baseline: str | None, *, samples: int, confidence: float, seed: int) -> dict[str, Any]:
    """results.json of one set from every model's evaluation (``name -> (its document, its statistics per protocol,
    per variant)``, in the order of extract_features.models): the models, and each compared with ``baseline``."""
    if not models:
        raise ValueError("extract_features.models is empty: no model to evaluate")
    first_name, (first, _, _) = next(iter(models.items()))
    for name, (doc, _, _) in models.items():  # one set, one protocol, the same videos: or a result is stale
        for key in ("set", "classes", "scored_on", "fitted_on", "protocol", "videos"):
            if doc[key] != first[key]:
                raise ValueError(f"{first['set']}: the probe results of {name} and {first_name} differ in {key}: "
                                 f"rerun fit_probes@{first['set']}-{name}")
    doc: dict[str, Any] = {
        "set": first["set"], "classes": first["classes"], "scored_on": first["scored_on"],
        "fitted_on": first["fitted_on"], "image_set": first["image_set"], "protocol": first["protocol"],
        "models": {m: {k: d[k] for k in ("protocols", "variants", "not_applicable", "facts")}
                   for m, (d, _, _) in models.items()},
        "comparisons": {},
    }
    if baseline in models:
        _, base, base_variants = models[baseline]
        for model, (_, scores, variants) in models.items():
            if model != baseline:
                doc["comparisons"][model] = {"baseline": baseline, **compare_models(
                    base, scores, base_variants, variants, len(first["videos"]),
                    samples=samples, confidence=confidence, seed=seed)}
    return doc


def evaluate_set(set_name: str, set_dir: Path, features_dir: Path, splits: list[str], models: list[str],
                 baseline: str | None, classes: list[str], p: FitProbesParams, num_examples: int = EXAMPLE_CLIPS
                 ) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """results.json of one set and the example predictions per model, all models in one process (what the
    per-model stages and compare@<set> make in steps; benchmarks and tests call this)."""
    if not models:
        raise ValueError(f"{set_name}: extract_features.models is empty: no model to evaluate")
    evaluated = {m: evaluate_set_model(set_name, set_dir, features_dir / m, splits, m, classes, p, num_examples)
                 for m in models}
    doc = compare_set({m: (d, ev.scores, ev.variant_scores) for m, (d, ev) in evaluated.items()}, baseline,
                      samples=p.bootstrap_samples, confidence=p.confidence, seed=p.seeds[0])
    return doc, {m: ev.examples for m, (_, ev) in evaluated.items()}
