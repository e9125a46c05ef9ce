"""Result rows -> charts (pure: no Streamlit, no store, no TensorFlow): Plotly figures, and the
AP-vs-latency chart as a Vega-Lite spec — Compare's first chart, drawn on every load, and
Streamlit's Vega chunk is a sixth of its Plotly chunk (docs/dashboard.md, page timings).

A result row is a dict describing one evaluated model (see `app.jobs.result_rows`):
    label, run_id, run_name, pth, input_h, input_w, stages, precision, AP, AP50, AP75, APm, APl,
    latency_ms, params, model_size_mb, backend, device, eval_note
Any metric may be None (a stage not finished, or not measurable on that worker); a chart simply
leaves such rows out of the series that needs the missing value.
"""

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.present import finite

PRECISION_COLORS = {"FP32": "#1f77b4", "FP16": "#2ca02c", "INT8": "#d62728"}
STATUS_COLORS = {"completed": "#2ca02c", "cached": "#17becf", "running": "#1f77b4", "queued": "#9e9e9e",
                 "pending": "#9e9e9e", "failed": "#d62728", "cancelled": "#ff7f0e", "skipped": "#bdbdbd"}
GATE_FAILED_COLOR = "#d62728"
HOVER_TEMPLATE = ("<b>%{customdata[0]}</b><br>pth %{customdata[1]} · %{customdata[2]} · "
                  "%{customdata[3]} stages · %{customdata[4]}<br>AP %{y:.3f} · %{customdata[5]}<extra></extra>")


def rows_with(rows, *keys):
    """The rows whose values for every key are finite numbers."""
    return [r for r in rows if all(finite(r.get(k)) is not None for k in keys)]


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
    """Per point: label, pth, resolution, stages, precision, latency text, stage id, run id."""
    return [[r.get("label", ""), r.get("pth", "–"), resolution_text(r), r.get("stages", "?"),
             r.get("precision", "?"), _latency_hover(r), r.get("stage_id"), r.get("run_id")] for r in rows]


def _latency_hover(row):
    ms = finite(row.get("latency_ms"))
    if ms is None:
        return "no latency"
    text = f"{ms:.2f} ms"
    p5, p95 = finite(row.get("latency_p5_ms")), finite(row.get("latency_p95_ms"))
    if p95 is not None:
        text += f" (p5–p95 {p5:.2f}–{p95:.2f})" if p5 is not None else f" (p95 {p95:.2f})"
    if row.get("latency_runs"):
        text += f", {row['latency_runs']} runs"
    return text


def selected_result(event):
    """(run_id, stage_id) of the point clicked in the AP-vs-latency chart, from Streamlit's
    `vega_lite_chart(on_select=...)` event (the picked points' fields); None when none is."""
    for point in ((event or {}).get("selection") or {}).get(PICK) or []:
        if isinstance(point, dict) and point.get("stage_id") and point.get("run_id"):
            return point["run_id"], point["stage_id"]
    return None


def dodge(xs, ys, x_span, y_span, share=0.012):
    """x offsets that spread points drawn on top of each other (e.g. an INT8 result exactly as
    fast and accurate as its FP32 parent) side by side: points closer than `share` of both axes'
    spans form a group whose members are shifted by `share` of the x span each, centred."""
    offsets = [0.0] * len(xs)
    groups = []
    for i in range(len(xs)):
        for group in groups:
            j = group[0]
            if abs(xs[i] - xs[j]) <= share * x_span and abs(ys[i] - ys[j]) <= share * y_span:
                group.append(i)
                break
        else:
            groups.append([i])
    for group in groups:
        for k, i in enumerate(group):
            offsets[i] = (k - (len(group) - 1) / 2) * share * x_span
    return offsets


def ap_axis_range(values):
    """AP axis from 0 to a little above the data's maximum (never the -1..1 of one point)."""
    top = max([v for v in values if v is not None] + [0.0])
    return [0.0, top * 1.1 if top > 0 else 0.05]


PICK = "pick"   # the Vega-Lite point selection of the AP-vs-latency chart
# A five-pointed star as a Vega symbol path (unit size): the Pareto front's points.
STAR = ("M0,-1L0.224,-0.309L0.951,-0.309L0.363,0.118L0.588,0.809L0,0.382L-0.588,0.809L-0.363,0.118"
        "L-0.951,-0.309L-0.224,-0.309Z")


