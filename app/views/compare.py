"""Compare: results picked from any runs side by side, like an experiment dashboard: AP vs latency
with the Pareto front (click a point to open its result), parallel coordinates over every
setting, AP by person size, size vs AP, latency by precision, a table (a run's name opens that
result) with CSV export, the config diff of two results (only what differs), and both results'
pictures on the same images. Runs, filters and the two diffed results live in the address, so a
comparison can be shared as a link."""

import csv
import io

import streamlit as st

from app import charts, jobs, present, widgets
from app.html_table import html_table
from bpnet.errors import BpnetError

DEFAULT_RUNS = 5
CHARTS = ("AP vs latency", "all settings (parallel coordinates)", "AP by person size", "size vs AP",
          "latency by precision")
OVERLAY_IMAGES = 2


def query_list(name):
    """A comma-separated query parameter as a list ([] when absent)."""
    value = st.query_params.get(name)
    return [v for v in value.split(",") if v] if value else []


def set_query(name, values):
    """Keep the page's state in the address (a permalink); drop parameters at their default."""
    text = ",".join(values) if isinstance(values, (list, tuple)) else (values or "")
    if text:
        st.query_params[name] = text
    elif name in st.query_params:
        del st.query_params[name]


st.title("Compare")

try:
    runs = [r for r in jobs.list_runs(limit=200) if r["status"] in ("completed", "running", "failed", "cancelled")]
except BpnetError as err:
    st.error(str(err), icon=":material/block:")
    st.stop()
if not runs:
    st.info("No finished runs to compare yet. Start one on the **New run** page.", icon=":material/info:")
    st.stop()

names = {r["id"]: f"{r['name']} · {r['status']} · {r['id']}" for r in runs}
linked_runs = [i for i in query_list("runs") if i in names]
run_ids = st.multiselect("Runs", list(names), default=linked_runs or list(names)[:DEFAULT_RUNS],
                         format_func=names.get, key="compare_runs")
set_query("runs", run_ids if run_ids != list(names)[:DEFAULT_RUNS] else [])
if not run_ids:
    st.info("Pick at least one run.", icon=":material/info:")
    st.stop()
try:
    rows = jobs.chart_rows(jobs.list_results(run_ids))
except BpnetError as err:
    st.error(str(err), icon=":material/block:")
    st.stop()
if not rows:
    st.info("The chosen runs have no evaluated results yet.", icon=":material/info:")
    st.stop()

c1, c2 = st.columns(2)
precisions = sorted({r["precision"] for r in rows})
resolutions = sorted({r.get("resolution") or "?" for r in rows})
chosen_precisions = c1.pills("Precisions", precisions, selection_mode="multi",
                             default=[p for p in query_list("precisions") if p in precisions] or precisions,
                             key="compare_precisions")
chosen_resolutions = c2.pills("Resolutions", resolutions, selection_mode="multi",
                              default=[r for r in query_list("resolutions") if r in resolutions] or resolutions,
                              key="compare_resolutions")
set_query("precisions", chosen_precisions if set(chosen_precisions or []) != set(precisions) else [])
set_query("resolutions", chosen_resolutions if set(chosen_resolutions or []) != set(resolutions) else [])
rows = [r for r in rows if r["precision"] in (chosen_precisions or []) and
        (r.get("resolution") or "?") in (chosen_resolutions or [])]
labels = {r["stage_id"]: r["label"] for r in rows}
with st.expander(f"Results: {len(labels)} match the filters; untick any to leave them out"):
    picked = st.multiselect("Results", list(labels), default=list(labels), format_func=labels.get,
                            key="compare_results")
rows = [r for r in rows if r["stage_id"] in picked]
if not rows:
    st.info("No result left after the filters.", icon=":material/info:")
    st.stop()

# Which images the numbers come from, said plainly (one note per evaluation set).
notes = {}
for run_id in dict.fromkeys(r["run_id"] for r in rows):
    first = next(r for r in rows if r["run_id"] == run_id)
    note = jobs.evaluation_note(first.get("annotations"), first.get("dataset"))
    notes.setdefault(note, []).append(first["run_name"])
for note, run_names in notes.items():
    st.info(f"{note} (runs: {', '.join(run_names)})", icon=":material/image:")

# Results the INT8/FP16 gate refused: measured, but not to be deployed as they are.
refused = jobs.failed_gates(rows)
for row in refused:
    st.error(f"**Gate failed** · {row['label']}: {'; '.join(row['gate_reasons'])}. Remedies on its run's "
             "page.", icon=":material/gpp_bad:")
for run_id, run_name in dict((r["run_id"], r["run_name"]) for r in refused).items():
    st.page_link("views/run_detail.py", label=f"Open {run_name} (remedies)", icon=":material/arrow_forward:",
                 query_params={"run": run_id})

untrained = present.untrained_message(rows)
if untrained:
    # No Pareto front of noise: with every AP at 0 there is nothing to trade latency against.
    st.warning(untrained, icon=":material/report:")
