"""Job store (SQLite and a throwaway Postgres database), artifact store and the dashboard client."""

import json
import os
import sqlite3
import time
import zipfile

import pytest

from bpnet.errors import BpnetError
from tests.postgres import fresh_database
from tests.test_runs import run_spec_dict
from worker import artifacts, client
from worker.config import load_config
from worker.recovery import MAX_ATTEMPTS, recover_lost_stages, worker_is_gone
from worker.runs import expand_run, parse_run_spec
from worker.store import Store

@pytest.fixture(scope="module")
def postgres_url():
    """A fresh database on the local Postgres, dropped afterwards."""
    with fresh_database("bpnet_store_test") as url:
        yield url
        from worker.store import _STORES
        for cached in [u for u in _STORES if url.rsplit("/", 1)[1] in u]:
            _STORES.pop(cached).close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def config(request, tmp_path):
    env = {"BPNET_STUDIO_HOME": str(tmp_path / "home")}
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        env["DATABASE_URL"] = url
        store = Store(url)
        with store.engine.begin() as conn:   # a clean slate for each test
            for table in ("events", "metrics", "artifacts", "stages", "workers", "runs"):
                conn.exec_driver_sql(f"DELETE FROM {table}")
        store.close()
    return load_config(env)


def create(store, **overrides):
    spec = parse_run_spec(run_spec_dict(**overrides))
    return store.create_run(spec.name, "coco-mini", spec.model_dump(mode="json"), expand_run(spec))


def test_runs_stages_events_metrics_round_trip(config):
    store = client.get_store(config)
    a, b = create(store, name="alpha"), create(store, name="beta")
    store.set_run_status(b, "running")
    stages = store.stages(a)
    store.update_stage(stages[0]["id"], status="running", fraction=0.5)
    store.add_event(a, stages[0]["id"], {"stage": "train", "event": "step", "epoch": 1, "step": 3,
                                         "loss": 0.25, "extra": [1, 2]})
    store.add_metrics(a, stages[0]["id"], {"AP": 0.5})

    runs = client.list_runs(config=config)
    assert [r["name"] for r in runs] == ["beta", "alpha"]
    alpha = runs[1]
    assert alpha["num_stages"] == len(stages) and alpha["current_stage"] == stages[0]["label"]
    assert alpha["progress"] == pytest.approx(0.5 / len(stages))
    assert [r["name"] for r in client.list_runs(status="running", config=config)] == ["beta"]
    assert client.list_runs(search="alp", config=config)[0]["id"] == a
    assert client.list_datasets(config=config) == ["coco-mini"]

    run = client.get_run(a, config=config)
    assert run["spec"]["name"] == "alpha" and len(run["stages"]) == len(stages)
    assert len(run["edges"]) == len(stages) - 1
    assert run["events"][0]["data"]["extra"] == [1, 2] and run["events"][0]["loss"] == 0.25
    assert run["metrics"][0]["value"] == 0.5
    assert client.loss_curve(a, config=config)[0]["loss"] == 0.25
    with pytest.raises(BpnetError, match="not found"):
        client.get_run("nope", config=config)


def test_claim_is_a_compare_and_set(config):
    store = client.get_store(config)
    run = create(store)
    st = store.stages(run)[0]
    store.update_stage(st["id"], status="queued", attempts=1)
    assert not store.claim_stage(st["id"], 2, "w1")        # a stale attempt number
    assert store.claim_stage(st["id"], 1, "w1")
    assert not store.claim_stage(st["id"], 1, "w2")        # the duplicate delivery
    assert store.stage(st["id"])["worker_id"] == "w1"


def test_results_are_flat_rows_with_artifacts(config):
    store = client.get_store(config)
    run = create(store)
    ev = next(st for st in store.stages(run) if st["kind"] == "evaluate")
    out = artifacts.prepare_stage_dir(config.artifact_root, "evaluate", ev["key"])
    (out / "metrics.json").write_text('{"AP": 0.4}')
    ids = store.add_artifacts(ev["id"], ev["key"], artifacts.write_manifest(config.artifact_root, out))
    store.update_stage(ev["id"], status="completed", artifact_dir=out.name,
                       result={"AP": 0.4, "latency_ms": 3.0, "precision": "fp32", "artifact_ids": ids})
    rows = client.list_results(config=config)
    assert len(rows) == 1
    row = rows[0]
    assert row["AP"] == 0.4 and row["latency_ms"] == 3.0 and row["run_id"] == run and row["APm"] is None
    assert client.list_results(run_ids=["other"], config=config) == []
    path = client.artifact_path(ids[0], config=config)
    assert json.loads(path.read_text()) == {"AP": 0.4}
    got = client.get_run(run, config=config)
    assert [a["name"] for a in got["artifacts"]] == ["metrics.json"]
    bundle = client.run_bundle(run, config=config)
    with zipfile.ZipFile(bundle) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        assert manifest["files"][0]["sha256"] == artifacts.sha256_file(path)
        assert len(zf.namelist()) == 2


