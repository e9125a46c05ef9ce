"""End to end: real worker processes, the real engine on tiny models, the embedded SQLite broker and
the real Redis. Budget about 4 minutes: one tiny training (64x64, width 0.125, 3 steps) whose model
the later tests import instead of training again."""

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bpnet.errors import BpnetError
from tests.conftest import COCO_ANNOTATIONS, COCO_IMAGES, ROOT, TINY_RUN_TRAIN as TINY_TRAIN
from worker import artifacts, client
from worker.config import load_config

pytestmark = pytest.mark.slow


def tiny_run(**overrides):
    spec = {
        "name": "e2e",
        "dataset": {"annotations": str(COCO_ANNOTATIONS), "images": str(COCO_IMAGES)},
        "train": TINY_TRAIN,
        "resolutions": [[64, 64]],
        "prune_thresholds": [0.1, 0.5],
        "prune": {"min_filters": 2, "granularity": 2},
        "retrain_epochs": 1,
        "evaluate_unpruned": False,
        "precisions": ["fp32", "int8"],
        "calibration": {"batch_size": 2, "batches": 2},
        "benchmark": {"runs": 3, "warmup": 1},
        "eval_max_images": 6,
    }
    spec.update(overrides)
    return spec


class Studio:
    """A data dir, its config and worker subprocesses started on it."""

    def __init__(self, home, redis_url=None):
        self.env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL",
                                                                     "BPNET_STUDIO_ARTIFACTS")}
        self.env["BPNET_STUDIO_HOME"] = str(home)
        if redis_url:
            self.env["REDIS_URL"] = redis_url
        self.config = load_config(self.env)
        self.workers = []
        self.home = Path(home)

    def start_worker(self):
        log = (self.home / f"worker{len(self.workers)}.log").open("w")
        proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "worker", "--loglevel", "warning"],
                                env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.workers.append(proc)
        return proc

    def stop(self):
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def logs(self):
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.home.glob("worker*.log")))

    def wait_for(self, run_id, timeout, until=("completed", "failed", "cancelled")):
        return wait_until(lambda: client.get_store(self.config).run_status(run_id) in until, timeout,
                          f"run {run_id} to reach {until}", self)


def wait_until(condition, timeout, what, studio=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout}s waiting for {what}\n" + (studio.logs() if studio else ""))


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    studio = Studio(tmp_path_factory.mktemp("studio"))
    studio.start_worker()
    yield studio
    studio.stop()


@pytest.fixture(scope="module")
def first_run(embedded):
    run_id = client.submit_run(tiny_run(), config=embedded.config)
    embedded.wait_for(run_id, 300)
    return run_id


def stages_by_label(studio, run_id):
    return {st["label"]: st for st in client.get_run(run_id, config=studio.config)["stages"]}


def trained_model(studio, run_id):
    train = next(st for st in client.get_run(run_id, config=studio.config)["stages"] if st["kind"] == "train")
    return studio.config.artifact_root / train["artifact_dir"] / train["outputs"]["model"]


def test_tiny_sweep_completes_with_metrics_and_artifacts(embedded, first_run):
    run = client.get_run(first_run, config=embedded.config)
    assert run["status"] == "completed", embedded.logs()
    assert {st["status"] for st in run["stages"]} == {"completed"}
    results = client.list_results([first_run], config=embedded.config)
    assert sorted((r["pth"], r["precision"]) for r in results) == [
        (0.1, "fp32"), (0.1, "int8"), (0.5, "fp32"), (0.5, "int8")]
    for r in results:
        assert 0.0 <= r["AP"] <= 1.0 and r["latency_ms"] > 0 and r["params"] > 0 and r["size_bytes"] > 0
        assert r["backend"] == "onnxruntime" and r["resolution"] == "64x64" and r["stages"] == 2
        files = {Path(client.artifact_path(a, config=embedded.config)).name for a in r["artifact_ids"]}
        assert "metrics.json" in files and "bpnet_model.hdf5" in files and "pruned_model.hdf5" in files
        deployed = client.artifact_path(r["model_artifact_id"], config=embedded.config)
        assert deployed.name == ("model.int8.onnx" if r["precision"] == "int8" else "model.onnx")
    kinds = {a["kind"] for a in run["artifacts"]}
    assert {"keras model", "onnx", "int8 onnx", "calibration cache", "calibration tensor file",
            "metrics", "spec"} <= kinds
    for a in run["artifacts"]:
        assert artifacts.sha256_file(client.artifact_path(a["id"], config=embedded.config)) == a["sha256"]
    assert any(e["loss"] is not None for e in run["events"])          # progress reached the store
    assert any(m["name"] == "params_after" for m in run["metrics"])
    worker = client.list_workers(config=embedded.config)[0]
    assert worker["alive"] and worker["capabilities"]["cpu_count"] >= 1


