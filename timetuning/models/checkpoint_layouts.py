"""Named layouts of published checkpoints: where a file keeps the backbone, for each part (student, teacher).

Released self-supervised checkpoints nest their backbone differently. A :class:`CheckpointLayout` describes one
project's files through its *forms* (the ways its files are written, e.g. a Lightning ``.ckpt`` or a bare state
dict): which container sub-dict holds each part, which key prefix forms the part's backbone, and which keys are heads
dropped on purpose. It also names the part the authors' own evaluation uses (``backbone.checkpoint_part: auto``).

Their parts, as the authors' repositories write them (container: prefix; the default is the part the authors
evaluate):

- ``timet`` (TimeT.pth, a flat dict): student ``feature_extractor.backbone.`` (repo Timetuning) or
  ``feature_extractor.model.`` (TimeT_clean); teacher ``teacher.backbone.`` / ``teacher.model.`` where a file has
  one; heads ``feature_extractor.head``, ``mlp_head``, ``prototypes``. Default: student.
- ``leopart`` (Lightning .ckpt): ``state_dict``: student ``model.``, teacher ``teacher.``; heads ``projection_head``,
  ``prototypes``. Default: student.
- ``neco``: Lightning .ckpt as Leopart's (``state_dict``: ``model.`` / ``teacher.``), or a released
  ``*_model.ckpt`` / ``*_teacher.ckpt``: one bare backbone with DINOv2 key names. Default: student.
- ``dino``: the training checkpoint, ``student``: ``module.backbone.`` (heads ``module.head``) and ``teacher``:
  ``backbone.`` (heads ``head``); or the released bare teacher (``dino_deitsmall16_pretrain.pth``). Default: teacher.
- ``timm``: one bare backbone (timm/DeiT key names, also DINOv2 hub files), at the top level or under
  ``state_dict`` / ``model``.
- ``timetuning``: this project's export ``models/timetuned.safetensors`` (a bare timm state dict; its metadata has
  the run's ``fingerprint``), or a training checkpoint ``models/checkpoints/last.pt`` (``model``:
  ``backbone.model.``, heads ``head``: the last step's backbone, not the selected export).

Detection (``backbone.checkpoint_layout: auto``) uses the keys (and a safetensors file's metadata): a form fits when
one of its parts is present (its prefix holds tensors named like the model's) and every tensor of the containers it
opens is a part's or a head's. Bare state dicts (timm) are the fallback when no named layout fits; the bare forms of
neco and dino look exactly like timm's and are taken only when the layout is named. No fit, or fits of several
layouts, is a :class:`~timetuning.models.weights.WeightsError` naming the file and the prefixes found.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

STUDENT, TEACHER, SINGLE = "student", "teacher", "backbone"  # SINGLE: a file's one backbone (no student/teacher)
TOP = None  # the file's top level, as a container

# how a form is found under checkpoint_layout: auto
Detect = Literal["keys", "metadata", "bare", "named"]


@dataclass(frozen=True)
class PartKeys:
    """Where one part's backbone lies: a container of the file and the key prefix that forms the backbone."""

    container: str | None
    """Top-level entry of the file holding the part's tensors (None: the file's top level)."""
    prefixes: tuple[str, ...]
    """Key prefixes (alternatives: a file has exactly one of them) stripped to give the backbone's keys; "" =
    the keys are the backbone's own."""


@dataclass(frozen=True)
class Form:
    """One way a layout's files are written."""

    name: str
    """What it is, for messages and the record (``lightning``, ``bare``, ...)."""
    parts: Mapping[str, PartKeys]
    """The parts (student, teacher, or the file's one backbone) and where each lies."""
    heads: tuple[str, ...] = ()
    """Names of keys (and of dotted key families) in the opened containers that are heads dropped on purpose."""
    detect: Detect = "keys"
    """keys: told from the keys; metadata: by a safetensors metadata entry; bare: the fallback when no named layout
    fits; named: only when backbone.checkpoint_layout names the layout."""
    requires: tuple[str, ...] = ()
    """Heads (names as in ``heads``) that must be present for detection (the layout's signature)."""
    metadata_key: str | None = None
    """For detect=metadata: the safetensors metadata entry that tells this form."""


@dataclass(frozen=True)
class CheckpointLayout:
    name: str
    description: str
    default_part: str
    """The part the authors' evaluation uses (a form with a single part uses that one)."""
    forms: tuple[Form, ...]


def _timet_heads() -> tuple[str, ...]:
    heads = ("feature_extractor.head", "mlp_head", "prototypes")
    return heads + tuple(f"teacher.{h}" for h in heads) + ("teacher.head",)


