"""Run detail's accuracy-controlled INT8 section: for every stage that wrote an
`accuracy_control.json` (int8 with `accuracy_control:`), the calibrator comparison, the AP and
latency vs float layers curve, the chosen layers, the FP32-vs-INT8 divergence along the graph,
and the calibration vs evaluation mix with warnings. Figures and tables are pure functions of
the report (tested without Streamlit); `render(run)` only draws them."""

import json

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.html_table import html_table

REPORT_NAME = "accuracy_control.json"
MEASURES = (("people_per_image", "people per image"), ("person_size", "person size"),
            ("visible_keypoints", "visible keypoints per person"))


def report_artifacts(run):
    """[(stage_id, stage label, artifact id)] of the run's accuracy-control reports."""
    labels = {s["id"]: s.get("label") or s["id"] for s in run.get("stages", [])}
    return [(a["stage_id"], labels.get(a["stage_id"], a["stage_id"]), a["id"])
            for a in run.get("artifacts", []) if a["name"] == REPORT_NAME]


def calibrator_figure(report):
    """AP (bars) and latency (dots, right axis) per calibrator; float AP and the budget as lines."""
    rows = report["calibrators"]
    names = [r["calibrator"] for r in rows]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    best = report["best_calibrator"]
    fig.add_bar(x=names, y=[r["AP"] for r in rows], name="INT8 AP",
                marker_color=["#2a9d8f" if n == best else "#9ab" for n in names],
                text=[f"{r['AP']:.3f}<br>−{r['ap_drop']:.2f} pt" for r in rows], textposition="inside",
                insidetextanchor="middle")
    fig.add_scatter(x=names, y=[r.get("latency_ms") for r in rows], name="latency (ms)", mode="markers",
                    marker={"size": 11, "symbol": "diamond", "color": "#e76f51"}, secondary_y=True)
    parent = report["parent_AP"]
    fig.add_hline(y=parent, line_dash="dot", annotation_text=f"float AP {parent:.3f}",
                  annotation_position="top left")
    fig.add_hline(y=parent - report["max_drop"] / 100.0, line_dash="dash", line_color="#e63946",
                  annotation_text=f"budget: −{report['max_drop']:g} points", annotation_position="bottom left")
    fig.update_yaxes(range=[0, 1.2 * max([parent] + [r["AP"] for r in rows])], secondary_y=False)
    fig.update_layout(title="Calibrators on the same calibration images (best highlighted)", height=360,
                      margin={"t": 50, "b": 30}, legend={"orientation": "h", "y": -0.15})
    fig.update_yaxes(title_text="AP", secondary_y=False)
    fig.update_yaxes(title_text="latency (ms)", secondary_y=True)
    return fig


def curve_figure(report):
    """AP and latency vs the number of layers returned to float (the points the bisection
    evaluated), with the budget and the chosen count."""
    points = report["curve"]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    ks = [p["float_layers"] for p in points]
    fig.add_scatter(x=ks, y=[p["AP"] for p in points], name="AP", mode="lines+markers",
                    line={"color": "#2a9d8f"})
    fig.add_scatter(x=ks, y=[p.get("latency_ms") for p in points], name="latency (ms)", mode="lines+markers",
                    line={"color": "#e76f51", "dash": "dot"}, secondary_y=True)
    budget = report["parent_AP"] - report["max_drop"] / 100.0
    fig.add_hline(y=budget, line_dash="dash", line_color="#e63946",
                  annotation_text=f"budget: float AP − {report['max_drop']:g} points", annotation_position="bottom right")
    fig.add_hline(y=report["parent_AP"], line_dash="dot", annotation_text="float AP", annotation_position="top right")
    values = [p["AP"] for p in points] + [budget, report["parent_AP"]]
    pad = 0.15 * (max(values) - min(values) or 0.01)
    fig.update_yaxes(range=[min(values) - pad, max(values) + pad], secondary_y=False)
    chosen = report["final"]["float_layers"]
    fig.add_vline(x=chosen, line_color="#264653", annotation_text=f"chosen: {chosen} float layer(s)",
                  annotation_position="bottom left")
    fig.update_layout(title="AP and latency vs layers returned to float (bisection points)", height=360,
                      margin={"t": 50, "b": 30}, legend={"orientation": "h", "y": -0.2})
    fig.update_xaxes(title_text="layers in float (most harmful first)")
    fig.update_yaxes(title_text="AP", secondary_y=False)
    fig.update_yaxes(title_text="latency (ms)", secondary_y=True)
    return fig


