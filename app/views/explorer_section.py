"""Run detail's resolution and stages explorer section, and the export run it leads to.

For every stage of a run that wrote an `explorer.json` (kind `explore`): AP vs latency per
(resolution, stage exit) with the oracle ceiling, AP medium / large vs resolution, the latency
split by people per image, the table with the oracle rows and the AP-medium gain per resolution
step. Each point has an "Export this point" button: it opens New run with an export run of that
resolution, stage exit and precision pre-filled (`prefilled_export` draws it there).

Figures come from app/explorer_charts.py; `export_run_spec` and `point_choices` are pure (tested
without Streamlit); `render` and `prefilled_export` only draw and call the client.
"""

import json

from app import explorer_charts as charts
from app.html_table import html_table

REPORT_NAME = "explorer.json"
PREFILL_KEY = "explorer_export_spec"
SEED_CLAIM = "TAO's best practices: each step 224×320 → 288×384 → 320×448 adds 7–10% AP on medium people"


def report_artifacts(run):
    """[(stage_id, stage label, artifact id)] of the run's explorer reports."""
    labels = {s["id"]: s.get("label") or s["id"] for s in run.get("stages", [])}
    return [(a["stage_id"], labels.get(a["stage_id"], a["stage_id"]), a["id"])
            for a in run.get("artifacts", []) if a["name"] == REPORT_NAME]


def point_choices(report):
    """[(label, point)] of every grid point, in the report's order (resolution, stage, precision)."""
    return [(charts.point_label(p), p) for p in report["points"]]


def export_run_spec(explore_spec, point):
    """The run spec of an export run at one explorer point: the explored model, that resolution,
    precision and stage exit (`output_stage`), evaluated on the same data; no pruning."""
    h, w = point["resolution"]
    spec = {"name": f"export {h}x{w} stage {point['stage'] or 'last'} {point['precision']}",
            "kind": "sweep", "dataset": {k: v for k, v in explore_spec["dataset"].items() if v is not None},
            "model": explore_spec["model"],
            "resolutions": [[h, w]], "precisions": [point["precision"]], "prune_thresholds": [],
            "evaluate_unpruned": True}
    if point["stage"] is not None:
        spec["output_stage"] = point["stage"]
    for key in ("infer_spec", "infer", "eval_max_images", "benchmark", "int8_gate_max_ap_drop"):
        if explore_spec.get(key) is not None:
            spec[key] = explore_spec[key]
    if point["precision"] == "int8" and explore_spec.get("calibration"):
        spec["calibration"] = {k: v for k, v in explore_spec["calibration"].items() if v not in (None, [], 0)}
    return spec


def render(run, artifact_path):
    """Draw every explorer report of `run`; `artifact_path(id) -> Path` (the client's)."""
    import streamlit as st

    for stage_id, label, artifact_id in report_artifacts(run):
        try:
            report = json.loads(artifact_path(artifact_id).read_text())
        except (OSError, ValueError) as err:
            st.error(f"explorer report of {label} unreadable: {err}", icon=":material/block:")
            continue
        st.subheader("Resolution and stages explorer")
        st.caption(f"{label} · {report['num_images']} images of {report['annotations']} · "
                   "latency per image measured on this run's worker (ONNX Runtime, batch 1)")
        if report.get("note"):
            st.warning(report["note"], icon=":material/warning:")
        if not any(p["AP"] > 0 for p in report["points"]):
            st.warning("Every stage exit scores AP 0 on these images: the model finds nobody here (untrained, "
                       "or the wrong pre-processing), so the AP comparisons below mean nothing; the latency "
                       "split still holds.", icon=":material/help:")
        st.plotly_chart(charts.ap_vs_latency(report), key=f"ex-ap-lat-{stage_id}")
        st.caption("Each marker is one (resolution, stage exit, precision); the dashed lines are the oracle: "
                   "what the decoder reaches from perfect maps at that resolution. The gap from a point "
                   "up to its line is the network's; the line below 1.0 is the resolution's.")
        precisions = list(report["precisions"])
        c1, c2 = st.columns(2)
        with c1:
            precision = st.selectbox("Precision of the resolution chart", precisions, key=f"ex-prec-{stage_id}",
                                     format_func=str.upper)
            st.plotly_chart(charts.ap_by_resolution(report, precision), key=f"ex-by-res-{stage_id}")
        choices = point_choices(report)
        labels = [label for label, _ in choices]
        with c2:
            picked = st.selectbox("Point of the latency split", labels, index=len(labels) - 1,
                                  key=f"ex-point-{stage_id}")
            point = dict(choices)[picked]
            st.plotly_chart(charts.latency_by_people(report, point["resolution"], point["stage"],
                                                     point["precision"]), key=f"ex-people-{stage_id}")
        st.markdown("**AP and latency per stage exit** (oracle row first at each resolution)")
        st.html(html_table(charts.table_rows(report)))
        gains = charts.gain_rows(report)
        if gains:
            st.markdown(f"**AP-medium gain per resolution step** — {SEED_CLAIM}")
            st.html(html_table(gains))
        export_buttons(run, choices, stage_id)


def export_buttons(run, choices, stage_id):
    """One button per point: New run with the export run of that point pre-filled."""
    import streamlit as st

    st.markdown("**Export a point** — opens New run with that resolution, stage exit and precision")
    columns = st.columns(4)
    for i, (label, point) in enumerate(choices):
        if columns[i % 4].button(f"Export {label}", key=f"ex-export-{stage_id}-{i}", icon=":material/output:"):
            st.session_state[PREFILL_KEY] = export_run_spec(run["spec"], point)
            st.switch_page("views/new_run.py")


def prefilled_export(state):
    """On New run: the export run an explorer point asked for, ready to submit (or dismiss)."""
    import streamlit as st
    import yaml

    from bpnet.errors import BpnetError

    spec = st.session_state.get(PREFILL_KEY)
    if not spec:
        return
    with st.container(border=True):
        st.subheader("Export run from the explorer")
        st.caption("Pre-filled from the point you chose: the explored model at that resolution, stage exit and "
                   "precision, evaluated on the same images. Submit it as it is, or dismiss it and use the form.")
        st.code(yaml.safe_dump(spec, sort_keys=False), language="yaml")
        c1, c2 = st.columns(2)
        if c1.button("Submit export run", type="primary", key="ex-submit-export"):
            try:
                run_id = state.submit_run(spec)
            except BpnetError as err:
                st.error(f"Not submitted: {err}", icon=":material/block:")
            else:
                del st.session_state[PREFILL_KEY]
                st.session_state["last_submitted"] = run_id
                st.rerun()
        if c2.button("Dismiss", key="ex-dismiss-export"):
            del st.session_state[PREFILL_KEY]
            st.rerun()
