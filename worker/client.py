"""The small API the dashboard (and the `bpnet-studio` CLI) uses. No TensorFlow anywhere.

Every function reads the configuration from the environment (`worker.config.load_config`) unless a
`config` is passed, and returns plain dicts/lists/paths. Bad input raises `bpnet.errors.BpnetError`
with a message fit to show as is. Names here are stable; the dashboard depends on them.

Runs
- `validate_run_spec(spec, base_dir=None) -> RunSpec`
- `preview_run(spec, base_dir=None) -> dict`   stages, results count, cached stages, time estimate,
  capable workers, warnings
- `submit_run(spec, base_dir=None, name=None) -> run_id`
- `cancel_run(run_id) -> bool`, `rerun(run_id) -> new run_id`
- `list_runs(status=None, dataset=None, search=None, limit=200, offset=0) -> [dict]`
- `get_run(run_id) -> dict` (run + spec, stages, edges, events, metrics, artifacts, results)
- `run_events(run_id, stage_id=None, since_id=0, limit=500)`, `loss_curve(run_id)`
Guided optimization
- `search_progress(run_id) -> [dict]` per search stage: its report (search.json, live) and iterations
- `submit_remedy(gate_stage_id, remedy_kind, calibrator=None) -> run_id` a follow-up run
Results, models and artifacts
- `list_results(run_ids=None) -> [flat row]` for Compare (with the INT8/FP16 gate's verdict)
- `list_models(limit=200) -> [dict]` trained Keras models
- `preview_prune(model_path, thresholds, prune=None) -> [dict]` parameters each threshold keeps (dry run)
- `artifact_path(artifact_id) -> Path` (cannot leave the artifact root)
- `run_bundle(run_id) -> Path` zip of a run's artifacts with a manifest
Workers
- `list_workers() -> [dict]` with `alive`
"""

import json
import time
import zipfile

import yaml

from bpnet.errors import BpnetError
from worker import artifacts, costs, scheduler
from worker.config import load_config
from worker.kinds.evaluate import RESULT_FIELDS as EVALUATION_RESULT_FIELDS
from worker.runs import dataset_label, expand_run, parse_run_spec
from worker.store import RESULT_KINDS, STAGE_DONE, open_store

# The fields of one evaluated model (worker.kinds.evaluate.EvaluationResult): what the evaluate
# stage stores, what list_results returns and what the Compare charts read.
RESULT_FIELDS = EVALUATION_RESULT_FIELDS


def _cfg(config):
    return config or load_config()


def get_store(config=None):
    return open_store(_cfg(config).database_url)


def _enqueue_with(config):
    from worker.celery_app import enqueue_stage, get_app   # celery import only when sending
    app = get_app(config)
    return lambda stage: enqueue_stage(app, stage)


def _as_dict(spec, source):
    if isinstance(spec, (str, bytes)):
        try:
            spec = yaml.safe_load(spec)
        except yaml.YAMLError as err:
            raise BpnetError(f"{source} is not valid YAML: {err}") from None
    if not isinstance(spec, dict):
        raise BpnetError(f"{source} must be a mapping of fields, got {type(spec).__name__}")
    return spec


# ------------------------------------------------------------------ runs

def validate_run_spec(spec, base_dir=None, source="run spec"):
    """Parse and check a run spec (dict or YAML text): the RunSpec, or a BpnetError listing every
    problem (field, value, what is allowed; missing files; too few calibration images)."""
    return parse_run_spec(_as_dict(spec, source), source, base_dir)


def run_spec_problems(spec, base_dir=None):
    """[(field path, message)] of what the run spec is refused for, per field: RunSpec's rules,
    then the files it names and the calibration image count (the dashboard's widget errors)."""
    from worker.runs import run_spec_problems as problems

    return problems(_as_dict(spec, "run spec"), base_dir)


