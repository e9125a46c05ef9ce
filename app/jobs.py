"""The dashboard's only door to the job system: thin wrappers around `worker.client`, plus the
pure shaping of what it returns into what the pages show (durations, chart rows, notes).

Every call into the client goes through `call`, which turns a `BpnetError` (or a store that cannot
be reached) into a message the page shows instead of a traceback.
"""

import functools
import time
from pathlib import Path

from bpnet.errors import BpnetError
from worker import client

from app import forms
from app.forms import BUNDLED_ANNOTATIONS

RUN_STATUSES = ("queued", "running", "completed", "failed", "cancelled")
TRAINING_KINDS = ("train", "retrain")


class StoreUnavailable(BpnetError):
    """The job store cannot be opened (wrong DATABASE_URL, server down)."""


def call(fn, *args, **kwargs):
    """Run a client function; BpnetError passes through, a database failure becomes one with a
    plain message (SQLAlchemy errors would otherwise reach the page as tracebacks)."""
    try:
        return fn(*args, **kwargs)
    except BpnetError:
        raise
    except Exception as err:   # noqa: BLE001 - any store/driver failure is shown, not raised
        from worker.config import load_config, mask_secrets, mask_url
        url = load_config().database_url
        detail = mask_secrets(str(err).splitlines()[0] if str(err) else "no detail", [url])
        raise StoreUnavailable(f"the job store at {mask_url(url)} cannot be read ({type(err).__name__}: "
                               f"{detail}). Is "
                               "BPNET_STUDIO_HOME / DATABASE_URL right, and the database running?") from None


# ------------------------------------------------------------------ client calls

