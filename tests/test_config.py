import pytest

from timetuning.infra.config import Params, ParamsError, apply_overrides, load_params, validate_params

PROJECT = __import__('pathlib').Path(__file__).resolve().parents[1]


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
    params = validate_params({"shard_eval": {"sets": {"voc12": {"layout": "voc", "root": "x"}}},
                              "train": {"val_set": None}})
    assert params.shard_eval.sets["voc12"].name == "voc12"
    with pytest.raises(ParamsError, match="set name 'bad name'"):
        validate_params({"shard_eval": {"sets": {"bad name": {"layout": "voc", "root": "x"}}}})
    with pytest.raises(ParamsError, match=r"shard_eval\.sets\.v\.layout"):
        validate_params({"shard_eval": {"sets": {"v": {"layout": "coco", "root": "x"}}}})


def test_no_dict_valued_dvc_param_holds_a_key_named_size_or_nfiles():
    """DVC's run cache hashes a stage's params with every key named `size` or `nfiles` left out (to it they are
    file metadata), so changing such a param would restore stale outputs from the run cache (seen with DVC 3.67:
    an eval set's `size` 48 -> 40 restored the 48-px shards). A param DVC tracks as a whole mapping must not hold
    such a key at any depth."""
    import yaml

    from timetuning.infra.config import dump_params, validate_params

    params = yaml.safe_load(dump_params(validate_params({})))
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    sets = params["shard_eval"]["sets"]

    def keys(value, path):
        if isinstance(value, dict):
            for k, v in value.items():
                yield from keys(v, f"{path}.{k}")
        if isinstance(value, list):
            for i, v in enumerate(value):
                yield from keys(v, f"{path}[{i}]")
        yield path

    models = params["extract_features"]["models"]

    def expand(entry):  # a foreach over the sets, a matrix over sets x models
        names = [entry.replace("${key}", k) for k in sets] if "${key}" in entry else [entry]
        names = [n.replace("${item.set}", k) for n in names for k in sets] if "${item.set}" in entry else names
        return [n.replace("${item.model}", m) for n in names for m in models] if "${item.model}" in entry else names

    bad = []
    assert any("${item.model}" in e for s in stages.values() for e in s.get("do", s).get("params", []))
    for stage in stages.values():
        for entry in stage.get("do", stage).get("params", []):
            for name in expand(entry):
                value = params
                for part in name.split("."):
                    value = value[part]
                bad += [k for k in keys(value, name) if k != name and k.rsplit(".", 1)[-1] in ("size", "nfiles")]
    assert bad == []


def _error(data: dict) -> str:
    with pytest.raises(ParamsError) as err:
        validate_params(data)
    lines = str(err.value).splitlines()
    assert len(lines) == 2, lines  # the header and exactly one named problem
    return lines[1].strip()


def test_impossible_combinations_are_refused_naming_the_key():
    # the default backbone (a CNN at output stride 16) at input_size 112 has a 7x7 patch grid: 49 patches
    assert _error({"train": {"input_size": 112, "forwarder_topk": 50}}) == (
        "train.forwarder_topk: 50 is more than the 49 patches a target patch can draw on from its first context "
        "frame (the whole 7x7 patch grid at input_size 112 / stride 16): lower forwarder_topk or raise input_size")
    validate_params({"train": {"input_size": 112, "forwarder_topk": 49}})
    # a ViT's patch size comes from its name (patch8 at 112 px: a 14x14 grid); a window of radius 1 bounds it
    validate_params({"train": {"backbone": {"name": "vit_small_patch8_224"}, "input_size": 112,
                               "forwarder_window_radius": 1, "forwarder_topk": 9}})
    assert ("a window of 3x3 patches, forwarder_window_radius 1): lower forwarder_topk or widen "
            "forwarder_window_radius") in _error(
        {"train": {"backbone": {"name": "vit_small_patch8_224"}, "input_size": 112, "forwarder_window_radius": 1,
                   "forwarder_topk": 10}})
    assert _error({"train": {"crop_scale": [0.9, 0.5]}}) == \
        "train.crop_scale: (0.9, 0.5) must be (min, max) with 0 < min <= max <= 1"
    assert _error({"train": {"crop_scale": [0.0, 0.5]}}).startswith("train.crop_scale: (0, 0.5) must be")
    assert _error({"fit_probes": {"linear_drop_epoch": 25}}) == \
        "fit_probes.linear_drop_epoch: 25 must be below linear_epochs (25), or the learning rate never drops"
    validate_params({"fit_probes": {"linear_drop_epoch": 24}})
    assert _error({"fit_probes": {"hummingbird_k": 50, "hummingbird_memory": 40}}).startswith(
        "fit_probes.hummingbird_k: 50 neighbours cannot come from a memory of hummingbird_memory = 40")
    assert _error({"fit_probes": {"seeds": []}}) == "fit_probes.seeds: at least one seed is needed"
    assert _error({"train": {"val_set": "davis"}}).startswith(
        "train.val_set: no evaluation set named 'davis' in shard_eval.sets (have ['davis_demo'])")
    assert _error({"shard_videos": {"size": 2048, "max_aspect_ratio": 40}}) == (
        "shard_videos.max_aspect_ratio: 40 with size 2048 allows frames 81920 px long, beyond JPEG's 65500")
    assert _error({"shard_videos": {"size": 1024, "max_decoded_mib": 16}}).startswith(
        "shard_videos.max_decoded_mib: 16 MiB cannot hold one clip (4 frames of up to 1024x4096 px)")
    assert _error({"shard_videos": {"extensions": []}}).startswith("shard_videos.extensions: List should have")
    assert _error({"demo_data": {"num_classes": 8}}) == "demo_data.num_classes: must be <= 6, got 8"


