"""Celery tasks (thin): each takes ids, and the store decides everything else.

`run_stage(stage_id, attempt)` claims the stage in the store (a duplicate or stale message is
dropped there), runs one engine verb through `worker.execution` and advances the run, which sends
the messages of the stages that became ready. No task waits on another task.
The worker process registers itself with its capabilities and keeps a heartbeat (and looks for
stages of dead workers) from a background thread.
"""

import logging
import os
import socket
import threading
import uuid

from celery import signals

from worker.celery_app import RUN_STAGE_TASK, enqueue_stage, get_app
from worker.config import load_config
from worker.store import open_store

log = logging.getLogger(__name__)
HEARTBEAT_INTERVAL_S = 10.0
RECOVERY_EVERY_N_BEATS = 3

app = get_app()
_state = {"worker_id": None, "current": None, "stop": threading.Event()}


def worker_id():
    if _state["worker_id"] is None:
        # The random part: a restarted container has the same hostname and often the same pid,
        # and must not inherit the dead worker's identity (its stage would never be recovered).
        _state["worker_id"] = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    return _state["worker_id"]


def _context():
    config = load_config()
    store = open_store(config.database_url)
    celery_app = get_app(config)
    return config, store, lambda stage: enqueue_stage(celery_app, stage)


@app.task(name=RUN_STAGE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def run_stage(self, stage_id, attempt):
    from worker.execution import execute_stage

    config, store, enqueue = _context()
    _state["current"] = stage_id
    store.heartbeat(worker_id(), current_stage_id=stage_id)
    try:
        return execute_stage(store, config, stage_id, attempt, worker_id(), enqueue)
    finally:
        _state["current"] = None
        store.heartbeat(worker_id(), current_stage_id=None)


@signals.worker_ready.connect
def _register(sender=None, **_):
    from worker.capabilities import detect_capabilities
    from worker.execution import recover_lost_stages

    config, store, enqueue = _context()
    queues = sorted(q.name for q in sender.app.amqp.queues.consume_from.values()) \
        if sender is not None and sender.app.amqp.queues.consume_from else ["cpu"]
    store.register_worker(worker_id(), socket.gethostname(), os.getpid(), queues, detect_capabilities())
    outcome = recover_lost_stages(store, config, enqueue, resend_queued=True)
    if outcome:
        log.warning("recovered stages at start: %s", outcome)
    threading.Thread(target=_heartbeat_loop, name="bpnet-heartbeat", daemon=True).start()


def _heartbeat_loop():
    from worker.execution import recover_lost_stages

    config, store, enqueue = _context()
    beats = 0
    while not _state["stop"].wait(HEARTBEAT_INTERVAL_S):
        beats += 1
        try:
            store.heartbeat(worker_id(), current_stage_id=_state["current"])
            if beats % RECOVERY_EVERY_N_BEATS == 0:
                recover_lost_stages(store, config, enqueue)
        except Exception:   # the store may be briefly unreachable; try again next beat
            log.exception("heartbeat failed")


@signals.worker_shutdown.connect
def _unregister(**_):
    _state["stop"].set()
    try:
        _, store, _ = _context()
        store.heartbeat(worker_id(), status="offline")
    except Exception:
        log.exception("could not mark the worker offline")
