import pytest

from timetuning.config import Params, ParamsError, apply_overrides, load_params, validate_params


def test_repo_params_yaml_is_valid():
    params = load_params("params.yaml")
    assert isinstance(params, Params)
    assert params.shard_videos.frames_per_clip >= 2


def test_unknown_key_is_named():
    with pytest.raises(ParamsError, match=r"shard_videos\.fps_typo: unknown key"):
        validate_params({"shard_videos": {"fps_typo": 3}})


def test_impossible_values_are_named_with_their_value():
    with pytest.raises(ParamsError) as err:
        validate_params({"shard_videos": {"frames_per_clip": 0, "stride": -1}})
    msg = str(err.value)
    assert "shard_videos.frames_per_clip" in msg and "got 0" in msg
    assert "shard_videos.stride" in msg and "got -1" in msg


def test_wrong_type_is_named():
    with pytest.raises(ParamsError, match=r"train\.steps"):
        validate_params({"train": {"steps": "many"}})


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="no such params file"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "p.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_overrides_apply_and_validate():
    params = apply_overrides(Params(), {"train.steps": 7, "shard_videos.sampler": "dense"})
    assert params.train.steps == 7 and params.shard_videos.sampler == "dense"
    with pytest.raises(ParamsError, match="unknown key 'nope'"):
        apply_overrides(Params(), {"train.nope": 1})
    with pytest.raises(ParamsError, match="shard_videos.sampler"):
        apply_overrides(Params(), {"shard_videos.sampler": "random"})


def test_eval_sets_are_named_by_their_key():
    params = validate_params({"shard_eval": {"sets": {"voc12": {"layout": "voc", "root": "x"}}}})
    assert params.shard_eval.sets["voc12"].name == "voc12"
    with pytest.raises(ParamsError, match="set name 'bad name'"):
        validate_params({"shard_eval": {"sets": {"bad name": {"layout": "voc", "root": "x"}}}})
    with pytest.raises(ParamsError, match=r"shard_eval\.sets\.v\.layout"):
        validate_params({"shard_eval": {"sets": {"v": {"layout": "coco", "root": "x"}}}})


def test_propagation_defaults_are_dinos_and_params_yaml_holds_them():
    from timetuning.config import PropagationParams

    defaults = PropagationParams()
    # facebookresearch/dino eval_video_segmentation.py: --topk 5, --size_mask_neighborhood 12, --n_last_frames 7,
    # affinity exp(cos / 0.1), bilinear upsampling + norm_mask; DAVIS-2017 skips the last frame
    assert (defaults.topk, defaults.window_radius, defaults.context_frames, defaults.temperature) == (5, 12, 7, 0.1)
    assert defaults.upsampling == "bilinear" and defaults.rescale_per_object and not defaults.score_last_frame
    assert load_params("params.yaml").fit_probes.propagation == defaults
    with pytest.raises(ParamsError) as err:
        validate_params({"fit_probes": {"propagation": {"topk": 0, "temperature": 0, "upsampling": "bicubic"}}})
    msg = str(err.value)
    for key in ("topk", "temperature", "upsampling"):
        assert f"fit_probes.propagation.{key}" in msg
