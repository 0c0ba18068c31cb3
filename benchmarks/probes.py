"""Cost of `fit_probes` at real dataset scale: seconds, peak memory and per-frame slope, on synthetic features.

    .venv/bin/python benchmarks/probes.py [--sizes 250 1000 2000] [--quick] [--grid 14] [--dim 384]
                                          [--classes 8] [--mask 224 398] [--vs /path/to/other/checkout]
                                          [--workdir DIR]

For each size (val frames; the train split, on which the linear probe and the retrieval's memory bank are fitted,
has as many) it writes a synthetic labeled set the way the pipeline does: evaluation shards (JPEG frames, class
masks and instance masks in clips of 4 frames, 64-frame videos, masks stored at ``--mask`` as DAVIS 480p is at
short side 224) and two models' Parquet features (``start`` and ``timetuned``, float16, ``--dim`` dims on a
``--grid`` x ``--grid`` patch grid, through :class:`timetuning.eval.feature_store.RowGroupWriter`). Features are the
class mean of each patch's label plus a per-video offset and noise, so k-means, the probes and the propagation have
structure to find. Then it runs `fit_probes` for that set (:func:`timetuning.eval.results.evaluate_set`, the stage's
work: both models, every protocol and robustness variant, the params.yaml defaults: 3 seeds, linear probe,
retrieval, J&F) in a fresh process per size, so the peak RSS is that size's own, and prints seconds, peak RSS,
the share of each protocol, the per-frame slope between consecutive sizes and the least-squares slope over all
sizes. ``--quick`` runs sizes 16 and 32 only (a smoke test of the same protocol; the slope is then dominated by the
fixed per-dataset k-means cost).

``--vs DIR`` runs the same sets with the library of another checkout (e.g. ``git worktree add /tmp/main main``)
in alternation with this one and prints the ratio. DAVIS-2017 val is 30 videos, 1,999 frames; YouTube-VOS val
about 20,000 frames.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLIP_FRAMES, VIDEO_FRAMES = 4, 64
PROTOCOLS = {"timetuning.eval.evaluation": ["fit_split_pca", "group_protocols", "dataset_protocols", "linear_protocol",
                                       "retrieval_protocol", "propagation_protocol"],
             "timetuning.eval.results": ["compare_models"]}


# ---------------------------------------------------------------------------------------------- data
def video_masks(rng: np.random.Generator, frames: int, size: tuple[int, int], classes: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Class and instance masks ``[T, H, W]`` of one video: 1-3 moving rectangles of random classes."""
    h, w = size
    objects = int(rng.integers(1, 4))
    cls = np.zeros((frames, h, w), np.uint8)
    inst = np.zeros((frames, h, w), np.uint8)
    for k in range(objects):
        c = int(rng.integers(1, classes))
        bh, bw = int(rng.integers(h // 5, h // 2)), int(rng.integers(w // 6, w // 3))
        y, x = rng.uniform(0, h - bh), rng.uniform(0, w - bw)
        vy, vx = rng.uniform(-1.5, 1.5), rng.uniform(-3, 3)
        for t in range(frames):
            yy = int(np.clip(y + vy * t, 0, h - bh))
            xx = int(np.clip(x + vx * t, 0, w - bw))
            cls[t, yy:yy + bh, xx:xx + bw] = c
            inst[t, yy:yy + bh, xx:xx + bw] = k + 1
    return cls, inst


def write_set(out: Path, frames: dict[str, int], grid: int, dim: int, classes: int, mask: tuple[int, int],
              models: list[str], seed: int = 0) -> Path:
    """Evaluation shards of every split and each model's features -> ``out/shards/bench``, ``out/features/``."""
    import torch

    from timetuning.data.eval_shards import EvalClip
    from timetuning.data.shards import ShardWriter, encode_jpeg, encode_png
    from timetuning.eval.extraction import clip_rows
    from timetuning.eval.feature_store import RowGroupWriter, feature_schema
    from timetuning.eval.masks import patch_labels
    from timetuning.eval.upsampling import resize_nearest
    from timetuning.infra.files import write_json_atomic

    rng = np.random.default_rng(seed)
    set_dir = out / "shards" / "bench"
    input_size = grid * 16
    means = {m: rng.standard_normal((classes, dim)).astype(np.float32) for m in models}
    schema = feature_schema(dim, "float16", grid, input_size)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    counts = {}
    for split, total in frames.items():
        for m in models:
            (out / "features" / m).mkdir(parents=True, exist_ok=True)
        writers = {m: RowGroupWriter(out / "features" / m / f"{split}.parquet", schema, 65536) for m in models}
        clips = 0
        with ShardWriter(set_dir, prefix=split, maxcount=256) as shards:
            for v, start in enumerate(range(0, total, VIDEO_FRAMES)):
                length = min(VIDEO_FRAMES, total - start)
                cls, inst = video_masks(rng, length, mask, classes)
                offsets = {m: 0.5 * rng.standard_normal(dim).astype(np.float32) for m in models}
                for c, t0 in enumerate(range(0, length, CLIP_FRAMES)):
                    idx = range(t0, min(t0 + CLIP_FRAMES, length))
                    key = f"{split}{v:04d}__c{c:03d}"
                    sample = {"__key__": key}
                    for t, i in enumerate(idx):
                        sample[f"f{t}.jpg"] = encode_jpeg(palette[cls[i]], 90)
                        sample[f"f{t}.png"] = encode_png(cls[i])
                        sample[f"f{t}.inst.png"] = encode_png(inst[i])
                    sample["json"] = json.dumps({"set": "bench", "split": split, "video_id": f"{split}{v:04d}",
                                                 "frame_names": [f"{i:05d}.jpg" for i in idx],
                                                 "size": [mask[1], mask[0]]}, sort_keys=True).encode()
                    shards.write(sample)
                    clip = EvalClip(key, f"{split}{v:04d}", None, cls[list(idx)], inst[list(idx)])
                    labels = patch_labels(resize_nearest(clip.masks, (input_size,) * 2), (grid, grid), classes)
                    labels = np.where(labels == 255, 0, labels)
                    for m in models:
                        noise = 2.0 * rng.standard_normal((len(idx), grid, grid, dim)).astype(np.float32)
                        feats = torch.from_numpy(means[m][labels] + offsets[m] + noise).permute(0, 3, 1, 2)
                        writers[m].write(clip_rows(clip, feats, "bench", split, grid, classes, np.float16,
                                                   input_size, schema))
                    clips += 1
        for w in writers.values():
            w.close()
        counts[split] = clips
    write_json_atomic(set_dir / "labels.json", {
        "classes": [{"id": i, "name": f"class{i}"} for i in range(classes)], "ignore_index": 255,
        "layout": "davis", "splits": counts})
    return set_dir


# ---------------------------------------------------------------------------------------------- one run
def child(workdir: str, code: str, threads: int, overrides: dict) -> None:
    """Run fit_probes' work for the set in ``workdir`` with the library at ``code`` (params.yaml defaults, then
    ``overrides``); print one JSON line."""
    sys.path.insert(0, code)
    import torch

    torch.set_num_threads(threads)
    import timetuning.eval.evaluation  # noqa: F401
    import timetuning.eval.results
    from timetuning.data.eval_shards import read_labels
    from timetuning.infra.config import FitProbesParams

    seconds: dict[str, float] = {}
    grew: dict[str, float] = {}  # MiB the peak RSS rose by while each protocol ran (where the peak is reached)

    def peak_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def timed(module, name):
        function = getattr(module, name)

        def wrapper(*args, **kwargs):
            start, peak = time.perf_counter(), peak_mib()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
                grew[name] = grew.get(name, 0.0) + peak_mib() - peak
        setattr(module, name, wrapper)

    for module_name, names in PROTOCOLS.items():
        for name in names:
            timed(sys.modules[module_name], name)
    work = Path(workdir)
    set_dir = work / "shards" / "bench"
    classes = [c["name"] for c in read_labels(set_dir)["classes"]]
    imports = peak_mib()
    start = time.perf_counter()
    doc, _ = timetuning.eval.results.evaluate_set("bench", set_dir, work / "features", ["train", "val"],
                                             ["start", "timetuned"], "start", classes,
                                             FitProbesParams(**overrides))
    total = time.perf_counter() - start
    metrics = {name: doc["models"]["start"]["protocols"][name]["mean"] for name in
               ("cluster_per_frame", "cluster_per_clip", "cluster_per_dataset", "linear", "hummingbird", "jf_mean")
               if name in doc["models"]["start"]["protocols"]}
    print(json.dumps({"seconds": total, "peak_rss_mib": peak_mib(), "imports_rss_mib": imports,
                      "protocols": seconds, "peak_grew_mib": grew, "metrics": metrics, "code": code}))


def short(name: str) -> str:
    """A protocol function's name without its ``_protocol(s)`` suffix."""
    return name.removesuffix("_protocols").removesuffix("_protocol")


def run_child(workdir: Path, code: Path, threads: int, overrides: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, __file__, "--child", str(workdir), "--code", str(code),
                           "--threads", str(threads), "--overrides", json.dumps(overrides)],
                          capture_output=True, text=True, env=env, cwd=code)
    if proc.returncode:
        raise SystemExit(f"fit_probes failed in {workdir} with {code}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", "--frames", dest="frames", type=int, nargs="+", default=[250, 1000, 2000],
                    help="val frames per size (the train split has as many)")
    ap.add_argument("--quick", action="store_true", help="sizes 16 and 32 only")
    ap.add_argument("--grid", type=int, default=14)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--mask", type=int, nargs=2, default=(224, 398), help="stored mask height, width")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vs", type=Path, default=None, help="another checkout of the project to compare with")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the generated sets here")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a fit_probes parameter for every run, as in params.yaml (e.g. 'robustness_variants=[]')")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--code", default=str(ROOT), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.code, args.threads, json.loads(args.overrides))
    import yaml

    overrides = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    sys.path.insert(0, str(ROOT))
    if args.quick:
        args.frames = [16, 32]
    codes = [ROOT] + ([args.vs.resolve()] if args.vs else [])
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-probes-") as tmp:
        base = args.workdir or Path(tmp)
        for frames in args.frames:
            work = base / f"frames{frames}"
            if not (work / "shards/bench/labels.json").is_file():
                start = time.perf_counter()
                write_set(work, {"train": frames, "val": frames}, args.grid, args.dim, args.classes,
                          tuple(args.mask), ["start", "timetuned"])
                print(f"[{frames} frames: data written in {time.perf_counter() - start:.0f} s]", flush=True)
            for code in codes:
                result = run_child(work, code, args.threads, overrides)
                rows.append((frames, code, result))
                shares = ", ".join(f"{short(k)} {100 * v / result['seconds']:.0f}%" for k, v in sorted(
                    result["protocols"].items(), key=lambda kv: -kv[1]))
                growth = ", ".join(f"{short(k)} +{v:.0f}" for k, v in result["peak_grew_mib"].items() if v >= 1)
                print(f"{frames:6d} frames  {result['seconds']:8.1f} s  {result['peak_rss_mib']:7.0f} MiB  "
                      f"[{code.name}]  {shares}", flush=True)
                print(f"{'':14s}peak RSS: {result['imports_rss_mib']:.0f} MiB after the imports, then {growth}",
                      flush=True)
    print(f"\n{args.grid}x{args.grid} patches x {args.dim} dims, {args.classes} classes, masks {args.mask[0]}x"
          f"{args.mask[1]}, train = val frames, both models, params.yaml defaults"
          f"{' with ' + json.dumps(overrides) if overrides else ''}, {args.threads} threads")
    print("| val frames | code | seconds | peak RSS MiB | s/frame | slope from the previous size, s/frame |")
    print("|---|---|---|---|---|---|")
    previous: dict[Path, tuple[int, float]] = {}
    for frames, code, r in rows:
        slope = ""
        if code in previous and frames != previous[code][0]:
            slope = f"{(r['seconds'] - previous[code][1]) / (frames - previous[code][0]):.3f}"
        previous[code] = (frames, r["seconds"])
        print(f"| {frames} | {code.name} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | "
              f"{r['seconds'] / frames:.3f} | {slope} |")
    for code in codes:
        xs = np.array([f for f, c, _ in rows if c == code], float)
        ys = np.array([r["seconds"] for f, c, r in rows if c == code])
        fit = ""
        if len(xs) >= 2:
            slope, intercept = np.polyfit(xs, ys, 1)
            fit = f"{1e3 * slope:.1f} ms per val frame (+ {intercept:.1f} s fixed); "
        print(f"{code.name}: {fit}metrics of the start model at {int(xs[-1])} frames: "
              f"{json.dumps([r for f, c, r in rows if c == code][-1]['metrics'])}")
    if args.vs:
        for frames in args.frames:
            a, b = (next(r["seconds"] for f, c, r in rows if f == frames and c == code) for code in codes)
            print(f"{frames} frames: {codes[1].name} / {codes[0].name} = {b / a:.2f}x")


if __name__ == "__main__":
    main()
