"""A stage's life inside a worker: claim, run the engine, record the outcome, advance the run.

Kept apart from Celery so it is tested directly. Every path ends with the stage in a final state
(completed, failed or cancelled) and the run advanced; an exception from the engine becomes a
readable `error` (the traceback is kept separately for the details view). Lost workers and lost
messages are found from the store by `worker.recovery`, whatever broker is used.
"""

import logging
import time
import traceback
from pathlib import Path

from bpnet.errors import BpnetError, RunCancelled
from worker import artifacts, scheduler

log = logging.getLogger(__name__)

EVENT_INTERVAL_S = 1.0        # step events are stored at most this often (all others always)
CANCEL_CHECK_INTERVAL_S = 1.0


class StageProgress:
    """The engine's progress callback: stores events (throttled), updates the stage's fraction,
    message and ETA, and raises RunCancelled once the run was cancelled."""

    def __init__(self, store, stage):
        self.store, self.stage = store, stage
        self.last_store = 0.0
        self.last_cancel_check = 0.0

    def __call__(self, event):
        now = time.time()
        if now - self.last_cancel_check >= CANCEL_CHECK_INTERVAL_S:
            self.last_cancel_check = now
            if self.store.run_status(self.stage["run_id"]) == "cancelled":
                raise RunCancelled(f"run {self.stage['run_id']} was cancelled")
        is_step = event.get("event") in ("step", "preprocess")
        if is_step and now - self.last_store < EVENT_INTERVAL_S:
            return
        self.last_store = now
        self.store.add_event(self.stage["run_id"], self.stage["id"], event)
        updates = {}
        fraction = event_fraction(event)
        if fraction is not None:
            updates["fraction"] = fraction
        if event.get("message"):
            updates["message"] = str(event["message"])[:2000]
        if event.get("eta_s") is not None:
            updates["eta_s"] = float(event["eta_s"])
        if updates:
            self.store.update_stage(self.stage["id"], only_from=("running",), **updates)


def event_fraction(event):
    """0..1 from an event: its `fraction`, else from epoch/step counters."""
    if event.get("fraction") is not None:
        return max(0.0, min(1.0, float(event["fraction"])))
    epoch, epochs = event.get("epoch"), event.get("num_epochs")
    step, steps = event.get("step"), event.get("num_steps")
    if epoch is not None and epochs:
        within = (step / steps) if (step is not None and steps) else 0.0
        return max(0.0, min(1.0, ((epoch - 1) + within) / epochs))
    if step is not None and steps:
        return max(0.0, min(1.0, step / steps))
    return None


def execute_stage(store, config, stage_id, attempt, worker_id, enqueue):
    """Run one delivered stage message; returns the stage's final status (or 'dropped' for a
    stale or duplicate message)."""
    if not store.claim_stage(stage_id, attempt, worker_id):
        log.info("stage %s attempt %s: not queued for this attempt any more; message dropped",
                 stage_id, attempt)
        return "dropped"
    stage = store.stage(stage_id)
    try:
        status = _run_claimed(store, config, stage)
    finally:
        advance_after(store, config, stage, enqueue)
    return status


