"""Run detail: the stage DAG with statuses, guards when the numbers cannot mean anything, the
INT8 gate, the training loss, formatted metrics, one result's deployables and pictures (ground
truth against prediction), the event log folded per stage, and every artifact."""

import io
import json
import time
import zipfile
from pathlib import Path

import streamlit as st
import yaml

from app import charts, jobs, present
from app import widgets
from app.html_table import html_table
from app.views import explorer_section, quantize_section
from app.widgets import run_action_buttons
from bpnet.errors import BpnetError

REFRESH_S = 2
SAMPLE_IMAGES = 4
STAGE_TABLE_HEIGHT_PX = 480   # a sweep has dozens of stages: the table scrolls under its header

st.title("Run detail")


def pick_run():
    """The run named by `?run=` in the address, else one chosen from the recent runs."""
    run_id = st.query_params.get("run")
    recent = jobs.list_runs(limit=50)
    if not recent and not run_id:
        st.info("No runs yet. Start one on the **New run** page.", icon=":material/info:")
        st.page_link("views/new_run.py", label="New run", icon=":material/add_circle:")
        st.stop()
    ids = [r["id"] for r in recent]
    # No status in the label: the picker keeps the label it was drawn with when the run finishes
    # (the status metric below is live).
    names = {r["id"]: f"{r['name']} · {r['id']}" for r in recent}
    if run_id and run_id not in ids:
        ids.insert(0, run_id)
    chosen = st.selectbox("Run", ids, index=ids.index(run_id) if run_id in ids else 0,
                          format_func=lambda i: names.get(i, i), key="detail_run")
    if chosen != run_id:
        st.query_params["run"] = chosen
    return chosen


try:
    run_id = pick_run()
    run = jobs.get_run(run_id)
except BpnetError as err:
    st.error(str(err), icon=":material/block:")
    st.stop()

active = run["status"] in ("queued", "running")


@st.fragment(run_every=REFRESH_S if active else None)
def live_status():
    """Status, DAG and stage table; polls while the run is active."""
    try:
        current = jobs.get_run(run_id, events_limit=0)
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
    c3.metric("elapsed", jobs.format_duration(elapsed))
    c4.metric("dataset", jobs.dataset_name(current["dataset"]))
    if current["status"] == "failed":
        st.error(f"This run failed: {current['error'] or 'see the failed stages below'}", icon=":material/error:")
    elif current["status"] == "cancelled":
        st.warning("This run was cancelled.", icon=":material/cancel:")
    st.graphviz_chart(charts.dag_dot(jobs.stage_dag(stages)), width="content")
    st.html(html_table(present.stage_display_rows(stages, time.time(), jobs.format_duration), bars={"progress"},
                       max_height_px=STAGE_TABLE_HEIGHT_PX))


c1, c2, _ = st.columns([1, 1, 4])
run_action_buttons(run_id, run["status"], c1, c2, key="detail")
if st.session_state.get("cancel-detail"):
    st.rerun()   # show the cancelled stages at once

st.subheader(run["name"])
rows = jobs.chart_rows(run["results"])
untrained = present.untrained_message(rows)
if untrained:
    st.warning(untrained, icon=":material/report:")
for label, ratio in present.pruned_nothing(run["stages"], run["metrics"]):
    st.warning(present.pruned_nothing_text(label, ratio), icon=":material/content_cut:")
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
        searches = jobs.search_progress(run_id)
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
            st.html(html_table(jobs.search_trial_rows(report)))
            if report.get("status") == "done":
                st.success(f"Chosen: {report['message']} ({report['reason']}). Download it below under "
                           f"**{search['label']}** (chosen_model.hdf5).", icon=":material/target:")


search_section()

