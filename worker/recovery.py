"""Finding and repairing what a fault left behind, from the job store (any broker, any fault).

- A stage left `running` by a dead worker (SIGKILL, out of memory, a lost machine) is re-queued
  (up to MAX_ATTEMPTS) or failed. A worker is dead when its row says offline, its pid is gone on
  this host, or it has not heartbeaten for STALE_WORKER_S; a stage is never taken from a worker
  that heartbeats.
- A run whose ready stages were not queued (a worker killed between finishing a stage and
  advancing its run) is advanced; advancing is idempotent.
- A `queued` stage whose message is not waiting in the broker (a restarted Redis, a worker killed
  after taking it, a stage that finished while the broker was away and could not send its child's
  message) gets its message again. `store.mark_sent` lets one worker of many resend it, and a
  duplicate that slips through is dropped by `store.claim_stage`.
Workers run this from their heartbeat thread (`worker.tasks`), so nothing waits for a restart.
"""

import logging
import os
import socket
import time

from bpnet.errors import BpnetError
from worker import scheduler
from worker.execution import advance_after

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 2              # a stage whose worker died twice is failed, not retried forever
STALE_WORKER_S = 120.0        # no heartbeat for this long = the worker is gone
RESEND_GRACE_S = 15.0         # a message sent this recently may still be on its way


def worker_is_gone(worker, now=None, this_host=None):
    """True when a worker row belongs to a dead process: same host and its pid is gone, or no
    heartbeat for STALE_WORKER_S."""
    if worker is None:
        return True
    now = time.time() if now is None else now
    this_host = this_host or socket.gethostname()
    if worker["status"] == "offline":
        return True
    if worker["hostname"] == this_host and not pid_alive(worker["pid"]):
        return True
    return now - worker["heartbeat_at"] > STALE_WORKER_S


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed child not yet reaped) still answers kill(0); it is dead for us.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def stage_is_orphaned(stage, worker, now=None):
    """A running stage whose worker is gone. A stage whose worker has no row at all is only
    orphaned once it is older than STALE_WORKER_S (the row may be a moment from being written)."""
    now = time.time() if now is None else now
    if worker is None:
        return now - (stage["started_at"] or 0.0) > STALE_WORKER_S
    return worker_is_gone(worker, now)


def recover_lost_stages(store, config, enqueue, waiting=None):
    """One recovery pass. `waiting` is the set of (stage_id, attempt) whose messages wait in the
    broker (`worker.celery_app.waiting_messages`); None (unknown) resends nothing.
    Returns {stage_id: 'requeued' | 'failed' | 'cancelled' | 'queued' | 'resent'}."""
    outcome = requeue_orphans(store, config, enqueue)
    # A worker killed between finishing a stage and advancing its run leaves ready stages pending.
    for run_id in store.active_run_ids():
        try:
            for st in scheduler.advance(store, run_id, enqueue, config.artifact_root):
                outcome[st["id"]] = "queued"
        except BpnetError as err:
            log.warning("advancing run %s: %s", run_id, err)
        except Exception:
            log.exception("advancing run %s failed", run_id)
    if waiting is not None:
        outcome.update(resend_missing(store, enqueue, waiting, skip=set(outcome)))
    return outcome


def requeue_orphans(store, config, enqueue):
    workers = {w["id"]: w for w in store.workers()}
    outcome = {}
    for st in store.stages_by_status(("running",)):
        worker = workers.get(st["worker_id"])
        if not stage_is_orphaned(st, worker):
            continue
        if worker is not None and worker["status"] != "offline":
            store.heartbeat(worker["id"], status="offline")
        who = st["worker_id"] or "unknown worker"
        cancelled = store.run_status(st["run_id"]) == "cancelled"
        if st["attempts"] < MAX_ATTEMPTS and not cancelled:
            if store.update_stage(st["id"], only_from=("running",), status="queued",
                                  attempts=st["attempts"] + 1, queued_at=time.time(), worker_id=None,
                                  message=f"re-queued: worker {who} was lost while running it"):
                store.add_event(st["run_id"], st["id"], {"stage": st["kind"], "event": "requeued",
                                                         "message": f"worker {who} lost; attempt "
                                                                    f"{st['attempts'] + 1}"})
                outcome[st["id"]] = "requeued"
                _send(enqueue, {**st, "attempts": st["attempts"] + 1})
            continue
        status = "cancelled" if cancelled else "failed"
        message = ("cancelled by the user (its worker was lost)" if cancelled else
                   f"worker {who} was lost while running this stage (killed or out of memory); "
                   f"{st['attempts']} attempt(s) made")
        if store.update_stage(st["id"], only_from=("running",), status=status, finished_at=time.time(),
                              error=message if status == "failed" else None, message=message):
            outcome[st["id"]] = status
            advance_after(store, config, st, enqueue)
    return outcome


def resend_missing(store, enqueue, waiting, skip=()):
    """Send again the message of every queued stage that has none waiting in the broker."""
    outcome = {}
    not_since = time.time() - RESEND_GRACE_S
    for st in store.stages_by_status(("queued",)):
        if st["id"] in skip or (st["id"], st["attempts"]) in waiting:
            continue
        if store.mark_sent(st["id"], not_since):
            if not _send(enqueue, st):
                break   # the broker is down again: the next pass tries the rest
            outcome[st["id"]] = "resent"
    return outcome


def _send(enqueue, stage):
    try:
        enqueue(stage)
        return True
    except BpnetError as err:   # the broker is unreachable: the stage stays queued
        log.warning("%s", err)
        return False
