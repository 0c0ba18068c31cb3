"""Figures of the evaluation report (matplotlib, rendered to PNG bytes): training curves, deltas with their
intervals, per-class IoU, confusion matrices with numbers, and segmentation overlays with a colour legend."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from timetuning.data.labels import IGNORE_INDEX, davis_palette  # noqa: E402
from timetuning.eval.upsampling import resize_nearest  # noqa: E402

PALETTE = np.array(davis_palette(), dtype=np.uint8).reshape(256, 3)


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _series(rows: list[dict[str, str]], key: str, scale: float = 1.0) -> tuple[list[int], list[float]]:
    pairs = [(int(float(r["step"])), scale * float(r[key])) for r in rows if r.get(key) not in (None, "")]
    return [s for s, _ in pairs], [v for _, v in pairs]


def _smoothed(values: list[float], window: int) -> list[float]:
    """Trailing mean over ``window`` values (the first ones over what there is)."""
    sums = np.cumsum([0.0, *values])
    return [(sums[i + 1] - sums[max(0, i + 1 - window)]) / min(i + 1, window) for i in range(len(values))]


def training_curves_png(rows: list[dict[str, str]]) -> bytes | None:
    """What training did, step by step: loss; the targets (prototypes used and their perplexity; the student's
    agreement with them); and at each validation the selection score, the Feature-Forwarder's J&F with the current
    features, and the features' cosine to the starting ones. Per-step series are drawn raw and as a trailing mean
    of 10 steps."""
    steps, loss = _series(rows, "loss")
    if not steps:
        return None
    fig, axes = plt.subplots(2, 3, figsize=(14, 6.4))
    per_step = [(axes[0, 0], "loss", 1.0, "training loss"),
                (axes[0, 1], "prototypes_used", 1.0, "prototypes that are targets (of K)"),
                (axes[0, 2], "agreement", 100.0, "student argmax = target (% of patches)")]
    for ax, key, scale, title in per_step:
        x, y = _series(rows, key, scale)
        if x:
            ax.plot(x, y, color="tab:blue", alpha=0.3, lw=0.8)
            ax.plot(x, _smoothed(y, 10), color="tab:blue")
        ax.set(title=title, xlabel="step")
    x, y = _series(rows, "target_perplexity")
    if x:
        axes[0, 1].plot(x, _smoothed(y, 10), color="tab:orange", label="perplexity of the targets")
        axes[0, 1].legend(loc="best", fontsize=8)
    per_validation = [(axes[1, 0], "val_miou", 100.0, "selection score: per-clip clustering mIoU (x100)"),
                      (axes[1, 1], "forwarder_jf", 100.0, "Feature-Forwarder J&F on the selection clips (x100)"),
                      (axes[1, 2], "feature_cosine", 1.0, "cosine of the features to the start")]
    for ax, key, scale, title in per_validation:
        x, y = _series(rows, key, scale)
        if x:
            ax.plot(x, y, marker="o", color="tab:green")
            ax.axhline(y[0], color="gray", lw=0.8, ls="--")  # the starting model's value
        ax.set(title=title, xlabel="step")
    fig.tight_layout()
    return png(fig)


def deltas_png(series: dict[str, list[tuple[str, float, float, float, bool]]], title: str, reference: str) -> bytes:
    """A forest plot: per protocol each compared model's delta (x100) against ``reference`` with its interval;
    robust deltas filled, others hollow; one colour per model."""
    protocols = list(dict.fromkeys(r[0] for rows in series.values() for r in rows))
    n = len(series)
    fig, ax = plt.subplots(figsize=(7.5, (0.3 + 0.18 * n) * len(protocols) + 1.4))
    colours = plt.get_cmap("tab10")
    for k, (model, rows) in enumerate(series.items()):
        colour = colours(k % 10) if n > 1 else "tab:blue"
        offset = (n - 1) / 2 * 0.22 - k * 0.22
        for name, delta, low, high, robust in rows:
            y = len(protocols) - 1 - protocols.index(name) + offset
            ax.plot([low, high], [y, y], color=colour if robust or n > 1 else "tab:gray", lw=2)
            ax.plot([delta], [y], "o", color=colour if robust else "white",
                    markeredgecolor=colour if robust or n > 1 else "tab:gray", ms=6 if n > 1 else 7,
                    label=model if name == rows[0][0] else None)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(protocols)), list(reversed(protocols)))
    who = "time-tuned" if n == 1 and "timetuned" in series else "model"
    ax.set(title=title, xlabel=f"{who} minus {reference} (x100), 95% interval; filled = robust")
    if n > 1:
        ax.legend(fontsize=8, loc="best")
    return png(fig)


def per_class_png(per_class: dict[str, dict[str, list[float | None]]], classes: list[str]) -> bytes:
    """Grouped bars: per protocol a panel, per class a bar per model (IoU x100)."""
    kinds = sorted({k for v in per_class.values() for k in v})
    fig, axes = plt.subplots(1, len(kinds), figsize=(max(5, 0.5 * len(classes) + 2) * len(kinds), 3.6),
                             squeeze=False)
    width = 0.8 / max(1, len(per_class))
    for ax, kind in zip(axes[0], kinds):
        for i, (model, values) in enumerate(per_class.items()):
            iou = values.get(kind)
            if iou:
                ax.bar(np.arange(len(iou)) + i * width, [100 * (v or 0) for v in iou], width, label=model)
        ax.set_xticks(np.arange(len(classes)) + width * (len(per_class) - 1) / 2, classes, rotation=35, ha="right")
        ax.set(title=f"IoU per class (x100): {kind}", ylim=(0, 100))
        ax.legend(fontsize=8)
    return png(fig)


def confusion_png(confusions: dict[str, np.ndarray], classes: list[str], title: str) -> bytes:
    """Row-normalised confusion matrices (rows: ground truth) with the percentage in every cell."""
    n = len(classes)
    side = max(3.8, 0.45 * n + 1.5)
    fig, axes = plt.subplots(1, len(confusions), figsize=(side * len(confusions) + 0.8, side), squeeze=False)
    image = None
    for ax, (model, conf) in zip(axes[0], confusions.items()):
        conf = np.asarray(conf, dtype=np.float64)
        norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
        image = ax.imshow(100 * norm, cmap="viridis", vmin=0, vmax=100)
        if n <= 25:
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, f"{100 * norm[i, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] < 0.6 else "black")
        ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), classes, fontsize=8)
        ax.set(title=f"{model}: {title}", xlabel="predicted", ylabel="ground truth")
    fig.colorbar(image, ax=axes[0].tolist(), fraction=0.025, label="% of the row")
    return png(fig)


def overlay(frame: np.ndarray, labels: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """The frame with class colours blended in (labels resized to the frame by nearest neighbour); background
    and ignored pixels stay unpainted."""
    up = resize_nearest(labels, frame.shape[:2])
    colour = PALETTE[up].astype(np.float32)
    weight = np.where((up == 0) | (up == IGNORE_INDEX), 0.0, alpha)[..., None]
    return (frame * (1 - weight) + colour * weight).astype(np.uint8)


def segmentation_png(frames: np.ndarray, masks: np.ndarray, predictions: dict[str, np.ndarray],
                     classes: list[str], title: str, frame_names: list[str] | None = None) -> bytes:
    """Rows: the frames of a clip over time (labelled with their index); columns: frame, ground truth, then each
    prediction; a legend of the class colours shown."""
    cols = ["frame", "ground truth", *predictions]
    t = len(frames)
    fig, axes = plt.subplots(t, len(cols), figsize=(2.2 * len(cols), 2.0 * t + 0.6), squeeze=False)
    shown: set[int] = set()
    for i in range(t):
        panels = [frames[i], overlay(frames[i], masks[i])] + [overlay(frames[i], p[i]) for p in predictions.values()]
        shown |= set(np.unique(masks[i]).tolist())
        for p in predictions.values():
            shown |= set(np.unique(p[i]).tolist())
        for j, (ax, img) in enumerate(zip(axes[i], panels)):
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=8)
            if j == 0:
                ax.set_ylabel(f"t={i}" + (f"\n{frame_names[i]}" if frame_names else ""), fontsize=8)
    handles = [Patch(color=PALETTE[c] / 255.0, label=classes[c]) for c in sorted(shown)
               if c not in (0, IGNORE_INDEX) and c < len(classes)]
    fig.suptitle(title, fontsize=9)
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, -0.02))
    return png(fig)


def per_class_values(results: dict[str, Any], protocols: tuple[str, ...] = ("linear", "cluster_per_dataset",
                                                                             "hummingbird")) -> dict:
    """``{model: {protocol: per-class IoU}}`` of the protocols that report one."""
    out: dict[str, dict[str, list]] = {}
    for model, doc in results["models"].items():
        for kind in protocols:
            iou = doc["protocols"].get(kind, {}).get("per_class_iou")
            if iou:
                out.setdefault(model, {})[kind] = iou
    return out
