"""The Celery application: broker and result backend from `REDIS_URL`, else embedded SQLite.

Long tasks, so: acks_late (a message is acknowledged only after its task finished),
reject_on_worker_lost (a task whose worker process died goes back to the queue), prefetch 1 (a
worker never holds messages it is not running). Results live in the job store, so Celery's result
backend only keeps task states. `celery -A worker.celery_app worker` uses the module-level `app`.
"""

import threading

from celery import Celery
from kombu import Queue
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Transport as SQLAlchemyTransport

from worker.config import EMBEDDED_TRANSPORT, load_config

QUEUES = ("cpu", "gpu", "tensorrt")
RUN_STAGE_TASK = "bpnet_studio.run_stage"


class EmbeddedTransport(SQLAlchemyTransport):
    """kombu's SQLAlchemy transport, polling every 0.2 s instead of 1 s: a stage that becomes
    ready starts at once. (Its transport options go to create_engine, so the interval cannot be
    passed as an option.)"""
    polling_interval = 0.2


# Every process that sends or consumes (dashboard, CLI, worker) imports this module first.
TRANSPORT_ALIASES[EMBEDDED_TRANSPORT] = f"{__name__}:EmbeddedTransport"


def make_app(config):
    if config.embedded_broker:
        config.home.mkdir(parents=True, exist_ok=True)
    app = Celery("bpnet_studio", broker=config.broker_url, backend=config.result_backend,
                 include=["worker.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_track_started=False,
        task_serializer="json",
        accept_content=["json"],
        task_queues=[Queue(q) for q in QUEUES],
        task_default_queue="cpu",
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        result_extended=False,
    )
    if config.embedded_broker:
        # SQLite: several processes poll one file; wait on its lock instead of failing.
        app.conf.broker_transport_options = {"connect_args": {"timeout": 30}}
        app.conf.broker_pool_limit = 1
    else:
        # A stage may train for hours: don't let Redis hand its unacked message to another
        # worker before then (recovery of dead workers is done by the job store, not by this).
        app.conf.broker_transport_options = {"visibility_timeout": 12 * 3600}
    return app


_APPS = {}
_LOCK = threading.Lock()


def get_app(config=None):
    """One Celery app per broker URL and process."""
    config = config or load_config()
    with _LOCK:
        if config.broker_url not in _APPS:
            _APPS[config.broker_url] = make_app(config)
        return _APPS[config.broker_url]


def enqueue_stage(app, stage):
    """Send the message for a queued stage (its row is already committed as queued)."""
    app.send_task(RUN_STAGE_TASK, args=[stage["id"], stage["attempts"]], queue=stage["queue"] or "cpu")


def __getattr__(name):
    # `celery -A worker.celery_app` looks up `app`; build it lazily so importing this module (the
    # dashboard does, to send messages) creates nothing under the default data dir.
    if name == "app":
        return get_app()
    raise AttributeError(name)
