"""Evaluation reports: metrics people compare across runs, plots, and pictures of segmentations.

Writes ``metrics.json`` (flat numbers per model x set x protocol, plus time-tuned minus start deltas, for
``dvc metrics diff`` / ``dvc exp show``), ``report.md`` and a self-contained ``report.html`` (images embedded as
base64, no CDN: it opens offline), PNG figures, and CSVs for DVC plots.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from timetuning.files import atomic_path, write_text_atomic  # noqa: E402
from timetuning.synthetic import davis_palette  # noqa: E402

PROTOCOLS = (("cluster_per_frame", "Clustering per frame"), ("cluster_per_clip", "Clustering per clip"),
             ("cluster_per_dataset", "Clustering per dataset"), ("linear", "Linear probe"),
             ("hummingbird", "Hummingbird retrieval"), ("temporal_stability_per_frame", "Stability (per-frame clusters)"),
             ("temporal_stability_per_clip", "Stability (per-clip clusters)"),
             ("temporal_clip_minus_frame_miou", "Per-clip minus per-frame mIoU"))


def headline(value: Any) -> float | None:
    """The one number of a protocol result (mean over seeds, or mIoU)."""
    if isinstance(value, dict):
        value = value.get("mean", value.get("miou"))
    if not isinstance(value, (int, float)) or isinstance(value, bool) or np.isnan(value):
        return None
    return float(value)


def flat_metrics(results: dict[str, Any], baseline: str = "start", tuned: str = "timetuned") -> dict[str, Any]:
    """``{model: {set: {protocol: number}}}`` plus ``delta`` (tuned - baseline) where both exist."""
    out: dict[str, Any] = {}
    for model, sets in results.items():
        for name, protocols in sets.items():
            row = {k: headline(v) for k, v in protocols.items() if headline(v) is not None and k not in
                   ("scored_on", "fitted_on")}
            out.setdefault(model, {})[name] = row
    if baseline in out and tuned in out:
        delta: dict[str, Any] = {}
        for name, row in out[tuned].items():
            base = out[baseline].get(name, {})
            delta[name] = {k: v - base[k] for k, v in row.items() if k in base}
        out["delta"] = delta
    return out


def protocol_names(results: dict[str, Any]) -> list[tuple[str, str]]:
    seen = {k for sets in results.values() for protocols in sets.values() for k in protocols}
    over = sorted((k for k in seen if k.startswith("overcluster_k")), key=lambda k: int(k[len("overcluster_k"):]))
    names = [(k, label) for k, label in PROTOCOLS if k in seen]
    return names[:3] + [(k, f"Overclustering K={k[len('overcluster_k'):]}") for k in over] + names[3:]


# ---------------------------------------------------------------------------------------------- figures
def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def training_curves_png(rows: list[dict[str, str]]) -> bytes | None:
    steps = [int(r["step"]) for r in rows if r.get("loss")]
    if not steps:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    axes[0].plot(steps, [float(r["loss"]) for r in rows if r.get("loss")])
    axes[0].set(title="training loss", xlabel="step")
    axes[1].plot(steps, [float(r["clips_per_s"]) for r in rows if r.get("loss")])
    axes[1].set(title="throughput (clips/s)", xlabel="step")
    val = [(int(r["step"]), float(r["val_miou"])) for r in rows if r.get("val_miou")]
    if val:
        axes[2].plot(*zip(*val), marker="o")
    axes[2].set(title="validation per-clip clustering mIoU", xlabel="step")
    return _png(fig)


def per_class_png(results: dict[str, Any], set_name: str, classes: list[str]) -> bytes:
    kinds = [k for k in ("linear", "cluster_per_dataset", "hummingbird")
             if any(k in results[m].get(set_name, {}) and "per_class_iou" in results[m][set_name][k] for m in results)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 3.4), squeeze=False)
    width = 0.8 / max(1, len(results))
    for ax, kind in zip(axes[0], kinds):
        for i, model in enumerate(results):
            iou = results[model].get(set_name, {}).get(kind, {}).get("per_class_iou")
            if iou:
                ax.bar(np.arange(len(iou)) + i * width, [v or 0 for v in iou], width, label=model)
        ax.set_xticks(np.arange(len(classes)) + width * (len(results) - 1) / 2, classes, rotation=30, ha="right")
        ax.set(title=f"per-class IoU: {kind}", ylim=(0, 1))
        ax.legend()
    return _png(fig)


def confusion_png(results: dict[str, Any], set_name: str, classes: list[str], kind: str = "linear") -> bytes | None:
    models = [m for m in results if "confusion" in results[m].get(set_name, {}).get(kind, {})]
    if not models:
        return None
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        conf = np.array(results[model][set_name][kind]["confusion"], dtype=np.float64)
        norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
        ax.imshow(norm, cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set(title=f"{model}: {kind} (rows: truth)", xlabel="predicted")
    return _png(fig)


def colorize(labels: np.ndarray) -> np.ndarray:
    palette = np.array(davis_palette(), dtype=np.uint8).reshape(256, 3)
    return palette[labels]


def overlay(frame: np.ndarray, labels: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Frame with class colours blended in (labels upsampled to the frame by nearest neighbour)."""
    h, w = frame.shape[:2]
    rows = np.arange(h) * labels.shape[0] // h
    cols = np.arange(w) * labels.shape[1] // w
    up = labels[rows][:, cols]
    colour = colorize(up).astype(np.float32)
    weight = np.where((up == 0) | (up == 255), 0.0, alpha)[..., None]  # background and ignore stay unpainted
    return (frame * (1 - weight) + colour * weight).astype(np.uint8)


