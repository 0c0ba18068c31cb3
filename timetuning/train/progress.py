"""What a run tells while it trains: ``train_log.csv`` (one row per logged step) and a rounded
progress line every few seconds."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from timetuning.infra.files import write_text_atomic

log = logging.getLogger(__name__)


# per step: the loss, the schedules, throughput and what the step's targets look like; per validation: the
# selection score and the diagnostics that tell collapse, drift and broken correspondences apart
LOG_FIELDS = ("step", "loss", "lr_backbone", "lr_head", "weight_decay", "clips_per_s", "prototypes_used",
              "target_perplexity", "agreement", "val_miou", "forwarder_jf", "feature_cosine")


def write_log_csv(path: Path, rows: list[dict[str, float]]) -> None:
    lines = [",".join(LOG_FIELDS)]
    for r in rows:
        lines.append(",".join("" if r.get(k) is None else f"{r[k]:.6g}" for k in LOG_FIELDS))
    write_text_atomic(path, "\n".join(lines) + "\n")


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class ProgressLog:
    """A rounded progress line in the log every ``every`` seconds: step, loss, clips/s, ETA (validation included)."""

    def __init__(self, total: int, start: int, every: float, enabled: bool = True):
        self.total, self.start, self.every, self.enabled = total, start, every, enabled
        self.started = self.last_time = time.perf_counter()
        self.last_step = start

    def update(self, step: int, loss: float, clips_per_step: int) -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self.last_time < self.every and step < self.total):
            return
        rate = (step - self.last_step) * clips_per_step / max(now - self.last_time, 1e-9)
        eta = (self.total - step) * (now - self.started) / max(step - self.start, 1)
        log.info("step %d/%d (%d%%)  loss %.4f  %.1f clips/s  ETA %s", step, self.total, 100 * step // self.total,
                 loss, rate, format_duration(eta))
        self.last_time, self.last_step = now, step
