"""What one Streamlit element costs in the browser: a page with only a heading, and the same page
with one 100-row table drawn each way the dashboard could (st.dataframe, st.table, a Markdown
table, an HTML table through st.html), with st.json, with one Vega-Lite chart, and with the
chart and a dataframe (Compare's first screen).

Why: the dashboard's page target is p95 < 2 s from navigation to content visible, and on a 2-core
machine Streamlit's own start takes most of it; this shows which elements add a component the
browser must fetch and evaluate (the reason app/html_table.py exists). A probe app is written to a
temporary folder and served by Streamlit exactly as `bpnet-studio up` serves the dashboard; every
variant is loaded in a fresh browser profile and in a returning one, interleaved, in every round.

    python bench/bench_streamlit_elements.py [--repeats 6]
"""

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_dashboard_browser import CHROMIUM, MODES, VIEWPORT, free_port, percentile, start_dashboard  # noqa: E402

ROWS = 100
PROBE_APP = f'''
import sys
sys.path.insert(0, {str(ROOT)!r})
import pandas as pd
import streamlit as st
from app.html_table import html_table

rows = [{{"name": f"run {{i:04d}}", "status": "completed", "stage": "evaluate", "progress": 100.0,
          "elapsed": "3m 2s", "dataset": "coco-mini", "id": f"{{i:08x}}"}} for i in range({ROWS})]
kind = st.query_params.get("kind", "heading only")
st.title("Probe")
if kind == "st.dataframe":
    st.dataframe(rows, hide_index=True)
elif kind == "st.table":
    st.table(pd.DataFrame(rows))
elif kind == "Markdown table":
    st.markdown("| " + " | ".join(rows[0]) + " |\\n|" + "---|" * len(rows[0]) + "\\n" +
                "\\n".join("| " + " | ".join(str(v) for v in r.values()) + " |" for r in rows))
elif kind == "st.html table":
    st.html(html_table(rows, links={{"name": ["?run=" + r["id"] for r in rows]}}, bars={{"progress"}}))
elif kind == "st.json":
    st.json({{r["id"]: r for r in rows[:10]}})
if kind.startswith("Vega-Lite"):
    points = [{{"x": i, "y": (i * 37) % 100}} for i in range(len(rows))]
    st.vega_lite_chart(points, {{"mark": "point", "encoding": {{"x": {{"field": "x", "type": "quantitative"}},
                                "y": {{"field": "y", "type": "quantitative"}}}}}}, width="stretch")
if kind == "Vega-Lite + st.dataframe":
    st.dataframe(rows, hide_index=True)
st.write("end of page")
'''
KINDS = ("heading only", "st.dataframe", "st.table", "Markdown table", "st.html table", "st.json", "Vega-Lite",
         "Vega-Lite + st.dataframe")


def wait_for_content(page, kind):
    """Returns once the variant's element is drawn (the dataframe: its first cells on the canvas's
    accessible copy; the others: their last row's or key's text)."""
    if kind == "heading only":
        page.get_by_text("end of page").wait_for(state="visible", timeout=120_000)
    elif kind == "st.dataframe":
        page.get_by_test_id("stDataFrame").first.wait_for(state="visible", timeout=120_000)
        page.locator('[data-testid^="glide-cell"]', has_text="run 0005").first.wait_for(state="attached",
                                                                                       timeout=120_000)
    elif kind.startswith("Vega-Lite"):
        page.locator("[data-testid='stVegaLiteChart'] g.mark-symbol path").first.wait_for(state="visible",
                                                                                          timeout=120_000)
        if kind.endswith("st.dataframe"):
            wait_for_content(page, "st.dataframe")
    elif kind == "st.json":
        page.get_by_text("00000009").first.wait_for(state="visible", timeout=120_000)
    else:
        page.get_by_text(f"run {ROWS - 1:04d}").first.wait_for(state="visible", timeout=120_000)


def load_seconds(context, url, kind):
    page = context.new_page()
    try:
        start = time.perf_counter()
        page.goto(url)
        wait_for_content(page, kind)
        return time.perf_counter() - start
    finally:
        page.close()


def measure(port, repeats):
    """{(kind, mode): [seconds]}: the first round warms the server and is left out."""
    from playwright.sync_api import sync_playwright

    timings, loads = {}, []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        returning = browser.new_context(viewport=VIEWPORT)
        try:
            for round_ in range(repeats + 1):
                for kind in KINDS:
                    for mode in MODES:
                        url = f"http://127.0.0.1:{port}/?kind={quote(kind)}"
                        context = browser.new_context(viewport=VIEWPORT) if mode == MODES[0] else returning
                        try:
                            seconds = load_seconds(context, url, kind)
                        finally:
                            if mode == MODES[0]:
                                context.close()
                        if round_:
                            timings.setdefault((kind, mode), []).append(seconds)
                loads.append(os.getloadavg()[0])
        finally:
            browser.close()
    return timings, loads


def main():
    from bpnet.machine import cpu_line, describe_cpu
    from worker.cli import dashboard_command

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-elements-") as folder:
        app = Path(folder) / "probe.py"
        app.write_text(PROBE_APP)
        port = free_port()
        command = dashboard_command("127.0.0.1", port)
        command[command.index("run") + 1] = str(app)
        _, process = start_dashboard(port, dict(os.environ), command)
        try:
            timings, loads = measure(port, args.repeats)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
    print(f"\none Streamlit element ({ROWS} rows) in headless Chromium, seconds from navigation to it drawn; "
          f"{args.repeats} loads per variant and mode, interleaved")
    print(f"{cpu_line(describe_cpu())}; load average (1 min) during the run {min(loads):.1f}–{max(loads):.1f}")
    print(f"{'variant':<24} {'mode':<12} {'p50':>6} {'p95':>6} {'max':>6}  {'p50 over heading only':>22}")
    for (kind, mode), values in timings.items():
        bare = statistics.median(timings["heading only", mode])
        print(f"{kind:<24} {mode:<12} {statistics.median(values):6.2f} {percentile(values, 95):6.2f} "
              f"{max(values):6.2f}  {statistics.median(values) - bare:+22.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