def preview_run(spec, base_dir=None, config=None):
    """What submitting `spec` would do, without queueing anything:
    {num_stages, num_results, stages: [{label, kind, cached}], cached: [labels], to_compute,
     estimate_s (None when no past stage of a kind exists), estimate_low_s, estimate_high_s,
     estimate_basis, estimate_stages (per stage), workers, warnings}."""
    config = _cfg(config)
    run_spec = validate_run_spec(spec, base_dir)
    workers = list_workers(config)
    alive = [w for w in workers if w["alive"]]
    nodes = expand_run(run_spec, tensorrt=has_tensorrt_worker(alive))
    store = get_store(config)
    computed = store.keys_computed(n["key"] for n in nodes)
    rows = [{"label": n["label"], "kind": n["kind"], "cached": n["key"] in computed} for n in nodes]
    estimate = estimate_cost([n for n in nodes if n["key"] not in computed], store, workers)
    warnings = []
    if not alive:
        warnings.append("no worker is online: the run will wait in the queue until one starts "
                        "(`bpnet-studio worker` or `bpnet-studio up`)")
    if alive and not has_tensorrt_worker(alive):
        warnings.append("no TensorRT worker: results run on ONNX Runtime; TensorRT engines will "
                        "not be built")
    return {"num_stages": len(nodes), "num_results": sum(n["kind"] in RESULT_KINDS for n in nodes),
            "stages": rows, "cached": [r["label"] for r in rows if r["cached"]],
            "to_compute": sum(not r["cached"] for r in rows), "estimate_s": estimate["estimate_s"],
            "estimate_low_s": estimate["low_s"], "estimate_high_s": estimate["high_s"],
            "estimate_basis": estimate["basis"], "estimate_stages": estimate["stages"],
            "workers": alive, "warnings": warnings}


def has_tensorrt_worker(alive_workers):
    return any("tensorrt" in w["queues"] and w["capabilities"].get("tensorrt") for w in alive_workers)


def estimate_cost(nodes, store, workers=None):
    """Expected time of `nodes` from past stages' seconds per unit of work on the worker kind
    each would run on (`worker.costs`)."""
    workers = store.workers() if workers is None else workers
    return costs.estimate_run(nodes, store.stage_history(),
                              lambda kind: scheduler.choose_queue(kind, workers))


def submit_run(spec, base_dir=None, name=None, config=None, rerun_of=None):
    """Validate, create the run and its stage rows, queue the stages that can start; the run id.
    An invalid spec raises BpnetError and nothing is stored or queued."""
    config = _cfg(config)
    run_spec = validate_run_spec(spec, base_dir)
    if name:
        run_spec = run_spec.model_copy(update={"name": name})
    alive = [w for w in list_workers(config) if w["alive"]]
    nodes = expand_run(run_spec, tensorrt=has_tensorrt_worker(alive))
    store = get_store(config)
    run_id = store.create_run(run_spec.name or f"run {time.strftime('%Y-%m-%d %H:%M')}",
                              dataset_label(run_spec), run_spec.model_dump(mode="json"), nodes,
                              rerun_of=rerun_of)
    scheduler.advance(store, run_id, _enqueue_with(config), config.artifact_root)
    return run_id


def cancel_run(run_id, config=None):
    """Cancel a queued or running run; False if it had already finished."""
    store = get_store(config)
    _require_run(store, run_id)
    return scheduler.cancel(store, run_id)


def rerun(run_id, config=None):
    """Submit a run's spec again as a new run (finished stages are reused from the cache)."""
    store = get_store(config)
    run = _require_run(store, run_id)
    return submit_run(run["spec"], name=run["name"], config=config, rerun_of=run_id)


def _require_run(store, run_id):
    run = store.get_run(run_id)
    if run is None:
        raise BpnetError(f"run {run_id!r} not found; `bpnet-studio status` lists the runs")
    return run


