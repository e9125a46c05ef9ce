"""Run detail: the stage DAG with statuses, the training loss, metrics, events and errors in plain
words, sample images with the skeletons a result found, and downloads of every artifact."""

import time
from pathlib import Path

import streamlit as st

from app import charts, overlay, state
from app import widgets
from app.widgets import run_action_buttons
from bpnet.errors import BpnetError

REFRESH_S = 2
SAMPLE_IMAGES = 4

st.title("Run detail")


def pick_run():
    """The run named by `?run=` in the address, else one chosen from the recent runs."""
    run_id = st.query_params.get("run")
    recent = state.list_runs(limit=50)
    if not recent and not run_id:
        st.info("No runs yet. Start one on the **New run** page.", icon=":material/info:")
        st.page_link("views/new_run.py", label="New run", icon=":material/add_circle:")
        st.stop()
    ids = [r["id"] for r in recent]
    names = {r["id"]: f"{r['name']} · {r['status']} · {r['id']}" for r in recent}
    if run_id and run_id not in ids:
        ids.insert(0, run_id)
    chosen = st.selectbox("Run", ids, index=ids.index(run_id) if run_id in ids else 0,
                          format_func=lambda i: names.get(i, i), key="detail_run")
    if chosen != run_id:
        st.query_params["run"] = chosen
    return chosen


try:
    run_id = pick_run()
    run = state.get_run(run_id)
except BpnetError as err:
    st.error(str(err), icon=":material/block:")
    st.stop()

active = run["status"] in ("queued", "running")


