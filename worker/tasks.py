"""Celery tasks (thin): each takes ids, and the store decides everything else.

`run_stage(stage_id, attempt)` claims the stage in the store (a duplicate or stale message is
dropped there), runs one engine verb through `worker.execution` and advances the run, which sends
the messages of the stages that became ready. No task waits on another task.
The worker process registers itself with its capabilities before it consumes anything (and exits
when it cannot), and keeps a heartbeat from a background thread that also runs the recovery of
`worker.recovery` (dead workers' stages, runs left unadvanced, messages a broker lost).
"""

import logging
import os
import socket
import sys
import threading
import time
import uuid

from celery import signals

from bpnet.errors import BpnetError

from worker.celery_app import RUN_STAGE_TASK, enqueue_stage, get_app
from worker.config import load_config
from worker.store import open_store

log = logging.getLogger(__name__)
HEARTBEAT_INTERVAL_S = 10.0
RECOVERY_EVERY_N_BEATS = 2   # a dead worker's stage is re-queued within ~20 s

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


def register(queues):
    """Write this worker's row (retried: the store may be starting too). A worker that cannot
    register must not take tasks - its stages would look orphaned to every other worker - so
    the caller stops when this raises."""
    from worker.capabilities import detect_capabilities

    last = None
    for delay in (0.0, 0.5, 1.0, 2.0, 4.0):
        time.sleep(delay)
        try:
            _, store, _ = _context()
            return store.register_worker(worker_id(), socket.gethostname(), os.getpid(), queues,
                                         detect_capabilities())
        except Exception as err:   # StoreUnavailable, a locked SQLite file, ...
            last = err
    raise BpnetError(f"worker {worker_id()} could not register in the job store, so it takes no "
                     f"tasks: {last}")


@signals.worker_init.connect
def _register_before_consuming(sender=None, **_):
    # Before the consumer starts: `celery worker` (and `bpnet-studio worker`) exit when this fails.
    queues = sorted(sender.app.amqp.queues.consume_from) \
        if sender is not None and sender.app.amqp.queues.consume_from else ["cpu"]
    try:
        register(queues)
    except BpnetError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


@signals.worker_ready.connect
def _start_recovery(**_):
    config, store, enqueue = _context()
    outcome = recovery_pass(config, store, enqueue)
    if outcome:
        log.warning("recovered stages at start: %s", outcome)
    threading.Thread(target=_heartbeat_loop, name="bpnet-heartbeat", daemon=True).start()


def recovery_pass(config, store, enqueue, full=True):
    """Lost workers and runs (full) and lost messages (always), from the store and the broker."""
    from worker.celery_app import waiting_messages
    from worker.recovery import recover_lost_stages, resend_missing

    waiting = waiting_messages(get_app(config))
    if full:
        return recover_lost_stages(store, config, enqueue, waiting)
    return resend_missing(store, enqueue, waiting) if waiting is not None else {}


def _heartbeat_loop():
    config, store, enqueue = _context()
    beats = 0
    while not _state["stop"].wait(HEARTBEAT_INTERVAL_S):
        beats += 1
        try:
            store.heartbeat(worker_id(), current_stage_id=_state["current"])
            # Every beat: messages a broker restart lost (cheap: one list per queue). Every few
            # beats: stages of dead workers and runs left unadvanced.
            outcome = recovery_pass(config, store, enqueue, full=beats % RECOVERY_EVERY_N_BEATS == 0)
            if outcome:
                log.warning("recovered: %s", outcome)
        except BpnetError as err:   # the store or broker is briefly unreachable: next beat
            log.warning("heartbeat: %s", err)
        except Exception:
            log.exception("heartbeat failed")


@signals.worker_shutdown.connect
def _unregister(**_):
    _state["stop"].set()
    try:
        _, store, _ = _context()
        store.heartbeat(worker_id(), status="offline")
    except Exception:
        log.exception("could not mark the worker offline")
