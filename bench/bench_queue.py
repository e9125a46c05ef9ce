"""Job system overheads, printed as tables:

1. store queries with 1,000 runs (about 17,000 stage rows and 6,000 results) on SQLite, and on
   Postgres when one is reachable (BPNET_BENCH_POSTGRES, default the local `test` server);
2. submit -> start latency through a real worker: from calling `submit_run` (validation, rows,
   message) to the worker claiming the first stage, on the embedded SQLite broker and on Redis (when reachable).

    python bench/bench_queue.py [--runs 1000] [--latency-samples 5]
"""

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker import client  # noqa: E402
from worker.config import load_config  # noqa: E402
from worker.runs import expand_run, parse_run_spec  # noqa: E402
from worker.store import Store  # noqa: E402

ANN = ROOT / "data" / "coco-mini" / "annotations" / "person_keypoints_train2017.json"
IMAGES = ROOT / "data" / "coco-mini" / "train2017"
PG_URL = os.environ.get("BPNET_BENCH_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


def demo_spec(name):
    return {"name": name, "dataset": {"annotations": str(ANN), "images": str(IMAGES)},
            "train_spec": str(ROOT / "specs" / "train_small.yaml"), "resolutions": [[128, 128]],
            "prune_thresholds": [0.1, 0.3], "precisions": ["fp32", "int8"],
            "calibration": {"batch_size": 2, "batches": 2}}


def fill(store, n_runs):
    """n_runs runs of the demo sweep; 70% completed with results, the rest queued/running/failed."""
    spec = parse_run_spec(demo_spec("bench"))
    nodes = expand_run(spec)
    spec_json = spec.model_dump(mode="json")
    started = time.perf_counter()
    for i in range(n_runs):
        run_id = store.create_run(f"bench {i}", str(ANN) if i % 2 else "other.json", spec_json, nodes)
        if i % 10 < 7:
            with store.engine.begin() as conn:
                conn.exec_driver_sql(
                    "UPDATE stages SET status='completed', duration_s=5.0, fraction=1.0, "
                    "result_json=CASE WHEN kind='evaluate' THEN '{\"AP\": 0.4, \"latency_ms\": 3.0, "
                    "\"precision\": \"fp32\"}' ELSE NULL END WHERE run_id=%s" % _q(store, run_id))
            store.set_run_status(run_id, "running")
            store.set_run_status(run_id, "completed")
        elif i % 10 == 7:
            store.set_run_status(run_id, "running")
    return time.perf_counter() - started, len(nodes)


def _q(store, value):
    return "'%s'" % value   # ids are hex: safe to inline in this benchmark


def timed(fn, repeat=5):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def bench_store(label, config, n_runs):
    store = client.get_store(config)
    fill_s, per_run = fill(store, n_runs)
    some_run = store.list_runs(limit=1, offset=n_runs // 2)[0]["id"]
    rows = [
        ("insert 1 run + stages (mean)", fill_s / n_runs * 1000),
        ("list_runs(limit=200)", timed(lambda: client.list_runs(limit=200, config=config))),
        ("list_runs(status=running)", timed(lambda: client.list_runs(status="running", config=config))),
        ("list_runs(dataset=..)", timed(lambda: client.list_runs(dataset=str(ANN), config=config))),
        ("count_runs()", timed(lambda: store.count_runs())),
        ("get_run(id)", timed(lambda: client.get_run(some_run, config=config))),
        ("list_results() all", timed(lambda: client.list_results(config=config), repeat=3)),
        ("list_results(20 runs)", timed(lambda: client.list_results(
            [r["id"] for r in store.list_runs(limit=20)], config=config))),
        ("preview_run(demo)", timed(lambda: client.preview_run(demo_spec("p"), config=config), repeat=3)),
    ]
    print(f"\n{label}: {n_runs} runs, {n_runs * per_run} stages, "
          f"{len(client.list_results(config=config))} results")
    print(f"  {'query':<32} {'median ms':>10}")
    for name, ms in rows:
        print(f"  {name:<32} {ms:10.1f}")


def postgres_config(home):
    from sqlalchemy import create_engine
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"bpnet_bench_{os.getpid()}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    except Exception as err:
        print(f"\n(Postgres skipped: {PG_URL} unreachable: {type(err).__name__})")
        return None, None
    url = PG_URL.rsplit("/", 1)[0] + f"/{name}"

    def drop():
        from worker.store import _STORES
        if url in _STORES:
            _STORES.pop(url).close()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    return load_config({"BPNET_STUDIO_HOME": str(home), "DATABASE_URL": url}), drop


# ------------------------------------------------------------------ submit -> start

def latency(label, env, samples, model):
    config = load_config(env)
    Store(config.database_url).close()
    log = open(Path(env["BPNET_STUDIO_HOME"]) / "worker.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "worker", "--loglevel", "warning"],
                            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    store = client.get_store(config)
    try:
        _wait(lambda: any(w["alive"] for w in client.list_workers(config=config)), 60)
        delays = []
        spec = {**demo_spec("latency"), "train_spec": None, "model": str(model), "prune_thresholds": [],
                "precisions": ["fp32"]}
        for i in range(samples):
            submitted = time.time()
            run_id = client.submit_run({**spec, "name": f"latency {i}"}, config=config)
            first = store.stages(run_id)[0]
            _wait(lambda: store.stage(first["id"])["started_at"] is not None, 60)
            delays.append((store.stage(first["id"])["started_at"] - submitted) * 1000)
            client.cancel_run(run_id, config=config)
            _wait(lambda: all(w["current_stage_id"] is None for w in client.list_workers(config=config)), 60)
        print(f"  {label:<28} median {statistics.median(delays):8.1f} ms   max {max(delays):8.1f} ms"
              f"   (n={samples})")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _wait(cond, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise TimeoutError("benchmark condition not reached")


def tiny_model(home):
    """A tiny trained model for the import stage (2 training steps)."""
    import bpnet  # noqa: F401
    from bpnet.specs import TrainSpec, parse_spec
    from bpnet.train import train
    spec = parse_spec(TrainSpec, {"num_epoch": 1, "steps_per_epoch": 2, "model": {"backbone_width": 0.125,
                      "stages": 2}, "dataloader": {"batch_size": 2, "image_shape": [64, 64],
                      "dataset": {"annotations": str(ANN), "images": str(IMAGES),
                                  "include_images_without_people": False}}}, "bench spec")
    train(spec, home / "model")
    return home / "model" / "bpnet_model.hdf5"


def redis_up():
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", 6379)) == 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--latency-samples", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_queue_"))
    try:
        bench_store("SQLite (WAL)", load_config({"BPNET_STUDIO_HOME": str(tmp / "sqlite")}), args.runs)
        pg, drop = postgres_config(tmp / "pg")
        if pg is not None:
            try:
                bench_store("Postgres", pg, args.runs)
            finally:
                drop()
        if args.latency_samples:
            model = tiny_model(tmp)
            print("\nsubmit -> first stage claimed by an idle worker")
            base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
            latency("embedded SQLite broker", {**base, "BPNET_STUDIO_HOME": str(tmp / "lat-embedded")},
                    args.latency_samples, model)
            if redis_up():
                latency("Redis broker", {**base, "BPNET_STUDIO_HOME": str(tmp / "lat-redis"),
                                         "REDIS_URL": "redis://127.0.0.1:6379/15"}, args.latency_samples, model)
            else:
                print("  Redis broker                 skipped: nothing on 127.0.0.1:6379")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