def ap_vs_latency_points(rows, x_key="latency_ms", y_key="AP"):
    """One record per plotted result: where it is drawn (dodged), its p5-p95 latency bar,
    whether it is on the Pareto front or failed its gate, and what its tooltip says."""
    rows = rows_with(rows, x_key, y_key)
    xs = [finite(r[x_key]) for r in rows]
    ys = [finite(r[y_key]) for r in rows]
    x_span = (max(xs) - min(xs)) if len(xs) > 1 and max(xs) > min(xs) else (max(xs, default=1.0) or 1.0)
    offsets = dodge(xs, ys, x_span, max(ys, default=0.0) or 1.0)
    front = set(pareto_front(list(zip(xs, ys))))
    points = []
    for i, (row, x, y, offset) in enumerate(zip(rows, xs, ys, offsets)):
        p5, p95 = finite(row.get("latency_p5_ms")), finite(row.get("latency_p95_ms"))
        points.append({
            "x": x + offset, "low": (min(p5, x) if p5 is not None else x) + offset,
            "high": (max(p95, x) if p95 is not None else x) + offset, "AP": y,
            "precision": row.get("precision", "?"), "label": row.get("label", ""),
            "pth": "–" if row.get("pth") is None else str(row["pth"]), "resolution": resolution_text(row),
            "stages": str(row.get("stages", "?")), "latency": _latency_hover(row),
            "front": i in front, "gate_failed": row.get("gate") == "failed",
            "stage_id": row.get("stage_id"), "run_id": row.get("run_id")})
    return points


def ap_vs_latency_spec(rows, x_key="latency_ms", y_key="AP"):
    """Vega-Lite: AP against latency, one colour per precision, p5-p95 latency bars, the
    Pareto front as a dashed line of stars, results refused by their gate ringed in red; a
    click on a point selects it (`selected_result`). Drawn as SVG so each point is an element."""
    points = ap_vs_latency_points(rows, x_key, y_key)
    precisions = sorted({p["precision"] for p in points})
    color = {"field": "precision", "type": "nominal", "title": "precision",
             "scale": {"domain": precisions, "range": [PRECISION_COLORS.get(p, "#7f7f7f") for p in precisions]}}
    x = {"field": "x", "type": "quantitative", "title": "latency per image (ms, median; bars p5–p95; lower is better)",
         "scale": {"zero": False}}
    y = {"field": "AP", "type": "quantitative", "title": f"{y_key} (higher is better)",
         "scale": {"domain": ap_axis_range([p["AP"] for p in points])}}
    tooltip = [{"field": "label", "title": "result"}, {"field": "pth", "title": "prune threshold"},
               {"field": "resolution"}, {"field": "stages"}, {"field": "precision"},
               {"field": "AP", "format": ".3f"}, {"field": "latency"}]
    layers = [
        {"mark": {"type": "rule", "strokeWidth": 1.5},
         "encoding": {"x": {**x, "field": "low"}, "x2": {"field": "high"}, "y": y, "color": color}},
        {"transform": [{"filter": "datum.front"}], "mark": {"type": "line", "color": "black", "strokeDash": [6, 4]},
         "encoding": {"x": x, "y": y, "order": {"field": "x"}}},
        {"name": "results",   # its SVG group is `results_marks`: one element per result to click
         "params": [{"name": PICK, "select": {"type": "point", "fields": ["run_id", "stage_id"], "on": "click"}}],
         "mark": {"type": "point", "filled": True, "size": 130, "opacity": 0.85, "cursor": "pointer"},
         "encoding": {"x": x, "y": y, "color": color, "tooltip": tooltip}},
        {"transform": [{"filter": "datum.front"}],
         "mark": {"type": "point", "shape": STAR, "size": 260, "filled": True, "color": "gold", "stroke": "black",
                  "strokeWidth": 1, "cursor": "pointer"},
         "encoding": {"x": x, "y": y, "tooltip": tooltip}},
        {"transform": [{"filter": "datum.gate_failed"}],
         "mark": {"type": "point", "shape": "circle", "size": 420, "filled": False, "color": GATE_FAILED_COLOR,
                  "strokeWidth": 3},
         "encoding": {"x": x, "y": y, "tooltip": tooltip}},
    ]
    return {"title": {"text": "AP vs latency — Pareto front (dashed, stars): no other result is both faster and "
                              "more accurate", "subtitle": "red ring: refused by its INT8/FP16 gate"
                              if any(p["gate_failed"] for p in points) else ""},
            "data": {"values": points}, "height": 420, "layer": layers,
            "usermeta": {"embedOptions": {"renderer": "svg"}}}


