import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
import yaml
from PIL import Image

from tests.media import make_video
from timetuning.data.ingest import find_videos, scan_videos, shard_videos, video_ids
from timetuning.data.shards import iter_shard, list_shards
from timetuning.infra.config import ShardVideosParams
from timetuning.infra.executors import process_pool_mapper


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    make_video(d / "a.mp4", size="80x60", seconds=2)
    make_video(d / "sub" / "b.webm", size="64x64", seconds=2, codec="libvpx", pix_fmt="yuv420p")
    make_video(d / "sub" / "c.MKV", size="75x49", seconds=2, codec="ffv1", pix_fmt="gray")
    make_video(d / "short.avi", seconds=0.2, codec="mpeg4")
    (d / "empty.mp4").write_bytes(b"")
    (d / "readme.mov").write_text("not a video")
    good = (d / "a.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (d / "notes.txt").write_text("ignored: not a video extension")
    return d


def _params(video_dir, out, **kw):
    return ShardVideosParams(input_dir=str(video_dir), output_dir=str(out), fps=5, size=32, clips_per_video=2,
                             maxcount=4, **kw)


def test_find_videos_recursive_case_insensitive(video_dir):
    names = [p.name for p in find_videos(video_dir, [".mp4", ".webm", ".mkv", ".avi", ".mov"])]
    assert "c.MKV" in names and "b.webm" in names and "notes.txt" not in names
    assert video_ids([video_dir / "sub" / "b.webm"], video_dir) == ["sub_b"]


def test_bad_videos_are_skipped_with_reasons(video_dir, tmp_path):
    manifest = shard_videos(_params(video_dir, tmp_path / "out"), seed=0, progress=False)
    reasons = {r["path"].split("/")[-1]: r["reason"] for r in manifest["videos_skipped"]}
    assert "empty file" in reasons["empty.mp4"]
    assert "not a readable video" in reasons["readme.mov"]
    assert "too short" in reasons["short.avi"]
    assert {"a.mp4", "b.webm", "c.MKV"}.isdisjoint(reasons)
    assert manifest["clips_written"] == 2 * manifest["videos_used"]
    assert sum(s["samples"] for s in manifest["shards"]) == manifest["clips_written"]
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["clips_written"] == manifest["clips_written"]
    # every shard sample is a complete clip
    ds = wds.WebDataset([str(p) for p in list_shards(tmp_path / "out", "clips")], shardshuffle=False).decode("rgb8")
    for sample in ds:
        meta = sample["json"]
        frames = [sample[f"f{t}.jpg"] for t in range(4)]
        assert all(f.shape[:2] == (meta["size"][1], meta["size"][0]) for f in frames)
        assert min(meta["size"]) == 32 and meta["frame_indices"] == sorted(meta["frame_indices"])


def test_output_identical_for_any_worker_count(video_dir, tmp_path):
    shard_videos(_params(video_dir, tmp_path / "w1", workers=1), seed=3, progress=False)
    shard_videos(_params(video_dir, tmp_path / "w2", workers=2), seed=3, progress=False)
    one, two = list_shards(tmp_path / "w1", "clips"), list_shards(tmp_path / "w2", "clips")
    assert len(one) >= 2 and [p.read_bytes() for p in one] == [p.read_bytes() for p in two]
    # a custom ordered mapper (how Dask plugs in) gives the same bytes too
    shard_videos(_params(video_dir, tmp_path / "m"), seed=3, mapper=process_pool_mapper(1), progress=False)
    assert [p.read_bytes() for p in list_shards(tmp_path / "m", "clips")] == [p.read_bytes() for p in one]


def test_dense_sampler_and_no_clip_failure(video_dir, tmp_path):
    manifest = shard_videos(_params(video_dir, tmp_path / "d", sampler="dense", stride=2), seed=0, progress=False)
    assert manifest["clips_written"] > 0
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(video_dir / "short.avi", bad)
    (bad / "x.mp4").write_bytes(b"")
    with pytest.raises(RuntimeError, match="no clip written from 2 video"):
        shard_videos(_params(bad, tmp_path / "bad_out"), seed=0, progress=False)
    assert not list_shards(tmp_path / "bad_out", "clips")
    with pytest.raises(FileNotFoundError, match="shard_videos.input_dir"):
        shard_videos(_params(tmp_path / "nowhere", tmp_path / "o"), seed=0, progress=False)


def test_video_list_selects_videos_by_name_and_the_manifest_names_them(video_dir, tmp_path):
    listed = tmp_path / "train.txt"
    listed.write_text("b\n# a comment\na\n")
    manifest = shard_videos(_params(video_dir, tmp_path / "o", video_list=str(listed)), seed=0, progress=False)
    assert manifest["videos_seen"] == 2 and manifest["video_names"] == ["a", "b"]
    keys = {s["__key__"].split("__")[0] for p in list_shards(tmp_path / "o", "clips") for s in iter_shard(p)}
    assert keys == {"a", "sub_b"}
    listed.write_text("a\nnope\n")
    with pytest.raises(FileNotFoundError, match=r"video_list .*train.txt: 1 listed video\(s\) not found.*nope"):
        shard_videos(_params(video_dir, tmp_path / "o2", video_list=str(listed)), seed=0, progress=False)


def _frame_folder(folder, frames, size=(60, 40), seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for t in range(frames):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{t:05d}.jpg")


def test_frame_folders_are_videos(tmp_path):
    """YouTube-VOS ships videos as JPEG folders: each folder is a video named by the folder, resampled from
    frames_fps to fps without duplicating frames and scaled like a decoded video."""
    root = tmp_path / "JPEGImages"
    _frame_folder(root / "0a1b2c", frames=12)  # 12 frames at 6 fps, resampled to 3 fps: 6 frames
    _frame_folder(root / "ffee00", frames=3, size=(40, 60))
    (root / "empty").mkdir()
    listed = tmp_path / "train.txt"
    listed.write_text("0a1b2c\nffee00\n")
    params = ShardVideosParams(input_dir=str(root), output_dir=str(tmp_path / "o"), input_format="frames",
                               frames_fps=6, fps=3, size=32, clips_per_video=2, video_list=str(listed))
    manifest = shard_videos(params, seed=0, progress=False)
    assert manifest["video_names"] == ["0a1b2c"] and manifest["frames_decoded"] == 6  # ffee00 gave no clip
    samples = [s for p in list_shards(tmp_path / "o", "clips") for s in iter_shard(p)]
    first = [s for s in samples if s["__key__"].startswith("0a1b2c")]
    assert len(first) == 2 and first[0]["json"]["size"] == [48, 32] and first[0]["json"]["fps"] == 3.0
    assert max(first[0]["json"]["frame_indices"]) < 6
    assert [r["path"].split("/")[-1] for r in manifest["videos_skipped"]] == ["ffee00"]  # 2 frames < 4 per clip

    """A real `kill -9` of the stage mid-run: final names hold complete shards only; the rerun cleans up."""
    videos = tmp_path / "videos"
    for i in range(4):
        make_video(videos / f"v{i}.mp4", size="96x64", seconds=3)
    out = tmp_path / "out"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"shard_videos": {
        "input_dir": str(videos), "output_dir": str(out), "fps": 10, "size": 64, "clips_per_video": 3,
        "maxcount": 1, "workers": 1}}))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, "-m", "stages.shard_videos", "--params", str(tmp_path / "params.yaml")],
                            cwd=Path(__file__).resolve().parents[1], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if list_shards(out, "clips") and list(out.glob(".clips-*.tmp")):
            os.kill(proc.pid, signal.SIGKILL)  # at least one shard done, the next one half-written
            break
        time.sleep(0.002)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the stage finished before it could be killed mid-shard"
    assert not (out / "manifest.json").exists()
    complete = list_shards(out, "clips")
    assert complete and list(out.glob(".clips-*.tmp"))  # the partial shard sits under a temporary name only
    for shard in complete:
        samples = list(iter_shard(shard))
        assert len(samples) == 1 and {f"f{t}.jpg" for t in range(4)} | {"json"} <= set(samples[0])
    manifest = shard_videos(ShardVideosParams(input_dir=str(videos), output_dir=str(out), fps=10, size=64,
                                              clips_per_video=3, maxcount=1, workers=1), seed=0, progress=False)
    assert manifest["clips_written"] == 12 and len(list_shards(out, "clips")) == 12
    assert not list(out.glob(".*.tmp"))