def _through_call(fn):
    """`fn` of the client, with store failures turned into messages by `call`."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        return call(fn, *args, **kwargs)
    return wrapped


list_datasets = _through_call(client.list_datasets)
get_run = _through_call(client.get_run)
loss_curve = _through_call(client.loss_curve)
list_results = _through_call(client.list_results)
list_workers = _through_call(client.list_workers)
preview_run = _through_call(client.preview_run)
submit_run = _through_call(client.submit_run)
cancel_run = _through_call(client.cancel_run)
rerun = _through_call(client.rerun)
artifact_path = _through_call(client.artifact_path)
run_bundle = _through_call(client.run_bundle)
list_models = _through_call(client.list_models)
search_progress = _through_call(client.search_progress)
submit_remedy = _through_call(client.submit_remedy)
preview_prune = _through_call(client.preview_prune)
preview_base_model = _through_call(client.preview_base_model)
import_base_model = _through_call(client.import_base_model)
run_spec_problems = _through_call(client.run_spec_problems)


def new_run_spec(form, dataset_info, train_template):
    """The New-run form -> (run spec or None, {widget: message}): the widgets' values turned into
    a run spec (`forms.run_spec_of_form`) and checked by the run spec's own rules (RunSpec, the
    files it names, the calibration images), every message under the widget of its field."""
    spec, errors = forms.run_spec_of_form(form, dataset_info, train_template)
    errors = {**forms.errors_by_widget(run_spec_problems(spec)), **errors}
    return (None if errors else spec), errors


def list_runs(status=None, dataset=None, search=None, limit=200, offset=0):
    return call(client.list_runs, status=status or None, dataset=dataset or None, search=search or None,
                limit=limit, offset=offset)


def trained_models(limit=100):
    """Keras models trained by earlier runs (train, retrain, the search's choice), newest first:
    [{label, path, run_name}] for the base-model picker."""
    return [{"label": f"{m['run_name']} · {m['stage_label']}", "path": str(m["path"]), "run_name": m["run_name"]}
            for m in list_models(limit=limit)]


# ------------------------------------------------------------------ shaping (pure)

def format_duration(seconds):
    """12 s, 3 min 05 s, 2 h 04 min; '–' when unknown."""
    if seconds is None:
        return "–"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {(seconds % 3600) // 60:02d} min"


def eta_seconds(progress, elapsed_s):
    """Linear extrapolation of the remaining time from the progress so far (None until known)."""
    if not elapsed_s or not progress or progress <= 0 or progress >= 1:
        return None
    return elapsed_s * (1 - progress) / progress


def run_table_rows(runs, now=None):
    """Runs -> rows of the Runs table (status with an icon, progress 0..100, elapsed, ETA)."""
    now = time.time() if now is None else now
    rows = []
    for r in runs:
        elapsed = r.get("elapsed_s")
        if elapsed is None and r.get("started_at"):
            elapsed = (r.get("finished_at") or now) - r["started_at"]
        active = r["status"] in ("queued", "running")
        counts = r.get("stage_counts") or {}
        done = sum(counts.get(s, 0) for s in ("completed", "cached"))
        rows.append({
            "id": r["id"], "name": r["name"], "status": r["status"],
            "stage": r.get("current_stage") or ("waiting for a worker" if r["status"] == "queued" else "–"),
            "progress": round(100 * (r.get("progress") or 0.0), 1),
            "stages done": f"{done}/{r.get('num_stages', 0)}",
            "elapsed": format_duration(elapsed),
            "ETA": format_duration(eta_seconds(r.get("progress"), elapsed)) if active else "–",
            "dataset": dataset_name(r.get("dataset")),
            "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created_at"])),
            "error": first_line(r.get("error")),
        })
    return rows


def first_line(text, limit=160):
    if not text:
        return ""
    line = str(text).strip().splitlines()[0]
    return line if len(line) <= limit else line[:limit - 1] + "…"


def dataset_name(path):
    """A short name for a dataset annotations path ('coco-mini (bundled)' for the sample)."""
    if not path:
        return "–"
    if is_bundled(path):
        return "coco-mini (bundled)"
    p = Path(path)
    return f"{p.parent.parent.name}/{p.name}" if p.parent.name == "annotations" else p.name


def is_bundled(annotations):
    try:
        return Path(annotations).resolve() == BUNDLED_ANNOTATIONS.resolve()
    except (TypeError, OSError):
        return False


def evaluation_note(annotations, train_annotations=None):
    """One plain sentence on which images a result was evaluated, warning when they are the
    bundled sample or the training images themselves (optimistic, overfit numbers)."""
    if not annotations:
        return "evaluation images unknown"
    if is_bundled(annotations):
        return ("evaluated on the bundled 80 coco-mini images, which are also the training images: "
                "AP here is optimistic (overfit) and only shows relative trade-offs")
    if train_annotations and Path(annotations).resolve() == Path(train_annotations).resolve():
        return f"evaluated on the training images ({dataset_name(annotations)}): AP is optimistic"
    return f"evaluated on {annotations}"


def short_result_label(row):
    pth = row.get("pth")
    prune = "unpruned" if pth is None else f"pth {pth:g}"
    if row.get("branch") == "search":
        prune = f"search: {prune}"
    elif row.get("branch") == "explore":   # an explorer point: the stage exit it measured
        prune = f"explore: stage exit {row.get('stage_exit') or 'last'}"
    precision = str(row.get("precision") or "?").upper()
    if row.get("float_layers") is not None:   # INT8 by accuracy control
        precision += f" ≤{row.get('int8_max_drop'):g} AP, {row['float_layers']} float"
    return (f"{row.get('run_name', '')[:24]} · {prune} · {row.get('resolution') or '?'} · "
            f"s{row.get('stages') or '?'} · {precision}")


def chart_rows(results):
    """Client result rows -> rows for `app.charts` (input_h/w, MB, upper-case precision, label)."""
    rows = []
    for r in results:
        hw = r.get("input_hw") or [None, None]
        size = r.get("size_bytes")
        rows.append({**r, "label": short_result_label(r), "precision": str(r.get("precision") or "?").upper(),
                     "gate_text": gate_text(r.get("gate")),
                     "input_h": hw[0], "input_w": hw[1],
                     "model_size_mb": size / 1e6 if size else None,
                     "pth": "unpruned" if r.get("pth") is None else f"{r['pth']:g}"})
    return rows


RESULT_TABLE_COLUMNS = ("run_name", "pth", "resolution", "stages", "precision", "gate", "AP", "AP50", "AP75",
                        "APm", "APl", "AR", "latency_ms", "latency_p95_ms", "throughput", "params",
                        "gflops", "model_size_mb", "backend", "device", "status")


def result_table(rows):
    """Rows for the metrics table / CSV export, in a fixed column order."""
    return [{c: r.get("gate_text", gate_text(r.get("gate"))) if c == "gate" else r.get(c)
             for c in RESULT_TABLE_COLUMNS} for r in rows]


GATE_TEXT = {"passed": "✅ passed", "failed": "❌ failed", "waiting": "⏳ waiting", "error": "⚠️ error",
             "not_meaningful": "⚪ not meaningful"}


def gate_text(verdict):
    """The gate column: '–' for results the gate does not apply to (FP32)."""
    return GATE_TEXT.get(verdict, "–")


def failed_gates(rows):
    """Result rows whose INT8/FP16 gate failed."""
    return [r for r in rows if r.get("gate") == "failed"]


def remedy_label(remedy):
    return remedy["title"] + ("" if remedy.get("runnable", True) else " (advice: not runnable yet)")


def search_trial_rows(report):
    """A search report's trials as table rows, in the order they were measured."""
    budget_floor = report["base"]["ap"] - report["budget_ap"]
    return [{"iteration": i, "threshold": t["threshold"], "AP (points)": round(t["ap"], 3),
             "AP drop": round(t["ap_drop"], 3), "size": t["size"],
             "within budget": "yes" if t["within_budget"] else f"no (AP < {budget_floor:.2f})",
             "chosen": "★" if report.get("chosen") and report["chosen"]["threshold"] == t["threshold"] else ""}
            for i, t in enumerate(report.get("trials") or [], start=1)]


def cost_rows(stages):
    """The preview's per-stage estimates as table rows."""
    rows = []
    for st in stages:
        estimate = st.get("estimate")
        rows.append({"stage": st["name"], "worker kind": st["worker_kind"],
                     "estimate": format_duration(estimate["seconds"]) if estimate else "no history",
                     "range (25-75%)": (f"{format_duration(estimate['low'])} – {format_duration(estimate['high'])}"
                                        if estimate else "–"),
                     "past stages": estimate["samples"] if estimate else 0})
    return rows


def stage_dag(stages):
    """Client stages -> the dicts `charts.dag_dot` draws (id, label, kind, params, status, parents)."""
    return [{"id": s["id"], "label": s["label"], "kind": s.get("kind"), "params": s.get("params"), "status": s["status"],
             "parents": [s["parent_id"]] if s.get("parent_id") else []} for s in stages]


def stage_metric_rows(stages, metrics):
    """The store's per-stage metrics as one row per stage (stage label + metric columns)."""
    labels = {s["id"]: s["label"] for s in stages}
    rows = {}
    for m in metrics:
        row = rows.setdefault(m["stage_id"], {"stage": labels.get(m["stage_id"], m["stage_id"])})
        row[m["name"]] = m["value"]
    return list(rows.values())


LOSS_QUANTITIES = {"step": "loss per step", "epoch_end": "epoch mean"}


def loss_points(points):
    """Client loss points -> `charts.loss_curve_figure` input: one series per training stage and
    quantity ("train s2 · loss per step", "train s2 · epoch mean"); the per-step loss and the
    epoch mean are different numbers and never share a line. Events without a step (old
    engines) count epochs; a step restarted every epoch is counted on across epochs.
    """
    out, counters = [], {}
    for p in sorted(points, key=lambda p: p.get("time") or 0):
        label = p.get("stage_label") or "train"
        quantity = LOSS_QUANTITIES.get(p.get("event") or "step")
        if quantity is None:
            continue   # "done" repeats the last epoch's mean
        step = p.get("step") if p.get("step") is not None else p.get("epoch")
        if step is None:
            continue
        series = f"{label} · {quantity}"
        counter = counters.setdefault(series, {"base": 0, "prev": -1})
        if step < counter["prev"]:
            counter["base"] += counter["prev"] + 1
        counter["prev"] = step
        out.append({"stage": series, "step": counter["base"] + step, "loss": p["loss"]})
    return out


def plain_event(event):
    """One event as a sentence for the events list."""
    when = time.strftime("%H:%M:%S", time.localtime(event.get("time") or 0))
    parts = [f"{event.get('verb') or ''} {event.get('event') or ''}".strip()]
    if event.get("epoch") is not None:
        parts.append(f"epoch {event['epoch']}")
    if event.get("step") is not None:
        parts.append(f"step {event['step']}")
    if event.get("loss") is not None:
        parts.append(f"loss {event['loss']:.4g}")
    if event.get("message"):
        parts.append(str(event["message"]))
    return f"{when} · " + " · ".join(parts)