def _run_claimed(store, config, stage):
    if store.run_status(stage["run_id"]) == "cancelled":
        store.update_stage(stage["id"], status="cancelled", finished_at=time.time(),
                           message="cancelled by the user")
        return "cancelled"
    store.set_run_status(stage["run_id"], "running", only_from=("queued",))
    started = time.time()
    store.add_event(stage["run_id"], stage["id"], {"stage": stage["kind"], "event": "start",
                                                   "message": f"{stage['label']} on {stage['worker_id']}"})
    try:
        parent = _parent(store, config, stage)
        out_dir = artifacts.prepare_stage_dir(config.artifact_root, stage["kind"], stage["key"])
        from worker.stages import run_stage   # the engine (TensorFlow) only inside workers
        outputs, result, metrics = run_stage(stage, parent, out_dir, StageProgress(store, stage),
                                             inputs=_inputs(store, config, stage))
        entries = artifacts.write_manifest(config.artifact_root, out_dir)
        ids = store.add_artifacts(stage["id"], stage["key"], entries)
        if result is not None:
            result = {**result, **_result_artifacts(store, stage, entries, ids, outputs)}
        if metrics:
            store.add_metrics(stage["run_id"], stage["id"], metrics)
        rel = str(out_dir.resolve().relative_to(Path(config.artifact_root).resolve()))
        store.update_stage(stage["id"], only_from=("running",), status="completed", outputs=outputs,
                           result=result, artifact_dir=rel, fraction=1.0, finished_at=time.time(),
                           duration_s=time.time() - started, message="done")
        return "completed"
    except RunCancelled:
        return _finish(store, stage, "cancelled", "cancelled by the user")
    except BpnetError as err:
        return _finish(store, stage, "failed", str(err), traceback.format_exc())
    except Exception as err:   # an engine bug: readable line for the page, traceback for details
        return _finish(store, stage, "failed", f"{type(err).__name__}: {err}", traceback.format_exc())


def _finish(store, stage, status, message, tb=None):
    store.update_stage(stage["id"], status=status, finished_at=time.time(),
                       error=message if status == "failed" else None, traceback=tb, message=message)
    store.add_event(stage["run_id"], stage["id"], {"stage": stage["kind"], "event": status,
                                                   "message": message})
    return status


def _parent(store, config, stage):
    """The stage's parent as a worker.kinds.Parent (None for a first stage)."""
    from worker.stages import parent_of

    if not stage["parent_id"]:
        return None
    parent = store.stage(stage["parent_id"])
    if parent["status"] not in ("completed", "cached") or not parent["artifact_dir"]:
        raise BpnetError(f"parent stage {parent['label']} is {parent['status']}, not completed")
    return parent_of(parent["kind"], Path(config.artifact_root) / parent["artifact_dir"], parent["outputs"])


def _inputs(store, config, stage):
    """{name: Parent} of the finished stages of the same run named in the stage's
    `params["inputs"]` (name -> key); a failed or skipped one is left out."""
    from worker.stages import parent_of

    wanted = (stage["params"] or {}).get("inputs") or {}
    if not wanted:
        return {}
    by_key = {s["key"]: s for s in store.stages(stage["run_id"])}
    found = {}
    for name, key in wanted.items():
        other = by_key.get(key)
        if other and other["status"] in ("completed", "cached") and other["artifact_dir"]:
            found[name] = parent_of(other["kind"], Path(config.artifact_root) / other["artifact_dir"],
                                    other["outputs"])
    return found


def _result_artifacts(store, stage, entries, ids, outputs):
    """Artifact ids of an evaluate result: its own files plus its ancestors' (the deployed model
    first), so the Compare page can link to everything that made the number."""
    chain_ids = list(ids)
    model_artifact = None
    parent_id = stage["parent_id"]
    while parent_id:
        parent = store.stage(parent_id)
        producer = parent["source_stage_id"] or parent["id"]
        arts = store.artifacts_of_stages([producer])
        if model_artifact is None:
            model_artifact = next((a["id"] for a in arts if a["name"] == outputs.get("model")), None)
        chain_ids += [a["id"] for a in arts]
        parent_id = parent["parent_id"]
    return {"model_artifact_id": model_artifact, "artifact_ids": chain_ids}


def advance_after(store, config, stage, enqueue):
    """After a stage ends: advance its run and every run that waited for the same computation."""
    run_ids = [stage["run_id"]] + [r for r in store.runs_waiting_on_key(stage["key"])
                                   if r != stage["run_id"]]
    for run_id in run_ids:
        try:
            scheduler.advance(store, run_id, enqueue, config.artifact_root)
        except Exception:   # one run's bad state must not stop the others from advancing
            log.exception("advancing run %s failed", run_id)