def list_runs(status=None, dataset=None, search=None, limit=200, offset=0, config=None):
    """Runs newest first: id, name, status, dataset, created/started/finished_at, error,
    num_stages, stage_counts {status: n}, progress (0..1), current_stage (label or None),
    elapsed_s, eta_s (of the running stage, from its progress events; None when unknown)."""
    store = get_store(config)
    runs = store.list_runs(status=status, dataset=dataset, search=search, limit=limit, offset=offset)
    now = time.time()
    for r in runs:
        r["eta_s"] = r.pop("stage_eta_s", None)
        if r["started_at"]:
            r["elapsed_s"] = (r["finished_at"] or now) - r["started_at"]
        else:
            r["elapsed_s"] = None
    return runs


def list_datasets(config=None):
    return get_store(config).datasets()


def get_run(run_id, events_limit=300, config=None):
    """One run with everything the detail page shows:
    run fields + spec; stages (kind, label, status, key, parent_id, params, outputs, result,
    fraction, message, eta_s, error, traceback, attempts, worker_id, source_stage_id, times);
    edges [(parent_id, stage_id)]; events (last `events_limit`); metrics; artifacts (with
    stage_id of the *run's* stage, even when reused from another run); results (flat rows)."""
    config = _cfg(config)
    store = get_store(config)
    run = _require_run(store, run_id)
    stages = store.stages(run_id)
    producer = {st["id"]: st["source_stage_id"] or st["id"] for st in stages}
    arts = store.artifacts_of_stages(set(producer.values()))
    by_producer = {}
    for a in arts:
        by_producer.setdefault(a["stage_id"], []).append(a)
    run_artifacts = []
    for st in stages:
        for a in by_producer.get(producer[st["id"]], []):
            run_artifacts.append({**a, "producer_stage_id": a["stage_id"], "stage_id": st["id"],
                                  "stage_label": st["label"]})
    run["stages"] = stages
    run["edges"] = [(st["parent_id"], st["id"]) for st in stages if st["parent_id"]]
    run["events"] = store.last_events(run_id, events_limit)
    run["metrics"] = store.metrics(run_id)
    run["artifacts"] = run_artifacts
    run["results"] = list_results([run_id], config)
    return run


def run_events(run_id, stage_id=None, since_id=0, limit=500, config=None):
    """Events after `since_id` (for live panels that poll)."""
    return get_store(config).events(run_id=run_id, stage_id=stage_id, since_id=since_id, limit=limit)


def loss_curve(run_id, config=None):
    """Training loss points of a run: [{stage_id, stage_label, event (step | epoch_end | done ...),
    epoch, step, loss, time}]."""
    store = get_store(config)
    labels = {st["id"]: st["label"] for st in store.stages(run_id)}
    points = []
    since = 0
    while True:
        batch = store.events(run_id=run_id, since_id=since, limit=5000)
        if not batch:
            break
        since = batch[-1]["id"]
        points += [{"stage_id": e["stage_id"], "stage_label": labels.get(e["stage_id"]),
                    "event": e["event"], "epoch": e["epoch"], "step": e["step"], "loss": e["loss"],
                    "time": e["time"]}
                   for e in batch if e["loss"] is not None]
    return points


# ------------------------------------------------------------------ results and artifacts

def list_results(run_ids=None, config=None):
    """One flat row per evaluated model (Compare page): run_id, run_name, dataset, stage_id,
    label, status (completed | cached), annotations and images (the evaluation data), precision,
    input_hw, resolution ("HxW"), pth (None = unpruned), branch (unpruned | pruned | search),
    stages (model stage count), AP..ARl, latency_ms (median), latency_p95_ms, throughput
    (images/s), cnn_ms_per_image, decode_ms_per_image, params, gflops, size_bytes, backend,
    device, model_artifact_id, artifact_ids (all of the result's chain), and the INT8/FP16 gate:
    gate (None for FP32 | waiting | passed | failed | error), gate_reasons, gate_warnings,
    gate_remedies, gate_stage_id."""
    store = get_store(config)
    gates = store.gate_rows(run_ids)
    rows = []
    for row in store.result_rows(run_ids):
        r = row.pop("result") or {}
        rows.append({**row, **{k: r.get(k) for k in RESULT_FIELDS}, **gate_fields(gates.get(row["stage_id"]))})
    return rows


