"""Fault scripts for the job system: real workers, real brokers, tiny runs; each prints runs
completed, stage executions vs distinct stages, time to recover and anything lost.

    python bench/fault_recovery.py                      # all three
    python bench/fault_recovery.py --scenario kill-worker|redis-restart|concurrent-start

1. kill-worker: two workers, 2 runs; SIGKILL the worker that trains run 0; nothing restarted.
   Recovery = SIGKILL -> the surviving worker's heartbeat re-queued the killed stage. Expected executions = distinct stages + 1
   (the killed training runs twice; it was not finished).
2. redis-restart: a private redis-server on a free port (no persistence: the worst case, an empty
   broker), one worker, 3 runs (one training, the others queued); kill -9 Redis, restart it
   empty 5 s later. Recovery = restart -> every queued stage has a message again (or runs).
3. concurrent-start: a fresh store and embedded broker, 4 workers started at once, 20 runs
   submitted from 4 processes at once (5 variants: one shared training, 5 distinct export +
   evaluate pairs). Expected executions = distinct stages (every shared stage computed once).

An "execution" is a `start` event of a stage in the store (each claimed delivery emits one).
Targets: all runs complete, executions as expected, recovery < 30 s, nothing lost.
Timings are wall clock on whatever machine runs it (with its load).
"""

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker import client  # noqa: E402
from worker.config import load_config  # noqa: E402

ANN = ROOT / "data" / "coco-mini" / "annotations" / "person_keypoints_train2017.json"
IMAGES = ROOT / "data" / "coco-mini" / "train2017"
FINAL = ("completed", "failed", "cancelled")


def tiny_run(name, steps=3, resolution=(64, 64)):
    """train (tiny net, `steps` steps) -> export fp32 -> evaluate on 4 images."""
    return {"name": name, "dataset": {"annotations": str(ANN), "images": str(IMAGES)},
            "train": {"random_seed": 1, "num_epoch": 1, "steps_per_epoch": steps, "checkpoint_n_epoch": 1,
                      "model": {"backbone_width": 0.125, "stages": 2},
                      "dataloader": {"batch_size": 2, "image_shape": [64, 64], "num_parallel_calls": 1,
                                     "dataset": {"include_images_without_people": False}}},
            "resolutions": [list(resolution)], "precisions": ["fp32"], "prune_thresholds": [],
            "eval_max_images": 4, "benchmark": {"runs": 2, "warmup": 1}}


# ------------------------------------------------------------------ processes

