"""The evaluation protocols end to end on real shards and a real (tiny) model: known answers where the features
separate the classes, sets of mixed sizes, image sets, and the protocol choices themselves."""

import json
import re

import numpy as np
import pytest
import torch

from tests.evalsets import MeanColour, davis_set, voc_set
from timetuning.data.eval_shards import shard_eval_set
from timetuning.eval.cluster_protocols import fit_split_pca
from timetuning.eval.evaluation import evaluate_model
from timetuning.eval.extraction import extract_split
from timetuning.eval.feature_store import read_features
from timetuning.eval.pca import fit_standard_pca
from timetuning.eval.probe_protocols import linear_protocol
from timetuning.eval.results import evaluate_set
from timetuning.eval.split_source import SplitSource
from timetuning.infra.config import EvalSetParams, FitProbesParams

FAST = dict(seeds=[0, 1], kmeans_restarts=2, overclustering_k=[6], linear_epochs=30, linear_drop_epoch=25,
            linear_lr=0.5, bootstrap_samples=200, hummingbird_k=5, cluster_eval_size=64, dataset_eval_size=64)


def _features(tmp_path, set_params, splits, input_size=64, model=None):
    out = tmp_path / "shards"
    shard_eval_set(set_params, out, progress=False)
    model = model or MeanColour()
    for split in splits:
        extract_split(model, out / set_params.name, split, tmp_path / "feats" / f"{split}.parquet",
                      input_size=input_size, dtype="float32", progress=False)
    return out / set_params.name


@pytest.fixture(scope="module")
def mixed_videos(tmp_path_factory):
    """Videos of two aspect ratios (16:9 and 4:3) and one portrait: the batches across clips must not mix sizes."""
    tmp = tmp_path_factory.mktemp("mixed")
    root = davis_set(tmp / "davis", {"train": [(72, 128), (96, 128), (128, 96)],
                                     "val": [(72, 128), (96, 128), (72, 128)]})
    params = EvalSetParams(name="mixed", layout="davis", root=str(root), short_side=48, frames_per_clip=2,
                           max_clips_per_video=2)
    set_dir = _features(tmp, params, ["train", "val"])
    return tmp, set_dir