PARALLEL_DIMENSIONS = (("pth", "prune threshold"), ("resolution", "resolution"), ("stages", "stages"),
                       ("precision", "precision"), ("params", "parameters (M)"),
                       ("latency_ms", "latency (ms)"), ("AP", "AP"))


def _categorical(values):
    """(codes, tick values, tick texts) of categorical values in sorted order."""
    levels = sorted({str(v) for v in values}, key=lambda t: (len(t), t))
    codes = [levels.index(str(v)) for v in values]
    return codes, list(range(len(levels))), levels


def parallel_coordinates_figure(rows):
    """One line per result across threshold, resolution, stages, precision, parameters,
    latency and AP, coloured by AP (drag along an axis to filter, as in Optuna/W&B)."""
    rows = rows_with(rows, "AP")
    dims = []
    for key, title in PARALLEL_DIMENSIONS:
        raw = [r.get(key) for r in rows]
        if key in ("params", "latency_ms", "AP"):
            values = [finite(v) for v in raw]
            if any(v is None for v in values):
                continue   # a dimension some result lacks would draw broken lines
            if key == "params":
                values = [v / 1e6 for v in values]
            dims.append({"label": title, "values": values,
                         **({"range": ap_axis_range(values)} if key == "AP" else {})})
        else:
            texts = ["?" if v is None else (resolution_text(r) if key == "resolution" else v)
                     for v, r in zip(raw, rows)]
            codes, ticks, labels = _categorical(texts)
            dims.append({"label": title, "values": codes, "tickvals": ticks, "ticktext": labels,
                         "range": [-0.2, max(ticks) + 0.2] if ticks else [0, 1]})
    aps = [finite(r["AP"]) for r in rows]
    fig = go.Figure(go.Parcoords(line={"color": aps, "colorscale": "Viridis", "showscale": True,
                                       "colorbar": {"title": "AP"}, "cmin": 0, "cmax": ap_axis_range(aps)[1]},
                                 dimensions=dims))
    fig.update_layout(title="every result across its settings (drag along an axis to filter)",
                      margin={"t": 90, "l": 60, "r": 60})
    return fig


def sensitivity_figure(sensitivity, top=15):
    """Per-layer INT8 sensitivity (the output error when only that layer is quantized), worst
    first, against the error of the fully quantized model."""
    layers = (sensitivity or {}).get("layers") or []
    layers = layers[:top][::-1]   # horizontal bars: worst on top
    fig = go.Figure(go.Bar(x=[finite(l["error"]) for l in layers],
                           y=[f"{l['layer']} ({l.get('op_type', '?')})" for l in layers], orientation="h",
                           marker_color="#d62728"))
    full = finite((sensitivity or {}).get("full_int8_error"))
    if full is not None:
        fig.add_vline(x=full, line={"dash": "dash"}, annotation_text=f"whole model INT8: {full:.3f}")
    fig.update_layout(title=f"INT8 sensitivity per layer (the {len(layers)} most sensitive; output error "
                            "with only that layer quantized)", xaxis_title="output error (relative)",
                      height=max(300, 28 * len(layers) + 120), margin={"t": 60, "l": 10})
    return fig


