"""Result rows -> Plotly figures (pure: no Streamlit, no store, no TensorFlow).

A result row is a dict describing one evaluated model (see `app.state.result_rows`):
    label, run_id, run_name, pth, input_h, input_w, stages, precision, AP, AP50, AP75, APm, APl,
    latency_ms, params, model_size_mb, backend, device, eval_note
Any metric may be None (a stage not finished, or not measurable on that worker); a chart simply
leaves such rows out of the series that needs the missing value.
"""

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

PRECISION_COLORS = {"FP32": "#1f77b4", "FP16": "#2ca02c", "INT8": "#d62728"}
STATUS_COLORS = {"completed": "#2ca02c", "cached": "#17becf", "running": "#1f77b4", "queued": "#9e9e9e",
                 "pending": "#9e9e9e", "failed": "#d62728", "cancelled": "#ff7f0e", "skipped": "#bdbdbd"}
GATE_FAILED_COLOR = "#d62728"
HOVER_TEMPLATE = ("<b>%{customdata[0]}</b><br>pth %{customdata[1]} · %{customdata[2]} · "
                  "%{customdata[3]} stages · %{customdata[4]}<br>AP %{y:.3f} · %{x:.2f} ms<extra></extra>")


def _number(value):
    """A finite float, or None for missing/NaN values (so charts can skip them)."""
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def rows_with(rows, *keys):
    """The rows whose values for every key are finite numbers."""
    return [r for r in rows if all(_number(r.get(k)) is not None for k in keys)]


def resolution_text(row):
    h, w = row.get("input_h"), row.get("input_w")
    return f"{h}×{w}" if h and w else "?"


def pareto_front(points):
    """Indices of the points (latency, ap) that no other point beats on both: lower latency
    and higher AP. Returned in order of increasing latency.

    A point is dominated if another is at least as fast and at least as accurate, and strictly
    better on one; ties (identical points) keep the first one only.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front, best_ap = [], -math.inf
    for i in order:
        if points[i][1] > best_ap:
            front.append(i)
            best_ap = points[i][1]
    return front


def _hover_data(rows):
    return [[r.get("label", ""), r.get("pth", "–"), resolution_text(r), r.get("stages", "?"),
             r.get("precision", "?")] for r in rows]


def ap_vs_latency_figure(rows, x_key="latency_ms", y_key="AP"):
    """Scatter of AP against latency, one colour per precision, the Pareto front as a line."""
    rows = rows_with(rows, x_key, y_key)
    fig = go.Figure()
    for precision in sorted({r.get("precision", "?") for r in rows}):
        group = [r for r in rows if r.get("precision", "?") == precision]
        fig.add_trace(go.Scatter(
            x=[_number(r[x_key]) for r in group], y=[_number(r[y_key]) for r in group],
            mode="markers", name=precision, customdata=_hover_data(group),
            hovertemplate=HOVER_TEMPLATE,
            marker={"size": 11, "color": PRECISION_COLORS.get(precision), "opacity": 0.8}))
    failed = [r for r in rows if r.get("gate") == "failed"]
    if failed:   # ringed in red: measured, but refused by the INT8/FP16 gate
        fig.add_trace(go.Scatter(
            x=[_number(r[x_key]) for r in failed], y=[_number(r[y_key]) for r in failed],
            mode="markers", name="gate failed", customdata=_hover_data(failed), hovertemplate=HOVER_TEMPLATE,
            marker={"size": 20, "symbol": "circle-open", "color": GATE_FAILED_COLOR, "line": {"width": 3}}))
    front = [rows[i] for i in pareto_front([(_number(r[x_key]), _number(r[y_key])) for r in rows])]
    if front:
        fig.add_trace(go.Scatter(
            x=[_number(r[x_key]) for r in front], y=[_number(r[y_key]) for r in front],
            mode="lines+markers", name="Pareto front", customdata=_hover_data(front),
            hovertemplate=HOVER_TEMPLATE, line={"color": "black", "dash": "dash"},
            marker={"size": 16, "symbol": "star", "color": "gold", "line": {"color": "black", "width": 1}}))
    fig.update_layout(title="AP vs latency (Pareto front: no other result is both faster and more accurate)",
                      xaxis_title="latency per image (ms, lower is better)",
                      yaxis_title=f"{y_key} (higher is better)", legend_title="precision",
                      margin={"t": 60})
    return fig


def ap_by_area_figure(rows):
    """Grouped bars of AP on medium and large people, one group per result."""
    rows = [r for r in rows if _number(r.get("APm")) is not None or _number(r.get("APl")) is not None]
    labels = [r.get("label", "") for r in rows]
    fig = go.Figure([
        go.Bar(name="AP medium", x=labels, y=[_number(r.get("APm")) for r in rows]),
        go.Bar(name="AP large", x=labels, y=[_number(r.get("APl")) for r in rows]),
    ])
    fig.update_layout(barmode="group", title="AP by person size (COCO area ranges)",
                      yaxis_title="AP", xaxis_tickangle=-30, margin={"t": 60})
    return fig


def size_vs_ap_figure(rows):
    """Two panels: parameters vs AP and model file size vs AP."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("parameters vs AP", "model size vs AP"))
    for col, key, scale in ((1, "params", 1e-6), (2, "model_size_mb", 1.0)):
        group = rows_with(rows, key, "AP")
        for precision in sorted({r.get("precision", "?") for r in group}):
            sub = [r for r in group if r.get("precision", "?") == precision]
            fig.add_trace(go.Scatter(
                x=[_number(r[key]) * scale for r in sub], y=[_number(r["AP"]) for r in sub],
                mode="markers", name=precision, legendgroup=precision, showlegend=col == 1,
                customdata=_hover_data(sub),
                hovertemplate=HOVER_TEMPLATE.replace("%{x:.2f} ms", "%{x:.3g}"),
                marker={"size": 10, "color": PRECISION_COLORS.get(precision)}), row=1, col=col)
    fig.update_xaxes(title_text="parameters (millions)", row=1, col=1)
    fig.update_xaxes(title_text="model file (MB)", row=1, col=2)
    fig.update_yaxes(title_text="AP", row=1, col=1)
    fig.update_layout(margin={"t": 60})
    return fig