def test_a_split_s_clips_and_videos_are_found_across_parquet_batches(mixed_videos):
    """Clip boundaries and video order from the Parquet rows, read in batches that cut clips anywhere: the same as
    from the whole file at once (brute force with pandas-free numpy)."""
    tmp, set_dir = mixed_videos
    rows = read_features(tmp / "feats/val.parquet", ["clip_id", "video_id"])
    starts = np.flatnonzero(np.r_[True, rows["clip_id"][1:] != rows["clip_id"][:-1]])
    videos = list(dict.fromkeys(rows["video_id"].tolist()))
    expected = ([videos.index(v) for v in rows["video_id"][starts]],
                (np.diff(np.r_[starts, len(rows["clip_id"])]) // 64).tolist())  # 8x8 patches per frame
    for batch_rows in (1, 5, 64, 100, 65536):
        source = SplitSource(tmp / "feats/val.parquet", set_dir, "val", batch_rows=batch_rows)
        assert (source.clip_video, source.clip_frames) == expected and source.videos == videos, batch_rows


def test_mixed_aspect_ratios_extract_and_every_protocol_scores_them(mixed_videos):
    tmp, set_dir = mixed_videos
    val = SplitSource(tmp / "feats/val.parquet", set_dir, "val")
    train = SplitSource(tmp / "feats/train.parquet", set_dir, "train")
    sizes = {c.masks.shape[1:] for _, c in val.clips()}
    assert sizes == {(48, 85), (48, 64)}  # stored at each video's own aspect ratio
    ev = evaluate_model(val, train, 4, FitProbesParams(**FAST), num_examples=2)
    means = {k: float(np.nanmean(s.per_seed())) for k, s in ev.scores.items()}
    # colour features separate the classes: clustering and the probes are near perfect
    for key in ("cluster_per_frame", "cluster_per_clip", "cluster_per_dataset", "overcluster_k6"):
        assert means[key] > 0.7, (key, means[key])
    assert means["linear"] > 0.85 and means["hummingbird"] > 0.8, means
    assert ev.examples["linear/0"].shape[1:] == (48, 85)  # the probe predicts at the stored mask size
    assert ev.examples["cluster/0"].shape == (2, 64, 64)  # clusters at the stated square evaluation size
    assert ev.facts["videos"] == 3 and ev.facts["frames"] == 12
    assert set(ev.not_applicable) == {"jf_mean", "j_mean", "f_mean"}  # no instance masks in this set


def test_the_linear_probe_refuses_train_features_of_other_clips_than_the_shards(mixed_videos):
    """Stale features (here the val split's, read against the train shards) stop the probe with the file named,
    never a probe fitted to masks of other frames."""
    tmp, set_dir = mixed_videos
    val = SplitSource(tmp / "feats/val.parquet", set_dir, "val")
    stale = SplitSource(tmp / "feats/val.parquet", set_dir, "train")
    with pytest.raises(ValueError,
                       match=r"val\.parquet does not match the shards of .*/train .*rerun extract_features"):
        linear_protocol(stale, val, 4, FitProbesParams(**FAST), num_examples=0)


def test_k_is_the_classes_present_per_frame(tmp_path):
    """Every val frame shows background and one of the three classes: with K = classes present (2) each frame
    splits into its two surfaces; forcing K = the label set (4) splits a surface and scores far lower."""
    root = davis_set(tmp_path / "davis", {"val": [(64, 64), (64, 64)]}, classes_of=lambda i: [1 + i])
    params = EvalSetParams(name="one", layout="davis", root=str(root), short_side=64, frames_per_clip=2,
                           max_clips_per_video=2, splits=["val"])
    set_dir = _features(tmp_path, params, ["val"])
    val = SplitSource(tmp_path / "feats/val.parquet", set_dir, "val")
    ev = evaluate_model(val, None, 4, FitProbesParams(**{**FAST, "robustness_variants": ["fixed_k"]}), 0)
    ours = ev.scores["cluster_per_frame"].miou
    fixed = ev.variant_scores["fixed_k"]["cluster_per_frame"].miou
    assert ours.min() > 0.8
    assert fixed.mean() < ours.mean() - 0.15


def test_the_pca_is_fitted_once_on_the_whole_split(mixed_videos):
    tmp, set_dir = mixed_videos
    val = SplitSource(tmp / "feats/val.parquet", set_dir, "val")
    streamed = fit_split_pca(val, 50)
    whole = fit_standard_pca([read_features(tmp / "feats/val.parquet")["feature"]], 50)
    x = torch.from_numpy(read_features(tmp / "feats/val.parquet")["feature"])
    torch.testing.assert_close(streamed.transform(x), whole.transform(x), rtol=1e-4, atol=1e-4)


def test_an_image_set_of_mixed_sizes_reports_time_protocols_as_not_applicable(tmp_path):
    sizes = [(60, 80), (80, 60), (50, 90), (70, 70)]  # landscape, portrait, wide, square
    root = voc_set(tmp_path / "voc", {"train": sizes * 2, "val": sizes})
    params = EvalSetParams(name="photos", layout="voc", root=str(root), short_side=40, splits=["train", "val"])
    set_dir = _features(tmp_path, params, ["train", "val"])
    (tmp_path / "feats_by_model" / "m").mkdir(parents=True)
    for split in ("train", "val"):
        (tmp_path / "feats" / f"{split}.parquet").rename(tmp_path / "feats_by_model" / "m" / f"{split}.parquet")
    doc, examples = evaluate_set("photos", set_dir, tmp_path / "feats_by_model", ["train", "val"], ["m"], "m",
                                 ["background", "red", "green", "blue"], FitProbesParams(**FAST))
    m = doc["models"]["m"]
    assert doc["image_set"] is True
    for key in ("cluster_per_clip", "temporal_stability_per_frame", "temporal_clip_minus_frame_miou"):
        assert key in m["not_applicable"] and key not in m["protocols"]
    assert m["protocols"]["linear"]["mean"] > 0.8 and m["protocols"]["cluster_per_frame"]["mean"] > 0.8
    json.dumps(doc, allow_nan=False)  # valid JSON: no NaN anywhere
    assert {a.shape for k, a in examples["m"].items() if k.startswith("linear/")} >= {(1, 40, 53), (1, 53, 40)}


class Grey(MeanColour):
    """Patch brightness only (the colour channels averaged): a worse model than MeanColour."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = super().forward(images)
        return torch.cat([feats[:, :3].mean(1, keepdim=True).expand(-1, 3, -1, -1), feats[:, 3:]], 1)


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """One small video set embedded by two models: ``feats/<model>/<split>.parquet``."""
    tmp = tmp_path_factory.mktemp("two")
    root = davis_set(tmp / "davis", {"train": [(48, 64)] * 2, "val": [(48, 64)] * 3})
    params = EvalSetParams(name="d", layout="davis", root=str(root), short_side=48, frames_per_clip=2,
                           max_clips_per_video=2)
    shard_eval_set(params, tmp / "shards", progress=False)
    for name, model in (("a", MeanColour()), ("b", Grey())):
        for split in ("train", "val"):
            extract_split(model, tmp / "shards/d", split, tmp / "feats" / name / f"{split}.parquet", input_size=64,
                          dtype="float32", progress=False)
    return tmp, tmp / "shards/d", ["background", "red", "green", "blue"]


def test_results_json_from_the_saved_per_model_statistics_is_the_one_of_one_process(two_models, tmp_path):
    """fit_probes@<set>-<model> saves each model's statistics; compare@<set> recomputes every comparison from them:
    results.json is the same document as evaluating and comparing both models in one process."""
    from timetuning.eval.result_store import load_scores, save_scores
    from timetuning.eval.results import compare_set, evaluate_set_model

    tmp, set_dir, classes = two_models
    p = FitProbesParams(**FAST)
    whole, examples = evaluate_set("d", set_dir, tmp / "feats", ["train", "val"], ["a", "b"], "a", classes, p)
    saved = {}
    for m in ("a", "b"):
        doc, ev = evaluate_set_model("d", set_dir, tmp / "feats" / m, ["train", "val"], m, classes, p)
        save_scores(tmp_path / m, ev.scores, ev.variant_scores, doc)
        first = (tmp_path / m / "scores.npz").read_bytes()
        save_scores(tmp_path / m, ev.scores, ev.variant_scores, doc)
        assert (tmp_path / m / "scores.npz").read_bytes() == first  # no clock in the bytes: DVC stops there
        scores, variants, loaded = load_scores(tmp_path / m)
        assert set(scores) == set(ev.scores) and set(variants) == set(ev.variant_scores)
        saved[m] = (loaded, scores, variants)
    doc = compare_set(saved, "a", samples=p.bootstrap_samples, confidence=p.confidence, seed=p.seeds[0])
    assert json.dumps(doc, sort_keys=True) == json.dumps(whole, sort_keys=True)
    assert set(doc["comparisons"]) == {"b"} and doc["comparisons"]["b"]["deltas"]["linear"]["delta"] < 0
    assert {k for k in examples["a"] if k.startswith("linear/")} == {f"linear/{i}" for i in range(6)}  # every
    # val clip up to EXAMPLE_CLIPS: 3 videos x 2 clips
    stale = {**saved, "b": ({**saved["b"][0], "videos": ["x"]}, *saved["b"][1:])}
    with pytest.raises(ValueError, match=r"differ in videos: rerun fit_probes@d-b"):
        compare_set(stale, "a", samples=100, confidence=0.9, seed=0)


def test_fit_probes_logs_where_it_is_every_progress_seconds(two_models, caplog):
    from timetuning.eval.progress import EvalProgress, format_elapsed
    from timetuning.eval.results import evaluate_set_model

    assert [format_elapsed(s) for s in (0.4, 40, 359, 3900)] == ["0 s", "40 s", "6 min", "1 h 05 min"]
    tmp, set_dir, classes = two_models
    caplog.set_level("INFO", logger="timetuning.eval.progress")
    with EvalProgress("fit_probes@d-a", every=0.05) as progress:
        evaluate_set_model("d", set_dir, tmp / "feats/a", ["train", "val"], "a", classes, FitProbesParams(**FAST),
                           progress=progress)
    lines = [r.getMessage() for r in caplog.records if r.name == "timetuning.eval.progress"]
    names = [re.match(r"fit_probes@d-a: ([^,]+?)(,| \(step)", line).group(1) for line in lines]
    assert list(dict.fromkeys(names)) == ["standardise + PCA", "clustering per frame/clip", "clustering per dataset",
                                          "linear probe", "retrieval (Hummingbird)", "label propagation"]
    assert "fit_probes@d-a: clustering per frame/clip, clip 0/6 (step 2 of 6), 0 s elapsed" in lines
    assert any(re.fullmatch(r"fit_probes@d-a: linear probe, epoch 1/30 \(step 4 of 6\), \d+ s elapsed", line)
               for line in lines)
    assert len(lines) > 6  # the timer's lines between the protocols' first ones
    for line in lines:
        assert re.fullmatch(r"fit_probes@d-a: [a-zA-Z +/()]+(, (epoch ([1-9]|[12][0-9]|30)/30|clip \d+/\d+))? "
                            r"\(step [1-6] of 6\), \d+ s elapsed", line), line
