"""`dvc repro` of the ingest stages in a real DVC repo: runs, caches, and reruns only what a param change touches."""

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.dvc_repo import dvc, dvc_env, make_repo, ran_stages, run, tiny_params
from tests.media import make_audio, make_phone_video, make_video
from timetuning.data.shards import iter_shard, list_shards

pytestmark = pytest.mark.slow


def test_dvc_repro_ingest_caches_and_reruns_only_what_changed(tmp_path):
    repo = make_repo(tmp_path / "repo", tiny_params())
    first = dvc(repo, "repro", "shard_videos", "shard_eval")
    assert set(ran_stages(first.stdout)) == {"demo_data", "shard_videos", "shard_eval@davis_demo"}
    manifest = json.loads((repo / "data/shards/train/manifest.json").read_text())
    assert manifest["clips_written"] == 4 and manifest["videos_skipped"] == []
    labels = json.loads((repo / "data/shards/eval/davis_demo/labels.json").read_text())
    assert labels["splits"] == {"train": 4, "val": 2}

    second = dvc(repo, "repro", "shard_videos", "shard_eval")
    assert ran_stages(second.stdout) == []

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["shard_videos"]["fps"] = 9
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    third = dvc(repo, "repro", "shard_videos", "shard_eval")
    assert ran_stages(third.stdout) == ["shard_videos"]
    assert json.loads((repo / "data/shards/train/manifest.json").read_text())["params"]["fps"] == 9