def divergence_figure(divergence, title):
    """Relative error per tensor in graph order, the tolerance, the first layer beyond it."""
    rows = divergence["rows"]
    fig = go.Figure()
    fig.add_scatter(x=list(range(len(rows))), y=[r["relative_error"] for r in rows], mode="lines+markers",
                    name="relative error", text=[f"{r['layer']}<br>{r['tensor']}<br>cosine {r['cosine']:.4f}"
                                                 for r in rows], hovertemplate="%{text}<br>rel. error %{y:.4f}")
    tolerance = divergence["tolerance"]["max_relative_error"]
    fig.add_hline(y=tolerance, line_dash="dash", line_color="#e63946", annotation_text=f"tolerance {tolerance:g}")
    first = divergence.get("first_divergence")
    if first is not None:
        index = next(i for i, r in enumerate(rows) if r["tensor"] == first["tensor"])
        fig.add_vline(x=index, line_color="#264653", annotation_text=f"first: {first['layer']}")
    fig.update_layout(title=title, height=320, margin={"t": 50, "b": 30}, showlegend=False)
    fig.update_xaxes(title_text="tensor (graph order)")
    fig.update_yaxes(title_text="||INT8 − FP32|| / ||FP32||")
    return fig


def calibrator_rows(report):
    return [{"calibrator": r["calibrator"], "AP": round(r["AP"], 4), "AP drop (points)": round(r["ap_drop"], 2),
             "latency (ms)": r.get("latency_ms"), "chosen": "✓" if r["calibrator"] == report["best_calibrator"] else ""}
            for r in report["calibrators"]]


def mix_rows(report):
    """Calibration vs evaluation shares (percent) per measure; [] when the calibration images came
    from a folder or tensor file the annotations do not describe."""
    mix = (report.get("calibration") or {}).get("mix")
    if not mix:
        return []
    rows = []
    for key, label in MEASURES:
        for bucket, share in mix["calibration"][key].items():
            rows.append({"measure": label, "class": bucket, "calibration %": round(100 * share, 1),
                         "evaluation %": round(100 * mix["evaluation"][key][bucket], 1)})
    return rows


def mix_warnings(report):
    """The calibration set's gaps (no people, a missing size class), from the report or the mix."""
    calibration = report.get("calibration") or {}
    warnings = list(calibration.get("mix_warnings") or [])
    mix = calibration.get("mix")
    if mix and not warnings:
        cal, ev = mix["calibration"], mix["evaluation"]
        if cal["persons"] == 0:
            warnings.append("the calibration set holds no people")
        for size, count in ev["person_size_counts"].items():
            if count and cal["persons"] and cal["person_size_counts"][size] == 0:
                warnings.append(f"the calibration set has no {size} people (the evaluation set has {count})")
    return warnings


def equalized_text(report):
    """One sentence on the concat inputs rescaled before calibrating ('' when none were)."""
    scaled = report.get("equalized_concat_inputs") or []
    if not scaled:
        return ""
    factors = [s["scale"] for s in scaled]
    return (f"Before calibrating, {len(scaled)} concat input(s) were rescaled to their concat's range "
            f"(x{min(factors):.0f}-{max(factors):.0f}; the float outputs are unchanged), so the one INT8 scale "
            f"of each concat does not round them away: {', '.join(sorted({s['producer'] for s in scaled})[:4])}"
            + (" ..." if len(scaled) > 4 else ""))


def render(run, artifact_path):
    """Draw every accuracy-control report of `run`; `artifact_path(id) -> Path` (the client's)."""
    import streamlit as st

    for stage_id, label, artifact_id in report_artifacts(run):
        try:
            report = json.loads(artifact_path(artifact_id).read_text())
        except (OSError, ValueError) as err:
            st.error(f"accuracy-control report of {label} unreadable: {err}", icon=":material/block:")
            continue
        st.subheader(f"INT8 with accuracy control · {label}")
        final, evaluation = report["final"], report["evaluation"]
        text = (f"{report['summary']}. Evaluated on {evaluation['num_images']} images with people of "
                f"{evaluation['source']} (calibration images kept out when enough others exist).")
        (st.success if final["met"] else st.error)(text, icon=":material/tune:")
        for warning in report.get("warnings", []):
            st.warning(warning, icon=":material/warning:")
        c1, c2 = st.columns(2)
        c1.plotly_chart(calibrator_figure(report), key=f"ac-cal-{stage_id}")
        if report.get("bisection"):
            c2.plotly_chart(curve_figure(report), key=f"ac-curve-{stage_id}")
        else:
            c2.info("The best calibrator is within the budget: the plain INT8 model is the result, no layer "
                    "went back to float and nothing more was evaluated.", icon=":material/check:")
        st.html(html_table(calibrator_rows(report)))
        rescaled = equalized_text(report)
        if rescaled:
            st.caption(rescaled)
        if final["layers"]:
            st.markdown("**Layers kept in float:** " + ", ".join(f"`{name}`" for name in final["layers"]))
        gate = report.get("gate") or {}
        if gate:
            st.caption(f"Gate of the chosen model ({gate.get('status')}): " + "; ".join(gate.get("reasons") or []))
        for key, title in (("plain", "FP32 vs plain INT8: relative error along the graph"),
                           ("final", "FP32 vs the chosen INT8 model")):
            divergence = (report.get("divergence") or {}).get(key)
            if divergence:
                st.plotly_chart(divergence_figure(divergence, title), key=f"ac-div-{key}-{stage_id}")
        rows = mix_rows(report)
        if rows:
            st.markdown("**Calibration vs evaluation mix**")
            for warning in mix_warnings(report):
                st.warning(warning, icon=":material/warning:")
            st.html(html_table(rows))
