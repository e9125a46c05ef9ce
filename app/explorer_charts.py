"""Explorer report (bpnet/guide/explorer.py's explorer.json) -> Plotly figures and table rows.

Pure: no Streamlit, no store, no TensorFlow. Three charts answer TAO's best-practice questions on
the user's own model: AP vs latency per (resolution, stage exit) with the oracle as a ceiling,
AP-medium / AP-large vs resolution, and the latency split by people per image.
"""

import plotly.graph_objects as go

PRECISION_SYMBOLS = {"fp32": "circle", "fp16": "diamond", "int8": "square"}
PART_COLORS = {"pre_ms": "#9e9e9e", "cnn_ms": "#1f77b4", "decode_ms": "#ff7f0e"}
PART_NAMES = {"pre_ms": "pre-processing", "cnn_ms": "CNN", "decode_ms": "decoding"}


def resolution_label(hw):
    return f"{hw[0]}×{hw[1]}"


def stage_label(stage):
    return "last stage" if stage is None else f"stage {stage}"


def point_label(point):
    return f"{resolution_label(point['resolution'])} · {stage_label(point['stage'])} · {point['precision'].upper()}"


def table_rows(report):
    """One row per grid point plus an oracle row per resolution, for the page's table."""
    rows = []
    for oracle in report["oracle"]:
        rows.append({"resolution": resolution_label(oracle["resolution"]), "stage exit": "oracle (ceiling)",
                     "precision": "-", "AP": oracle["AP"], "AP medium": oracle["APm"],
                     "AP large": oracle["APl"], "pre-processing ms": None, "CNN ms": None, "decoding ms": None})
        for p in report["points"]:
            if p["resolution"] == oracle["resolution"]:
                rows.append({"resolution": resolution_label(p["resolution"]), "stage exit": stage_label(p["stage"]),
                             "precision": p["precision"].upper(), "AP": p["AP"], "AP medium": p["APm"],
                             "AP large": p["APl"], "pre-processing ms": p["pre_ms"], "CNN ms": p["cnn_ms"],
                             "decoding ms": p["decode_ms"]})
    return rows


def ap_vs_latency(report):
    """AP vs end-to-end latency, one series per resolution, marker by precision, text = stage exit;
    a dashed horizontal line per resolution at its oracle AP (what perfect maps would give)."""
    fig = go.Figure()
    resolutions = [tuple(o["resolution"]) for o in report["oracle"]]
    for hw in resolutions:
        points = [p for p in report["points"] if tuple(p["resolution"]) == hw]
        fig.add_trace(go.Scatter(
            x=[p["latency_ms"] for p in points], y=[p["AP"] for p in points], mode="markers+text",
            name=resolution_label(hw), text=[stage_label(p["stage"]) for p in points], textposition="top center",
            marker={"size": 11, "symbol": [PRECISION_SYMBOLS.get(p["precision"], "circle") for p in points]},
            customdata=[[point_label(p)] for p in points],
            hovertemplate="%{customdata[0]}<br>AP %{y:.3f} · %{x:.1f} ms<extra></extra>"))
    for oracle in report["oracle"]:
        fig.add_hline(y=oracle["AP"], line_dash="dash", line_color="#7f7f7f",
                      annotation_text=f"oracle {resolution_label(oracle['resolution'])}: {oracle['AP']:.3f}",
                      annotation_position="top left")
    top = max([p["AP"] for p in report["points"]] + [o["AP"] for o in report["oracle"]] + [0.05])
    fig.update_layout(xaxis_title="latency per image, ms (pre-processing + CNN + decoding)",
                      yaxis_title="COCO keypoint AP", yaxis_range=[0, min(1.0, top * 1.1)],
                      legend_title="resolution", margin={"t": 30})
    return fig


def ap_by_resolution(report, precision="fp32"):
    """AP medium and AP large vs resolution for each stage exit at one precision."""
    fig = go.Figure()
    points = [p for p in report["points"] if p["precision"] == precision]
    order = sorted({tuple(p["resolution"]) for p in points}, key=lambda hw: hw[0] * hw[1])
    labels = [resolution_label(hw) for hw in order]
    for stage in sorted({p["stage"] for p in points}, key=lambda s: (s is None, s or 0)):
        by_hw = {tuple(p["resolution"]): p for p in points if p["stage"] == stage}
        for key, dash, name in (("APm", "solid", "AP medium"), ("APl", "dot", "AP large")):
            fig.add_trace(go.Scatter(x=labels, y=[by_hw[hw][key] if hw in by_hw else None for hw in order],
                                     mode="lines+markers", line={"dash": dash},
                                     name=f"{name} · {stage_label(stage)}"))
    fig.update_layout(xaxis_title="input resolution (H×W)", yaxis_title=f"AP ({precision.upper()})",
                      yaxis_range=[0, 1], margin={"t": 30})
    return fig


def latency_by_people(report, resolution, stage, precision):
    """Stacked bars: median pre-processing / CNN / decoding ms per people-per-image group."""
    entry = next((e for e in report["latency_by_people"] if list(e["resolution"]) == list(resolution)
                  and e["stage"] == stage and e["precision"] == precision), None)
    fig = go.Figure()
    if entry is None:
        return fig
    groups = entry["groups"]
    x = [f"{g['people']} people ({g['images']} images)" for g in groups]
    for key in ("pre_ms", "cnn_ms", "decode_ms"):
        fig.add_trace(go.Bar(x=x, y=[g[key] for g in groups], name=PART_NAMES[key],
                             marker_color=PART_COLORS[key]))
    fig.update_layout(barmode="stack", xaxis_title="people in the image", yaxis_title="median ms per image",
                      margin={"t": 30})
    return fig


def gain_rows(report, key="apm_gain_per_step"):
    """The AP gain per resolution step as table rows (the seed claims +7–10% on medium people)."""
    return [{"stage exit": stage_label(s["stage"]), "precision": s["precision"].upper(),
             "from": resolution_label(s["from"]), "to": resolution_label(s["to"]),
             "before": s["before"], "after": s["after"],
             "gain %": s["gain_pct"] if s["gain_pct"] is not None else "n/a (from 0)"}
            for s in report.get(key, [])]
