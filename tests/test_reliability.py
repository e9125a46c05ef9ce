"""Concurrent starts, exactly-once computations, lost messages, unreachable stores and brokers,
masked secrets, the dashboard's bind address. Several processes are real processes (a barrier
makes them start together) because the races are between processes, not threads."""

import multiprocessing as mp
import os
import subprocess
import sys
import time

import pytest

from tests.postgres import fresh_database
from tests.test_runs import run_spec_dict
from worker import client
from worker.config import load_config, mask_url, normalize_database_url
from worker.recovery import recover_lost_stages, resend_missing, stage_is_orphaned
from worker.store import Store, StoreUnavailable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 4


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.setenv("BPNET_STUDIO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    return load_config()


def _together(target, args_list):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(args_list))
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(barrier, results, *args)) for args in args_list]
    for p in procs:
        p.start()
    out = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return out


def _open_and_register(barrier, results, url, name):
    sys.path.insert(0, ROOT)
    from worker.store import Store
    barrier.wait()
    try:
        store = Store(url)
        store.register_worker(name, "h", os.getpid(), ["cpu"], {})
        results.put(("ok", name))
    except Exception as err:
        results.put(("error", f"{type(err).__name__}: {err}"))


def test_n_processes_create_a_fresh_sqlite_store_at_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.sqlite'}"
    out = _together(_open_and_register, [(url, f"w{i}") for i in range(N)])
    assert all(status == "ok" for status, _ in out), out
    assert sorted(w["id"] for w in Store(url).workers()) == [f"w{i}" for i in range(N)]


@pytest.mark.postgres
def test_n_processes_create_a_fresh_postgres_store_at_once():
    with fresh_database("bpnet_race") as url:
        # the form users write: normalised to the installed psycopg2 driver
        url = "postgresql://" + url.split("://", 1)[1]
        out = _together(_open_and_register, [(url, f"w{i}") for i in range(N)])
        assert all(status == "ok" for status, _ in out), out


def _submit(barrier, results, env):
    sys.path.insert(0, ROOT)
    os.environ.update(env)
    from tests.test_runs import run_spec_dict
    from worker import client
    from worker.config import load_config
    config = load_config()
    client.get_store(config)
    sent = []
    client._enqueue_with = lambda _config: sent.append   # record instead of sending
    barrier.wait()
    client.submit_run(run_spec_dict(), config=config)
    results.put([s["key"] for s in sent])


def test_n_simultaneous_submits_compute_a_shared_stage_once(config):
    client.get_store(config)   # schema first: this test is about the submits
    env = {"BPNET_STUDIO_HOME": str(config.home)}
    sent = [key for keys in _together(_submit, [(env,)] * N) for key in keys]
    assert len(sent) == len(set(sent)) == 1, sent   # the one root training, queued once
    store = client.get_store(config)
    statuses = sorted(st["status"] for run in store.list_runs() for st in store.stages(run["id"])
                      if st["kind"] == "train")
    assert statuses == ["pending"] * (N - 1) + ["queued"]


def test_a_running_stage_without_a_worker_row_is_not_taken_while_young():
    now = time.time()
    stage = {"started_at": now - 5}
    assert not stage_is_orphaned(stage, None, now)
    assert stage_is_orphaned({"started_at": now - 3600}, None, now)
    alive = {"status": "online", "hostname": "elsewhere", "pid": 1, "heartbeat_at": now - 5}
    assert not stage_is_orphaned({"started_at": now - 3600}, alive, now)


def _record_sends(monkeypatch):
    sent = []
    monkeypatch.setattr(client, "_enqueue_with", lambda _config: sent.append)
    return sent


def test_queued_stages_without_a_waiting_message_are_resent_once(config, monkeypatch):
    store = client.get_store(config)
    sent = _record_sends(monkeypatch)
    client.submit_run(run_spec_dict(), config=config)
    client.submit_run(run_spec_dict(name="other", prune_thresholds=[0.3]), config=config)
    queued = store.stages_by_status(("queued",))
    assert len(queued) == 1
    root = queued[0]
    # The message was sent just now: not resent yet (it may still be on its way).
    assert resend_missing(store, sent.append, waiting=set()) == {}
    store.update_stage(root["id"], queued_at=time.time() - 60)   # a broker restart later
    assert resend_missing(store, sent.append, waiting={(root["id"], root["attempts"])}) == {}
    again = []
    assert resend_missing(store, again.append, waiting=set()) == {root["id"]: "resent"}
    assert resend_missing(store, again.append, waiting=set()) == {}   # a second worker: no duplicate
    assert [(s["id"], s["attempts"]) for s in again] == [(root["id"], root["attempts"])]
    # recovery as a whole does the same, and an unknown broker state resends nothing
    assert recover_lost_stages(store, config, again.append, waiting=None) == {}


def test_a_stage_that_finished_while_the_broker_was_away_advances_its_run(config, monkeypatch):
    from worker.celery_app import BrokerUnavailable
    from worker.execution import advance_after

    store = client.get_store(config)
    _record_sends(monkeypatch)
    run = client.submit_run(run_spec_dict(), config=config)
    root = store.stages(run)[0]
    store.update_stage(root["id"], status="completed", artifact_dir="x", outputs={"model": "m.hdf5"})

    def broker_down(stage):
        raise BrokerUnavailable("broker redis://:***@h:1/0 is unreachable")
    advance_after(store, config, root, broker_down)   # its children are queued, not sent
    children = [st for st in store.stages(run) if st["parent_id"] == root["id"]]
    assert {st["status"] for st in children} == {"queued"}
    for st in children:
        store.update_stage(st["id"], queued_at=time.time() - 60)
    sent = []
    outcome = recover_lost_stages(store, config, sent.append, waiting=set())   # broker is back
    assert sorted(s["id"] for s in sent) == sorted(st["id"] for st in children)
    assert set(outcome.values()) == {"resent"}