def test_a_lost_worker_stage_is_requeued_then_failed(config):
    store = client.get_store(config)
    run = create(store)
    st = store.stages(run)[0]
    dead_pid = _dead_pid()
    store.register_worker("dead", os.uname().nodename, dead_pid, ["cpu"], {})
    store.register_worker("alive", os.uname().nodename, os.getpid(), ["cpu"], {})
    other = store.stages(run)[1]
    for stage, worker in ((st, "dead"), (other, "alive")):
        store.update_stage(stage["id"], status="queued", attempts=1)
        assert store.claim_stage(stage["id"], 1, worker)
    sent = []
    assert recover_lost_stages(store, config, sent.append) == {st["id"]: "requeued"}
    assert store.stage(st["id"])["status"] == "queued" and store.stage(st["id"])["attempts"] == 2
    assert [s["attempts"] for s in sent] == [2]
    assert store.stage(other["id"])["status"] == "running"       # its worker is alive

    assert store.claim_stage(st["id"], 2, "dead")                 # dies again
    assert store.stage(st["id"])["attempts"] == MAX_ATTEMPTS
    assert recover_lost_stages(store, config, sent.append) == {st["id"]: "failed"}
    failed = store.stage(st["id"])
    assert failed["status"] == "failed" and "lost" in failed["error"]


def test_recovery_advances_a_run_whose_worker_died_before_advancing(config):
    store = client.get_store(config)
    run = create(store)
    root = store.stages(run)[0]
    out = artifacts.prepare_stage_dir(config.artifact_root, "train", root["key"])
    (out / "bpnet_model.hdf5").write_bytes(b"model")
    artifacts.write_manifest(config.artifact_root, out)
    # completed, but the worker died before advancing: the children are still pending
    store.update_stage(root["id"], status="completed", artifact_dir=out.name, outputs={"model": "bpnet_model.hdf5"})
    sent = []
    outcome = recover_lost_stages(store, config, sent.append, waiting=set())
    children = [st for st in store.stages(run) if st["parent_id"] == root["id"]]
    assert {st["status"] for st in children} == {"queued"}
    assert sorted(s["id"] for s in sent) == sorted(st["id"] for st in children)   # each sent once
    assert set(outcome.values()) == {"queued"}


def _dead_pid():
    import subprocess
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_worker_liveness():
    now = time.time()
    w = {"status": "online", "hostname": "elsewhere", "pid": 1, "heartbeat_at": now}
    assert not worker_is_gone(w, now, this_host="here")
    assert worker_is_gone({**w, "heartbeat_at": now - 3600}, now, this_host="here")
    assert worker_is_gone({**w, "status": "offline"}, now, this_host="here")
    assert worker_is_gone({**w, "hostname": "here", "pid": _dead_pid()}, now, this_host="here")
    assert worker_is_gone(None, now)


def test_workers_are_listed_with_liveness(config):
    store = client.get_store(config)
    store.register_worker("w1", "h", 1, ["cpu", "gpu"], {"cpu_count": 2, "gpus": []})
    rows = client.list_workers(config=config)
    assert rows[0]["queues"] == ["cpu", "gpu"] and rows[0]["alive"]
    assert rows[0]["capabilities"]["cpu_count"] == 2


def test_invalid_spec_is_rejected_before_anything_is_stored(config):
    with pytest.raises(BpnetError, match="multiples of 8"):
        client.submit_run(run_spec_dict(resolutions=[[63, 64]]), config=config)
    with pytest.raises(BpnetError, match="not valid YAML"):
        client.submit_run("name: [unclosed", config=config)
    assert client.get_store(config).count_runs() == 0


