"""`bpnet-studio`: run workers, submit/inspect/cancel runs, and `up` (everything on one machine).

    bpnet-studio up                       store + embedded broker + one worker + the dashboard
    bpnet-studio worker [--queues cpu,gpu] [--gpus 0,1]
    bpnet-studio submit RUN.yaml [--name NAME] [--wait]
    bpnet-studio status [RUN] [--json]
    bpnet-studio cancel RUN
    bpnet-studio rerun RUN

Configuration comes from the environment (see `worker.config`): BPNET_STUDIO_HOME, DATABASE_URL,
REDIS_URL. A BpnetError is printed as `error: ...` with exit code 2.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bpnet.errors import BpnetError
from worker.config import mask_url

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "app" / "main.py"
FINAL = ("completed", "failed", "cancelled")
LOCAL_ADDRESS = "127.0.0.1"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def build_parser():
    parser = argparse.ArgumentParser(prog="bpnet-studio", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("worker", help="Run a Celery worker that executes stages.")
    p.add_argument("--queues", type=comma_list, help="comma-separated queues (default: from the detected "
                                                     "capabilities: cpu, plus gpu/tensorrt when present)")
    p.add_argument("--gpus", help="comma-separated GPU indices: one worker process per GPU, "
                                  "each with its own CUDA_VISIBLE_DEVICES (one task per GPU)")
    p.add_argument("--loglevel", default="info")

    p = sub.add_parser("submit", help="Validate a run spec (YAML) and queue it.")
    p.add_argument("spec", help="run spec YAML file")
    p.add_argument("--name", help="run name (default: the spec's name)")
    p.add_argument("--wait", action="store_true", help="wait until the run finishes; exit 1 if it failed")
    p.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds")

    p = sub.add_parser("status", help="List runs, or show one run's stages and results.")
    p.add_argument("run", nargs="?", help="run id")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--limit", type=int, default=30)

    p = sub.add_parser("cancel", help="Cancel a queued or running run.")
    p.add_argument("run")

    p = sub.add_parser("rerun", help="Submit a run's spec again (finished stages are reused).")
    p.add_argument("run")

    p = sub.add_parser("up", help="Everything on this machine: store, embedded broker, a worker, the dashboard.")
    p.add_argument("--port", type=int, default=8501, help="dashboard port")
    p.add_argument("--address", default=LOCAL_ADDRESS,
                   help="dashboard bind address (default 127.0.0.1: this machine only). 0.0.0.0 "
                        "opens it to the network WITHOUT a login: put a reverse proxy with a "
                        "password in front (docker-compose.yml, profile `auth`)")
    p.add_argument("--no-dashboard", action="store_true")
    p.add_argument("--no-worker", action="store_true")
    return parser


def comma_list(text):
    """'cpu,gpu' -> ['cpu', 'gpu']: a list from here on, never split again."""
    return [item.strip() for item in text.split(",") if item.strip()]


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args) or 0
    except BpnetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:   # `bpnet-studio status | head`
        sys.stdout = open(os.devnull, "w")
        return 0


# ------------------------------------------------------------------ worker

def cmd_worker(args):
    if args.gpus:
        return _one_worker_per_gpu(args)
    from worker.capabilities import default_queues, detect_capabilities
    from worker.celery_app import QUEUES, get_app

    queues = args.queues or default_queues(detect_capabilities())
    unknown = set(queues) - set(QUEUES)
    if unknown:
        raise BpnetError(f"--queues: {', '.join(sorted(unknown))} not one of {', '.join(QUEUES)}")
    app = get_app()
    import worker.tasks  # noqa: F401  (registers the task and the heartbeat signals)
    # solo pool: one task at a time in this process (TensorFlow and CUDA do not survive fork; one
    # task per GPU); a SIGKILL takes the task down with it and the store recovers it.
    app.worker_main(["worker", "--pool=solo", "--concurrency=1", "-Q", ",".join(queues),
                     "-n", f"bpnet-{os.getpid()}@%h", f"--loglevel={args.loglevel}", "--without-gossip",
                     "--without-mingle", "--without-heartbeat"])
    return 0


def _one_worker_per_gpu(args):
    indices = comma_list(args.gpus)
    if not all(g.isdigit() for g in indices):
        raise BpnetError(f"--gpus: {args.gpus!r} must be comma-separated GPU indices such as 0,1")
    children = []
    for index in indices:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": index}
        cmd = [sys.executable, "-m", "worker.cli", "worker", f"--loglevel={args.loglevel}"]
        if args.queues:
            cmd += ["--queues", ",".join(args.queues)]
        children.append(subprocess.Popen(cmd, env=env))
    return _wait_children(children)


def _wait_children(children):
    # SIGTERM (docker stop, a test harness) stops the children as Ctrl-C does.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while all(c.poll() is None for c in children):
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        _stop(children)
    return max((c.returncode or 0) for c in children)


def _raise_interrupt(*_):
    raise KeyboardInterrupt


def _stop(children):
    for c in children:
        if c.poll() is None:
            c.send_signal(signal.SIGTERM)
    deadline = time.time() + 20
    for c in children:
        try:
            c.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            c.kill()


# ------------------------------------------------------------------ runs

def cmd_submit(args):
    from worker import client
    from worker.runs import load_run_spec

    spec = load_run_spec(args.spec)
    run_id = client.submit_run(spec.model_dump(mode="json"), name=args.name)
    print(run_id)
    if not args.wait:
        return 0
    status = wait_for_run(run_id, args.timeout)
    print(f"run {run_id}: {status}", file=sys.stderr)
    return 0 if status == "completed" else 1


def wait_for_run(run_id, timeout=None, poll_s=2.0):
    from worker import client

    started = time.time()
    while True:
        run = client.get_store().get_run(run_id)
        if run["status"] in FINAL:
            return run["status"]
        if timeout is not None and time.time() - started > timeout:
            return run["status"]
        time.sleep(poll_s)


def cmd_status(args):
    from worker import client

    if args.run:
        run = client.get_run(args.run, events_limit=20)
        if args.json:
            print(json.dumps(run, indent=2, default=str))
            return 0
        print(f"{run['id']}  {run['name']}  {run['status']}")
        if run["error"]:
            print(f"error: {run['error']}")
        for st in run["stages"]:
            extra = st["error"] or st["message"] or ""
            print(f"  {st['status']:<10} {st['fraction'] * 100:5.0f}%  {st['label']:<40} {extra[:80]}")
        for r in run["results"]:
            print(f"  result: {r['label']:<40} AP={_fmt(r['AP'])} latency_ms={_fmt(r['latency_ms'])} "
                  f"params={r['params']} backend={r['backend']}")
        return 0
    runs = client.list_runs(limit=args.limit)
    if args.json:
        print(json.dumps(runs, indent=2, default=str))
        return 0
    if not runs:
        print("no runs yet: bpnet-studio submit specs/run_demo.yaml")
    for r in runs:
        print(f"{r['id']}  {r['status']:<10} {r['progress'] * 100:5.0f}%  {r['num_stages']:3d} stages  "
              f"{r['name']}")
    return 0


def _fmt(v):
    return "-" if v is None else f"{v:.3f}"


def cmd_cancel(args):
    from worker import client

    if client.cancel_run(args.run):
        print(f"run {args.run} cancelled")
        return 0
    print(f"run {args.run} had already finished", file=sys.stderr)
    return 1


def cmd_rerun(args):
    from worker import client

    print(client.rerun(args.run))
    return 0


# ------------------------------------------------------------------ up

def cmd_up(args):
    from worker.config import config_env, load_config
    from worker.store import open_store

    config = load_config()
    config.home.mkdir(parents=True, exist_ok=True)
    open_store(config.database_url)   # creates or migrates the schema before anyone uses it
    env = {**os.environ, **config_env(config)}
    print(f"data dir: {config.home}")
    print(f"store:    {mask_url(config.database_url)}")
    print(f"broker:   {'embedded SQLite' if config.embedded_broker else mask_url(config.broker_url)}")
    print(f"demo run: bpnet-studio submit {ROOT / 'specs' / 'run_demo.yaml'}")
    children = []
    if not args.no_worker:
        children.append(subprocess.Popen([sys.executable, "-m", "worker.cli", "worker"], env=env, cwd=ROOT))
    if not args.no_dashboard:
        if DASHBOARD.is_file():
            children.append(subprocess.Popen(dashboard_command(args.address, args.port), env=env, cwd=ROOT))
            print(f"dashboard: {dashboard_url(args.address, args.port)}")
            if args.address not in LOOPBACK:
                print(f"warning: the dashboard listens on {args.address}, open to the network with no "
                      "login; anyone who reaches this port can submit runs and download models. Put a "
                      "reverse proxy with a password in front (see README, 'Security')", file=sys.stderr)
        else:
            print(f"no dashboard yet ({DASHBOARD} is missing); running the worker only")
    if not children:
        return 0
    return _wait_children(children)


def dashboard_command(address, port):
    # No file watcher: a served dashboard is not edited live, and without the watchdog package
    # Streamlit polls every source file several times a second, CPU a loaded machine lacks.
    return [sys.executable, "-m", "streamlit", "run", str(DASHBOARD), "--server.address", address,
            "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none"]


def dashboard_url(address, port):
    host = "localhost" if address in LOOPBACK else address
    return f"http://{host}:{port}"


COMMANDS = {"worker": cmd_worker, "submit": cmd_submit, "status": cmd_status, "cancel": cmd_cancel,
            "rerun": cmd_rerun, "up": cmd_up}

if __name__ == "__main__":
    sys.exit(main())
