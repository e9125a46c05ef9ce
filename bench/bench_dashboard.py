"""Dashboard page load times with 1,000 runs in the job store (target: < 1 s per page).

Seeds a temporary store (SQLite, the default) with 1,000 finished synthetic runs through the job
system's API (bench/seed_store.py: 7 stages each, 2 evaluated results; a few with artifact files,
one failed), then renders every page with Streamlit's AppTest and prints the time the page script
takes: the first render in a fresh session (cold) and the median of the next ones (warm).
Timing is the server side of a page load; the browser adds its own drawing time on top.

    python bench/bench_dashboard.py [--runs 1000] [--repeats 5]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_S = 1.0


def seed(config, num_runs):
    from bench import seed_store

    started = time.time()
    last = None
    for i in range(num_runs):
        with_files = i >= num_runs - 3            # the newest few have files (overlays, downloads)
        fail_kind = "export" if i == num_runs - 4 else None
        last = seed_store.seed_finished_run(config, name=f"synthetic run {i:04d}", with_files=with_files,
                                            fail_kind=fail_kind, thresholds=(0.1,), precisions=("fp32",))
        if (i + 1) % 200 == 0:
            print(f"  seeded {i + 1} runs ({time.time() - started:.0f} s)", flush=True)
    seed_store.register_worker(config, "cpu-bench@host")
    return last


def time_page(page, query, repeats):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=120)
    at.query_params.update(query)
    if page != "views/runs.py":   # the session opens on the default page (Runs), then moves
        at.run()
        at.switch_page(page)
    start = time.perf_counter()
    at.run()
    cold = time.perf_counter() - start
    if at.exception:
        raise SystemExit(f"{page} raised: {[e.value for e in at.exception]}")
    warm = []
    for _ in range(repeats):
        start = time.perf_counter()
        at.run()
        warm.append(time.perf_counter() - start)
    errors = [e.value for e in at.error]
    return cold, statistics.median(warm), max(warm), errors


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="bench-dashboard-")
    os.environ["BPNET_STUDIO_HOME"] = home
    for var in ("DATABASE_URL", "REDIS_URL", "BPNET_STUDIO_ARTIFACTS"):
        os.environ.pop(var, None)
    from worker.config import load_config

    config = load_config()
    print(f"seeding {args.runs} runs into {home} …", flush=True)
    newest = seed(config, args.runs)
    # warm the interpreter (imports of streamlit, plotly, SQLAlchemy) so the first page is not
    # charged with them: a running server has them loaded already
    time_page("views/workers.py", {}, 1)
    pages = [("Runs", "views/runs.py", {}), ("New run", "views/new_run.py", {}),
             ("Run detail", "views/run_detail.py", {"run": newest}), ("Compare", "views/compare.py", {}),
             ("Workers", "views/workers.py", {})]
    rows = []
    for title, page, query in pages:
        cold, warm, worst, errors = time_page(page, query, args.repeats)
        rows.append((title, cold, warm, worst, "yes" if max(cold, warm) < TARGET_S else "NO", "; ".join(errors)[:60]))
    load = os.getloadavg()[0]
    print(f"\npage load with {args.runs} runs in the store (SQLite), seconds; target < {TARGET_S:g} s "
          f"(machine load average {load:.1f} on {os.cpu_count()} cores)")
    print("cold = first render in a new browser session; warm = the next renders (reruns, refreshes)")
    print(f"{'page':<11} {'cold':>6} {'warm':>6} {'worst':>6}  {'<1 s':<5} errors shown")
    for title, cold, warm, worst, ok, errors in rows:
        print(f"{title:<11} {cold:6.3f} {warm:6.3f} {worst:6.3f}  {ok:<5} {errors}")
    return 0 if all(r[4] == "yes" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