def test_preview_shows_cached_stages_and_an_estimate(config):
    store = client.get_store(config)
    preview = client.preview_run(run_spec_dict(), config=config)
    assert preview["num_results"] == 3 and preview["cached"] == [] and preview["estimate_s"] is None
    run = create(store)
    for st in store.stages(run):
        if st["kind"] in ("train", "prune"):
            store.update_stage(st["id"], status="completed", duration_s=10.0, finished_at=time.time())
    preview = client.preview_run(run_spec_dict(), config=config)
    assert sorted(preview["cached"]) == sorted(["train s2", "prune s2 pth=0.1", "prune s2 pth=0.5"])
    # the base training (100 epochs) took 10 s; each retrain (2 epochs, same images and input)
    # is that time scaled by its work; export/evaluate have no history yet and are named as unknown
    assert preview["to_compute"] == preview["num_stages"] - 3
    assert preview["estimate_s"] == pytest.approx(2 * 10.0 * 2 / 100)
    assert "export" in preview["estimate_basis"] and "evaluate" in preview["estimate_basis"]


def test_schema_migration_adds_missing_columns(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:   # a store from before the `eta_s` and `message` columns
        conn.execute("CREATE TABLE workers (id VARCHAR(200) PRIMARY KEY, hostname VARCHAR(200), pid INTEGER,"
                     " queues VARCHAR(200), capabilities_json TEXT, started_at FLOAT, heartbeat_at FLOAT,"
                     " status VARCHAR(16))")
    store = Store(f"sqlite:///{path}")
    store.register_worker("w", "h", 1, ["cpu"], {})
    assert store.workers()[0]["current_stage_id"] is None
    store.close()


# ------------------------------------------------------------------ artifact store

@pytest.mark.parametrize("relpath", ["../outside.txt", "/etc/passwd", "a/../../outside.txt", "", "link/x"])
def test_artifact_paths_cannot_leave_the_root(tmp_path, relpath):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside.txt").write_text("secret")
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(BpnetError, match="not allowed"):
        artifacts.resolve_inside(root, relpath)


def test_client_refuses_a_tampered_artifact_row(tmp_path):
    config = load_config({"BPNET_STUDIO_HOME": str(tmp_path)})
    store = client.get_store(config)
    (aid,) = store.add_artifacts("s", "k", [{"name": "x", "relpath": "../../etc/passwd", "kind": "file",
                                            "size": 1, "sha256": "0" * 64}])
    with pytest.raises(BpnetError, match="leaves the artifact root"):
        client.artifact_path(aid, config=config)


def test_manifest_lists_files_with_hash_size_and_kind(tmp_path):
    out = artifacts.prepare_stage_dir(tmp_path, "export", "k" * 64)
    (out / "model.onnx").write_bytes(b"abc")
    (out / "model.int8.onnx").write_bytes(b"abcd")
    (out / "cal.cache").write_text("TRT-8601-EntropyCalibration2\n")
    (out / ".model.onnx.tmp").write_bytes(b"partial")   # an interrupted write is not an artifact
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "epoch_1.hdf5").write_bytes(b"ckpt")
    entries = {e["name"]: e for e in artifacts.write_manifest(tmp_path, out)}
    assert set(entries) == {"model.onnx", "model.int8.onnx", "cal.cache"}
    assert entries["model.int8.onnx"]["kind"] == "int8 onnx" and entries["model.onnx"]["kind"] == "onnx"
    assert entries["cal.cache"]["kind"] == "calibration cache"
    assert entries["model.onnx"]["size"] == 3
    assert entries["model.onnx"]["sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert artifacts.read_manifest(out) == list(entries.values())
    assert artifacts.prepare_stage_dir(tmp_path, "export", "k" * 64).exists()
    assert not (out / "model.onnx").exists()     # a retry starts from an empty folder


# ------------------------------------------------------------------ capabilities

def test_capabilities_pick_queues_and_respect_cuda_visible_devices():
    from worker.capabilities import default_queues, detect_capabilities, visible_gpus
    gpus = [{"index": 0, "name": "A"}, {"index": 1, "name": "B"}]
    assert visible_gpus(gpus, {"CUDA_VISIBLE_DEVICES": "1"}) == [gpus[1]]
    assert visible_gpus(gpus, {"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus(gpus, {}) == gpus
    cpu_only = {"gpus": [], "tensorflow_gpu": 0, "tensorrt": False}
    assert default_queues(cpu_only) == ["cpu"]
    assert default_queues({"gpus": gpus, "tensorflow_gpu": 2, "tensorrt": True}) == ["cpu", "gpu", "tensorrt"]
    caps = detect_capabilities({})
    assert caps["cpu_count"] >= 1 and "CPUExecutionProvider" in caps["onnxruntime_providers"]