# ---------------------------------------------------------------- INT8 / FP16 gate
gated = [r for r in rows if r.get("gate")]
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
            clicked = c1.button(jobs.remedy_label(remedy), key=f"remedy-{row['gate_stage_id']}-{i}",
                                disabled=not runnable, icon=":material/build:" if runnable else ":material/school:")
            c2.caption(remedy["why"])
            if clicked:
                try:
                    new_id = jobs.submit_remedy(row["gate_stage_id"], remedy["kind"],
                                                 remedy["params"].get("calibrator"))
                except BpnetError as err:
                    st.error(f"Remedy not submitted: {err}", icon=":material/block:")
                else:
                    st.success(f"Remedy submitted as run `{new_id}`.", icon=":material/rocket_launch:")
                    st.page_link("views/run_detail.py", label="Open the remedy run",
                                 icon=":material/arrow_forward:", query_params={"run": new_id})
        gate_json = widgets.result_file(run, row["gate_stage_id"], "gate.json")
        if gate_json is not None:
            try:
                sensitivity = json.loads(gate_json.read_text()).get("sensitivity")
            except (OSError, ValueError):
                sensitivity = None
            if sensitivity and sensitivity.get("layers"):
                st.plotly_chart(charts.sensitivity_figure(sensitivity), key=f"sens-{row['gate_stage_id']}")
    elif row["gate"] == "not_meaningful":
        st.warning(f"{text}\n{reasons}", icon=":material/help:")
    elif row["gate"] == "passed":
        st.success(f"{text}\n{reasons}", icon=":material/verified:")
    else:
        st.info(f"{text}\n{reasons}", icon=":material/hourglass:")

# ---------------------------------------------------------------- INT8 with accuracy control
quantize_section.render(run, jobs.artifact_path)
explorer_section.render(run, jobs.artifact_path)   # kind explore: charts, table, export

# ---------------------------------------------------------------- training loss
st.subheader("Training loss")
try:
    points = jobs.loss_points(jobs.loss_curve(run_id))
except BpnetError as err:
    points = []
    st.error(str(err), icon=":material/block:")
if points:
    st.plotly_chart(charts.loss_curve_figure(points), key="loss_chart")
else:
    st.caption("No training steps recorded yet (a reused or imported model has none in this run).")

# ---------------------------------------------------------------- metrics
st.subheader("Results")
if rows:
    note = jobs.evaluation_note(rows[0].get("annotations"), run["dataset"])
    st.info(note, icon=":material/image:")
    st.html(html_table(present.result_display_rows(rows)))
else:
    note = ""
    st.caption("No evaluated results yet.")
stage_metrics = jobs.stage_metric_rows(run["stages"], run["metrics"])
if stage_metrics:
    with st.expander("Stage metrics (pruning ratio, export parity, calibration time, training speed…)"):
        st.html(html_table(stage_metrics))


# ---------------------------------------------------------------- one result
def deployables(row):
    """One zip of the result's deployables, named by model, precision and resolution."""
    by_stage = {}
    for art in run["artifacts"]:
        by_stage.setdefault(art["stage_id"], []).append(art)
    evaluate = next((st_ for st_ in run["stages"] if st_["id"] == row["stage_id"]), None)
    export_id = evaluate["parent_id"] if evaluate else None
    files = present.deployable_names(row, by_stage.get(export_id, []), by_stage.get(row["stage_id"], []))
    infer = ((evaluate or {}).get("params") or {}).get("infer_spec")
    extras = {f"{present.deploy_prefix(row)}_model_card.md": present.model_card_text(row, note)}
    if infer:
        extras[f"{present.deploy_prefix(row)}_infer_spec.yaml"] = yaml.safe_dump(infer, sort_keys=False)
    listing = [{"file": name, "size": present.fmt_bytes(art["size"]), "what": art["kind"]} for art, name in files]
    listing += [{"file": name, "size": present.fmt_bytes(len(text.encode())), "what": "generated from the result"}
                for name, text in extras.items()]
    st.html(html_table(listing))
    if not any(art["kind"].endswith("engine") for art, _ in files):
        st.caption("No TensorRT engine: no worker with TensorRT built one (the calibration cache, when "
                   "listed, is in TensorRT's format for building it on the target).")

    def build_zip():
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            for art, name in files:
                zf.write(jobs.artifact_path(art["id"]), name)
            for name, text in extras.items():
                zf.writestr(name, text)
        return buffer.getvalue()

    total = sum(art["size"] for art, _ in files)
    st.download_button(f"Download the deployables for this result (.zip, {present.fmt_bytes(total)})",
                       data=build_zip, file_name=f"{present.deploy_prefix(row)}_"
                                                f"{str(row['precision']).lower()}.zip",
                       mime="application/zip", key=f"deploy-zip-{row['stage_id']}", on_click="ignore",
                       type="primary", icon=":material/deployed_code:")