def segmentation_png(frames: np.ndarray, masks: np.ndarray, predictions: dict[str, np.ndarray]) -> bytes:
    """Rows: frames of a clip over time; columns: frame, ground truth, then each model x method overlay."""
    cols = ["frame", "ground truth", *predictions]
    fig, axes = plt.subplots(len(frames), len(cols), figsize=(2.1 * len(cols), 2.0 * len(frames)), squeeze=False)
    for t in range(len(frames)):
        panels = [frames[t], overlay(frames[t], masks[t])] + [overlay(frames[t], p[t]) for p in predictions.values()]
        for ax, img, title in zip(axes[t], panels, cols):
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if t == 0:
                ax.set_title(title, fontsize=8)
    return _png(fig)


def square_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """A frame resized to ``size`` x ``size``, as the models saw it."""
    return np.asarray(Image.fromarray(frame).resize((size, size), Image.BILINEAR))


def example_figures(set_name: str, clips: list, examples: dict[str, Any], size: int) -> list[tuple[str, bytes]]:
    """One overlay figure per example clip: ground truth, then each model's clusters and linear probe over time.

    ``clips``: the evaluation clips (frames, masks) in order; ``examples``: per model, the stored predictions of
    those clips' frames concatenated, with ``frames_of_clip`` giving each clip's frame count.
    """
    from timetuning.features import resize_masks  # here, not at the top: features imports torch

    figures = []
    start = 0
    counts = next(iter(examples.values()))["frames_of_clip"]
    for i, (clip, n) in enumerate(zip(clips, counts)):
        preds = {}
        for model, ex in examples.items():
            preds[f"{model} clusters"] = ex["cluster_per_clip"][start:start + n]
            if "linear" in ex:
                preds[f"{model} linear"] = ex["linear"][start:start + n]
        frames = np.stack([square_frame(f, size) for f in clip.frames])
        figures.append((f"{set_name}_clip{i}.png", segmentation_png(frames, resize_masks(clip.masks, size), preds)))
        start += n
    return figures


# ---------------------------------------------------------------------------------------------- documents
def metrics_table(flat: dict[str, Any], set_name: str, names: list[tuple[str, str]]) -> list[list[str]]:
    models = [m for m in flat if m != "delta"]
    header = ["protocol", *models] + (["delta (time-tuned - start)"] if "delta" in flat else [])
    rows = [header]
    for key, label in names:
        row = [label]
        for m in models:
            v = flat[m].get(set_name, {}).get(key)
            row.append("-" if v is None else f"{100 * v:.1f}" if "stability" not in key else f"{v:.3f}")
        if "delta" in flat:
            d = flat["delta"].get(set_name, {}).get(key)
            row.append("-" if d is None else (f"{100 * d:+.1f}" if "stability" not in key else f"{d:+.3f}"))
        rows.append(row)
    return rows


PER_CLASS_PROTOCOLS = (("linear", "linear"), ("cluster_per_dataset", "clusters"), ("hummingbird", "retrieval"))


def per_class_table(results: dict[str, Any], set_name: str, classes: list[str]) -> list[list[str]]:
    """Per-class IoU (x100) of every model for the protocols that report one; a column per protocol x model."""
    columns = [(kind, label, model) for kind, label in PER_CLASS_PROTOCOLS for model in results
               if results[model].get(set_name, {}).get(kind, {}).get("per_class_iou")]
    rows = [["class", *[f"{label} {model}" for _, label, model in columns]]]
    for c, name in enumerate(classes):
        row = [name]
        for kind, _, model in columns:
            iou = results[model][set_name][kind]["per_class_iou"]
            row.append("-" if c >= len(iou) or iou[c] is None else f"{100 * iou[c]:.1f}")
        rows.append(row)
    return rows

def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(out_dir: Path, title: str, intro: list[str], sections: list[tuple[str, list[list[str]] | None,
                 list[tuple[str, bytes]]]]) -> None:
    """report.md (figures as files under figures/) and a self-contained report.html (figures inline)."""
    fig_dir = out_dir / "figures"
    md = [f"# {title}", "", *intro, ""]
    parts = [f"<h1>{html.escape(title)}</h1>"] + [f"<p>{html.escape(line)}</p>" for line in intro if line]
    for heading, table, figures in sections:
        md += [f"## {heading}", ""]
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if table:
            md += [markdown_table(table), ""]
            parts.append(html_table(table))
        for name, png in figures:
            with atomic_path(fig_dir / name) as tmp:
                tmp.write_bytes(png)
            md += [f"![{name}](figures/{name})", ""]
            data = base64.b64encode(png).decode()
            parts.append(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{html.escape(name)}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #bbb;padding:4px 10px;text-align:right}td:first-child,"
             "th:first-child{text-align:left}img{max-width:100%}figure{margin:1em 0}")
    doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
    write_text_atomic(out_dir / "report.md", "\n".join(md) + "\n")
    write_text_atomic(out_dir / "report.html", doc)


def write_per_class_csv(path: Path, results: dict[str, Any], set_name: str, classes: list[str]) -> None:
    """Long-form per-class IoU for `dvc plots` (x: class, y: iou, one series per model x protocol)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["set", "model", "protocol", "class", "iou"])
        for model in results:
            for kind in ("linear", "cluster_per_dataset", "hummingbird"):
                iou = results[model].get(set_name, {}).get(kind, {}).get("per_class_iou") or []
                for c, v in zip(classes, iou):
                    w.writerow([set_name, model, kind, c, "" if v is None else f"{v:.6f}"])