def start_worker(env, log_path):
    log = open(log_path, "a")
    return subprocess.Popen([sys.executable, "-m", "worker.cli", "worker", "--loglevel", "warning"],
                            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc, sig=signal.SIGTERM, timeout=60):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(port, data_dir):
    return subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(data_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def wait_for(cond, timeout, poll=0.2, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"not reached within {timeout:.0f} s: {what}")


# ------------------------------------------------------------------ accounting

def tally(config, run_ids):
    """Runs by status, executions (start events), distinct computed keys, lost stages."""
    store = client.get_store(config)
    runs = [store.get_run(r) for r in run_ids]
    stages = [st for r in run_ids for st in store.stages(r)]
    computed_keys = {st["key"] for st in stages if st["status"] == "completed"}
    # the execution's own start event ("<label> on <worker>"), not the engine's progress events
    labels = {st["id"]: st["label"] for st in stages}
    executions = sum(1 for r in run_ids for e in store.events(run_id=r, kinds=["start"], limit=100000)
                     if (e["message"] or "").startswith(f"{labels.get(e['stage_id'])} on "))
    distinct = {st["key"] for st in stages}
    lost = [st["label"] for st in stages if st["status"] not in ("completed", "cached")]
    return {"runs": len(runs), "completed": sum(r["status"] == "completed" for r in runs),
            "statuses": sorted({r["status"] for r in runs}), "executions": executions,
            "distinct_stages": len(distinct), "computed_keys": len(computed_keys), "not_done": lost}


def all_final(config, run_ids):
    store = client.get_store(config)
    return all(store.run_status(r) in FINAL for r in run_ids)


def report(name, numbers, recovery_s=None, expected_extra=0):
    ok = (numbers["completed"] == numbers["runs"] and not numbers["not_done"]
          and numbers["executions"] == numbers["distinct_stages"] + expected_extra
          and (recovery_s is None or recovery_s < 30))
    print(f"\n== {name}: {'OK' if ok else 'TARGET MISSED'}")
    print(f"  runs completed        {numbers['completed']} / {numbers['runs']}  (statuses {numbers['statuses']})")
    print(f"  stage executions      {numbers['executions']}  vs distinct stages {numbers['distinct_stages']}"
          + (f"  (+{expected_extra} expected: the killed stage reran)" if expected_extra else ""))
    if recovery_s is not None:
        print(f"  time to recover       {recovery_s:.1f} s")
    print(f"  lost / not done       {numbers['not_done'] or 'nothing'}")
    return ok


def fresh_env(home, **extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BPNET_STUDIO_HOME": str(home)}
    for var in ("DATABASE_URL", "REDIS_URL", "BPNET_STUDIO_ARTIFACTS"):
        env.pop(var, None)
    env.update(extra)
    return env


def use_env(env):
    for var in ("DATABASE_URL", "REDIS_URL", "BPNET_STUDIO_ARTIFACTS"):
        os.environ.pop(var, None)
    os.environ.update({k: v for k, v in env.items() if k in ("BPNET_STUDIO_HOME", "REDIS_URL")})
    return load_config()


# ------------------------------------------------------------------ scenarios

def kill_worker(home, timeout):
    env = fresh_env(home)
    config = use_env(env)
    store = client.get_store(config)
    workers = [start_worker(env, home / f"worker{i}.log") for i in range(2)]
    runs = [client.submit_run(tiny_run(f"long {i}", steps=60 + i), config=config) for i in range(2)]
    try:
        running = wait_for(lambda: next((st for st in store.stages_by_status(("running",))
                                         if st["kind"] == "train" and st["fraction"] > 0.05), None),
                           600, what="a training stage under way")
        pid = int(running["worker_id"].split(":")[1])
        victim = next(w for w in workers if w.pid == pid or _child_of(w.pid, pid))
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        killed_at = time.time()
        print(f"  SIGKILLed worker {running['worker_id']} while {running['label']} was at "
              f"{running['fraction']:.0%}; the other worker keeps going, nothing is restarted")
        # recovered = re-queued with a new message by the surviving worker's heartbeat
        wait_for(lambda: store.stage(running["id"])["attempts"] == running["attempts"] + 1,
                 300, what="the killed stage re-queued")
        recovery = time.time() - killed_at
        wait_for(lambda: all_final(config, runs), timeout, poll=1.0, what="all runs finished")
    finally:
        for w in workers:
            stop(w)
    return report("SIGKILL a worker mid-train", tally(config, runs), recovery, expected_extra=1)


def _child_of(parent, pid):
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[1]) == parent
    except (OSError, ValueError, IndexError):
        return False


def redis_restart(home, timeout):
    from worker.celery_app import get_app, waiting_messages

    if not shutil.which("redis-server"):
        print("\n== Redis restart: skipped (no redis-server on PATH)")
        return True
    port = free_port()
    redis = start_redis(port, home)
    env = fresh_env(home, REDIS_URL=f"redis://127.0.0.1:{port}/0")
    config = use_env(env)
    store = client.get_store(config)
    time.sleep(0.5)
    worker = start_worker(env, home / "worker.log")
    try:
        wait_for(lambda: any(w["alive"] for w in client.list_workers(config=config)), 120, what="worker up")
        runs = [client.submit_run(tiny_run(f"redis {i}", steps=40 + 10 * i), config=config) for i in range(3)]
        wait_for(lambda: store.stages_by_status(("running",)), 300, what="a stage running")
        os.killpg(redis.pid, signal.SIGKILL)
        redis.wait()
        print(f"  killed redis-server with {len(store.stages_by_status(('queued',)))} stage(s) queued and "
              f"{len(store.stages_by_status(('running',)))} running")
        time.sleep(5)
        redis = start_redis(port, home)   # empty: every message is gone
        restarted = time.time()
        app = get_app(config)

        def every_queued_stage_has_a_message():
            waiting = waiting_messages(app)
            if waiting is None:
                return False
            queued = store.stages_by_status(("queued",))
            return all((st["id"], st["attempts"]) in waiting for st in queued) and (
                queued or store.stages_by_status(("running",)))
        wait_for(every_queued_stage_has_a_message, 300, poll=0.5, what="messages resent")
        recovery = time.time() - restarted
        wait_for(lambda: all_final(config, runs), timeout, poll=1.0, what="all runs finished")
    finally:
        stop(worker)
        stop(redis, signal.SIGKILL)
    return report("kill and restart Redis (empty)", tally(config, runs), recovery)


def _submit_five(barrier, results, home, index):
    os.environ["BPNET_STUDIO_HOME"] = str(home)
    for var in ("DATABASE_URL", "REDIS_URL"):
        os.environ.pop(var, None)
    from worker import client as c
    from worker.config import load_config as lc
    config = lc()
    barrier.wait()
    ids = [c.submit_run(tiny_run(f"p{index} r{i}", resolution=(64 + 8 * ((index + i) % 5), 64)), config=config)
           for i in range(5)]
    results.put(ids)


def concurrent_start(home, timeout):
    env = fresh_env(home)
    config = use_env(env)
    workers = [start_worker(env, home / f"worker{i}.log") for i in range(4)]   # at once, fresh store
    try:
        wait_for(lambda: home.joinpath("studio.sqlite").exists(), 120, what="store created")
        ctx = mp.get_context("spawn")
        barrier, results = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_submit_five, args=(barrier, results, home, i)) for i in range(4)]
        for p in procs:
            p.start()
        runs = [r for _ in procs for r in results.get(timeout=300)]
        for p in procs:
            p.join()
        alive = wait_for(lambda: [w for w in client.list_workers(config=config) if w["alive"]]
                         if len([w for w in client.list_workers(config=config) if w["alive"]]) == 4 else None,
                         300, what="4 workers registered")
        print(f"  {len(alive)} workers registered; {len(runs)} runs submitted from 4 processes")
        dead = [i for i, w in enumerate(workers) if w.poll() is not None]
        wait_for(lambda: all_final(config, runs), timeout, poll=1.0, what="all runs finished")
    finally:
        for w in workers:
            stop(w)
    if dead:
        print(f"  workers that exited early: {dead}")
    return report("4 workers at once, 20 runs from 4 processes", tally(config, runs))


SCENARIOS = {"kill-worker": kill_worker, "redis-restart": redis_restart, "concurrent-start": concurrent_start}


def main():
    import logging
    sys.stdout.reconfigure(line_buffering=True)   # progress lines appear as they happen
    logging.basicConfig(level=logging.WARNING, format="  %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), action="append")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for the runs of one scenario")
    parser.add_argument("--keep", action="store_true", help="keep the data dirs (worker logs)")
    args = parser.parse_args()
    results = {}
    for name in args.scenario or list(SCENARIOS):
        home = Path(tempfile.mkdtemp(prefix=f"bpnet-fault-{name}-"))
        print(f"\n# {name} (data dir {home})")
        started = time.time()
        try:
            results[name] = SCENARIOS[name](home, args.timeout)
        except TimeoutError as err:
            print(f"  TIMEOUT: {err}")
            results[name] = False
        print(f"  wall time {time.time() - started:.0f} s")
        if not args.keep and results[name]:
            shutil.rmtree(home, ignore_errors=True)
    print("\n" + json.dumps(results))
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