if rows:
    st.subheader("One result: deployables and pictures")
    labels = {r["stage_id"]: r["label"] for r in rows}
    wanted = st.query_params.get("result")
    ids = list(labels)
    stage_id = st.selectbox("Result", ids, index=ids.index(wanted) if wanted in ids else 0,
                            format_func=labels.get, key="sample_result")
    if stage_id != wanted:
        st.query_params["result"] = stage_id
    row = next(r for r in rows if r["stage_id"] == stage_id)
    st.markdown(f"**{row['label']}** · AP {present.fmt_ap(row.get('AP'))} · {present.latency_text(row)} · "
                f"{present.fmt_params(row.get('params'))} params · {present.fmt_bytes(row.get('size_bytes'))}")
    # Only the open tab is drawn (and its pictures sent to the browser): the others run when picked.
    tab_people, tab_worst, tab_maps, tab_deploy = st.tabs(["images with annotated people", "worst-OKS images",
                                                           "heatmaps and PAFs", "deployables"],
                                                          key="result_tab", on_change="rerun")
    if tab_maps.open:
        with tab_maps:
            try:
                widgets.map_view(run, row, stage_id, *widgets.map_controls("detail-maps"))
            except (BpnetError, KeyError, OSError) as err:
                st.caption(f"No maps: {err}")
    for tab, worst in ((tab_people, False), (tab_worst, True)):
        if tab.open:
            with tab:
                try:
                    widgets.truth_gallery(run, row, stage_id, SAMPLE_IMAGES, worst=worst)
                except (BpnetError, KeyError, OSError) as err:
                    st.caption(f"No pictures: {err}")
    if tab_deploy.open:
        with tab_deploy:
            try:
                deployables(row)
            except (BpnetError, OSError) as err:
                st.caption(f"No deployables: {err}")

# ---------------------------------------------------------------- events
events = run["events"]
st.subheader("Events")
if not events:
    st.caption("No events yet.")
else:
    labels_by_stage = {s_["id"]: s_["label"] for s_ in run["stages"]}
    show_all = st.toggle(f"show all ({len(events)} most recent)", key="all_events")
    if show_all:
        st.text("\n".join(jobs.plain_event(e) for e in reversed(events)))
    else:
        last = {}
        for e in events:   # oldest first: the last one per stage wins
            last[e.get("stage_id")] = e
        st.text("\n".join(f"{labels_by_stage.get(sid, 'run')}: {jobs.plain_event(e)}"
                           for sid, e in last.items()))

# ---------------------------------------------------------------- downloads
st.subheader("Every artifact")
if not run["artifacts"]:
    st.caption("No artifacts yet.")
by_label = {}
for art in run["artifacts"]:
    by_label.setdefault(art["stage_label"], []).append(art)
for label, arts in by_label.items():
    with st.expander(f"{label} · {len(arts)} file(s)"):
        for art in arts:
            try:
                path = jobs.artifact_path(art["id"])
            except BpnetError as err:
                st.caption(f"{art['name']}: {err}")
                continue
            st.download_button(f"{art['name']} · {art['kind']} · {present.fmt_bytes(art['size'])}",
                               data=lambda p=path: p.read_bytes(), file_name=path.name,
                               key=f"dl-{art['stage_id']}-{art['id']}", on_click="ignore",
                               icon=":material/download:")
if run["artifacts"]:
    if st.button("Prepare a zip bundle of every artifact (with a manifest: spec hash, versions, device)",
                 key="bundle"):
        try:
            st.session_state[f"bundle-{run_id}"] = str(jobs.run_bundle(run_id))
        except BpnetError as err:
            st.error(str(err), icon=":material/block:")
    bundle = st.session_state.get(f"bundle-{run_id}")
    if bundle:
        st.download_button("Download the bundle (.zip)", data=lambda: Path(bundle).read_bytes(),
                           file_name=Path(bundle).name, mime="application/zip", key="dl-bundle",
                           on_click="ignore", type="primary", icon=":material/folder_zip:")
