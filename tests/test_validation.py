"""Model selection: clips spread over videos, refusals when selection or training data is ever scored, and the
validation score itself on a hand-made set."""

import json

import pytest
import torch

from tests.evalsets import MeanColour, davis_set, named_davis_set, sharded_set
from timetuning.data.shard_index import SampleRef
from timetuning.infra.config import validate_params
from timetuning.method.loss import ForwarderSettings
from timetuning.train.validation import (
    DataLeakError,
    feature_cosine,
    forwarder_jf,
    spread_over_videos,
    validate,
    validation_data,
)


def _refs(groups: dict[str, int]) -> dict[str, list[SampleRef]]:
    return {v: [SampleRef("s.tar", f"{v}{i}", ()) for i in range(n)] for v, n in groups.items()}


def test_clips_are_spread_over_videos():
    groups = _refs({"a": 3, "b": 1, "c": 2, "d": 1})
    keys = lambda count: [r.key for r in spread_over_videos(groups, count)]  # noqa: E731
    assert keys(2) == ["a0", "d0"]  # fewer clips than videos: the first and the last video, not a, b
    assert keys(3) == ["a0", "c0", "d0"]
    assert keys(5) == ["a0", "b0", "c0", "d0", "a1"]  # every video once before any video twice
    assert keys(100) == ["a0", "b0", "c0", "d0", "a1", "c1", "a2"]


def _params(tmp_path, root, sets, val_split="train", shards=None, val_set="davis"):
    return validate_params({
        "train": {"shards": str(shards or tmp_path / "train-shards"), "val_set": val_set, "val_split": val_split,
                  "val_clips": 3},
        "shard_eval": {"output_dir": str(tmp_path / "eval"), "sets": sets}})


@pytest.fixture(scope="module")
def davis(tmp_path_factory):
    root = tmp_path_factory.mktemp("davis")
    return named_davis_set(root, {"train": ["t0", "t1"], "val": ["v0", "v1"]})


def test_selection_on_videos_that_evaluation_scores_is_refused(davis, tmp_path):
    (tmp_path / "hold.txt").write_text("t1\nv1\n")  # a held-out split that (wrongly) contains a scored video
    sets = {"davis": {"layout": "davis", "root": str(davis), "splits": ["hold", "val"],
                      "video_lists": {"hold": str(tmp_path / "hold.txt")}}}
    sharded_set(davis, tmp_path / "eval", "davis", ["hold", "val"], video_lists={"hold": str(tmp_path / "hold.txt")})
    with pytest.raises(DataLeakError, match=r"the validation split \(train.val_set 'davis', val_split 'hold'\) and "
                                            r"shard_eval.sets.davis split 'val' \(scored by evaluation\) share 1 "
                                            r"video\(s\): v1"):
        validation_data(_params(tmp_path, davis, sets, val_split="hold"))


def test_selection_on_videos_another_set_scores_is_refused(davis, tmp_path):
    """Two sets over the same videos: selecting on davis/train while 'copy' scores t1 would leak."""
    (tmp_path / "copy.txt").write_text("t1\n")
    sets = {"davis": {"layout": "davis", "root": str(davis)},
            "copy": {"layout": "davis", "root": str(davis), "splits": ["val"],
                     "video_lists": {"val": str(tmp_path / "copy.txt")}}}
    sharded_set(davis, tmp_path / "eval", "davis", ["train", "val"])
    sharded_set(davis, tmp_path / "eval", "copy", ["val"], video_lists={"val": str(tmp_path / "copy.txt")})
    with pytest.raises(DataLeakError, match=r"'train'\) and shard_eval.sets.copy split 'val' .* share 1 video"):
        validation_data(_params(tmp_path, davis, sets))


def test_training_on_videos_that_evaluation_scores_is_refused(davis, tmp_path):
    sets = {"davis": {"layout": "davis", "root": str(davis)}}
    sharded_set(davis, tmp_path / "eval", "davis", ["train", "val"])
    shards = tmp_path / "train-shards"
    shards.mkdir()
    (shards / "manifest.json").write_text(json.dumps({"video_names": ["t0", "v0", "other"]}))
    with pytest.raises(DataLeakError, match=r"the training videos \(train.shards .*\) and shard_eval.sets.davis "
                                            r"split 'val' \(scored by evaluation\) share 1 video\(s\): v0"):
        validation_data(_params(tmp_path, davis, sets, shards=shards))
    # with validation off, training on scored videos is still refused
    with pytest.raises(DataLeakError, match="the training videos"):
        validation_data(_params(tmp_path, davis, sets, shards=shards, val_set=None))
    (shards / "manifest.json").write_text(json.dumps({"video_names": ["t0", "t1"]}))  # selection data may be seen
    data = validation_data(_params(tmp_path, davis, sets, shards=shards))
    assert data.describe() == {"val_set": "davis", "val_split": "train", "val_clips": 3, "val_videos": 2}


