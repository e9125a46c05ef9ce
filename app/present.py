"""How results read on the pages (pure: rows in, text and rows out; no Streamlit, no store).

Numbers are formatted the way a user reads them (1.22 M params, 12.4 ms, AP 0.392, 3.1 MB),
columns get human names, and the guards live here: a set of results whose AP cannot mean
anything, a prune that removed nothing. The raw rows stay in `app.jobs` (CSV export, charts).
"""

import math

from bpnet.guide.gate import MEANINGFUL_AP_FLOOR

# A prune that keeps more than this share of the parameters removed nothing worth a result.
PRUNED_NOTHING_RATIO = 0.99
UNTRAINED_MESSAGE = ("all results have AP 0 — the base model is untrained (every AP is below "
                     f"{MEANINGFUL_AP_FLOOR:g}): there is no trade-off to chart. Train the base model "
                     "longer, or start from a pretrained model.")


def finite(value):
    """A finite float, or None for a missing, non-numeric or NaN/inf value (formatters print '–'
    for it, charts leave it out)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def fmt_params(n):
    """1 220 000 -> '1.22 M', 45 300 -> '45.3 k'."""
    n = finite(n)
    if n is None:
        return "–"
    if n >= 1e6:
        return f"{n / 1e6:.2f} M"
    if n >= 1e3:
        return f"{n / 1e3:.1f} k"
    return f"{n:.0f}"


def fmt_ms(ms):
    ms = finite(ms)
    if ms is None:
        return "–"
    return f"{ms:.3g} ms" if ms < 10 else f"{ms:.1f} ms"


def fmt_ap(ap):
    """pycocotools AP (fraction; -1 = no people of that size) -> '0.392' or '–'."""
    ap = finite(ap)
    return "–" if ap is None or ap < 0 else f"{ap:.3f}"


def fmt_bytes(size):
    size = finite(size)
    if size is None:
        return "–"
    if size >= 1e6:
        return f"{size / 1e6:.1f} MB"
    if size >= 1e3:
        return f"{size / 1e3:.0f} KB"
    return f"{size:.0f} B"


def fmt_number(value, digits=3):
    value = finite(value)
    return "–" if value is None else f"{value:.{digits}g}"


def latency_text(row):
    """'12.4 ms (p5–p95 11.9–13.8, 20 runs)' with what the benchmark stored."""
    text = fmt_ms(row.get("latency_ms"))
    p5, p95, runs = row.get("latency_p5_ms"), row.get("latency_p95_ms"), row.get("latency_runs")
    spread = []
    if finite(p95) is not None:
        spread.append(f"p5–p95 {fmt_number(p5)}–{fmt_number(p95)}" if finite(p5) is not None
                      else f"p95 {fmt_number(p95)}")
    if runs:
        spread.append(f"{runs} runs")
    return f"{text} ({', '.join(spread)})" if spread and text != "–" else text


# Display columns: human name -> how to read it from a chart row (see `app.jobs.chart_rows`).
RESULT_COLUMNS = {
    "run": lambda r: r.get("run_name"),
    "prune threshold": lambda r: r.get("pth"),
    "resolution": lambda r: (r.get("resolution") or "?").replace("x", "×"),
    "stages": lambda r: r.get("stages"),
    "precision": lambda r: r.get("precision"),
    "INT8 float layers": lambda r: "–" if r.get("float_layers") is None else str(r["float_layers"]),  # accuracy control
    "INT8/FP16 gate": lambda r: r.get("gate_text"),
    "AP": lambda r: fmt_ap(r.get("AP")),
    "AP50": lambda r: fmt_ap(r.get("AP50")),
    "AP75": lambda r: fmt_ap(r.get("AP75")),
    "AP medium": lambda r: fmt_ap(r.get("APm")),
    "AP large": lambda r: fmt_ap(r.get("APl")),
    "AR": lambda r: fmt_ap(r.get("AR")),
    "latency (median)": lambda r: fmt_ms(r.get("latency_ms")),
    "latency p95": lambda r: fmt_ms(r.get("latency_p95_ms")),
    "images/s": lambda r: fmt_number(r.get("throughput")),
    "parameters": lambda r: fmt_params(r.get("params")),
    "GFLOPs": lambda r: fmt_number(r.get("gflops")),
    "model file": lambda r: fmt_bytes(r.get("size_bytes")),
    "runs on": lambda r: " · ".join(str(x) for x in (r.get("backend"), r.get("device")) if x) or "–",
    "evaluated images": lambda r: r.get("num_images"),
}


def result_display_rows(rows):
    """Chart rows -> the rows a results table shows (formatted, human column names)."""
    return [{name: read(r) for name, read in RESULT_COLUMNS.items()} for r in rows]


# ------------------------------------------------------------------ guards

def untrained_message(rows):
    """The guard's sentence when every result with an AP scores below the floor, else None."""
    aps = [finite(r.get("AP")) for r in rows]
    aps = [ap for ap in aps if ap is not None]
    if aps and max(aps) < MEANINGFUL_AP_FLOOR:
        return UNTRAINED_MESSAGE
    return None


