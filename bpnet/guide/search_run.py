"""The AP-budget search loop: prune -> retrain -> evaluate per threshold, until the budget is met.

`search_prune_threshold` is the engine function the CLI (`bpnet search`) and the worker call. The
next threshold and the stop rule come from the pure `bpnet.guide.search`; this module runs the
iterations, reuses what earlier searches computed, and writes `search.json` after every
iteration, so a dashboard can chart AP and size per iteration while the search runs.

Reuse: every trial lives in `out_dir/cache/<key>/pth_<threshold>/` where `key` hashes the inputs
that change its result (base model bytes, training spec, prune options, evaluation data and
inference spec). A second search with the same inputs - another budget, more iterations - reads
the pruned model, the retrained model and the metrics back instead of recomputing them.
"""

import hashlib
import json
import time
from pathlib import Path

from bpnet.errors import BpnetError
from bpnet.events import emit
from bpnet.fileio import read_json, write_json_atomic
from bpnet.guide.search import DEFAULT_THRESHOLD_RANGE, SearchConfig, Trial, run_search
from bpnet.limits import (DEFAULT_AP_BUDGET, DEFAULT_PRUNE_GRANULARITY, DEFAULT_SEARCH_ITERS, DEFAULT_PRUNE_MIN_FILTERS, EQUALIZATIONS, MAX_AP_DROP_POINTS,
                          MAX_SEARCH_ITERS, NORMALIZERS)
from bpnet.specs import spec_to_yaml

STAGE = "search"
OBJECTIVES = ("params", "latency")
DEFAULT_PRUNE_OPTIONS = {"equalization": EQUALIZATIONS[0], "granularity": DEFAULT_PRUNE_GRANULARITY,
                         "min_filters": DEFAULT_PRUNE_MIN_FILTERS, "normalizer": NORMALIZERS[0]}


def ap_points(metrics):
    return 100.0 * float(metrics["AP"])


def content_key(base_model, train_spec, prune_options, annotations, images_dir, infer_spec, max_images,
                objective, latency_options):
    digest = hashlib.sha256()
    digest.update(Path(base_model).read_bytes())
    for part in (spec_to_yaml(train_spec), json.dumps(prune_options, sort_keys=True),
                 str(Path(annotations).resolve()), str(Path(images_dir).resolve()),
                 spec_to_yaml(infer_spec), str(max_images), objective,
                 json.dumps(latency_options, sort_keys=True)):
        digest.update(part.encode())
    return digest.hexdigest()[:12]


def model_size(model_path, objective, latency_options, params=None):
    """The objective value of a model: its parameter count, or its measured median latency (ms)."""
    if objective == "params":
        if params is None:
            from bpnet.model import count_params, load_model
            params = count_params(load_model(model_path))
        return float(params)
    from bpnet.benchmark import benchmark_model

    result = benchmark_model(model_path, **latency_options)
    return float(result["median_ms"])