def test_a_value_out_of_limits_is_refused_in_words_naming_the_limit():
    assert _error({"train": {"lr_head": 0}}) == "train.lr_head: must be > 0, got 0"
    assert _error({"shard_videos": {"jpeg_quality": 0}}) == "shard_videos.jpeg_quality: must be >= 1, got 0"
    assert _error({"fit_probes": {"confidence": 1.0}}) == "fit_probes.confidence: must be < 1, got 1.0"
    assert _error({"shard_videos": {"crop": "middle"}}) == \
        "shard_videos.crop: must be 'center' or 'none', got 'middle'"
    from timetuning.infra.config import limit_words

    assert [limit_words(gt=0), limit_words(ge=0.0, le=1.0), limit_words(gt=0.5, lt=1.0), limit_words(le=1024)] == [
        "> 0", "between 0 and 1", "> 0.5 and < 1", "<= 1024"]


def test_demo_class_bound_is_the_number_of_synthetic_designs():
    from timetuning.data.synthetic import CLASS_NAMES
    from timetuning.infra.config import DEMO_MAX_CLASSES

    assert DEMO_MAX_CLASSES == len(CLASS_NAMES)


def test_eval_set_classes_and_splits_are_checked():
    base = {"layout": "voc", "root": "x"}
    ok = validate_params({"shard_eval": {"sets": {"v": base | {"classes": ["bg", "car"]}}}, "train": {"val_set": None}})
    assert ok.shard_eval.sets["v"].classes == ["bg", "car"]
    for classes, message in ((["bg"], "needs at least 2 class names"), (["bg", "car", "car"], "duplicate name(s)"),
                             (["bg", " "], "empty name at id(s) [1]")):
        assert message in _error({"shard_eval": {"sets": {"v": base | {"classes": classes}}},
                                  "train": {"val_set": None}})
    assert _error({"shard_eval": {"sets": {"y": {"layout": "ytvos", "root": "x", "classes": ["a", "b"]}}},
                   "train": {"val_set": None}}).startswith(
        "shard_eval.sets.y.classes: a YouTube-VOS set takes its categories from meta.json")
    assert _error({"shard_eval": {"sets": {"v": base | {"splits": ["val", "val"]}}}, "train": {"val_set": None}}) \
        == "shard_eval.sets.v.splits: ['val', 'val'] lists a split twice"


def test_the_export_options_of_the_voc_layout_are_checked():
    base, no_val = {"layout": "voc", "root": "x"}, {"val_set": None}
    ok = validate_params({"shard_eval": {"sets": {"v": base | {"image_dir": "images", "mask_dir": "masks",
                                                                "color_map": {"bg": [0, 0, 0], "car": [250, 50, 83]}}}},
                          "train": no_val})
    assert ok.shard_eval.sets["v"].color_map == {"bg": (0, 0, 0), "car": (250, 50, 83)}
    assert _error({"shard_eval": {"sets": {"d": {"layout": "davis", "root": "x", "mask_dir": "masks"}}},
                   "train": no_val}) == \
        "shard_eval.sets.d.mask_dir: only the voc layout reads it (this set's layout is davis); remove it"
    assert _error({"shard_eval": {"sets": {"v": base | {"color_map": {"bg": [0, 0, 0], "car": [0, 0, 0]}}}},
                   "train": no_val}) == \
        "shard_eval.sets.v.color_map: ['bg', 'car'] share the colour [0, 0, 0]; each class needs its own colour"
    assert _error({"shard_eval": {"sets": {"v": base | {"color_map": {"bg": [0, 0, 0], "car": [0, 256, 0]}}}},
                   "train": no_val}) == "shard_eval.sets.v.color_map.car: [0, 256, 0]: colour channels must be 0-255"


def test_propagation_defaults_are_dinos_and_params_yaml_holds_them():
    from timetuning.infra.config import PropagationParams

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


