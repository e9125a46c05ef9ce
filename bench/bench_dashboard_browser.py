"""Dashboard page timings in a real browser with 1,000 runs in the store (target: p95 < 2 s).

Seeds a temporary store (SQLite, the default) with synthetic finished runs through the job
system's API (bench/seed_store.py: 7 stages and 2 results each; the newest few with files for
pictures and downloads), starts the dashboard alone (as `bpnet-studio up` does, no worker) on
127.0.0.1 and a free port, and opens every page in headless Debian Chromium: the time from
`page.goto` to the page's content being visible (Runs: a run's row; New run: the Submit button;
Run detail: the run's status metric and results table; Compare: the AP-vs-latency chart; Workers:
the workers table) — what a user waits for, server render and browser drawing together.

Each page is timed two ways in every round, interleaved:
  - first visit: a fresh browser profile (nothing cached: Streamlit's 480 KB entry bundle, the
    table and Plotly chunks and the fonts are fetched and compiled again);
  - returning: a new tab of the profile that has opened the dashboard before (Streamlit's
    bundles are content-hashed and served `immutable`, so a user's browser keeps them; this is
    what opening a bookmarked or shared link costs).
`title` is the time until the page's heading is drawn (the app has started and the page script
is running), `content` until its content is visible. The first round warms the server and the
returning profile and is reported apart (cold).

With `--baseline DIR` (a checkout of another version, e.g. `git worktree add --detach DIR REV`)
that version's dashboard serves the same store beside this one and every load is timed on both
in turn, so the ratios compare them under the same machine load.

    python bench/bench_dashboard_browser.py [--runs 1000] [--repeats 10] [--home DIR_SEEDED_BEFORE]
                                            [--baseline CHECKOUT]
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_S = 2.0
CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1400, "height": 1200}
MODES = ("first visit", "returning")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_dashboard(port, env, command=None, cwd=ROOT):
    """(port, process) of the dashboard exactly as `bpnet-studio up` starts it, without the worker
    (`command`: another checkout's)."""
    from worker.cli import dashboard_command

    process = subprocess.Popen(command or dashboard_command("127.0.0.1", port), cwd=cwd, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                return port, process
        except OSError:
            time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    raise SystemExit("the dashboard did not start within 60 s")


def table_cell(text):
    """A table cell showing `text` is visible: an HTML table's (app/html_table.py, the cell or its
    link) or, for a --baseline from before those, a Streamlit dataframe's (drawn on a canvas; its
    hidden accessible copy holds the cell)."""
    def content(page):
        page.locator(f'td:has-text("{text}"), [data-testid="stDataFrame"]').first.wait_for(
            state="visible", timeout=120_000)
        page.locator(f'td:has-text("{text}"), [data-testid^="glide-cell"]:has-text("{text}")').first.wait_for(
            state="attached", timeout=120_000)
    return content


def visible(locate):
    def content(page):
        locate(page).wait_for(state="visible", timeout=120_000)
    return content


def pages(newest_run, newest_name):
    """(title, path, a function that returns once the page's content is visible)."""
    return [
        ("Runs", "/runs", table_cell(newest_name)),
        ("New run", "/new", visible(lambda p: p.get_by_role("button", name="Submit run"))),
        ("Run detail", f"/run?run={newest_run}",
         visible(lambda p: p.get_by_text("One result: deployables and pictures"))),
        # the AP-vs-latency chart's points (Vega-Lite; a --baseline before it was Plotly's chart)
        ("Compare", "/compare", visible(lambda p: p.locator(
            "[data-testid='stVegaLiteChart'] g.results_marks path, .js-plotly-plot:has-text('Pareto front')").first)),
        ("Workers", "/workers", table_cell("cpu-bench@host")),
    ]


def time_page(context, url, title, content):
    """(seconds to the page's heading, seconds to its content) of one load in a new tab."""
    page = context.new_page()
    try:
        start = time.perf_counter()
        page.goto(url)
        page.get_by_role("heading", name=title, exact=True).wait_for(state="visible", timeout=120_000)
        shell = time.perf_counter() - start
        content(page)
        return shell, time.perf_counter() - start
    finally:
        page.close()


def time_first_visit(browser, url, title, content):
    """One load in a fresh profile (an empty HTTP cache)."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        return time_page(context, url, title, content)
    finally:
        context.close()


def percentile(values, q):
    values = sorted(values)
    k = (len(values) - 1) * q / 100
    low, high = int(k), min(len(values) - 1, int(k) + 1)
    return values[low] + (values[high] - values[low]) * (k - low)


def baseline_command(checkout, port):
    """How the dashboard of another checkout (e.g. a git worktree of an older commit) is started,
    asked of that checkout's own `worker.cli.dashboard_command`."""
    code = ("import json, sys; from worker.cli import dashboard_command; "
            f"print(json.dumps(dashboard_command('127.0.0.1', {port})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=checkout, env={**os.environ, "PYTHONPATH": str(checkout)},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--home", help="reuse a store this script seeded before (skips seeding)")
    parser.add_argument("--baseline", help="a checkout of another version (e.g. `git worktree add --detach DIR REV`): "
                                           "its dashboard on the same store is timed too, interleaved, with ratios")
    args = parser.parse_args()
    home = args.home or tempfile.mkdtemp(prefix="bench-dashboard-browser-")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "BPNET_STUDIO_ARTIFACTS")}
    env["BPNET_STUDIO_HOME"] = home
    os.environ.update(env)
    for var in ("DATABASE_URL", "REDIS_URL", "BPNET_STUDIO_ARTIFACTS"):
        os.environ.pop(var, None)
    from bench.bench_dashboard import seed
    from worker.config import load_config

    if args.home:
        from worker import client
        newest = client.list_runs(limit=1)[0]["id"]
    else:
        print(f"seeding {args.runs} runs into {home} …", flush=True)
        newest = seed(load_config(), args.runs)
    newest_name = f"synthetic run {args.runs - 1:04d}"
    apps = {"this": start_dashboard(free_port(), env)}
    if args.baseline:
        port = free_port()
        apps["baseline"] = start_dashboard(port, {**env, "PYTHONPATH": str(Path(args.baseline).resolve())},
                                           baseline_command(Path(args.baseline).resolve(), port),
                                           cwd=Path(args.baseline).resolve())
    timings, cold, loads = measure(apps, pages(newest, newest_name), args.repeats)
    print_table(args, timings, cold, loads)
    if "baseline" in apps:
        print_ratios(timings)
    return 0 if all(percentile([c for _, c in timings["this", t, MODES[1]]], 95) < TARGET_S
                    for t, _, _ in pages(newest, newest_name)) else 1