def pruned_nothing(stages, metrics):
    """[(stage label, kept fraction)] of prune stages that removed under 1% of the parameters."""
    ratios = {m["stage_id"]: m["value"] for m in metrics if m["name"] == "param_ratio"}
    flagged = []
    for stage in stages:
        ratio = finite(ratios.get(stage["id"]))
        if stage["kind"] == "prune" and ratio is not None and ratio > PRUNED_NOTHING_RATIO:
            flagged.append((stage["label"], ratio))
    return flagged


def pruned_nothing_text(label, ratio):
    return (f"**{label}: pruned nothing** — it kept {100 * ratio:.1f}% of the parameters. This threshold "
            "is below every filter's norm for this model; choose a higher one (the New run page shows "
            "what each threshold keeps).")


# ------------------------------------------------------------------ config diff

def flatten(value, prefix=""):
    """Nested dicts -> {'a.b.c': leaf}; lists stay leaves (shown as written)."""
    if isinstance(value, dict):
        out = {}
        for key, sub in value.items():
            out.update(flatten(sub, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


RESULT_CONFIG_FIELDS = ("pth", "resolution", "stages", "stage_exit", "precision", "float_layers", "int8_max_drop",
                        "branch", "backend", "device", "num_images", "annotations")


def result_config(row, spec):
    """Everything that made one result: its own parameters (result.*) and its run's spec (spec.*)."""
    config = {f"result.{k}": row.get(k) for k in RESULT_CONFIG_FIELDS}
    config.update({f"spec.{k}": v for k, v in flatten(spec or {}).items()})
    return config


def config_diff(config_a, config_b):
    """[{field, A, B}] of the fields whose values differ (a field only one side has counts)."""
    rows = []
    for field in sorted(set(config_a) | set(config_b)):
        a, b = config_a.get(field), config_b.get(field)
        if a != b:
            rows.append({"field": field, "A": _text(a), "B": _text(b)})
    return rows


def _text(value):
    return "(not set)" if value is None else str(value)


# ------------------------------------------------------------------ stages

STARTING_TEXT = "starting TensorFlow…"


def stage_state_text(stage):
    """A running stage that has reported no progress yet is loading TensorFlow (several seconds
    on a loaded CPU), not stuck at 0%."""
    if stage["status"] == "running" and not stage.get("fraction"):
        return STARTING_TEXT
    return stage.get("message") or ""


def stage_display_rows(stages, now, format_duration):
    rows = []
    for s in stages:
        if s.get("duration_s") is not None:
            took = s["duration_s"]
        elif s.get("started_at"):
            took = (s.get("finished_at") or now) - s["started_at"]
        else:
            took = None
        done = s["status"] in ("completed", "cached")
        running = s["status"] == "running"
        rows.append({"stage": s["label"], "status": s["status"],
                     "progress": round(100 * (s.get("fraction") or (1.0 if done else 0.0)), 1),
                     "time": format_duration(took),
                     "ETA": (format_duration(s.get("eta_s")) if s.get("eta_s") is not None else "estimating…")
                     if running else "–",
                     "doing now / error": stage_state_text(s) if running else (s.get("error") or "").split("\n")[0],
                     "worker": s.get("worker_id") or "–"})
    return rows


# ------------------------------------------------------------------ deployables

DEPLOY_KINDS = {"onnx": "onnx", "int8 onnx": "int8.onnx", "fp16 onnx": "fp16.onnx",
                "int8 onnx (tensorrt q/dq)": "int8_trt.onnx", "tensorrt engine": "engine",
                "calibration cache": "cal.cache"}


def deploy_prefix(row):
    """'bpnet_pth0.1_288x384' / 'bpnet_unpruned_288x384' (model, pruning, resolution)."""
    pth = row.get("pth")
    tag = "unpruned" if pth in (None, "unpruned") else f"pth{pth}"
    if row.get("branch") == "search":
        tag = f"search-{tag}"
    elif row.get("branch") == "explore":
        tag = f"stage{row.get('stage_exit')}"
    h, w = row.get("input_h"), row.get("input_w")
    return f"bpnet_{tag}_{h}x{w}" if h and w else f"bpnet_{tag}"


def deployable_names(row, export_artifacts, evaluate_artifacts):
    """[(artifact, download file name)] of one result's deployables: the float ONNX, the
    reduced-precision ONNX, TensorRT-format calibration cache and engine (when built), and the
    evaluation's metrics and benchmark. File names say model, precision and resolution."""
    prefix = deploy_prefix(row)
    out = []
    for art in export_artifacts:
        ext = DEPLOY_KINDS.get(art["kind"])
        if ext is None:
            continue
        if ext == "onnx":
            name = f"{prefix}_fp32.onnx"
        elif ext.endswith(".onnx"):
            name = f"{prefix}_{ext}"
        else:
            name = f"{prefix}_{str(row.get('precision') or '').lower()}.{ext}"
        out.append((art, name))
    for art in evaluate_artifacts:
        if art["name"] in ("metrics.json", "benchmark.json"):
            out.append((art, f"{prefix}_{str(row.get('precision') or '').lower()}_{art['name']}"))
    return out


def model_card_text(row, note):
    """A short model card (Markdown) from the stored result: what it is, how it scored, on what."""
    return "\n".join([
        f"# {deploy_prefix(row)} ({row.get('precision')})", "",
        "BodyPoseNet (bottom-up 2D pose, OpenPose-style) exported by BPNet Studio.", "",
        f"- run: {row.get('run_name')} (`{row.get('run_id')}`), result `{row.get('stage_id')}`",
        f"- input: {row.get('input_h')}×{row.get('input_w')} (H×W), {row.get('stages')} refinement stages",
        f"- pruning: {row.get('pth')}", f"- precision: {row.get('precision')}",
        f"- AP {fmt_ap(row.get('AP'))} · AP50 {fmt_ap(row.get('AP50'))} · AP medium {fmt_ap(row.get('APm'))} "
        f"· AP large {fmt_ap(row.get('APl'))}",
        f"- latency {latency_text(row)} on {row.get('backend')} · {row.get('device')}",
        f"- parameters {fmt_params(row.get('params'))} · model file {fmt_bytes(row.get('size_bytes'))}",
        f"- evaluation: {note}", ""])


# ------------------------------------------------------------------ prune preview

PRUNE_GRID = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0, 1.2, 1.5, 2.0, 3.0)


def prune_preview_rows(rows, chosen):
    """Dry-run rows -> the table New run shows: threshold, parameters kept, share, and whether
    it is one of the user's thresholds or prunes nothing."""
    out = []
    for r in rows:
        kept = r["kept"]
        notes = (["prunes nothing"] if kept is not None and kept > PRUNED_NOTHING_RATIO else []) + \
            (["yours"] if r["threshold"] in chosen else [])
        out.append({"threshold": f"{r['threshold']:g}", "parameters kept": fmt_params(r["params_after"]),
                    "kept": "–" if kept is None else f"{100 * kept:.1f}%", "note": " · ".join(notes)})
    return out


def useful_thresholds(rows):
    """The thresholds of a dry run that remove parameters (keep under 99%)."""
    return [r["threshold"] for r in rows if r["kept"] is not None and r["kept"] <= PRUNED_NOTHING_RATIO]


# ------------------------------------------------------------------ guidance (the New-run page)

def stats_rows(stats):
    """The statistics the New-run page shows, as (quantity, value) rows."""
    ppi, kpp = stats["people_per_image"], stats["keypoints_per_person"]
    sizes = stats["area_ranges"]
    at640 = stats["area_ranges_at_640"]["fractions"]
    h, w = stats["image_height"], stats["image_width"]
    return [
        {"quantity": "images (with people)", "value": f"{stats['num_images']} ({stats['num_images_with_people']})"},
        {"quantity": "people with keypoints", "value": str(stats["num_people"])},
        {"quantity": "people per image (images with people)",
         "value": f"median {ppi['median']:g}, mean {ppi['mean']:.1f}, max {ppi['max']:g}"},
        {"quantity": "labelled keypoints per person", "value": f"median {kpp['median']:g}, mean {kpp['mean']:.1f}"},
        {"quantity": "small / medium / large people",
         "value": " / ".join(f"{sizes['counts'][k]} ({sizes['fractions'][k]:.0%})" for k in ("small", "medium", "large"))},
        {"quantity": "small / medium / large at COCO's 640-px scale",
         "value": " / ".join(f"{at640[k]:.0%}" for k in ("small", "medium", "large"))},
        {"quantity": "image size (H × W)",
         "value": f"median {h['median']:g} × {w['median']:g}, from {h['min']:g} × {w['min']:g} to {h['max']:g} × {w['max']:g}"},
        {"quantity": "crowd regions", "value": str(stats["num_crowd_regions"])},
    ]


def advice_text(advice):
    """A field's recommendation as a sentence: 'recommended: 3 (2–7 work): reason; reason',
    'recommended: 16: …' (not '16–16'), 'FP32, FP16 or INT8; recommended: INT8: …'."""
    value_range = advice.recommended_range
    value = _shown(advice.value)
    if isinstance(value_range, (tuple, list)) and len(value_range) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value_range):
        low, high = value_range
        shown = f"recommended: {value}" + ("" if low == high else f" ({low:g}–{high:g} work)")
    elif isinstance(value_range, (tuple, list)) and value_range:
        options = [_shown(v) for v in value_range]
        listed = options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"
        shown = f"{listed}; recommended: {value}"
    else:
        shown = f"recommended: {value}"
    return f"{shown}: " + "; ".join(advice.reasons)


def _shown(value):
    """Precisions in capitals (FP32), numbers without trailing zeros, anything else as written."""
    if isinstance(value, str) and value.lower() in ("fp32", "fp16", "int8"):
        return value.upper()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def static_advice():
    """{field: Advice} of the ranges that do not depend on the data."""
    from bpnet.guide.recommend import static_guidance

    return {a.field: a for a in static_guidance()}
