"""Moves runs forward: decides which stages are cached, queued, skipped, and when a run is done.

`advance(store, run_id, enqueue)` is called after a run is created and after each of its stages
finishes (by the task that finished it). It is idempotent and only uses compare-and-set updates,
so two workers advancing the same run at once cannot queue a stage twice. Messages are sent by
`enqueue(stage)` after the stage row is committed as queued (a worker that receives the message
always finds the row).

A stage whose parent is done is
- cached, when a stage with the same cache key completed (in any run) and its artifacts exist;
- left pending, when the same key is being computed by another run (this run is advanced again
  when that one finishes); `store.claim_key` makes this atomic, so N runs submitted at once
  compute a shared stage exactly once;
- left pending, while a stage of the same run it also reads (`params["inputs"]`: name -> key, e.g.
  a gate's FP32 sibling) is not final yet;
- queued otherwise, on the queue its kind needs.
A failed stage skips its descendants; other branches go on; the run ends failed, naming it.
"""

import time
from pathlib import Path

from worker import artifacts
from worker.store import STAGE_DONE, STAGE_FINAL

TRAINING_KINDS = ("train", "retrain")
HEARTBEAT_FRESH_S = 60.0
TENSORRT_KINDS = ("engine",)


def choose_queue(kind, workers, now=None):
    """Engines go to `tensorrt`; training goes to a live GPU worker when there is one; everything
    else to `cpu`."""
    if kind in TENSORRT_KINDS:
        return "tensorrt"
    if kind in TRAINING_KINDS and any("gpu" in w["queues"] for w in live_workers(workers, now)):
        return "gpu"
    return "cpu"


def live_workers(workers, now=None):
    now = time.time() if now is None else now
    return [w for w in workers if w["status"] == "online" and now - w["heartbeat_at"] < HEARTBEAT_FRESH_S]


def advance(store, run_id, enqueue, artifact_root):
    """Bring one run's stages up to date; returns the stages queued by this call."""
    if store.run_status(run_id) in ("completed", "failed", "cancelled"):
        return []
    stages = store.stages(run_id)
    by_id = {s["id"]: s for s in stages}
    workers = None
    queued = []
    for st in stages:
        if st["status"] != "pending":
            continue
        parent = by_id.get(st["parent_id"])
        parent_status = parent["status"] if parent else "completed"
        if parent_status in ("failed", "skipped", "cancelled"):
            if store.update_stage(st["id"], only_from=("pending",), status="skipped",
                                  message=f"not run: {parent['label']} {parent_status}",
                                  finished_at=time.time()):
                st["status"] = "skipped"
            continue
        if parent_status not in STAGE_DONE:
            continue
        if not _inputs_final(st, stages):
            continue
        if _reuse_cached(store, st, artifact_root):
            st["status"] = "cached"
            continue
        if not store.claim_key(st["key"], st["id"]):
            continue   # the same computation is under way in another run; wait for it
        if workers is None:
            workers = store.workers()
        queue = choose_queue(st["kind"], workers)
        if store.update_stage(st["id"], only_from=("pending",), status="queued", queue=queue,
                              attempts=st["attempts"] + 1, queued_at=time.time()):
            st.update(status="queued", queue=queue, attempts=st["attempts"] + 1)
            queued.append(st)
    for st in queued:
        enqueue(st)
    _update_run_status(store, run_id, list(by_id.values()))
    return queued


def _inputs_final(st, stages):
    wanted = set(((st.get("params") or {}).get("inputs") or {}).values())
    return all(s["status"] in STAGE_FINAL for s in stages if s["key"] in wanted)


def _reuse_cached(store, st, artifact_root):
    done = store.completed_stage_with_key(st["key"], exclude_id=st["id"])
    if done is None or not done["artifact_dir"]:
        return False
    if not artifacts.is_complete(Path(artifact_root) / done["artifact_dir"]):
        return False   # the files were deleted: compute again
    return store.update_stage(
        st["id"], only_from=("pending",), status="cached", source_stage_id=done["id"],
        artifact_dir=done["artifact_dir"], outputs=done["outputs"], result=done["result"],
        fraction=1.0, message=f"reused from run {done['run_id']} ({done['label']})",
        finished_at=time.time(), duration_s=0.0)


def _update_run_status(store, run_id, stages):
    statuses = [s["status"] for s in stages]
    if any(s in ("queued", "running") for s in statuses) or "pending" in statuses:
        if any(s not in ("pending", "queued") for s in statuses):
            store.set_run_status(run_id, "running", only_from=("queued",))
        return
    if all(s in STAGE_FINAL for s in statuses):
        failed = [s for s in stages if s["status"] == "failed"]
        if failed:
            names = ", ".join(s["label"] for s in failed)
            first = failed[0]["error"] or "see the stage details"
            store.set_run_status(run_id, "failed", error=f"{len(failed)} stage(s) failed ({names}): {first}",
                                 only_from=("queued", "running"))
        else:
            store.set_run_status(run_id, "running", only_from=("queued",))
            store.set_run_status(run_id, "completed", only_from=("running",))


def cancel(store, run_id):
    """Mark a run cancelled: waiting stages become cancelled at once; running ones stop at their
    next progress event (the worker's callback sees the run status and raises RunCancelled)."""
    if not store.set_run_status(run_id, "cancelled", only_from=("queued", "running")):
        return False
    now = time.time()
    for st in store.stages(run_id):
        if st["status"] in ("pending", "queued"):
            store.update_stage(st["id"], only_from=("pending", "queued"), status="cancelled",
                               finished_at=now, message="cancelled by the user")
    return True