def test_urls_are_masked_and_postgres_urls_normalised():
    assert mask_url("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert mask_url("postgresql+psycopg2://bpnet:pw@db:5432/x") == "postgresql+psycopg2://bpnet:***@db:5432/x"
    assert mask_url("sqlite:////data/studio.sqlite") == "sqlite:////data/studio.sqlite"
    assert normalize_database_url("postgresql://u:p@h/d") == "postgresql+psycopg2://u:p@h/d"
    assert normalize_database_url("postgres://u@h/d") == "postgresql+psycopg2://u@h/d"
    assert load_config({"DATABASE_URL": "postgresql://u@h/d"}).database_url.startswith("postgresql+psycopg2://")


def test_an_unreachable_store_is_one_line_with_the_password_masked():
    with pytest.raises(StoreUnavailable) as info:
        Store("postgresql://bpnet:topsecret@127.0.0.1:1/bpnet")
    message = str(info.value)
    assert "topsecret" not in message and "bpnet:***@127.0.0.1:1" in message and "\n" not in message


def test_an_unreachable_broker_is_one_line_with_the_password_masked(tmp_path):
    from worker.celery_app import BrokerUnavailable, enqueue_stage, make_app
    config = load_config({"BPNET_STUDIO_HOME": str(tmp_path), "REDIS_URL": "redis://:topsecret@127.0.0.1:1/0"})
    with pytest.raises(BrokerUnavailable) as info:
        enqueue_stage(make_app(config), {"id": "abc", "attempts": 1, "queue": "cpu"})
    message = str(info.value)
    assert "topsecret" not in message and "redis://:***@127.0.0.1:1/0" in message and "\n" not in message


def test_cli_store_error_is_one_line_and_exit_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT, "BPNET_STUDIO_HOME": str(tmp_path),
           "DATABASE_URL": "postgresql://bpnet:topsecret@127.0.0.1:1/bpnet"}
    proc = subprocess.run([sys.executable, "-m", "worker.cli", "status"], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: the job store at")
    assert "topsecret" not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


def test_dashboard_binds_to_this_machine_unless_told_otherwise():
    from worker.cli import build_parser, dashboard_command, dashboard_url
    args = build_parser().parse_args(["up"])
    assert args.address == "127.0.0.1"
    cmd = dashboard_command(args.address, args.port)
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert dashboard_url("0.0.0.0", 8501) == "http://0.0.0.0:8501"
    assert build_parser().parse_args(["up", "--address", "0.0.0.0"]).address == "0.0.0.0"


def _declare_queue(barrier, results, broker_url):
    sys.path.insert(0, ROOT)
    import worker.celery_app  # noqa: F401  (registers the embedded transport)
    from kombu import Connection
    barrier.wait()
    try:
        with Connection(broker_url) as conn:
            queue = conn.SimpleQueue("cpu")
            queue.put({"from": os.getpid()})
            queue.close()
        results.put("ok")
    except Exception as err:
        results.put(f"{type(err).__name__}: {err}")


def test_n_processes_open_a_fresh_embedded_broker_at_once(config):
    config.home.mkdir(parents=True)
    out = _together(_declare_queue, [(config.broker_url,)] * N)
    assert out == ["ok"] * N


def test_the_embedded_broker_deletes_delivered_messages(config):
    import sqlite3

    import worker.celery_app  # noqa: F401  (registers the embedded transport)
    from kombu import Connection
    config.home.mkdir(parents=True)
    with Connection(config.broker_url) as conn:
        queue = conn.SimpleQueue("cpu")
        for i in range(3):
            queue.put({"n": i})
        received = [queue.get(timeout=10) for _ in range(2)]
        for message in received:
            message.ack()
        queue.close()
    db = sqlite3.connect(config.broker_url.split("///", 1)[-1])
    rows = db.execute("SELECT visible FROM kombu_message").fetchall()
    db.close()
    assert [m.payload["n"] for m in received] == [0, 1]
    assert rows == [(1,)]   # the one still waiting; the two delivered are gone


def test_dashboard_store_error_masks_the_password(config, monkeypatch):
    from tests.test_app_pages import open_page, texts

    monkeypatch.setenv("DATABASE_URL", "postgresql://bpnet:topsecret@127.0.0.1:1/bpnet")
    at = open_page("views/runs.py")
    shown = texts(at.error)
    assert "cannot be read" in shown and "bpnet:***@127.0.0.1:1" in shown and "topsecret" not in shown


@pytest.mark.slow
def test_a_worker_that_cannot_register_exits_without_taking_tasks(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT, "BPNET_STUDIO_HOME": str(tmp_path),
           "DATABASE_URL": "postgresql://bpnet:topsecret@127.0.0.1:1/bpnet"}
    env.pop("REDIS_URL", None)
    proc = subprocess.run([sys.executable, "-m", "worker.cli", "worker", "--queues", "cpu",
                           "--loglevel", "warning"], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "could not register in the job store, so it takes no tasks" in proc.stderr
    assert "topsecret" not in proc.stderr and "ready" not in proc.stdout + proc.stderr