def test_selection_on_the_scored_split_is_refused_by_the_params_schema(davis, tmp_path):
    sets = {"davis": {"layout": "davis", "root": str(davis)}}
    with pytest.raises(ValueError, match=r"train.val_split: davis/val is the split evaluation scores"):
        _params(tmp_path, davis, sets, val_split="val")
    with pytest.raises(ValueError, match=r"train.val_split: 'hold' is not a split of shard_eval.sets.davis"):
        _params(tmp_path, davis, sets, val_split="hold")
    only = {"ytvos": {"layout": "ytvos", "root": "x", "splits": ["train"]}}  # its one split is the scored one
    with pytest.raises(ValueError, match=r"train.val_split: ytvos/train is the split evaluation scores"):
        _params(tmp_path, davis, only, val_set="ytvos")
    with pytest.raises(ValueError, match=r"train.val_set: no evaluation set named 'davis' in shard_eval.sets"):
        validation_data(_params(tmp_path, davis, only))


def test_validation_score_is_high_when_features_separate_the_classes(tmp_path):
    """Flat-coloured class regions: features that see colour cluster each clip well; features that see nothing
    score far lower. (The score is the evaluation's per-clip protocol, on the selected clips.)"""
    root = davis_set(tmp_path / "flat", {"train": [(64, 64), (64, 80)], "val": [(64, 64)]})
    sharded_set(root, tmp_path / "eval", "flat", ["train"], short_side=64, max_clips_per_video=1, frames_per_clip=4)
    params = validate_params({"train": {"shards": str(tmp_path), "val_set": "flat", "val_clips": 2},
                              "shard_eval": {"output_dir": str(tmp_path / "eval"),
                                             "sets": {"flat": {"layout": "davis", "root": str(root),
                                                               "splits": ["train", "val"]}}}})
    data = validation_data(params)
    assert len(data.clips) == 2 and data.num_classes == 4
    seeing, feats = validate(MeanColour(), data, 64, torch.device("cpu"))
    assert seeing.miou > 0.75  # measured 0.82: patch-level features, pixel-level masks
    assert seeing.forwarder_jf > 0.5 and seeing.feature_cosine == 1.0  # measured 0.59; the reference is itself

    class Blind(MeanColour):
        def forward(self, images):
            return torch.randn(images.shape[0], 4, 8, 8, generator=torch.Generator().manual_seed(0))

    blind, _ = validate(Blind(), data, 64, torch.device("cpu"), reference=feats)
    assert blind.miou < seeing.miou - 0.3  # measured 0.15
    assert blind.forwarder_jf < seeing.forwarder_jf - 0.2  # measured 0.01: random correspondences
    assert abs(blind.feature_cosine) < 0.2  # measured 0.02: random features against mean colours


def test_forwarder_jf_is_one_when_the_features_follow_the_mask_and_zero_when_they_stay_put():
    """Each patch has its own orthogonal feature and the scene (two full-height stripes, aligned with the 8-pixel
    patches) rolls one patch right per frame: the Feature-Forwarder carries the first mask exactly to the last
    frame, J = F = 1. Features that stay put while the mask moves carry it to where it was: J = F = 0."""
    h, w, frames = 6, 6, 4
    codes = torch.eye(h * w).reshape(h * w, h, w)
    mask = torch.zeros(h, w, dtype=torch.uint8)
    mask[:, 1:3], mask[:, 4] = 1, 2
    moving = torch.stack([codes.roll(t, dims=-1) for t in range(frames)])
    masks = torch.stack([mask.roll(t, dims=-1) for t in range(frames)]).numpy().repeat(8, 1).repeat(8, 2)
    assert forwarder_jf([moving], [masks], ForwarderSettings()) == 1.0
    still = moving[:1].expand(frames, -1, -1, -1)
    assert forwarder_jf([still], [masks], ForwarderSettings()) == 0.0


def test_feature_cosine_is_the_mean_over_patches():
    f = torch.tensor([[1.0, 0.0], [0.0, 2.0]]).t().reshape(1, 2, 1, 2)  # two patches: (1, 0) and (0, 2)
    r = torch.tensor([[1.0, 1.0], [0.0, -3.0]]).t().reshape(1, 2, 1, 2)  # cosines 1/sqrt(2) and -1
    assert feature_cosine([f], [r]) == pytest.approx((2**-0.5 - 1) / 2)