def _missing_keys(schema, data: dict, where: str) -> list[str]:
    """Schema fields absent from ``data``, walking into sections, mappings of sections and lists of sections."""
    import typing

    from timetuning.infra.config import Section

    def sections(annotation) -> list:
        found = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, Section)]
        return found or [a for arg in typing.get_args(annotation) for a in sections(arg)]

    missing = []
    for name, info in schema.model_fields.items():
        if info.exclude:  # not a key (an eval set's name is its key in shard_eval.sets)
            continue
        if name not in data:
            missing.append(f"{where}{name}")
            continue
        value, annotation = data[name], info.annotation
        if isinstance(annotation, type) and issubclass(annotation, Section) and isinstance(value, dict):
            missing += _missing_keys(annotation, value, f"{where}{name}.")
        elif (inner := sections(annotation)) and isinstance(value, dict):  # name -> section (shard_eval.sets)
            missing += [m for k, v in value.items() for m in _missing_keys(inner[0], v, f"{where}{name}.{k}.")]
        elif inner and isinstance(value, list):  # a list of sections (extract_features.models)
            missing += [m for i, v in enumerate(value) for m in _missing_keys(inner[0], v, f"{where}{name}[{i}].")]
    return missing


def test_params_yaml_names_every_key_and_the_schema_defaults_are_its_values():
    """One fact in one place: params.yaml (the embedded demo's config) writes out every key of the schema, and the
    schema's defaults are exactly its values, so a stage run without params.yaml, the flow's default parameters
    and `dvc repro` all mean the same run. The rule: every field appears at every depth -- each section, the train
    backbone, every eval set (every EvalSetParams field, even those only one layout reads) and every model entry;
    only a field excluded from the dump (an eval set's name, which is its key) is absent. A nested section written
    as null (a model's backbone for a non-custom source) is not walked into. The paper's values live in
    profiles/paper.yaml."""
    import yaml

    data = yaml.safe_load((PROJECT / "params.yaml").read_text())
    assert _missing_keys(Params, data, "") == []
    committed, defaults = load_params(PROJECT / "params.yaml"), Params()
    for section in Params.model_fields:
        assert getattr(committed, section) == getattr(defaults, section), section


def test_a_renamed_train_key_says_its_new_name():
    assert "train: forwarder_window is now called forwarder_window_radius" in _error({"train": {"forwarder_window": 3}})


def test_the_reference_model_must_be_one_of_the_models():
    assert "fit_probes.reference_model: no model named 'dino' in extract_features.models (have ['start', " \
           "'timetuned'])" in _error({"fit_probes": {"reference_model": "dino"}})
    params = validate_params({"fit_probes": {"reference_model": "timetuned"}})
    assert params.reference_model() == "timetuned" and validate_params({}).reference_model() == "start"


def test_max_clip_seconds_must_hold_one_uniform_clip():
    """4 distinct frames at 8 fps need 3/8 s: a bound of 0.3 s is refused naming the key; dense ignores it."""
    from timetuning.infra.config import ShardVideosParams

    assert ShardVideosParams(fps=8, frames_per_clip=4, max_clip_seconds=0.375).max_clip_seconds == 0.375
    with pytest.raises(ValueError, match=r"max_clip_seconds: 0.3 s cannot hold 4 distinct frames at 8 fps"):
        ShardVideosParams(fps=8, frames_per_clip=4, max_clip_seconds=0.3)
    assert ShardVideosParams(fps=8, sampler="dense", max_clip_seconds=0.3).sampler == "dense"
    assert ShardVideosParams(max_clip_seconds=None).max_clip_seconds is None


def test_models_are_a_mapping_by_name_and_their_names_make_stage_names():
    """DVC names the per-model stages extract_features@<set>-<model> from the mapping's keys: the list form of
    earlier versions (DVC would name stages by index) and a name with '-' are refused, saying what to write."""
    listed = _error({"extract_features": {"models": [{"name": "start", "source": "train_start"}]}})
    assert listed.startswith("extract_features.models: a mapping of model name -> {source, backbone}")
    assert "write it as {'start': {'source': 'train_start'}}" in listed
    assert "model name 'my-model' must match [A-Za-z0-9_]+" in _error(
        {"extract_features": {"models": {"my-model": {"source": "train_start"}}}})
    params = validate_params({"extract_features": {"models": {"a": {"source": "train_start"},
                                                              "b": {"source": "train_result"}}}})
    assert [m.name for m in params.extract_features.models.values()] == ["a", "b"]
    assert params.reference_model() == "a" and "name" not in params.model_dump()["extract_features"]["models"]["a"]


def test_the_report_shows_at_most_the_example_clips_fit_probes_keeps():
    from timetuning.infra.config import EXAMPLE_CLIPS

    assert validate_params({"evaluate": {"num_example_clips": EXAMPLE_CLIPS}}).evaluate.num_example_clips == 8
    assert _error({"evaluate": {"num_example_clips": 9}}) == (
        "evaluate.num_example_clips: 9 is more than the 8 clips whose predictions fit_probes keeps (EXAMPLE_CLIPS in "
        "timetuning/infra/config.py)")


def test_fit_probes_progress_seconds_is_execution_only():
    from timetuning.infra.config import FitProbesParams, artifact_fields

    assert "progress_seconds" not in artifact_fields(FitProbesParams)
    assert "fit_probes.progress_seconds" not in (PROJECT / "dvc.yaml").read_text()