def ap_by_area_figure(rows):
    """Grouped bars of AP on medium and large people, one group per result."""
    rows = [r for r in rows if finite(r.get("APm")) is not None or finite(r.get("APl")) is not None]
    labels = [r.get("label", "") for r in rows]
    fig = go.Figure([
        go.Bar(name="AP medium", x=labels, y=[finite(r.get("APm")) for r in rows]),
        go.Bar(name="AP large", x=labels, y=[finite(r.get("APl")) for r in rows]),
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
                x=[finite(r[key]) * scale for r in sub], y=[finite(r["AP"]) for r in sub],
                mode="markers", name=precision, legendgroup=precision, showlegend=col == 1,
                customdata=_hover_data(sub),
                hovertemplate=HOVER_TEMPLATE,
                marker={"size": 10, "color": PRECISION_COLORS.get(precision)}), row=1, col=col)
    fig.update_yaxes(range=ap_axis_range([finite(r.get("AP")) for r in rows]))
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
            y=[finite(r["latency_ms"]) for r in group], name=precision, boxpoints="all",
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
                  and finite(p.get("loss")) is not None and p.get("step") is not None]
        series.sort(key=lambda p: p["step"])
        fig.add_trace(go.Scatter(x=[p["step"] for p in series], y=[finite(p["loss"]) for p in series],
                                 mode="lines+markers" if "epoch mean" in stage else "lines", name=stage,
                                 line={"width": 3 if "epoch mean" in stage else 1.2}))
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
        for i in iterations if finite(i.get("ap")) is not None]
    objective = (report or {}).get("objective", "params")
    size_title = "parameters" if objective == "params" else "latency (ms)"
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("AP per iteration", f"{size_title} per iteration"))
    steps = list(range(1, len(trials) + 1))
    colors = ["#2ca02c" if t.get("within_budget") else "#d62728" for t in trials]
    text = [f"pth {t['threshold']:g}" for t in trials]
    fig.add_trace(go.Scatter(x=steps, y=[finite(t["ap"]) for t in trials], mode="lines+markers+text",
                             text=text, textposition="top center", name="AP (points)",
                             marker={"size": 11, "color": colors}, line={"color": "#7f7f7f"}), row=1, col=1)
    fig.add_trace(go.Scatter(x=steps, y=[finite(t["size"]) for t in trials], mode="lines+markers",
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
            fig.add_trace(go.Scatter(x=[index + 1], y=[finite(chosen["ap"])], mode="markers", name="chosen",
                                     marker={"size": 20, "symbol": "star", "color": "gold",
                                             "line": {"color": "black", "width": 1}}), row=1, col=1)
    fig.update_xaxes(title_text="iteration", dtick=1, row=2, col=1)
    fig.update_yaxes(title_text="AP (points)", row=1, col=1)
    fig.update_yaxes(title_text=size_title, row=2, col=1)
    fig.update_layout(title="AP-budget search", height=560, margin={"t": 80})
    return fig


def short_stage_label(label, kind, params=None):
    """A node's label without what its ancestors already say (the graph reads left to right:
    prune shows its threshold, export its resolution and precision, from the stage's params), so
    nodes stay narrow and their text readable: 'retrain s2 pth=0.1' -> 'retrain', 'evaluate s2
    pth=0.1 64x64 fp32' -> 'evaluate'. The full label is the node's tooltip."""
    params = params or {}
    if kind in ("retrain", "evaluate", "gate"):
        return kind
    if kind == "prune" and "threshold" in params:
        return f"prune pth={params['threshold']:g}"
    if kind == "export" and "input_hw" in params:
        h, w = params["input_hw"]
        return f"export {h}x{w} {params.get('precision', '')}".rstrip()
    return label


def dag_dot(stages):
    """Graphviz DOT text of a run's stages, coloured by status.

    `stages` are dicts with `id`, `label`, `status`, `parents` (ids of the stages they need) and
    optionally `kind` and `params` (for the short node label).
    """
    # Drawn at its natural size (not stretched or shrunk to the page): 14-pt labels stay readable
    # on a 1400-px screen even for a 40-stage sweep, which scrolls instead.
    lines = ["digraph run {", '  rankdir="LR"; nodesep=0.12; ranksep=0.3;',
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=14, margin="0.12,0.04"];']
    for stage in stages:
        status = stage.get("status", "pending")
        color = STATUS_COLORS.get(status, "#e0e0e0")
        full = str(stage.get("label", stage["id"])).replace('"', "'")
        label = f"{short_stage_label(full, stage.get('kind'), stage.get('params'))}\\n{status}"
        lines.append(f'  "{stage["id"]}" [label="{label}", tooltip="{full}", fillcolor="{color}66", '
                     f'color="{color}"];')
    for stage in stages:
        for parent in stage.get("parents", ()):
            lines.append(f'  "{parent}" -> "{stage["id"]}";')
    lines.append("}")
    return "\n".join(lines)