def measure(apps, page_list, repeats):
    """{(app, page, mode): [(title s, content s)]}, the cold first round apart, and the load
    averages seen: every page, mode and app in turn in every round."""
    from playwright.sync_api import sync_playwright

    timings, cold, loads = {}, {}, [os.getloadavg()[0]]
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM,
                                         args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            returning = {app: browser.new_context(viewport=VIEWPORT) for app in apps}
            try:
                for round_ in range(repeats + 1):
                    for title, path, content in page_list:
                        for mode in MODES:
                            for app, (port, _) in apps.items():
                                url = f"http://127.0.0.1:{port}{path}"
                                seconds = (time_first_visit(browser, url, title, content) if mode == MODES[0]
                                           else time_page(returning[app], url, title, content))
                                if round_ == 0:
                                    cold[app, title, mode] = seconds
                                else:
                                    timings.setdefault((app, title, mode), []).append(seconds)
                    loads.append(os.getloadavg()[0])
            finally:
                browser.close()
    finally:
        for _, process in apps.values():
            os.killpg(process.pid, signal.SIGTERM)
    return timings, cold, loads


def print_table(args, timings, cold, loads):
    from bpnet.machine import cpu_line, describe_cpu

    print(f"\nbrowser page timings with {args.runs} runs in the store (SQLite), seconds from navigation to "
          f"content visible; {args.repeats} loads per page, mode and app, interleaved; target p95 < {TARGET_S:g} s")
    print(f"{cpu_line(describe_cpu())}; load average (1 min) during the run {min(loads):.1f}–{max(loads):.1f}, "
          f"median {statistics.median(loads):.1f}")
    print(f"{'app':<9} {'page':<11} {'mode':<12} {'cold':>6} {'title p50':>9} {'p50':>6} {'p95':>6} {'max':>6}  "
          f"p95<{TARGET_S:g}s")
    for (app, title, mode), values in timings.items():
        content = [c for _, c in values]
        p95 = percentile(content, 95)
        print(f"{app:<9} {title:<11} {mode:<12} {cold[app, title, mode][1]:6.2f} "
              f"{statistics.median(s for s, _ in values):9.2f} {statistics.median(content):6.2f} {p95:6.2f} "
              f"{max(content):6.2f}  {'yes' if p95 < TARGET_S else 'NO'}")


def print_ratios(timings):
    print("\nthis / baseline, same loads interleaved (below 1 = faster):")
    print(f"{'page':<11} {'mode':<12} {'p50 ratio':>9} {'p95 ratio':>9}")
    for (app, title, mode), values in timings.items():
        if app != "this":
            continue
        ours, theirs = [c for _, c in values], [c for _, c in timings["baseline", title, mode]]
        print(f"{title:<11} {mode:<12} {statistics.median(ours) / statistics.median(theirs):9.2f} "
              f"{percentile(ours, 95) / percentile(theirs, 95):9.2f}")


if __name__ == "__main__":
    sys.exit(main())
