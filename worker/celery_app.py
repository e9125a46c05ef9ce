"""The Celery application: broker and result backend from `REDIS_URL`, else embedded SQLite.

Long tasks, so: acks_late (a message is acknowledged only after its task finished),
reject_on_worker_lost (a task whose worker process died goes back to the queue), prefetch 1 (a
worker never holds messages it is not running). Results live in the job store, so Celery's result
backend only keeps task states. `celery -A worker.celery_app worker` uses the module-level `app`.
"""

import fcntl
import json
import logging
import threading
import uuid
from pathlib import Path

from celery import Celery
from kombu import Queue
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Channel as SQLAlchemyChannel
from kombu.transport.sqlalchemy import Transport as SQLAlchemyTransport
from sqlalchemy.exc import IntegrityError, OperationalError

from bpnet.errors import BpnetError
from worker.config import EMBEDDED_TRANSPORT, load_config, mask_secrets, mask_url

log = logging.getLogger(__name__)
QUEUES = ("cpu", "gpu", "tensorrt")
RUN_STAGE_TASK = "bpnet_studio.run_stage"
TASK_ID_PREFIX = "stage"


class BrokerUnavailable(BpnetError):
    """A message could not be sent (the message names the masked broker URL)."""


class EmbeddedChannel(SQLAlchemyChannel):
    """kombu's SQLAlchemy channel, safe when several processes start at once on a fresh broker
    file: its tables are created under a file lock, and a queue row inserted by another process
    between kombu's check and its insert (`UNIQUE constraint failed: kombu_queue.name`) is read
    back instead of killing the worker."""

    def _open(self):
        path = Path(self.connection.client.hostname.split("///", 1)[-1])
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".schema-lock"), "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            return super()._open()

    def _get_or_create(self, queue):
        for _ in range(5):
            try:
                return super()._get_or_create(queue)
            except (IntegrityError, OperationalError):
                self.session.rollback()   # another process created it: read it next time
        return super()._get_or_create(queue)

    def _get(self, queue):
        """kombu marks a delivered message invisible and keeps its row forever, so the broker file
        grew with every stage ever run. Nothing reads an invisible row again (an unacked message
        that must go back is re-published as a new row), so delete the queue's delivered rows."""
        payload = super()._get(queue)
        obj = self._get_or_create(queue)
        try:
            (self.session.query(self.message_cls)
             .filter(self.message_cls.queue_id == obj.id, self.message_cls.visible == False)  # noqa: E712
             .delete(synchronize_session=False))
            self.session.commit()
        except OperationalError:   # the file is busy: the next delivery deletes them
            self.session.rollback()
        return payload


class EmbeddedTransport(SQLAlchemyTransport):
    """kombu's SQLAlchemy transport, polling every 0.2 s instead of 1 s: a stage that becomes
    ready starts at once. (Its transport options go to create_engine, so the interval cannot be
    passed as an option.)"""
    Channel = EmbeddedChannel
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
        # A broker restart must not end the worker: reconnect for as long as it takes.
        broker_connection_max_retries=None,
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
    """Send the message for a queued stage (its row is already committed as queued). A broker
    that cannot be reached is a BrokerUnavailable (one line, password masked); the stage stays
    queued and a worker's recovery sends it when the broker is back."""
    task_id = f"{TASK_ID_PREFIX}-{stage['id']}-{stage['attempts']}-{uuid.uuid4().hex[:8]}"
    try:
        app.send_task(RUN_STAGE_TASK, args=[stage["id"], stage["attempts"]], task_id=task_id,
                      queue=stage["queue"] or "cpu",
                      retry_policy={"max_retries": 2, "interval_start": 0.5, "interval_step": 1.0})
    except Exception as err:   # kombu/redis raise many connection error types
        url = app.conf.broker_url
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise BrokerUnavailable(f"broker {mask_url(url)} is unreachable ({mask_secrets(first, [url])}); "
                                f"stage {stage['id']} stays queued and is sent when a worker sees the "
                                "broker again") from None


def stage_of_task_id(task_id):
    """(stage_id, attempt) of a task id made by `enqueue_stage`, else None."""
    parts = str(task_id or "").split("-")
    if len(parts) == 4 and parts[0] == TASK_ID_PREFIX and parts[2].isdigit():
        return parts[1], int(parts[2])
    return None


def waiting_messages(app):
    """{(stage_id, attempt)} of the stage messages waiting in the broker (not yet delivered), or
    None when the broker cannot be asked. Recovery resends a queued stage whose message is not
    here: the broker lost it (a restarted Redis, a worker killed after taking it)."""
    try:
        if app.conf.broker_url.startswith(EMBEDDED_TRANSPORT):
            payloads = _embedded_payloads(app.conf.broker_url)
        else:
            payloads = _redis_payloads(app)
    except Exception as err:
        log.warning("could not list the broker's messages: %s", mask_secrets(err, [app.conf.broker_url]))
        return None
    found = set()
    for payload in payloads:
        try:
            stage = stage_of_task_id(json.loads(payload)["headers"]["id"])
        except (ValueError, KeyError, TypeError):
            continue
        if stage:
            found.add(stage)
    return found


def _redis_payloads(app):
    from kombu import Connection

    # A new connection each time: a pooled one may be the dead socket of a restarted Redis.
    with Connection(app.conf.broker_url, transport_options=app.conf.broker_transport_options) as conn:
        conn.ensure_connection(max_retries=1)
        client = conn.default_channel.client
        return [item for q in QUEUES for item in client.lrange(q, 0, -1)]


def _embedded_payloads(broker_url):
    import sqlite3

    path = broker_url.split("///", 1)[-1]
    if not Path(path).is_file():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return [row[0] for row in db.execute("SELECT payload FROM kombu_message WHERE visible = 1")]
    except sqlite3.OperationalError:   # no message table yet
        return []
    finally:
        db.close()


def __getattr__(name):
    # `celery -A worker.celery_app` looks up `app`; build it lazily so importing this module (the
    # dashboard does, to send messages) creates nothing under the default data dir.
    if name == "app":
        return get_app()
    raise AttributeError(name)
