"""The retrieval's neighbour searches side by side: time, recall@k against exact search, and the Hummingbird mIoU
each gives, on the synthetic sets of `benchmarks/probes.py` (and, where present, the demo's real features).

    .venv/bin/python benchmarks/retrieval.py [--frames 500 2000] [--modes exact scann faiss] [--workdir DIR]
                                             [--recall-queries 20000] [--demo data/features/davis_demo]

For each size it writes (or reuses, in ``--workdir``) the probes benchmark's set (train = val frames, 14x14 patches
x 384 dims, float16), fills the start model's memory bank the way `fit_probes` does (``hummingbird_memory``
patches, seed 0) and, per mode, times the index build and the search of every val patch, measures recall@k on the
first ``--recall-queries`` val patches against exact search, and runs the retrieval protocol itself (one seed) for
its mIoU. With ``--demo`` it also measures recall on the demo's real features with the reference's ScaNN setting
(their bank is under the size where `fit_probes` switches ScaNN on, so this is a measurement, not what the demo
runs). Run it alone: the timings share the machine's cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.probes import write_set  # noqa: E402
from timetuning.data.eval_shards import read_labels  # noqa: E402
from timetuning.eval.masks import soft_patch_labels  # noqa: E402
from timetuning.eval.metrics import mean_iou  # noqa: E402
from timetuning.eval.probe_protocols import retrieval_protocol  # noqa: E402
from timetuning.eval.probes import MemoryBank  # noqa: E402
from timetuning.eval.retrieval import REFERENCE_SCANN, ExactSearch, ScannSearch, bank_search  # noqa: E402
from timetuning.eval.split_source import SplitSource  # noqa: E402
from timetuning.eval.upsampling import resize_nearest  # noqa: E402
from timetuning.infra.config import FitProbesParams  # noqa: E402


def bank_and_queries(train: SplitSource, val: SplitSource, classes: int, p: FitProbesParams
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    bank = MemoryBank(train.info.rows, p.hummingbird_memory, p.seeds[0])
    size = train.info.input_size
    for f, clip in train.clips():
        bank.add(f.features, soft_patch_labels(resize_nearest(clip.masks, (size, size)), train.info.grid, classes))
    queries = torch.cat([torch.nn.functional.normalize(f.features.permute(0, 2, 3, 1).reshape(-1, val.info.dim),
                                                       dim=1) for f in val.feature_clips()])
    return bank.tensors()[0], queries


def recall(rows: torch.Tensor, truth: torch.Tensor) -> float:
    hits = (rows[:, :, None] == truth[:, None, :]).any(2).float().mean(1)
    return float(hits.mean())


def compare(name: str, bank: torch.Tensor, queries: torch.Tensor, modes: list[str], k: int, recall_queries: int,
            protocol=None) -> list[dict]:
    sample = queries[:recall_queries]
    _, truth = ExactSearch(bank).search(sample, k)
    rows = []
    for mode in modes:
        start = time.perf_counter()
        search = bank_search(bank, mode, k, seed=0)
        built = time.perf_counter() - start
        start = time.perf_counter()
        search.search(queries, k)
        searched = time.perf_counter() - start
        _, found = search.search(sample, k)
        row = {"set": name, "mode": mode, "bank": len(bank), "queries": len(queries), "build_s": built,
               "search_s": searched, f"recall@{k}": recall(found, truth), "how": search.description}
        if protocol is not None:
            start = time.perf_counter()
            row["miou"] = protocol(mode)
            row["protocol_s"] = time.perf_counter() - start
        rows.append(row)
        print(f"  {mode:6s} build {built:6.1f} s  search {searched:7.1f} s  recall@{k} {row[f'recall@{k}']:.3f}"
              + (f"  mIoU {100 * row['miou']:.2f} ({row['protocol_s']:.0f} s)" if "miou" in row else ""),
              flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, nargs="+", default=[500, 2000])
    ap.add_argument("--modes", nargs="+", default=["exact", "scann", "faiss"])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench"))
    ap.add_argument("--recall-queries", type=int, default=20_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--demo", type=Path, default=None, help="a demo features folder (<set>/<model>/{train,val})")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    p = FitProbesParams(seeds=[0])
    results = []
    for frames in args.frames:
        work = args.workdir / f"frames{frames}"
        if not (work / "shards/bench/labels.json").is_file():
            write_set(work, {"train": frames, "val": frames}, 14, 384, 8, (224, 398), ["start", "timetuned"])
        set_dir = work / "shards/bench"
        classes = len(read_labels(set_dir)["classes"])
        train = SplitSource(work / "features/start/train.parquet", set_dir, "train")
        val = SplitSource(work / "features/start/val.parquet", set_dir, "val")
        bank, queries = bank_and_queries(train, val, classes, p)
        print(f"{frames} frames: bank {len(bank):,} x {bank.shape[1]}, {len(queries):,} queries", flush=True)

        def protocol(mode, train=train, val=val, classes=classes):
            result = retrieval_protocol(train, val, classes, p.model_copy(update={"hummingbird_search": mode}), 0)
            return float(np.mean([mean_iou(c) for c in result.scores["hummingbird"].confusion.sum(1)]))

        results += compare(f"probes set, {frames} frames", bank, queries, args.modes, p.hummingbird_k,
                           args.recall_queries, protocol)
        train.close()
        val.close()
    if args.demo:
        for model_dir in sorted(d for d in args.demo.iterdir() if d.is_dir()):
            set_dir = ROOT / "data/shards/eval" / args.demo.name
            classes = len(read_labels(set_dir)["classes"])
            train = SplitSource(model_dir / "train.parquet", set_dir, "train")
            val = SplitSource(model_dir / "val.parquet", set_dir, "val")
            bank, queries = bank_and_queries(train, val, classes, p)
            sample = queries[:args.recall_queries]
            _, truth = ExactSearch(bank).search(sample, p.hummingbird_k)
            start = time.perf_counter()
            found = ScannSearch(bank, p.hummingbird_k, 0, REFERENCE_SCANN).search(sample, p.hummingbird_k)[1]
            r = recall(found, truth)
            print(f"demo {model_dir.name}: bank {len(bank):,} x {bank.shape[1]} (real features), reference ScaNN "
                  f"recall@{p.hummingbird_k} {r:.3f} ({time.perf_counter() - start:.1f} s)", flush=True)
            results.append({"set": f"demo {model_dir.name}", "mode": "scann (forced)", "bank": len(bank),
                            f"recall@{p.hummingbird_k}": r})
    k = p.hummingbird_k
    print(f"\n| set | search | bank | queries | build s | search s | recall@{k} | mIoU x100 | protocol s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        def fmt(key, spec):
            return format(r[key], spec) if key in r else ""
        print(f"| {r['set']} | {r['mode']} | {r['bank']:,} | {fmt('queries', ',')} | {fmt('build_s', '.1f')} | "
              f"{fmt('search_s', '.1f')} | {r[f'recall@{k}']:.3f} | "
              f"{format(100 * r['miou'], '.2f') if 'miou' in r else ''} | {fmt('protocol_s', '.0f')} |")


if __name__ == "__main__":
    main()