def check_search_inputs(base_model, budget_ap, objective, max_iters, latency_options):
    if not Path(base_model).is_file():
        raise BpnetError(f"base model not found: {base_model}")
    if objective not in OBJECTIVES:
        raise BpnetError(f"objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
    if objective == "latency" and not latency_options.get("input_hw"):
        raise BpnetError("objective 'latency' needs latency options with input_hw (and batch_size, runs)")
    if not isinstance(max_iters, int) or not 1 <= max_iters <= MAX_SEARCH_ITERS:
        raise BpnetError(f"max_iters must be an integer between 1 and {MAX_SEARCH_ITERS}, got {max_iters!r}")
    if budget_ap < 0 or budget_ap > MAX_AP_DROP_POINTS:
        raise BpnetError(f"AP budget must be between 0 and {MAX_AP_DROP_POINTS:g} AP points, got {budget_ap}")


def search_prune_threshold(base_model, train_spec, annotations, images_dir, infer_spec, out_dir,
                           budget_ap=DEFAULT_AP_BUDGET, objective="params", max_iters=DEFAULT_SEARCH_ITERS,
                           threshold_range=DEFAULT_THRESHOLD_RANGE, prune_options=None,
                           latency_options=None, max_images=None, progress=None):
    """Find the smallest pruned + retrained model whose AP is within `budget_ap` points of the base.

    `train_spec` (a TrainSpec) is the retraining spec; its `pretrained_weights`/`load_graph` are
    set per trial to the pruned model. Evaluation uses `annotations`/`images_dir` with
    `infer_spec`. `objective` is "params" or "latency" (median ms of `bpnet.benchmark.
    benchmark_model(**latency_options)`). Returns the search report (also `out_dir/search.json`).
    """
    latency_options = dict(latency_options or {})
    prune_options = {**DEFAULT_PRUNE_OPTIONS, **(prune_options or {})}
    check_search_inputs(base_model, budget_ap, objective, max_iters, latency_options)
    out_dir = Path(out_dir)
    key = content_key(base_model, train_spec, prune_options, annotations, images_dir, infer_spec,
                      max_images, objective, latency_options)
    cache = out_dir / "cache" / key
    started = time.time()

    from bpnet.evaluate import evaluate_once

    emit(progress, STAGE, "start", message=f"evaluating the unpruned model {base_model}")
    base_metrics = evaluate_once(base_model, annotations, images_dir, infer_spec, cache / "base_eval",
                                 max_images, progress)
    base = {"model": str(base_model), "ap": ap_points(base_metrics),
            "size": model_size(base_model, objective, latency_options)}
    config = SearchConfig(base_ap=base["ap"], budget_ap=budget_ap, threshold_range=tuple(threshold_range),
                          max_iters=max_iters)
    report = {"status": "running", "objective": objective, "budget_ap": budget_ap, "max_iters": max_iters,
              "threshold_range": list(threshold_range), "prune_options": prune_options, "base": base,
              "trials": [], "chosen": None, "reason": None, "cache_key": key}
    write_json_atomic(out_dir / "search.json", report)

    def measure(threshold):
        return run_trial(threshold, base_model, train_spec, annotations, images_dir, infer_spec,
                         cache / f"pth_{threshold:g}", prune_options, objective, latency_options,
                         max_images, progress)

    def on_iteration(trial, step):
        report["trials"].append(trial_record(trial, config))
        write_json_atomic(out_dir / "search.json", report)
        emit(progress, STAGE, "iteration", step=len(report["trials"]), num_steps=max_iters,
             fraction=len(report["trials"]) / max_iters, threshold=trial.threshold, ap=trial.ap,
             size=trial.size, within_budget=report["trials"][-1]["within_budget"],
             message=f"threshold {trial.threshold:g}: AP {trial.ap:.2f} (base {base['ap']:.2f}), "
                     f"{objective} {trial.size:g}; next: {step.reason}")

    chosen, _, reason = run_search(measure, config, on_iteration)
    report.update(status="done", reason=reason, seconds=round(time.time() - started, 1),
                  chosen=trial_record(chosen, config) if chosen else None)
    if chosen is None:
        report["chosen_model"] = str(base_model)
        report["message"] = f"no pruned model stays within {budget_ap:g} AP points; keep the unpruned model"
    else:
        report["chosen_model"] = chosen.artifacts["model"]
        report["message"] = (f"threshold {chosen.threshold:g}: {objective} {chosen.size:g} "
                             f"({chosen.size / base['size']:.1%} of the unpruned model), "
                             f"AP {chosen.ap:.2f} vs {base['ap']:.2f}")
    write_json_atomic(out_dir / "search.json", report)
    emit(progress, STAGE, "done", fraction=1.0, message=report["message"])
    return report


def trial_record(trial, config):
    return {"threshold": trial.threshold, "ap": trial.ap, "size": trial.size,
            "ap_drop": config.base_ap - trial.ap,
            "within_budget": config.base_ap - trial.ap <= config.budget_ap + 1e-9,
            "artifacts": trial.artifacts}


def run_trial(threshold, base_model, train_spec, annotations, images_dir, infer_spec, trial_dir,
              prune_options, objective, latency_options, max_images, progress):
    """Prune at `threshold`, retrain, evaluate (each step skipped when its result exists)."""
    from bpnet.evaluate import evaluate_once
    from bpnet.prune.model_file import prune_model_file, report_path
    from bpnet.train import MODEL_FILE, train

    trial_dir = Path(trial_dir)
    pruned = trial_dir / "pruned.hdf5"
    if pruned.is_file() and report_path(pruned).is_file():
        prune_report = read_json(report_path(pruned), "cached prune report")
    else:
        prune_report = prune_model_file(base_model, pruned, threshold=threshold, progress=progress,
                                        **prune_options)
    retrained = trial_dir / "retrain" / MODEL_FILE
    if not retrained.is_file():
        retrain_spec = train_spec.model_copy(update={"pretrained_weights": pruned.resolve(),
                                                     "load_graph": True})
        train(retrain_spec, trial_dir / "retrain", progress=progress)
    metrics = evaluate_once(retrained, annotations, images_dir, infer_spec, trial_dir / "eval",
                            max_images, progress)
    size = model_size(retrained, objective, latency_options, params=prune_report["params_after"])
    return Trial(threshold, ap_points(metrics), size, artifacts={
        "model": str(retrained), "pruned_model": str(pruned), "metrics": str(trial_dir / "eval" / "metrics.json"),
        "params": prune_report["params_after"], "param_ratio": prune_report["param_ratio"]})
