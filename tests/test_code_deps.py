"""dvc.yaml's code deps are the files each stage imports (no stale cache after a code change), and the layers
only import downward: the library imports neither stages nor pipeline, stages import only the library."""

import ast
import re
from pathlib import Path

from timetuning.infra.dvc_yaml import PACKAGES, ROOT, code_deps, dvc_yaml_problems, imported_files, write_dvc_yaml


def test_every_stage_depends_on_exactly_the_project_files_it_imports():
    assert dvc_yaml_problems() == []


def test_the_walk_follows_lazy_relative_and_package_imports(tmp_path):
    pkg = tmp_path / "timetuning"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from timetuning import b\nfrom . import c\n")
    (pkg / "b.py").write_text("def f():\n    import timetuning.d  # lazy: runs when f does\n")
    (pkg / "c.py").write_text("import numpy\n")
    (pkg / "d.py").write_text("")
    (pkg / "unused.py").write_text("")
    got = {p.name for p in imported_files("timetuning.a", tmp_path)}
    assert got == {"__init__.py", "a.py", "b.py", "c.py", "d.py"}


def test_write_restores_deps_that_were_dropped(tmp_path):
    text = (ROOT / "dvc.yaml").read_text()
    broken = re.sub(r"^      - timetuning/method/forwarder.py\n", "", text, count=1, flags=re.M)  # train's
    assert broken != text
    (tmp_path / "dvc.yaml").write_text(broken)
    for package in PACKAGES:  # code_deps reads the sources next to dvc.yaml
        (tmp_path / package).symlink_to(ROOT / package)
    import timetuning.infra.dvc_yaml as cd

    assert cd.dvc_yaml_problems(tmp_path / "dvc.yaml") == ["train: imports timetuning/method/forwarder.py but does not "
                                                           "depend on it"]
    write_dvc_yaml(tmp_path / "dvc.yaml")
    assert cd.dvc_yaml_problems(tmp_path / "dvc.yaml") == []
    assert "timetuning/method/forwarder.py" in code_deps("stages.train")


def test_a_params_key_left_out_of_a_stage_is_named():
    """shard_videos lists its keys one by one (its execution-only ones are left out): a field of the schema that
    dvc.yaml forgets would change the shards without DVC rerunning the stage."""
    import yaml

    from timetuning.infra.dvc_yaml import param_problems

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert param_problems(stages) == []
    stages["shard_videos"]["params"].remove("shard_videos.max_aspect_ratio")
    stages["shard_videos"]["params"].append("shard_videos.workers")
    assert param_problems(stages) == [
        "shard_videos: params do not list shard_videos.max_aspect_ratio",
        "shard_videos: params list shard_videos.workers, which is not an artifact field of shard_videos"]


def test_the_per_model_probes_leave_the_comparison_keys_to_compare():
    """fit_probes@<set>-<model> lists every fit_probes key but the comparison's, which compare@<set> must list: a
    bootstrap or reference change reruns the comparison, never the probes; progress_seconds is in neither."""
    import yaml

    from timetuning.infra.dvc_yaml import param_problems

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    stages["fit_probes"]["params"] += ["fit_probes.confidence", "fit_probes.progress_seconds"]
    stages["compare"]["do"]["params"].remove("fit_probes.bootstrap_samples")
    stages["extract_features"]["params"].remove("extract_features.models.${item.model}")
    assert param_problems(stages) == [
        "extract_features: params do not list extract_features.models",
        "fit_probes: params list fit_probes.progress_seconds, which is not an artifact field of fit_probes",
        "fit_probes: params list fit_probes.confidence, which compare reads instead",
        "compare: params do not list fit_probes.bootstrap_samples (a key fit_probes leaves to compare)"]


def test_a_key_dvc_yaml_tracks_but_params_yaml_lacks_is_named(tmp_path):
    """DVC refuses to run a stage whose tracked key is missing from params.yaml, whatever the schema's default."""
    import yaml

    from timetuning.infra.dvc_yaml import missing_params

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert missing_params(stages, ROOT / "params.yaml") == []
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    del params["shard_videos"]["video_list"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert missing_params(stages, tmp_path / "params.yaml") == ["shard_videos: params.yaml has no "
                                                                "shard_videos.video_list"]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_layers_import_only_downward():
    for path in sorted((ROOT / "timetuning").rglob("*.py")):
        assert not _imports(path) & {"stages", "pipeline"}, f"{path}: the library imports a caller"
    for path in sorted((ROOT / "stages").rglob("*.py")):
        assert "pipeline" not in _imports(path), f"{path}: a stage imports the pipeline that runs it"


LAYERS = ("infra", "data", "models", "method", "eval", "train", "report", "run")  # bottom to top (docs/architecture.md)


def _library_imports(path: Path) -> set[str]:
    """The timetuning subpackages a file imports (lazy imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules = [node.module]
        else:
            continue
        names |= {m.split(".")[1] for m in modules if m.startswith("timetuning.")}
    return names


def test_the_library_subpackages_import_only_their_own_layer_or_lower():
    """The subpackages are layers: a module imports its own subpackage or one below it (infra < data < models <
    method < eval < train < report < run), never one above; __init__.py files stay empty, so a stage's generated
    code deps are the modules it imports, not whole packages."""
    found = sorted(p.name for p in (ROOT / "timetuning").iterdir() if p.is_dir() and p.name != "__pycache__")
    assert found == sorted(LAYERS)
    upward = []
    for pkg in LAYERS:
        assert (ROOT / "timetuning" / pkg / "__init__.py").read_text() == "", pkg
        for path in sorted((ROOT / "timetuning" / pkg).glob("*.py")):
            upward += [f"{path.relative_to(ROOT)} imports timetuning.{other}" for other in _library_imports(path)
                       if LAYERS.index(other) > LAYERS.index(pkg)]
    assert upward == []


def test_stages_are_thin_entry_points():
    """A stage reads its params section, calls the library and writes its outputs (docs/architecture.md): under 60
    lines, so a decision worth testing lives in timetuning/, where the tests and the other callers reach it."""
    sizes = {p.name: len(p.read_text().splitlines()) for p in sorted((ROOT / "stages").glob("*.py"))}
    assert {name: n for name, n in sizes.items() if n >= 60} == {}


def test_the_module_map_names_every_library_module():
    """docs/architecture.md lists each module of timetuning/ once, under its subpackage, with its concept: a new
    module is added to the map, a moved or removed one leaves it."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    listed = re.findall(r"^  (\w+/\w+)\.py +\S", text, re.M)
    modules = sorted(p.relative_to(ROOT / "timetuning").with_suffix("").as_posix()
                     for p in (ROOT / "timetuning").glob("*/*.py") if p.stem != "__init__")
    assert len(listed) == len(set(listed)) and sorted(listed) == modules
    assert not [p.name for p in (ROOT / "timetuning").glob("*.py") if p.stem != "__init__"]  # every module in one