def gate_fields(gate):
    """The gate's verdict on one result, flat (see `list_results`)."""
    if gate is None:
        return {"gate": None, "gate_reasons": [], "gate_warnings": [], "gate_remedies": [],
                "gate_stage_id": None}
    report = gate["result"] or {}
    if gate["status"] in STAGE_DONE and report:
        verdict, reasons = report["status"], report.get("reasons") or []
    elif gate["status"] == "failed":
        verdict, reasons = "error", [gate["error"] or "the gate stage failed"]
    else:
        verdict, reasons = "waiting", []
    return {"gate": verdict, "gate_reasons": reasons, "gate_warnings": report.get("warnings") or [],
            "gate_remedies": report.get("remedies") or [], "gate_stage_id": gate["stage_id"]}


def list_models(limit=200, config=None):
    """Trained Keras models still on disk, newest first: [{artifact_id, path, run_id, run_name,
    stage_label, kind (train | retrain | search), created_at}] - the base-model picker of New run."""
    store = get_store(config)
    config = _cfg(config)
    models = []
    for row in store.model_artifacts(("train", "retrain", "search"), limit):
        path = _file_on_disk(config, row["relpath"])
        if path is not None:
            models.append({**row, "path": path})
    return models


def _file_on_disk(config, relpath):
    """The artifact file at `relpath` under the artifact root, or None when it is gone (or the
    path would leave the root)."""
    try:
        path = artifacts.resolve_inside(config.artifact_root, relpath)
    except BpnetError:
        return None
    return path if path.is_file() else None


def preview_prune(model_path, thresholds, prune=None):
    """What pruning `model_path` at each threshold would keep, from its weights alone (the
    pruning decision's dry run, `bpnet.prune.preview_pruning`; no TensorFlow, about a second):
    [{threshold, params_before, params_after, kept (fraction)}]. `prune`: the run spec's prune
    options (equalization, granularity, min_filters, normalizer, excluded_layers)."""
    from bpnet.prune.model_file import load_for_preview, preview_pruning
    from worker.runs import PruneOptions

    try:
        options = PruneOptions(**(prune or {})).model_dump()
    except ValueError as err:
        raise BpnetError(f"prune options: {err}") from None
    loaded = load_for_preview(str(model_path))
    rows = []
    for threshold in thresholds:
        report = preview_pruning(loaded, float(threshold), **{**options, "excluded_layers": tuple(options["excluded_layers"])})
        rows.append({"threshold": float(threshold), "params_before": report["params_before"],
                     "params_after": report["params_after"],
                     "kept": report["params_after"] / report["params_before"] if report["params_before"] else None})
    return rows


def _import_node(run_spec):
    """The import stage a run of `run_spec` starts with, when its base is a pretrained network
    that `bpnet import` rebuilds (.tflite/.pb); None for a Keras base or a trained one."""
    from worker.kinds.import_model import IMPORTED_SUFFIXES

    if run_spec.model is None or run_spec.model.suffix.lower() not in IMPORTED_SUFFIXES:
        return None
    return expand_run(run_spec)[0]


def preview_base_model(spec, config=None):
    """The Keras model the prune preview can read for a run of `spec`, before it is submitted:
    {path (None when not on disk yet), importing (None, or the import stage: status, run_id,
    fraction, error)}. A .hdf5 base is read as it is; a pretrained .tflite/.pb is rebuilt to Keras
    by the run's first stage, so the preview reads the model that stage wrote for the same file
    in any run (the stage cache: the run will start from exactly this model)."""
    config = _cfg(config)
    run_spec = validate_run_spec(spec)
    node = _import_node(run_spec)
    if node is None:
        return {"path": run_spec.model, "importing": None}
    store = get_store(config)
    stages = store.stages_with_key(node["key"])
    model_file = _completed_model_file(store, config, stages)
    if model_file is not None:
        return {"path": model_file, "importing": None}
    stage = next((st for st in stages if st["status"] in ("queued", "running")), None)
    stage = stage or next((st for st in stages if st["status"] == "failed"), None)
    if stage is None:   # never imported (or its files were deleted)
        return {"path": None, "importing": None}
    return {"path": None, "importing": {"status": stage["status"], "run_id": stage["run_id"],
                                        "fraction": stage["fraction"], "error": stage["error"]}}