# a LightningModule with the student as .model and the teacher as .teacher: Lightning saves them under state_dict
LIGHTNING_PARTS = {STUDENT: PartKeys("state_dict", ("model.",)), TEACHER: PartKeys("state_dict", ("teacher.",))}

LAYOUTS: dict[str, CheckpointLayout] = {layout.name: layout for layout in (
    CheckpointLayout(
        "timet", "TimeT (TimeT.pth): a flat dict; the student under feature_extractor.backbone. (repo Timetuning) or "
        "feature_extractor.model. (TimeT_clean), a teacher under teacher.* in some files",
        STUDENT,
        (Form("flat", {STUDENT: PartKeys(TOP, ("feature_extractor.backbone.", "feature_extractor.model.")),
                       TEACHER: PartKeys(TOP, ("teacher.backbone.", "teacher.model.",
                                               "teacher.feature_extractor.backbone.",
                                               "teacher.feature_extractor.model."))},
              heads=_timet_heads()),)),
    CheckpointLayout(
        "leopart", "Leopart (.ckpt, PyTorch Lightning): state_dict with the student under model., the teacher under "
        "teacher.", STUDENT,
        (Form("lightning", LIGHTNING_PARTS, heads=("projection_head", "prototypes"), requires=("prototypes",)),)),
    CheckpointLayout(
        "neco", "NeCo: Lightning .ckpt (state_dict: model. student, teacher. teacher), or the released *_model.ckpt / "
        "*_teacher.ckpt files, each one bare backbone with DINOv2 key names", STUDENT,
        (Form("lightning", LIGHTNING_PARTS),
         Form("released", {SINGLE: PartKeys(TOP, ("",))}, detect="named"))),
    CheckpointLayout(
        "dino", "DINO: the training checkpoint (student: module.backbone., teacher: backbone.; heads head.*), or the "
        "released bare teacher backbone (dino_deitsmall16_pretrain.pth)", TEACHER,
        (Form("training", {STUDENT: PartKeys("student", ("module.backbone.", "backbone.")),
                           TEACHER: PartKeys("teacher", ("backbone.", "module.backbone."))},
              heads=("module.head", "head")),
         Form("pretrain", {TEACHER: PartKeys(TOP, ("",))}, detect="named"))),
    CheckpointLayout(
        "timm", "a bare backbone state dict (timm / DeiT key names, also DINOv2 hub files), at the top level or under "
        "state_dict / model", SINGLE,
        (Form("bare", {SINGLE: PartKeys(TOP, ("",))}, detect="bare"),
         Form("state_dict", {SINGLE: PartKeys("state_dict", ("", "module."))}, detect="bare"),
         Form("model", {SINGLE: PartKeys("model", ("",))}, detect="bare"))),
    CheckpointLayout(
        "timetuning", "this project's files: the export models/timetuned.safetensors (a bare timm state dict whose "
        "metadata names the run), or a training checkpoint models/checkpoints/last.pt (model: backbone.model.*, "
        "head.*; the last step's backbone, not the selected export)", SINGLE,
        (Form("export", {SINGLE: PartKeys(TOP, ("",))}, detect="metadata", metadata_key="fingerprint"),
         Form("checkpoint", {SINGLE: PartKeys("model", ("backbone.model.",))}, heads=("head",),
              requires=("head",)))),
)}

LAYOUT_NAMES = tuple(LAYOUTS)