def test_scan_follows_folder_links_once_and_lists_loops(tmp_path):
    root = tmp_path / "videos"
    for rel in ("a.mp4", "sub/b.mp4"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "c.mp4").write_bytes(b"x")
    (root / "sub" / "loop").symlink_to("..")  # back to the root: would recurse forever
    (root / "alias").symlink_to("sub")  # a second way into sub
    (root / "linked").symlink_to(outside)  # a dataset linked in from elsewhere: followed
    scan = scan_videos(root, [".mp4"])
    assert [p.relative_to(root).as_posix() for p in scan.paths] == ["a.mp4", "linked/c.mp4", "sub/b.mp4"]
    assert scan.folders_skipped == [
        {"path": f"{root}/alias", "reason": f"{root}/alias: a second link to {root}/sub, which is scanned once"},
        {"path": f"{root}/sub/loop",
         "reason": f"{root}/sub/loop: a symbolic link loop to {root}, which is scanned once"},
    ]


def _scan_unprivileged(root: Path) -> dict:
    """scan_videos as a user that permission bits apply to: root drops to nobody in a forked child."""
    if os.geteuid() != 0:
        scan = scan_videos(root, [".mp4"])
        return {"paths": [str(p) for p in scan.paths], "skipped": scan.folders_skipped}
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            scan = scan_videos(root, [".mp4"])
            os.write(write, json.dumps({"paths": [str(p) for p in scan.paths],
                                        "skipped": scan.folders_skipped}).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        return json.loads(f.read())


def test_unreadable_subfolder_is_listed_with_its_reason():
    shared = Path(tempfile.mkdtemp(prefix="tt-perm-"))  # /tmp: reachable by nobody, unlike pytest's tmp_path
    try:
        shared.chmod(0o755)
        (shared / "locked").mkdir()
        (shared / "open.mp4").write_bytes(b"x")
        (shared / "locked" / "hidden.mp4").write_bytes(b"x")
        assert _scan_unprivileged(shared)["paths"] == [str(shared / "locked" / "hidden.mp4"), str(shared / "open.mp4")]
        (shared / "locked").chmod(0)
        scan = _scan_unprivileged(shared)
        assert scan["paths"] == [str(shared / "open.mp4")]
        assert scan["skipped"] == [{"path": str(shared / "locked"), "reason": f"{shared / 'locked'}: folder not "
                                    "readable (Permission denied); the videos inside it were not seen"}]
    finally:
        (shared / "locked").chmod(0o755)
        shutil.rmtree(shared)


def test_extreme_aspect_is_skipped_and_a_long_video_is_shortened_in_bounded_memory(tmp_path):
    videos = tmp_path / "videos"
    make_video(videos / "good.mp4", size="96x64", rate=10, seconds=2)
    make_video(videos / "strip.mp4", size="8000x8", rate=10, seconds=1)
    (videos / "self.mp4").symlink_to("self.mp4")
    # 512 px short side: a 768x512 RGB frame is 1.125 MiB, so 16 MiB hold 14 of the 20 frames
    params = ShardVideosParams(input_dir=str(videos), output_dir=str(tmp_path / "out"), fps=10, size=512,
                               clips_per_video=2, max_decoded_mib=16)
    manifest = shard_videos(params, seed=0, progress=False)
    reasons = {Path(r["path"]).name: r["reason"] for r in manifest["videos_skipped"]}
    assert reasons == {"strip.mp4": f"{videos}/strip.mp4: aspect ratio 1000:1 (8000x8) is beyond "
                                    "shard_videos.max_aspect_ratio 4:1 (frames would be 512000x512)",
                       "self.mp4": f"{videos}/self.mp4: symbolic link loop"}
    assert manifest["videos_shortened"] == [{
        "path": f"{videos}/good.mp4", "reason": f"{videos}/good.mp4: only the first 14 frames (1.4 s at 10 fps) "
                                                "were used: shard_videos.max_decoded_mib = 16"}]
    assert manifest["frames_decoded"] == 14 and manifest["clips_written"] == 2
    for sample in wds.WebDataset([str(p) for p in list_shards(tmp_path / "out", "clips")], shardshuffle=False):
        assert max(json.loads(sample["json"])["frame_indices"]) < 14


def test_a_long_video_gives_clips_of_a_few_seconds_from_windows_across_it(tmp_path):
    """A 30 s video through ffmpeg at 4 fps (120 frames) with clips of at most 5 s: windows of 21 frames,
    ceil(120 / 21) = 6 of them at 0, 19, 39, 59, 79, 99 (i * 99 // 5); every clip's timestamps lie within 5 s and
    inside its window, the clips reach the video's end, and the manifest states the bound, the windows and the span.
    Without the bound the same video's clips spread over far more than 5 s."""
    make_video(tmp_path / "v" / "long.mp4", size="64x48", rate=10, seconds=30)
    params = ShardVideosParams(input_dir=str(tmp_path / "v"), output_dir=str(tmp_path / "o"), fps=4, size=32,
                               clips_per_video=6, max_clip_seconds=5.0, workers=1)
    manifest = shard_videos(params, seed=0, progress=False)
    assert manifest["max_clip_seconds"] == 5.0 and manifest["params"]["max_clip_seconds"] == 5.0
    [entry] = manifest["clip_spans"]
    assert entry["video_id"] == "long" and entry["seconds"] == 30.0 and entry["windows"] == 6
    metas = [s["json"] for s in iter_shard(list_shards(tmp_path / "o", "clips")[0])]
    starts = [0, 19, 39, 59, 79, 99]
    for meta, start in zip(sorted(metas, key=lambda m: m["clip_index"]), starts):
        ts, idx = meta["timestamps"], meta["frame_indices"]
        assert ts[-1] - ts[0] <= 5.0 and start <= idx[0] and idx[-1] <= start + 20
        assert ts == [round(i / 4, 6) for i in idx]  # 4 fps from 0 s
    assert max(m["timestamps"][-1] for m in metas) > 24.75  # the last window, 24.75-29.75 s, is used
    assert entry["span_seconds"] == max(m["timestamps"][-1] - m["timestamps"][0] for m in metas)
    free = shard_videos(params.model_copy(update={"max_clip_seconds": None, "output_dir": str(tmp_path / "f")}),
                        seed=0, progress=False)
    assert free["max_clip_seconds"] is None and free["clip_spans"][0]["windows"] == 1
    assert free["clip_spans"][0]["span_seconds"] > 10.0  # 4 frames drawn over 30 s
