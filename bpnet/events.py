"""Progress events: one small dict per step, epoch or phase.

Every long verb (train, prune, export, calibrate, evaluate) takes an optional `progress` callable
and calls it with a dict such as
    {"stage": "train", "event": "step", "epoch": 3, "step": 120, "loss": 0.41, "eta_s": 95.0}
Required keys: "stage" (the verb) and "event"; everything else is optional and JSON-serialisable.
The CLI turns events into a progress bar and `events.jsonl`; the worker forwards them to the job
store. A callback may raise `bpnet.errors.RunCancelled` to stop the verb at its next step.
"""

import json
import time
from pathlib import Path


def emit(progress, stage, event, **fields):
    """Send one event to `progress` (if any), stamped with the wall-clock time."""
    if progress is not None:
        progress({"stage": stage, "event": event, "time": time.time(), **fields})


class EventLog:
    """Appends events as JSON lines; usable as (or chained into) a progress callback."""

    def __init__(self, path, forward=None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.forward = forward

    def __call__(self, event):
        with self.path.open("a") as f:
            f.write(json.dumps(event, default=str) + "\n")
        if self.forward is not None:
            self.forward(event)


def read_events(path):
    """All events of an events.jsonl file; a torn last line (a killed writer) is skipped."""
    events = []
    path = Path(path)
    if not path.exists():
        return events
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events