# --------------------------------------------------------------------------- what was chosen
@dataclass(frozen=True)
class WeightsSource:
    """Which tensors of a weights file became the backbone (recorded in the features' metadata)."""

    weights: str
    """backbone.weights as given."""
    layout: str | None = None
    """The checkpoint layout (None for hub / package / none weights)."""
    form: str | None = None
    part: str | None = None
    """student, teacher, or backbone (a file of one backbone)."""
    container: str | None = None
    """The sub-dict opened (None: the file's top level)."""
    prefix: str = ""
    """The key prefix stripped."""
    tensors: int = 0
    """Tensors loaded into the backbone."""
    dropped: tuple[str, ...] = ()
    """What was left out on purpose: heads, the other part, a classifier the model has no room for."""
    detected: bool = False
    """Whether the layout was told from the file (checkpoint_layout: auto) rather than named."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"dropped": list(self.dropped)}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    def describe(self) -> str:
        if self.layout is None:
            return f"backbone.weights {self.weights}"
        where = f"{self.container}/" if self.container else ""
        how = "detected" if self.detected else "named"
        return (f"backbone.weights {self.weights}: layout {self.layout} ({self.form}, {how}), part {self.part}: "
                f"{self.tensors} tensors from {where}{self.prefix or '(no prefix)'}")


# --------------------------------------------------------------------------- matching a file to a layout
class LayoutError(ValueError):
    """A file that fits no layout, several, or lacks the asked part (the loader raises it as a WeightsError)."""


# DINOv2's own names that timm's ViT renames on loading (its checkpoint_filter_fn): a DINOv2 file still looks
# like a backbone
DINOV2_NAMES = ("mask_token", "register_tokens")


def is_head(key: str, heads: Iterable[str]) -> str | None:
    """The head name a key belongs to (``prototypes`` covers ``prototypes`` and ``prototypes.weight``)."""
    for head in heads:
        if key == head or key.startswith(head + "."):
            return head
    return None


def tensors_of(container: Any) -> dict[str, torch.Tensor]:
    """The tensor entries of a (sub-)dict; anything else (epochs, optimiser states, args) is not weights."""
    if not isinstance(container, dict):
        return {}
    return {k: v for k, v in container.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def backbone_prefix(key: str, model_keys: set[str]) -> str | None:
    """The prefix in front of a model key at a dot boundary (``a.b.blocks.0.norm1.weight`` -> ``a.b.``; a model key
    itself -> ``""``), or None when the key names no tensor of the model."""
    parts = key.split(".")
    for i in range(len(parts)):
        if ".".join(parts[i:]) in model_keys or (i == len(parts) - 1 and parts[i] in DINOV2_NAMES):
            return "".join(p + "." for p in parts[:i])
    return None


@dataclass
class PartFit:
    """A part of a form as found in a file: the prefixes present (exactly one for a usable part) and their keys."""

    part: str
    container: str | None
    keys: dict[str, list[str]] = field(default_factory=dict)  # prefix -> the file's keys under it


@dataclass
class FormFit:
    """How a file's tensors fit one form."""

    layout: CheckpointLayout
    form: Form
    parts: dict[str, PartFit]  # the parts present
    heads: dict[str, list[str]]  # head (``container/name``) -> its keys
    unexplained: list[str]  # tensors (``container/key``) that no part or head accounts for

    @property
    def label(self) -> str:
        return f"{self.layout.name} ({self.form.name})"


def where(container: str | None, key: str = "") -> str:
    """A key as a file has it: ``container/key`` (or the key, at the top level)."""
    return f"{container}/{key}" if container else key


def tensors_count(n: int) -> str:
    return f"{n} tensor" if n == 1 else f"{n} tensors"


def fit_form(layout: CheckpointLayout, form: Form, top: dict, model_keys: set[str]) -> FormFit:
    """The parts of ``form`` present in the file (a prefix whose keys include names of the model's tensors), its
    heads, and the tensors of the containers it opens that nothing accounts for."""
    parts: dict[str, PartFit] = {}
    claimed: set[str] = set()
    for name, spot in form.parts.items():
        tensors = tensors_of(top if spot.container is None else top.get(spot.container))
        found = PartFit(name, spot.container)
        for prefix in spot.prefixes:
            others = [p for p in spot.prefixes if p and p != prefix and p.startswith(prefix)]
            keys = [k for k in tensors if k.startswith(prefix) and not is_head(k, form.heads)
                    and not any(k.startswith(o) for o in others)]
            if any(backbone_prefix(k[len(prefix):], model_keys) == "" for k in keys):
                found.keys[prefix] = keys
                claimed.update(where(spot.container, k) for k in keys)
        if found.keys:
            parts[name] = found
    heads: dict[str, list[str]] = {}
    unexplained = []
    for container in dict.fromkeys(spot.container for spot in form.parts.values()):
        for k in tensors_of(top if container is None else top.get(container)):
            if where(container, k) in claimed:
                continue
            if head := is_head(k, form.heads):
                heads.setdefault(where(container, head), []).append(where(container, k))
            else:
                unexplained.append(where(container, k))
    return FormFit(layout, form, parts, heads, unexplained)


def detected_by(fit: FormFit, metadata: Mapping[str, str]) -> bool:
    """Whether ``checkpoint_layout: auto`` may take this form for the file: a part present, every tensor accounted
    for, the form's signature heads there, and for a metadata form its metadata entry."""
    form = fit.form
    found_heads = {h.split("/")[-1] for h in fit.heads}
    if not fit.parts or fit.unexplained or any(h not in found_heads for h in form.requires):
        return False
    if form.detect == "metadata":
        return form.metadata_key is not None and form.metadata_key in metadata
    return form.detect in ("keys", "bare")