def _completed_model_file(store, config, stages):
    """The model file a completed one of `stages` wrote, when it is still on disk."""
    for stage in stages:
        if stage["status"] != "completed":
            continue
        model = (stage["outputs"] or {}).get("model")
        for art in store.artifacts_of_stages([stage["id"]]):
            path = _file_on_disk(config, art["relpath"]) if art["name"] == model else None
            if path is not None:
                return path
    return None


def import_base_model(spec, config=None):
    """Queue only the first stage of a run of `spec` (the import of its pretrained base) so the
    prune preview can read the rebuilt model; the sweep submitted later reuses that stage from
    the cache. Returns the id of the run doing it (an import already under way is not queued
    again)."""
    config = _cfg(config)
    run_spec = validate_run_spec(spec)
    node = _import_node(run_spec)
    if node is None:
        raise BpnetError(f"model: {run_spec.model} is not a pretrained network to import "
                         "(.tflite or .pb); its weights are read as they are")
    store = get_store(config)
    under_way = next((st for st in store.stages_with_key(node["key"]) if st["status"] in ("queued", "running")), None)
    if under_way:
        return under_way["run_id"]
    run_id = store.create_run(f"import {run_spec.model.name} (for the prune preview)",
                              dataset_label(run_spec), run_spec.model_dump(mode="json"), [node])
    scheduler.advance(store, run_id, _enqueue_with(config), config.artifact_root)
    return run_id


# ------------------------------------------------------------------ guided optimization

def search_progress(run_id, config=None):
    """Per search stage of a run: {stage_id, label, status, report, iterations}. `report` is the
    stage's search.json (rewritten by the engine after every iteration, so it is read from the
    stage's folder while the search runs; None before the first write); `iterations` are the
    stored `iteration` events (threshold, ap, size, within_budget), in order."""
    config = _cfg(config)
    store = get_store(config)
    out = []
    for st in store.stages(run_id):
        if st["kind"] != "search":
            continue
        folder = st["artifact_dir"] or (artifacts.stage_dir_name(st["kind"], st["key"])
                                        if st["status"] == "running" else None)
        report = None
        if folder:
            path = artifacts.resolve_inside(config.artifact_root, folder) / "search.json"
            try:
                report = json.loads(path.read_text())
            except (OSError, ValueError):
                report = None
        # a reused search's iterations were recorded by the run that computed it
        events = store.events(stage_id=st["source_stage_id"] or st["id"], kinds=("iteration",), limit=1000)
        iterations = [{k: e["data"].get(k) for k in ("threshold", "ap", "size", "within_budget")}
                      | {"step": e["step"], "message": e["message"]} for e in events if e["verb"] == "search"]
        out.append({"stage_id": st["id"], "label": st["label"], "status": st["status"],
                    "report": report, "iterations": iterations})
    return out


def submit_remedy(gate_stage_id, remedy_kind, calibrator=None, config=None):
    """Run one remedy of a failed gate as a follow-up run: the original run's spec narrowed to
    the gated result (its model, resolution, FP32 + its precision) with the remedy applied;
    everything upstream is reused from the cache, so only the export, evaluation and gate of the
    repaired model run. Returns the new run id."""
    from worker.remedies import remedy_spec

    config = _cfg(config)
    store = get_store(config)
    gate = store.stage(gate_stage_id)
    if gate is None or gate["kind"] != "gate":
        raise BpnetError(f"gate stage {gate_stage_id!r} not found")
    run = _require_run(store, gate["run_id"])
    evaluate = store.stage(gate["parent_id"])
    spec, title = remedy_spec(run["spec"], evaluate, gate, remedy_kind, calibrator)
    return submit_run(spec, name=f"{run['name']} · remedy: {title}", config=config, rerun_of=run["id"])