else:
    # One chart at a time: tabs would build and draw all five on every load. The first is
    # Vega-Lite, the others Plotly, whose 4.7 MB chunk is then fetched only when one is picked.
    chart = st.segmented_control("Chart", CHARTS, default=CHARTS[0], key="compare_chart") or CHARTS[0]
    if chart == CHARTS[0]:
        plotted = charts.rows_with(rows, "latency_ms", "AP")
        if plotted:
            event = st.vega_lite_chart(charts.ap_vs_latency_spec(rows), key="pareto_chart", on_select="rerun",
                                       selection_mode=charts.PICK, width="stretch")
            st.caption("Click a point to open its result. Bars: latency p5–p95 over the benchmark's repeats; "
                       "points on top of each other are drawn side by side.")
            clicked = charts.selected_result(event)
            if clicked:
                widgets.open_run_detail(*clicked)
        else:
            st.caption("Nothing to plot: no result has both an AP and a latency yet (latency is measured "
                       "by the evaluate stage's benchmark).")
        missing = len(rows) - len(plotted)
        if plotted and missing:
            st.caption(f"{missing} result(s) without AP or latency are not plotted.")
    if chart == CHARTS[1]:
        if len(charts.rows_with(rows, "AP")) >= 2:
            st.plotly_chart(charts.parallel_coordinates_figure(rows), key="parallel_chart")
        else:
            st.caption("Parallel coordinates need at least two results with an AP.")
    if chart == CHARTS[2]:
        if any(r.get("APm") is not None and r["APm"] >= 0 or r.get("APl") is not None and r["APl"] >= 0
               for r in rows):
            st.plotly_chart(charts.ap_by_area_figure(rows), key="area_chart")
        else:
            st.caption("No AP by person size: the evaluation images have no medium or large people.")
    if chart == CHARTS[3]:
        if charts.rows_with(rows, "params", "AP"):
            st.plotly_chart(charts.size_vs_ap_figure(rows), key="size_chart")
        else:
            st.caption("No parameter counts stored for these results.")
    if chart == CHARTS[4]:
        if charts.rows_with(rows, "latency_ms"):
            st.plotly_chart(charts.latency_by_precision_figure(rows), key="latency_chart")
        else:
            st.caption("No latency measured for these results yet.")

st.subheader("Table")
st.caption("Click a run's name to open that result.")
# HTML, not st.dataframe: beside the chart a dataframe still adds 0.1-0.5 s to a load
# (bench/bench_streamlit_elements.py); its cells are formatted text, so it sorted them as text.
st.html(html_table(present.result_display_rows(rows),
                   links={"run": [widgets.run_detail_href(r["run_id"], r["stage_id"]) for r in rows]}))
table = jobs.result_table(rows)
buffer = io.StringIO()
writer = csv.DictWriter(buffer, fieldnames=list(jobs.RESULT_TABLE_COLUMNS))
writer.writeheader()
writer.writerows(table)
st.download_button("Export CSV (raw numbers)", buffer.getvalue(), file_name="bpnet-results.csv", mime="text/csv",
                   key="csv", on_click="ignore", icon=":material/download:")

# ---------------------------------------------------------------- two results
st.subheader("Two results: config diff and pictures")
ids = list(labels)
ids = [i for i in ids if i in picked]
linked_a, linked_b = st.query_params.get("a"), st.query_params.get("b")
c1, c2 = st.columns(2)
left = c1.selectbox("A", ids, index=ids.index(linked_a) if linked_a in ids else 0, format_func=labels.get,
                    key="left_result")
right = c2.selectbox("B", ids, index=ids.index(linked_b) if linked_b in ids else min(1, len(ids) - 1),
                     format_func=labels.get, key="right_result")
set_query("a", left)
set_query("b", right)
st.caption("The address bar holds the runs, filters and the two results: copy it to share this comparison.")

row_a = next(r for r in rows if r["stage_id"] == left)
row_b = next(r for r in rows if r["stage_id"] == right)
try:
    run_a = jobs.get_run(row_a["run_id"], events_limit=0)
    run_b = run_a if row_b["run_id"] == row_a["run_id"] else jobs.get_run(row_b["run_id"], events_limit=0)
except BpnetError as err:
    st.error(str(err), icon=":material/block:")
    st.stop()
diff = present.config_diff(present.result_config(row_a, run_a["spec"]), present.result_config(row_b, run_b["spec"]))
if left == right:
    st.caption("A and B are the same result.")
elif diff:
    st.html(html_table([{"field": d["field"], f"A: {labels[left]}": d["A"], f"B: {labels[right]}": d["B"]}
                        for d in diff]))
    st.caption(f"{len(diff)} field(s) differ; every other setting is the same.")
else:
    st.caption("The two results have the same configuration.")

# Only the open tab is drawn (and its pictures sent to the browser): the other runs when picked.
tab_truth, tab_maps = st.tabs(["ground truth and prediction", "heatmaps and PAFs"], key="compare_pictures_tab",
                              on_change="rerun")
if tab_truth.open:
    with tab_truth:
        for col, run, row, name in zip(st.columns(2), (run_a, run_b), (row_a, row_b), ("A", "B")):
            with col:
                st.markdown(f"**{name}** · AP {present.fmt_ap(row.get('AP'))} · {present.latency_text(row)}")
                try:
                    widgets.truth_gallery(run, row, row["stage_id"], OVERLAY_IMAGES, columns=1)
                except (BpnetError, KeyError, OSError) as err:
                    st.caption(f"No pictures: {err}")
if tab_maps.open:
    with tab_maps:
        try:
            choice = widgets.map_controls("compare-maps")
            for col, run, row, name in zip(st.columns(2), (run_a, run_b), (row_a, row_b), ("A", "B")):
                with col:
                    st.markdown(f"**{name}** · {row['label']}")
                    widgets.map_view(run, row, row["stage_id"], *choice)
        except (BpnetError, KeyError, OSError) as err:
            st.caption(f"No maps: {err}")