def candidate_prefixes(top: dict, model_keys: set[str], limit: int = 6) -> str:
    """What a file holds, for an error: the prefixes in front of names of the model's tensors, per container."""
    counts: Counter[str] = Counter()
    others: Counter[str] = Counter()
    for container, value in [(None, top)] + [(k, v) for k, v in top.items() if isinstance(v, dict)]:
        for k in tensors_of(value):
            prefix = backbone_prefix(k, model_keys)
            if prefix is None:
                others[where(container, ".".join(k.split(".")[:2]))] += 1
            else:
                counts[where(container, prefix or "(no prefix)")] += 1
    found = ", ".join(f"{p!r} ({tensors_count(n)})" for p, n in counts.most_common(limit)) or "none"
    rest = ", ".join(f"{p!r} ({n})" for p, n in others.most_common(limit)) or "none"
    containers = sorted(k for k, v in top.items() if isinstance(v, dict))
    return f"candidate backbone prefixes {found}; other keys {rest}; sub-dicts {containers or 'none'}"


@dataclass
class Choice:
    """The layout form, part and prefix chosen for a file."""

    fit: FormFit
    part: str
    prefix: str
    detected: bool

    @property
    def container(self) -> str | None:
        return self.fit.parts[self.part].container

    @property
    def keys(self) -> list[str]:
        """The file's keys (in the container) that form the backbone."""
        return self.fit.parts[self.part].keys[self.prefix]


def choose(file: str, top: dict, metadata: Mapping[str, str], model_keys: set[str], layout: str = "auto",
           part: str = "auto") -> Choice:
    """The layout (``auto``: told from the keys), the part (``auto``: the layout's evaluation part) and the prefix
    that form the backbone of ``file``, whose top-level object is ``top``; :class:`LayoutError` names what is
    wrong."""
    if layout == "auto":
        fits = [fit_form(lay, form, top, model_keys) for lay in LAYOUTS.values() for form in lay.forms]
        chosen = [f for f in fits if f.form.detect in ("keys", "metadata") and detected_by(f, metadata)]
        chosen = chosen or [f for f in fits if f.form.detect == "bare" and detected_by(f, metadata)]
        if not chosen:
            raise LayoutError(f"{file}: its keys fit none of the checkpoint layouts {list(LAYOUT_NAMES)}: "
                              f"{candidate_prefixes(top, model_keys)}. Set backbone.checkpoint_layout to the layout "
                              f"it is written in, or write the backbone as a plain state dict")
        if len(chosen) > 1:
            labels = ", ".join(f.label for f in chosen)
            raise LayoutError(f"{file}: its keys fit several checkpoint layouts ({labels}); set "
                              f"backbone.checkpoint_layout to one of them")
        fit, detected = chosen[0], True
    else:
        if layout not in LAYOUTS:
            raise LayoutError(f"backbone.checkpoint_layout: unknown layout {layout!r} (use auto or one of "
                              f"{list(LAYOUT_NAMES)})")
        fits = [f for f in (fit_form(LAYOUTS[layout], form, top, model_keys) for form in LAYOUTS[layout].forms)
                if f.parts]
        if not fits:
            raise LayoutError(f"{file}: not in the {layout} layout ({LAYOUTS[layout].description}): "
                              f"{candidate_prefixes(top, model_keys)}")
        fits = [f for f in fits if not f.unexplained] or fits
        if len(fits) > 1:
            raise LayoutError(f"{file}: fits several forms of the {layout} layout ({', '.join(f.label for f in fits)})")
        fit, detected = fits[0], False
    return Choice(fit, *choose_part(file, fit, part), detected)


def choose_part(file: str, fit: FormFit, part: str) -> tuple[str, str]:
    """The part (``auto``: the layout's evaluation part, or a file's one backbone) and its prefix."""
    form, label = fit.form, fit.label
    if part == "auto":
        want = next(iter(form.parts)) if len(form.parts) == 1 else fit.layout.default_part
    elif part not in form.parts:
        only = next(iter(form.parts))
        holds = "one backbone, not a student and a teacher" if only == SINGLE else f"only the {only}"
        raise LayoutError(f"{file}: backbone.checkpoint_part={part!r}, but a {label} file holds {holds}; leave "
                          f"checkpoint_part auto (or give the file of the {part})")
    else:
        want = part
    if want not in fit.parts:
        spot = form.parts[want]
        why = "the part its authors evaluate" if part == "auto" else "asked by backbone.checkpoint_part"
        raise LayoutError(f"{file}: a {label} file without a {want} ({why}): nothing under "
                          f"{[where(spot.container, p) for p in spot.prefixes]}; it holds {sorted(fit.parts)}: set "
                          f"backbone.checkpoint_part to one of them")
    prefixes = list(fit.parts[want].keys)
    if len(prefixes) > 1:
        raise LayoutError(f"{file}: its {want} is ambiguous: backbone tensors under each of "
                          f"{[where(fit.parts[want].container, p) for p in prefixes]}")
    return want, prefixes[0]