def artifact_path(artifact_id, config=None):
    """The file of an artifact, resolved inside the artifact root (BpnetError otherwise)."""
    config = _cfg(config)
    art = get_store(config).artifact(artifact_id)
    if art is None:
        raise BpnetError(f"artifact {artifact_id!r} not found")
    path = artifacts.resolve_inside(config.artifact_root, art["relpath"])
    if not path.is_file():
        raise BpnetError(f"artifact {artifact_id!r} ({art['name']}) is missing on disk: {path}")
    return path


def run_bundle(run_id, config=None):
    """A zip of all of a run's artifacts plus `manifest.json` (run spec and its hash, every file's
    stage, kind, size and sha256, package versions, devices); returns its path."""
    config = _cfg(config)
    run = get_run(run_id, events_limit=0, config=config)
    seen, files = set(), []
    for a in run["artifacts"]:
        if a["id"] in seen:
            continue
        seen.add(a["id"])
        files.append(a)
    manifest = {"run_id": run_id, "name": run["name"], "spec": run["spec"],
                "spec_sha256": _spec_hash(run["spec"]), "versions": _versions(),
                "devices": sorted({r["device"] for r in run["results"] if r.get("device")}),
                "files": [{"path": f"{a['stage_label']}/{a['name']}", "stage": a["stage_label"],
                           "kind": a["kind"], "size": a["size"], "sha256": a["sha256"]} for a in files]}
    out = config.home / "bundles" / f"run-{run_id}.zip"
    out.parent.mkdir(parents=True, exist_ok=True)
    from bpnet.fileio import atomic_path
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", json.dumps(manifest, indent=2))
        for a, entry in zip(files, manifest["files"]):
            zf.write(artifacts.resolve_inside(config.artifact_root, a["relpath"]), entry["path"])
    return out


def _spec_hash(spec):
    import hashlib
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _versions():
    from importlib import metadata
    out = {}
    for pkg in ("bpnet-studio", "tensorflow", "onnxruntime", "onnx", "tf2onnx", "celery"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


# ------------------------------------------------------------------ workers

def list_workers(config=None):
    """Registered workers: id, hostname, pid, queues (list), capabilities (dict: cpu_count,
    gpus, tensorflow_gpu, tensorrt, onnxruntime_providers, ...), started_at, heartbeat_at,
    status, current_stage_id, current_stage (its label), current_run_id, current_run_name,
    alive (heartbeat within the last minute)."""
    now = time.time()
    store = get_store(config)
    rows = store.workers()
    for w in rows:
        w["alive"] = w["status"] == "online" and now - w["heartbeat_at"] < scheduler.HEARTBEAT_FRESH_S
        w.update(_current_stage(store, w.get("current_stage_id")))
    return rows


def _current_stage(store, stage_id):
    """The running stage of a worker by name: current_stage (label), current_run_id, current_run_name."""
    stage = store.stage(stage_id) if stage_id else None
    if stage is None:
        return {"current_stage": None, "current_run_id": None, "current_run_name": None}
    run = store.get_run(stage["run_id"])
    return {"current_stage": stage["label"], "current_run_id": stage["run_id"],
            "current_run_name": run["name"] if run else None}


__all__ = ["validate_run_spec", "preview_run", "submit_run", "cancel_run", "rerun", "list_runs",
           "list_datasets", "get_run", "run_events", "loss_curve", "list_results", "list_models",
           "search_progress", "submit_remedy", "preview_prune", "artifact_path", "run_bundle", "list_workers",
           "estimate_cost", "get_store"]
