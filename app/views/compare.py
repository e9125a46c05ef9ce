"""Compare: results picked from any runs side by side: AP vs latency with the Pareto front, AP by
person size, parameters and model size vs AP, latency by precision, a table with CSV export and
two results' skeletons on the same images."""

import csv
import io

import streamlit as st

from app import charts, overlay, state, widgets
from bpnet.errors import BpnetError

DEFAULT_RUNS = 5
OVERLAY_IMAGES = 3

st.title("Compare")

try:
    runs = [r for r in state.list_runs(limit=200) if r["status"] in ("completed", "running", "failed", "cancelled")]
except BpnetError as err:
    st.error(str(err), icon=":material/block:")
    st.stop()
if not runs:
    st.info("No finished runs to compare yet. Start one on the **New run** page.", icon=":material/info:")
    st.stop()

names = {r["id"]: f"{r['name']} · {r['status']} · {r['id']}" for r in runs}
run_ids = st.multiselect("Runs", list(names), default=list(names)[:DEFAULT_RUNS], format_func=names.get,
                         key="compare_runs")
if not run_ids:
    st.info("Pick at least one run.", icon=":material/info:")
    st.stop()
try:
    rows = state.chart_rows(state.list_results(run_ids))
except BpnetError as err:
    st.error(str(err), icon=":material/block:")
    st.stop()
if not rows:
    st.info("The chosen runs have no evaluated results yet.", icon=":material/info:")
    st.stop()

c1, c2 = st.columns(2)
precisions = sorted({r["precision"] for r in rows})
resolutions = sorted({r.get("resolution") or "?" for r in rows})
chosen_precisions = c1.pills("Precisions", precisions, selection_mode="multi", default=precisions,
                             key="compare_precisions")
chosen_resolutions = c2.pills("Resolutions", resolutions, selection_mode="multi", default=resolutions,
                              key="compare_resolutions")
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
    note = state.evaluation_note(first.get("annotations"), first.get("dataset"))
    notes.setdefault(note, []).append(first["run_name"])
for note, run_names in notes.items():
    st.info(f"{note} (runs: {', '.join(run_names)})", icon=":material/image:")

# Results the INT8/FP16 gate refused: measured, but not to be deployed as they are.
refused = state.failed_gates(rows)
for row in refused:
    st.error(f"**Gate failed** · {row['label']}: {'; '.join(row['gate_reasons'])}. Remedies on its run's "
             "page.", icon=":material/gpp_bad:")
for run_id, run_name in dict((r["run_id"], r["run_name"]) for r in refused).items():
    st.page_link("views/run_detail.py", label=f"Open {run_name} (remedies)", icon=":material/arrow_forward:",
                 query_params={"run": run_id})

tab_pareto, tab_area, tab_size, tab_latency = st.tabs(
    ["AP vs latency", "AP by person size", "size vs AP", "latency by precision"])
with tab_pareto:
    st.plotly_chart(charts.ap_vs_latency_figure(rows), key="pareto_chart")
    missing = [r["label"] for r in rows if r.get("latency_ms") is None or r.get("AP") is None]
    if missing:
        st.caption(f"{len(missing)} result(s) without AP or latency are not plotted.")
with tab_area:
    st.plotly_chart(charts.ap_by_area_figure(rows), key="area_chart")
with tab_size:
    st.plotly_chart(charts.size_vs_ap_figure(rows), key="size_chart")
with tab_latency:
    st.plotly_chart(charts.latency_by_precision_figure(rows), key="latency_chart")

st.subheader("Table")
table = state.result_table(rows)
st.dataframe(table, hide_index=True, key="compare_table")
buffer = io.StringIO()
writer = csv.DictWriter(buffer, fieldnames=list(state.RESULT_TABLE_COLUMNS))
writer.writeheader()
writer.writerows(table)
st.download_button("Export CSV", buffer.getvalue(), file_name="bpnet-results.csv", mime="text/csv",
                   key="csv", on_click="ignore", icon=":material/download:")

st.subheader("Side by side")
ids = [i for i in labels if i in picked]
c1, c2 = st.columns(2)
left = c1.selectbox("Left", ids, index=0, format_func=labels.get, key="left_result")
right = c2.selectbox("Right", ids, index=min(1, len(ids) - 1), format_func=labels.get, key="right_result")


def result_detections(stage_id):
    """(results.json path, its mtime, people by image id, stage params) of one result."""
    run_id = next(r["run_id"] for r in rows if r["stage_id"] == stage_id)
    run = state.get_run(run_id, events_limit=0)
    art = next((a for a in run["artifacts"] if a["stage_id"] == stage_id and a["name"] == "results.json"), None)
    if art is None:
        raise BpnetError(f"result {labels[stage_id]} has no results.json artifact to draw")
    path = state.artifact_path(art["id"])
    stamp = widgets.mtime_ns(path)
    return path, stamp, widgets.detections(path, stamp), next(r for r in rows if r["stage_id"] == stage_id)


try:
    sides = [result_detections(left), result_detections(right)]
    annotations = sides[0][3]["annotations"]
    names_by_id = widgets.image_names(annotations, widgets.mtime_ns(annotations))
    merged = {}
    for _, _, people, _ in sides:
        for image_id, found in people.items():
            merged[image_id] = merged.get(image_id, []) + found
    if not merged:
        st.caption("Neither result found any person on the evaluation images.")
    for image_id in overlay.images_with_people(merged, OVERLAY_IMAGES):
        name = names_by_id.get(image_id)
        if name is None:
            continue
        for col, (path, stamp, people, params) in zip(st.columns(2), sides):
            col.image(widgets.skeleton_picture(params["images"], name, path, stamp, image_id),
                      caption=f"{name} · {len(people.get(image_id, []))} people")
except (BpnetError, KeyError, OSError) as err:
    st.caption(f"No overlays: {err}")
