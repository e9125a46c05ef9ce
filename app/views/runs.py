"""Runs: every run with its status, current stage, progress, elapsed time and ETA, refreshed live;
filter by status and dataset; cancel, re-run, open."""

import streamlit as st

from app import jobs
from app.html_table import html_table
from app.widgets import run_action_buttons, run_detail_href
from bpnet.errors import BpnetError

REFRESH_S = 2         # while a run on the page is queued or running
IDLE_REFRESH_S = 10   # otherwise only a new run can appear: no need to redraw the table every 2 s
PAGE_SIZE = 100

st.title("Runs")

try:
    datasets = jobs.list_datasets()
except BpnetError as err:
    st.error(str(err), icon=":material/block:")
    st.stop()

c1, c2, c3 = st.columns([2, 2, 2])
statuses = c1.multiselect("Status", jobs.RUN_STATUSES, key="status_filter")
dataset = c2.selectbox("Dataset", [""] + datasets, key="dataset_filter",
                       format_func=lambda d: "all datasets" if not d else jobs.dataset_name(d))
search = c3.text_input("Name contains", key="search_filter")
page = st.number_input("Page", min_value=1, value=1, key="page", help=f"{PAGE_SIZE} runs per page, newest first")

COLUMNS = ("name", "status", "stage", "progress", "stages done", "elapsed", "ETA", "dataset", "created", "error", "id")
TABLE_HEIGHT_PX = 560


def any_active():
    try:
        return bool(jobs.list_runs(status=("queued", "running"), limit=1))
    except BpnetError:
        return True   # the table below says what is wrong, and is retried often


runs_active = any_active()
refresh_s = REFRESH_S if runs_active else IDLE_REFRESH_S


@st.fragment(run_every=refresh_s)
def runs_table():
    """Re-drawn every few seconds on its own, so the filters above keep their state."""
    try:
        runs = jobs.list_runs(status=statuses or None, dataset=dataset or None, search=search or None,
                               limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    except BpnetError as err:
        st.error(str(err), icon=":material/block:")
        return
    if not runs:
        st.info("No runs match. Start one on the **New run** page.", icon=":material/info:")
        st.page_link("views/new_run.py", label="New run", icon=":material/add_circle:")
        return
    if any_active() != runs_active:
        st.rerun()   # a run started or all finished: the refresh interval (set when the page is drawn) follows
    active = sum(r["status"] in ("queued", "running") for r in runs)
    st.caption(f"{len(runs)} run(s) shown · {active} active · refreshed every {refresh_s} s")
    st.caption("Click a run's name to open it.")
    # An HTML table, not st.dataframe: the page shows in ~0.6 s less (app/html_table.py), and a
    # link opens Run detail even while the table refreshes (a row click's rerun could be lost).
    st.html(html_table(jobs.run_table_rows(runs), COLUMNS, links={"name": [run_detail_href(r["id"]) for r in runs]},
                       bars={"progress"}, max_height_px=TABLE_HEIGHT_PX))
    st.session_state["runs_on_page"] = {r["id"]: (r["name"], r["status"]) for r in runs}


runs_table()

st.divider()
choices = st.session_state.get("runs_on_page", {})
if choices:
    c1, c2, c3, c4 = st.columns([3, 1, 1, 1], vertical_alignment="bottom")
    run_id = c1.selectbox("Run", list(choices), key="selected_run",
                          format_func=lambda i: f"{choices[i][0]} · {choices[i][1]} · {i}")
    status = choices.get(run_id, ("", ""))[1]
    with c2:
        st.page_link("views/run_detail.py", label="Open", icon=":material/open_in_new:",
                     query_params={"run": run_id})
    run_action_buttons(run_id, status, c3, c4, key="runs")