def latency_by_precision_figure(rows):
    """Latency of every result, grouped by precision (box + points)."""
    rows = rows_with(rows, "latency_ms")
    fig = go.Figure()
    for precision in sorted({r.get("precision", "?") for r in rows}):
        group = [r for r in rows if r.get("precision", "?") == precision]
        fig.add_trace(go.Box(
            y=[_number(r["latency_ms"]) for r in group], name=precision, boxpoints="all",
            text=[r.get("label", "") for r in group], marker_color=PRECISION_COLORS.get(precision)))
    fig.update_layout(title="latency by precision", yaxis_title="ms per image", showlegend=False,
                      margin={"t": 60})
    return fig


def loss_curve_figure(points):
    """Training loss against step; `points` are dicts with `step` (global) and `loss`,
    optionally `stage` (train / retrain) so each training job gets its own line."""
    fig = go.Figure()
    for stage in sorted({p.get("stage", "train") for p in points}):
        series = [p for p in points if p.get("stage", "train") == stage
                  and _number(p.get("loss")) is not None and p.get("step") is not None]
        series.sort(key=lambda p: p["step"])
        fig.add_trace(go.Scatter(x=[p["step"] for p in series], y=[_number(p["loss"]) for p in series],
                                 mode="lines", name=stage))
    fig.update_layout(title="training loss", xaxis_title="step", yaxis_title="loss", margin={"t": 60})
    return fig


def search_figure(report, iterations=()):
    """AP (top) and model size (bottom) per iteration of an AP-budget search.

    `report` is the search's search.json (base, trials, budget_ap, objective, chosen; None before
    its first write); `iterations` the stored iteration events, used when no report is readable.
    Trials within the budget are green, outside red; the chosen one is a star; the dashed line is
    the lowest AP the budget allows.
    """
    trials = (report or {}).get("trials") or [
        {"threshold": i["threshold"], "ap": i["ap"], "size": i["size"], "within_budget": i["within_budget"]}
        for i in iterations if _number(i.get("ap")) is not None]
    objective = (report or {}).get("objective", "params")
    size_title = "parameters" if objective == "params" else "latency (ms)"
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("AP per iteration", f"{size_title} per iteration"))
    steps = list(range(1, len(trials) + 1))
    colors = ["#2ca02c" if t.get("within_budget") else "#d62728" for t in trials]
    text = [f"pth {t['threshold']:g}" for t in trials]
    fig.add_trace(go.Scatter(x=steps, y=[_number(t["ap"]) for t in trials], mode="lines+markers+text",
                             text=text, textposition="top center", name="AP (points)",
                             marker={"size": 11, "color": colors}, line={"color": "#7f7f7f"}), row=1, col=1)
    fig.add_trace(go.Scatter(x=steps, y=[_number(t["size"]) for t in trials], mode="lines+markers",
                             name=size_title, marker={"size": 11, "color": colors}, line={"color": "#7f7f7f"}),
                  row=2, col=1)
    base = (report or {}).get("base")
    if base:
        floor = base["ap"] - report["budget_ap"]
        fig.add_hline(y=base["ap"], line={"color": "#1f77b4"}, annotation_text=f"unpruned AP {base['ap']:.2f}",
                      row=1, col=1)
        fig.add_hline(y=floor, line={"color": "#d62728", "dash": "dash"},
                      annotation_text=f"budget: AP >= {floor:.2f}", row=1, col=1)
        fig.add_hline(y=base["size"], line={"color": "#1f77b4"}, annotation_text="unpruned", row=2, col=1)
    chosen = (report or {}).get("chosen")
    if chosen:
        index = next((i for i, t in enumerate(trials) if t["threshold"] == chosen["threshold"]), None)
        if index is not None:
            fig.add_trace(go.Scatter(x=[index + 1], y=[_number(chosen["ap"])], mode="markers", name="chosen",
                                     marker={"size": 20, "symbol": "star", "color": "gold",
                                             "line": {"color": "black", "width": 1}}), row=1, col=1)
    fig.update_xaxes(title_text="iteration", dtick=1, row=2, col=1)
    fig.update_yaxes(title_text="AP (points)", row=1, col=1)
    fig.update_yaxes(title_text=size_title, row=2, col=1)
    fig.update_layout(title="AP-budget search", height=560, margin={"t": 80})
    return fig


def dag_dot(stages):
    """Graphviz DOT text of a run's stages, coloured by status.

    `stages` are dicts with `id`, `label`, `status` and `parents` (ids of the stages they need).
    """
    lines = ["digraph run {", '  rankdir="LR";',
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];']
    for stage in stages:
        status = stage.get("status", "pending")
        color = STATUS_COLORS.get(status, "#e0e0e0")
        label = f"{stage.get('label', stage['id'])}\\n{status}".replace('"', "'")
        lines.append(f'  "{stage["id"]}" [label="{label}", fillcolor="{color}66", color="{color}"];')
    for stage in stages:
        for parent in stage.get("parents", ()):
            lines.append(f'  "{parent}" -> "{stage["id"]}";')
    lines.append("}")
    return "\n".join(lines)