@st.fragment(run_every=REFRESH_S if active else None)
def live_status():
    """Status, DAG and stage table; polls while the run is active."""
    try:
        current = state.get_run(run_id, events_limit=0)
    except BpnetError as err:
        st.error(str(err), icon=":material/block:")
        return
    if current["status"] != run["status"] and current["status"] not in ("queued", "running"):
        st.rerun()   # finished: redraw the whole page (metrics, images, downloads appear)
    stages = current["stages"]
    done = sum(s["status"] in ("completed", "cached") for s in stages)
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("status", current["status"])
    c2.metric("stages done", f"{done}/{len(stages)}")
    elapsed = ((current["finished_at"] or time.time()) - current["started_at"]
               if current["started_at"] else None)
    c3.metric("elapsed", state.format_duration(elapsed))
    c4.metric("dataset", state.dataset_name(current["dataset"]))
    if current["status"] == "failed":
        st.error(f"This run failed: {current['error'] or 'see the failed stages below'}", icon=":material/error:")
    elif current["status"] == "cancelled":
        st.warning("This run was cancelled.", icon=":material/cancel:")
    st.graphviz_chart(charts.dag_dot(state.stage_dag(stages)), width="stretch")
    st.dataframe(state.stage_rows(stages), hide_index=True, key="stages_df", column_config={
        "progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=100, format="%.0f%%")})


c1, c2, _ = st.columns([1, 1, 4])
run_action_buttons(run_id, run["status"], c1, c2, key="detail")
if st.session_state.get("cancel-detail"):
    st.rerun()   # show the cancelled stages at once

st.subheader(run["name"])
live_status()

# ---------------------------------------------------------------- errors in plain words
failed = [s for s in run["stages"] if s["status"] == "failed"]
for stage in failed:
    st.error(f"**{stage['label']}** failed: {stage['error'] or 'no message recorded'}", icon=":material/error:")
    if stage.get("traceback"):
        with st.expander(f"technical details (traceback) of {stage['label']}"):
            st.code(stage["traceback"], language="text")

# ---------------------------------------------------------------- AP-budget search
@st.fragment(run_every=REFRESH_S if active else None)
def search_section():
    """AP and size per iteration, redrawn as iterations finish; the chosen model."""
    try:
        searches = state.search_progress(run_id)
    except BpnetError as err:
        st.error(str(err), icon=":material/block:")
        return
    for search in searches:
        st.subheader(f"AP-budget search · {search['label']}")
        report = search["report"]
        if not search["iterations"] and not (report and report.get("trials")):
            st.caption(f"No iteration finished yet ({search['status']}); each one prunes, retrains and "
                       "evaluates a model.")
            continue
        st.plotly_chart(charts.search_figure(report, search["iterations"]), key=f"search-{search['stage_id']}")
        if report:
            st.dataframe(state.search_trial_rows(report), hide_index=True, key=f"trials-{search['stage_id']}")
            if report.get("status") == "done":
                st.success(f"Chosen: {report['message']} ({report['reason']}). Download it below under "
                           f"**{search['label']}** (chosen_model.hdf5).", icon=":material/target:")


search_section()

# ---------------------------------------------------------------- INT8 / FP16 gate
gated = [r for r in state.chart_rows(run["results"]) if r.get("gate")]
if gated:
    st.subheader("INT8 / FP16 gate")
    st.caption(f"Each reduced-precision result against its float parent on the same evaluation: AP drop "
               f"over {run['spec'].get('int8_gate_max_ap_drop', 2.0):g} points, or outputs that stop "
               f"following the float model's (output error over 0.3), fail it.")
for row in gated:
    text = f"**{row['gate_text']}** · {row['label']}"
    reasons = "\n".join(f"- {r}" for r in row["gate_reasons"] + row["gate_warnings"])
    if row["gate"] == "failed":
        st.error(f"{text}\n{reasons}", icon=":material/gpp_bad:")
        st.markdown("**Remedies** (each submits a follow-up run that reuses everything upstream):")
        for i, remedy in enumerate(row["gate_remedies"]):
            c1, c2 = st.columns([3, 4])
            runnable = remedy.get("runnable", True)
            clicked = c1.button(state.remedy_label(remedy), key=f"remedy-{row['gate_stage_id']}-{i}",
                                disabled=not runnable, icon=":material/build:" if runnable else ":material/school:")
            c2.caption(remedy["why"])
            if clicked:
                try:
                    new_id = state.submit_remedy(row["gate_stage_id"], remedy["kind"],
                                                 remedy["params"].get("calibrator"))
                except BpnetError as err:
                    st.error(f"Remedy not submitted: {err}", icon=":material/block:")
                else:
                    st.success(f"Remedy submitted as run `{new_id}`.", icon=":material/rocket_launch:")
                    st.page_link("views/run_detail.py", label="Open the remedy run",
                                 icon=":material/arrow_forward:", query_params={"run": new_id})
    elif row["gate"] == "passed":
        st.success(f"{text}\n{reasons}", icon=":material/verified:")
    else:
        st.info(f"{text}\n{reasons}", icon=":material/hourglass:")

# ---------------------------------------------------------------- training loss
st.subheader("Training loss")
try:
    points = state.loss_points(state.loss_curve(run_id))
except BpnetError as err:
    points = []
    st.error(str(err), icon=":material/block:")
if points:
    st.plotly_chart(charts.loss_curve_figure(points), key="loss_chart")
else:
    st.caption("No training steps recorded yet (a reused or imported model has none in this run).")

# ---------------------------------------------------------------- metrics
st.subheader("Results")
rows = state.chart_rows(run["results"])
if rows:
    st.info(state.evaluation_note(rows[0].get("annotations"), run["dataset"]), icon=":material/image:")
    st.dataframe(state.result_table(rows), hide_index=True, key="results_df")
else:
    st.caption("No evaluated results yet.")
stage_metrics = state.stage_metric_rows(run["stages"], run["metrics"])
if stage_metrics:
    with st.expander("Stage metrics (pruning ratio, export parity, calibration time, training speed…)"):
        st.dataframe(stage_metrics, hide_index=True)

# ---------------------------------------------------------------- sample images
if rows:
    st.subheader("Sample images")
    labels = {r["stage_id"]: r["label"] for r in rows}
    stage_id = st.selectbox("Result", list(labels), format_func=labels.get, key="sample_result")
    results_file = next((a for a in run["artifacts"] if a["stage_id"] == stage_id and a["name"] == "results.json"), None)
    params = next(r for r in rows if r["stage_id"] == stage_id)
    try:
        if results_file is None:
            raise BpnetError("this result has no results.json artifact (detections) to draw")
        results_path = state.artifact_path(results_file["id"])
        stamp = widgets.mtime_ns(results_path)
        people = widgets.detections(results_path, stamp)
        names = widgets.image_names(params["annotations"], widgets.mtime_ns(params["annotations"]))
        chosen = overlay.images_with_people(people, SAMPLE_IMAGES)
        if not chosen:
            st.caption("The model found no people on the evaluation images.")
        for col, image_id in zip(st.columns(max(1, len(chosen))), chosen):
            col.image(widgets.skeleton_picture(params["images"], names[image_id], results_path, stamp, image_id),
                      caption=f"{names[image_id]} · {len(people[image_id])} people")
    except (BpnetError, KeyError, OSError) as err:
        st.caption(f"No sample images: {err}")

# ---------------------------------------------------------------- events
with st.expander(f"Events ({len(run['events'])} most recent)"):
    if run["events"]:
        st.text("\n".join(state.plain_event(e) for e in reversed(run["events"])))
    else:
        st.caption("No events yet.")

# ---------------------------------------------------------------- downloads
st.subheader("Downloads")
if not run["artifacts"]:
    st.caption("No artifacts yet.")
by_stage = {}
for art in run["artifacts"]:
    by_stage.setdefault(art["stage_label"], []).append(art)
for label, arts in by_stage.items():
    with st.expander(f"{label} · {len(arts)} file(s)"):
        for art in arts:
            try:
                path = state.artifact_path(art["id"])
            except BpnetError as err:
                st.caption(f"{art['name']}: {err}")
                continue
            st.download_button(f"{art['name']} · {art['kind']} · {art['size'] / 1e6:.2f} MB",
                               data=lambda p=path: p.read_bytes(), file_name=path.name,
                               key=f"dl-{art['stage_id']}-{art['id']}", on_click="ignore",
                               icon=":material/download:")
if run["artifacts"]:
    if st.button("Prepare a zip bundle of every artifact (with a manifest: spec hash, versions, device)",
                 key="bundle"):
        try:
            st.session_state[f"bundle-{run_id}"] = str(state.run_bundle(run_id))
        except BpnetError as err:
            st.error(str(err), icon=":material/block:")
    bundle = st.session_state.get(f"bundle-{run_id}")
    if bundle:
        st.download_button("Download the bundle (.zip)", data=lambda: Path(bundle).read_bytes(),
                           file_name=Path(bundle).name, mime="application/zip", key="dl-bundle",
                           on_click="ignore", type="primary", icon=":material/folder_zip:")