def test_adding_fp16_reuses_every_trained_model(embedded, first_run):
    second = client.submit_run(tiny_run(precisions=["fp32", "int8", "fp16"]), config=embedded.config)
    embedded.wait_for(second, 120)
    first = stages_by_label(embedded, first_run)
    second_stages = stages_by_label(embedded, second)
    # the job system's part: train, prune, retrain and the FP32/INT8 branches come from run 1
    for label, st in second_stages.items():
        if "fp16" not in label:
            assert st["status"] == "cached", label
            assert st["source_stage_id"] == first[label]["id"]
    # the engine's part: the new FP16 branches were computed
    for label, st in second_stages.items():
        if "fp16" in label:
            assert st["status"] == "completed", f"engine: {label} {st['status']}: {st['error']}"
    assert len(client.list_results([second], config=embedded.config)) == 6


def test_cancel_stops_a_running_training(embedded, first_run):
    long_train = {**TINY_TRAIN, "steps_per_epoch": 2000, "random_seed": 7}
    run_id = client.submit_run(tiny_run(train=long_train), config=embedded.config)
    store = client.get_store(embedded.config)
    wait_until(lambda: store.stages(run_id)[0]["status"] == "running", 60, "training to start", embedded)
    assert client.cancel_run(run_id, config=embedded.config)
    embedded.wait_for(run_id, 60)
    wait_until(lambda: store.stages(run_id)[0]["status"] == "cancelled", 60, "the training to stop", embedded)
    assert store.run_status(run_id) == "cancelled"
    assert {st["status"] for st in store.stages(run_id)} == {"cancelled"}


def broker_messages(studio):
    with sqlite3.connect(studio.home / "broker.sqlite") as conn:
        return conn.execute("SELECT COUNT(*) FROM kombu_message").fetchone()[0]


def test_invalid_run_is_rejected_before_queueing(embedded, first_run):
    runs, messages = client.get_store(embedded.config).count_runs(), broker_messages(embedded)
    with pytest.raises(BpnetError) as err:
        client.submit_run(tiny_run(resolutions=[[64, 60]], precisions=["int9"]), config=embedded.config)
    assert "resolutions" in str(err.value) and "precisions" in str(err.value)
    assert client.get_store(embedded.config).count_runs() == runs
    assert broker_messages(embedded) == messages


def test_a_sigkilled_worker_loses_nothing(embedded, first_run, tmp_path):
    studio = Studio(tmp_path / "killed")
    model = shutil.copy(trained_model(embedded, first_run), tmp_path / "model.hdf5")
    slow_retrain = {**TINY_TRAIN, "steps_per_epoch": 10}
    spec = tiny_run(train=slow_retrain, model=str(model), prune_thresholds=[0.2], precisions=["fp32"])
    run_id = client.submit_run(spec, config=studio.config)
    store = client.get_store(studio.config)
    try:
        first = studio.start_worker()
        retrain = next(st for st in store.stages(run_id) if st["kind"] == "retrain")
        wait_until(lambda: store.stage(retrain["id"])["status"] == "running", 120, "retraining", studio)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        assert store.stage(retrain["id"])["status"] == "running"    # nobody told the store
        studio.start_worker()
        studio.wait_for(run_id, 180)
    finally:
        studio.stop()
    after = store.stage(retrain["id"])
    assert after["attempts"] == 2
    assert any(e["event"] == "requeued" for e in store.events(run_id=run_id))
    assert store.run_status(run_id) in ("completed", "failed")
    stages = store.stages(run_id)
    assert not [st for st in stages if st["status"] in ("pending", "queued", "running")]
    if store.run_status(run_id) == "completed":
        assert len(client.list_results([run_id], config=studio.config)) == 1


# ------------------------------------------------------------------ Redis broker

def _port_open(host, port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@pytest.fixture
def redis_url(tmp_path):
    if _port_open("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/14"
        return
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("no Redis on 127.0.0.1:6379 and no redis-server binary to start one")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "--port", str(port), "--save", "", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL)
    wait_until(lambda: _port_open("127.0.0.1", port), 10, "redis-server to start")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait()


@pytest.mark.redis
def test_sweep_on_redis(embedded, first_run, tmp_path, redis_url):
    studio = Studio(tmp_path / "redis", redis_url=redis_url)
    model = shutil.copy(trained_model(embedded, first_run), tmp_path / "model.hdf5")
    run_id = client.submit_run(tiny_run(train=None, model=str(model), retrain_epochs=0),
                               config=studio.config)
    try:
        studio.start_worker()
        studio.wait_for(run_id, 180)
    finally:
        studio.stop()
    assert client.get_store(studio.config).run_status(run_id) == "completed", studio.logs()
    results = client.list_results([run_id], config=studio.config)
    assert sorted((r["pth"], r["precision"]) for r in results) == [
        (0.1, "fp32"), (0.1, "int8"), (0.5, "fp32"), (0.5, "int8")]
    assert all(r["AP"] is not None and r["latency_ms"] > 0 for r in results)
