"""What fit_probes tells while it works: a rounded progress line every few seconds (``fit_probes.progress_seconds``)
saying which model and protocol it is in and how far, so a long evaluation's log is never silent.

``fit_probes@davis-start: linear probe, epoch 12/25 (step 4 of 6), 6 min elapsed``

The protocols run as they are: how far one has come is counted from the clips it reads (every protocol checks each
clip of its split as it reads it: :attr:`~timetuning.eval.split_source.SplitSource.on_clip`); a line comes from a
timer thread, so it comes on time during a long k-means too.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


def format_elapsed(seconds: float) -> str:
    """Rounded: ``40 s``, ``6 min``, ``1 h 05 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class EvalProgress:
    """The progress of one stage through its protocols, logged every ``every`` seconds (and at each protocol's
    start) as ``<what>: <protocol>, <how far> (step i of n), <elapsed> elapsed``."""

    def __init__(self, what: str, every: float, protocols: int = 0):
        self.what, self.every, self.protocols = what, every, protocols
        self.started = time.perf_counter()
        self.lock = threading.Lock()
        self.index, self.name, self.unit, self.total, self.passes, self.count = 0, "starting", "", 0, 1, 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start_protocol(self, name: str, clips: int, passes: int = 1, unit: str = "clip") -> None:
        """A protocol begins that reads ``clips`` clips ``passes`` times (``unit``: ``clip``, or ``epoch`` when each
        pass is an epoch)."""
        with self.lock:
            self.index += 1
            self.name, self.total, self.passes, self.unit, self.count = name, clips, passes, unit, 0
        self.log_line()

    def clip_read(self) -> None:
        with self.lock:
            self.count += 1

    def line(self) -> str:
        with self.lock:
            if self.unit == "epoch" and self.total:
                where = f", epoch {min(self.passes, self.count // self.total + 1)}/{self.passes}"
            elif self.total:
                where = f", clip {min(self.count, self.total * self.passes)}/{self.total * self.passes}"
            else:
                where = ""
            of = f" (step {self.index} of {self.protocols})" if self.protocols and self.index else ""
            name = self.name
        return f"{self.what}: {name}{where}{of}, {format_elapsed(time.perf_counter() - self.started)} elapsed"

    def log_line(self) -> None:
        log.info("%s", self.line())

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.log_line()

    def __enter__(self) -> EvalProgress:
        self._thread = threading.Thread(target=self._run, name="fit-probes-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