def test_dask_ingest_under_a_plain_dvc_repro_reports_to_one_prefect_server(tmp_path):
    """No PREFECT_API_URL (a plain `dvc repro`): one temporary server for the run, shared by the local Dask
    workers, and the same shards and artifact hash as the process pool (the executor is execution-only)."""
    repo = make_repo(tmp_path / "repo", tiny_params())
    dvc(repo, "repro", "shard_videos")
    before = (repo / "dvc.lock").read_text()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["shard_videos"].update(executor="dask", workers=2)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert ran_stages(dvc(repo, "repro", "shard_videos").stdout) == []  # nothing to do: same artifacts
    env = {k: v for k, v in dvc_env().items() if k != "PREFECT_API_URL"}
    proc = subprocess.run([sys.executable, "-m", "stages.shard_videos"], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    assert output.count("Starting temporary server") == 1, output
    assert dvc(repo, "status", "shard_videos").stdout.strip().endswith("up to date.")  # byte-identical shards
    assert (repo / "dvc.lock").read_text() == before


def test_invalid_param_fails_the_stage_naming_the_key(tmp_path):
    repo = make_repo(tmp_path / "repo", tiny_params())
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["shard_videos"]["frames_per_clip"] = 0
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    proc = dvc(repo, "repro", "shard_videos", check=False)
    assert proc.returncode != 0
    assert "shard_videos.frames_per_clip" in proc.stdout + proc.stderr


def _without_root_override() -> None:
    """preexec_fn: a root child loses CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH for good (the bounding set survives
    exec), so permission bits apply to it and to what it starts, as to any user; others need nothing."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _fuzz_set(folder: Path) -> dict[str, str]:
    """Every kind of bad input next to good ones; returns name -> the reason the manifest must give (None: used)."""
    good = make_video(folder / "good.mp4", size="96x64", seconds=2)
    expect = {"good.mp4": None}
    (folder / "empty.mp4").write_bytes(b"")
    expect["empty.mp4"] = "empty file (0 bytes)"
    (folder / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    expect["truncated.mp4"] = "not a readable video (Invalid data found when processing input)"
    (folder / "random.mkv").write_bytes(np.random.default_rng(0).bytes(8192))
    expect["random.mkv"] = "not a readable video ("
    (folder / "notes.webm").write_text("a text file with a video extension\n" * 20)
    expect["notes.webm"] = "not a readable video ("
    make_audio(folder / "audio.mp4")
    expect["audio.mp4"] = "no video stream (only audio)"
    make_audio(folder / "album.mp4", cover_art=True)
    expect["album.mp4"] = "no video stream (only a cover picture and audio)"
    make_video(folder / "one_frame.mp4", size="96x64", frames=1)
    expect["one_frame.mp4"] = "too short: 1 frames at 6 fps, a uniform clip needs 4"
    make_video(folder / "strip.mp4", size="8000x8", seconds=1)
    expect["strip.mp4"] = "aspect ratio 1000:1 (8000x8) is beyond shard_videos.max_aspect_ratio 4:1"
    make_phone_video(folder / "phone.mov", make_video(folder.parent / "upright.mp4", size="64x96", seconds=2))
    expect["phone.mov"] = None
    for name in ("vidéo ü 名前 with space.mp4", "clip:1.mp4"):
        shutil.copy(good, folder / name)
        expect[name] = None
    (folder / "sub").mkdir()
    (folder / "sub" / "loop").symlink_to("..")
    (folder / "locked").mkdir()
    shutil.copy(good, folder / "locked" / "hidden.mp4")
    (folder / "locked").chmod(0)
    return expect


def test_fuzz_set_through_dvc_repro_shard_videos(tmp_path):
    params = tiny_params()
    params["shard_videos"]["input_dir"] = "data/fuzz"
    repo = make_repo(tmp_path / "repo", params)
    fuzz = repo / "data" / "fuzz"
    fuzz.mkdir(parents=True)
    try:
        expect = _fuzz_set(fuzz)
        proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "shard_videos"], cwd=repo, env=dvc_env(),
                              capture_output=True, text=True, preexec_fn=_without_root_override)
    finally:
        (fuzz / "locked").chmod(0o755)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and ran_stages(proc.stdout) == ["shard_videos"], out
    assert "Traceback" not in out
    manifest = json.loads((repo / "data/shards/train/manifest.json").read_text())
    reasons = {Path(s["path"]).name: s["reason"] for s in manifest["videos_skipped"]}
    for name, reason in expect.items():
        if reason is None:
            assert name not in reasons
        else:
            assert reasons[name].startswith(f"data/fuzz/{name}: {reason}"), (name, reasons.get(name))
            assert f"skipped: {reasons[name]}" in out  # the stage's log lists it too
    assert set(reasons) == {n for n, r in expect.items() if r is not None}
    assert manifest["folders_skipped"] == [
        {"path": "data/fuzz/locked", "reason": "data/fuzz/locked: folder not readable (Permission denied); the "
                                               "videos inside it were not seen"},
        {"path": "data/fuzz/sub/loop", "reason": "data/fuzz/sub/loop: a symbolic link loop to data/fuzz, which is "
                                                 "scanned once"}]
    assert manifest["videos_used"] == 4 and manifest["clips_written"] == 8
    clips = {}
    for shard in list_shards(repo / "data/shards/train", "clips"):
        for sample in iter_shard(shard):
            clips[Path(sample["json"]["source"]).name] = sample["json"]
    assert set(clips) == {"good.mp4", "phone.mov", "vidéo ü 名前 with space.mp4", "clip:1.mp4"}
    assert clips["phone.mov"]["source_size"] == [64, 96] and clips["phone.mov"]["size"] == [32, 48]  # upright


def test_timetuning_repro_checks_before_dvc_touches_outputs(tmp_path):
    params = tiny_params()
    params["shard_videos"]["input_dir"] = "data/videos"
    repo = make_repo(tmp_path / "repo", params)
    make_video(repo / "data/videos/a.mp4", size="96x64", seconds=2)
    cli = [sys.executable, "-m", "pipeline.cli", "repro", "shard_videos"]
    first = run(cli, repo)
    assert ran_stages(first.stdout) == ["shard_videos"]
    shards = sorted((repo / "data/shards/train").iterdir())

    # a link DVC cannot hash: named before DVC starts, nothing run
    (repo / "data/videos/self.mp4").symlink_to("self.mp4")
    proc = run(cli, repo, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        "error: shard_videos: data/videos/self.mp4 is a broken or looping link (shard_videos.input_dir): DVC cannot "
        "hash the folder holding it; remove or fix the link", "nothing was run (dvc repro not started)"]
    (repo / "data/videos/self.mp4").unlink()

    # an impossible param: refused naming the key, and the stage's outputs are still there ...
    text = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(text.replace("max_aspect_ratio: 4.0", "max_aspect_ratio: 0.5"))
    proc = run(cli, repo, check=False)
    assert proc.returncode == 1 and "shard_videos.max_aspect_ratio: must be >= 1, got 0.5" \
        in proc.stderr
    assert sorted((repo / "data/shards/train").iterdir()) == shards
    # ... which plain `dvc repro` removes before the stage fails on the same param: why the pre-flight exists
    proc = dvc(repo, "repro", "shard_videos", check=False)
    assert proc.returncode != 0 and not (repo / "data/shards/train/manifest.json").exists()


def _out_of_date(repo: Path) -> dict[str, str]:
    """``dvc status`` of the ingest stages as {stage: what changed}; empty when every one is up to date."""
    out = dvc(repo, "status", "--json", "shard_videos", "shard_eval@davis_demo", "shard_eval@held").stdout
    return {stage: json.dumps(changes, sort_keys=True) for stage, changes in json.loads(out or "{}").items()}


def test_a_list_reruns_only_the_stage_that_reads_it(tmp_path):
    """Each list is a dependency of its reader alone (splits/shard_videos/ of shard_videos, splits/<set>/ of
    shard_eval@<set>): a list added for a set not configured yet, or left anywhere else under splits/, reruns
    nothing; editing one set's list reruns that set's shard_eval and nothing else."""
    params = tiny_params()
    params["shard_videos"]["video_list"] = "splits/shard_videos/train.txt"
    params["shard_eval"]["sets"]["held"] = {"layout": "davis", "root": "data/raw/davis_demo", "splits": ["val"],
                                            "video_lists": {"val": "splits/held/val.txt"}, "short_side": 64,
                                            "frames_per_clip": 2, "max_clips_per_video": 2}
    repo = tmp_path / "repo"
    (repo / "splits/shard_videos").mkdir(parents=True)
    (repo / "splits/shard_videos/train.txt").write_text("synth-train-000\n")
    (repo / "splits/held").mkdir()
    (repo / "splits/held/val.txt").write_text("synth-val-000\n")
    make_repo(repo, params)
    ran = ran_stages(dvc(repo, "repro", "shard_videos", "shard_eval").stdout)
    assert set(ran) == {"demo_data", "shard_videos", "shard_eval@davis_demo", "shard_eval@held"}
    assert json.loads((repo / "data/shards/train/manifest.json").read_text())["video_names"] == ["synth-train-000"]
    assert json.loads((repo / "data/shards/eval/held/labels.json").read_text())["splits"] == {"val": 2}
    assert _out_of_date(repo) == {}

    # a list for a set not added yet (in its own folder, or loose under splits/): nothing is out of date
    (repo / "splits/road").mkdir()
    (repo / "splits/road/val.txt").write_text("synth-val-000\n")
    (repo / "splits/road_val.txt").write_text("synth-val-000\n")
    status = dvc(repo, "status", "shard_videos", "shard_eval")
    print(f"$ dvc status shard_videos shard_eval  # after adding splits/road/val.txt, splits/road_val.txt\n"
          f"{status.stdout}")
    assert status.stdout.strip() == "Data and pipelines are up to date."
    assert _out_of_date(repo) == {}
    assert ran_stages(dvc(repo, "repro", "shard_videos", "shard_eval").stdout) == []

    # one set's list edited: that set's shard_eval alone
    (repo / "splits/held/val.txt").write_text("synth-val-000\nsynth-train-001\n")
    changed = _out_of_date(repo)
    assert list(changed) == ["shard_eval@held"] and "splits/held" in changed["shard_eval@held"]
    assert ran_stages(dvc(repo, "repro", "shard_videos", "shard_eval").stdout) == ["shard_eval@held"]
    assert json.loads((repo / "data/shards/eval/held/labels.json").read_text())["splits"] == {"val": 4}

    # the time-tuning list edited: shard_videos alone
    (repo / "splits/shard_videos/train.txt").write_text("synth-train-000\nsynth-train-001\n")
    assert list(_out_of_date(repo)) == ["shard_videos"]
    assert ran_stages(dvc(repo, "repro", "shard_videos", "shard_eval").stdout) == ["shard_videos"]
    assert json.loads((repo / "data/shards/train/manifest.json").read_text())["video_names"] == [
        "synth-train-000", "synth-train-001"]
