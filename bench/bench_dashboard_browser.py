"""Dashboard page timings in a real browser with 1,000 runs in the store (target: p95 < 2 s).

Seeds a temporary store (SQLite, the default) with synthetic finished runs through the job
system's API (bench/seed_store.py: 7 stages and 2 results each; the newest few with files for
pictures and downloads), starts the dashboard alone (`streamlit run app/main.py`, no worker) on
127.0.0.1 and a free port, and opens every page in headless Debian Chromium: the time from
`page.goto` to the page's content being visible (Runs: a run's row; New run: the Submit button;
Run detail: the run's status metric and results table; Compare: the AP-vs-latency chart; Workers:
the workers table) — what a user waits for, server render and browser drawing together. Each
page is opened `--repeats` times in a fresh tab, pages interleaved; the first round warms the
server's caches and is reported apart (cold).

    python bench/bench_dashboard_browser.py [--runs 1000] [--repeats 10] [--home DIR_SEEDED_BEFORE]
"""

import argparse
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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_dashboard(port, env):
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "main.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                return process
        except OSError:
            time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    raise SystemExit("the dashboard did not start within 60 s")


def table_with(text):
    """A Streamlit table (drawn on a canvas) showing `text`: the table is visible and its hidden
    accessible copy holds the cell."""
    def content(page):
        page.get_by_test_id("stDataFrame").first.wait_for(state="visible", timeout=120_000)
        page.locator('[data-testid^="glide-cell"]', has_text=text).first.wait_for(state="attached", timeout=120_000)
    return content


def visible(locate):
    def content(page):
        locate(page).wait_for(state="visible", timeout=120_000)
    return content


def pages(newest_run, newest_name):
    """(title, path, a function that returns once the page's content is visible)."""
    return [
        ("Runs", "/runs", table_with(newest_name)),
        ("New run", "/new", visible(lambda p: p.get_by_role("button", name="Submit run"))),
        ("Run detail", f"/run?run={newest_run}",
         visible(lambda p: p.get_by_text("One result: deployables and pictures"))),
        ("Compare", "/compare", visible(lambda p: p.locator(".js-plotly-plot", has_text="Pareto front").first)),
        ("Workers", "/workers", table_with("cpu-bench@host")),
    ]


def time_page(browser, url, content):
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    try:
        start = time.perf_counter()
        page.goto(url)
        content(page)
        return time.perf_counter() - start
    finally:
        page.close()


def percentile(values, q):
    values = sorted(values)
    k = (len(values) - 1) * q / 100
    low, high = int(k), min(len(values) - 1, int(k) + 1)
    return values[low] + (values[high] - values[low]) * (k - low)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--home", help="reuse a store this script seeded before (skips seeding)")
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
    port = free_port()
    dashboard = start_dashboard(port, env)
    from playwright.sync_api import sync_playwright

    timings = {}
    cold = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM,
                                         args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            try:
                for round_ in range(args.repeats + 1):
                    for title, path, content in pages(newest, newest_name):
                        seconds = time_page(browser, f"http://127.0.0.1:{port}{path}", content)
                        if round_ == 0:
                            cold[title] = seconds
                        else:
                            timings.setdefault(title, []).append(seconds)
            finally:
                browser.close()
    finally:
        os.killpg(dashboard.pid, signal.SIGTERM)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    flags = Path("/proc/cpuinfo").read_text()
    isa = "AVX-512 VNNI" if "avx512_vnni" in flags else ("AVX2" if "avx2" in flags else "no AVX2")
    print(f"\nbrowser page timings with {args.runs} runs in the store (SQLite), seconds from navigation to "
          f"content visible; {args.repeats} loads per page, interleaved; target p95 < {TARGET_S:g} s")
    print(f"CPU: {cpu} ({isa}), {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (shared machine: "
          "under load)")
    print(f"{'page':<11} {'cold':>6} {'p50':>6} {'p95':>6} {'max':>6}  p95<{TARGET_S:g}s")
    ok = True
    for title, values in timings.items():
        p95 = percentile(values, 95)
        ok &= p95 < TARGET_S
        print(f"{title:<11} {cold[title]:6.2f} {statistics.median(values):6.2f} {p95:6.2f} {max(values):6.2f}  "
              f"{'yes' if p95 < TARGET_S else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
